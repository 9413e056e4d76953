"""The DTLS record layer as the gateway's transport sees it: UdpMux -> MediaTransport -> DtlsConnection.

The gateway's shared media port hands every datagram to ``callsgw.transport.mux.UdpMux``, which
classifies it (RFC 7983) and gives it to the participant's ``MediaTransport``; DTLS from an address
ICE validated goes to its server-side :class:`callsgw.dtls.connection.DtlsConnection` (pyOpenSSL
over memory BIOs). This target drives that same path with fixed ICE credentials: a signed STUN
check with USE-CANDIDATE validates the client's address first. So that the fuzzer gets past the
first flight, a real client (``DtlsConnection`` in the client role, pyOpenSSL) made its
ClientHellos once; the server's cookie secret is fixed here, so the two ClientHellos (the second
with the cookie) are valid for every fresh transport and take it to its ServerHello...
ServerHelloDone flight.

Input: one flags byte, then datagrams as 2-byte big-endian length + bytes (a short last one takes
what is left), at most 8, all from the client's validated address. Flags: bit 0 "connected": the
datagrams go to a transport whose handshake with the client completed (application data, alerts,
unknown content types, renegotiation attempts, SRTP; the pair is rebuilt when a datagram ended
it); otherwise to a fresh transport after the valid ClientHellos, where they stand in for the
client's second flight (fragments, oversized records, bad lengths and epochs). Bit 1: the valid
ClientHellos are not sent first.

Documented: neither ``UdpMux.receive`` nor ``DtlsConnection.receive_datagram`` nor the timers
raise for anything a peer sends; bad input is dropped (and counted) or fails the handshake with a
``HandshakeFailed`` event. Checked too: every datagram the gateway sends goes to the client's
address and is at most ``MAX_DATAGRAM_SIZE`` bytes, and a failed handshake leaves DTLS FAILED.
"""

from __future__ import annotations

from callsgw.dtls.certificate import DtlsCertificate
from callsgw.dtls.connection import MAX_DATAGRAM_SIZE, DtlsConnection, DtlsRole, DtlsState, HandshakeFailed
from callsgw.sdp import RemoteTransport
from callsgw.transport.media import MediaTransport, TransportState
from callsgw.transport.mux import UdpMux
from callsgw.wire import stun

MAX_DATAGRAMS = 8
COOKIE_SECRET = b"callsgw-fuzz-dtls-cookie-secret!"
CONNECTED, NO_HELLO = 1, 2
GW_ADDR, CLIENT = ("127.0.0.1", 8443), ("127.0.0.1", 40000)
GW_UFRAG, GW_PWD = "fuzzgw", "g" * 24
CLIENT_UFRAG, CLIENT_PWD = "fuzzcl", "c" * 24

_state: dict = {}


def _binding_request() -> bytes:
    """The client's ICE check: signed with the gateway's password, nominating (USE-CANDIDATE)."""
    from aioice import stun as aiostun

    msg = aiostun.Message(message_method=aiostun.Method.BINDING, message_class=aiostun.Class.REQUEST,
                          transaction_id=b"fuzz-check-1")
    msg.attributes["USERNAME"] = f"{GW_UFRAG}:{CLIENT_UFRAG}"
    msg.attributes["PRIORITY"] = 0x6E0001FF
    msg.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(GW_PWD.encode())
    msg.add_fingerprint()
    return bytes(msg)


def _setup() -> dict:
    if not _state:
        server_cert, client_cert = DtlsCertificate.generate(), DtlsCertificate.generate()
        _state.update(server_cert=server_cert, client_cert=client_cert, check=_binding_request(), hello=[])
        client = DtlsConnection(DtlsRole.CLIENT, client_cert, server_cert.fingerprint)
        mux, transport = gateway()
        hello = client.datagrams_to_send()
        for datagram in hello:
            mux.receive(datagram, CLIENT, 0.0)
        for datagram, _ in mux.datagrams_to_send():  # HelloVerifyRequest
            client.receive_datagram(datagram, 0.0)
        hello_with_cookie = client.datagrams_to_send()
        assert hello_with_cookie, "the client did not answer the HelloVerifyRequest"
        _state["hello"] = hello + hello_with_cookie
    return _state


def gateway() -> tuple[UdpMux, MediaTransport]:
    """A fresh transport on a mux, with the client's address validated by ICE."""
    s = _state
    remote = RemoteTransport(ice_ufrag=CLIENT_UFRAG, ice_pwd=CLIENT_PWD, fingerprint=s["client_cert"].fingerprint,
                             setup="actpass", bundle_mids=("0",), candidates=(), description=None)
    transport = MediaTransport(certificate=s["server_cert"], remote=remote, local_address=GW_ADDR,
                               local_ufrag=GW_UFRAG, local_pwd=GW_PWD)
    transport.dtls._cookie_secret = COOKIE_SECRET
    mux = UdpMux()
    mux.add(transport)
    mux.receive(s["check"], CLIENT, 0.0)
    answer = mux.datagrams_to_send()
    assert answer and stun.parse(answer[0][0]).message_class == stun.Class.RESPONSE, "the ICE check failed"
    return mux, transport


def connected_gateway() -> tuple[UdpMux, MediaTransport]:
    """A transport whose handshake with a real client completed (kept while it stays connected)."""
    s = _setup()
    pair = s.get("connected")
    if pair is None or pair[1].dtls.state is not DtlsState.ESTABLISHED:
        mux, transport = gateway()
        client = DtlsConnection(DtlsRole.CLIENT, s["client_cert"], s["server_cert"].fingerprint)
        for _ in range(20):
            moved = False
            for datagram in client.datagrams_to_send():
                mux.receive(datagram, CLIENT, 0.0)
                moved = True
            for datagram, _ in mux.datagrams_to_send():
                client.receive_datagram(datagram, 0.0)
                moved = True
            if not moved:
                break
        assert transport.dtls.state is DtlsState.ESTABLISHED, f"the handshake did not complete: {transport.dtls.state}"
        assert transport.state is TransportState.CONNECTED
        while transport.next_event() is not None:
            pass
        pair = s["connected"] = (mux, transport)
    return pair


def datagrams_of(body: bytes) -> list[bytes]:
    out = []
    while body and len(out) < MAX_DATAGRAMS:
        n = int.from_bytes(body[:2], "big")
        out.append(body[2 : 2 + n])
        body = body[2 + n :]
    return out


def encode(flags: int, datagrams: list[bytes]) -> bytes:
    """An input for this target (the corpus maker and the tests use it)."""
    return bytes([flags]) + b"".join(len(d).to_bytes(2, "big") + d for d in datagrams)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    s = _setup()
    flags = data[0]
    if flags & CONNECTED:
        mux, transport = connected_gateway()
    else:
        mux, transport = gateway()
        if not flags & NO_HELLO:
            for datagram in s["hello"]:
                mux.receive(datagram, CLIENT, 0.0)
    now = 0.0
    for datagram in datagrams_of(data[1:]):
        now += 0.01
        mux.receive(datagram, CLIENT, now)
        for out, addr in mux.datagrams_to_send():
            assert addr == CLIENT, f"the gateway sent to {addr}"
            assert isinstance(out, bytes) and 0 < len(out) <= MAX_DATAGRAM_SIZE, f"the gateway sent {len(out)} bytes"
        timer = mux.get_timer()
        assert timer is None or isinstance(timer, float)
    mux.handle_timer(now + 0.5)
    mux.datagrams_to_send()
    dtls = transport.dtls
    while (event := dtls.next_event()) is not None:
        if isinstance(event, HandshakeFailed):
            assert dtls.state is DtlsState.FAILED
    while transport.next_event() is not None:
        pass
    assert isinstance(dtls.state, DtlsState) and isinstance(transport.state, TransportState)
    if not flags & CONNECTED:
        transport.close(now)

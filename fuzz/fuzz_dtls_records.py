"""The DTLS record layer as the gateway's transport sees it: a server-side ``DtlsConnection``.

``callsgw.transport.media`` hands every datagram whose first byte is 20..63 (RFC 7983) to its
server-side :class:`callsgw.dtls.connection.DtlsConnection` (pyOpenSSL over memory BIOs); this
target does the same. So that the fuzzer gets past the first flight, a real client
(``DtlsConnection`` in the client role, pyOpenSSL) made a ClientHello once; the server's cookie
secret is fixed here, so the client's two ClientHellos (the second with the cookie) are valid for
every fresh server and take it to its ServerHello...ServerHelloDone flight.

Input: one flags byte, then datagrams as 2-byte big-endian length + bytes (a short last one takes
what is left), at most 8. Flags: bit 0 "connected": the datagrams go to a server whose handshake
with the client completed (application data, alerts, unknown content types, renegotiation
attempts; the pair is rebuilt when a datagram ended it); otherwise to a fresh server after the
valid ClientHello with the cookie, where they stand in for the client's second flight (fragments,
oversized records, bad lengths and epochs). Bit 1: the valid ClientHellos are not sent first.

Documented: ``receive_datagram`` never raises for anything the peer sends, nor ``handle_timer``;
bad input is dropped or fails the handshake with a ``HandshakeFailed`` event. Checked too: every
datagram the server sends is at most ``MAX_DATAGRAM_SIZE`` bytes of DTLS, the events are the
documented ones, and after a failure the state is FAILED.
"""

from __future__ import annotations

from callsgw.dtls.certificate import DtlsCertificate
from callsgw.dtls.connection import (
    MAX_DATAGRAM_SIZE,
    ConnectionClosed,
    DtlsConnection,
    DtlsRole,
    DtlsState,
    HandshakeCompleted,
    HandshakeFailed,
)

MAX_DATAGRAMS = 8
COOKIE_SECRET = b"callsgw-fuzz-dtls-cookie-secret!"
CONNECTED, NO_HELLO = 1, 2

_state: dict = {}


def _setup() -> dict:
    if not _state:
        server_cert, client_cert = DtlsCertificate.generate(), DtlsCertificate.generate()
        client = DtlsConnection(DtlsRole.CLIENT, client_cert, server_cert.fingerprint)
        server = _server(server_cert, client_cert)
        hello = client.datagrams_to_send()
        for datagram in hello:
            server.receive_datagram(datagram, 0.0)
        for datagram in server.datagrams_to_send():  # HelloVerifyRequest
            client.receive_datagram(datagram, 0.0)
        hello_with_cookie = client.datagrams_to_send()
        assert hello_with_cookie, "the client did not answer the HelloVerifyRequest"
        _state.update(server_cert=server_cert, client_cert=client_cert, hello=hello + hello_with_cookie)
    return _state


def _server(server_cert: DtlsCertificate, client_cert: DtlsCertificate) -> DtlsConnection:
    server = DtlsConnection(DtlsRole.SERVER, server_cert, client_cert.fingerprint)
    server._cookie_secret = COOKIE_SECRET
    return server


def _pump(a: DtlsConnection, b: DtlsConnection) -> None:
    for _ in range(20):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for datagram in src.datagrams_to_send():
                dst.receive_datagram(datagram, 0.0)
                moved = True
        if not moved:
            return


def connected_server() -> DtlsConnection:
    """A server whose handshake with a real client completed (kept while it stays connected)."""
    s = _setup()
    server = s.get("connected")
    if server is None or server.state is not DtlsState.ESTABLISHED:
        server = _server(s["server_cert"], s["client_cert"])
        client = DtlsConnection(DtlsRole.CLIENT, s["client_cert"], s["server_cert"].fingerprint)
        _pump(client, server)
        assert server.state is DtlsState.ESTABLISHED, f"the handshake did not complete: {server.state}"
        while server.next_event() is not None:
            pass
        s["connected"] = server
    return server


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
        server = connected_server()
    else:
        server = _server(s["server_cert"], s["client_cert"])
        if not flags & NO_HELLO:
            for datagram in s["hello"]:
                server.receive_datagram(datagram, 0.0)
    now = 0.0
    for datagram in datagrams_of(data[1:]):
        now += 0.01
        server.receive_datagram(datagram, now)
        for out in server.datagrams_to_send():
            assert isinstance(out, bytes) and 0 < len(out) <= MAX_DATAGRAM_SIZE and 20 <= out[0] <= 63, (
                f"the server sent {len(out)} bytes that are not a DTLS datagram")
        timer = server.get_timer()
        assert timer is None or isinstance(timer, float)
    server.handle_timer(now + 0.5)
    server.datagrams_to_send()
    while (event := server.next_event()) is not None:
        assert isinstance(event, (HandshakeCompleted, HandshakeFailed, ConnectionClosed)), f"odd event {event!r}"
        if isinstance(event, HandshakeFailed):
            assert server.state is DtlsState.FAILED
    assert isinstance(server.state, DtlsState)
    if not flags & CONNECTED:
        server.close()

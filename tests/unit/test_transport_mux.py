"""The UDP mux and MediaTransport, pumped sans-I/O against a client stack.

The client side is built from independent parts where they exist (aioice's
STUN encoder for checks) and from callsgw's own DTLS core in the client role.
No sockets: datagrams are handed across with a simulated clock.
"""

from __future__ import annotations

import struct

import pytest
from aioice import stun as aiostun

from callsgw.dtls.certificate import DtlsCertificate
from callsgw.dtls.connection import DtlsConnection, HandshakeCompleted
from callsgw.sdp import RemoteTransport
from callsgw.transport.media import (
    MediaTransport,
    RtcpReceived,
    RtpReceived,
    TransportConnected,
    TransportFailed,
    TransportState,
)
from callsgw.transport.mux import UdpMux

GW_ADDR = ("127.0.0.1", 8443)
CLIENT = ("127.0.0.1", 40000)
OTHER = ("127.0.0.1", 40001)


def binding_request(gw_ufrag: str, client_ufrag: str, pwd: str, *, use_candidate: bool = True) -> bytes:
    msg = aiostun.Message(message_method=aiostun.Method.BINDING, message_class=aiostun.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{gw_ufrag}:{client_ufrag}"
    msg.attributes["PRIORITY"] = 0x6E0001FF
    msg.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(pwd.encode())
    msg.add_fingerprint()
    return bytes(msg)


def rtp(seq: int, ssrc: int = 0xDEADBEEF, payload: bytes = b"\x01" * 40) -> bytes:
    return struct.pack("!BBHII", 0x80, 111, seq, seq * 960, ssrc) + payload


class Setup:
    def __init__(self, now: float = 0.0):
        self.gw_cert = DtlsCertificate.generate()
        self.client_cert = DtlsCertificate.generate()
        self.client_ufrag, self.client_pwd = "cli1", "c" * 24
        remote = RemoteTransport(
            ice_ufrag=self.client_ufrag,
            ice_pwd=self.client_pwd,
            fingerprint=self.client_cert.fingerprint,
            setup="actpass",
            bundle_mids=("0",),
            candidates=(),
            description=None,
        )
        self.transport = MediaTransport(certificate=self.gw_cert, remote=remote, local_address=GW_ADDR, now=now)
        self.mux = UdpMux()
        self.mux.add(self.transport)
        self.client = DtlsConnection("client", self.client_cert, self.gw_cert.fingerprint, now=now)
        self.to_client: list[tuple[bytes, tuple]] = []

    def check(self, now: float, addr=CLIENT, pwd=None, use_candidate=True) -> bytes | None:
        self.mux.receive(
            binding_request(self.transport.local_ufrag, self.client_ufrag, pwd or self.transport.local_pwd,
                            use_candidate=use_candidate),
            addr,
            now,
        )
        out = self.mux.datagrams_to_send()
        self.to_client.extend(out)
        return out[0][0] if out else None

    def pump_dtls(self, now: float, addr=CLIENT, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for datagram in self.client.datagrams_to_send():
                self.mux.receive(datagram, addr, now)
                moved = True
            for datagram, dest in self.mux.datagrams_to_send():
                assert dest == addr
                self.client.receive_datagram(datagram, now)
                moved = True
            if not moved:
                break

    def events(self) -> list:
        out = []
        while (ev := self.transport.next_event()) is not None:
            out.append(ev)
        return out


def client_keys(client: DtlsConnection):
    while (ev := client.next_event()) is not None:
        if isinstance(ev, HandshakeCompleted):
            return ev.keys.sessions()
    raise AssertionError("client handshake did not complete")


def test_full_path_ice_then_dtls_then_srtp_both_ways():
    s = Setup()
    # DTLS before any ICE check: dropped at the mux (unknown address)
    first_flight = s.client.datagrams_to_send()
    assert first_flight
    for datagram in first_flight:
        s.mux.receive(datagram, CLIENT, 0.0)
    assert s.mux.drops["dtls_from_unknown_address"] == len(first_flight)
    assert s.mux.datagrams_to_send() == []
    assert s.transport.state is TransportState.NEW
    # a check with the wrong password: no answer at all
    assert s.check(0.1, pwd="x" * 24) is None
    assert s.transport.state is TransportState.NEW
    # a valid check: answered, address validated and selected
    response = s.check(0.2)
    parsed = aiostun.parse_message(response)
    assert parsed.check_message_integrity(s.transport.local_pwd.encode())
    assert parsed.message_class == aiostun.Class.RESPONSE
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    assert s.transport.selected_address == CLIENT
    # DTLS now flows: the same ClientHello, as the client's retransmission
    # would send it, is accepted from the validated address
    for datagram in first_flight:
        s.mux.receive(datagram, CLIENT, 0.3)
    for datagram, _ in s.mux.datagrams_to_send():
        s.client.receive_datagram(datagram, 0.3)
    s.pump_dtls(0.3)
    assert s.transport.state is TransportState.CONNECTED
    connected = [e for e in s.events() if isinstance(e, TransportConnected)]
    assert connected and connected[0].record.dtls.fingerprint_matched
    tx, rx = client_keys(s.client)
    # client -> gateway SRTP and SRTCP
    for seq in range(5):
        s.mux.receive(tx.protect(rtp(seq)), CLIENT, 1.0)
    sr = struct.pack("!BBHI", 0x80, 200, 6, 0xDEADBEEF) + bytes(20)
    s.mux.receive(tx.protect_rtcp(sr), CLIENT, 1.0)
    events = s.events()
    assert [e.packet for e in events if isinstance(e, RtpReceived)] == [rtp(seq) for seq in range(5)]
    assert [e.packet for e in events if isinstance(e, RtcpReceived)] == [sr]
    # gateway -> client
    assert s.transport.send_rtp(rtp(1, ssrc=7))
    ((data, dest),) = s.mux.datagrams_to_send()
    assert dest == CLIENT and rx.unprotect(data) == rtp(1, ssrc=7)
    record = s.transport.record.as_dict()
    assert record["ice"]["selected_pair"] == {"local": list(GW_ADDR), "remote": list(CLIENT)}
    assert "key" not in repr(record).lower() or "pwd" not in repr(record)


def connected_setup() -> tuple[Setup, object, object]:
    s = Setup()
    s.check(0.0)
    s.mux.datagrams_to_send()
    s.pump_dtls(0.0)
    assert s.transport.state is TransportState.CONNECTED
    s.events()
    tx, rx = client_keys(s.client)
    return s, tx, rx


def test_media_and_dtls_from_unvalidated_address_are_dropped():
    s, tx, _ = connected_setup()
    s.mux.receive(tx.protect(rtp(1)), OTHER, 2.0)
    s.mux.receive(b"\x16\xfe\xfd" + bytes(20), OTHER, 2.0)
    assert s.mux.drops["rtp_from_unknown_address"] == 1
    assert s.mux.drops["dtls_from_unknown_address"] == 1
    assert not [e for e in s.events() if isinstance(e, RtpReceived)]


def test_bad_srtp_is_counted_not_delivered():
    s, tx, _ = connected_setup()
    good = tx.protect(rtp(1))
    bad = bytearray(good)
    bad[-1] ^= 1
    s.mux.receive(bytes(bad), CLIENT, 2.0)
    s.mux.receive(good, CLIENT, 2.0)
    s.mux.receive(good, CLIENT, 2.0)  # replay
    assert [e.packet for e in s.events() if isinstance(e, RtpReceived)] == [rtp(1)]
    assert s.transport.counters.srtp_errors == {"auth": 1, "replay": 1}


def test_client_address_change_is_followed():
    s, tx, _ = connected_setup()
    assert s.check(5.0, addr=OTHER) is not None
    assert s.transport.selected_address == OTHER
    s.mux.receive(tx.protect(rtp(9)), OTHER, 5.1)
    assert [e.packet for e in s.events() if isinstance(e, RtpReceived)] == [rtp(9)]


def test_consent_expiry_fails_the_transport():
    s, _, _ = connected_setup()
    for t in range(5, 30, 5):
        s.check(float(t))
        s.mux.handle_timer(float(t))
    assert s.transport.state is TransportState.CONNECTED
    timer = s.mux.get_timer()
    assert timer is not None and timer <= 25.0 + 30.0 + 1e-6
    s.mux.handle_timer(25.0 + 30.0 + 0.01)
    failed = [e for e in s.events() if isinstance(e, TransportFailed)]
    assert failed and failed[0].reason == "ice_consent_lost"
    assert s.transport.state is TransportState.FAILED
    assert s.mux.transport_for(CLIENT) is None


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (b"", "unclassified"),
        (b"\x40" + bytes(30), "unclassified"),
        (b"\x00\x01\x00\x00" + bytes(16), "stun_without_username"),
        (bytes(3000), "oversize"),
        (b"\x80\x6f" + bytes(30), "rtp_from_unknown_address"),
    ],
)
def test_mux_drops_are_counted(datagram, reason):
    s = Setup()
    s.mux.receive(datagram, CLIENT, 0.0)
    assert s.mux.drops[reason] == 1
    assert s.mux.datagrams_to_send() == []


def test_unknown_ufrag_gets_no_answer():
    s = Setup()
    s.mux.receive(binding_request("nope", "cli1", "p" * 24), CLIENT, 0.0)
    assert s.mux.drops["stun_unknown_ufrag"] == 1
    assert s.mux.datagrams_to_send() == []


def test_peer_close_notify_closes_the_transport():
    from callsgw.transport.media import TransportClosed

    s, tx, _ = connected_setup()
    s.client.close()
    for datagram in s.client.datagrams_to_send():
        s.mux.receive(datagram, CLIENT, 3.0)
    closed = [e for e in s.events() if isinstance(e, TransportClosed)]
    assert closed and closed[0].reason == "dtls_closed_by_peer"
    assert s.transport.state is TransportState.CLOSED and s.transport.rx is None
    s.mux.receive(tx.protect(rtp(3)), CLIENT, 3.1)
    assert s.transport.counters.drops["transport_closed"] == 1

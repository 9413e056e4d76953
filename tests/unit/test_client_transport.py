"""ClientTransport (controlling ICE, DTLS client, SRTP) against the gateway's own transport.

Sans-I/O first: the client's offer is written with ``callsgw.client.sdp``,
checked with the gateway's ``callsgw.sdp.parse_offer``, answered with the
gateway's ``callsgw.sdp.build_answer``, and the answer is fed back to the
client. Datagrams then cross between ``ClientTransport`` and the gateway's
``UdpMux``/``MediaTransport`` under a simulated clock, with loss patterns.
OpenSSL's DTLS retransmission timer reads the wall clock, so no test here
loses DTLS records: DTLS retransmission is not exercised on simulated time.

Then real sockets on loopback: the client's ``MediaChannel`` shell against
the gateway's ``start_udp_server`` (tests/gateway_harness.py) without
signaling, and a whole ``CallSession`` against a scripted signaling stub
(not the real server) in front of that gateway, including glare.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct

import pytest
from aioice import stun as aiostun
from websockets.asyncio.server import serve

from callsgw import sdp as gateway_sdp
from callsgw.client import session as client_session
from callsgw.client.ice import IceControllingAgent, IceState, PairSelected, peer_reflexive_priority
from callsgw.client.sdp import MediaSection, build_offer, parse_answer
from callsgw.client.transport import (
    ClientState,
    ClientTransport,
    Closed,
    Connected,
    Failed,
    RtcpReceived,
    RtpReceived,
)
from callsgw.dtls.certificate import DtlsCertificate
from callsgw.ice.lite import IceLiteAgent
from callsgw.transport.media import (
    MediaTransport,
    RtpReceived as GatewayRtpReceived,
    TransportClosed,
    TransportConnected,
    TransportState,
)
from callsgw.transport.mux import UdpMux
from callsgw.wire import stun
from tests.gateway_harness import TestGateway
from tests.unit.test_client_sdp import gateway_offer_text

GW = ("127.0.0.1", 3478)
CLIENT = ("127.0.0.1", 40000)
OTHER = ("127.0.0.1", 40001)


def rtp(seq: int, ssrc: int = 0x1111, pt: int = 111, payload: bytes = b"\x07" * 40) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 960, ssrc) + payload


def is_stun(data: bytes) -> bool:
    return data[0] < 4


class Rig:
    """One ClientTransport and one gateway MediaTransport on a UdpMux, with a simulated clock."""

    def __init__(self, *, fingerprint: str | None = None, candidates=None, seed: int = 1, **ice_options):
        ice_options.setdefault("rng", random.Random(seed))
        self.client = ClientTransport(now=0.0, **ice_options)
        offer = build_offer(
            self.client.local_ufrag, self.client.local_pwd, self.client.fingerprint, [MediaSection.voice("0", 0x1111)]
        )
        remote = gateway_sdp.parse_offer(offer)
        self.gw_cert = DtlsCertificate.generate()
        self.gateway = MediaTransport(certificate=self.gw_cert, remote=remote, local_address=GW, now=0.0)
        self.mux = UdpMux()
        self.mux.add(self.gateway)
        local = gateway_sdp.LocalTransport(
            self.gateway.local_ufrag, self.gateway.local_pwd, self.gw_cert.fingerprint, (GW[0],), GW[1]
        )
        self.answer = parse_answer(gateway_sdp.build_answer(remote, local))
        self.fingerprint = fingerprint or self.answer.fingerprint
        self.candidates = candidates if candidates is not None else self.answer.candidates
        self.now = 0.0
        self.client_addr = CLIENT  # where the client's socket is (it moves in the ICE restart tests)
        self.sent: list[tuple[float, bytes, tuple]] = []  # everything the client sent
        self.client_events: list = []
        self.gateway_events: list = []

    def start(self, now: float = 0.0) -> None:
        self.now = now
        self.client.start(
            remote_ufrag=self.answer.ice_ufrag,
            remote_pwd=self.answer.ice_pwd,
            remote_fingerprint=self.fingerprint,
            candidates=self.candidates,
            now=now,
        )

    def pump(self, *, up=lambda data: True, down=lambda data: True) -> None:
        """Move queued datagrams both ways until both sides are quiet."""
        for _ in range(100):
            moved = False
            for data, dest in self.client.datagrams_to_send():
                moved = True
                self.sent.append((self.now, data, dest))
                if dest == GW and up(data):
                    self.mux.receive(data, self.client_addr, self.now)
            for data, dest in self.mux.datagrams_to_send():
                moved = True
                if dest == self.client_addr and down(data):
                    self.client.receive(data, GW, self.now)
            self._collect()
            if not moved:
                return
        raise AssertionError("the two sides never went quiet")

    def _collect(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append((self.now, event))
        while (event := self.gateway.next_event()) is not None:
            self.gateway_events.append((self.now, event))

    def run_until(self, end: float, **loss) -> None:
        """Advance the simulated clock through every timer up to ``end``."""
        self.pump(**loss)
        while True:
            timers = [self.client.get_timer()]
            if self.gateway.state not in (TransportState.FAILED, TransportState.CLOSED):
                # a failed MediaTransport keeps reporting its last ICE deadline
                timers.append(self.mux.get_timer())
            timers = [t for t in timers if t is not None]
            due = min(timers) if timers else None
            if due is None or due > end:
                break
            self.now = max(self.now, due)
            self.client.handle_timer(self.now)
            self.mux.handle_timer(self.now)
            self.pump(**loss)
        self.now = max(self.now, end)
        self.pump(**loss)

    def events(self, kind) -> list:
        return [e for _, e in self.client_events if isinstance(e, kind)]

    def stun_sent(self) -> list[tuple[float, aiostun.Message, tuple]]:
        return [(t, aiostun.parse_message(d), dest) for t, d, dest in self.sent if is_stun(d)]


def connected_rig(**options) -> Rig:
    rig = Rig(**options)
    rig.start()
    rig.run_until(1.0)
    assert rig.client.state is ClientState.CONNECTED, rig.client_events
    assert rig.gateway.state is TransportState.CONNECTED
    return rig


# -- the happy path ---------------------------------------------------------------


def test_ice_selects_the_pair_then_dtls_then_srtp_both_ways():
    rig = Rig()
    rig.start()
    rig.run_until(1.0)
    assert rig.client.state is ClientState.CONNECTED
    assert rig.client.selected_address == GW
    assert rig.gateway.selected_address == CLIENT
    (connected,) = rig.events(Connected)
    record = connected.record
    assert record.remote_address == GW and record.mapped_address == CLIENT
    assert record.dtls.role == "client" and record.dtls.fingerprint_matched
    assert record.dtls.remote_fingerprint == rig.gw_cert.fingerprint
    assert record.dtls.local_fingerprint == rig.client.fingerprint
    assert record.srtp_profile == rig.gateway.record.srtp_profile == "AEAD_AES_128_GCM"
    assert record.as_dict()["ice"]["selected_pair"] == {"local": list(CLIENT), "remote": list(GW)}
    # one check was enough, and nothing but STUN went out before it was answered
    assert rig.client.ice.stats["checks_sent"] == 1 and rig.client.ice.stats["retransmissions"] == 0
    assert is_stun(rig.sent[0][1])
    assert [e for _, e in rig.gateway_events if isinstance(e, TransportConnected)]

    # client -> gateway, RTP and RTCP
    for seq in range(5):
        assert rig.client.send_rtp(rtp(seq))
    sr = struct.pack("!BBHI", 0x80, 200, 6, 0x1111) + bytes(20)
    assert rig.client.send_rtcp(sr)
    rig.pump()
    received = [e.packet for _, e in rig.gateway_events if isinstance(e, GatewayRtpReceived)]
    assert received == [rtp(seq) for seq in range(5)]
    assert rig.gateway.counters.rtcp_in == 1
    # gateway -> client
    for seq in range(3):
        assert rig.gateway.send_rtp(rtp(seq, ssrc=0x2222))
    assert rig.gateway.send_rtcp(sr)
    rig.pump()
    assert [e.packet for e in rig.events(RtpReceived)] == [rtp(seq, ssrc=0x2222) for seq in range(3)]
    assert [e.packet for e in rig.events(RtcpReceived)] == [sr]
    assert rig.client.counters.srtp_errors == {} and rig.gateway.counters.srtp_errors == {}


def test_the_check_is_a_controlling_nominating_check_signed_with_the_remote_password():
    rig = Rig()
    rig.start()
    ((data, dest),) = rig.client.datagrams_to_send()
    assert dest == GW
    msg = aiostun.parse_message(data)
    assert (msg.message_method, msg.message_class) == (aiostun.Method.BINDING, aiostun.Class.REQUEST)
    assert msg.attributes["USERNAME"] == f"{rig.gateway.local_ufrag}:{rig.client.local_ufrag}"
    assert msg.attributes["PRIORITY"] == peer_reflexive_priority() == (110 << 24) | (65535 << 8) | 255
    assert msg.attributes["ICE-CONTROLLING"] == rig.client.ice.tie_breaker
    assert "USE-CANDIDATE" in msg.attributes and "ICE-CONTROLLED" not in msg.attributes
    # MESSAGE-INTEGRITY with the gateway's password, checked by aioice and by callsgw.wire.stun
    assert msg.check_message_integrity(rig.gateway.local_pwd.encode())
    assert not msg.check_message_integrity(rig.client.local_pwd.encode())
    assert stun.authenticate(data, rig.gateway.local_pwd) is stun.Verdict.OK
    assert list(msg.attributes)[-1] == "FINGERPRINT"
    # the gateway's own lite agent accepts it and sees the nomination
    lite = IceLiteAgent(rig.gateway.local_ufrag, rig.gateway.local_pwd, rig.client.local_ufrag, rig.client.local_pwd)
    assert lite.receive(data, CLIENT, 0.0) is not None
    assert lite.selected_address == CLIENT


def test_tie_breakers_are_random_64_bit():
    values = {IceControllingAgent("ufrag1", "p" * 22).tie_breaker for _ in range(8)}
    assert len(values) == 8 and all(0 <= v < 2**64 for v in values)


# -- failures ---------------------------------------------------------------------


def test_wrong_gateway_fingerprint_fails_the_handshake():
    rig = Rig(fingerprint=DtlsCertificate.generate().fingerprint)
    rig.start()
    rig.run_until(2.0)
    assert rig.client.state is ClientState.FAILED
    (failed,) = rig.events(Failed)
    assert failed.reason == "fingerprint_mismatch"
    assert rig.client.tx is None and rig.client.rx is None
    assert not rig.client.send_rtp(rtp(1))
    # the client aborted with an alert: the gateway never connects
    assert rig.gateway.state is not TransportState.CONNECTED
    assert not [e for _, e in rig.gateway_events if isinstance(e, TransportConnected)]
    # and the client stops talking, consent checks included
    count = len(rig.sent)
    rig.run_until(60.0)
    assert len(rig.sent) == count


def test_lost_checks_are_retransmitted_with_rto_doubling():
    dropped = []

    def lose_first_three(data):
        if is_stun(data) and len(dropped) < 3:
            dropped.append(data)
            return False
        return True

    rig = Rig()
    rig.start()
    rig.run_until(10.0, up=lose_first_three)
    assert rig.client.state is ClientState.CONNECTED
    checks = rig.stun_sent()[:4]
    # RFC 8489 section 6.2.1: the same transaction, at 0, RTO, 3 RTO, 7 RTO (RTO = 500 ms)
    assert [t for t, _, _ in checks] == pytest.approx([0.0, 0.5, 1.5, 3.5])
    assert len({m.transaction_id for _, m, _ in checks}) == 1
    assert len({d for _, d, _ in rig.sent[:4]}) == 1  # byte-identical retransmissions
    assert rig.client.ice.stats["retransmissions"] == 3
    assert rig.events(Connected)


def test_checks_are_paced_by_ta_and_stop_once_a_pair_is_selected():
    dead = [("192.0.2.1", 9), ("192.0.2.2", 9)]
    rig = Rig(candidates=dead + [GW])
    rig.start()
    rig.run_until(5.0)
    assert rig.client.selected_address == GW
    firsts = {}
    for t, msg, dest in rig.stun_sent():
        firsts.setdefault(dest, t)
    # RFC 8445 section 14.2: one new check every Ta = 50 ms, in candidate order
    assert [firsts[d] for d in dead + [GW]] == pytest.approx([0.0, 0.05, 0.10])
    selected_at = next(t for t, e in rig.client_events if isinstance(e, Connected))
    assert not [d for t, _, d in rig.sent if t > selected_at and d != GW]


def test_ice_fails_when_the_gateway_never_answers():
    rig = Rig()
    rig.start()
    rig.run_until(60.0, up=lambda data: False)
    (failed,) = rig.events(Failed)
    assert failed.reason == "ice_failed"
    failed_at = next(t for t, e in rig.client_events if isinstance(e, Failed))
    # Rc = 7 transmissions, RTO 0.5 s doubling to a 3 s cap, one more RTO: 15.5 s
    assert failed_at == pytest.approx(15.5)
    assert rig.client.ice.stats["checks_sent"] == 1 and rig.client.ice.stats["retransmissions"] == 6
    assert all(t < failed_at for t, _, _ in rig.sent)
    assert rig.client.get_timer() is None


def test_authenticated_error_response_fails_the_pair():
    rig = Rig()
    rig.start()
    ((data, _),) = rig.client.datagrams_to_send()
    request = stun.parse(data)
    refusal = stun.binding_error(request, 400, "Bad Request", rig.gateway.local_pwd)
    forged = stun.binding_error(request, 400, "Bad Request", "x" * 24)
    rig.client.receive(forged, GW, 0.01)
    assert rig.client.state is ClientState.CHECKING and rig.client.ice.stats["bad_integrity"] == 1
    rig.client.receive(refusal, GW, 0.02)
    rig._collect()
    assert rig.client.state is ClientState.FAILED
    assert [e.reason for e in rig.events(Failed)] == ["ice_failed"]


def test_consent_checks_keep_the_session_and_silence_fails_it():
    rig = connected_rig(seed=7)
    rig.run_until(120.0)
    # RFC 7675 section 5.1: checks every 5 s, randomised to 4..6 s; the lite
    # gateway's own consent (30 s) is kept alive by them
    assert rig.client.state is ClientState.CONNECTED and rig.gateway.state is TransportState.CONNECTED
    times = [t for t, _, _ in rig.stun_sent()][1:]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 19 and all(4.0 - 1e-9 <= g <= 6.0 + 1e-9 for g in gaps)
    assert len({round(g, 6) for g in gaps}) > 1  # actually randomised
    assert all("USE-CANDIDATE" in m.attributes for _, m, _ in rig.stun_sent())
    assert rig.client.ice.stats["consent_checks_sent"] == len(times)
    last_answered = times[-1]

    # from now on the gateway's answers are lost
    rig.run_until(200.0, down=lambda data: False)
    (failed,) = rig.events(Failed)
    assert failed.reason == "ice_consent_lost"
    failed_at = next(t for t, e in rig.client_events if isinstance(e, Failed))
    assert failed_at == pytest.approx(last_answered + 30.0)
    assert rig.client.state is ClientState.FAILED and rig.client.ice.state is IceState.FAILED
    # RFC 7675: cease transmission, media included
    assert not [t for t, _, _ in rig.sent if t > failed_at]
    assert not rig.client.send_rtp(rtp(99))
    # a late answer does not revive it
    before = rig.client.ice.stats["closed"]
    rig.client.receive(b"\x01\x01\x00\x00" + bytes(16), GW, 201.0)
    assert rig.client.state is ClientState.FAILED and rig.client.counters.drops["not_running"] == 1
    assert rig.client.ice.stats["closed"] == before


def test_a_late_consent_answer_counts_only_for_30_s():
    """A response to a check sent more than 30 s ago does not renew consent (RFC 7675 section 5.1)."""
    agent = IceControllingAgent("cliUfrag", "c" * 24, "gwUfrag1", "g" * 24, [GW], rng=random.Random(3))
    lite = IceLiteAgent("gwUfrag1", "g" * 24, "cliUfrag", "c" * 24, consent_timeout=1000)
    agent.start(0.0)
    ((check, _),) = agent.datagrams_to_send()
    agent.receive(lite.receive(check, CLIENT, 0.0), GW, 0.0)
    assert isinstance(agent.next_event(), PairSelected)
    held = []
    now = 0.0
    while agent.state is IceState.CONNECTED and now < 100:
        now = agent.get_timer()
        agent.handle_timer(now)
        held += [d for d, _ in agent.datagrams_to_send()]
    assert agent.state is IceState.FAILED and now == pytest.approx(30.0)
    # answering now the checks held back changes nothing
    for data in held:
        agent.receive(lite.receive(data, CLIENT, now), GW, now + 0.1)
    assert agent.state is IceState.FAILED


# -- hostile input ----------------------------------------------------------------


def test_forged_and_misdirected_responses_are_ignored():
    rig = Rig()
    rig.start()
    ((check, _),) = rig.client.datagrams_to_send()
    request = stun.parse(check)
    good = stun.binding_success(request, CLIENT, rig.gateway.local_pwd)
    wrong_key = stun.binding_success(request, CLIENT, "k" * 24)
    other_tid = aiostun.Message(aiostun.Method.BINDING, aiostun.Class.RESPONSE)
    other_tid.attributes["XOR-MAPPED-ADDRESS"] = CLIENT
    other_tid.add_message_integrity(rig.gateway.local_pwd.encode())
    no_fingerprint = good[:-8]
    no_fingerprint = no_fingerprint[:2] + (len(no_fingerprint) - 20).to_bytes(2, "big") + no_fingerprint[4:]
    as_request = bytearray(good)
    as_request[0:2] = b"\x00\x01"
    for data, addr in [
        (wrong_key, GW),  # not signed with the gateway's password
        (bytes(other_tid), GW),  # not our transaction
        (good, OTHER),  # the right answer from the wrong address (RFC 8445 7.2.5.2.1)
        (no_fingerprint, GW),
        (bytes(as_request), GW),  # a "request" (and a broken fingerprint)
        (check, GW),  # our own request reflected
    ]:
        rig.client.receive(data, addr, 0.01)
    assert rig.client.state is ClientState.CHECKING and rig.client.selected_address is None
    stats = rig.client.ice.stats
    assert stats["bad_integrity"] == 1 and stats["unknown_transaction"] == 1 and stats["wrong_source"] == 1
    assert stats["no_fingerprint"] == 1 and stats["bad_fingerprint"] == 1 and stats["unexpected_request"] == 1
    rig.client.receive(good, GW, 0.02)
    assert rig.client.selected_address == GW and rig.client.state is ClientState.CONNECTING


def test_dtls_and_media_only_from_the_selected_address():
    rig = connected_rig()
    assert rig.gateway.send_rtp(rtp(1, ssrc=0x2222))
    ((protected, _),) = rig.mux.datagrams_to_send()
    rig.client.receive(protected, OTHER, 2.0)
    rig.client.receive(b"\x16\xfe\xfd" + bytes(30), OTHER, 2.0)
    rig._collect()
    assert not rig.events(RtpReceived)
    drops = rig.client.counters.drops
    assert drops["rtp_from_unselected_address"] == 1 and drops["dtls_from_unselected_address"] == 1
    rig.client.receive(protected, GW, 2.0)
    rig.client.receive(protected, GW, 2.0)  # replayed
    rig._collect()
    assert [e.packet for e in rig.events(RtpReceived)] == [rtp(1, ssrc=0x2222)]
    assert rig.client.counters.srtp_errors == {"replay": 1}


def test_dtls_before_selection_is_dropped():
    rig = Rig()
    rig.start()
    rig.client.receive(b"\x16\xfe\xfd" + bytes(30), GW, 0.01)
    assert rig.client.counters.drops["dtls_from_unselected_address"] == 1
    assert rig.client.dtls is None


def garbage(rng: random.Random) -> bytes:
    first = rng.choice([0, 1, 2, 3, 20, 22, 23, 63, 64, 128, 144, 191, 200, 255])
    body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
    data = bytes([first]) + body
    if first < 4 and len(data) >= 20 and rng.random() < 0.5:
        # well-framed STUN with a random body, sometimes with the magic cookie
        data = bytes([first, rng.getrandbits(8)]) + (len(data) - 20).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + data[8:]
        data = data[: 20 + ((len(data) - 20) // 4) * 4]
        data = data[:2] + (len(data) - 20).to_bytes(2, "big") + data[4:]
    return data


@pytest.mark.parametrize("phase", ["new", "checking", "connected"])
def test_garbage_datagrams_never_raise(phase):
    rng = random.Random(hash(phase) & 0xFFFF)
    rig = Rig()
    if phase != "new":
        rig.start()
    if phase == "connected":
        rig.run_until(1.0)
    state = rig.client.state
    for n in range(3000):
        data = garbage(rng)
        rig.client.receive(data, rng.choice([GW, OTHER, ("::1", 3478)]), rig.now + n * 0.0001)
    rig.client.receive(bytes(5000), GW, rig.now + 1)
    rig._collect()
    assert rig.client.state is state
    assert not rig.events(Failed) and not rig.events(RtpReceived)
    if phase == "connected":
        # still working afterwards
        assert rig.gateway.send_rtp(rtp(5, ssrc=0x2222))
        rig.pump()
        assert [e.packet for e in rig.events(RtpReceived)] == [rtp(5, ssrc=0x2222)]


# -- closing ----------------------------------------------------------------------


def test_close_sends_close_notify_and_stops_everything():
    rig = connected_rig()
    rig.client.close(rig.now)
    rig.pump()
    assert rig.client.state is ClientState.CLOSED
    assert [e.reason for e in rig.events(Closed)] == ["closed"]
    closed = [e for _, e in rig.gateway_events if isinstance(e, TransportClosed)]
    assert closed and closed[0].reason == "dtls_closed_by_peer"
    count = len(rig.sent)
    rig.run_until(100.0)
    assert len(rig.sent) == count and not rig.client.send_rtp(rtp(1))


def test_gateway_close_notify_closes_the_client():
    rig = connected_rig()
    rig.gateway.close(rig.now)
    rig.pump()
    assert rig.client.state is ClientState.CLOSED
    assert [e.reason for e in rig.events(Closed)] == ["dtls_closed_by_peer"]


def test_start_validates_its_parameters():
    client = ClientTransport()
    with pytest.raises(ValueError):
        client.start(remote_ufrag="gwUfrag1", remote_pwd="g" * 24, remote_fingerprint="nope", candidates=[GW], now=0)
    with pytest.raises(ValueError, match="no remote candidate"):
        ClientTransport().start(remote_ufrag="gwUfrag1", remote_pwd="g" * 24,
                                remote_fingerprint=":".join(["AB"] * 32), candidates=[], now=0)
    with pytest.raises(ValueError, match="candidate"):
        ClientTransport().start(remote_ufrag="gwUfrag1", remote_pwd="g" * 24,
                                remote_fingerprint=":".join(["AB"] * 32), candidates=[("gw.example", 1)], now=0)


# -- real sockets on loopback -------------------------------------------------------


async def test_loopback_udp_against_the_gateway_server():
    gw = await TestGateway(echo=True).start()
    loop = asyncio.get_running_loop()
    events: list = []
    connected = asyncio.Event()
    got_echo = asyncio.Event()

    def on_event(event):
        events.append(event)
        if isinstance(event, Connected):
            connected.set()
        if isinstance(event, RtpReceived) and len([e for e in events if isinstance(e, RtpReceived)]) >= 10:
            got_echo.set()

    core = ClientTransport(now=loop.time())
    offer = build_offer(core.local_ufrag, core.local_pwd, core.fingerprint, [MediaSection.voice("0", 0x3333)])
    answer = parse_answer(gw.answer(offer))
    channel = await client_session.open_media_channel(core, on_event=on_event)
    try:
        channel.start(
            remote_ufrag=answer.ice_ufrag,
            remote_pwd=answer.ice_pwd,
            remote_fingerprint=answer.fingerprint,
            candidates=answer.candidates,
        )
        async with asyncio.timeout(10):
            await connected.wait()
            await gw.connected.wait()
        (transport,) = gw.transports
        assert transport.selected_address == ("127.0.0.1", channel.local_address[1])
        for seq in range(20):
            assert channel.send_rtp(rtp(seq, ssrc=0x3333))
            await asyncio.sleep(0.005)
        async with asyncio.timeout(10):
            await got_echo.wait()
        assert gw.received_rtp(transport) >= 10
        echoed = [e.packet for e in events if isinstance(e, RtpReceived)]
        assert all(int.from_bytes(p[8:12], "big") == 0x3333 ^ 0x5A5A5A5A for p in echoed)
        assert core.record.dtls.role == "client" and transport.record.dtls.role == "server"
        assert core.record.srtp_profile == transport.record.srtp_profile
        assert transport.counters.srtp_errors == {} and core.counters.srtp_errors == {}
        channel.close()
        async with asyncio.timeout(5):
            while not [e for e in gw.events[transport] if isinstance(e, TransportClosed)]:
                await asyncio.sleep(0.02)
    finally:
        channel.close()
        gw.close()


# -- a whole CallSession against a scripted signaling stub ---------------------------


class SignalingStub:
    """A WebSocket server speaking callsgw.v1 just enough for one client; the test drives it.

    Media goes to a real TestGateway, so ICE, DTLS and SRTP are real.
    """

    def __init__(self, gw: TestGateway):
        self.gw = gw
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.ws = None
        self.connected = asyncio.Event()
        self.server = None
        self.subprotocol = None

    async def start(self) -> "SignalingStub":
        self.server = await serve(self._handler, "127.0.0.1", 0, subprotocols=["callsgw.v1"])
        return self

    @property
    def url(self) -> str:
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def _handler(self, ws):
        self.ws = ws
        self.subprotocol = ws.subprotocol
        self.connected.set()
        try:
            async for raw in ws:
                await self.incoming.put(json.loads(raw))
        except Exception:
            pass

    async def recv(self, kind: str | None = None, timeout: float = 5) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.incoming.get()
                if kind is None or msg["type"] == kind:
                    return msg

    async def send(self, msg: dict) -> None:
        await self.ws.send(json.dumps(msg))

    def answer_for(self, offer_sdp: str) -> str:
        """The gateway's answer on the already registered transport."""
        (transport,) = self.gw.transports
        host, port = self.gw.address
        remote = gateway_sdp.parse_offer(offer_sdp)
        local = gateway_sdp.LocalTransport(
            transport.local_ufrag, transport.local_pwd, self.gw.certificate.fingerprint, (host,), port
        )
        return gateway_sdp.build_answer(remote, local)

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def join(stub: SignalingStub, **kwargs):
    task = asyncio.create_task(client_session.connect(stub.url, "token-1", name="alice", **kwargs))
    join_msg = await stub.recv("join")
    assert join_msg["token"] == "token-1" and join_msg["name"] == "alice"
    answer = stub.gw.answer(join_msg["sdp"])
    await stub.send({
        "type": "joined", "protocol": 1, "call": "c1",
        "participant": {"id": "alice-id", "name": "alice"},
        "participants": [{"id": "bob", "name": "bob", "muted": False, "sharing": False}],
        "sdp": answer, "tls": None, "ice_lite": True,
    })
    session = await asyncio.wait_for(task, 5)
    return session, join_msg


async def test_call_session_media_events_renegotiation_and_glare():
    gw = await TestGateway(echo=True).start()
    stub = await SignalingStub(gw).start()
    try:
        session, join_msg = await join(stub)
        assert stub.subprotocol == "callsgw.v1"
        assert (session.participant_id, session.call_id, session.tls) == ("alice-id", "c1", None)
        assert set(session.participants) == {"bob"}
        offered = gateway_sdp.parse_offer(join_msg["sdp"])
        assert offered.bundle_mids == ("0",)
        record = await session.wait_connected(10)
        assert record.dtls.role == "client" and session.security is record
        # media: SSRC rewritten to the announced one, echoed by the gateway
        voice_ssrc = session.voice_ssrc
        assert f"a=ssrc:{voice_ssrc} cname:" in join_msg["sdp"]
        for seq in range(10):
            assert session.send_voice(rtp(seq, ssrc=0xABCDEF))
            await asyncio.sleep(0.005)
        packet = await asyncio.wait_for(session.rtp.get(), 5)
        assert int.from_bytes(packet[8:12], "big") == voice_ssrc ^ 0x5A5A5A5A
        assert packet[2:4] in {rtp(seq)[2:4] for seq in range(10)}  # sequence numbers kept

        # participant events keep `participants` current
        await stub.send({"type": "participant_joined",
                         "participant": {"id": "carol", "name": "carol", "muted": False, "sharing": False}})
        await stub.send({"type": "mute", "participant_id": "bob", "muted": True})
        await stub.send({"type": "participant_left", "participant_id": "carol", "reason": "left"})
        pinging = asyncio.create_task(session.ping())
        ping = await stub.recv("ping")
        await stub.send({"type": "pong", "id": ping["id"]})
        await asyncio.wait_for(pinging, 5)  # messages are handled in order: all the above are in
        assert set(session.participants) == {"bob"} and session.participants["bob"]["muted"] is True

        # mute: announced, and voice stops leaving
        await session.mute(True)
        assert (await stub.recv("mute"))["muted"] is True
        assert not session.send_voice(rtp(50))
        await session.mute(False)
        await stub.recv("mute")

        # a gateway offer adds bob's voice: answered at once, mids kept
        host, port = gw.address
        (transport,) = gw.transports
        offer1 = gateway_offer_text([
            dict(mid="0", kind="audio", direction="recvonly"),
            dict(mid="1", kind="audio", direction="sendonly", ssrc=4242),
        ], ufrag=transport.local_ufrag, pwd=transport.local_pwd, fp=gw.certificate.fingerprint, port=port)
        await stub.send({"type": "offer", "id": 1, "sdp": offer1})
        answer1 = await stub.recv("answer")
        assert answer1["id"] == 1
        parsed = gateway_sdp.parse_offer(answer1["sdp"])
        assert parsed.setup == "active" and parsed.bundle_mids == ("0", "1")
        assert [m.direction for m in parsed.description.media] == ["sendonly", "recvonly"]
        assert [s.mid for s in session.sections] == ["0", "1"]

        # glare: our screen offer crosses a gateway offer
        share = asyncio.create_task(session.set_screen_share(True))
        assert (await stub.recv("screen"))["sharing"] is True
        ping = await stub.recv("ping")
        await stub.send({"type": "pong", "id": ping["id"]})
        crossed = await stub.recv("offer")
        crossed_media = gateway_sdp.parse_offer(crossed["sdp"]).description.media
        assert [m.kind for m in crossed_media] == ["audio", "audio", "video"]
        offer2 = gateway_offer_text([
            dict(mid="0", kind="audio", direction="recvonly"),
            dict(mid="1", kind="audio", direction="sendonly", ssrc=4242),
            dict(mid="2", kind="audio", direction="sendonly", ssrc=4343),
        ], ufrag=transport.local_ufrag, pwd=transport.local_pwd, fp=gw.certificate.fingerprint, port=port)
        await stub.send({"type": "offer", "id": 2, "sdp": offer2})
        await stub.send({"type": "error", "code": "glare", "message": "roll back", "ref": "offer",
                         "id": crossed["id"]})
        answer2 = await stub.recv()
        assert answer2["type"] == "answer" and answer2["id"] == 2
        assert [m.rtp.muxId for m in gateway_sdp.parse_offer(answer2["sdp"]).description.media] == ["0", "1", "2"]
        again = await stub.recv("offer")
        assert again["id"] != crossed["id"]
        media = gateway_sdp.parse_offer(again["sdp"]).description.media
        assert [(m.rtp.muxId, m.kind, m.direction) for m in media] == [
            ("0", "audio", "sendonly"), ("1", "audio", "recvonly"), ("2", "audio", "recvonly"),
            ("3", "video", "sendonly"),
        ]
        await stub.send({"type": "answer", "id": again["id"], "sdp": stub.answer_for(again["sdp"])})
        await asyncio.wait_for(share, 5)
        assert session.sharing and session.screen_ssrc and session.stats["glare"] >= 1
        assert session.send_screen(rtp(1, pt=96))

        # stop sharing: the section goes to port 0, keeping its mid
        stop = asyncio.create_task(session.set_screen_share(False))
        assert (await stub.recv("screen"))["sharing"] is False
        ping = await stub.recv("ping")
        await stub.send({"type": "pong", "id": ping["id"]})
        off = await stub.recv("offer")
        media = gateway_sdp.parse_offer(off["sdp"]).description.media
        assert [(m.rtp.muxId, m.port) for m in media] == [("0", 9), ("1", 9), ("2", 9), ("3", 0)]
        await stub.send({"type": "answer", "id": off["id"], "sdp": stub.answer_for(off["sdp"])})
        await asyncio.wait_for(stop, 5)
        assert not session.sharing and not session.send_screen(rtp(2, pt=96))

        # a refused screen share raises and changes nothing
        refused = asyncio.create_task(session.set_screen_share(True))
        await stub.recv("screen")
        await stub.send({"type": "error", "code": "screen_busy", "message": "bob is sharing", "ref": "screen"})
        ping = await stub.recv("ping")
        await stub.send({"type": "pong", "id": ping["id"]})
        with pytest.raises(client_session.SignalingError) as info:
            await asyncio.wait_for(refused, 5)
        assert info.value.code == "screen_busy" and not session.sharing

        # leave: the gateway closes with 1000
        leaving = asyncio.create_task(session.leave())
        await stub.recv("leave")
        await stub.ws.close(1000, "left")
        closed = await asyncio.wait_for(leaving, 5)
        assert closed == client_session.SessionClosed(1000, "left")
        assert await session.wait_closed() == closed
        events = []
        while not session.events.empty():
            events.append(session.events.get_nowait()["type"])
        assert events[0] == "joined" and "offer" in events and "error" in events
    finally:
        await stub.close()
        gw.close()


async def test_refused_join_raises_join_error_with_the_close_code():
    gw = await TestGateway().start()
    stub = await SignalingStub(gw).start()
    try:
        task = asyncio.create_task(client_session.connect(stub.url, "expired"))
        await stub.recv("join")
        await stub.ws.close(4002, "token expired")
        with pytest.raises(client_session.JoinError) as info:
            await asyncio.wait_for(task, 5)
        assert (info.value.code, info.value.reason) == (4002, "token expired")
    finally:
        await stub.close()
        gw.close()


def test_candidate_order_prefers_what_is_reachable():
    cands = [("192.0.2.7", 3478), ("127.0.0.1", 3478), ("2001:db8::1", 3478)]
    assert client_session.order_candidates(cands, "127.0.0.1") == [("127.0.0.1", 3478)]
    assert client_session.order_candidates(cands, "::ffff:127.0.0.1") == [("127.0.0.1", 3478)]
    assert client_session.order_candidates(cands, "198.51.100.1") == [("192.0.2.7", 3478)]
    assert client_session.order_candidates(list(reversed(cands)), "192.0.2.7") == [("192.0.2.7", 3478)]
    assert client_session.order_candidates(list(reversed(cands)), None) == [("2001:db8::1", 3478)]
    assert client_session.order_candidates([("127.0.0.1", 1)], "192.0.2.7") == []
    assert client_session.order_candidates([("192.0.2.7", 1)], "127.0.0.1") == [("192.0.2.7", 1)]


def test_tls_options():
    import ssl

    assert client_session._ssl_context("ws://h/ws", None, None) is None
    insecure = client_session._ssl_context("wss://h/ws", False, None)
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    assert insecure.minimum_version == ssl.TLSVersion.TLSv1_2
    secure = client_session._ssl_context("wss://h/ws", None, None)
    assert secure.verify_mode == ssl.CERT_REQUIRED and secure.check_hostname
    with pytest.raises(ValueError):
        client_session._ssl_context("http://h/ws", None, None)
    with pytest.raises(ValueError):
        client_session._ssl_context("ws://h/ws", None, "/tmp/ca.pem")


# -- ICE restart (RFC 8445 section 9) -----------------------------------------------


def restart(rig: Rig) -> tuple[str, str]:
    """What an offer/answer with new ICE credentials does to both sides; returns the gateway's new ones."""
    ufrag, pwd = rig.client.begin_ice_restart()
    assert rig.client.offer_credentials == (ufrag, pwd) and rig.client.restarting_ice
    offer = build_offer(ufrag, pwd, rig.client.fingerprint, [MediaSection.voice("0", 0x1111)])
    gw_ufrag, gw_pwd = IceLiteAgent.generate_credentials()
    rig.gateway.restart_ice(gw_ufrag, gw_pwd, gateway_sdp.parse_offer(offer))
    rig.mux.refresh(rig.gateway)
    rig.client.complete_ice_restart(remote_ufrag=gw_ufrag, remote_pwd=gw_pwd, candidates=[GW], now=rig.now)
    return gw_ufrag, gw_pwd


def test_ice_restart_moves_the_client_and_keeps_srtp_continuous():
    from callsgw.client.transport import IceRestarted

    rig = connected_rig()
    old_gw_ufrag = rig.gateway.local_ufrag
    # sequence numbers that wrap across the move: the rollover counter must carry on (RFC 3711 3.3.1)
    for seq in range(65530, 65536):
        assert rig.client.send_rtp(rtp(seq))
        assert rig.gateway.send_rtp(rtp(seq, ssrc=0x2222))
    rig.pump()
    rig.client_addr = OTHER  # the network changed: the old address is gone, both ways
    gw_ufrag, _ = restart(rig)
    rig.run_until(rig.now + 1.0)
    assert rig.events(IceRestarted) == [IceRestarted(GW, OTHER)]
    assert not rig.client.restarting_ice and rig.client.record.ice_restarts == 1
    assert rig.client.record.mapped_address == OTHER and rig.client.local_ufrag != rig.client.record.ice_remote_ufrag
    assert rig.gateway.selected_address == OTHER and not rig.gateway.ice.is_validated(CLIENT)
    assert rig.gateway.record.ice_local_ufrag == gw_ufrag != old_gw_ufrag and rig.gateway.record.ice_restarts == 1
    assert rig.mux.transport_for(CLIENT) is None and rig.mux.transport_for(OTHER) is rig.gateway
    for seq in range(0, 6):
        assert rig.client.send_rtp(rtp(seq))
        assert rig.gateway.send_rtp(rtp(seq, ssrc=0x2222))
    rig.pump()
    received = [e.packet for _, e in rig.gateway_events if isinstance(e, GatewayRtpReceived)]
    assert received == [rtp(seq) for seq in [*range(65530, 65536), *range(6)]]
    assert [e.packet for e in rig.events(RtpReceived)] == [rtp(seq, ssrc=0x2222) for seq in [*range(65530, 65536), *range(6)]]
    assert rig.client.counters.srtp_errors == {} and rig.gateway.counters.srtp_errors == {}
    # the old address is no longer accepted, and its old ufrag is gone from the port
    assert rig.client.send_rtp(rtp(6))
    ((data, _),) = rig.client.datagrams_to_send()
    assert rig.mux.receive(data, CLIENT, rig.now) is None
    assert rig.mux.drops["rtp_from_unknown_address"] == 1
    assert rig.gateway.state is TransportState.CONNECTED and rig.client.state is ClientState.CONNECTED


def test_a_restart_survives_the_old_path_expiring_and_a_refused_one_fails_then():
    rig = connected_rig(consent_interval=1.0, consent_timeout=4.0)
    rig.client.begin_ice_restart()  # the offer is on its way; the answer is slow
    rig.run_until(rig.now + 6.0, up=lambda data: False)  # and the path is dead
    assert rig.client.ice.state is IceState.FAILED  # the old agent's consent expired...
    assert rig.client.state is ClientState.CONNECTED and rig.client.restarting_ice  # ...but we wait for the restart
    assert not rig.client.send_rtp(rtp(1))  # nowhere to send meanwhile
    rig.client.cancel_ice_restart(rig.now)  # the gateway refused the offer
    rig.pump()
    assert rig.client.state is ClientState.FAILED and rig.events(Failed)[-1].reason == "ice_consent_lost"


def test_a_restart_answered_in_time_rescues_a_dead_path():
    from callsgw.client.transport import IceRestarted

    rig = connected_rig(consent_interval=1.0, consent_timeout=4.0)
    rig.run_until(rig.now + 6.0, up=lambda data: False)  # the path died and consent with it
    assert rig.client.state is ClientState.FAILED  # no restart was running: that is terminal
    rig = connected_rig(consent_interval=1.0, consent_timeout=4.0)
    rig.run_until(rig.now + 2.5, up=lambda data: False)  # two checks lost: time to restart
    rig.client_addr = OTHER  # on a new network
    assert rig.client.ice.consent_age(rig.now) > 2.0
    restart(rig)
    rig.run_until(rig.now + 10.0)
    assert len(rig.events(IceRestarted)) == 1 and rig.client.state is ClientState.CONNECTED
    assert rig.gateway.state is TransportState.CONNECTED and rig.gateway.selected_address == OTHER


def test_restart_refusals():
    rig = Rig()
    with pytest.raises(ValueError):
        rig.client.begin_ice_restart()  # not started
    rig = connected_rig()
    with pytest.raises(ValueError, match="waiting"):
        rig.client.complete_ice_restart(remote_ufrag="abcd", remote_pwd="p" * 22, candidates=[GW], now=rig.now)
    first = rig.client.begin_ice_restart()
    assert rig.client.begin_ice_restart() == first  # pending: the same credentials again
    rig.client.cancel_ice_restart(rig.now)
    assert not rig.client.restarting_ice and rig.client.state is ClientState.CONNECTED
    assert rig.client.offer_credentials == (rig.client.local_ufrag, rig.client.local_pwd)

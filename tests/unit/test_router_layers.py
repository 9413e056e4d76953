"""Simulcast screen share through the router (issue #19 deliverable 3), sans-I/O with a simulated clock.

A simulated publisher sends two RFC 8853 layers of one screen track, each
SSRC announced by the RFC 8852 RtpStreamId element (RTX by the
RepairedRtpStreamId), and answers the router's PLIs with a keyframe on the
SSRC asked for. Subscribers get one ordinary VP8 stream with the gateway's
SSRC, the layer chosen by callsgw.sfu.layers from simulated downlink
estimates. Packets are read back with aiortc's parsers.
"""

from __future__ import annotations


import pytest
from aiortc import rtp as aio
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters

from callsgw.sfu.layers import DOWN_HOLD, PAUSE_HOLD, UP_HOLD
from callsgw.sfu.layers import TICK as LAYER_TICK
from callsgw.sfu.router import Router
from callsgw.signaling.negotiation import RID_URI, RRID_URI, Section
from callsgw.wire import vp8 as vp8_wire
from tests.packets import rtp as make_rtp
from tests.unit.test_router import exts, extensions_of, forwarded, one_byte, opus, rtp_for, rtx, vp8, voice_packet

MID_ID, RID_ID, RRID_ID = 4, 10, 11
SSRCS = {"h": 0xAAA1, "l": 0xAAA2}
RTX_SSRCS = {"h": 0xBBB1, "l": 0xBBB2}
# bytes per packet and packets per 10 ms step: h about 800 kbit/s, l about 48 kbit/s
SHAPE = {"h": (1000, 1), "l": (600, 10)}


@pytest.fixture(params=["python", "native"])
def make_router(request):
    made = []

    def factory():
        if request.param == "python":
            router = Router()
        else:
            from tests.native_router import NativeRouter

            router = NativeRouter()
            made.append(router)
        return router

    yield factory
    for router in made:
        router.close()


def screen_section(rids=("h", "l")):
    extensions = exts(mid=MID_ID) + [RTCRtpHeaderExtensionParameters(id=RID_ID, uri=RID_URI),
                                     RTCRtpHeaderExtensionParameters(id=RRID_ID, uri=RRID_URI)]
    return Section(mid="1", kind="video", direction="recvonly", codecs=[vp8(96), rtx(97, 96)],
                   extensions=extensions, track="screen", rids=tuple(rids))


class Publisher:
    """alice's browser: voice and a two-layer screen; a PLI for a layer's SSRC makes its next frame a keyframe."""

    def __init__(self, router, *, rtx_for=()):
        self.router = router
        self.seq = {"h": 1000, "l": 5000, "voice": 1}
        self.pid = {"h": 20000, "l": 300}
        self.keyframe = {"h": False, "l": False}
        self.sent = {"h": [], "l": []}
        self.plis = []
        self.step_no = 0

    def packet(self, rid, *, key=None, rid_ext=True):
        key = self.keyframe[rid] if key is None else key
        self.keyframe[rid] = False
        seq, pid = self.seq[rid], self.pid[rid]
        self.seq[rid] += 1
        self.pid[rid] = (pid + 1) & 0x7FFF
        size, _ = SHAPE[rid]
        desc = bytes([0x90, 0x80, 0x80 | (pid >> 8), pid & 0xFF])
        payload = desc + bytes([0x10 if key else 0x11, 0, 0]) + bytes(size - 7)
        elements = [(MID_ID, b"1")] + ([(RID_ID, rid.encode())] if rid_ext else [])
        packet = make_rtp(seq, SSRCS[rid], payload, pt=96, ts=seq * 3000, ext=one_byte(*elements))
        self.sent[rid].append(packet)
        return packet

    def step(self, now, *, voice=True):
        out = []
        for rid, (_, every) in SHAPE.items():
            if self.step_no % every == 0:
                out += self.router.on_rtp("alice", self.packet(rid), now)
        if voice and self.step_no % 2 == 0:
            out += self.router.on_rtp("alice", voice_packet(self.seq["voice"], ssrc=1111, extra=[(MID_ID, b"0")],
                                                            payload=bytes(160)), now)
            self.seq["voice"] += 1
        self.step_no += 1
        return out

    def feedback(self, out):
        for o in out:
            if o.participant_id != "alice" or not o.is_rtcp:
                continue
            for item in aio.RtcpPacket.parse(o.packet):
                if isinstance(item, aio.RtcpPsfbPacket) and item.fmt == 1:
                    self.plis.append(item.media_ssrc)
                    for rid, ssrc in SSRCS.items():
                        if item.media_ssrc == ssrc:
                            self.keyframe[rid] = True


def setup_call(make_router, subscribers=("bob",)):
    router = make_router()
    router.set_published("alice", "voice", Section(mid="0", kind="audio", direction="recvonly", codecs=[opus(111)],
                                                   extensions=exts(mid=MID_ID), track="voice"))
    router.set_published("alice", "screen", screen_section())
    for n, who in enumerate(subscribers):
        subscribe(router, who, n)
    return router, Publisher(router)


def subscribe(router, who, n):
    router.set_forwarded(who, [
        forwarded("5", ("alice", "voice"), 0xA000 + n, [opus(111)], exts(mid=9)),
        forwarded("6", ("alice", "screen"), 0xB000 + n, [vp8(100)], exts(mid=9)),
    ])


def run(router, publisher, start, end, *, dt=0.01, who="bob", voice=True):
    """Steps of dt from start to end; the screen packets ``who`` received."""
    received = []
    t = start
    while t < end - 1e-9:
        out = publisher.step(t, voice=voice)
        timer = router.get_timer()
        if timer is not None and timer <= t:
            out += router.handle_timer(t)
        publisher.feedback(out)
        received += [(t, p) for p in rtp_for(out, who) if p.payload_type == 100]
        t += dt
    return received


def layer_of(stats, who="bob"):
    return stats["subscribers"][who]["routes"]["alice/screen"]


def source_ssrc(packet, publisher):
    """Which layer a forwarded packet came from (its payload size)."""
    return next(rid for rid, (size, _) in SHAPE.items() if len(packet.payload) == size)


def test_layers_are_identified_by_rid_and_without_an_estimate_the_subscriber_gets_h(make_router):
    router, alice = setup_call(make_router)
    got = run(router, alice, 0.0, 2.0)
    stats = router.stats()
    layers = stats["publishers"]["alice"]["tracks"]["screen"]["layers"]
    assert {rid: entry["ssrc"] for rid, entry in layers.items()} == SSRCS
    assert layers["h"]["bitrate"] > 5 * layers["l"]["bitrate"] > 0
    route = layer_of(stats)
    assert route["layer"] == "h" and route["active_ssrc"] == SSRCS["h"] and route["ssrc"] == 0xB000
    assert SSRCS["h"] in alice.plis  # the selection asked for h's keyframe
    assert got and {source_ssrc(p, alice) for _, p in got} == {"h"}
    # one ordinary stream: the gateway's SSRC, consecutive numbers, no RID element left
    seqs = [p.sequence_number for _, p in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(p.ssrc == 0xB000 for _, p in got)
    raw = [o.packet for o in alice.step(2.0) if o.participant_id == "bob" and not o.is_rtcp and o.packet[1] & 0x7F == 100]
    assert raw and all(extensions_of(packet) in ({9: b"6"}, {}) for packet in raw)  # MID only, no RID/RRID
    assert vp8_wire.is_keyframe_start(got[0][1].payload)  # started on a keyframe


def test_a_low_estimate_moves_down_within_two_seconds_and_back_up_when_it_clears(make_router):
    router, alice = setup_call(make_router, ("bob", "carol"))
    run(router, alice, 0.0, 3.0)
    router.set_downlink_estimate("bob", 300_000.0)  # h (about 800 kbit/s) does not fit, l does
    got = run(router, alice, 3.0, 8.0)
    switch = next(n for n, (_, p) in enumerate(got) if source_ssrc(p, alice) == "l")
    assert got[switch][0] - 3.0 <= 2.0
    before = [p for _, p in got[:switch]]
    after = [p for _, p in got[switch:]]
    assert {source_ssrc(p, alice) for p in after} == {"l"}
    # one continuous stream across the switch: sequence numbers, PictureIDs, a keyframe first
    seqs = [p.sequence_number for _, p in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    pids = [vp8_wire.parse(p.payload).picture_id for _, p in got]
    assert pids == [(pids[0] + n) & 0x7FFF for n in range(len(pids))]
    assert vp8_wire.is_keyframe_start(after[0].payload)
    assert after[0].timestamp > before[-1].timestamp
    stats = router.stats()
    assert layer_of(stats)["layer"] == "l" and layer_of(stats)["layer_switches"] == 2  # initial + down
    assert layer_of(stats, "carol")["layer"] == "h"  # no estimate for carol: unchanged
    # the link clears: back on h after the hold (plus a keyframe), well within 10 s
    router.set_downlink_estimate("bob", 5_000_000.0)
    got = run(router, alice, 8.0, 16.0)
    first_h = next(t for t, p in got if source_ssrc(p, alice) == "h")
    assert UP_HOLD <= first_h - 8.0 <= UP_HOLD + 2.0
    assert layer_of(router.stats())["layer"] == "h"


def test_voice_keeps_priority_and_the_screen_pauses_when_even_l_stays_congested(make_router):
    router, alice = setup_call(make_router)
    run(router, alice, 0.0, 3.0)
    voice = router.stats()["subscribers"]["bob"]["routes"]["alice/voice"]["packets_out"]
    assert voice > 100
    # l is about 48 kbit/s and voice about 75 kbit/s: 100 kbit/s carries voice but not the screen;
    # without congestion the lowest layer is the floor, with it l pauses after PAUSE_HOLD
    router.set_downlink_estimate("bob", 100_000.0)
    run(router, alice, 3.0, 5.0)
    assert layer_of(router.stats())["layer"] == "l"
    router.set_downlink_estimate("bob", 100_000.0, congested=True)
    got = run(router, alice, 5.0, 9.5)
    paused_at = max(t for t, _ in got) if got else 5.0
    assert paused_at - 5.0 <= PAUSE_HOLD + 2 * LAYER_TICK
    assert layer_of(router.stats())["layer"] is None
    assert run(router, alice, 9.5, 10.0) == []
    after = router.stats()["subscribers"]["bob"]["routes"]["alice/voice"]["packets_out"]
    assert after - voice >= 3.5 * 50 * 0.9  # voice went on at its 50 packets/s


def test_a_forced_layer_switches_and_unforcing_returns_to_automatic(make_router):
    router, alice = setup_call(make_router)
    run(router, alice, 0.0, 1.0)
    router.force_layer("bob", ("alice", "screen"), "l")
    got = run(router, alice, 1.0, 2.5)
    assert source_ssrc(got[-1][1], alice) == "l"
    assert layer_of(router.stats())["layer_forced"] is True
    router.force_layer("bob", ("alice", "screen"))
    got = run(router, alice, 2.5, 4.0)
    assert source_ssrc(got[-1][1], alice) == "h" and layer_of(router.stats())["layer_forced"] is False
    with pytest.raises(KeyError):
        router.force_layer("bob", ("alice", "voice"), "l")


def test_rtx_repairs_its_own_layer_and_a_subscriber_pli_asks_for_the_layer_it_decodes(make_router):
    router, alice = setup_call(make_router)
    router.force_layer("bob", ("alice", "screen"), "l")
    run(router, alice, 0.0, 1.0)
    # l's next packet is lost on the way in; its RTX (RFC 4588, RRID "l") arrives later
    lost = alice.packet("l")
    run(router, alice, 1.0, 1.2)
    osn = lost[2:4]
    rtx_packet = make_rtp(1, RTX_SSRCS["l"], osn + lost[-(SHAPE["l"][0]):], pt=97, ts=0,
                          ext=one_byte((MID_ID, b"1"), (RRID_ID, b"l")))
    out = router.on_rtp("alice", rtx_packet, 1.25)
    (recovered,) = rtp_for(out, "bob")
    assert recovered.payload == aio.RtpPacket.parse(lost).payload
    streams = router.stats()["publishers"]["alice"]["tracks"]["screen"]["streams"]
    assert streams[RTX_SSRCS["l"]]["repairs"] == "l"
    # bob's PLI about the gateway's SSRC becomes a PLI for l's SSRC
    alice.plis.clear()
    pli = bytes([0x81, 206, 0, 2]) + (0xB0B).to_bytes(4, "big") + (0xB000).to_bytes(4, "big")
    out = router.on_rtcp("bob", pli, 3.0)
    alice.feedback(out)
    assert alice.plis == [SSRCS["l"]]


def test_packets_without_a_listed_rid_are_not_taken_as_a_layer(make_router):
    router, alice = setup_call(make_router)
    router.on_rtp("alice", alice.packet("h", rid_ext=False), 0.0)
    bogus = make_rtp(1, 0xCCC1, bytes(20), pt=96, ext=one_byte((MID_ID, b"1"), (RID_ID, b"zz")))
    router.on_rtp("alice", bogus, 0.0)
    stats = router.stats()["publishers"]["alice"]["tracks"]["screen"]
    assert stats["drops"]["unidentified_layer"] == 2 and stats["streams"] == {} and stats["layers"] == {}


def test_a_late_subscriber_is_selected_on_attach_and_waits_for_a_keyframe(make_router):
    router, alice = setup_call(make_router)
    run(router, alice, 0.0, 2.0)
    alice.plis.clear()
    subscribe(router, "dave", 3)
    got = run(router, alice, 2.0, 2.6, who="dave")
    assert SSRCS["h"] in alice.plis  # asked for on the next layer tick, not held back by the rate limit
    got += run(router, alice, 2.6, 4.0, who="dave")
    assert got and vp8_wire.is_keyframe_start(got[0][1].payload)
    assert {source_ssrc(p, alice) for _, p in got} == {"h"}
    assert layer_of(router.stats(), "dave")["layer"] == "h"


def test_a_republished_screen_without_simulcast_still_reaches_a_route_that_was_layered(make_router):
    router, alice = setup_call(make_router)
    run(router, alice, 0.0, 1.0)
    plain = screen_section(rids=())
    router.remove_published("alice", "screen")
    router.set_published("alice", "screen", plain)
    out = []
    for n in range(5):  # a new SSRC without RID, a keyframe first
        desc = bytes([0x90, 0x80, 0x80, n])
        out += router.on_rtp("alice", make_rtp(70 + n, 0xDDD1, desc + bytes([0x10 if n == 0 else 0x11, 0, 0]) +
                                               bytes(10), pt=96, ts=n * 3000, ext=one_byte((MID_ID, b"1"))),
                             1.0 + n * 0.03)
    got = rtp_for(out, "bob")
    assert len(got) == 5 and vp8_wire.parse(got[0].payload).picture_id is not None


def test_a_restarted_share_is_identified_by_the_ssrcs_learned_before_without_rid_elements(make_router):
    # a browser stops sending RID elements once its SSRCs are acknowledged, and a share started again
    # on the same transceiver sends the same SSRCs
    router, alice = setup_call(make_router)
    run(router, alice, 0.0, 1.0)
    router.remove_published("alice", "screen")
    router.set_published("alice", "screen", screen_section())
    out = []
    for n in range(3):
        for rid in ("h", "l"):
            out += router.on_rtp("alice", alice.packet(rid, key=True, rid_ext=False), 2.0 + n * 0.03)
    layers = router.stats()["publishers"]["alice"]["tracks"]["screen"]["layers"]
    assert {rid: entry["ssrc"] for rid, entry in layers.items()} == SSRCS
    assert rtp_for(out, "bob")  # and forwarded again
    # an SSRC never seen with an RID is still not a layer
    router.on_rtp("alice", make_rtp(1, 0xEEE1, bytes(20), pt=96, ext=one_byte((MID_ID, b"1"))), 2.5)
    assert router.stats()["publishers"]["alice"]["tracks"]["screen"]["drops"]["unidentified_layer"] == 1


def test_a_switched_slot_goes_from_a_simulcast_publisher_to_a_plain_one(make_router):
    # a WHEP slot (docs/WHIP.md): the same subscriber section (SSRC) is fed by another publisher
    router, alice = setup_call(make_router)
    plain = Section(mid="1", kind="video", direction="recvonly", codecs=[vp8(96), rtx(97, 96)],
                    extensions=exts(mid=MID_ID), track="screen")
    router.set_published("carol", "screen", plain)
    got = [p for _, p in run(router, alice, 0.0, 1.0)]
    assert got and layer_of(router.stats())["layer"] == "h"
    router.set_forwarded("bob", [forwarded("6", ("carol", "screen"), 0xB000, [vp8(100)], exts(mid=9))])
    out = []
    for n in range(6):  # carol's stream: a delta frame, then a keyframe (the layered route waits for it)
        desc = bytes([0x90, 0x80, 0x80, 40 + n])
        header = bytes([0x10 if n == 1 else 0x11, 0, 0])
        out += router.on_rtp("carol", make_rtp(300 + n, 0xCAB1, desc + header + bytes(50), pt=96, ts=n * 3000,
                                               ext=one_byte((MID_ID, b"1"))), 1.2 + n * 0.03)
    carol = rtp_for(out, "bob")
    assert len(carol) == 5 and vp8_wire.is_keyframe_start(carol[0].payload)
    seqs = [p.sequence_number for p in got + carol]
    assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(len(seqs))]  # one stream for the subscriber
    pids = [vp8_wire.parse(p.payload).picture_id for p in got + carol]
    assert pids == [(pids[0] + n) & 0x7FFF for n in range(len(pids))]


def test_no_probe_starts_into_a_keyframe_burst(make_router):
    # bob is on l with h above it: the router would probe his downlink for h, except within
    # PROBE_KEYFRAME_QUIET of a keyframe request for the screen (its burst would land on the probe)
    from callsgw.sfu.router import PROBE_KEYFRAME_QUIET

    router, alice = setup_call(make_router)
    run(router, alice, 0.0, 3.0)
    router.force_layer("bob", ("alice", "screen"), "l", now=3.0)
    run(router, alice, 3.0, 5.0)
    targets = []
    router.congestion.probe = lambda pid, now, target, media: targets.append((now, target)) or 0
    subscriber = router._subscribers["bob"]
    asked = max(router._publishers["alice"].tracks["screen"].keyframe_at.values())
    router._probe(subscriber, asked + 0.5 * PROBE_KEYFRAME_QUIET, [])
    router._probe(subscriber, asked + PROBE_KEYFRAME_QUIET + 0.1, [])
    assert targets[0][1] == 0  # held: the keyframe asked for is on its way
    assert targets[1][1] > 0  # h's bit/s and the margin, on top of voice
    assert router.congestion.counters["probe_held_for_keyframe"] == 1


def test_probe_padding_follows_the_asked_rate_however_often_the_shell_drains(make_router):
    # the shell drains every 50 ms and again before each RTCP of the subscriber: the padding sent must
    # still be the estimator's bit/s over time, not one tick's worth per call
    router, alice = setup_call(make_router)
    run(router, alice, 0.0, 3.0)
    sent = []

    def padding(route, count, size, out):  # the datapath's part is tested in test_twcc_stamping.py
        sent.append(count * size)
        return count

    router._datapath.route_padding = padding
    router.congestion.probe = lambda pid, now, target, media: 400_000
    subscriber = router._subscribers["bob"]
    for n in range(200):  # 2 s of calls every 10 ms
        router._probe(subscriber, 3.0 + n * 0.01, [])
    assert 0.9 * 400_000 / 8 * 2.0 <= sum(sent) <= 1.1 * 400_000 / 8 * 2.0
    router.congestion.probe = lambda pid, now, target, media: 0  # the probe ends: the next one starts afresh
    router._probe(subscriber, 5.0, [])
    assert subscriber.padded_at is None


def test_no_probe_right_after_the_screen_paused_for_voice(make_router):
    from callsgw.sfu.layers import RESUME_HOLD

    router, alice = setup_call(make_router)
    run(router, alice, 0.0, 3.0)
    router.set_downlink_estimate("bob", 150_000.0, congested=True, lossy=True)  # l keeps losing
    run(router, alice, 3.0, 8.0)
    assert layer_of(router.stats())["layer"] is None
    route = router._subscribers["bob"].routes[("alice", "screen")]
    paused_at = route.selector.paused_at
    assert paused_at is not None and route.selector.pauses == 1
    run(router, alice, 8.0, paused_at + RESUME_HOLD + 0.5)  # still losing: still paused, layers live
    assert layer_of(router.stats())["layer"] is None
    targets = []
    router.congestion.probe = lambda pid, now, target, media: targets.append(target) or 0
    track = router._publishers["alice"].tracks["screen"]
    track.keyframe_at.clear()  # no keyframe hold in the way
    track.last_keyframe_request = None
    subscriber = router._subscribers["bob"]
    router._probe(subscriber, paused_at + 0.5 * RESUME_HOLD, [])
    router._probe(subscriber, paused_at + RESUME_HOLD + 0.1, [])
    assert targets[0] == 0 and targets[1] > 0

"""callsgw.sfu.router: forwarding, rewriting, RTCP feedback, receiver reports, active speaker (sans-I/O).

Packets are built by hand (tests.packets) and the router's output is read
with aiortc's independent RTP/RTCP parsers.
"""

from __future__ import annotations

import struct
import sys

import pytest
from aiortc import rtp as aio
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.sfu import router as router_module
from callsgw.sfu.router import Outgoing, Router, SpeakerChanged
from callsgw.signaling.negotiation import Section
from callsgw.wire import rtcp
from callsgw.wire.demux import PacketKind, classify
from tests.packets import rtp as make_rtp



@pytest.fixture(autouse=True, params=["python", "native", "native-thread"])
def forwarding_path(request, monkeypatch):
    """Every test runs on both datapaths: PythonDatapath (the default) and NativeDatapath (tests.native_router),
    the engine polled in the caller's thread (native) or on its own thread (native-thread)."""
    if request.param == "python":
        yield "python"
        return
    from tests.native_router import NativeRouter

    made = []

    def factory(**kwargs):
        made.append(NativeRouter(threaded=request.param == "native-thread", **kwargs))
        return made[-1]

    monkeypatch.setattr(sys.modules[__name__], "Router", factory)
    yield "native"
    for router in made:
        router.close()


LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def opus(pt=111):
    return RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=pt)


def vp8(pt=96, feedback=("nack", "nack pli", "ccm fir")):
    fb = [RTCRtcpFeedback(type=f.split()[0], parameter=(f.split() + [None])[1]) for f in feedback]
    return RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=pt, rtcpFeedback=fb)


def rtx(pt=97, apt=96):
    return RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=pt, parameters={"apt": apt})


def exts(**ids):
    uris = {"level": LEVEL, "mid": MID, "abs": ABS, "twcc": TWCC}
    return [RTCRtpHeaderExtensionParameters(id=i, uri=uris[name]) for name, i in ids.items()]


def published(mid, track, codecs, extensions=(), ssrcs=()):
    return Section(mid=mid, kind="audio" if track == "voice" else "video", direction="recvonly",
                   codecs=list(codecs), extensions=list(extensions), track=track, remote_ssrcs=tuple(ssrcs))


def forwarded(mid, source, ssrc, codecs, extensions=()):
    return Section(mid=mid, kind="audio" if source[1] == "voice" else "video", direction="sendonly",
                   codecs=list(codecs), extensions=list(extensions), source=source, ssrc=ssrc, by_gateway=True)


def one_byte(*elements):
    data = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements)
    return 0xBEDE, data + b"\x00" * (-len(data) % 4)


def voice_packet(seq, ssrc=1111, *, level=None, level_id=1, ts=None, pt=111, extra=(), payload=None):
    elements = list(extra)
    if level is not None:
        elements.append((level_id, bytes([0x80 | level])))
    ts = seq * 960 if ts is None else ts
    return make_rtp(seq, ssrc, payload if payload is not None else b"opus%05d" % seq, pt=pt, ts=ts,
                    ext=one_byte(*elements) if elements else None)


def video_packet(seq, ssrc=2222, *, pt=96, ts=None, payload=None, ext=None):
    return make_rtp(seq, ssrc, payload if payload is not None else b"vp8-%05d" % seq, pt=pt,
                    ts=3000 * (seq // 3) if ts is None else ts, ext=ext)


def extensions_of(packet: bytes) -> dict[int, bytes]:
    if not packet[0] & 0x10:
        return {}
    pos = 12 + 4 * (packet[0] & 0x0F)
    profile, words = struct.unpack_from("!HH", packet, pos)
    return dict(aio.unpack_header_extensions(profile, packet[pos + 4 : pos + 4 + 4 * words]))


def rtp_for(out: list[Outgoing], who: str) -> list[aio.RtpPacket]:
    return [aio.RtpPacket.parse(o.packet) for o in out if o.participant_id == who and not o.is_rtcp]


def rtcp_for(out: list[Outgoing], who: str) -> list:
    return [item for o in out if o.participant_id == who and o.is_rtcp for item in aio.RtcpPacket.parse(o.packet)]


def call(*, subscribers=("bob", "carol"), voice_ssrcs=(1111,)):
    """alice publishes voice (and screen); every subscriber gets both, with its own PTs and extension IDs."""
    router = Router()
    voice = published("0", "voice", [opus(111)], exts(level=1, mid=4, abs=3), voice_ssrcs)
    screen = published("1", "video", [vp8(96), rtx(97, 96)], exts(mid=4, abs=3), (2222, 3333))
    router.set_published("alice", "voice", voice)
    router.set_published("alice", "screen", screen)
    for n, who in enumerate(subscribers):
        router.set_forwarded(who, [
            published("0", "voice", [opus(111)], exts(level=1)),  # its own section: not forwarded
            forwarded("5", ("alice", "voice"), 0xA000 + n, [opus(109 + n)], exts(level=2 + n, mid=9)),
            forwarded("6", ("alice", "screen"), 0xB000 + n, [vp8(100 + n)], exts(mid=9)),
        ])
    return router


# -- forwarding and rewriting -------------------------------------------------------------


def test_forwards_to_every_subscriber_with_its_own_rewrite():
    router = call()
    packet = voice_packet(100, level=30, extra=[(4, b"0"), (3, b"\x01\x02\x03"), (7, b"secret")])
    out = router.on_rtp("alice", packet, 0.0)
    assert sorted(o.participant_id for o in out) == ["bob", "carol"]
    for n, who in enumerate(("bob", "carol")):
        (p,) = rtp_for(out, who)
        assert p.ssrc == 0xA000 + n
        assert p.payload_type == 109 + n
        assert p.sequence_number == 100 and p.timestamp == 100 * 960
        assert p.payload == b"opus00100"
        (raw,) = [o.packet for o in out if o.participant_id == who]
        # level moved to the subscriber's ID, MID rewritten to the subscriber's mid,
        # abs-send-time (not negotiated by the subscriber) and the unknown ID 7 dropped
        assert extensions_of(raw) == {2 + n: bytes([0x80 | 30]), 9: b"5"}
        assert classify(raw) is PacketKind.RTP


def test_mid_of_another_length_is_rewritten():
    router = call(subscribers=("bob",))
    router.set_forwarded("bob", [forwarded("12", ("alice", "voice"), 0xA000, [opus()], exts(mid=9))])
    (o,) = router.on_rtp("alice", voice_packet(1, extra=[(4, b"0")]), 0.0)
    assert extensions_of(o.packet) == {9: b"12"}
    assert aio.RtpPacket.parse(o.packet).payload == b"opus00001"


def test_codec_missing_at_the_subscriber_is_not_forwarded_and_counted():
    router = call(subscribers=("bob",))
    router.set_forwarded("dave", [forwarded("5", ("alice", "voice"), 0xD000, [vp8()])])
    out = router.on_rtp("alice", voice_packet(1), 0.0)
    assert [o.participant_id for o in out] == ["bob"]
    assert router.stats()["subscribers"]["dave"]["routes"]["alice/voice"]["drops"] == {"payload_type_unmapped": 1}


def test_counters():
    router = call(subscribers=("bob",))
    for seq in range(10):
        router.on_rtp("alice", voice_packet(seq), seq * 0.02)
    stats = router.stats()
    stream = stats["publishers"]["alice"]["tracks"]["voice"]["streams"][1111]
    assert stream["packets_in"] == 10 and stream["bytes_in"] == 10 * len(voice_packet(0))
    route = stats["subscribers"]["bob"]["routes"]["alice/voice"]
    assert route["packets_out"] == 10 and route["ssrc"] == 0xA000 and route["active_ssrc"] == 1111


def test_outputs_are_classified_like_the_demultiplexer():
    router = call()
    out = router.on_rtp("alice", video_packet(1), 0.0)  # video start: also a keyframe request
    assert {o.is_rtcp for o in out} == {True, False}
    for o in out:
        assert (classify(o.packet) is PacketKind.RTCP) == o.is_rtcp


# -- identification -------------------------------------------------------------------------


def test_identified_by_signalled_ssrc():
    router = call(subscribers=("bob",))
    # SSRC 2222 is the screen's, even with the voice payload type: dropped as unknown for that track
    assert router.on_rtp("alice", voice_packet(1, ssrc=2222), 0.0) == []
    assert router.stats()["publishers"]["alice"]["tracks"]["screen"]["drops"] == {"unknown_payload_type": 1}


def test_identified_by_mid_then_learned():
    router = Router()
    # both sections use PT 100, so only the MID can tell them apart
    router.set_published("alice", "voice", published("a", "voice", [opus(100)], exts(mid=4)))
    router.set_published("alice", "screen", published("v", "video", [vp8(100)], exts(mid=4)))
    router.set_forwarded("bob", [forwarded("5", ("alice", "screen"), 0xB0, [vp8(100)])])
    out = router.on_rtp("alice", video_packet(1, ssrc=77, pt=100, ext=one_byte((4, b"v"))), 0.0)
    assert [p.ssrc for p in rtp_for(out, "bob")] == [0xB0]
    # learned: later packets need no MID
    out = router.on_rtp("alice", video_packet(2, ssrc=77, pt=100), 0.1)
    assert [p.sequence_number for p in rtp_for(out, "bob")] == [2]
    # an ambiguous packet without MID is dropped and counted
    assert router.on_rtp("alice", video_packet(1, ssrc=78, pt=100), 0.2) == []
    assert router.stats()["publishers"]["alice"]["drops"] == {"ambiguous_ssrc": 1}


def test_identified_by_payload_type_and_bounded():
    router = call(subscribers=("bob",), voice_ssrcs=())
    assert len(rtp_for(router.on_rtp("alice", voice_packet(1, ssrc=5), 0.0), "bob")) == 1
    assert router.on_rtp("alice", voice_packet(1, ssrc=6, pt=55), 0.0) == []  # no track has PT 55
    for ssrc in range(100, 120):
        router.on_rtp("alice", voice_packet(1, ssrc=ssrc), 0.0)
    tracks = router.stats()["publishers"]["alice"]["tracks"]
    assert len(tracks["voice"]["streams"]) == router_module.MAX_SSRCS_PER_TRACK
    assert tracks["voice"]["drops"]["ssrc_limit"] == 20 - (router_module.MAX_SSRCS_PER_TRACK - 1)
    assert router.stats()["publishers"]["alice"]["drops"] == {"unidentified_ssrc": 1}


def test_unknown_publisher_is_counted():
    router = call()
    assert router.on_rtp("mallory", voice_packet(1), 0.0) == []
    assert router.stats()["counters"]["rtp_unknown_publisher"] == 1


# -- sequence numbers -------------------------------------------------------------------------


def seqs(out, who="bob"):
    return [p.sequence_number for p in rtp_for(out, who)]


def srtp_replays(router) -> int:
    """Native engine: packets its SRTP replay check dropped before the router (0 on the Python path)."""
    engine = getattr(router, "engine", None)
    if engine is None:
        return 0
    from callsgw._native.engine import SESSION_COUNTERS

    return int(engine.session_counters[:, SESSION_COUNTERS.index("replays")].sum())


def test_sequence_continuity_across_an_ssrc_switch(forwarding_path):
    router = call(subscribers=("bob",), voice_ssrcs=())
    got = []
    for seq in range(65530, 65536):
        got += seqs(router.on_rtp("alice", voice_packet(seq, ssrc=1), 0.0))
    # the publisher's stream changes (new SSRC, random sequence numbers)
    for i, seq in enumerate(range(40000, 40005)):
        got += seqs(router.on_rtp("alice", voice_packet(seq, ssrc=2), 0.1 + i * 0.02))
    assert got == list(range(65530, 65536)) + [0, 1, 2, 3, 4]
    # a late packet of the old stream is not forwarded
    assert router.on_rtp("alice", voice_packet(65535, ssrc=1), 0.3) == []
    # once the new stream has been quiet long enough, the old one may come back
    for i, seq in enumerate(range(7, 10)):
        got += seqs(router.on_rtp("alice", voice_packet(seq, ssrc=1), 2.0 + i * 0.02))
    assert got[-3:] == [5, 6, 7]
    drops = router.stats()["subscribers"]["bob"]["routes"]["alice/voice"]["drops"]
    # through SRTP the late packet repeats an index the gateway already accepted: the
    # engine's replay check drops it before the router would call it stale
    if forwarding_path == "python":
        assert drops == {"stale_ssrc": 1}
    else:
        assert drops == {} and srtp_replays(router) == 1


def test_reordering_is_kept_and_duplicates_dropped():
    router = call(subscribers=("bob",))
    got = []
    for seq in (1, 2, 4, 3, 5, 5):
        got += seqs(router.on_rtp("alice", voice_packet(seq), 0.0))
    assert got == [1, 2, 4, 3, 5]


def test_a_sequence_restart_on_the_same_ssrc_continues_after_one_packet():
    router = call(subscribers=("bob",))
    got = []
    for seq in (100, 101, 102, 102 - 30000, 102 - 29999, 102 - 29998):
        got += seqs(router.on_rtp("alice", voice_packet(seq & 0xFFFF), 0.0))
    assert got == [100, 101, 102, 103, 104]  # the first packet after the jump is taken for stray


def test_a_conflicting_packet_never_reuses_a_sent_index(forwarding_path):
    """Two different packets with one sequence number: only the first goes out (SRTP index safety)."""
    router = call(subscribers=("bob",))
    router.on_rtp("alice", video_packet(1, payload=b"first"), 0.0)
    assert rtp_for(router.on_rtp("alice", video_packet(1, payload=b"evil"), 0.0), "bob") == []
    nack = rtcp.build_nack(0xB0B, 0xB000, [(1, 0)])
    (again,) = rtp_for(router.on_rtcp("bob", nack, 0.1), "bob")
    assert again.payload == b"first"
    drops = router.stats()["subscribers"]["bob"]["routes"]["alice/screen"]["drops"]
    if forwarding_path == "python":
        assert drops == {"duplicate_sequence": 1}
    else:  # a second packet on one SRTP index is a replay to the engine
        assert drops == {} and srtp_replays(router) == 1


# -- RTX -----------------------------------------------------------------------------------


def wrap(original: bytes, rtx_seq: int, rtx_ssrc=3333, pt=97, padding=0) -> bytes:
    p = aio.RtpPacket.parse(original)
    return make_rtp(rtx_seq, rtx_ssrc, struct.pack("!H", p.sequence_number) + p.payload, pt=pt, ts=p.timestamp,
                    padding=padding)


def test_rtx_fills_a_gap_and_is_otherwise_dropped():
    router = call(subscribers=("bob",))
    got = []
    for seq in (1, 2, 4):
        got += seqs(router.on_rtp("alice", video_packet(seq), 0.0))
    recovered = router.on_rtp("alice", wrap(video_packet(3), 500), 0.1)
    (p,) = rtp_for(recovered, "bob")
    assert (p.sequence_number, p.ssrc, p.payload_type, p.payload) == (3, 0xB000, 100, b"vp8-00003")
    assert router.on_rtp("alice", wrap(video_packet(2), 501), 0.1) == []  # not missed
    assert router.on_rtp("alice", make_rtp(502, 3333, b"", pt=97, padding=224), 0.1) == []  # a padding probe
    drops = router.stats()["publishers"]["alice"]["tracks"]["screen"]["drops"]
    assert drops == {"rtx_not_needed": 1, "rtx_padding": 1}
    # the recovered packet is in the buffer for NACKs too
    (again,) = rtp_for(router.on_rtcp("bob", rtcp.build_nack(1, 0xB000, [(3, 0)]), 0.2), "bob")
    assert again.payload == b"vp8-00003"


# -- NACK ----------------------------------------------------------------------------------


def test_nack_is_answered_from_the_buffer_with_identical_bytes():
    router = call()
    sent = {}
    for seq in range(10, 20):
        for o in router.on_rtp("alice", video_packet(seq, ext=one_byte((4, b"1"), (3, b"\x00\x00\x01"))), 0.0):
            if not o.is_rtcp:
                sent[(o.participant_id, aio.RtpPacket.parse(o.packet).sequence_number)] = o.packet
    nack = rtcp.build_nack(0xB0B, 0xB001, rtcp.nack_entries([12, 15, 16]))
    out = router.on_rtcp("carol", rtcp.build_rr(0xB0B) + nack, 1.0)
    assert [o.packet for o in out] == [sent[("carol", 12)], sent[("carol", 15)], sent[("carol", 16)]]
    route = router.stats()["subscribers"]["carol"]["routes"]["alice/screen"]
    assert route["retransmits"] == 3 and route["nack_misses"] == 0


def test_nack_for_a_packet_the_gateway_missed_goes_to_the_publisher_once():
    router = call(subscribers=("bob", "carol"))
    for seq in (1, 2, 5):
        router.on_rtp("alice", video_packet(seq), 0.0)
    out = router.on_rtcp("bob", rtcp.build_nack(1, 0xB000, rtcp.nack_entries([3, 4])), 0.5)
    (rr, sdes, nack) = rtcp_for(out, "alice")
    assert isinstance(rr, aio.RtcpRrPacket) and rr.ssrc == router.gateway_ssrc("alice")
    assert isinstance(nack, aio.RtcpRtpfbPacket) and nack.media_ssrc == 2222 and nack.lost == [3, 4]
    assert nack.ssrc == router.gateway_ssrc("alice")
    # carol asks too, right away: not forwarded again
    assert router.on_rtcp("carol", rtcp.build_nack(1, 0xB001, rtcp.nack_entries([3, 4])), 0.6) == []
    assert router.stats()["subscribers"]["bob"]["routes"]["alice/screen"]["nack_misses"] == 2
    # later it is
    assert len(rtcp_for(router.on_rtcp("carol", rtcp.build_nack(1, 0xB001, [(3, 0)]), 1.0), "alice")) == 3


def test_nack_outside_what_was_sent_is_ignored():
    router = call(subscribers=("bob",))
    for seq in range(100, 110):
        router.on_rtp("alice", video_packet(seq), 0.0)
    assert router.on_rtcp("bob", rtcp.build_nack(1, 0xB000, [(200, 0), (50, 0)]), 0.1) == []
    assert router.on_rtcp("bob", rtcp.build_nack(1, 0xDEAD, [(100, 0)]), 0.1) == []
    drops = router.stats()["subscribers"]["bob"]["routes"]["alice/screen"]["drops"]
    assert drops == {"nack_out_of_range": 2}
    assert router.stats()["counters"]["nack_unknown_ssrc"] == 1


def test_retransmissions_are_bounded():
    router = call(subscribers=("bob",))
    for seq in range(0, 512):
        router.on_rtp("alice", video_packet(seq), 0.0)
    # one NACK asking for 512 packets: at most MAX_NACK_SEQUENCES looked at
    nack = rtcp.build_nack(1, 0xB000, rtcp.nack_entries(range(0, 512)))
    out = router.on_rtcp("bob", nack, 1.0)
    assert len(out) == router_module.MAX_NACK_SEQUENCES
    # the per-route budget then runs dry
    out = router.on_rtcp("bob", nack, 1.0)
    assert len(out) == int(router_module.RETRANSMIT_RATE) - router_module.MAX_NACK_SEQUENCES
    drops = router.stats()["subscribers"]["bob"]["routes"]["alice/screen"]["drops"]
    assert drops["retransmit_rate_limited"] == 2 * router_module.MAX_NACK_SEQUENCES - int(router_module.RETRANSMIT_RATE)


# -- PLI / FIR -----------------------------------------------------------------------------


def test_pli_is_translated_and_rate_limited():
    router = call()
    out = router.on_rtp("alice", video_packet(1), 0.0)
    # the first video packet on a new route asks for a keyframe at once
    assert [type(i) for i in rtcp_for(out, "alice")] == [aio.RtcpRrPacket, aio.RtcpSdesPacket, aio.RtcpPsfbPacket]
    router.on_rtp("alice", video_packet(2), 0.1)
    pli = lambda who, ssrc: rtcp.build_rr(9) + rtcp.build_pli(9, ssrc)  # noqa: E731
    first = router.on_rtcp("bob", pli("bob", 0xB000), 5.0)
    (request,) = [i for i in rtcp_for(first, "alice") if isinstance(i, aio.RtcpPsfbPacket)]
    assert (request.fmt, request.ssrc, request.media_ssrc) == (1, router.gateway_ssrc("alice"), 2222)
    assert rtcp.parse(first[0].packet).reduced_size is False
    assert router.on_rtcp("carol", pli("carol", 0xB001), 5.5) == []  # within a second
    assert len(rtcp_for(router.on_rtcp("carol", pli("carol", 0xB001), 6.0), "alice")) == 3
    tracks = router.stats()["publishers"]["alice"]["tracks"]
    assert tracks["screen"]["keyframe_requests"] == 3
    assert tracks["screen"]["drops"]["keyframe_request_rate_limited"] == 2  # bob's start + 5.5 s


def test_fir_is_translated_with_its_own_sequence_numbers():
    router = call(subscribers=("bob",))
    router.on_rtp("alice", video_packet(1), 0.0)
    fir = rtcp.build_fir(9, [(0xB000, 77)])
    firsts = []
    for now in (2.0, 4.0):
        items = rtcp_for(router.on_rtcp("bob", fir, now), "alice")
        (request,) = [i for i in items if isinstance(i, aio.RtcpPsfbPacket)]
        assert request.fmt == 4 and request.media_ssrc == 0
        firsts.append(struct.unpack_from("!IB", request.fci))
    assert firsts[0][0] == firsts[1][0] == 2222
    assert firsts[1][1] == (firsts[0][1] + 1) & 0xFF


def test_keyframe_request_for_voice_or_unknown_ssrc_is_dropped():
    router = call(subscribers=("bob",))
    router.on_rtp("alice", voice_packet(1), 0.0)
    assert router.on_rtcp("bob", rtcp.build_pli(1, 0xA000), 1.0) == []
    assert router.on_rtcp("bob", rtcp.build_pli(1, 0x1234), 1.0) == []
    assert router.stats()["counters"]["keyframe_request_unknown_ssrc"] == 1


# -- sender and receiver reports -------------------------------------------------------------


def test_a_new_stream_continues_the_routes_timeline_and_its_sender_reports_follow():
    """The publisher's second SSRC is moved onto the route's timeline (the datapath), and its SR's RTP
    timestamp is translated by the same offset, so a receiver's lip-sync mapping stays right."""
    router = call(subscribers=("bob",), voice_ssrcs=(1111, 1112))
    for seq in range(5):
        router.on_rtp("alice", voice_packet(seq), seq * 0.02)
    out = router.on_rtp("alice", voice_packet(500, ssrc=1112, ts=7_000_000), 0.1)
    (first,) = [aio.RtpPacket.parse(o.packet) for o in out if o.participant_id == "bob" and not o.is_rtcp]
    assert (first.ssrc, first.sequence_number, first.timestamp) == (0xA000, 5, 4 * 960 + 960)
    sr = rtcp.build_sr(1112, 0xE000_0000_8000_0000, 7_000_000, 1, 9) + rtcp.build_sdes_cname(1112, "alice")
    (report, _) = rtcp_for(router.on_rtcp("alice", sr, 0.12), "bob")
    assert report.ssrc == 0xA000 and report.sender_info.rtp_timestamp == 4 * 960 + 960


def test_sender_report_is_translated_for_each_subscriber():
    router = call()
    for seq in range(5):
        router.on_rtp("alice", voice_packet(seq), seq * 0.02)
    sr = rtcp.build_sr(1111, 0xE000_0000_8000_0000, 4800, 5, 45) + rtcp.build_sdes_cname(1111, "alice")
    out = router.on_rtcp("alice", sr, 0.2)
    assert sorted(o.participant_id for o in out) == ["bob", "carol"]
    for n, who in enumerate(("bob", "carol")):
        (report, sdes) = rtcp_for(out, who)
        assert isinstance(report, aio.RtcpSrPacket) and report.ssrc == 0xA000 + n
        assert report.sender_info.ntp_timestamp == 0xE000_0000_8000_0000
        assert report.sender_info.rtp_timestamp == 4800
        assert report.sender_info.packet_count == 5 and report.sender_info.octet_count == 5 * len(b"opus00000")
        assert report.reports == []
        assert sdes.chunks[0].ssrc == 0xA000 + n and sdes.chunks[0].items == [(1, b"callsgw-alice")]


def test_receiver_reports_from_subscribers_are_recorded():
    router = call(subscribers=("bob",))
    router.on_rtp("alice", voice_packet(1), 0.0)
    block = rtcp.ReportBlock(0xA000, 12, 3, 1, 40)
    router.on_rtcp("bob", rtcp.build_rr(0xB0B, [block, rtcp.ReportBlock(0x5555, 0, 0, 0, 0)]), 1.0)
    report = router.stats()["subscribers"]["bob"]["routes"]["alice/voice"]["last_report"]
    assert report == {"at": 1.0, "fraction_lost": 12, "cumulative_lost": 3, "highest_seq": 1, "jitter": 40}
    assert router.stats()["counters"]["report_block_unknown_ssrc"] == 1


def test_receiver_reports_to_publishers_with_loss_and_jitter():
    router = call(subscribers=())
    assert router.get_timer() is None
    # 20 ms Opus frames, constant network delay of 35 ms, every 10th packet lost
    for seq in range(1000):
        if seq % 10 == 9:
            continue
        router.on_rtp("alice", voice_packet(seq, ts=seq * 960), 10.035 + seq * 0.02)
    assert router.get_timer() == pytest.approx(11.035)
    router.on_rtcp("alice", rtcp.build_sr(1111, 0xAAAA_BBBB_CCCC_DDDD, 0, 1, 1), 29.5)
    out = router.handle_timer(30.0)
    (o,) = out
    assert o.participant_id == "alice" and o.is_rtcp
    rr, sdes = aio.RtcpPacket.parse(o.packet)
    assert rr.ssrc == router.gateway_ssrc("alice") and sdes.chunks[0].ssrc == rr.ssrc
    (block,) = rr.reports
    assert block.ssrc == 1111
    # RFC 3550 A.1: the first packet is on probation, so seq 1..998 are expected
    assert block.highest_sequence == 998
    assert block.packets_lost == 99
    assert block.fraction_lost == (99 << 8) // 998 == 25  # 25/256 ~ 10 %
    assert block.jitter == 0
    assert block.lsr == 0xBBBBCCCC and block.dlsr == 32768  # 0.5 s in 1/65536 s
    # nothing heard since: no report; the timer keeps running while streams exist
    assert router.handle_timer(31.0) == []
    assert router.get_timer() == 32.0


def test_receiver_report_jitter_from_a_variable_delay():
    router = call(subscribers=())
    for seq in range(200):
        delay = 0.010 if seq % 2 else 0.030  # alternating: |D| = 20 ms = 960 timestamp units
        router.on_rtp("alice", voice_packet(seq), seq * 0.02 + delay)
    rr, _ = aio.RtcpPacket.parse(router.handle_timer(100.0)[0].packet)
    assert rr.reports[0].jitter == pytest.approx(960, abs=2)
    assert rr.reports[0].fraction_lost == 0 and rr.reports[0].packets_lost == 0


def test_remb_and_transport_cc_go_to_congestion_control_and_are_counted():
    router = call(subscribers=("bob",))
    remb = bytes(aio.RtcpPsfbPacket(fmt=15, ssrc=1, media_ssrc=0, fci=aio.pack_remb_fci(100000, [0xB000])))
    twcc = struct.pack("!BBH", 0x8F, 205, 4) + struct.pack("!II", 1, 0xB000) + bytes(8)
    assert router.on_rtcp("bob", remb + twcc, 0.0) == []
    stats = router.stats()
    handled = stats["congestion"]["counters"]
    assert sum(v for k, v in handled.items() if k.startswith("remb_")) == 1
    assert sum(v for k, v in handled.items() if k.startswith("transport_cc_")) == 1
    assert stats["counters"]["rtcp_reduced_size"] == 1


@pytest.mark.parametrize("bad", [b"", b"\x80", rtcp.build_pli(1, 0xB000)[:-1], b"\x00" * 8,
                                 rtcp.build_rr(1) + rtcp.build_pli(1, 0xB000)[:10]])
def test_bad_rtcp_is_dropped_and_counted(bad):
    router = call(subscribers=("bob",))
    router.on_rtp("alice", video_packet(1), 0.0)
    before = router.stats()
    assert router.on_rtcp("bob", bad, 5.0) == []
    assert router.on_rtcp("alice", bad, 5.0) == []
    after = router.stats()
    assert after["counters"]["rtcp_malformed"] == before["counters"].get("rtcp_malformed", 0) + 2
    assert after["publishers"]["alice"]["drops"] == {"malformed_rtcp": 1}
    # the PLI inside the broken compound was not acted upon
    assert after["publishers"]["alice"]["tracks"]["screen"]["keyframe_requests"] == 1


# -- isolation -------------------------------------------------------------------------------


def two_publishers():
    router = Router()
    for who, ssrc in (("alice", 1111), ("bob", 2222)):
        router.set_published(who, "voice", published("0", "voice", [opus()], exts(level=1), (ssrc,)))
    router.set_forwarded("carol", [
        forwarded("1", ("alice", "voice"), 0xA, [opus()], exts(level=1)),
        forwarded("2", ("bob", "voice"), 0xB, [opus()], exts(level=1)),
    ])
    return router


BAD_RTP = [
    b"",
    b"\x80\x6f",
    b"\x40" + bytes(20),
    make_rtp(1, 1111, b"", ext=(0xBEDE, bytes([0x13, 1, 2, 0]))),
    bytes([0xA0, 111]) + bytes(10) + b"\xff",  # padding count past the packet
    voice_packet(50000, ssrc=2222),  # alice pretending to be bob's SSRC: alice's own learned stream
    voice_packet(1, ssrc=1111, level=None, extra=[(1, b"\x01\x02")]),  # bad audio level
]


def test_a_bad_packet_from_one_publisher_never_affects_another(forwarding_path):
    clean, noisy = two_publishers(), two_publishers()
    expected, got = [], []
    for seq in range(30):
        now = seq * 0.02
        expected += clean.on_rtp("bob", voice_packet(seq, ssrc=2222, level=10), now)
        for bad in BAD_RTP:
            noisy.on_rtp("alice", bad, now)
            noisy.on_rtcp("alice", bad, now)
        got += noisy.on_rtp("bob", voice_packet(seq, ssrc=2222, level=10), now)
    assert got == expected and len(got) == 30
    bob_noisy, bob_clean = noisy.stats()["publishers"]["bob"], clean.stats()["publishers"]["bob"]
    del bob_noisy["gateway_ssrc"], bob_clean["gateway_ssrc"]  # random per router
    assert bob_noisy == bob_clean
    route = lambda r: r.stats()["subscribers"]["carol"]["routes"]["bob/voice"]  # noqa: E731
    assert route(noisy) == route(clean)
    drops = noisy.stats()["publishers"]["alice"]["drops"]
    assert drops["malformed_rtcp"] == 30 * len(BAD_RTP)
    if forwarding_path == "python":
        assert drops["malformed_rtp"] == 30 * 5
    else:
        # what SRTP cannot carry reaches the engine raw: refused (bad framing, failed
        # authentication) or handed up as unclassified; what it can carry the router drops, and
        # the same packet again (every round) repeats an SRTP index: a replay
        from callsgw._native.engine import SESSION_COUNTERS

        row = noisy.engine.session_counters[noisy.shared.known_slot(noisy.peers["alice"])]
        refused = sum(int(row[SESSION_COUNTERS.index(n)]) for n in ("malformed", "auth_failures", "replays"))
        assert refused + len(noisy.raw) + drops.get("malformed_rtp", 0) >= 30 * 5
        assert refused > 0 and drops.get("bad_audio_level", 0) + drops.get("malformed_rtp", 0) > 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=10))
def test_garbage_from_a_publisher_raises_nothing_and_leaves_others_alone(garbage):
    router = two_publishers()
    for n, data in enumerate(garbage):
        router.on_rtp("alice", data, n * 0.01)
        router.on_rtcp("alice", data, n * 0.01)
        router.on_rtcp("carol", data, n * 0.01)
        router.handle_timer(n * 0.01)
    out = router.on_rtp("bob", voice_packet(5, ssrc=2222), 1.0)
    assert [(o.participant_id, aio.RtpPacket.parse(o.packet).ssrc) for o in out] == [("carol", 0xB)]


# -- active speaker ----------------------------------------------------------------------------


def speak(router, levels: dict[str, int], start: float, end: float, seq0: int = 0):
    """Every publisher sends a packet every 20 ms with its level; returns the events."""
    events = []
    t, seq = start, seq0
    while t < end - 1e-9:
        for who, level in levels.items():
            router.on_rtp(who, voice_packet(seq, ssrc={"alice": 1111, "bob": 2222}[who], level=level), t)
        while (e := router.next_event()) is not None:
            events.append((round(t, 3), e))
        t += 0.02
        seq += 1
    return events, seq


def test_active_speaker_with_hysteresis():
    router = two_publishers()
    events, seq = speak(router, {"alice": 20, "bob": 90}, 0.0, 2.0)
    # alice becomes the speaker after holding for 0.5 s, once
    assert [e for _, e in events] == [SpeakerChanged("alice", None)]
    assert 0.5 <= events[0][0] <= 0.8
    # bob is louder for 0.3 s only: no change
    more, seq = speak(router, {"alice": 20, "bob": 5}, 2.0, 2.3, seq)
    assert more == []
    more, seq = speak(router, {"alice": 20, "bob": 90}, 2.3, 3.0, seq)
    assert more == []
    # bob louder for long enough
    more, seq = speak(router, {"alice": 20, "bob": 5}, 3.0, 4.5, seq)
    assert [e for _, e in more] == [SpeakerChanged("bob", "alice")]
    assert 3.5 <= more[0][0] <= 3.9
    assert router.active_speaker == "bob"
    # both quieter than -50 dBov: after the hold, nobody speaks
    more, seq = speak(router, {"alice": 70, "bob": 60}, 4.5, 6.0, seq)
    assert [e for _, e in more] == [SpeakerChanged(None, "bob")]


def test_speaker_silence_is_noticed_by_the_timer():
    router = two_publishers()
    speak(router, {"alice": 10}, 0.0, 1.0)
    assert router.active_speaker == "alice"
    # alice stops sending at all (e.g. DTX, muted): the timer notices
    now = 1.0
    events = []
    while router.get_timer() is not None and now < 5.0:
        now = max(now, router.get_timer())
        router.handle_timer(now)
        while (e := router.next_event()) is not None:
            events.append(e)
    assert events == [SpeakerChanged(None, "alice")]


def test_removing_a_participant_clears_its_routes_and_speaker_state():
    router = call(subscribers=("bob",))
    router.on_rtp("alice", voice_packet(1), 0.0)
    router.remove_participant("bob")
    assert router.on_rtp("alice", voice_packet(2), 0.1) == []
    assert "bob" not in router.stats()["subscribers"]
    router.set_forwarded("carol", [forwarded("5", ("alice", "voice"), 0xC, [opus()])])
    router.remove_published("alice", "voice")
    assert router.on_rtp("alice", voice_packet(3), 0.2) == []
    # published again (new section): carol's route picks it up and continues its numbering
    router.set_published("alice", "voice", published("0", "voice", [opus()], exts(level=1), (4444,)))
    assert seqs(router.on_rtp("alice", voice_packet(900, ssrc=4444), 0.3), "carol") == [900]


def test_route_limit_and_stopped_sections():
    router = call(subscribers=())
    sections = [forwarded(str(i), ("p%d" % i, "voice"), 1000 + i, [opus()]) for i in range(300)]
    stopped = forwarded("x", ("alice", "voice"), 5, [opus()])
    stopped.stopped = True
    router.set_forwarded("bob", [stopped] + sections)
    assert len(router.stats()["subscribers"]["bob"]["routes"]) == router_module.MAX_ROUTES_PER_SUBSCRIBER
    assert router.stats()["counters"]["routes_over_limit"] == 300 - router_module.MAX_ROUTES_PER_SUBSCRIBER
    assert router.on_rtp("alice", voice_packet(1), 0.0) == []


def test_set_published_refuses_unknown_tracks():
    with pytest.raises(ValueError):
        Router().set_published("alice", "camera", published("0", "voice", [opus()]))


def test_a_route_that_comes_back_continues_its_sequence_numbers():
    router = call(subscribers=("bob",))
    section = forwarded("5", ("alice", "voice"), 0xA000, [opus()])
    for seq in range(10):
        router.on_rtp("alice", voice_packet(seq), seq * 0.02)
    router.set_forwarded("bob", [])
    assert router.on_rtp("alice", voice_packet(10), 0.2) == []
    router.set_forwarded("bob", [section])
    # the same SSRC again: indexes 0..9 were used, so the numbering must not start over
    assert seqs(router.on_rtp("alice", voice_packet(11), 0.22)) == [11]
    assert seqs(router.on_rtp("alice", voice_packet(3), 0.24)) == []  # already sent as 3


def test_two_sections_on_one_ssrc_are_refused():
    router = call(subscribers=())
    router.set_forwarded("bob", [
        forwarded("5", ("alice", "voice"), 0xA000, [opus()]),
        forwarded("6", ("alice", "screen"), 0xA000, [vp8()]),
    ])
    assert list(router.stats()["subscribers"]["bob"]["routes"]) == ["alice/voice"]
    assert router.stats()["counters"]["route_ssrc_conflict"] == 1


# -- real captures (../shared/captures) ------------------------------------------------------


def test_captured_streams_forward_byte_identical_payloads():
    """ffmpeg's Opus (PT 97) and VP8 (PT 96) RTP, unsignalled SSRCs, to two subscribers."""
    pcap = pytest.importorskip("tests.media.pcap")
    if not pcap.CAPTURES.exists():
        pytest.skip("../shared/captures is not beside the repository")
    voice = pcap.rtp_packets(pcap.CAPTURES / "opus_voice_10s.pcap")
    screen = pcap.rtp_packets(pcap.CAPTURES / "vp8_screen_10s.pcap")
    assert len(voice) == 501 and len(screen) == 1666
    router = Router()
    router.set_published("pub", "voice", published("0", "voice", [opus(97)]))
    router.set_published("pub", "screen", published("1", "video", [vp8(96)]))
    for n, who in enumerate(("s1", "s2")):
        router.set_forwarded(who, [forwarded("3", ("pub", "voice"), 0x100 + n, [opus(111)], exts(mid=1)),
                                   forwarded("4", ("pub", "screen"), 0x200 + n, [vp8(96 + 2 * n)], exts(mid=2))])
    out = []
    for i, packet in enumerate(voice):
        out += router.on_rtp("pub", packet, i * 0.02)
    for i, packet in enumerate(screen):
        out += router.on_rtp("pub", packet, i * 0.006)
    for n, who in enumerate(("s1", "s2")):
        got = rtp_for(out, who)
        sent = [aio.RtpPacket.parse(p) for p in voice + screen]
        assert len(got) == len(sent)
        for g, s in zip(got, sent):
            assert (g.payload, g.marker, g.timestamp, g.sequence_number) == (
                s.payload, s.marker, s.timestamp, s.sequence_number)
        assert {g.ssrc for g in got[:501]} == {0x100 + n} and {g.payload_type for g in got[:501]} == {111}
        assert {g.ssrc for g in got[501:]} == {0x200 + n} and {g.payload_type for g in got[501:]} == {96 + 2 * n}
    # one keyframe request per subscriber's new screen route, within the rate limit: one in all
    assert len([o for o in out if o.is_rtcp]) == 1
    (rr,) = router.handle_timer(100.0)
    blocks = aio.RtcpPacket.parse(rr.packet)[0].reports
    assert [(b.packets_lost, b.fraction_lost) for b in blocks] == [(0, 0), (0, 0)]


def test_full_engine_tables_cost_media_not_signaling(forwarding_path):
    """Native engine: a full table is counted; the router and the other routes go on."""
    if forwarding_path == "python":
        return  # the Python path has no fixed tables
    from tests.native_router import NativeRouter

    router = NativeRouter(engine_limits=dict(max_sessions=8, max_sources=4, max_streams=4, max_routes=1))
    for pid in ("alice", "bob", "carol"):
        router.peer(pid)
    voice = published("0", "voice", [opus(111)], exts(level=1), (1111,))
    router.set_published("alice", "voice", voice)
    router.set_forwarded("bob", [forwarded("5", ("alice", "voice"), 0xA000, [opus()])])
    router.set_forwarded("carol", [forwarded("5", ("alice", "voice"), 0xC000, [opus()])])  # no route slot left
    assert router.stats()["counters"]["engine_table_full"] == 1
    out = router.on_rtp("alice", voice_packet(1), 0.0)
    assert [o.participant_id for o in out] == ["bob"]
    router.close()

"""The Datapath contract (callsgw.sfu.datapath), run on both implementations through the interface only.

``python``: :class:`callsgw.sfu.datapath.PythonDatapath`, whose copies come
back in ``out``; ``native``: :class:`callsgw.sfu.native.NativeDatapath` on a
real engine (``tests.native_router.NativeRig``), whose copies go out through
the engine's socket, SRTP-protected, and are read back decrypted at each
subscriber's socket. Each case says what any datapath must do; the router
suite (``tests/unit/test_router.py``) then runs on both through the router.
"""

from __future__ import annotations

import pytest
from aiortc import rtp as aio

from callsgw.sfu.datapath import HISTORY_SIZE, Datapath, Outgoing, PythonDatapath
from callsgw.wire.rtp import audio_level, extension_value
from tests.packets import rtp as make_rtp
from tests.unit.test_router import one_byte

LEVEL_ID = 1
VP8, OPUS, RTX = 96, 111, 97


class PythonRig:
    def __init__(self):
        self.datapath = PythonDatapath()

    def peer(self, pid):
        return pid

    def sent(self, out):
        return list(out)

    def close(self):
        pass


@pytest.fixture(params=["python", "native", "native-thread"])
def rig(request):
    if request.param == "python":
        made = PythonRig()
    else:
        from tests.native_router import NativeRig

        made = NativeRig(threaded=request.param == "native-thread")
    for pid in ("alice", "bob", "carol"):
        made.peer(pid)
    yield made
    made.close()


def video(seq, ssrc=0xA1, payload=None, pt=VP8):
    return make_rtp(seq, ssrc, payload if payload is not None else b"vp8-%05d" % seq, pt=pt, ts=seq * 3000)


def voice(seq, ssrc=0xA2, level=30):
    return make_rtp(seq, ssrc, b"opus-%05d" % seq, pt=OPUS, ts=seq * 960,
                    ext=one_byte((LEVEL_ID, bytes([0x80 | level]))))


def parsed(sent, who):
    return [aio.RtpPacket.parse(o.packet) for o in sent if o.participant_id == who]


def setup_video(dp: Datapath, subscribers=("bob",), nack=True):
    source = dp.source_open()
    dp.source_configure(source, published=True, media_pts=(VP8,), rtx_pts=(RTX,), nack=nack,
                        clock_rate=90000, video=True)
    stream = dp.stream_add(source, "alice", 0xA1)
    routes = {}
    for n, pid in enumerate(subscribers):
        route = routes[pid] = dp.route_open(pid, 0xB000 + n)
        dp.route_attach(route, source)
        dp.route_configure(route, pt_map={VP8: 100}, ext_ids={}, mid_id=0, mid_value=b"",
                           window=HISTORY_SIZE if nack else 128, block=False)
    return source, stream, routes


def test_a_packet_is_rewritten_once_per_route_and_a_video_route_reports_its_start(rig):
    dp = rig.datapath
    source, stream, routes = setup_video(dp, ("bob", "carol"))
    out: list[Outgoing] = []
    started = dp.receive(stream, video(7), 0.0, out)
    assert sorted(started) == sorted(routes.values())
    sent = rig.sent(out)
    for n, pid in enumerate(("bob", "carol")):
        (p,) = parsed(sent, pid)
        assert (p.ssrc, p.payload_type, p.sequence_number, p.payload) == (0xB000 + n, 100, 7, b"vp8-00007")
    out = []
    assert dp.receive(stream, video(8), 0.01, out) == []  # started only once
    assert [p.sequence_number for p in parsed(rig.sent(out), "bob")] == [8]
    state = dp.route_state(routes["bob"])
    assert (state.active_ssrc, state.started, state.packets_out, state.window) == (0xA1, True, 2, HISTORY_SIZE)
    assert state.octets_out == 2 * len(b"vp8-00007") and not state.drops
    assert dp.source_media_ssrc(source) == 0xA1
    counts = dp.stream_counts(stream)
    assert (counts.packets_in, counts.bytes_in, counts.report_packets) == (2, 2 * len(video(7)), 2)


def test_an_unmapped_payload_type_and_an_unknown_one_are_counted_not_sent(rig):
    dp = rig.datapath
    source, stream, routes = setup_video(dp)
    dp.route_configure(routes["bob"], pt_map={}, ext_ids={}, mid_id=0, mid_value=b"", window=HISTORY_SIZE,
                       block=False)
    out = []
    dp.receive(stream, video(1), 0.0, out)
    dp.receive(stream, video(2, pt=50), 0.0, out)
    assert parsed(rig.sent(out), "bob") == []
    assert dp.route_state(routes["bob"]).drops == {"payload_type_unmapped": 1}
    assert dp.stream_counts(stream).unknown_payload_type == 1


def test_rtx_is_left_to_the_caller_and_a_recovered_original_fills_the_gap(rig):
    dp = rig.datapath
    source, stream, routes = setup_video(dp)
    out = []
    for seq in (1, 2, 4):
        dp.receive(stream, video(seq), 0.0, out)
    rig.sent(out)
    assert dp.receive(stream, video(9, pt=RTX), 0.0, []) is None
    assert dp.history_has(stream, 2) and not dp.history_has(stream, 3)
    out = []
    dp.recover(stream, video(3), 0.1, out)
    assert [(p.sequence_number, p.payload) for p in parsed(rig.sent(out), "bob")] == [(3, b"vp8-00003")]
    assert dp.history_has(stream, 3)


def test_a_nack_resends_identical_bytes_and_returns_what_the_history_lacks(rig):
    dp = rig.datapath
    source, stream, routes = setup_video(dp)
    out = []
    for seq in (10, 11, 13):
        dp.receive(stream, video(seq), 0.0, out)
    first = {p.sequence_number: p.payload for p in parsed(rig.sent(out), "bob")}
    out = []
    missing = dp.nack(routes["bob"], [11, 12], 0.1, out)
    assert missing == [12]
    (again,) = parsed(rig.sent(out), "bob")
    assert (again.sequence_number, again.payload) == (11, first[11])
    state = dp.route_state(routes["bob"])
    assert (state.retransmits, state.nack_misses) == (1, 1)
    dp.nack(routes["bob"], [0x8000], 0.2, [])
    assert dp.route_state(routes["bob"]).drops == {"nack_out_of_range": 1}


def test_a_new_rewrite_that_blocks_keeps_sent_indexes_from_being_sent_again(rig):
    dp = rig.datapath
    source, stream, routes = setup_video(dp)
    out = []
    dp.receive(stream, video(1), 0.0, out)
    rig.sent(out)
    dp.route_configure(routes["bob"], pt_map={VP8: 101}, ext_ids={}, mid_id=0, mid_value=b"",
                       window=HISTORY_SIZE, block=True)
    out = []
    dp.nack(routes["bob"], [1], 0.1, out)
    assert parsed(rig.sent(out), "bob") == []
    assert dp.route_state(routes["bob"]).drops == {"retransmit_mismatch": 1}


def test_a_new_input_stream_continues_the_subscribers_sequence_numbers(rig):
    dp = rig.datapath
    source, stream, routes = setup_video(dp)
    other = dp.stream_add(source, "alice", 0xA9)
    out = []
    for seq in (65534, 65535):
        dp.receive(stream, video(seq), 0.0, out)
    for seq in (500, 501):
        dp.receive(other, video(seq, ssrc=0xA9), 0.1, out)
    assert [p.sequence_number for p in parsed(rig.sent(out), "bob")] == [65534, 65535, 0, 1]
    state = dp.route_state(routes["bob"])
    assert state.active_ssrc == 0xA9 and state.offset == (0x10000 - 500) & 0xFFFF
    assert dp.source_media_ssrc(source) == 0xA9


def test_a_detached_route_receives_nothing_and_a_closed_source_forwards_nothing(rig):
    dp = rig.datapath
    source, stream, routes = setup_video(dp, ("bob", "carol"))
    dp.route_detach(routes["bob"])
    out = []
    dp.receive(stream, video(1), 0.0, out)
    sent = rig.sent(out)
    assert parsed(sent, "bob") == [] and len(parsed(sent, "carol")) == 1
    dp.route_close(routes["bob"])
    dp.stream_remove(stream)
    dp.route_close(routes["carol"])
    dp.source_close(source)


def test_audio_levels_receive_statistics_and_unpublishing(rig):
    dp = rig.datapath
    source = dp.source_open()
    dp.source_configure(source, published=True, media_pts=(OPUS,), level_id=LEVEL_ID, clock_rate=48000)
    stream = dp.stream_add(source, "alice", 0xA2)
    route = dp.route_open("bob", 0xB0B)
    dp.route_attach(route, source)
    dp.route_configure(route, pt_map={OPUS: OPUS}, ext_ids={LEVEL_ID: 3}, mid_id=0, mid_value=b"", window=128,
                       block=False)
    out = []
    assert dp.receive(stream, voice(1, level=30), 0.5, out) == []  # audio: no keyframe start
    dp.receive(stream, voice(2, level=40), 0.52, out)
    first, _ = [o.packet for o in rig.sent(out) if o.participant_id == "bob"]
    assert audio_level(first, 3) == (True, 30) and extension_value(first, LEVEL_ID) is None  # ID 1 -> 3
    assert dp.stream_levels(stream) == [(0.5, 30), (0.52, 40)]
    assert dp.stream_levels(stream) == []  # taken
    assert dp.stream_stats(stream).max_seq == 2
    assert not dp.history_has(stream, 1)  # no NACK negotiated: no history
    dp.source_configure(source, published=False)
    assert dp.source_media_ssrc(source) is None


def test_the_python_datapath_satisfies_the_protocol():
    import inspect

    from callsgw.sfu.native import NativeDatapath

    wanted = {name for name, _ in inspect.getmembers(Datapath, inspect.isfunction) if not name.startswith("_")}
    for cls in (PythonDatapath, NativeDatapath):
        assert wanted <= set(dir(cls)), (cls, wanted - set(dir(cls)))
        for name in wanted:
            assert inspect.signature(getattr(cls, name)).parameters.keys() == \
                inspect.signature(getattr(Datapath, name)).parameters.keys(), (cls, name)


def test_the_router_sees_no_slots_and_no_engine():
    """Nothing outside a datapath sees its slots or private objects (issue 13): no such name in the router."""
    import ast
    import inspect

    import callsgw.sfu.router as router_module

    tree = ast.parse(inspect.getsource(router_module))
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
              for alias in node.names}
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in modules if "native" in m}
    assert not {n for n in names if ("slot" in n.lower() and n != "__slots__") or "engine" in n.lower()}


def test_a_new_input_stream_continues_the_subscribers_timestamps(rig):
    """One outgoing SSRC, one timeline (RFC 3550 section 5.1): a new input SSRC on a route that has sent
    (a publisher restarting its stream, or a WHEP slot switched to another publisher) is moved so that
    its first timestamp follows the last one sent by the time in between; within a stream the spacing
    is the publisher's."""
    dp = rig.datapath
    source = dp.source_open()
    dp.source_configure(source, published=True, media_pts=(OPUS,), clock_rate=48000)
    first = dp.stream_add(source, "alice", 0xA2)
    second = dp.stream_add(source, "alice", 0xA3)
    route = dp.route_open("bob", 0xB000)
    dp.route_attach(route, source)
    dp.route_configure(route, pt_map={OPUS: OPUS}, ext_ids={}, mid_id=0, mid_value=b"", window=128, block=False)
    out = []
    for n, seq in enumerate((10, 11, 12)):
        dp.receive(first, voice(seq), n * 0.02, out)
    for n, seq in enumerate((40_000, 40_001)):  # another stream, 40 ms after the last packet
        dp.receive(second, make_rtp(seq, 0xA3, b"opus-b", pt=OPUS, ts=3_000_000_000 + n * 960), 0.08 + n * 0.02, out)
    got = parsed(rig.sent(out), "bob")
    assert [p.timestamp for p in got] == [10 * 960, 11 * 960, 12 * 960, 12 * 960 + 1920, 12 * 960 + 2880]
    assert [p.sequence_number for p in got] == [10, 11, 12, 13, 14]
    assert dp.route_state(route).ts_offset == (12 * 960 + 1920 - 3_000_000_000) & 0xFFFFFFFF

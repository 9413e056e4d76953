"""Datapath.route_select (simulcast layer switch), run through the interface on every datapath.

Two streams of one source are the layers ``h`` and ``l`` of a screen track
(RFC 8853); a layered route forwards one of them, switches at the target's
next VP8 keyframe (RFC 7741 sections 4.2, 4.3) and keeps the subscriber's
sequence numbers, timestamps, PictureID and TL0PICIDX continuous. The native
engine (``Engine.route_select``) follows the Python reference packet for packet.
"""

from __future__ import annotations

import pytest

from callsgw.sfu.datapath import HISTORY_SIZE
from callsgw.wire import vp8
from tests.packets import rtp as make_rtp
from tests.unit.test_datapath import parsed, rig  # noqa: F401  (rig: the fixture, on every datapath)

VP8, RTX = 96, 97
H, L = 0xA1, 0xA2


def frame(seq, ssrc, picture_id, *, key=False, tl0=None, ts=None, long=True, start=True):
    """A VP8 packet: descriptor with a PictureID (and TL0PICIDX), then a payload header (P=0 on keyframes)."""
    x = 0x80 | (0x40 if tl0 is not None else 0)
    pid = bytes([0x80 | (picture_id >> 8), picture_id & 0xFF]) if long else bytes([picture_id & 0x7F])
    desc = bytes([0x80 | (0x10 if start else 0), x]) + pid + (bytes([tl0]) if tl0 is not None else b"")
    header = bytes([0x10 if key else 0x11, 0x02, 0x00]) + b"%08x" % seq
    return make_rtp(seq, ssrc, desc + header, pt=VP8, ts=ts if ts is not None else seq * 3000)


def ids(packet):
    p = parsed([packet], packet.participant_id)[0]
    d = vp8.parse(p.payload)
    return p.sequence_number, p.timestamp, d.picture_id, d.tl0picidx, p.payload[d.size] & 1 == 0


def setup(dp, subscribers=("bob",), out_ssrc=0xB000):
    source = dp.source_open()
    dp.source_configure(source, published=True, media_pts=(VP8,), rtx_pts=(RTX,), nack=True, clock_rate=90000,
                        video=True)
    streams = {H: dp.stream_add(source, "alice", H), L: dp.stream_add(source, "alice", L)}
    routes = {}
    for n, pid in enumerate(subscribers):
        route = routes[pid] = dp.route_open(pid, out_ssrc + n)
        dp.route_attach(route, source)
        dp.route_configure(route, pt_map={VP8: 100}, ext_ids={}, mid_id=0, mid_value=b"", window=HISTORY_SIZE,
                           block=False)
    return source, streams, routes


def send(rig, dp, streams, packets, now):
    out = []
    for ssrc, packet in packets:
        dp.receive(streams[ssrc], packet, now, out)
    return [o for o in rig.sent(out) if o.participant_id == "bob"]


def test_a_selected_route_waits_for_a_keyframe_then_forwards_only_its_layer(rig):
    dp = rig.datapath
    source, streams, routes = setup(dp)
    dp.route_select(routes["bob"], streams[H])
    # both layers flow; no keyframe on h yet: nothing is forwarded, all counted
    got = send(rig, dp, streams, [(H, frame(100, H, 500)), (L, frame(900, L, 40, key=True))], 0.0)
    assert got == []
    assert dp.route_state(routes["bob"]).drops == {"other_layer": 2}
    got = send(rig, dp, streams, [(H, frame(101, H, 501, key=True)), (L, frame(901, L, 41)),
                                  (H, frame(102, H, 502))], 0.1)
    assert [ids(o)[0] for o in got] == [101, 102]  # h only, from its keyframe on
    state = dp.route_state(routes["bob"])
    assert state.active_ssrc == H and state.drops["layer_switches"] == 1 and state.drops["other_layer"] == 3


def test_a_switch_keeps_sequence_timestamp_picture_id_and_tl0_continuous(rig):
    dp = rig.datapath
    source, streams, routes = setup(dp)
    dp.route_select(routes["bob"], streams[H])
    got = send(rig, dp, streams, [(H, frame(1000, H, 30000, key=True, tl0=200, ts=90000)),
                                  (H, frame(1001, H, 30001, tl0=201, ts=93000))], 0.0)
    last_seq, last_ts, last_pid, last_tl0, _ = ids(got[-1])
    assert (last_pid, last_tl0) == (30001, 201)
    dp.route_select(routes["bob"], streams[L])
    # h goes on until l's keyframe; l's delta frame does not switch
    got = send(rig, dp, streams, [(L, frame(7, L, 9, tl0=3, ts=5000)), (H, frame(1002, H, 30002, tl0=202, ts=96000))],
               0.033)
    assert [ids(o)[2] for o in got] == [30002]
    last_seq, last_ts, last_pid, last_tl0, _ = ids(got[-1])
    got = send(rig, dp, streams, [(L, frame(8, L, 10, key=True, tl0=4, ts=8000)), (H, frame(1003, H, 30003)),
                                  (L, frame(9, L, 11, tl0=4, ts=8000))], 0.066)
    assert len(got) == 2
    seq, ts, pid, tl0, key = ids(got[0])
    assert key and seq == last_seq + 1 and pid == last_pid + 1 and tl0 == (last_tl0 + 1) & 0xFF
    assert ts == (last_ts + round(0.033 * 90000)) & 0xFFFFFFFF  # the outgoing timeline goes on
    assert ids(got[1])[:4] == (seq + 1, ts, pid + 1, tl0)  # offsets hold within the segment
    state = dp.route_state(routes["bob"])
    assert state.active_ssrc == L and state.drops["layer_switches"] == 2
    # and back up: h's keyframe, its 15-bit PictureID continues from l's
    dp.route_select(routes["bob"], streams[H])
    got = send(rig, dp, streams, [(H, frame(1004, H, 30004, key=True, tl0=203, ts=105000))], 0.1)
    seq2, _, pid2, tl02, key2 = ids(got[0])
    assert key2 and (seq2, pid2, tl02) == (seq + 2, pid + 2, (tl0 + 1) & 0xFF)


def test_seven_bit_picture_ids_wrap_and_selecting_the_current_layer_cancels_a_pending_switch(rig):
    dp = rig.datapath
    source, streams, routes = setup(dp)
    dp.route_select(routes["bob"], streams[H])
    got = send(rig, dp, streams, [(H, frame(1, H, 127, key=True, long=False))], 0.0)
    assert ids(got[0])[2] == 127
    dp.route_select(routes["bob"], streams[L])
    dp.route_select(routes["bob"], streams[H])  # changed its mind: no switch at l's keyframe
    got = send(rig, dp, streams, [(L, frame(50, L, 3, key=True, long=False)), (H, frame(2, H, 0, long=False))], 0.03)
    assert [ids(o)[2] for o in got] == [0]
    dp.route_select(routes["bob"], streams[L])
    got = send(rig, dp, streams, [(L, frame(51, L, 90, key=True, long=False))], 0.06)
    assert ids(got[0])[2] == 1  # 0 + 1: 7-bit continuity across the switch


def test_a_nack_after_a_switch_resends_identical_bytes_and_not_the_old_segment(rig):
    dp = rig.datapath
    source, streams, routes = setup(dp)
    dp.route_select(routes["bob"], streams[H])
    send(rig, dp, streams, [(H, frame(10, H, 100, key=True)), (H, frame(11, H, 101))], 0.0)
    dp.route_select(routes["bob"], streams[L])
    got = send(rig, dp, streams, [(L, frame(70, L, 5, key=True)), (L, frame(71, L, 6))], 0.05)
    first = {parsed([o], "bob")[0].sequence_number: o.packet for o in got}
    assert sorted(first) == [12, 13]
    out = []
    missing = dp.nack(routes["bob"], [11, 13], 0.1, out)
    again = [o for o in rig.sent(out) if o.participant_id == "bob"]
    assert missing == [] and [o.packet for o in again] == [first[13]]  # 11 belongs to h's segment: refused
    assert dp.route_state(routes["bob"]).drops["nack_out_of_range"] == 1


def test_pausing_forwards_nothing_and_resuming_waits_for_a_keyframe(rig):
    dp = rig.datapath
    source, streams, routes = setup(dp, ("bob", "carol"))
    dp.route_select(routes["bob"], streams[L])
    send(rig, dp, streams, [(L, frame(1, L, 1, key=True))], 0.0)
    dp.route_select(routes["bob"], None)
    assert send(rig, dp, streams, [(L, frame(2, L, 2)), (H, frame(3, H, 3, key=True))], 0.05) == []
    assert dp.route_state(routes["bob"]).drops["layer_paused"] == 2
    dp.route_select(routes["bob"], streams[L])
    assert send(rig, dp, streams, [(L, frame(4, L, 4))], 0.1) == []
    got = send(rig, dp, streams, [(L, frame(5, L, 5, key=True))], 0.2)
    assert [ids(o)[:1] + ids(o)[2:3] for o in got] == [(2, 2)]  # seq and picture id follow the last sent (1)
    # carol never selected: an ordinary route, untouched by bob's selection (the router selects on every
    # route of a layered source, since an ordinary one flips between the SSRCs: stale_ssrc)
    carol = dp.route_state(routes["carol"])
    assert carol.packets_out == 3 and set(carol.drops) == {"stale_ssrc"}


def test_a_truncated_descriptor_on_a_layered_route_is_counted_and_a_foreign_stream_refused(rig):
    dp = rig.datapath
    source, streams, routes = setup(dp)
    dp.route_select(routes["bob"], streams[H])
    send(rig, dp, streams, [(H, frame(1, H, 1, key=True))], 0.0)
    assert send(rig, dp, streams, [(H, make_rtp(2, H, b"\x80\x80", pt=VP8, ts=3000))], 0.01) == []
    assert dp.route_state(routes["bob"]).drops["bad_vp8"] == 1
    other = dp.source_open()
    dp.source_configure(other, published=True, media_pts=(VP8,), video=True, clock_rate=90000)
    foreign = dp.stream_add(other, "carol", 0xC1)
    with pytest.raises(ValueError):
        dp.route_select(routes["bob"], foreign)


def test_a_removed_stream_is_no_longer_current(rig):
    dp = rig.datapath
    source, streams, routes = setup(dp)
    dp.route_select(routes["bob"], streams[H])
    send(rig, dp, streams, [(H, frame(1, H, 1, key=True))], 0.0)
    dp.stream_remove(streams[H])
    del streams[H]
    assert send(rig, dp, streams, [(L, frame(5, L, 5, key=True))], 0.1) == []  # nothing selected any more
    dp.route_select(routes["bob"], streams[L])
    assert len(send(rig, dp, streams, [(L, frame(6, L, 6, key=True))], 0.2)) == 1


def test_random_selects_and_keyframes_follow_the_documented_model(rig):
    """Any interleaving of two layers' packets, keyframes and selects: the datapath forwards exactly what
    the route_select rules say, and the subscriber sees one stream (consecutive sequence numbers and
    PictureIDs, a keyframe first after every switch, an index never sent with different bytes)."""
    import random

    dp = rig.datapath
    for seed in range(12):
        rng = random.Random(seed)
        source, streams, routes = setup(dp, out_ssrc=0xC000 + seed)  # a fresh SRTP index space per seed
        route = routes["bob"]
        by_id = {streams[H]: H, streams[L]: L}
        next_seq = {H: rng.randrange(0, 65536), L: rng.randrange(0, 65536)}
        next_pid = {H: rng.randrange(0, 0x8000), L: rng.randrange(0, 0x8000)}
        dp.route_select(route, streams[H])  # layered from the start (the router selects on attach)
        current, pending = None, H
        forwarded: list[tuple[int, bool]] = []  # (input ssrc, keyframe) the model expects, in order
        got = []
        now = 0.0
        for _ in range(300):
            now += 0.005
            action = rng.random()
            if action < 0.08:
                target = rng.choice([streams[H], streams[L], None])
                dp.route_select(route, target)
                ssrc = by_id.get(target)
                if target is None:
                    current = pending = None
                elif ssrc == current:
                    pending = None
                else:
                    pending = ssrc
                continue
            ssrc = H if action < 0.6 else L
            key = rng.random() < 0.15
            packet = frame(next_seq[ssrc], ssrc, next_pid[ssrc], key=key, ts=next_seq[ssrc] * 3000)
            next_seq[ssrc] = (next_seq[ssrc] + 1) & 0xFFFF
            next_pid[ssrc] = (next_pid[ssrc] + 1) & 0x7FFF
            if ssrc == current:
                forwarded.append((ssrc, key))
            elif ssrc == pending and key:
                current, pending = ssrc, None
                forwarded.append((ssrc, True))
            got += send(rig, dp, streams, [(ssrc, packet)], now)
        assert len(got) == len(forwarded), seed
        out = [ids(o) for o in got]
        seqs = [o[0] for o in out]
        assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(len(seqs))] if seqs else True, seed
        pids = [o[2] for o in out]
        assert pids == [(pids[0] + n) & 0x7FFF for n in range(len(pids))] if pids else True, seed
        for n, ((ssrc, key), o) in enumerate(zip(forwarded, out)):
            switched = n == 0 or forwarded[n - 1][0] != ssrc
            assert o[4] == key and (key or not switched), (seed, n)
        assert len({o.packet for o in got}) == len(got)  # no copy twice
        dp.route_close(route)
        for stream in streams.values():
            dp.stream_remove(stream)
        dp.source_close(source)

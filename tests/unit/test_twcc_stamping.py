"""Transport-wide sequence numbers in the datapaths and the engine's logs (issue #19).

Run on every datapath through the rig of ``tests/unit/test_datapath.py``
(Python, the native engine polled, the native engine on its thread): each
subscriber's copies carry that subscriber transport's own numbers, whatever
the publisher's were; the sends are logged with their sizes; a NACK
retransmission is the same SRTP index again, so it carries the number of its
first send (the native rig raises if an index comes back with other bytes),
and is refused when that can no longer be done. The engine's arrival log is
checked against real datagrams with kernel receive stamps.
"""

from __future__ import annotations

import time

import pytest
from aiortc import rtp as aio

from callsgw.sfu.datapath import HISTORY_SIZE, PythonDatapath
from callsgw.transport.twcc import TwccLog
from callsgw.wire.rtp import extension_value
from tests.packets import rtp as make_rtp
from tests.unit.test_datapath import OPUS, VP8, parsed, rig  # noqa: F401  (rig is a fixture)
from tests.unit.test_router import one_byte

PUB_TWCC, SUB_TWCC, LEVEL = 5, 7, 1


def video(seq, twcc_seq, ssrc=0xA1, *, marker=True):
    """A one-packet frame (marker set), or with ``marker=False`` a packet inside one."""
    return make_rtp(seq, ssrc, b"vp8-%05d" % seq, pt=VP8, ts=seq * 3000, marker=marker,
                    ext=one_byte((PUB_TWCC, twcc_seq.to_bytes(2, "big"))))


def enable(rig, pid, *, in_id=0, out_id=SUB_TWCC):
    """Turn stamping (out_id) / arrival logging (in_id) on for a participant's transport."""
    if isinstance(rig.datapath, PythonDatapath):
        logs = getattr(rig, "twcc_logs", None)
        if logs is None:
            logs = rig.twcc_logs = {}
            rig.datapath.twcc_of = logs.get
        log = logs.setdefault(pid, TwccLog())
        log.configure(in_id, out_id, True)
    else:
        rig.peer(pid)
        rig.engine.session_twcc(rig.shared.session_slot(rig.peers[pid]), in_id, out_id, True)


def take(rig, pid):
    if isinstance(rig.datapath, PythonDatapath):
        return rig.twcc_logs[pid].take()
    return rig.engine.take_twcc(rig.shared.session_slot(rig.peers[pid]))


def setup(dp, subscribers=("bob", "carol")):
    source = dp.source_open()
    dp.source_configure(source, published=True, media_pts=(VP8,), nack=True, clock_rate=90000, video=True)
    stream = dp.stream_add(source, "alice", 0xA1)
    routes = {}
    for n, pid in enumerate(subscribers):
        route = routes[pid] = dp.route_open(pid, 0xB000 + n)
        dp.route_attach(route, source)
        dp.route_configure(route, pt_map={VP8: 100}, ext_ids={PUB_TWCC: SUB_TWCC}, mid_id=0, mid_value=b"",
                           window=HISTORY_SIZE, block=False)
    return source, stream, routes


def twcc_of(packet: bytes, ext_id: int = SUB_TWCC) -> int | None:
    value = extension_value(packet, ext_id)
    return int.from_bytes(value, "big") if value is not None else None


def raw(sent, who):
    return [o.packet for o in sent if o.participant_id == who]


def test_each_subscriber_gets_its_own_transport_wide_numbers_and_the_sends_are_logged(rig):
    dp = rig.datapath
    _, stream, _ = setup(dp)
    enable(rig, "bob")  # carol's transport does not stamp: her copies keep the publisher's numbers
    enable(rig, "carol", out_id=0)
    out = []
    for seq, publisher_twcc in ((1, 900), (2, 901), (3, 905)):
        dp.receive(stream, video(seq, publisher_twcc), 0.0, out)
    sent = rig.sent(out)
    bob = raw(sent, "bob")
    assert [aio.RtpPacket.parse(p).sequence_number for p in bob] == [1, 2, 3]
    assert [twcc_of(p) for p in bob] == [0, 1, 2]
    assert [twcc_of(p) for p in raw(sent, "carol")] == [900, 901, 905]
    arrivals, (seqs, ns, sizes) = take(rig, "bob")
    assert len(arrivals[0]) == 0
    assert seqs.tolist() == [0, 1, 2]
    assert sizes.tolist() == [len(p) for p in bob]  # RTP octets, before SRTP
    now = time.time_ns()
    assert all(now - 10**10 < t <= now for t in ns.tolist()) and list(ns) == sorted(ns)
    assert [len(a) for a in take(rig, "bob")[1]] == [0, 0, 0]  # drained


def test_a_retransmission_carries_the_number_of_its_first_send(rig):
    dp = rig.datapath
    _, stream, routes = setup(dp, ("bob",))
    enable(rig, "bob")
    out = []
    for seq in (10, 11, 12):
        dp.receive(stream, video(seq, 500 + seq), 0.0, out)
    first = {aio.RtpPacket.parse(p).sequence_number: p for p in raw(rig.sent(out), "bob")}
    assert [twcc_of(first[s]) for s in (10, 11, 12)] == [0, 1, 2]
    take(rig, "bob")
    out = []
    dp.nack(routes["bob"], [11], 0.1, out)
    (again,) = raw(rig.sent(out), "bob")  # the native rig raises on an index resent with other bytes
    assert again == first[11]  # byte-identical, its transport-wide number included
    assert [len(a) for a in take(rig, "bob")[1]] == [0, 0, 0]  # a retransmission is not a new send
    out = []
    dp.receive(stream, video(13, 513), 0.2, out)
    assert [twcc_of(p) for p in raw(rig.sent(out), "bob")] == [3]


def test_a_retransmission_that_can_no_longer_carry_its_number_is_refused(rig):
    dp = rig.datapath
    _, stream, routes = setup(dp, ("bob",))
    enable(rig, "bob")
    out = []
    dp.receive(stream, video(20, 700), 0.0, out)
    rig.sent(out)
    enable(rig, "bob", out_id=0)  # stamping turned off: the resend would carry the publisher's number
    out = []
    dp.nack(routes["bob"], [20], 0.1, out)
    assert parsed(rig.sent(out), "bob") == []
    assert dp.route_state(routes["bob"]).drops == {"retransmit_mismatch": 1}


def test_a_copy_without_the_element_is_sent_unstamped_and_not_logged(rig):
    dp = rig.datapath
    _, stream, _ = setup(dp, ("bob",))
    enable(rig, "bob")
    out = []
    plain = make_rtp(1, 0xA1, b"vp8-plain", pt=VP8, ts=0)
    wrong_size = make_rtp(2, 0xA1, b"vp8-odd", pt=VP8, ts=3000, ext=one_byte((PUB_TWCC, b"\x01\x02\x03")))
    dp.receive(stream, plain, 0.0, out)
    dp.receive(stream, wrong_size, 0.0, out)
    got = parsed(rig.sent(out), "bob")
    assert [p.sequence_number for p in got] == [1, 2]
    assert [len(a) for a in take(rig, "bob")[1]] == [0, 0, 0]


# -- the engine's arrival log (real datagrams, kernel receive stamps) ---------------------------


@pytest.fixture(params=[False, True], ids=["native", "native-thread"])
def native_rig(request):
    from tests.native_router import NativeRig

    made = NativeRig(threaded=request.param)
    yield made
    made.close()


def _settle(rig, condition, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not rig.threaded:
            rig.engine.poll(time.monotonic())
        if condition():
            return True
        time.sleep(0.005)
    return False


def test_the_engine_logs_each_arrival_with_its_kernel_receive_time(native_rig):
    rig = native_rig
    alice = rig.peer("alice")
    slot = rig.shared.session_slot(alice)
    rig.engine.session_twcc(slot, PUB_TWCC, 0, False)
    before = time.time_ns()
    numbers = [65533, 65534, 65535, 0, 1]  # wraps: logged as sent, the feedback side unwraps
    for n, number in enumerate(numbers):
        alice.send(alice.tx.protect(video(100 + n, number)))
    alice.send(alice.tx.protect(make_rtp(200, 0xA1, b"no-element", pt=VP8)))  # not logged
    alice.send(b"\x80\x6f" + b"\x00" * 40)  # garbage: refused by SRTP, never logged
    got = []

    def drained():
        (seqs, ns), _ = rig.engine.take_twcc(slot)
        got.extend(zip(seqs.tolist(), ns.tolist()))
        return len(got) >= len(numbers)

    assert _settle(rig, drained)
    time.sleep(0.05)
    drained()
    assert [s for s, _ in got] == numbers
    after = time.time_ns()
    assert all(before <= t <= after for _, t in got)
    assert [t for _, t in got] == sorted(t for _, t in got)
    if not rig.threaded:
        rig.engine.take_twcc(slot)


def test_an_undrained_log_overwrites_its_oldest_entries_and_counts_them(native_rig):
    from callsgw._native.engine import SESSION_COUNTERS

    rig = native_rig
    alice = rig.peer("alice")
    slot = rig.shared.session_slot(alice)
    rig.engine.session_twcc(slot, PUB_TWCC, 0, False)
    total = 1024 + 100
    overflow = SESSION_COUNTERS.index("twcc_log_overflow")
    rtp_in = SESSION_COUNTERS.index("rtp_in")
    for n in range(total):
        alice.send(alice.tx.protect(video(n, n)))
        if n % 64 == 63:
            _settle(rig, lambda: rig.engine.session_counters[slot, rtp_in] >= n + 1)
    assert _settle(rig, lambda: rig.engine.session_counters[slot, rtp_in] == total)
    (seqs, _), _ = rig.engine.take_twcc(slot)
    assert seqs.tolist() == list(range(100, total))  # the newest 1024, oldest first
    assert int(rig.engine.session_counters[slot, overflow]) == 100


def test_session_twcc_refuses_bad_ids_and_unknown_slots(native_rig):
    rig = native_rig
    slot = rig.shared.session_slot(rig.peer("alice"))
    with pytest.raises(ValueError):
        rig.engine.session_twcc(slot, 256, 0, False)
    with pytest.raises(ValueError):
        rig.engine.session_twcc(slot, 0, -1, False)
    with pytest.raises(ValueError):
        rig.engine.take_twcc(511)


# -- TwccLog: the Python engine's twin ----------------------------------------------------------


def test_twcc_log_logs_arrivals_stamps_sends_and_survives_garbage():
    clock = iter(range(1000, 2000)).__next__
    log = TwccLog(clock=clock, capacity=4)
    log.configure(PUB_TWCC, SUB_TWCC, True)
    log.received(video(1, 42))
    log.received(b"\x80\x60\x00")  # truncated: ignored
    log.received(make_rtp(2, 1, b"x", pt=VP8, ext=one_byte((PUB_TWCC, b"\x01"))))  # 1-byte value: not ours
    out = make_rtp(3, 1, b"y", pt=VP8, ext=one_byte((SUB_TWCC, b"\xff\xff")))
    stamped, seq = log.stamp(out)
    assert seq == 0 and extension_value(stamped, SUB_TWCC) == b"\x00\x00" and len(stamped) == len(out)
    again, seq_again = log.stamp(out, 0)
    assert again == stamped and seq_again == 0  # a resend: the same bytes, not logged
    assert log.stamp(b"garbage") == (b"garbage", None)
    (seqs, ns), (sent_seqs, sent_ns, sizes) = log.take()
    assert (seqs.tolist(), ns.tolist()) == ([42], [1000])
    assert (sent_seqs.tolist(), sizes.tolist()) == ([0], [len(out)])
    for n in range(6):
        log.received(video(n, n))
    assert log.take()[0][0].tolist() == [2, 3, 4, 5] and log.overflow == 2
    with pytest.raises(ValueError):
        log.configure(300, 0, False)


# -- probe padding (route_padding) ---------------------------------------------------------------


def test_padding_continues_the_routes_numbers_carries_transport_wide_numbers_and_is_never_resent(rig):
    dp = rig.datapath
    _, stream, routes = setup(dp, ("bob",))
    assert dp.route_padding(routes["bob"], 3, 200, []) == 0  # nothing sent yet: no timeline to pad
    enable(rig, "bob")
    out = []
    for seq in (1, 2):
        dp.receive(stream, video(seq, seq), 0.0, out)
    media = raw(rig.sent(out), "bob")
    out = []
    assert dp.route_padding(routes["bob"], 3, 200, out) == 3
    padding = raw(rig.sent(out), "bob")
    pads = [aio.RtpPacket.parse(p) for p in padding]
    assert [p.sequence_number for p in pads] == [3, 4, 5]
    assert all(p.ssrc == 0xB000 and p.payload_type == 100 and p.timestamp == 6000 for p in pads)
    assert all(p.padding_size == 200 and p.payload == b"" for p in pads)
    assert [twcc_of(p) for p in padding] == [2, 3, 4]
    assert [twcc_of(p) for p in media] == [0, 1]
    out = []
    dp.receive(stream, video(3, 3), 0.1, out)
    (after,) = raw(rig.sent(out), "bob")
    assert aio.RtpPacket.parse(after).sequence_number == 6 and twcc_of(after) == 5
    _, (seqs, _, sizes) = take(rig, "bob")
    assert seqs.tolist() == [0, 1, 2, 3, 4, 5]
    assert sizes.tolist()[2:5] == [20 + 200] * 3
    out = []
    # before the padding and after it: resent byte for byte as first sent (its number, its transport-wide
    # number), although the padding moved the route's offset on; the padding itself: never resent
    assert dp.nack(routes["bob"], [2, 4, 6], 0.2, out) == []
    resent = raw(rig.sent(out), "bob")
    assert resent == [media[1], after]
    assert dp.route_state(routes["bob"]).drops["nack_out_of_range"] == 1
    assert dp.route_state(routes["bob"]).drops["padding_sent"] == 3
    # a second probe: the first media packets still come back under their own numbers
    out = []
    assert dp.route_padding(routes["bob"], 2, 100, out) == 2
    rig.sent(out)
    out = []
    assert dp.nack(routes["bob"], [1, 7, 8], 0.3, out) == []
    assert raw(rig.sent(out), "bob") == [media[0]]
    assert dp.route_state(routes["bob"]).drops["nack_out_of_range"] == 3
    with pytest.raises(ValueError):
        dp.route_padding(routes["bob"], 1, 256, [])


def test_no_padding_inside_a_frame(rig):
    # a padding number between two packets of one frame would leave a hole Chromium cannot assemble the
    # frame across (it waits 3 s and asks for a keyframe): padding only after a packet that ends a frame
    dp = rig.datapath
    _, stream, routes = setup(dp, ("bob",))
    enable(rig, "bob")
    out = []
    dp.receive(stream, video(1, 1), 0.0, out)
    dp.receive(stream, video(3, 3, marker=False), 0.0, out)  # a frame's first packet
    rig.sent(out)
    assert dp.route_padding(routes["bob"], 2, 100, []) == 0
    out = []
    dp.receive(stream, video(2, 2), 0.01, out)  # late: the end of the frame before changes nothing
    rig.sent(out)
    assert dp.route_padding(routes["bob"], 2, 100, []) == 0
    out = []
    dp.receive(stream, video(4, 4), 0.01, out)  # the frame's last packet
    rig.sent(out)
    out = []
    assert dp.route_padding(routes["bob"], 2, 100, out) == 2
    assert [aio.RtpPacket.parse(p).sequence_number for p in raw(rig.sent(out), "bob")] == [5, 6]


def test_no_padding_to_a_subscriber_whose_transport_does_not_stamp(rig):
    dp = rig.datapath
    _, stream, routes = setup(dp, ("bob",))
    enable(rig, "bob", out_id=0)
    out = []
    dp.receive(stream, video(1, 1), 0.0, out)
    rig.sent(out)
    assert dp.route_padding(routes["bob"], 2, 100, []) == 0

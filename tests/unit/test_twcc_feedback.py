"""callsgw.sfu.twcc_feedback: receive-side transport-cc feedback, driven by a simulated clock."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.sfu.twcc_feedback import TwccFeedbackGenerator
from callsgw.wire import twcc


def _parse(packets: list[bytes]) -> list[twcc.TwccFeedback]:
    return [fb for p in packets for fb in twcc.parse_compound(p)]


def _statuses(fbs) -> list[tuple[int, int | None]]:
    return [(p.seq, p.arrival_us) for fb in fbs for p in fb.packets()]


def test_reports_arrivals_after_the_interval_and_goes_idle():
    g = TwccFeedbackGenerator(interval=0.05)
    assert g.get_timer() is None and g.build(0.0, 1, 2) == []
    for i in range(10):
        g.record(100 + i, 10.0 + i * 0.001)
    assert g.get_timer() == pytest.approx(10.05)
    assert not g.due(10.049) and g.build(10.049, 1, 2) == []
    out = g.build(10.05, 1, 2)
    (fb,) = _parse(out)
    assert (fb.sender_ssrc, fb.media_ssrc, fb.base_seq, fb.status_count, fb.fb_count) == (1, 2, 100, 10, 0)
    assert fb.received() == [(100 + i, 10_000_000 + i * 1000) for i in range(10)]
    assert g.get_timer() is None and g.build(11.0, 1, 2) == []  # idle: nothing
    g.record(110, 11.0)
    assert g.get_timer() == pytest.approx(11.05)
    (fb,) = _parse(g.build(11.05, 1, 2))
    assert (fb.base_seq, fb.fb_count) == (110, 1)


def test_losses_between_feedbacks_are_reported_and_each_number_once():
    g = TwccFeedbackGenerator()
    for seq in (0, 1, 2, 5, 6):
        g.record(seq, 1.0 + seq / 1000)
    first = _parse(g.build(2.0, 1, 2))
    assert [p.received for fb in first for p in fb.packets()] == [True, True, True, False, False, True, True]
    g.record(9, 2.01)
    second = _parse(g.build(3.0, 1, 2))
    assert [(p.seq, p.received) for fb in second for p in fb.packets()] == [(7, False), (8, False), (9, True)]
    assert g.counters["reported_lost"] == 4 and g.counters["reported_received"] == 6


def test_a_packet_reported_lost_then_arriving_is_reported_again_as_received():
    g = TwccFeedbackGenerator(max_reorder=100)
    for seq in (0, 1, 2, 5, 6):
        g.record(seq, 1.0 + seq / 1000)
    g.build(2.0, 1, 2)  # 3 and 4 reported lost
    g.record(4, 2.5)  # reordered (or very late): within max_reorder
    g.record(7, 2.6)
    (fb,) = _parse(g.build(3.0, 1, 2))
    # the feedback starts again at 4 and repeats 5 and 6 as already reported
    assert fb.received() == [(4, 2_500_000), (5, 1_005_000), (6, 1_006_000), (7, 2_600_000)]
    assert g.counters["reordered"] == 1
    g.record(5, 3.1)  # already reported received: a duplicate
    g.record(100, 3.2)  # new: 8..99 lost
    g.record(3, 3.3)  # 97 back from the next number: within the window
    (fb,) = _parse(g.build(4.0, 1, 2))
    assert fb.base_seq == 3 and fb.received()[0] == (3, 3_300_000)
    assert g.counters["duplicate"] == 1
    g.record(2, 4.1)  # a duplicate again (2 is in the history)
    g.record(0, 4.2)  # a duplicate too
    assert g.counters["duplicate"] == 3
    g2 = TwccFeedbackGenerator(max_reorder=10)
    for seq in range(50):
        g2.record(seq, 1.0 + seq / 1000)
    g2.build(2.0, 1, 2)
    g2.record(100, 2.1)
    g2.build(3.0, 1, 2)  # 50..99 reported lost
    g2.record(60, 3.1)  # 41 back: beyond max_reorder
    assert g2.counters["late"] == 1 and g2.pending == 0


def test_wraparound_across_feedbacks():
    g = TwccFeedbackGenerator()
    seqs = [65530 + i for i in range(12)]
    for i, s in enumerate(seqs[:6]):
        g.record(s & 0xFFFF, 1.0 + i / 100)
    a = _parse(g.build(2.0, 1, 2))
    for i, s in enumerate(seqs[6:]):
        g.record(s & 0xFFFF, 3.0 + i / 100)
    b = _parse(g.build(4.0, 1, 2))
    assert [p.seq for p in a[0].packets()] == [65530, 65531, 65532, 65533, 65534, 65535]
    assert b[0].base_seq == 0 and [p.seq for p in b[0].packets()] == [0, 1, 2, 3, 4, 5]
    assert g.counters["reported_lost"] == 0


def test_duplicates_and_reordering():
    g = TwccFeedbackGenerator()
    for seq, t in [(10, 1.0), (12, 1.002), (11, 1.003), (12, 1.004), (13, 1.005)]:
        g.record(seq, t)
    assert g.counters["duplicate"] == 1
    (fb,) = _parse(g.build(2.0, 1, 2))
    # 11 arrived after 12: a negative delta, carried by a 2-bit large symbol
    assert fb.received() == [(10, 1_000_000), (11, 1_003_000), (12, 1_002_000), (13, 1_005_000)]
    assert twcc.LARGE in fb.statuses


def test_pending_is_bounded_and_the_dropped_are_not_reported_lost():
    g = TwccFeedbackGenerator(max_pending=16)
    for seq in range(100):
        g.record(seq, 1.0 + seq / 1000)
    assert g.pending <= 16 and g.counters["dropped_overflow"] >= 84
    fbs = _parse(g.build(5.0, 1, 2))
    statuses = _statuses(fbs)
    assert all(a is not None for _, a in statuses)  # no fake loss for the dropped
    assert statuses[-1][0] == 99 and len(statuses) == g.pending + g.counters["reported_received"]


def test_a_jump_is_not_reported_as_a_loss_run():
    g = TwccFeedbackGenerator()
    g.record(1, 1.0)
    g.build(2.0, 1, 2)
    g.record(1 + 4000, 2.1)  # within max_loss_run: a loss run of 3999
    fbs = _parse(g.build(3.0, 1, 2))
    assert sum(fb.status_count for fb in fbs) == 4000 and g.counters["reported_lost"] == 3999
    g2 = TwccFeedbackGenerator()
    for seq, t in [(1, 1.0), (30000, 1.01), (60000, 1.02)]:  # each step < 32768: unwrapped forward
        g2.record(seq, t)
    fbs = _parse(g2.build(2.0, 1, 2))
    # both jumps are beyond max_loss_run: no loss run, three single-packet feedbacks
    assert g2.counters["skipped"] == 2 and g2.counters["reported_lost"] == 0
    assert [fb.base_seq for fb in fbs] == [1, 30000, 60000]


def test_feedback_count_wraps_and_rate_is_bounded():
    g = TwccFeedbackGenerator(interval=0.05)
    t, seq, builds, packets = 0.0, 0, 0, []
    while t < 20.0:  # 1000 packets/s for 20 s; the shell builds whenever the timer is due
        g.record(seq & 0xFFFF, t)
        seq += 1
        if g.due(t):
            out = g.build(t, 1, 2)
            builds += 1
            packets += out
        t += 0.001
    assert 380 <= builds <= 401  # one per 50 ms (plus one packet's time each)
    counts = [fb.fb_count for fb in _parse(packets)]
    assert counts == [i & 0xFF for i in range(len(counts))]
    assert len(counts) > 256


def test_record_many_numpy_and_lists():
    g = TwccFeedbackGenerator()
    g.record_many(np.arange(65530, 65540, dtype=np.int64) & 0xFFFF, np.linspace(1.0, 1.009, 10))
    g.record_many([4, 5], [1.010, 1.011])
    with pytest.raises(ValueError):
        g.record_many([1, 2], [1.0])
    (fb,) = _parse(g.build(2.0, 1, 2))
    assert fb.status_count == 12 and all(fb.statuses)


def test_bad_configuration():
    with pytest.raises(ValueError):
        TwccFeedbackGenerator(interval=0)
    with pytest.raises(ValueError):
        TwccFeedbackGenerator(max_pending=1)
    with pytest.raises(ValueError):
        TwccFeedbackGenerator(max_loss_run=40000)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 40), st.integers(0, 30_000), st.booleans()), max_size=400),
       st.integers(0, 65535))
def test_every_feedback_parses_and_never_contradicts_a_reported_arrival(steps, start):
    g = TwccFeedbackGenerator(max_pending=64, max_size=300, max_reorder=32)
    seq, t = start, 5.0
    recorded: dict[int, int] = {}
    reported: dict[int, int] = {}
    unwrap = twcc.SeqUnwrapper()
    for dseq, dt_us, build_now in steps:
        seq += dseq
        t += dt_us / 1e6
        g.record(seq & 0xFFFF, t)
        recorded.setdefault(seq & 0xFFFF, int(round(t * 1e6)))
        if build_now:
            for fb in _parse(g.build(t + 1.0, 9, 9)):
                for p in fb.packets():
                    ext = unwrap.unwrap(p.seq)
                    if p.received:
                        assert abs(p.arrival_us - recorded[p.seq]) <= 125
                        assert reported.setdefault(ext, p.arrival_us) == p.arrival_us
                    else:
                        assert ext not in reported  # once reported received, never reported lost

"""callsgw.sfu.bwe: the downlink estimator against a simulated link, on a simulated clock.

The link is a FIFO with a rate cap, a fixed one-way delay and a byte limit
(tail drop). The gateway side sends 30 frames/s of the offered bitrate in
1200-byte packets, logs each in the estimator, and the subscriber side
records arrivals in a real :class:`TwccFeedbackGenerator` whose feedback
goes back through the :mod:`callsgw.wire.twcc` codec (bytes, parsed) after
the same delay. The subscriber's clock is offset so that its 24-bit
transport-cc reference time wraps during each run.
"""

from __future__ import annotations

import heapq
import random
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.sfu.bwe import DownlinkEstimator
from callsgw.sfu.twcc_feedback import TwccFeedbackGenerator
from callsgw.wire import twcc

REMOTE_OFFSET = (1 << 24) * 0.064 - 3.0  # the subscriber's clock: its reference time wraps 3 s into a run
DT = 0.001


class Link:
    def __init__(self, rate_bps: float, delay: float = 0.03, queue_bytes: int = 30_000):
        self.rate = rate_bps
        self.delay = delay
        self.queue_bytes = queue_bytes
        self.busy_until = 0.0
        self.dropped = 0

    def transmit(self, t: float, size: int) -> float | None:
        backlog = max(0.0, self.busy_until - t) * self.rate / 8
        if backlog + size > self.queue_bytes:
            self.dropped += 1
            return None
        self.busy_until = max(t, self.busy_until) + size * 8 / self.rate
        return self.busy_until + self.delay


class Sim:
    def __init__(self, est: DownlinkEstimator, link: Link, offered_bps: float):
        self.est = est
        self.link = link
        self.offered = offered_bps
        self.gen = TwccFeedbackGenerator()
        self.t = 0.0
        self.seq = 0
        self.next_frame = 0.0
        self.arrivals: list[tuple[float, int]] = []
        self.feedback: list[tuple[float, bytes]] = []
        self.trace: list[tuple[float, int]] = []
        self.probe_target: int | None = None  # probe (with padding) towards this total, on a 50 ms tick
        self.padding_bps = 0
        self.padding_budget = 0.0
        self.padding_sent = 0

    def run_until(self, end: float) -> None:
        est, link = self.est, self.link
        while self.t < end:
            t = self.t
            if t >= self.next_frame:
                frame = int(self.offered / 30 / 8)
                for size in [1200] * (frame // 1200) + ([frame % 1200] if frame % 1200 else []):
                    self._send(t, size)
                self.next_frame += 1 / 30
            if self.probe_target is not None and round(t * 1000) % 50 == 0:
                self.padding_bps = est.probe(t, self.probe_target, self.offered)
            if self.padding_bps:
                self.padding_budget += self.padding_bps / 8 * DT
                while self.padding_budget >= 1200:
                    self.padding_budget -= 1200
                    self._send(t, 1200)
                    self.padding_sent += 1200
            else:
                self.padding_budget = 0.0
            while self.arrivals and self.arrivals[0][0] <= t:
                arrival, seq = heapq.heappop(self.arrivals)
                self.gen.record(seq & 0xFFFF, arrival + REMOTE_OFFSET)
            if self.gen.due(t + REMOTE_OFFSET):
                for packet in self.gen.build(t + REMOTE_OFFSET, 1, 2):
                    self.feedback.append((t + link.delay, packet))
            while self.feedback and self.feedback[0][0] <= t:
                _, packet = self.feedback.pop(0)
                for fb in twcc.parse_compound(packet):
                    est.on_feedback(fb, t)
            if round(t * 1000) % 100 == 0:
                self.trace.append((t, est.estimate(t)))
            self.t = round(t + DT, 6)

    def _send(self, t: float, size: int) -> None:
        self.est.on_packet_sent(self.seq & 0xFFFF, t, size)
        arrival = self.link.transmit(t, size)
        if arrival is not None:
            heapq.heappush(self.arrivals, (arrival, self.seq))
        self.seq += 1

    def estimates(self, start: float, end: float) -> list[int]:
        return [e for t, e in self.trace if start <= t <= end]


def test_converges_under_a_400k_cap_within_2_s():
    est = DownlinkEstimator(start_bps=300_000)
    link = Link(rate_bps=50e6)
    sim = Sim(est, link, offered_bps=1_000_000)
    sim.run_until(5.0)
    before = est.estimate(sim.t)
    assert before >= 900_000, sim.trace  # uncongested: at least what is delivered
    assert not est.congested
    link.rate = 400_000  # congestion starts at t = 5
    sim.run_until(7.0)
    assert est.last_decrease is not None and est.last_decrease >= 5.0
    sim.run_until(12.0)
    after = sim.estimates(7.0, 12.0)
    assert after and all(300_000 <= e <= 450_000 for e in after), after
    snap = est.snapshot(sim.t)
    assert snap["source"] == "transport-cc" and snap["loss_fraction"] > 0.1 and link.dropped > 0


def test_climbs_to_1_5_mbit_within_10_s_without_a_cap():
    est = DownlinkEstimator(start_bps=300_000)
    sim = Sim(est, Link(rate_bps=50e6), offered_bps=2_000_000)
    sim.run_until(10.0)
    assert est.estimate(sim.t) >= 1_500_000, sim.trace[::10]
    reached = next(t for t, e in sim.trace if e >= 1_500_000)
    assert reached < 10.0
    assert est.counters["delay_decreases"] == 0 and est.counters["unknown_seq"] == 0


def test_recovers_above_1_mbit_within_10_s_after_the_cap_is_lifted():
    est = DownlinkEstimator(start_bps=300_000)
    link = Link(rate_bps=400_000)
    sim = Sim(est, link, offered_bps=1_200_000)
    sim.run_until(8.0)
    assert 250_000 <= est.estimate(sim.t) <= 450_000
    link.rate = 50e6  # lifted at t = 8
    sim.run_until(18.0)
    assert est.estimate(sim.t) > 1_000_000, sim.trace[80::5]
    assert est.snapshot(sim.t)["state"] in ("increase", "hold")


def test_a_growing_queue_is_detected_before_loss():
    # a deep queue (2 s at the cap): the delay trend, not loss, must bring the estimate down
    est = DownlinkEstimator(start_bps=300_000)
    link = Link(rate_bps=50e6, queue_bytes=100_000)
    sim = Sim(est, link, offered_bps=1_000_000)
    sim.run_until(4.0)
    link.rate = 500_000  # the queue grows by 62.5 kB/s: full (tail drops) 1.6 s later
    sim.run_until(5.4)
    assert link.dropped == 0
    assert est.counters["delay_decreases"] >= 1 and est.counters["loss_decreases"] == 0
    assert est.estimate(sim.t) <= 600_000


# -- fallbacks --------------------------------------------------------------------------------------


def test_receiver_reports_alone():
    est = DownlinkEstimator(start_bps=300_000)
    assert est.source(0.0) == "none" and est.estimate(0.0) == 300_000
    t = 0.0
    for _ in range(10):
        t += 1.0
        est.on_receiver_report(0, t)
    grown = est.estimate(t)
    assert est.source(t) == "rr" and 500_000 <= grown <= 700_000  # 8 %/s for 10 s
    for _ in range(3):
        t += 1.0
        est.on_receiver_report(77, t)  # 30 % lost
    assert est.estimate(t) < grown * 0.65 and est.congested  # (1 - 0.15) ** 3
    for _ in range(3):
        t += 1.0
        est.on_receiver_report(13, t)  # 5 %: hold
    held = est.estimate(t)
    assert held == est.estimate(t) and not est.congested


def test_remb_alone_and_as_a_cap():
    est = DownlinkEstimator(start_bps=300_000)
    est.on_remb(800_000, 1.0)
    assert est.source(1.0) == "remb" and est.estimate(1.0) == 800_000
    assert est.source(7.0) == "none"  # stale after 5 s
    sim = Sim(DownlinkEstimator(), Link(rate_bps=50e6), offered_bps=2_000_000)
    sim.run_until(5.0)
    sim.est.on_remb(700_000, sim.t)
    assert sim.est.estimate(sim.t) == 700_000 and sim.est.source(sim.t) == "transport-cc"


def test_clamped_to_min_and_max():
    est = DownlinkEstimator(start_bps=100_000, min_bps=80_000, max_bps=200_000)
    est.on_remb(1, 0.0)
    assert est.estimate(0.0) == 80_000
    est.on_remb(10**9, 0.0)
    assert est.estimate(0.0) == 200_000
    with pytest.raises(ValueError):
        DownlinkEstimator(start_bps=10, min_bps=100)


# -- odd feedback -----------------------------------------------------------------------------------


def _feedback(base: int, arrivals: list[int | None], fb_count: int = 0) -> twcc.TwccFeedback:
    packets = [(base + i, a) for i, a in enumerate(arrivals)]
    (packet,) = twcc.build(packets, sender_ssrc=1, media_ssrc=2, fb_count=fb_count)
    return twcc.parse_compound(packet)[0]


def test_unknown_duplicate_and_out_of_order_feedback():
    est = DownlinkEstimator()
    est.on_feedback(_feedback(100, [1000, 2000]), 0.0)  # nothing sent yet
    assert est.counters["unknown_seq"] == 2
    for seq in range(20):
        est.on_packet_sent(seq, seq * 0.01, 1000)
    late = _feedback(0, [10_000 + 10_000 * i for i in range(10)])
    early = _feedback(10, [110_000 + 10_000 * i for i in range(10)], fb_count=1)
    est.on_feedback(early, 0.3)
    est.on_feedback(late, 0.31)  # reordered feedback
    est.on_feedback(early, 0.32)  # duplicate
    assert est.counters["acked"] == 20 and est.counters["duplicate"] == 10
    est.on_feedback(_feedback(60_000, [5, 6]), 0.4)  # far from anything sent: unknown
    assert 30_000 <= est.estimate(0.4) <= 10_000_000
    huge = twcc.parse_fci(struct.pack("!HHI", 0, 0xFFFF, 0) + struct.pack("!H", 8191) * 8 + struct.pack("!H", 0x2007)
                          + b"\x01" * 7 + b"\x00" * 3)
    est.on_feedback(huge, 0.5)
    assert est.counters["oversized"] == 1 and est.counters["unknown_seq"] == 4


def test_batch_send_log():
    import numpy as np

    a, b = DownlinkEstimator(), DownlinkEstimator()
    seqs, times, sizes = np.arange(65530, 65546) & 0xFFFF, np.linspace(0, 0.15, 16), np.full(16, 1100)
    seqs, times, sizes = np.append(seqs, 65533), np.append(times, 0.16), np.append(sizes, 1100)  # a repair
    a.on_packets_sent(seqs, times, sizes)
    for s, t, z in zip(seqs.tolist(), times.tolist(), sizes.tolist()):
        b.on_packet_sent(s, t, z)
    fb = _feedback(65530, [10_000 * i for i in range(16)])
    a.on_feedback(fb, 0.3)
    b.on_feedback(fb, 0.3)
    assert a.snapshot(0.3) == b.snapshot(0.3) and a.counters["acked"] == 16 and a.counters["resent"] == 1
    with pytest.raises(ValueError):
        a.on_packets_sent([1, 2], [0.0], [1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=8, max_size=60), max_size=20), st.integers(0, 65535))
def test_garbage_feedback_never_breaks_the_estimate(fcis, first_seq):
    est = DownlinkEstimator(min_bps=30_000, max_bps=5_000_000)
    for i in range(300):
        est.on_packet_sent((first_seq + i) & 0xFFFF, i * 0.003, 1200)
    t = 1.0
    for fci in fcis:
        try:
            fb = twcc.parse_fci(fci)
        except twcc.TwccError:
            continue
        fb = twcc.TwccFeedback(fb.sender_ssrc, fb.media_ssrc, (fb.base_seq + first_seq) & 0xFFFF, fb.reference_time,
                               fb.fb_count, fb.statuses, fb.deltas)
        est.on_feedback(fb, t)
        t += 0.05
        value = est.estimate(t)
        assert 30_000 <= value <= 5_000_000
        snap = est.snapshot(t)
        assert all(math.isfinite(v) for v in (snap["delay_trend_ms"], snap["threshold_ms"]))


def test_trendline_detector_over_use_and_normal():
    from callsgw.sfu.bwe import NORMAL, OVERUSE, _Trendline

    steady = _Trendline()
    for i in range(200):  # a group every 20 ms, constant one-way delay with +-1 ms jitter
        steady.packet(i * 0.02, i * 0.02 + 0.05 + (0.001 if i % 2 else -0.001))
    assert steady.signal == NORMAL
    growing = _Trendline()
    signals = []
    for i in range(100):  # the queue grows by 2 ms per group (a link at about 90 % of the offered rate)
        growing.packet(i * 0.02, i * 0.02 + 0.05 + 0.002 * i)
        signals.append(growing.signal)
    assert OVERUSE in signals and signals.index(OVERUSE) < 40


# -- probing ----------------------------------------------------------------------------------------


def test_without_probing_a_low_layer_caps_the_estimate():
    # a subscriber on a 200 kbit/s layer: the estimate stays within 1.5 x what is delivered (+10 kbit/s)
    est = DownlinkEstimator(start_bps=300_000)
    sim = Sim(est, Link(rate_bps=50e6), offered_bps=200_000)
    sim.run_until(10.0)
    assert est.estimate(sim.t) <= 1.5 * 200_000 + 10_000 + 5_000


def test_probing_holds_under_a_cap_and_finds_the_link_once_it_is_lifted():
    est = DownlinkEstimator(start_bps=300_000)
    link = Link(rate_bps=400_000)
    sim = Sim(est, link, offered_bps=200_000)
    sim.probe_target = 3_100_000  # what the next layer would need (h and its margin)
    sim.run_until(10.0)
    # probes above the cap fail; a gentle one below it may succeed, and the estimate stays near the cap
    assert est.counters["probes_failed"] >= 2
    assert all(250_000 <= e <= 450_000 for e in sim.estimates(1.0, 10.0)), sim.trace
    assert link.dropped <= 0.02 * sim.seq  # probes stop at the first sign of congestion
    link.rate = 50e6  # lifted at t = 10: found within 7 s (the layer selector then needs its hold and a key frame)
    sim.run_until(17.0)
    assert est.estimate(sim.t) >= 3_000_000, sim.trace[100:]
    assert est.counters["probes_succeeded"] >= 3


def test_probe_preconditions():
    est = DownlinkEstimator(start_bps=300_000)
    assert est.probe(0.0, 3_000_000, 100_000) == 0  # no transport-cc yet
    sim = Sim(est, Link(rate_bps=50e6), offered_bps=200_000)
    sim.run_until(3.0)
    now = sim.t
    assert est.probe(now, 100_000, 200_000) == 0  # the target already fits
    assert est.probe(now, 5_000_000, 10_000_000) == 0  # nothing to add to what is sent
    padding = est.probe(now, 5_000_000, 200_000)
    assert 0 < padding <= 3 * est.estimate(now) and est.probing
    assert est.probe(now + 0.05, 5_000_000, 200_000) == padding  # the same probe goes on
    assert est.probe(now + 0.6, 5_000_000, 200_000) == 0  # settling: nothing was sent, nothing measured
    assert est.probe(now + 0.9, 5_000_000, 200_000) == 0 and est.counters["probes_failed"] == 1
    assert est.probe(now + 1.0, 5_000_000, 200_000) == 0  # backing off


class JitterLink(Link):
    """Each packet gets a further random 0..jitter s: packets overtake each other."""

    def __init__(self, *args, jitter: float, seed: int = 1, **kw):
        super().__init__(*args, **kw)
        self.rng = random.Random(seed)
        self.jitter = jitter

    def transmit(self, t: float, size: int) -> float | None:
        arrival = super().transmit(t, size)
        return None if arrival is None else arrival + self.rng.uniform(0, self.jitter)


def test_jitter_and_reordering_are_not_congestion():
    est = DownlinkEstimator(start_bps=300_000)
    sim = Sim(est, JitterLink(50e6, jitter=0.05), offered_bps=1_000_000)
    sim.run_until(15.0)
    assert min(sim.estimates(3.0, 15.0)) >= 1_000_000, sim.trace
    assert est.counters["loss_decreases"] == 0 and est.counters["delay_decreases"] == 0
    assert sim.gen.counters["reordered"] > 0  # the generator re-reported late packets as received
    assert est.counters["lost"] <= 0.005 * est.counters["sent"]  # at most the last feedback's stragglers


class StallLink(Link):
    """The subscriber's machine falls behind for ``ramp`` s every ``period`` s (a busy CPU): the lag of
    its reading grows to ``lag`` s, then it catches up at once. No queue on the link itself."""

    def __init__(self, *args, period: float, ramp: float, lag: float, **kw):
        super().__init__(*args, **kw)
        self.period, self.ramp, self.lag = period, ramp, lag

    def transmit(self, t: float, size: int) -> float | None:
        arrival = super().transmit(t, size)
        if arrival is None:
            return None
        phase = arrival % self.period
        return arrival + (self.lag * phase / self.ramp if phase < self.ramp else 0.0)


def test_cpu_stalls_trip_the_trendline_but_do_not_lower_the_estimate():
    # the trendline reads a stall's batch as a growing then vanishing delay (over-use, then under-use);
    # without a standing queue the over-use is held, not acted on (two shared vCPUs do this to Chromium)
    est = DownlinkEstimator(start_bps=300_000)
    sim = Sim(est, StallLink(50e6, period=1.3, ramp=0.3, lag=0.06), offered_bps=2_000_000)
    sim.run_until(15.0)
    assert est.counters["overuse_unconfirmed"] >= 1  # the detector did fire
    assert est.counters["delay_decreases"] == 0 and est.counters["loss_decreases"] == 0
    assert min(sim.estimates(4.0, 15.0)) >= 2_000_000, sim.trace[::10]
    assert not est.congested and est.snapshot(sim.t)["queue_ms"] < 25


def test_a_standing_queue_confirms_the_over_use():
    # the same stalls, then a real cap: the queue builds, the over-use is confirmed, the estimate drops
    est = DownlinkEstimator(start_bps=300_000)
    link = StallLink(50e6, period=1.3, ramp=0.3, lag=0.06, queue_bytes=100_000)
    sim = Sim(est, link, offered_bps=2_000_000)
    sim.run_until(6.0)
    link.rate = 1_000_000
    sim.run_until(7.5)
    assert est.counters["delay_decreases"] >= 1 and est.last_decrease >= 6.0
    assert est.estimate(sim.t) <= 1_200_000
    assert est.snapshot(sim.t)["queue_ms"] >= 25


def test_standing_queue_measure():
    from callsgw.sfu.bwe import _StandingQueue

    steady = _StandingQueue()
    for i in range(500):  # 20 ms spacing, 50 ms one-way with up to 40 ms of jitter on some packets
        steady.packet(i * 0.02, i * 0.02 + 0.05 + (0.04 if i % 3 == 0 else 0.0))
    assert steady.seconds == pytest.approx(0.0, abs=1e-9)
    growing = _StandingQueue()
    for i in range(500):  # a queue growing by 1 ms per packet from t = 5 s
        growing.packet(i * 0.02, i * 0.02 + 0.05 + max(0, i - 250) * 0.001)
    assert growing.seconds == pytest.approx(0.249 - 0.024, abs=0.002)  # least of the last 0.5 s of arrivals
    assert _StandingQueue().seconds == 0.0


def test_a_saturated_probe_still_measures_the_link():
    # a 1 Mbit/s link under a 200 kbit/s layer: probes above it fail, but what they got through is the link
    est = DownlinkEstimator(start_bps=300_000)
    link = Link(rate_bps=1_000_000)
    sim = Sim(est, link, offered_bps=200_000)
    sim.probe_target = 3_100_000
    sim.run_until(12.0)
    assert est.counters["probes_failed"] >= 1 and est.counters["probes_succeeded"] >= 1
    assert 800_000 <= est.estimate(sim.t) <= 1_300_000, sim.trace[::10]
    assert link.dropped <= 0.02 * sim.seq


def test_a_loss_reported_then_received_is_not_a_loss():
    est = DownlinkEstimator()
    for seq in range(10):
        est.on_packet_sent(seq, seq * 0.01, 1000)
    est.on_feedback(_feedback(0, [10_000, 20_000, None, 40_000]), 0.1)
    assert est.counters["lost"] == 1
    # 2 lost again: counted once; 3 "lost" after it was received: ignored (a duplicate)
    est.on_feedback(_feedback(2, [None, None, 45_000]), 0.15)
    assert est.counters["lost"] == 1 and est.counters["duplicate"] == 1
    est.on_feedback(_feedback(2, [30_000]), 0.2)  # 2 arrived after all
    assert est.counters["lost"] == 0 and est.counters["acked"] == 5


operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 40), st.integers(1, 1500)),
        st.tuples(st.just("feedback"), st.integers(-60, 5), st.lists(
            st.one_of(st.none(), st.integers(-10_000_000, 10_000_000)), min_size=1, max_size=60)),
        st.tuples(st.just("rr"), st.integers(-5, 300), st.just(0)),
        st.tuples(st.just("remb"), st.integers(-1, 10**10), st.just(0)),
        st.tuples(st.just("probe"), st.integers(0, 10**8), st.integers(-10, 10**8)),
        st.tuples(st.just("time"), st.integers(0, 3_000_000), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(0, 65535))
def test_any_sequence_of_inputs_keeps_the_estimate_sane(ops, first_seq):
    est = DownlinkEstimator(min_bps=30_000, max_bps=8_000_000)
    now, seq, fb_count = 1.0, first_seq, 0
    for op, a, b in ops:
        if op == "send":
            for _ in range(a):
                est.on_packet_sent(seq & 0xFFFF, now, b)
                seq += 1
                now += 0.001
        elif op == "feedback":
            base = (seq + a) & 0xFFFF
            packets = [(base + i, None if v is None else max(0, 20_000_000 + v)) for i, v in enumerate(b)]
            for packet in twcc.build(packets, sender_ssrc=1, media_ssrc=2, fb_count=fb_count):
                for fb in twcc.parse_compound(packet):
                    est.on_feedback(fb, now)
            fb_count += 1
        elif op == "rr":
            est.on_receiver_report(a, now)
        elif op == "remb":
            est.on_remb(a, now)
        elif op == "probe":
            assert est.probe(now, a, b) >= 0
        else:
            now += a / 1e6
        value = est.estimate(now)
        assert 30_000 <= value <= 8_000_000
    snap = est.snapshot(now)
    assert all(math.isfinite(v) for v in (snap["delay_trend_ms"], snap["threshold_ms"], snap["loss_fraction"]))


def test_a_retransmission_under_its_first_number():
    est = DownlinkEstimator()
    for seq in range(30):
        est.on_packet_sent(seq, seq * 0.01, 1000)
    # 3 lost, then repaired (NACK) under the same number: still a loss, acknowledged, no delay sample
    est.on_feedback(_feedback(0, [10_000 * i for i in range(3)] + [None] + [10_000 * i for i in range(4, 10)]), 0.12)
    est.on_packet_sent(3, 0.2, 1000)
    est.on_feedback(_feedback(3, [250_000]), 0.3)
    assert est.counters["resent"] == 1 and est.counters["lost"] == 1 and est.counters["acked"] == 10
    # 12 sent at 0.12 and again at 0.4: the feedback's 450 ms is the retransmission's; not a 330 ms delay jump
    est.on_packet_sent(12, 0.4, 1000)
    arrivals = [10_000 * i for i in range(10, 30)]
    arrivals[2] = 450_000
    est.on_feedback(_feedback(10, arrivals), 0.5)
    assert max(abs(y) for _, y in est._trend.samples) < 20.0  # a 330 ms sample would leave 33 ms smoothed
    assert est.counters["acked"] == 30

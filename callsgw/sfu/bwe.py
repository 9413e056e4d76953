"""Per-subscriber downlink bandwidth estimation, sans-I/O (a compact GCC, draft-ietf-rmcat-gcc-02).

One :class:`DownlinkEstimator` per subscriber. Times are seconds on the
shell's monotonic clock, passed in; nothing here reads a clock. Inputs:

* ``on_packet_sent(seq, send_time, size)``: every packet the gateway sent to
  this subscriber with a transport-wide sequence number it stamped
  (draft-holmer-rmcat-transport-wide-cc-extensions-01 section 2); kept in a
  bounded send log (:data:`SEND_LOG_SIZE`).
  ``on_packets_sent(seqs, send_times, sizes)`` is the batch form (numpy
  arrays or lists), for the engine's upcalls. A number logged again is a
  retransmission that kept its first number (the datapath does that for
  NACK repairs): it counts as delivered when acknowledged, but gives no
  delay sample (which send arrived is unknown), and a loss reported for it
  before stays a loss.
* ``on_feedback(feedback, now)``: a parsed transport-cc feedback
  (:class:`callsgw.wire.twcc.TwccFeedback`) from the subscriber. Unknown
  sequence numbers, packets already acknowledged (duplicate or reordered
  feedback) and absurd arrival times are ignored and counted; a packet
  reported lost and later received counts as received, not lost; a feedback
  announcing more statuses than the send log holds is refused unread
  (``oversized``), so a 40-byte packet cannot cost 65535 lookups.
* Fallbacks, for subscribers without transport-cc: ``on_receiver_report(
  fraction_lost, now)`` (RFC 3550 section 6.4.1 fraction lost, in 1/256, of a
  stream we send; once per report block, the video's being the one that
  matters) and ``on_remb(bitrate, now)`` (draft-alvestrand-rmcat-remb-03).

Output: :meth:`estimate` (bit/s, clamped to ``[min_bps, max_bps]``),
:attr:`congested` and :attr:`last_decrease` for the layer selector, and
:meth:`snapshot` (state, source, loss fraction, delay trend, counters) for
``/api/v1`` and ``callsgw inspect``.

The estimator, section by section:

* Pre-filtering (gcc-02 section 5.2): packets sent within 5 ms form a group;
  the inter-group delay variation is ``d = (t_i - t_{i-1}) - (T_i - T_{i-1})``
  from the last packet of each group (arrival t in the subscriber's clock,
  unwrapped over the 24-bit reference time; send T in ours).
* Arrival-time filter (section 5.3): instead of the draft's Kalman filter,
  libwebrtc's trendline filter, which replaced it: the accumulated delay is
  smoothed (0.9) and the slope of a least-squares line over the last 20
  groups, times ``min(groups, 60) * 4``, is the delay trend ``m`` (ms).
* Over-use detector (section 5.4): over-use when ``m > gamma`` for more than
  10 ms and growing, under-use when ``m < -gamma``; the adaptive threshold
  ``gamma`` follows ``|m|`` with ``k_u = 0.0087`` above and ``k_d = 0.039``
  below (libwebrtc's values for the trendline), clamped to [6, 600] ms, not
  updated on spikes (``|m| - gamma > 15``).
* Standing queue (ours, not gcc-02's): the least one-way delay (arrival minus
  send time; the clocks' offset cancels) of the packets that arrived in the
  last :data:`QUEUE_WINDOW`, above the least of the last :data:`BASE_WINDOW`.
  A queue that the link cannot drain raises even the fastest packet's delay;
  a CPU that delays some packets (two shared vCPUs running encoders, the
  gateway and the browser) does not delay all of them. An over-use of the
  trendline **decreases the estimate only when the standing queue confirms
  it** (at least :data:`QUEUE_CONFIRM`); otherwise it holds the estimate and
  is counted (``overuse_unconfirmed``). libwebrtc's sender reacts to every
  over-use because its only cost is a lower encoder target; for an SFU a
  decrease moves a subscriber to a lower simulcast layer (a keyframe, a
  visibly worse picture), so the gateway asks for evidence that the link,
  not the machine, is full.
* Rate control (section 5.5): the Hold / Increase / Decrease state machine of
  the draft's table. Increase: multiplicative, ``1.08`` per second, far from
  convergence; additive (about half a packet per response time) near it,
  i.e. within three standard deviations of the average acknowledged rate at
  past decreases (the "link capacity"). Decrease: to ``0.85 x`` the
  acknowledged bitrate, at most once per 200 ms. The estimate never grows
  past ``1.5 x`` the acknowledged bitrate + 10 kbit/s (libwebrtc's cap).
* Acknowledged bitrate: bytes the subscriber reports received over the last
  0.5 s of its arrival clock. While the detector says normal, the estimate
  is at least the acknowledged bitrate: the gateway forwards what publishers
  send whatever the estimate, so delivered throughput without a growing
  delay is a measured lower bound on the link, as a probe result is in
  libwebrtc. To move a subscriber up, the gateway must offer more (a probe:
  a tentative higher layer or padding), which this estimator then sees.
* Loss-based control (section 6): every 300 ms or more, from the loss
  fraction ``p`` of the packets reported since the previous step (from
  transport-cc, else from RR fraction lost): ``p > 10%`` -> ``As *= 1 -
  0.5 p``, but not below ``0.85 x`` the acknowledged bitrate (the loss is of
  what exceeded what got through); ``2% <= p <= 10%`` -> hold; ``p < 2%`` ->
  ``As *= 1.08`` per second (and, with transport-cc, at least the
  delay-based estimate: the loss-based part then no longer constrains).
* Probing (:meth:`probe`): the padding rate the gateway should add so that
  a subscriber held on a low layer by the ``1.5 x`` cap can show it carries
  more (libwebrtc probes with padding for the same reason).
* Final estimate: ``min(delay-based, loss-based)``, and no more than a recent
  REMB (the subscriber's own receive-side estimate, draft-alvestrand-rmcat-remb-03). Source:
  ``transport-cc`` while feedback arrives (within 2 s), else ``remb`` (within
  5 s), else ``rr``, else ``none`` (the start bitrate).
"""

from __future__ import annotations

import math
from collections import deque

from callsgw.wire import twcc

__all__ = ["DownlinkEstimator", "SEND_LOG_SIZE"]

SEND_LOG_SIZE = 8192  # packets remembered for feedback matching (several seconds at 2 Mbit/s)
BURST_TIME = 0.005  # gcc-02 section 5.2
TREND_WINDOW = 20
TREND_SMOOTHING = 0.9
TREND_GAIN = 4.0
OVERUSE_TIME = 0.010
K_UP, K_DOWN = 0.0087, 0.039
THRESHOLD_MIN, THRESHOLD_MAX, THRESHOLD_START = 6.0, 600.0, 12.5
BETA = 0.85  # gcc-02 section 5.5
DECREASE_INTERVAL = 0.2
ACKED_WINDOW = 0.5
LOSS_INTERVAL = 0.3
LOSS_MIN_PACKETS = 20
FEEDBACK_STALE = 2.0
REMB_STALE = 5.0
RR_STALE = 5.0
ARRIVAL_JUMP = 3.0  # seconds: a larger inter-group delay variation resets the filter (libwebrtc: 3 s)
PROBE_DURATION = 0.25  # s of padding per probe
PROBE_SETTLE = 0.3  # s after a probe for its feedback to arrive before it is judged
PROBE_QUIET = 1.0  # s without a decrease before a probe starts
PROBE_GAP = 0.2  # s between a successful probe and the next step
PROBE_BACKOFF_START, PROBE_BACKOFF_MAX = 1.0, 2.0  # s after a failed probe, doubling
# a probe asks for at most this times the estimate, by the number of probes that succeeded in a row:
# gentle into a link of unknown size or one a probe just overfilled (a 10 kB queue on a 400 kbit/s link
# holds a quarter of a second of a probe at 1.3 x the link), doubling once successes show headroom
PROBE_GROWTH_LADDER = (1.25, 1.5, 2.0)
PROBE_GROWTH = PROBE_GROWTH_LADDER[-1]
PROBE_KEPT_UP = 0.9  # a probe succeeds when it was delivered at this fraction of its send rate or more
PROBE_SATURATED = 0.95  # a probe that did not: the estimate is at least this times what it delivered
QUEUE_WINDOW = 0.5  # s of arrivals whose least one-way delay is the current one
BASE_WINDOW = 10.0  # s of arrivals whose least one-way delay is the link's own (no queue)
QUEUE_CONFIRM = 0.025  # s of standing queue that confirm an over-use of the trendline
PROBE_ABORT_QUEUE = 0.03  # s of queue under every probe packet of one feedback that stop the probe at once

INCREASE, HOLD, DECREASE = "increase", "hold", "decrease"
_UNACKED, _LOST, _RECEIVED = 0, 1, 2  # a send log entry's feedback state
NORMAL, OVERUSE, UNDERUSE = "normal", "overuse", "underuse"


class _Trendline:
    """gcc-02 sections 5.2-5.4 with libwebrtc's trendline filter: groups -> delay trend -> signal."""

    __slots__ = (
        "group",
        "prev_group",
        "accumulated",
        "smoothed",
        "samples",
        "first_arrival",
        "num_deltas",
        "trend",
        "prev_trend",
        "modified",
        "threshold",
        "last_threshold_update",
        "overuse_time",
        "overuse_count",
        "signal",
        "resets",
    )

    def __init__(self) -> None:
        self.resets = 0
        self.group: list[float] | None = None  # [first_send, last_send, last_arrival]
        self.prev_group: list[float] | None = None
        self.accumulated = 0.0
        self.smoothed = 0.0
        self.samples: deque[tuple[float, float]] = deque(maxlen=TREND_WINDOW)
        self.first_arrival: float | None = None
        self.num_deltas = 0
        self.trend = 0.0
        self.prev_trend = 0.0
        self.modified = 0.0
        self.threshold = THRESHOLD_START
        self.last_threshold_update: float | None = None
        self.overuse_time = -1.0
        self.overuse_count = 0
        self.signal = NORMAL

    def reset_groups(self) -> None:
        self.group = self.prev_group = None

    def packet(self, send: float, arrival: float) -> bool:
        """Feed one received packet (in send order); True when a group completed and the signal was updated."""
        g = self.group
        if g is None:
            self.group = [send, send, arrival]
            return False
        if send - g[0] <= BURST_TIME and send >= g[0]:
            g[1] = max(g[1], send)
            g[2] = max(g[2], arrival)
            return False
        updated = False
        prev = self.prev_group
        if prev is not None:
            send_delta = g[1] - prev[1]
            arrival_delta = g[2] - prev[2]
            variation = arrival_delta - send_delta
            if abs(variation) > ARRIVAL_JUMP or send_delta < 0:
                self.resets += 1
                self.reset_groups()
                self.group = [send, send, arrival]
                return False
            self._update(variation * 1000.0, send_delta * 1000.0, g[2])
            updated = True
        self.prev_group = g
        self.group = [send, send, arrival]
        return updated

    def _update(self, variation_ms: float, send_delta_ms: float, arrival: float) -> None:
        self.num_deltas = min(self.num_deltas + 1, 1000)
        if self.first_arrival is None:
            self.first_arrival = arrival
        self.accumulated += variation_ms
        self.smoothed = TREND_SMOOTHING * self.smoothed + (1 - TREND_SMOOTHING) * self.accumulated
        self.samples.append(((arrival - self.first_arrival) * 1000.0, self.smoothed))
        if len(self.samples) == TREND_WINDOW:
            self.prev_trend, self.trend = self.trend, _slope(self.samples)
        self._detect(send_delta_ms, arrival)

    def _detect(self, send_delta_ms: float, now: float) -> None:
        if self.num_deltas < 2:
            return
        m = min(self.num_deltas, 60) * self.trend * TREND_GAIN
        self.modified = m
        if m > self.threshold:
            if self.overuse_time < 0:
                self.overuse_time = send_delta_ms / 2
            else:
                self.overuse_time += send_delta_ms
            self.overuse_count += 1
            if self.overuse_time > OVERUSE_TIME * 1000 and self.overuse_count > 1 and self.trend >= self.prev_trend:
                self.overuse_time = 0.0
                self.overuse_count = 0
                self.signal = OVERUSE
        elif m < -self.threshold:
            self.overuse_time = -1.0
            self.overuse_count = 0
            self.signal = UNDERUSE
        else:
            self.overuse_time = -1.0
            self.overuse_count = 0
            self.signal = NORMAL
        # the adaptive threshold (gcc-02 section 5.4)
        if self.last_threshold_update is None:
            self.last_threshold_update = now
        if abs(m) - self.threshold <= 15.0:
            k = K_DOWN if abs(m) < self.threshold else K_UP
            dt_ms = min(max((now - self.last_threshold_update) * 1000.0, 0.0), 100.0)
            self.threshold += k * (abs(m) - self.threshold) * dt_ms
            self.threshold = min(max(self.threshold, THRESHOLD_MIN), THRESHOLD_MAX)
        self.last_threshold_update = now


def _slope(samples) -> float:
    n = len(samples)
    mx = sum(x for x, _ in samples) / n
    my = sum(y for _, y in samples) / n
    num = sum((x - mx) * (y - my) for x, y in samples)
    den = sum((x - mx) ** 2 for x, _ in samples)
    return num / den if den > 0 else 0.0


class _StandingQueue:
    """The standing queue on the path (module docstring): least recent one-way delay above the least of
    the last :data:`BASE_WINDOW`, in seconds. Fed in send order; arrivals a little out of order are
    expired by the latest one seen."""

    __slots__ = ("_recent", "_buckets", "_latest")

    def __init__(self) -> None:
        self._recent: deque[tuple[float, float]] = deque()  # (arrival, delay), delays increasing: a min-queue
        self._buckets: deque[list[float]] = deque()  # [second, least delay in it]
        self._latest: float | None = None

    def packet(self, send: float, arrival: float) -> None:
        delay = arrival - send
        recent = self._recent
        while recent and recent[-1][1] >= delay:
            recent.pop()
        recent.append((arrival, delay))
        if self._latest is None or arrival > self._latest:
            self._latest = arrival
        latest = self._latest
        while len(recent) > 1 and recent[0][0] < latest - QUEUE_WINDOW:
            recent.popleft()
        second = math.floor(arrival)
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            if delay < buckets[-1][1]:
                buckets[-1][1] = delay
        elif not buckets or second > buckets[-1][0]:
            buckets.append([second, delay])
        elif delay < buckets[-1][1]:  # an arrival from an earlier second, late in send order
            buckets[-1][1] = delay
        while len(buckets) > 1 and buckets[0][0] < latest - BASE_WINDOW:
            buckets.popleft()

    @property
    def base(self) -> float:
        """The least one-way delay of the last BASE_WINDOW (inf before any packet)."""
        return min((b[1] for b in self._buckets), default=math.inf)

    @property
    def seconds(self) -> float:
        return max(0.0, self._recent[0][1] - self.base) if self._recent else 0.0


class _LinkCapacity:
    """Average acknowledged rate at decreases and its normalized variance (kbit/s), as libwebrtc keeps it."""

    __slots__ = ("estimate", "deviation")

    def __init__(self) -> None:
        self.estimate: float | None = None
        self.deviation = 0.4

    def update(self, sample_bps: float) -> None:
        x = sample_bps / 1000.0
        if self.estimate is None:
            self.estimate = x
        else:
            self.estimate = 0.95 * self.estimate + 0.05 * x
        err = self.estimate - x
        self.deviation = 0.95 * self.deviation + 0.05 * err * err / max(self.estimate, 1.0)
        self.deviation = min(max(self.deviation, 0.4), 2.5)

    def _spread(self) -> float:
        assert self.estimate is not None
        return 3 * math.sqrt(self.deviation * self.estimate)

    def upper(self) -> float:
        return (self.estimate + self._spread()) * 1000.0 if self.estimate is not None else math.inf

    def lower(self) -> float:
        return max(0.0, self.estimate - self._spread()) * 1000.0 if self.estimate is not None else 0.0


class DownlinkEstimator:
    """A subscriber's available downlink bandwidth (see the module docstring)."""

    def __init__(
        self,
        *,
        start_bps: int = 300_000,
        min_bps: int = 30_000,
        max_bps: int = 10_000_000,
        send_log_size: int = SEND_LOG_SIZE,
    ):
        if not 0 < min_bps <= start_bps <= max_bps:
            raise ValueError("need 0 < min_bps <= start_bps <= max_bps")
        self.min_bps, self.max_bps = float(min_bps), float(max_bps)
        self.start_bps = float(start_bps)
        # send log: extended seq -> [send_time, size, acked]
        self._unwrap = twcc.SeqUnwrapper()
        self._log: dict[int, list] = {}
        self._log_order: deque[int] = deque()
        self._log_size = send_log_size
        self._last_sent_ext: int | None = None
        # remote clock
        self._ref_raw: int | None = None
        self._ref_unwrapped = 0
        # delay-based
        self._trend = _Trendline()
        self._queue = _StandingQueue()
        self._capacity = _LinkCapacity()
        self.delay_bps = float(start_bps)
        self.state = HOLD
        self._last_rate_update: float | None = None
        self._last_change: float | None = None
        self.last_decrease: float | None = None
        # acknowledged bitrate
        self._acked: deque[tuple[float, int]] = deque()
        self._acked_bytes = 0
        self._latest_arrival: float | None = None
        self.acked_bps: float | None = None
        # loss-based
        self.loss_bps = float(start_bps)
        self._loss_lost = 0
        self._loss_total = 0
        self._loss_since: float | None = None
        self._last_loss_update: float | None = None
        self._last_loss_decrease: float | None = None
        self.loss_fraction = 0.0
        # fallbacks
        self.remb_bps: float | None = None
        self._remb_at: float | None = None
        self._rr_at: float | None = None
        self._feedback_at: float | None = None
        # probing: (start, padding bps, estimate at start) while one runs
        self._probe: dict | None = None
        self._probe_backoff = 0.0
        self._probe_streak = 0  # probes succeeded in a row (PROBE_GROWTH_LADDER)
        self._next_probe = 0.0
        self.counters: dict[str, int] = {
            "sent": 0,
            "resent": 0,
            "feedback": 0,
            "acked": 0,
            "lost": 0,
            "unknown_seq": 0,
            "oversized": 0,
            "duplicate": 0,
            "arrival_reset": 0,
            "delay_decreases": 0,
            "overuse_unconfirmed": 0,
            "loss_decreases": 0,
            "remb": 0,
            "rr": 0,
            "probes": 0,
            "probes_succeeded": 0,
            "probes_failed": 0,
        }

    # -- send log ------------------------------------------------------------------------------

    def on_packet_sent(self, seq: int, send_time: float, size: int) -> None:
        """A packet the gateway sent to this subscriber, with the transport-wide number it stamped."""
        ext = self._unwrap.unwrap(int(seq))
        entry = self._log.get(ext)
        if entry is not None:  # a retransmission under its first number: its arrival is ambiguous
            entry[3] = True
            self.counters["resent"] += 1
            return
        self._log[ext] = [float(send_time), int(size), _UNACKED, False]
        if self._probe is not None:
            self._probe_sent(float(send_time), int(size))
        self._log_order.append(ext)
        if self._last_sent_ext is None or ext > self._last_sent_ext:
            self._last_sent_ext = ext
        while len(self._log_order) > self._log_size:
            self._log.pop(self._log_order.popleft(), None)
        self.counters["sent"] += 1

    def on_packets_sent(self, seqs, send_times, sizes) -> None:
        """A batch of :meth:`on_packet_sent` (lists or numpy arrays of the same length)."""
        columns = [c.tolist() if hasattr(c, "tolist") else list(c) for c in (seqs, send_times, sizes)]
        if not len(columns[0]) == len(columns[1]) == len(columns[2]):
            raise ValueError("sequence numbers, send times and sizes differ in length")
        if self._probe is not None:
            for seq, t, size in zip(*columns):
                self.on_packet_sent(seq, t, size)
            return
        # the same as on_packet_sent, inlined: this runs for every packet sent to a subscriber
        log, order, unwrap, counters = self._log, self._log_order, self._unwrap.unwrap, self.counters
        last = self._last_sent_ext
        sent = resent = 0
        for seq, t, size in zip(*columns):
            ext = unwrap(int(seq))
            entry = log.get(ext)
            if entry is not None:
                entry[3] = True
                resent += 1
                continue
            log[ext] = [float(t), int(size), _UNACKED, False]
            order.append(ext)
            if last is None or ext > last:
                last = ext
            sent += 1
        self._last_sent_ext = last
        while len(order) > self._log_size:
            log.pop(order.popleft(), None)
        counters["sent"] += sent
        counters["resent"] += resent

    def _ext(self, seq16: int) -> int | None:
        last = self._last_sent_ext
        if last is None:
            return None
        return last - ((last - seq16) & 0xFFFF)

    # -- transport-cc ----------------------------------------------------------------------------

    def on_feedback(self, feedback: twcc.TwccFeedback, now: float) -> None:
        """A transport-cc feedback from the subscriber (parsed by :mod:`callsgw.wire.twcc`)."""
        self.counters["feedback"] += 1
        if feedback.status_count > self._log_size:  # cannot all be ours: refuse the work it would cost
            self.counters["oversized"] += 1
            return
        self._feedback_at = now
        raw = feedback.reference_time
        if self._ref_raw is None:
            self._ref_raw, self._ref_unwrapped = raw, raw
            ref = raw
        else:
            delta = twcc.reference_delta(raw, self._ref_raw)
            ref = self._ref_unwrapped + delta
            if delta > 0:
                self._ref_raw, self._ref_unwrapped = raw, ref
        offset_us = (ref - raw) * twcc.REFERENCE_TICK_US
        received: list[tuple[float, float, int, bool]] = []
        lost = 0
        arrivals = iter(feedback.received())
        base = feedback.base_seq
        for i, symbol in enumerate(feedback.statuses):
            arrival_us = next(arrivals)[1] if symbol else None
            ext = self._ext((base + i) & 0xFFFF)
            entry = self._log.get(ext) if ext is not None else None
            if entry is None:
                self.counters["unknown_seq"] += 1
                continue
            state = entry[2]
            if state == _RECEIVED:
                self.counters["duplicate"] += 1
                continue
            if arrival_us is None:
                if state != _LOST:  # a loss is counted once, however often it is reported
                    entry[2] = _LOST
                    lost += 1
                    if self._probe is not None and self._probe["start"] <= entry[0] <= self._probe["end"]:
                        self._probe["saturated"] = True  # the probe overflowed a queue: stop it now
                continue
            if state == _LOST:
                if entry[3]:  # the retransmission arrived: the first send was lost all the same
                    entry[2] = _RECEIVED
                    self.counters["acked"] += 1
                    self._ack((arrival_us + offset_us) / 1e6, entry[1])
                    continue
                # reported lost before, received after all (reordering): not a loss
                self.counters["lost"] -= 1
                self._loss_lost = max(0, self._loss_lost - 1)
                self._loss_total = max(0, self._loss_total - 1)
            entry[2] = _RECEIVED
            received.append((entry[0], (arrival_us + offset_us) / 1e6, entry[1], entry[3]))
        self.counters["acked"] += len(received)
        self.counters["lost"] += lost
        self._loss_lost += lost
        self._loss_total += lost + len(received)
        if not received and not lost:
            return
        received.sort(key=lambda r: r[0])
        probe_delay = math.inf  # the least one-way delay of this feedback's packets sent during a probe
        for send, arrival, size, resent in received:
            self._ack(arrival, size)
            if resent:  # which send arrived is unknown: no delay sample
                continue
            if self._probe is not None and self._probe_received(send, arrival, size):
                probe_delay = min(probe_delay, arrival - send)
            self._trend.packet(send, arrival)
            self._queue.packet(send, arrival)
        self.counters["arrival_reset"] = self._trend.resets
        if self._probe is not None and probe_delay < math.inf and probe_delay - self._queue.base >= PROBE_ABORT_QUEUE:
            self._probe["saturated"] = True  # even the fastest of its packets queued: the link is full
        self._update_delay_based(now)
        self._update_loss_based(now, have_twcc=True)

    def _ack(self, arrival: float, size: int) -> None:
        latest = self._latest_arrival
        if latest is None or arrival > latest:
            self._latest_arrival = latest = arrival
        if arrival < latest - ACKED_WINDOW:
            return
        self._acked.append((arrival, size))
        self._acked_bytes += size
        while self._acked and (self._acked[0][0] < latest - ACKED_WINDOW or len(self._acked) > self._log_size):
            self._acked_bytes -= self._acked.popleft()[1]
        span = latest - self._acked[0][0]
        if span >= 0.2:  # shorter spans overstate the rate of bursty (frame by frame) media
            self.acked_bps = (self._acked_bytes - self._acked[0][1]) * 8 / span

    def _update_delay_based(self, now: float) -> None:
        signal = self._trend.signal
        acked = self.acked_bps
        dt = 0.0 if self._last_rate_update is None else min(max(now - self._last_rate_update, 0.0), 1.0)
        self._last_rate_update = now
        # the state machine (gcc-02 section 5.5); an over-use decreases only when a standing queue confirms it
        if signal == OVERUSE and not self.queue_confirms:
            if self.state != HOLD:
                self.counters["overuse_unconfirmed"] += 1
            self.state = HOLD
        elif signal == OVERUSE:
            self.state = DECREASE
        elif signal == UNDERUSE:
            self.state = HOLD
        elif self.state in (HOLD, DECREASE):
            self.state = INCREASE
            dt = 0.0  # increase from now on
        rate = self.delay_bps
        if self.state == DECREASE:
            if self.last_decrease is None or now - self.last_decrease >= DECREASE_INTERVAL:
                base = acked if acked is not None else rate
                if acked is not None:
                    if acked < self._capacity.lower():
                        self._capacity = _LinkCapacity()
                    self._capacity.update(acked)
                rate = min(rate, BETA * base)
                self.last_decrease = now
                self.counters["delay_decreases"] += 1
            self.state = HOLD
        elif self.state == INCREASE:
            if acked is not None and acked > self._capacity.upper():
                self._capacity = _LinkCapacity()  # the link changed: far from convergence again
            if self._capacity.estimate is not None:
                # additive: about half a packet per response time (libwebrtc's near-max increase)
                bits_per_frame = rate / 30.0
                packets = max(1.0, math.ceil(bits_per_frame / (1200 * 8)))
                per_second = max(4000.0, (bits_per_frame / packets) / 0.2)
                rate += per_second * dt
            else:
                rate += max(1000.0 * dt, rate * (1.08**dt - 1.0))
            if acked is not None:
                rate = max(rate, acked)  # delivered without over-use: a lower bound
                rate = min(rate, max(1.5 * acked + 10_000, self.delay_bps))
        self.delay_bps = min(max(rate, self.min_bps), self.max_bps)

    # -- loss-based (section 6) --------------------------------------------------------------------

    def _update_loss_based(self, now: float, *, have_twcc: bool) -> None:
        if self._loss_since is None:
            self._loss_since = now
        if now - self._loss_since < LOSS_INTERVAL or self._loss_total < LOSS_MIN_PACKETS:
            return
        p = self._loss_lost / self._loss_total
        self._apply_loss(p, now, have_twcc=have_twcc)
        self._loss_lost = self._loss_total = 0
        self._loss_since = now

    def _apply_loss(self, p: float, now: float, *, have_twcc: bool) -> None:
        self.loss_fraction = p
        dt = 0.0 if self._last_loss_update is None else min(max(now - self._last_loss_update, 0.0), 1.0)
        self._last_loss_update = now
        rate = self.loss_bps
        if p > 0.10:
            if self._last_loss_decrease is None or now - self._last_loss_decrease >= LOSS_INTERVAL:
                rate *= 1 - 0.5 * p
                if self.acked_bps is not None and have_twcc:
                    rate = max(rate, BETA * self.acked_bps)
                self._last_loss_decrease = now
                self.last_decrease = now
                self.counters["loss_decreases"] += 1
        elif p < 0.02:
            rate *= 1.08**dt
            if have_twcc:
                rate = max(rate, self.delay_bps)
        self.loss_bps = min(max(rate, self.min_bps), self.max_bps)

    # -- fallbacks ---------------------------------------------------------------------------------

    def on_receiver_report(self, fraction_lost: int, now: float) -> None:
        """RFC 3550 fraction lost (0-255) of a stream sent to this subscriber; used without transport-cc."""
        self.counters["rr"] += 1
        self._rr_at = now
        if self._twcc_active(now):
            return
        self._apply_loss(min(max(int(fraction_lost), 0), 255) / 256.0, now, have_twcc=False)

    def on_remb(self, bitrate: int, now: float) -> None:
        """The subscriber's REMB (draft-alvestrand-rmcat-remb-03): a cap on the estimate."""
        self.counters["remb"] += 1
        self.remb_bps = float(max(0, int(bitrate)))
        self._remb_at = now

    # -- output --------------------------------------------------------------------------------------

    def _twcc_active(self, now: float) -> bool:
        return self._feedback_at is not None and now - self._feedback_at <= FEEDBACK_STALE

    def _remb_active(self, now: float) -> bool:
        return self._remb_at is not None and now - self._remb_at <= REMB_STALE

    def source(self, now: float) -> str:
        if self._twcc_active(now):
            return "transport-cc"
        if self._remb_active(now):
            return "remb"
        if self._rr_at is not None and now - self._rr_at <= RR_STALE:
            return "rr"
        return "none"

    def estimate(self, now: float) -> int:
        """The subscriber's available downlink bandwidth, bit/s."""
        source = self.source(now)
        if source == "transport-cc":
            value = min(self.delay_bps, self.loss_bps)
        elif source == "rr":
            value = self.loss_bps
        elif source == "remb":
            value = self.remb_bps if self._rr_at is None else min(self.remb_bps, self.loss_bps)  # type: ignore
        else:
            value = min(self.delay_bps, self.loss_bps)
        if self._remb_active(now) and self.remb_bps is not None:
            value = min(value, self.remb_bps)
        return int(min(max(value, self.min_bps), self.max_bps))

    # -- probing --------------------------------------------------------------------------------------

    def probe(self, now: float, target_bps: int, media_bps: float) -> int:
        """Padding bit/s the gateway should add to this subscriber now, to learn whether ``target_bps`` fits.

        The estimate cannot grow past ``1.5 x`` what is delivered (module
        docstring), so a subscriber given a low layer stays there unless the
        gateway offers more, as libwebrtc's sender probes with padding. Call
        this on a tick (50 ms) with the total the next layer would need and
        what is sent now without padding (media and voice); while it returns
        more than 0, send that much padding (RTP padding-only packets or RTX,
        stamped and logged like media).

        A probe asks for at most 1.25, then 1.5, then :data:`PROBE_GROWTH`
        times the estimate for :data:`PROBE_DURATION`, as probes succeed in
        a row (:data:`PROBE_GROWTH_LADDER`; a failure starts again at 1.25:
        a first probe into a link of unknown size, or into one a probe has
        just filled, should not overflow a small queue); it starts only with transport-cc feedback,
        without congestion and after :data:`PROBE_QUIET` without a decrease.
        Its result is measured on the packets sent during it (as libwebrtc's
        ProbeBitrateEstimator): the rate they were received at, against the
        rate they were sent at. Delivered at 90 % or more without over-use,
        it succeeds and the estimate becomes at least the delivered rate
        (the next step after :data:`PROBE_GAP`); delivered slower, the link
        was saturated and its delivered rate is its capacity: the estimate
        becomes at least 0.95 x that, and the probe fails; so it does, on congestion
        or a decrease, or a feedback showing the probe filled a queue (one of
        its packets lost, or even the fastest of its packets in that
        feedback :data:`PROBE_ABORT_QUEUE` above the path's least delay), which
        stop it at once (the delay-based estimate is
        then kept at least ``0.85 x`` what the probe got through), it fails,
        the next waits 1, then at most :data:`PROBE_BACKOFF_MAX` s (so that a
        link whose cap is lifted is found again within a few seconds).
        """
        probe = self._probe
        if probe is not None:
            if (probe["saturated"] or self.congested
                    or (self.last_decrease is not None and self.last_decrease >= probe["start"])):
                # stopped: what got through until now still measures the link, for the delay-based part
                measured = self._probe_rates()
                if measured is not None:
                    self.delay_bps = max(self.delay_bps, min(BETA * measured[1], self.max_bps))
                return self._probe_done(now, None)
            if now < probe["end"]:
                return probe["padding"]
            if now < probe["end"] + PROBE_SETTLE:
                return 0
            return self._probe_done(now, self._probe_result())
        estimate = self.estimate(now)
        if (
            target_bps <= estimate
            or now < self._next_probe
            or not self._twcc_active(now)
            or self.congested
            or (self.last_decrease is not None and now - self.last_decrease < PROBE_QUIET)
        ):
            return 0
        growth = PROBE_GROWTH_LADDER[min(self._probe_streak, len(PROBE_GROWTH_LADDER) - 1)]
        total = min(float(target_bps), growth * estimate, self.max_bps)
        padding = int(total - max(0.0, float(media_bps)))
        if padding <= 0:
            return 0
        self._probe = {
            "start": now,
            "end": now + PROBE_DURATION,
            "padding": padding,
            "sent_bytes": 0,
            "sent_first": None,
            "sent_last": None,
            "sent_last_size": 0,
            "got_bytes": 0,
            "got_first": None,
            "got_last": None,
            "got_first_size": 0,
            "saturated": False,
        }
        self.counters["probes"] += 1
        return padding

    def _probe_sent(self, send_time: float, size: int) -> None:
        probe = self._probe
        if probe is None or not probe["start"] <= send_time <= probe["end"]:
            return
        if probe["sent_first"] is None:
            probe["sent_first"] = send_time
        if probe["sent_last"] is None or send_time >= probe["sent_last"]:
            probe["sent_last"], probe["sent_last_size"] = send_time, size
        probe["sent_bytes"] += size

    def _probe_received(self, send_time: float, arrival: float, size: int) -> bool:
        probe = self._probe
        if probe is None or not probe["start"] <= send_time <= probe["end"]:
            return False
        if probe["got_first"] is None or arrival < probe["got_first"]:
            probe["got_first"], probe["got_first_size"] = arrival, size
        if probe["got_last"] is None or arrival > probe["got_last"]:
            probe["got_last"] = arrival
        probe["got_bytes"] += size
        return True

    def _probe_rates(self) -> tuple[float, float] | None:
        """``(sent, delivered)`` bit/s of the packets sent during the probe, once measurable."""
        p = self._probe
        assert p is not None
        if p["sent_first"] is None or p["got_first"] is None:
            return None
        sent_span = p["sent_last"] - p["sent_first"]
        got_span = p["got_last"] - p["got_first"]
        if sent_span < 0.1 or got_span < 0.1:
            return None
        # as libwebrtc's ProbeBitrateEstimator: the last packet sent and the first received end and start
        # their spans, so neither rate counts it (otherwise a short probe reads as 1/n slower delivered)
        return ((p["sent_bytes"] - p["sent_last_size"]) * 8 / sent_span,
                (p["got_bytes"] - p["got_first_size"]) * 8 / got_span)

    def _probe_result(self) -> float | None:
        """The probe's delivered rate if it kept up with its send rate, else None. A saturated probe (the
        link carried less than was sent) still measured the link's capacity: the delay-based estimate
        becomes at least :data:`PROBE_SATURATED` x that (libwebrtc's ProbeBitrateEstimator)."""
        rates = self._probe_rates()
        if rates is None or rates[0] <= 0:
            return None
        sent, delivered = rates
        if delivered >= PROBE_KEPT_UP * sent:
            return delivered
        if delivered > 0:
            self.delay_bps = max(self.delay_bps, min(PROBE_SATURATED * delivered, self.max_bps))
        return None

    def _probe_done(self, now: float, delivered: float | None) -> int:
        self._probe = None
        if delivered is not None:
            self.counters["probes_succeeded"] += 1
            self._probe_backoff = 0.0
            self._probe_streak += 1
            self._next_probe = now + PROBE_GAP
            rate = min(delivered, self.max_bps)
            self.delay_bps = max(self.delay_bps, rate)
            self.loss_bps = max(self.loss_bps, rate)
            if rate > self._capacity.upper():
                self._capacity = _LinkCapacity()
        else:
            self.counters["probes_failed"] += 1
            self._probe_streak = 0
            self._probe_backoff = min(max(2 * self._probe_backoff, PROBE_BACKOFF_START), PROBE_BACKOFF_MAX)
            self._next_probe = now + self._probe_backoff
        return 0

    @property
    def probing(self) -> bool:
        return self._probe is not None

    @property
    def last_loss_decrease(self) -> float | None:
        """When the loss-based part last decreased (more than 10 % of a loss step lost), None: never."""
        return self._last_loss_decrease

    @property
    def queue_confirms(self) -> bool:
        return self._queue.seconds >= QUEUE_CONFIRM

    @property
    def congested(self) -> bool:
        """Over-use detected and confirmed by a standing queue, or more than 10% loss in the last loss step."""
        return (self._trend.signal == OVERUSE and self.queue_confirms) or self.loss_fraction > 0.10

    def snapshot(self, now: float) -> dict:
        """State for ``/api/v1`` and ``callsgw inspect``."""
        return {
            "estimate_bps": self.estimate(now),
            "source": self.source(now),
            "state": self.state,
            "signal": self._trend.signal,
            "congested": self.congested,
            "delay_based_bps": int(self.delay_bps),
            "loss_based_bps": int(self.loss_bps),
            "acked_bps": None if self.acked_bps is None else int(self.acked_bps),
            "remb_bps": None if self.remb_bps is None else int(self.remb_bps),
            "loss_fraction": round(self.loss_fraction, 4),
            "delay_trend_ms": round(self._trend.modified, 3),
            "queue_ms": round(self._queue.seconds * 1000.0, 1),
            "threshold_ms": round(self._trend.threshold, 3),
            "last_decrease": self.last_decrease,
            "counters": dict(self.counters),
        }

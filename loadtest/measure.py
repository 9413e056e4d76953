"""Receiver-side measurement for ``callsgw loadtest run``.

Per stream (subscriber x the SSRC the gateway forwards one publisher's track under):

* **packets** received, **duplicates** (an extended sequence number seen before, within a
  window of 4096), **reordered** (arrived after a higher sequence number, not a duplicate);
* **loss** from sequence numbers: expected = highest - lowest extended sequence number + 1,
  lost = expected - unique packets received (the gateway numbers each forwarded stream
  continuously, so a gap is a packet lost between the tester's send and its receive);
* **interarrival jitter** per RFC 3550 section 6.4.1: D = (Rj - Ri) - (Sj - Si) in RTP
  timestamp units between consecutive arrivals, J += (|D| - J) / 16, with the clock rate of the
  stream's codec (48000 Opus, 90000 VP8; the capture's rate for other codecs);
* **one-way delay**: sender and receivers share the host and one monotonic clock. The gateway
  keeps the RTP timestamp and forwards payload bytes unchanged (it rewrites SSRC, sequence
  number and header extensions), so each sender records ``(RTP timestamp, hash(payload)) ->
  (publisher, send time)`` in a shared :class:`SendLog`, and a receiver looks its packet up by
  the same key. Every participant starts its timestamps at a random 32-bit base, so keys of
  different publishers do not collide in practice. The receive time is taken when the
  receiver task reads the packet from the client's queue, so delay includes the tester's own
  scheduling latency (which the tester-bottleneck warning watches).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

__all__ = ["SendLog", "StreamStats", "Collector", "payload_key", "percentile"]

# Clock rates by the payload type the client negotiates (callsgw.client: Opus 111, VP8 96).
NEGOTIATED_CLOCK = {111: 48000, 96: 90000}
SEND_LOG_SECONDS = 10.0
DUP_WINDOW = 4096


def payload_key(packet: bytes) -> tuple[int, int]:
    """(RTP timestamp, hash of the payload after CSRCs and header extension) of an RTP packet."""
    off = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10 and len(packet) >= off + 4:
        off += 4 + 4 * int.from_bytes(packet[off + 2 : off + 4], "big")
    return int.from_bytes(packet[4:8], "big"), hash(packet[off:])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class SendLog:
    """What was sent when: (timestamp, payload hash) -> (publisher index, kind, clock, send time)."""

    def __init__(self, keep_seconds: float = SEND_LOG_SECONDS):
        self._entries: dict[tuple[int, int], tuple[int, str, int, float]] = {}
        self._order: collections.deque[tuple[float, tuple[int, int]]] = collections.deque()
        self._keep = keep_seconds
        self.sent = 0

    def record(self, key: tuple[int, int], publisher: int, kind: str, clock: int, now: float) -> None:
        self._entries[key] = (publisher, kind, clock, now)
        self._order.append((now, key))
        self.sent += 1

    def lookup(self, key: tuple[int, int]) -> tuple[int, str, int, float] | None:
        return self._entries.get(key)

    def prune(self, now: float) -> None:
        limit = now - self._keep
        order, entries = self._order, self._entries
        while order and order[0][0] < limit:
            _, key = order.popleft()
            entries.pop(key, None)


class StreamStats:
    __slots__ = (
        "subscriber", "ssrc", "publisher", "kind", "clock", "packets", "duplicates", "reordered",
        "base", "highest", "seen", "jitter", "max_jitter", "last_arrival", "last_ts",
        "delay_sum", "delay_count", "delay_max", "unmatched",
    )

    def __init__(self, subscriber: int, ssrc: int):
        self.subscriber = subscriber
        self.ssrc = ssrc
        self.publisher: int | None = None
        self.kind: str | None = None
        self.clock: int | None = None
        self.packets = 0
        self.duplicates = 0
        self.reordered = 0
        self.base = -1
        self.highest = -1
        self.seen: set[int] = set()
        self.jitter = 0.0  # in timestamp units
        self.max_jitter = 0.0
        self.last_arrival: float | None = None
        self.last_ts = 0
        self.delay_sum = 0.0
        self.delay_count = 0
        self.delay_max = 0.0
        self.unmatched = 0

    # -- updates ------------------------------------------------------------------

    def sequence(self, seq: int) -> bool:
        """Account one sequence number; False if it is a duplicate."""
        self.packets += 1
        if self.highest < 0:
            self.base = self.highest = seq
            self.seen.add(seq)
            return True
        delta = (seq - self.highest) & 0xFFFF
        ext = self.highest + delta if delta < 0x8000 else self.highest - (0x10000 - delta)
        if ext in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(ext)
        if ext > self.highest:
            self.highest = ext
        else:
            self.reordered += 1
            if ext < self.base:
                self.base = ext
        if len(self.seen) > 2 * DUP_WINDOW:
            floor = self.highest - DUP_WINDOW
            self.seen = {s for s in self.seen if s >= floor}
        return True

    def arrival(self, ts: int, now: float) -> None:
        clock = self.clock
        if clock is None:
            return
        if self.last_arrival is not None:
            sent = (ts - self.last_ts) & 0xFFFFFFFF
            if sent >= 0x80000000:
                sent -= 0x100000000
            d = (now - self.last_arrival) * clock - sent
            self.jitter += (abs(d) - self.jitter) / 16
            if self.jitter > self.max_jitter:
                self.max_jitter = self.jitter
        self.last_arrival = now
        self.last_ts = ts

    # -- results ------------------------------------------------------------------

    @property
    def expected(self) -> int:
        return 0 if self.highest < 0 else self.highest - self.base + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - (self.packets - self.duplicates))

    def jitter_ms(self) -> float | None:
        return None if not self.clock else self.jitter / self.clock * 1000

    def as_dict(self) -> dict:
        expected = self.expected
        return {
            "subscriber": self.subscriber,
            "publisher": self.publisher,
            "ssrc": self.ssrc,
            "kind": self.kind,
            "clock_rate": self.clock,
            "packets": self.packets,
            "expected": expected,
            "lost": self.lost,
            "loss_percent": round(100 * self.lost / expected, 4) if expected else 0.0,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "jitter_ms": None if not self.clock else round(self.jitter / self.clock * 1000, 4),
            "max_jitter_ms": None if not self.clock else round(self.max_jitter / self.clock * 1000, 4),
            "delay_mean_ms": round(self.delay_sum / self.delay_count * 1000, 4) if self.delay_count else None,
            "delay_max_ms": round(self.delay_max * 1000, 4) if self.delay_count else None,
            "delay_samples": self.delay_count,
            "unmatched": self.unmatched,
        }


@dataclass
class Collector:
    """Every receiver's statistics, the send log, and a once-a-second timeline."""

    send_log: SendLog = field(default_factory=SendLog)
    streams: dict[tuple[int, int], StreamStats] = field(default_factory=dict)
    received: int = 0
    delays: list[float] = field(default_factory=list)  # seconds, every matched packet (capped)
    interval_delays: list[float] = field(default_factory=list)
    send_lags: list[float] = field(default_factory=list)  # seconds late, per send burst (capped)
    max_samples: int = 500_000
    timeline: list[dict] = field(default_factory=list)
    _last: tuple[float, int, int, int, int, float] | None = None

    def on_packet(self, subscriber: int, packet: bytes, now: float) -> None:
        if len(packet) < 12:
            return
        self.received += 1
        ssrc = int.from_bytes(packet[8:12], "big")
        stats = self.streams.get((subscriber, ssrc))
        if stats is None:
            stats = self.streams[(subscriber, ssrc)] = StreamStats(subscriber, ssrc)
        if not stats.sequence(int.from_bytes(packet[2:4], "big")):
            return
        key = payload_key(packet)
        sent = self.send_log.lookup(key)
        if sent is not None:
            publisher, kind, clock, at = sent
            if stats.publisher is None:
                stats.publisher, stats.kind, stats.clock = publisher, kind, clock
            delay = now - at
            stats.delay_sum += delay
            stats.delay_count += 1
            if delay > stats.delay_max:
                stats.delay_max = delay
            if len(self.delays) < self.max_samples:
                self.delays.append(delay)
            self.interval_delays.append(delay)
        else:
            stats.unmatched += 1
            if stats.clock is None:
                stats.clock = NEGOTIATED_CLOCK.get(packet[1] & 0x7F)
        stats.arrival(key[0], now)

    def note_send_lag(self, lag: float) -> None:
        if len(self.send_lags) < self.max_samples:
            self.send_lags.append(lag)

    def totals(self) -> dict:
        expected = sum(s.expected for s in self.streams.values())
        lost = sum(s.lost for s in self.streams.values())
        jitters = [j for s in self.streams.values() if (j := s.jitter_ms()) is not None]
        max_jitters = [s.max_jitter / s.clock * 1000 for s in self.streams.values() if s.clock]
        return {
            "streams": len(self.streams),
            "packets_sent": self.send_log.sent,
            "packets_received": self.received,
            "expected": expected,
            "lost": lost,
            "loss_percent": round(100 * lost / expected, 4) if expected else 0.0,
            "duplicates": sum(s.duplicates for s in self.streams.values()),
            "reordered": sum(s.reordered for s in self.streams.values()),
            "mean_jitter_ms": round(sum(jitters) / len(jitters), 4) if jitters else None,
            "max_jitter_ms": round(max(max_jitters), 4) if max_jitters else None,
            "delay_ms": _summary_ms(self.delays),
        }

    def sample(self, t: float, connected: int, cpu: float, now: float) -> dict:
        """Append one timeline point (rates and loss since the previous sample)."""
        expected = sum(s.expected for s in self.streams.values())
        lost = sum(s.lost for s in self.streams.values())
        sent, received = self.send_log.sent, self.received
        if self._last is None:
            self._last = (0.0, 0, 0, 0, 0, 0.0)  # the run's start
        t0, sent0, recv0, exp0, lost0, cpu0 = self._last
        dt = max(t - t0, 1e-6)
        d_exp, d_lost = expected - exp0, lost - lost0
        jitters = [j for s in self.streams.values() if (j := s.jitter_ms()) is not None]
        delays = self.interval_delays
        point = {
            "t": round(t, 3),
            "connected": connected,
            "sent_pps": round((sent - sent0) / dt, 1),
            "received_pps": round((received - recv0) / dt, 1),
            "loss_percent": round(100 * max(d_lost, 0) / d_exp, 4) if d_exp > 0 else 0.0,
            "cumulative_loss_percent": round(100 * lost / expected, 4) if expected else 0.0,
            "mean_jitter_ms": round(sum(jitters) / len(jitters), 4) if jitters else None,
            "delay_mean_ms": round(sum(delays) / len(delays) * 1000, 4) if delays else None,
            "delay_p95_ms": round(percentile(delays, 95) * 1000, 4) if delays else None,
            "tester_cpu_percent": round(100 * (cpu - cpu0) / dt, 1),
        }
        self.interval_delays = []
        self._last = (t, sent, received, expected, lost, cpu)
        self.timeline.append(point)
        self.send_log.prune(now)
        return point


def _summary_ms(values: list[float]) -> dict | None:
    if not values:
        return None
    return {
        "samples": len(values),
        "min": round(min(values) * 1000, 4),
        "mean": round(sum(values) / len(values) * 1000, 4),
        "p50": round(percentile(values, 50) * 1000, 4),
        "p95": round(percentile(values, 95) * 1000, 4),
        "p99": round(percentile(values, 99) * 1000, 4),
        "max": round(max(values) * 1000, 4),
    }


def summary_ms(values: list[float]) -> dict | None:
    """min/mean/p50/p95/p99/max in milliseconds of values in seconds (None when empty)."""
    return _summary_ms(values)


class CpuClock:
    """The tester's own CPU time (user + system of this process) against wall time."""

    def __init__(self) -> None:
        self.wall0 = time.monotonic()
        self.cpu0 = time.process_time()

    def cpu(self) -> float:
        return time.process_time() - self.cpu0

    def report(self) -> dict:
        wall = max(time.monotonic() - self.wall0, 1e-6)
        cpu = self.cpu()
        return {"cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
                "cpu_percent_of_one_core": round(100 * cpu / wall, 1)}

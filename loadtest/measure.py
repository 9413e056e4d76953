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

Batched (native) media path: the run's :class:`~callsgw._native.udpio.Replayer` s log
``(timestamp << 32 | payload hash, send time)`` per packet and its
:class:`~callsgw._native.udpio.Recorder` s record per received packet SSRC, sequence number,
timestamp, payload type, payload hash and the kernel's receive time (``SO_TIMESTAMPNS``, both
clocks ``CLOCK_REALTIME``). :meth:`SendLog.record_batch` and :meth:`Collector.on_records` consume
those arrays with the same rules as :meth:`Collector.on_packet`: per stream, a batch whose
sequence numbers all advance past the highest so far is accounted with numpy at once; any other
batch (duplicates, reordering, a stream whose publisher is not known yet) goes packet by packet
through the same code as the per-packet path. With kernel receive times the delay no longer
includes the tester's polling latency; the run reports that latency separately (receive backlog).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Samples", "SendLog", "StreamStats", "Collector", "Delivery", "payload_key", "percentile", "deliveries"]

# Clock rates by the payload type the client negotiates (callsgw.client: Opus 111, VP8 96).
NEGOTIATED_CLOCK = {111: 48000, 96: 90000}
SEND_LOG_SECONDS = 10.0
DUP_WINDOW = 4096
TRACK_BITS = 16  # native send-log values: (send ns - base) << TRACK_BITS | track id
BIN_NS = 500_000_000  # true loss: sends and receipts are counted per 0.5 s of send time
BIN_S = BIN_NS / 1e9
SETTLE_S = 2.0  # a stream that never arrived is expected from this long after both ends connected
STOP_BINS = 2  # a stream whose last BIN_S x STOP_BINS of sends all went missing has stopped
STOP_PACKETS = 3  # ... when they were at least this many packets


def add_bins(arr: np.ndarray | None, bins: np.ndarray) -> np.ndarray | None:
    """Count ``bins`` (bin indexes, >= 0) into the growable int64 array ``arr``."""
    if not len(bins):
        return arr
    values, counts = np.unique(bins, return_counts=True)
    if values[0] < 0:
        keep = values >= 0
        values, counts = values[keep], counts[keep]
        if not len(values):
            return arr
    top = int(values[-1]) + 1
    if arr is None:
        arr = np.zeros(max(top, 64), np.int64)
    elif len(arr) < top:
        grown = np.zeros(max(top, 2 * len(arr)), np.int64)
        grown[: len(arr)] = arr
        arr = grown
    arr[values] += counts
    return arr


def add_bin(arr: np.ndarray | None, b: int) -> np.ndarray | None:
    """Count one bin index into ``arr`` (see :func:`add_bins`)."""
    if b < 0:
        return arr
    if arr is None or len(arr) <= b:
        grown = np.zeros(max(b + 1, 64, 0 if arr is None else 2 * len(arr)), np.int64)
        if arr is not None:
            grown[: len(arr)] = arr
        arr = grown
    arr[b] += 1
    return arr

# numpy views of the native records (callsgw._native.udpio.RECORD_DTYPE / SEND_DTYPE)
RECORD_DTYPE = np.dtype([("arrival_ns", "<i8"), ("ssrc", "<u4"), ("ts", "<u4"), ("hash", "<u4"),
                         ("seq", "<u2"), ("pt", "u1"), ("flags", "u1")])
SEND_DTYPE = np.dtype([("key", "<u8"), ("send_ns", "<i8")])


def realtime_ns() -> int:
    """CLOCK_REALTIME in ns: the clock of the native send log and of kernel receive times."""
    return time.time_ns()


def payload_key(packet: bytes) -> tuple[int, int]:
    """(RTP timestamp, hash of the payload after CSRCs and header extension) of an RTP packet."""
    off = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10 and len(packet) >= off + 4:
        off += 4 + 4 * int.from_bytes(packet[off + 2 : off + 4], "big")
    return int.from_bytes(packet[4:8], "big"), hash(packet[off:])


def percentile(values: list[float], q: float) -> float | None:
    """The element at rank round(q% of n-1) of the sorted values (numpy's partition for long lists)."""
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    if len(values) > 2000:
        arr = np.fromiter(values, dtype=np.float64, count=len(values))
        return float(np.partition(arr, index)[index])
    return sorted(values)[index]


class Samples:
    """Samples of a whole run, evenly thinned: every one while they fit in ``limit``, then every
    2nd, 4th, ... (the stride doubles each time the store fills)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.chunks: list[np.ndarray] = []
        self.stored = self.seen = 0
        self.stride = 1

    def add(self, values: np.ndarray) -> None:
        index = self.seen + np.arange(len(values))
        self.seen += len(values)
        keep = values[index % self.stride == 0]
        self.chunks.append(keep)
        self.stored += len(keep)
        while self.stored > self.limit:
            kept = np.concatenate(self.chunks)[::2]
            self.chunks, self.stored = [kept], len(kept)
            self.stride *= 2

    def values(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0)


class SendLog:
    """What was sent when: (timestamp, payload hash) -> (publisher index, kind, clock, send time)."""

    def __init__(self, keep_seconds: float = SEND_LOG_SECONDS, base_ns: int | None = None):
        self._entries: dict[tuple[int, int], tuple[int, str, int, float]] = {}
        self._order: collections.deque[tuple[float, tuple[int, int]]] = collections.deque()
        self._keep = keep_seconds
        self.sent = 0
        # the native path: int key -> (send ns - base_ns) << TRACK_BITS | track id
        self.base_ns = realtime_ns() if base_ns is None else base_ns
        self.native: dict[int, int] = {}
        self._native_order: collections.deque[tuple[int, list[int]]] = collections.deque()
        self.tracks: list[tuple[int, str, int]] = []  # track id -> (publisher, kind, clock)
        self.track_ids: dict[tuple[int, str], int] = {}  # (publisher, kind) -> track id
        # true loss: per track, packets sent per BIN_NS of send time since base_ns (native) or
        # since origin_s (the per-packet path's loop clock); kept for the whole run
        self.sent_bins: list[np.ndarray | None] = []
        self.origin_s = 0.0

    def register_track(self, publisher: int, kind: str, clock: int) -> int:
        """An id for one publisher's track in :meth:`record_batch` (one per publisher and kind)."""
        known = self.track_ids.get((publisher, kind))
        if known is not None:
            return known
        if len(self.tracks) >= 1 << TRACK_BITS:
            raise ValueError("too many tracks for the send log")
        self.tracks.append((publisher, kind, clock))
        self.sent_bins.append(None)
        self.track_ids[(publisher, kind)] = len(self.tracks) - 1
        return len(self.tracks) - 1

    def bin_of(self, at: float) -> int:
        """The bin of a per-packet-path time (loop clock, seconds)."""
        return int((at - self.origin_s) // BIN_S)

    def record_batch(self, track: int, data) -> int:
        """A Replayer's send log (bytes of SEND_DTYPE records) for ``track``; returns the count."""
        return self.record_batches([track], [data])

    def record_batches(self, tracks: list[int], chunks: list[bytes]) -> int:
        """:meth:`record_batch` for several tracks at once (one dict update)."""
        arr = np.frombuffer(b"".join(chunks), dtype=SEND_DTYPE)
        if not len(arr):
            return 0
        sizes = [len(c) // SEND_DTYPE.itemsize for c in chunks]
        ids = np.repeat(np.asarray(tracks, dtype=np.int64), sizes)
        bins = (arr["send_ns"] - self.base_ns) // BIN_NS
        at = 0
        for track, size in zip(tracks, sizes):
            self.sent_bins[track] = add_bins(self.sent_bins[track], bins[at : at + size])
            at += size
        keys = arr["key"].tolist()
        values = ((arr["send_ns"] - self.base_ns) << TRACK_BITS) | ids
        self.native.update(zip(keys, values.tolist()))
        self._native_order.append((int(arr["send_ns"].max()), keys))
        self.sent += len(keys)
        return len(keys)

    def entry(self, value: int) -> tuple[int, str, int, float]:
        """A native send-log value as (publisher, kind, clock, send time in s from ``base_ns``)."""
        publisher, kind, clock = self.tracks[value & ((1 << TRACK_BITS) - 1)]
        return publisher, kind, clock, (value >> TRACK_BITS) / 1e9

    def prune_native(self, now_ns: int) -> None:
        limit = now_ns - int(self._keep * 1e9)
        order, native = self._native_order, self.native
        while order and order[0][0] < limit:
            _, keys = order.popleft()
            for key in keys:
                native.pop(key, None)

    def record(self, key: tuple[int, int], publisher: int, kind: str, clock: int, now: float) -> None:
        track = self.register_track(publisher, kind, clock)
        self.sent_bins[track] = add_bin(self.sent_bins[track], self.bin_of(now))
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
        "delay_sum", "delay_count", "delay_max", "unmatched", "track", "recv_bins", "first_arrival",
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
        self.track: int | None = None  # the send log's track id of the publisher's track
        self.recv_bins: np.ndarray | None = None  # unique matched packets per bin of their send time
        self.first_arrival: float | None = None  # s (the clock of ``arrival``), for the stream's bitrate

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
        if self.first_arrival is None:
            self.first_arrival = now
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

    def advance(self, ext: list[int]) -> None:
        """Account strictly increasing extended sequence numbers above ``highest`` (no duplicates,
        no reordering), with the same bounded ``seen`` set as :meth:`sequence` packet by packet."""
        if self.highest < 0:
            self.base = ext[0]
        self.packets += len(ext)
        self.highest = ext[-1]
        seen, limit, i = self.seen, 2 * DUP_WINDOW, 0
        while i < len(ext):
            room = limit - len(seen)  # sequence() prunes right after the insert that passes the limit
            if len(ext) - i <= room:
                seen.update(ext[i:])
                break
            cut = i + max(room, 0) + 1
            seen.update(ext[i:cut])
            floor = ext[cut - 1] - DUP_WINDOW
            seen = {x for x in seen if x >= floor}
            i = cut
        self.seen = seen

    def arrivals(self, ts: np.ndarray, now: np.ndarray) -> None:
        """:meth:`arrival` for each (timestamp, time) in order (``clock`` must be set)."""
        if self.first_arrival is None:
            self.first_arrival = float(now[0])
        clock = self.clock
        if self.last_arrival is not None:
            ts_all = np.concatenate(([self.last_ts], ts)).astype(np.int64)
            t_all = np.concatenate(([self.last_arrival], now))
        else:
            ts_all, t_all = ts.astype(np.int64), now
        if len(ts_all) > 1:
            sent = (np.diff(ts_all) & 0xFFFFFFFF)
            sent = np.where(sent >= 0x80000000, sent - 0x100000000, sent)
            d = np.abs(np.diff(t_all) * clock - sent)
            j, m = self.jitter, self.max_jitter
            for x in d.tolist():
                j += (x - j) / 16
                if j > m:
                    m = j
            self.jitter, self.max_jitter = j, m
        self.last_arrival = float(now[-1])
        self.last_ts = int(ts[-1])

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
    # the batched path's delay samples: every one while they fit in max_samples, then every 2nd,
    # 4th, ... of the whole run (the stride doubles each time the store fills), so the summary
    # covers the run evenly instead of its first max_samples packets
    _delay_chunks: list = field(default_factory=list)
    _delay_stored: int = 0
    _delay_seen: int = 0
    _delay_stride: int = 1
    _last: tuple[float, int, int, int, int, float] | None = None
    _last_gateway: float | None = None  # the gateway's CPU seconds at the previous sample
    # per kind ("voice", "screen"): the batched path's delay samples, thinned as the run's, and
    # the per-packet path's (capped at max_samples)
    kind_samples: dict = field(default_factory=dict)
    kind_delays: dict = field(default_factory=dict)
    live_sent: int = 0  # the live true loss so far (sum of the timeline's windows)
    # --stage: the hold windows (s from the run's start) and the delays of packets that arrived in them
    hold_windows: list = field(default_factory=list)
    hold_samples: Samples = field(default_factory=lambda: Samples(500_000))
    hold_delay_sum: float = 0.0
    hold_delay_count: int = 0
    hold_delay_max: float = 0.0
    live_lost: int = 0

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
                stats.track = self.send_log.track_ids.get((publisher, kind))
            stats.recv_bins = add_bin(stats.recv_bins, self.send_log.bin_of(at))
            delay = now - at
            stats.delay_sum += delay
            stats.delay_count += 1
            if delay > stats.delay_max:
                stats.delay_max = delay
            if len(self.delays) < self.max_samples:
                self.delays.append(delay)
                self.kind_delays.setdefault(kind, []).append(delay)
            self.interval_delays.append(delay)
            if self.hold_windows:
                self._note_hold(np.array([now - self.send_log.origin_s]), np.array([delay]))
        else:
            stats.unmatched += 1
            if stats.clock is None:
                stats.clock = NEGOTIATED_CLOCK.get(packet[1] & 0x7F)
        stats.arrival(key[0], now)

    def _store_delays(self, delays: np.ndarray, kind: str | None = None) -> None:
        if kind is not None:
            samples = self.kind_samples.get(kind)
            if samples is None:
                samples = self.kind_samples[kind] = Samples(self.max_samples)
            samples.add(delays)
        index = self._delay_seen + np.arange(len(delays))
        self._delay_seen += len(delays)
        keep = delays[index % self._delay_stride == 0]
        self._delay_chunks.append(keep)
        self._delay_stored += len(keep)
        while self._delay_stored > self.max_samples:
            # the stored samples are runs 0, s, 2s, ... in order: every other one is 0, 2s, 4s, ...
            kept = np.concatenate(self._delay_chunks)[::2]
            self._delay_chunks = [kept]
            self._delay_stored = len(kept)
            self._delay_stride *= 2

    def on_records(self, subscriber: int, data) -> int:
        """A Recorder's records (bytes of RECORD_DTYPE) for ``subscriber``; same rules as on_packet.

        Times are taken relative to the send log's ``base_ns`` (seconds as floats), delays from
        the integer ns of both clocks.
        """
        rec = np.frombuffer(data, dtype=RECORD_DTYPE)
        n = len(rec)
        if not n:
            return 0
        self.received += n
        log = self.send_log
        keys = ((rec["ts"].astype(np.uint64) << np.uint64(32)) | rec["hash"]).tolist()
        get = log.native.get
        values = np.array([-1 if (v := get(k)) is None else v for k in keys], dtype=np.int64)
        ssrcs = rec["ssrc"]
        order = np.argsort(ssrcs, kind="stable")
        ssrcs = ssrcs[order]
        seq = rec["seq"][order].astype(np.int64)
        ts = rec["ts"][order]
        pt = rec["pt"][order]
        values = values[order]
        arrival_ns = rec["arrival_ns"][order] - log.base_ns
        starts = [0, *(np.flatnonzero(np.diff(ssrcs)) + 1).tolist(), n]
        streams = self.streams
        for a, b in zip(starts, starts[1:]):
            ssrc = int(ssrcs[a])
            stats = streams.get((subscriber, ssrc))
            if stats is None:
                stats = streams[(subscriber, ssrc)] = StreamStats(subscriber, ssrc)
            self._stream_batch(stats, seq[a:b], ts[a:b], pt[a:b], values[a:b], arrival_ns[a:b])
        return n

    def _stream_batch(self, stats: StreamStats, seq: np.ndarray, ts: np.ndarray, pt: np.ndarray,
                      values: np.ndarray, arrival_ns: np.ndarray) -> None:
        prev = np.empty_like(seq)
        first = stats.highest if stats.highest >= 0 else None
        prev[0] = seq[0] if first is None else first
        prev[1:] = seq[:-1]
        delta = (seq - (prev & 0xFFFF)) & 0xFFFF
        if first is None:
            delta[0] = 1  # the stream's first packet
        matched = values >= 0
        fast = bool((delta >= 1).all() and (delta < 0x8000).all())
        if fast and stats.publisher is None:
            fast = bool(matched[0])  # the first packet sets publisher, kind and clock
        if not fast:
            self._stream_slow(stats, seq, ts, pt, values, arrival_ns)
            return
        ext = np.cumsum(delta) + ((seq[0] - 1) if first is None else first)
        stats.advance(ext.tolist())
        if stats.publisher is None:
            stats.publisher, stats.kind, stats.clock = self.send_log.entry(int(values[0]))[:3]
            stats.track = int(values[0]) & ((1 << TRACK_BITS) - 1)
        m = int(matched.sum())
        if m:
            sent_ns = (values[matched] >> TRACK_BITS)
            stats.recv_bins = add_bins(stats.recv_bins, sent_ns // BIN_NS)
            delays = ((arrival_ns[matched] - sent_ns) / 1e9).tolist()
            stats.delay_sum += sum(delays)
            stats.delay_count += m
            top = max(delays)
            if top > stats.delay_max:
                stats.delay_max = top
            self._store_delays(np.asarray(delays), stats.kind)
            self.interval_delays.extend(delays)
            if self.hold_windows:
                self._note_hold(arrival_ns[matched] / 1e9, np.asarray(delays))
        stats.unmatched += len(values) - m
        stats.arrivals(ts, arrival_ns / 1e9)

    def _stream_slow(self, stats: StreamStats, seqs: np.ndarray, tss: np.ndarray, pts: np.ndarray,
                     values: np.ndarray, arrival_ns: np.ndarray) -> None:
        """Packet by packet, exactly as :meth:`on_packet`."""
        entry = self.send_log.entry
        delays, arrivals = [], []
        for seq, ts, pt, value, at in zip(seqs.tolist(), tss.tolist(), pts.tolist(),
                                          values.tolist(), arrival_ns.tolist()):
            if not stats.sequence(seq):
                continue
            now = at / 1e9
            if value >= 0:
                publisher, kind, clock, sent_at = entry(value)
                if stats.publisher is None:
                    stats.publisher, stats.kind, stats.clock = publisher, kind, clock
                    stats.track = value & ((1 << TRACK_BITS) - 1)
                stats.recv_bins = add_bin(stats.recv_bins, (value >> TRACK_BITS) // BIN_NS)
                delay = (at - (value >> TRACK_BITS)) / 1e9
                stats.delay_sum += delay
                stats.delay_count += 1
                if delay > stats.delay_max:
                    stats.delay_max = delay
                delays.append(delay)
                arrivals.append(now)
            else:
                stats.unmatched += 1
                if stats.clock is None:
                    stats.clock = NEGOTIATED_CLOCK.get(pt)
            stats.arrival(ts, now)
        if delays:
            self._store_delays(np.asarray(delays), stats.kind)
            self.interval_delays.extend(delays)
            if self.hold_windows:
                self._note_hold(np.asarray(arrivals), np.asarray(delays))

    def _note_hold(self, arrival_s: np.ndarray, delays: np.ndarray) -> None:
        """The delays of packets that arrived (s from the run's start) inside a hold window."""
        inside = np.zeros(len(arrival_s), bool)
        for start, end in self.hold_windows:
            inside |= (arrival_s >= start) & (arrival_s < end)
        if inside.any():
            mine = delays[inside]
            self.hold_samples.add(mine)
            self.hold_delay_sum += float(mine.sum())
            self.hold_delay_count += len(mine)
            self.hold_delay_max = max(self.hold_delay_max, float(mine.max()))

    def hold_delay_summary(self) -> dict | None:
        """The one-way delay of the hold windows, as the totals' delay_ms."""
        if not self.hold_delay_count:
            return None
        values = np.sort(self.hold_samples.values())
        n = len(values)

        def rank(q: float) -> float:
            return round(float(values[min(n - 1, max(0, round(q / 100 * (n - 1))))]) * 1000, 4)

        return {"samples": n, "min": round(float(values[0]) * 1000, 4),
                "mean": round(self.hold_delay_sum / self.hold_delay_count * 1000, 4),
                "p50": rank(50), "p95": rank(95), "p99": rank(99),
                "max": round(self.hold_delay_max * 1000, 4), "matched": self.hold_delay_count}

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
            "jitter_p95_ms": round(percentile(jitters, 95), 4) if jitters else None,
            "max_jitter_ms": round(max(max_jitters), 4) if max_jitters else None,
            "delay_ms": self._delay_summary(),
        }

    def _delay_summary(self) -> dict | None:
        if not self._delay_chunks:
            return _summary_ms(self.delays)
        values = np.sort(np.concatenate([*self._delay_chunks, np.asarray(self.delays, dtype=np.float64)]))
        n = len(values)
        count = sum(s.delay_count for s in self.streams.values())

        def rank(q: float) -> float:
            return round(float(values[min(n - 1, max(0, round(q / 100 * (n - 1))))]) * 1000, 4)

        return {
            "samples": n,
            "min": round(float(values[0]) * 1000, 4),
            # mean and max over every matched packet (the percentiles over the samples)
            "mean": round(sum(s.delay_sum for s in self.streams.values()) / count * 1000, 4) if count else None,
            "p50": rank(50), "p95": rank(95), "p99": rank(99),
            "max": round(max(s.delay_max for s in self.streams.values() if s.delay_count) * 1000, 4),
            "matched": count,
            "sample_stride": self._delay_stride,
        }

    def by_kind(self, packet_bytes: dict[str, float] | None = None) -> dict:
        """Voice and screen apart: streams, RFC 3550 jitter over streams (mean/p95/max of each
        stream's end-of-run jitter; max_ms the largest jitter any stream reached), one-way delay
        (as the totals' delay_ms), and received RTP bitrate per stream (distinct packets times the
        track's mean RTP packet size from ``packet_bytes``, over the stream's first to last arrival).
        """
        out = {}
        for kind in ("voice", "screen"):
            mine = [s for s in self.streams.values() if s.kind == kind]
            jitters = [j for s in mine if (j := s.jitter_ms()) is not None]
            max_jitters = [s.max_jitter / s.clock * 1000 for s in mine if s.clock]
            chunks = []
            if kind in self.kind_samples:
                chunks.append(self.kind_samples[kind].values())
            if self.kind_delays.get(kind):
                chunks.append(np.asarray(self.kind_delays[kind], dtype=np.float64))
            delay = None
            count = sum(s.delay_count for s in mine)
            if chunks and count:
                values = np.sort(np.concatenate(chunks))
                n = len(values)

                def rank(q: float) -> float:
                    return round(float(values[min(n - 1, max(0, round(q / 100 * (n - 1))))]) * 1000, 4)

                delay = {"samples": n, "mean": round(sum(s.delay_sum for s in mine) / count * 1000, 4),
                         "p50": rank(50), "p95": rank(95), "p99": rank(99),
                         "max": round(max(s.delay_max for s in mine if s.delay_count) * 1000, 4), "matched": count}
            size = (packet_bytes or {}).get(kind)
            rates = []
            for s in mine:
                span = (s.last_arrival or 0.0) - (s.first_arrival or 0.0)
                if size and s.first_arrival is not None and span >= 1.0:
                    rates.append((s.packets - s.duplicates - 1) * size * 8 / span / 1000)  # n arrivals span n-1 gaps
            out[kind] = {
                "streams": len(mine),
                "packets_received": sum(s.packets for s in mine),
                "jitter_ms": {"mean": round(sum(jitters) / len(jitters), 4) if jitters else None,
                              "p95": round(percentile(jitters, 95), 4) if jitters else None,
                              "max": round(max(max_jitters), 4) if max_jitters else None},
                "delay_ms": delay,
                "received_kbps_per_stream": ({"mean": round(sum(rates) / len(rates), 2), "min": round(min(rates), 2),
                                              "max": round(max(rates), 2)} if rates else None),
            }
        return out

    def sample(self, t: float, connected: int, cpu: float, now: float,
               gateway: tuple[float, int] | None = None, live: tuple[int, int, float, float] | None = None) -> dict:
        """Append one timeline point (rates and loss since the previous sample).

        ``gateway``: the gateway process's ``(cpu_seconds, rss_bytes)`` now
        (:class:`loadtest.gateway_probe.GatewayProbe`), when it is measured. ``live``: the true
        loss of the send-time bins that settled since the last sample, ``(sent, lost, from_s,
        to_s)``; ``loss_percent`` and ``cumulative_loss_percent`` are then true loss (None while
        nothing was expected), else the sequence-gap figures.
        """
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
            "received_total": received,
        }
        point["sequence_loss_percent"] = point["loss_percent"]
        if live is not None:
            l_sent, l_lost, l_from, l_to = live
            self.live_sent += l_sent
            self.live_lost += l_lost
            point["loss_percent"] = round(100 * l_lost / l_sent, 4) if l_sent else None
            point["cumulative_loss_percent"] = (round(100 * self.live_lost / self.live_sent, 4)
                                                if self.live_sent else None)
            point["loss_window_s"] = [round(l_from, 2), round(l_to, 2)]
        if gateway is not None:
            gw_cpu, rss = gateway
            last = self._last_gateway
            point["gateway_cpu_s"] = round(gw_cpu, 3)
            point["gateway_rss_mb"] = round(rss / 2**20, 1)
            if last is not None:
                forwarded = received - recv0
                point["gateway_cpu_percent"] = round(100 * (gw_cpu - last) / dt, 1)
                point["gateway_us_per_forwarded"] = (round((gw_cpu - last) / forwarded * 1e6, 2)
                                                     if forwarded > 0 else None)
            self._last_gateway = gw_cpu
        self.interval_delays = []
        self._last = (t, sent, received, expected, lost, cpu)
        self.timeline.append(point)
        self.send_log.prune(now)
        self.send_log.prune_native(realtime_ns())
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


@dataclass
class Delivery:
    """One publisher's track as one subscriber should have received it (true loss).

    ``sent`` is what the publisher sent within the window, ``received`` the distinct packets of
    it that arrived (matched through the send log, whenever they arrived). The window runs, in
    BIN_S bins of send time, from the first whole bin after the stream's first packet arrived
    (or, for a stream that never arrived, from SETTLE_S after both ends connected) to the end of
    sending or the departure of either end.
    """

    subscriber: int
    publisher: int
    kind: str
    sent: int
    received: int
    state: str  # "ok", "missing" (nothing ever arrived), "stopped" (arrived, then nothing for a while)
    from_s: float
    to_s: float
    stopped_at_s: float | None = None

    @property
    def lost(self) -> int:
        return max(0, self.sent - self.received)

    def as_dict(self) -> dict:
        return {
            "subscriber": self.subscriber, "publisher": self.publisher, "kind": self.kind,
            "state": self.state, "sent": self.sent, "received": self.received, "lost": self.lost,
            "loss_percent": round(100 * self.lost / self.sent, 4) if self.sent else 0.0,
            "from_s": round(self.from_s, 3), "to_s": round(self.to_s, 3),
            "stopped_at_s": None if self.stopped_at_s is None else round(self.stopped_at_s, 3),
        }


def deliveries(send_log: SendLog, streams, expected, window: tuple[int, int] | None = None) -> list[Delivery]:
    """True loss per expected (subscriber, publisher track).

    ``streams``: the collector's StreamStats; ``expected``: ``(subscriber, publisher, kind,
    connected_s, end_bin)`` with ``connected_s`` the time (s after the bins' origin) both ends
    had connected and ``end_bin`` the first bin no longer expected (exclusive). ``window``
    ``(first, end)`` counts only those bins (the live loss of the last second).
    """
    received: dict[tuple[int, int], np.ndarray] = {}
    for stats in streams:
        if stats.track is None or stats.recv_bins is None:
            continue
        key = (stats.subscriber, stats.track)
        mine = stats.recv_bins
        have = received.get(key)
        if have is None:
            received[key] = mine.copy()
        else:
            if len(have) < len(mine):
                have = np.concatenate([have, np.zeros(len(mine) - len(have), np.int64)])
            have[: len(mine)] += mine
            received[key] = have
    out = []
    for subscriber, publisher, kind, connected_s, end_bin in expected:
        track = send_log.track_ids.get((publisher, kind))
        sent_bins = send_log.sent_bins[track] if track is not None else None
        sent_bins = np.zeros(0, np.int64) if sent_bins is None else sent_bins
        got = received.get((subscriber, track)) if track is not None else None
        nonzero = np.flatnonzero(got) if got is not None else np.zeros(0, np.int64)
        end = max(0, end_bin)
        if len(nonzero):
            start = int(nonzero[0]) + 1
        else:
            start = max(0, int(np.ceil((connected_s + SETTLE_S) / BIN_S)))
        start = min(start, end)
        if window is not None:
            start, end = max(start, window[0]), min(end, window[1])
            start = min(start, end)
        sent = int(sent_bins[start:end].sum())
        got_window = int(got[start:end].sum()) if got is not None else 0
        state, stopped_at = "ok", None
        if not len(nonzero):
            state = "missing"
        else:
            last = int(nonzero[-1])
            gap = int(sent_bins[last + 1 : end].sum())
            if end - 1 - last >= STOP_BINS and gap >= STOP_PACKETS:
                state, stopped_at = "stopped", (last + 1) * BIN_S
        out.append(Delivery(subscriber, publisher, kind, sent, min(got_window, sent), state,
                            start * BIN_S, end * BIN_S, stopped_at))
    return out

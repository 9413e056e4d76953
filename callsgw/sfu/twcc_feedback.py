"""Receive-side transport-wide congestion control feedback to a publisher, sans-I/O.

One :class:`TwccFeedbackGenerator` per publisher transport (the transport-wide
sequence number spans every stream of that transport,
draft-holmer-rmcat-transport-wide-cc-extensions-01 section 2). The shell (or
the engine's batch upcall) hands it each received packet's transport-wide
sequence number and arrival time; on its timer it builds RTCP transport-cc
packets (section 3.1, encoded by :mod:`callsgw.wire.twcc`) that the shell
protects and sends to the publisher, whose send-side estimator then ramps up
to what its uplink carries. Nothing here reads a clock or touches a socket.

Behaviour, modelled on libwebrtc's receive-side feedback (RemoteEstimatorProxy):

* ``record(seq16, arrival_s)`` unwraps the 16-bit number (wrap 65535 -> 0).
  Duplicates are ignored and counted (``duplicate``).
* Reordering: a packet that arrives after a feedback already reported it
  lost, at most ``max_reorder`` numbers back, is reported received in the
  next feedback, which then starts again at that number and repeats the
  arrivals already reported from there (kept for ``2 x max_reorder``
  packets), as libwebrtc's receiver moves its window start back; the sender
  takes the later report. Older ones are ignored and counted (``late``).
* At most ``max_pending`` packets wait for the next feedback; beyond that the
  oldest are dropped and counted (``dropped_overflow``), and the feedback
  resumes after them (they are not reported lost: that would tell the sender
  about loss that did not happen).
* Feedback is due ``interval`` seconds after the first packet that follows
  the previous feedback (so at most one per ``interval`` while packets
  arrive), and never when idle: :meth:`get_timer` is then None. Each feedback reports every sequence number
  from the end of the previous one to the highest received (the ones not
  received are reported lost), split into packets of at most ``max_size``
  bytes, each with the next 8-bit feedback packet count.
* A jump of more than ``max_loss_run`` sequence numbers (default 5000, some
  seconds of media) between the previous feedback or packet and the next
  packet (a restarted sender) is not reported as a loss run: the feedback
  restarts at the new packet (``skipped``).
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from callsgw.wire import twcc

__all__ = ["TwccFeedbackGenerator"]


class TwccFeedbackGenerator:
    """Transport-cc feedback for one publisher transport (see the module docstring)."""

    def __init__(
        self,
        *,
        interval: float = 0.05,
        max_pending: int = 4096,
        max_size: int = twcc.DEFAULT_MAX_SIZE,
        max_loss_run: int = 5000,
        max_reorder: int = 512,
    ):
        if not 0.005 <= interval <= 1.0:
            raise ValueError("feedback interval must be within 5 ms .. 1 s")
        if max_pending < 16:
            raise ValueError("max_pending must be at least 16")
        if not 1 <= max_loss_run <= twcc.MAX_GAP:
            raise ValueError(f"max_loss_run must be within 1 .. {twcc.MAX_GAP}")
        if not 0 <= max_reorder <= 4096:
            raise ValueError("max_reorder must be within 0 .. 4096")
        self.interval = interval
        self.max_loss_run = max_loss_run
        self.max_reorder = max_reorder
        self._history: dict[int, int] = {}  # reported received: extended seq -> arrival in us
        self._history_order: deque[int] = deque()
        self._rewind: int | None = None  # lowest late number recorded since the last feedback
        self._floor = 0  # no rewind below this (numbers dropped or skipped, never to be reported lost)
        self.max_pending = max_pending
        self.max_size = max_size
        self._unwrap = twcc.SeqUnwrapper()
        self._pending: dict[int, int] = {}  # extended seq -> arrival in us
        self._next_seq: int | None = None  # first extended seq the next feedback reports
        self._next_due: float | None = None
        self._last_sent: float | None = None
        self._fb_count = 0
        self.counters: dict[str, int] = {
            "recorded": 0,
            "duplicate": 0,
            "late": 0,
            "reordered": 0,
            "dropped_overflow": 0,
            "skipped": 0,
            "feedback_packets": 0,
            "feedback_bytes": 0,
            "reported_received": 0,
            "reported_lost": 0,
        }

    # -- input ---------------------------------------------------------------------------

    def record(self, seq16: int, arrival_s: float) -> None:
        """One received packet: its transport-wide sequence number and arrival time (seconds)."""
        ext = self._unwrap.unwrap(int(seq16))
        if ext in self._pending or ext in self._history:
            self.counters["duplicate"] += 1
            return
        if self._next_seq is not None and ext < self._next_seq:
            if self._next_seq - ext > self.max_reorder or ext < self._floor:
                self.counters["late"] += 1
                return
            self.counters["reordered"] += 1
            self._rewind = ext if self._rewind is None else min(self._rewind, ext)
        self._pending[ext] = int(round(arrival_s * 1e6))
        self.counters["recorded"] += 1
        if len(self._pending) > self.max_pending:
            self._evict()
        if self._next_due is None:
            last = self._last_sent
            self._next_due = (arrival_s if last is None else max(arrival_s, last)) + self.interval

    def record_many(self, seqs: Iterable[int], times: Iterable[float]) -> None:
        """A batch of :meth:`record` (lists or numpy arrays of the same length)."""
        if hasattr(seqs, "tolist"):
            seqs = seqs.tolist()  # type: ignore[union-attr]
        if hasattr(times, "tolist"):
            times = times.tolist()  # type: ignore[union-attr]
        seqs, times = list(seqs), list(times)
        if len(seqs) != len(times):
            raise ValueError(f"{len(seqs)} sequence numbers but {len(times)} arrival times")
        for seq, t in zip(seqs, times):
            self.record(seq, t)

    def _evict(self) -> None:
        # drop the oldest eighth at once so that a sustained overflow costs O(1) per packet
        keys = sorted(self._pending)
        drop = len(keys) - self.max_pending + self.max_pending // 8
        for key in keys[:drop]:
            del self._pending[key]
        self.counters["dropped_overflow"] += drop
        self._next_seq = self._floor = max(self._next_seq or 0, keys[drop - 1] + 1)
        if self._rewind is not None and self._rewind < self._floor:
            self._rewind = min((k for k in self._pending if k < self._next_seq), default=None)

    # -- timer and output ------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When the next feedback is due (seconds, the arrivals' clock), or None when idle."""
        return self._next_due

    def due(self, now: float) -> bool:
        return self._next_due is not None and now >= self._next_due

    @property
    def pending(self) -> int:
        return len(self._pending)

    def build(self, now: float, sender_ssrc: int, media_ssrc: int) -> list[bytes]:
        """The transport-cc RTCP packets due at ``now`` (an empty list when not due or idle)."""
        if not self.due(now) or not self._pending:
            if not self._pending:
                self._next_due = None
            return []
        items = dict(self._pending)
        start = self._next_seq
        rewind, self._rewind = self._rewind, None
        if rewind is not None and start is not None and rewind < start:
            for ext in range(rewind, start):  # repeat what was reported from the late packet on
                arrival = self._history.get(ext)
                if arrival is not None:
                    items[ext] = arrival
            start = rewind
        keys = sorted(items)
        if start is None or keys[0] - start > self.max_loss_run:
            if start is not None:
                self.counters["skipped"] += 1
            start = self._floor = keys[0]
        packets: list[tuple[int, int | None]] = []
        if start < keys[0]:
            packets.append((start, None))
        prev = start - 1
        out: list[bytes] = []
        for key in keys:
            if key - prev > self.max_loss_run:  # a jump inside the batch: report what came before on its own
                out += self._encode(packets, sender_ssrc, media_ssrc)
                packets = []
                self.counters["skipped"] += 1
            packets.append((key, items[key]))
            prev = key
        out += self._encode(packets, sender_ssrc, media_ssrc)
        self.counters["reported_received"] += len(keys)
        self._next_seq = max(self._next_seq or 0, keys[-1] + 1)
        for ext, arrival in self._pending.items():
            self._history[ext] = arrival
            self._history_order.append(ext)
        while len(self._history_order) > 2 * self.max_reorder:
            self._history.pop(self._history_order.popleft(), None)
        self._pending.clear()
        self._last_sent = now
        self._next_due = None
        return out

    def _encode(self, packets: list[tuple[int, int | None]], sender_ssrc: int, media_ssrc: int) -> list[bytes]:
        if not packets:
            return []
        span = packets[-1][0] - packets[0][0] + 1
        received = sum(1 for _, a in packets if a is not None)
        self.counters["reported_lost"] += span - received
        built = twcc.build(packets, sender_ssrc=sender_ssrc, media_ssrc=media_ssrc, fb_count=self._fb_count,
                           max_size=self.max_size)
        self._fb_count = (self._fb_count + len(built)) & 0xFF
        self.counters["feedback_packets"] += len(built)
        self.counters["feedback_bytes"] += sum(len(b) for b in built)
        return built

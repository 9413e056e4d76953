"""Client-side impairment for ``callsgw loadtest run`` (``--loss``, ``--jitter``, ``--rate-limit``).

The tester impairs its own links, since netem is absent here (and needs root where it exists).
Every participant (or, with ``--impaired-calls K``, those of the first K calls, the other calls
being a control group under the same load) gets the same settings, each with its own random stream (numpy PCG64 seeded
from ``--impair-seed`` and the participant's index, so a run with the same seed drops and delays
the same way per packet order).

Send side (the default, ``--impair-side send``): each publisher's uplink. The native
:class:`~callsgw._native.udpio.Replayer` keeps building, stamping (send log) and protecting the
packets, but sends them to a *tap*: a UDP socket of the participant's own on 127.0.0.1. Once per
pump tick (~1 ms) :class:`UplinkShaper` drains the tap and passes the SRTP datagrams, in order,
through what a real uplink does:

1. ``--rate-limit KBPS``: a token-bucket shaper (:class:`callsgw.ratelimit.TokenBucket`, with
   bytes as tokens: KBPS x 125 bytes/s, depth :data:`BURST_S` of the rate and at least
   :data:`MIN_BURST_BYTES`) in front of a FIFO queue that holds at most :data:`QUEUE_S` of the
   rate; a packet that finds the queue full is dropped (tail drop), as a bottleneck router's
   buffer does. The bytes counted are the UDP payload (SRTP packet, its auth tag included), not
   the IP/UDP headers. At low rates the minimum depth dominates (at 30 kbit/s 2048 B is 0.55 s of
   queue). A publisher above the rate sees its packets queue (delay) and then drop
   (loss): the received bitrate is capped at the rate.
2. ``--loss PCT``: each packet leaving the queue is dropped with probability PCT/100
   (independent, Bernoulli; decided per batch with numpy).
3. ``--jitter MS``: each surviving packet is held for a delay drawn uniformly from 0..MS
   (decided per batch with numpy) and then sent from the participant's media socket (a dup of
   its descriptor) to the gateway. Packets less than MS apart can overtake each other: this jitter
   reorders, as a multi-path network does; the RFC 3550 jitter of uniform 0..MS delays on packets
   further apart than MS reads about MS/3, and the one-way delay rises by MS/2 on average.

Every packet the Replayer built stays in the send log, so a dropped one is *sent and lost* in
the true-loss accounting, and a delayed one counts its delay from the Replayer's send time.

Cost: the shaper is Python per packet for the socket calls (one ``recv`` from the tap, one
``sendto`` to the gateway), with the loss and jitter decisions vectorised per batch; its CPU time
per packet is measured and reported (``impairment.cost_us_per_packet``). Participants are not
impaired when no option is given: the media path is then the fully native one.

Receive side (``--impair-side receive``; ``both`` for both): loss and jitter are applied to the
records a subscriber's :class:`~callsgw._native.udpio.Recorder` made, before they are measured:
a record is dropped with probability PCT/100 and its arrival time is moved later by uniform
0..MS (records are then taken in their new arrival order). This models a lossy, jittery downlink
as the measurement sees it; the gateway and the subscriber's socket still get every packet (no
retransmission or feedback here reacts either way). ``--rate-limit`` is send side only (records
carry no packet sizes).
"""

from __future__ import annotations

import argparse
import heapq
import os
import socket
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from callsgw.ratelimit import TokenBucket

__all__ = ["Impairment", "UplinkShaper", "ReceiveImpairment", "add_arguments", "from_args", "summarize"]

BURST_S = 0.02  # the token bucket's depth: 20 ms of the rate
MIN_BURST_BYTES = 2048  # ... and at least one udpio packet slot (so that every packet can leave)
QUEUE_S = 0.2  # the shaper's FIFO holds at most 200 ms of the rate (at least MIN_BURST_BYTES; tail drop beyond)
TAP_RCVBUF = 4 << 20
MAX_DRAIN = 4096  # datagrams one tick takes from a tap (the rest wait for the next tick)
SIDES = ("send", "receive", "both")


@dataclass(frozen=True)
class Impairment:
    """What every participant's link gets. ``loss`` in percent, ``jitter`` in ms, ``rate_kbps`` kbit/s."""

    loss: float = 0.0
    jitter: float = 0.0
    rate_kbps: float | None = None
    side: str = "send"
    seed: int = 0
    calls: int | None = None  # --impaired-calls: only the participants of the first K calls; None = every call

    @property
    def active(self) -> bool:
        return self.loss > 0 or self.jitter > 0 or self.rate_kbps is not None

    @property
    def send(self) -> bool:
        return self.active and self.side in ("send", "both")

    @property
    def receive(self) -> bool:
        return (self.loss > 0 or self.jitter > 0) and self.side in ("receive", "both")

    def rng(self, participant: int, side: str) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, participant, SIDES.index(side)]))

    def describe(self) -> dict:
        """The report's ``config.impairment``."""
        return {
            "applied": self.active,
            "side": self.side,
            "loss_percent": self.loss,
            "loss_model": "independent (Bernoulli) per packet",
            "jitter_ms": self.jitter,
            "jitter_model": "uniform 0..jitter_ms added delay per packet (reorders packets closer than that)",
            "rate_limit_kbps": self.rate_kbps,
            "rate_limit_model": (None if self.rate_kbps is None else
                                 f"token bucket (depth {BURST_S * 1000:g} ms, at least {MIN_BURST_BYTES} B) in front of "
                                 f"a FIFO of {QUEUE_S * 1000:g} ms, tail drop; SRTP payload bytes, send side only"),
            "seed": self.seed,
            "impaired_calls": self.calls,
            "participants": ("every participant" if self.calls is None else
                             f"the participants of the first {self.calls} call(s); the other calls are a control "
                             "group") + ", each with its own random stream (seed, participant number)",
        }

    def label(self) -> str:
        """One line for the summary."""
        if not self.active:
            return "none"
        parts = []
        if self.loss:
            parts.append(f"loss {self.loss:g}%")
        if self.jitter:
            parts.append(f"jitter 0..{self.jitter:g} ms uniform")
        if self.rate_kbps is not None:
            parts.append(f"rate limit {self.rate_kbps:g} kbit/s")
        who = "per participant" if self.calls is None else f"per participant of the first {self.calls} call(s)"
        return ", ".join(parts) + f" {who}, {self.side} side (seed {self.seed})"


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 100, got {text!r}")
    return value


def _ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be between 0 and 10000 ms, got {text!r}")
    return value


def _kbps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected kbit/s, got {text!r}") from None
    if not 1 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 10000000 kbit/s, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "impairment", "Applied by the tester itself to every participant (netem is not needed); the report's "
        "config.impairment says what was applied, and the losses it caused count as loss.")
    group.add_argument("--loss", type=_percent, default=0.0, metavar="PCT",
                       help="Drop each packet with this probability (percent, independent per packet, seeded).")
    group.add_argument("--jitter", type=_ms, default=0.0, metavar="MS",
                       help="Delay each packet by a random 0..MS ms (uniform): the one-way delay rises by MS/2 on "
                       "average and the RFC 3550 jitter by about MS/3; packets closer than MS apart can be "
                       "reordered.")
    group.add_argument("--rate-limit", type=_kbps, default=None, metavar="KBPS",
                       help="Cap each participant's uplink at KBPS kbit/s of SRTP payload (token bucket, 20 ms "
                       "deep, in front of a 200 ms FIFO that drops at its tail when full). Send side only.")
    group.add_argument("--impair-side", choices=SIDES, default="send",
                       help="send (default): on each publisher's uplink, before the gateway (the gateway sees the "
                       "loss, the delays and the rate); receive: --loss and --jitter on what each subscriber records "
                       "(a downlink as the measurement sees it; the gateway is untouched); both.")
    group.add_argument("--impaired-calls", type=int, default=None, metavar="K",
                       help="Impair only the participants of the first K calls; the other calls run unimpaired in "
                       "the same run, a control group under the same load (per-stream figures in the JSON tell "
                       "them apart). Default: every call.")
    group.add_argument("--impair-seed", type=int, default=None, metavar="N",
                       help="Seed of the impairment's random numbers (default: random, printed in the report).")


def from_args(args: argparse.Namespace) -> Impairment:
    seed = args.impair_seed if getattr(args, "impair_seed", None) is not None else int.from_bytes(os.urandom(4), "big")
    return Impairment(loss=getattr(args, "loss", 0.0) or 0.0, jitter=getattr(args, "jitter", 0.0) or 0.0,
                      rate_kbps=getattr(args, "rate_limit", None), side=getattr(args, "impair_side", "send"),
                      seed=seed, calls=getattr(args, "impaired_calls", None))


class UplinkShaper:
    """One publisher's impaired uplink: the tap its Replayers send to, and the way on to the gateway.

    ``pump(now_ns)`` once per tick: drain the tap, queue (rate limit), drop (loss), hold (jitter),
    and send what is due. ``close()`` closes the tap and the dup of the media socket.
    """

    def __init__(self, impairment: Impairment, participant: int, media_fd: int, remote: tuple, now_ns: int):
        self.impairment = impairment
        self.rng = impairment.rng(participant, "send")
        self.tap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.tap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TAP_RCVBUF)
        except OSError:
            pass
        self.tap.bind(("127.0.0.1", 0))
        self.tap.setblocking(False)
        self.tap_host, self.tap_port = self.tap.getsockname()[:2]
        self.out = socket.socket(fileno=os.dup(media_fd))
        self.out.setblocking(False)
        self.remote = remote
        self.loss_p = impairment.loss / 100.0
        self.jitter_ns = impairment.jitter * 1e6
        rate = impairment.rate_kbps
        if rate is not None:
            rate_bytes = rate * 125.0
            self.bucket = TokenBucket(rate_bytes, max(MIN_BURST_BYTES, rate_bytes * BURST_S), now=now_ns / 1e9)
            self.queue_limit = max(MIN_BURST_BYTES, rate_bytes * QUEUE_S)
        else:
            self.bucket = None
            self.queue_limit = 0.0
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.held: list[tuple[int, int, bytes]] = []  # heap of (release ns, tie, datagram)
        self._tie = 0
        # counters (report: impairment)
        self.packets = 0  # taken from the tap
        self.bytes_in = 0
        self.dropped_loss = 0
        self.dropped_queue = 0
        self.sent = 0
        self.bytes_out = 0
        self.send_errors = 0
        self.cpu_ns = 0  # thread CPU time spent in pump()
        # how long after its release time a held packet left (the pump's tick, or a busy event loop):
        # added to the impaired packets' delay, which the send log (stamped before the hold) counts
        self.late_sum_ns = 0
        self.late_count = 0
        self.late_max_ns = 0
        self.calls = 0
        self.closed = False

    def pump(self, now_ns: int, drain: bool = True) -> bool:
        """One tick; ``drain``: the Replayers sent to the tap since the last call. Whether packets
        are still queued or held (then the pump calls again next tick)."""
        t0 = time.thread_time_ns()
        self.calls += 1
        batch = []
        if drain:
            recv = self.tap.recv
            try:
                for _ in range(MAX_DRAIN):
                    batch.append(recv(2048))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.closed = True
                return False
        if batch:
            self.packets += len(batch)
            self.bytes_in += sum(map(len, batch))
        if self.bucket is not None:
            batch = self._shape(batch, now_ns)
        if batch:
            if self.loss_p > 0:
                keep = self.rng.random(len(batch)) >= self.loss_p
                self.dropped_loss += len(batch) - int(keep.sum())
                batch = [d for d, k in zip(batch, keep.tolist()) if k]
            if self.jitter_ns > 0 and batch:
                holds = self.rng.uniform(0.0, self.jitter_ns, len(batch)).astype(np.int64)
                release = (holds + np.int64(now_ns)).tolist()  # in integers: ns since 1970 overflow a double's 53 bits
                held, tie = self.held, self._tie
                for at, data in zip(release, batch):
                    tie += 1
                    heapq.heappush(held, (at, tie, data))
                self._tie = tie
                batch = []
        if self.held:
            held = self.held
            late_sum, late_max, n = 0, self.late_max_ns, 0
            while held and held[0][0] <= now_ns:
                at, _, data = heapq.heappop(held)
                batch.append(data)
                late = now_ns - at
                late_sum += late
                late_max = late if late > late_max else late_max
                n += 1
            self.late_sum_ns += late_sum
            self.late_count += n
            self.late_max_ns = late_max
        if batch:
            self._send(batch)
        self.cpu_ns += time.thread_time_ns() - t0
        return bool(self.held or self.queue)

    def _shape(self, batch: list[bytes], now_ns: int) -> list[bytes]:
        """The rate limit: the new datagrams join the FIFO (tail drop past QUEUE_S of the rate);
        those the bucket has tokens for leave it."""
        queue = self.queue
        for data in batch:
            if self.queued_bytes + len(data) > self.queue_limit:
                self.dropped_queue += 1
                continue
            queue.append(data)
            self.queued_bytes += len(data)
        out = []
        bucket = self.bucket
        tokens = bucket.refill(now_ns / 1e9)
        while queue and tokens >= len(queue[0]):
            data = queue.popleft()
            tokens -= len(data)
            self.queued_bytes -= len(data)
            out.append(data)
        bucket.tokens = tokens
        return out

    def _send(self, batch: list[bytes]) -> None:
        sendto, remote = self.out.sendto, self.remote
        for data in batch:
            try:
                sendto(data, remote)
            except OSError:  # the socket's send buffer is full (EAGAIN) or the socket went away
                self.send_errors += 1
                continue
            self.sent += 1
            self.bytes_out += len(data)

    def close(self) -> None:
        for sock in (self.tap, self.out):
            try:
                sock.close()
            except OSError:
                pass

    def counters(self) -> dict:
        return {"packets": self.packets, "bytes_in": self.bytes_in, "dropped_loss": self.dropped_loss,
                "dropped_rate_limit": self.dropped_queue, "sent": self.sent, "bytes_out": self.bytes_out,
                "send_errors": self.send_errors, "held_at_end": len(self.held) + len(self.queue),
                "cpu_ns": self.cpu_ns, "calls": self.calls, "late_sum_ns": self.late_sum_ns,
                "late_count": self.late_count, "late_max_ns": self.late_max_ns}


class ReceiveImpairment:
    """One subscriber's impaired downlink, applied to its Recorder's records (numpy, per batch)."""

    def __init__(self, impairment: Impairment, participant: int):
        self.rng = impairment.rng(participant, "receive")
        self.loss_p = impairment.loss / 100.0
        self.jitter_ns = impairment.jitter * 1e6
        self.records = 0
        self.dropped = 0

    def apply(self, rec: np.ndarray) -> np.ndarray:
        """``rec`` (RECORD_DTYPE) with the dropped records left out and the arrival times delayed."""
        n = len(rec)
        if not n:
            return rec
        self.records += n
        if self.loss_p > 0:
            keep = self.rng.random(n) >= self.loss_p
            self.dropped += n - int(keep.sum())
            rec = rec[keep]
        else:
            rec = rec.copy()
        if self.jitter_ns > 0 and len(rec):
            rec["arrival_ns"] += self.rng.uniform(0.0, self.jitter_ns, len(rec)).astype(np.int64)
            rec = rec[np.argsort(rec["arrival_ns"], kind="stable")]
        return rec


def summarize(impairment: Impairment, shapers: list[UplinkShaper], receivers: list[ReceiveImpairment]) -> dict:
    """The report's ``impairment``: the settings and what they did."""
    out = impairment.describe()
    if shapers:
        totals = {k: sum(s.counters()[k] for s in shapers) for k in
                  ("packets", "bytes_in", "dropped_loss", "dropped_rate_limit", "sent", "bytes_out", "send_errors",
                   "held_at_end", "cpu_ns", "calls", "late_sum_ns", "late_count")}
        cpu_ns = totals.pop("cpu_ns")
        late_sum, late_count = totals.pop("late_sum_ns"), totals.pop("late_count")
        late_max = max(s.late_max_ns for s in shapers)
        passed = totals["packets"] - totals["dropped_rate_limit"]
        out["send"] = {
            "publishers": len(shapers),
            **totals,
            "loss_applied_percent": round(100 * totals["dropped_loss"] / passed, 4) if passed else 0.0,
            "rate_limit_drop_percent": (round(100 * totals["dropped_rate_limit"] / totals["packets"], 4)
                                        if totals["packets"] else 0.0),
            "cpu_seconds": round(cpu_ns / 1e9, 4),
            "cost_us_per_packet": round(cpu_ns / 1e3 / totals["packets"], 3) if totals["packets"] else None,
            "release_late_ms": ({"mean": round(late_sum / late_count / 1e6, 3), "max": round(late_max / 1e6, 3),
                                 "packets": late_count,
                                 "note": "how long after its drawn release time a held packet left (tick, busy "
                                         "event loop); included in the impaired streams' delay"}
                                if late_count else None),
        }
    if receivers:
        records = sum(r.records for r in receivers)
        dropped = sum(r.dropped for r in receivers)
        out["receive"] = {"subscribers": len(receivers), "records": records, "dropped_loss": dropped,
                          "loss_applied_percent": round(100 * dropped / records, 4) if records else 0.0}
    return out

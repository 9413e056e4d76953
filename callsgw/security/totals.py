"""What ``/metrics`` counts over the security records, without loading them (issue #20 item 2).

``/metrics`` exports totals over the retained records: handshakes by outcome and by DTLS cipher
suite, sessions by SRTP profile, failures by reason, the SRTP counters and a histogram of the DTLS
handshake latency. Loading up to 10,000 records per scrape to count them made the gateway's
resident memory keep the peak of the largest load (about 4 KB of Python objects per record),
which grew with the records table during the soak. The database now counts:
:meth:`callsgw.security.db.RecordStore.record_totals` answers with one aggregate statement (a few
rows, whatever the table's size), and :func:`tally` counts the live sessions' in-memory records
the same way; the two add up (``+``).

A record counts as:

* a completed handshake, under its suite, when its DTLS cipher suite is set (non-empty);
* a handshake latency (``handshake_completed_at - handshake_started_at``) when it completed and
  both times are set, the completion not before the start;
* a session of its SRTP profile when the profile is set; a failure when ``failure`` is set;
* its counters (``srtp_auth_failures``, ``srtp_replays``, ``packets_in``/``out``,
  ``bytes_in``/``out``; a missing one is 0).

The grouped counts keep the order in which the newest record of each value comes first (the
order :mod:`callsgw.server.metrics` meets them in, for its bound on label values).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

COUNTER_FIELDS = ("srtp_auth_failures", "srtp_replays", "packets_in", "packets_out", "bytes_in", "bytes_out")
GROUPS = ("suites", "profiles", "failures")


def _merge(a: tuple[tuple[str, int], ...], b: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    counts = dict(a)
    for key, n in b:
        counts[key] = counts.get(key, 0) + n
    return tuple(counts.items())


@dataclass(frozen=True)
class RecordTotals:
    """Counts over a set of security records (see the module doc); ``a + b`` counts both sets."""

    buckets: tuple[float, ...]
    """The latency histogram's upper bounds (seconds), ascending."""
    suites: tuple[tuple[str, int], ...] = ()
    profiles: tuple[tuple[str, int], ...] = ()
    failures: tuple[tuple[str, int], ...] = ()
    counters: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_FIELDS, 0))
    latency_le: tuple[int, ...] = ()
    """Per bound of ``buckets``: latencies at or below it."""
    latency_count: int = 0
    latency_sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.latency_le:
            object.__setattr__(self, "latency_le", (0,) * len(self.buckets))

    @property
    def completed(self) -> int:
        return sum(n for _, n in self.suites)

    @property
    def failed(self) -> int:
        return sum(n for _, n in self.failures)

    def __add__(self, other: "RecordTotals") -> "RecordTotals":
        if tuple(self.buckets) != tuple(other.buckets):
            raise ValueError("RecordTotals with different latency buckets")
        return RecordTotals(
            buckets=self.buckets,
            suites=_merge(self.suites, other.suites),
            profiles=_merge(self.profiles, other.profiles),
            failures=_merge(self.failures, other.failures),
            counters={k: self.counters.get(k, 0) + other.counters.get(k, 0) for k in COUNTER_FIELDS},
            latency_le=tuple(a + b for a, b in zip(self.latency_le, other.latency_le)),
            latency_count=self.latency_count + other.latency_count,
            latency_sum=self.latency_sum + other.latency_sum,
        )


def tally(records: Iterable[Mapping], buckets: Sequence[float]) -> RecordTotals:
    """The totals of records given as dicts (:meth:`SessionRecord.as_dict`), in memory."""
    buckets = tuple(float(b) for b in buckets)
    groups: dict[str, dict[str, int]] = {g: {} for g in GROUPS}
    counters = dict.fromkeys(COUNTER_FIELDS, 0)
    latencies: list[float] = []
    for r in records:
        dtls = r.get("dtls") or {}
        suite = dtls.get("cipher_suite")
        if suite:
            groups["suites"][suite] = groups["suites"].get(suite, 0) + 1
            started, done = dtls.get("handshake_started_at"), dtls.get("handshake_completed_at")
            if started is not None and done is not None and done >= started:
                latencies.append(done - started)
        if r.get("srtp_profile"):
            groups["profiles"][r["srtp_profile"]] = groups["profiles"].get(r["srtp_profile"], 0) + 1
        if r.get("failure"):
            groups["failures"][r["failure"]] = groups["failures"].get(r["failure"], 0) + 1
        c = r.get("counters") or {}
        for name in COUNTER_FIELDS:
            counters[name] += int(c.get(name, 0))
    return RecordTotals(
        buckets=buckets,
        suites=tuple(groups["suites"].items()),
        profiles=tuple(groups["profiles"].items()),
        failures=tuple(groups["failures"].items()),
        counters=counters,
        latency_le=tuple(sum(1 for x in latencies if x <= b) for b in buckets),
        latency_count=len(latencies),
        latency_sum=float(sum(latencies)),
    )

"""Prometheus metrics for ``/metrics`` (prometheus-client), computed at scrape time.

Each :class:`~callsgw.server.app.GatewayApp` gets its own
:class:`prometheus_client.CollectorRegistry` (several gateways can run in one
process, as the tests do) holding one custom collector, :class:`GatewayCollector`,
that reads the running core and the record store when scraped. Nothing is
hooked into the media path. ``/metrics`` is served by
:mod:`callsgw.server.admin` and needs the admin key like the API.

Metrics (all names prefixed ``callsgw_``):

=====================================  ========================================================
``calls_live``                         gauge: live calls
``sessions_live``                      gauge: live participant sessions
``handshakes_total{outcome}``          counter: sessions whose DTLS handshake ``completed``, or
                                       that ``failed`` (any failure reason)
``handshakes_by_suite_total{suite}``   counter: completed handshakes by DTLS cipher suite (IANA)
``srtp_profile_total{profile}``        counter: sessions by negotiated SRTP profile
``session_failures_total{reason}``     counter: failed sessions by reason (bounded set,
                                       :data:`callsgw.security.records.FAILURE_REASONS`)
``srtp_auth_failures_total``           counter: SRTP/SRTCP packets failing authentication
``srtp_replays_total``                 counter: SRTP/SRTCP packets refused as replays
``packets_total{direction}``           counter: SRTP/SRTCP packets received (``in``) / sent
                                       (``out``, i.e. forwarded)
``bytes_total{direction}``             counter: their bytes, as the records carry them
``handshake_duration_seconds``         histogram: DTLS handshake latency (start to completion)
``engine_datagrams_total``             counter: datagrams the native engine read (native only)
``engine_forwarded``                   gauge: RTP copies the native engine sent on live routes
``engine_slots{table}``                gauge: native engine sessions, sources, streams, routes
``engine_drops{reason}``               gauge: what the native engine refused, by reason, summed
                                       over live sessions and routes (a slot's counts go with it);
                                       the route reasons are forwarding decisions (duplicates,
                                       stale SSRCs, too old), not datagrams refused at the port
``media_drops_total{reason}``          counter: every datagram the media port refused since start,
                                       by reason (:data:`callsgw.server.views.MEDIA_DROP_REASONS`):
                                       the UDP mux's, the ICE-lite agents' refused checks, the
                                       transports' gates and SRTP failures (the native engine's
                                       per-session SRTP failures folded in), the engine's
                                       port-wide totals; monotonic, kept past a participant's leave
``ice_tcp_connections``                gauge: ICE-TCP connections open now (issue #18)
``tcp_port_events_total{event}``       counter: what the TCP port's first-bytes front did with each
                                       connection (``tls``, ``other``: handed to HTTPS/WSS; ``ice``)
                                       and why it closed or refused one, and ICE-TCP frames dropped
                                       (:data:`callsgw.server.tcp.FRONT_EVENTS`); absent without ICE-TCP
``cluster_drops_total{reason}``        counter (cluster mode only): sealed cluster messages and
                                       entries this node dropped, by reason
                                       (:data:`callsgw.cluster.seal.DROP_REASONS`: malformed, auth,
                                       bad_payload, stale, future, replay, senders_full)
``cluster_nodes{state}``               gauge (cluster mode only): live nodes in the registry by
                                       state (active, draining), as of the last heartbeat
``cluster_relay_sessions{side}``       gauge (cluster mode only): relayed signaling sessions now,
                                       ``origin`` (the client is here, its call elsewhere) or
                                       ``hosted`` (the call is here, the client reached another node)
``cluster_relay_frames_total{event}``  counter (cluster mode only): relay bus frames ``published``,
                                       ``received``, ``bad_frames``, ``lost`` (Redis refused the
                                       publish) and ``queue_full`` (the session was ended instead)
``records_pending``                    gauge: sessions whose newest security record waits for the
                                       database (buffered during an outage; 0 when all is durable)
``records_written_total``              counter: record versions committed (durable)
``records_dropped_total``              counter: sessions whose record was dropped (buffer full)
``records_write_failures_total``       counter: write attempts the database refused
``process_open_fds``                   gauge: file descriptors the gateway process holds open (Linux)
``asyncio_tasks``                      gauge: asyncio tasks alive on the event loop (``benchmarks/soak.py``)
``process_cpu_seconds_total``          counter: the gateway process's CPU time, user + system (Linux);
                                       ``loadtest run --gateway-metrics`` reads it for a remote gateway
``process_resident_memory_bytes``      gauge: the gateway process's resident memory (Linux)
=====================================  ========================================================

The record-derived counters are totals over the retained security records (at most the most
recent :data:`MAX_RECORDS` sessions; a live session counts with its current
transport counters), so they persist across restarts and may drop when the
retention prune deletes old records, which Prometheus treats as a counter
reset. The database counts the stored ones
(:meth:`callsgw.security.db.RecordStore.record_totals`, one aggregate statement
returning a few rows): a scrape never loads the records, so its memory does not
grow with the records table (it did, and the gateway's RSS kept the peak). Label values come only from the gateway's own policy-bounded names.
"""

from __future__ import annotations

import asyncio
import os

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from callsgw.security.records import FAILURE_REASONS
from callsgw.security.totals import RecordTotals, tally
from callsgw.server import views

MAX_RECORDS = 10_000
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_LABEL_VALUES = 32  # bound on distinct suites/profiles exported (they come from our policy anyway)


class GatewayCollector:
    """Computes every metric from ``app.core`` and ``app.store`` when scraped."""

    def __init__(self, app):
        self.app = app
        self.store = None  # what render() was given to read records from (else app.store)
        self.live = None  # the live records render() was given (else read at scrape time)

    def describe(self):
        return []  # computed at scrape time; nothing to check at registration

    def _totals(self) -> RecordTotals:
        """The record totals: the live sessions' records from memory, the stored ones counted by the
        database (:meth:`~callsgw.security.db.RecordStore.record_totals`, never loaded here)."""
        live = self.live if self.live is not None else live_records(self.app)
        totals = tally(live.values(), LATENCY_BUCKETS)
        store = self.store if self.store is not None else self.app.store
        if store is not None:
            totals = totals + store.record_totals(**totals_read(live))
        return totals

    def collect(self):
        calls = views.calls(self.app)
        g = GaugeMetricFamily("callsgw_calls_live", "Live calls.")
        g.add_metric([], len(calls))
        yield g
        g = GaugeMetricFamily("callsgw_sessions_live", "Live participant sessions.")
        g.add_metric([], sum(len(c.participants) for c in calls))
        yield g

        t = self._totals()
        completed, failed = t.completed, t.failed
        suites: dict[str, int] = {}
        for suite, n in t.suites:
            _bump(suites, suite, n)
        profiles: dict[str, int] = {}
        for profile, n in t.profiles:
            _bump(profiles, profile, n)
        reasons = dict.fromkeys(FAILURE_REASONS, 0)
        for reason, n in t.failures:
            reasons[reason if reason in reasons else "other"] += n
        auth, replays = t.counters["srtp_auth_failures"], t.counters["srtp_replays"]
        packets = {"in": t.counters["packets_in"], "out": t.counters["packets_out"]}
        byte_counts = {"in": t.counters["bytes_in"], "out": t.counters["bytes_out"]}

        m = CounterMetricFamily("callsgw_handshakes", "DTLS handshakes by outcome.", labels=["outcome"])
        m.add_metric(["completed"], completed)
        m.add_metric(["failed"], failed)
        yield m
        m = CounterMetricFamily("callsgw_handshakes_by_suite", "Completed DTLS handshakes by cipher suite.",
                                labels=["suite"])
        for suite, n in sorted(suites.items()):
            m.add_metric([suite], n)
        yield m
        m = CounterMetricFamily("callsgw_srtp_profile", "Sessions by negotiated SRTP profile.", labels=["profile"])
        for profile, n in sorted(profiles.items()):
            m.add_metric([profile], n)
        yield m
        m = CounterMetricFamily("callsgw_session_failures", "Failed sessions by reason.", labels=["reason"])
        for reason, n in reasons.items():
            m.add_metric([reason], n)
        yield m
        m = CounterMetricFamily("callsgw_srtp_auth_failures", "SRTP/SRTCP packets that failed authentication.")
        m.add_metric([], auth)
        yield m
        m = CounterMetricFamily("callsgw_srtp_replays", "SRTP/SRTCP packets refused as replays.")
        m.add_metric([], replays)
        yield m
        m = CounterMetricFamily("callsgw_packets", "SRTP/SRTCP packets received (in) and sent (out).",
                                labels=["direction"])
        for direction, n in packets.items():
            m.add_metric([direction], n)
        yield m
        m = CounterMetricFamily("callsgw_bytes", "Bytes of SRTP/SRTCP packets received (in) and sent (out).",
                                labels=["direction"])
        for direction, n in byte_counts.items():
            m.add_metric([direction], n)
        yield m
        buckets = [(_fmt(bound), n) for bound, n in zip(LATENCY_BUCKETS, t.latency_le)]
        buckets.append(("+Inf", t.latency_count))
        h = HistogramMetricFamily("callsgw_handshake_duration_seconds", "DTLS handshake latency.")
        h.add_metric([], buckets, t.latency_sum)
        yield h
        m = CounterMetricFamily("callsgw_media_drops", "Datagrams the media port refused, by reason.",
                                labels=["reason"])
        for reason, n in views.media_drops(self.app).items():
            m.add_metric([reason], n)
        yield m
        yield from self._ice_tcp()
        yield from self._record_writer()
        yield from self._cluster()
        yield from self._engine()
        yield from self._process()

    def _process(self):
        """This process's open descriptors and the event loop's asyncio tasks (the soak watches them)."""
        try:
            fds = len(os.listdir("/proc/self/fd"))
        except OSError:  # no /proc (not Linux): leave the gauge out
            fds = None
        if fds is not None:
            g = GaugeMetricFamily("callsgw_process_open_fds", "File descriptors this process holds open.")
            g.add_metric([], fds)
            yield g
        usage = _cpu_and_rss()
        if usage is not None:
            m = CounterMetricFamily("callsgw_process_cpu_seconds", "CPU time of the gateway process, user + system.")
            m.add_metric([], usage[0])
            yield m
            g = GaugeMetricFamily("callsgw_process_resident_memory_bytes", "Resident memory of the gateway process.")
            g.add_metric([], usage[1])
            yield g
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # scraped off the event loop: no running loop to count
            return
        g = GaugeMetricFamily("callsgw_asyncio_tasks", "Asyncio tasks alive on the gateway's event loop.")
        g.add_metric([], tasks)
        yield g

    def _ice_tcp(self):
        """The TCP port's first-bytes front and its ICE-TCP connections (callsgw/server/tcp.py)."""
        front = getattr(self.app, "ice_tcp", None)
        if front is None:
            return
        from callsgw.server.tcp import FRONT_EVENTS

        g = GaugeMetricFamily("callsgw_ice_tcp_connections", "ICE-TCP connections open now.")
        g.add_metric([], len(front.connections))
        yield g
        m = CounterMetricFamily("callsgw_tcp_port_events", "TCP port connections by what the first-bytes "
                                "front did, and ICE-TCP frames dropped.", labels=["event"])
        for event in FRONT_EVENTS:
            m.add_metric([event], front.stats[event])
        yield m

    def _record_writer(self):
        """The security record writer (callsgw/security/writer.py): what waits, what is durable."""
        writer = getattr(self.app, "records", None)
        if writer is None:
            return
        stats = writer.stats()
        g = GaugeMetricFamily("callsgw_records_pending", "Sessions whose newest security record waits for the database.")
        g.add_metric([], stats["pending"])
        yield g
        for name, key, text in (("written", "written", "Security record versions committed (durable)."),
                                ("dropped", "dropped", "Sessions whose security record was dropped (buffer full)."),
                                ("write_failures", "failures", "Security record writes the database refused.")):
            m = CounterMetricFamily(f"callsgw_records_{name}", text)
            m.add_metric([], stats[key])
            yield m

    def _cluster(self):
        """Cluster mode only: sealed-message drops and the registry as of the last heartbeat."""
        drops = views.cluster_drops(self.app)
        if drops is None:
            return
        m = CounterMetricFamily("callsgw_cluster_drops", "Sealed cluster messages dropped, by reason.",
                                labels=["reason"])
        for reason, n in drops.items():
            m.add_metric([reason], n)
        yield m
        status = views.cluster_status(self.app) or {"nodes": []}
        g = GaugeMetricFamily("callsgw_cluster_nodes", "Live cluster nodes by state.", labels=["state"])
        for state in ("active", "draining"):
            g.add_metric([state], sum(1 for n in status["nodes"] if n["state"] == state))
        yield g
        relay = status.get("relay")
        if relay is not None:
            g = GaugeMetricFamily("callsgw_cluster_relay_sessions", "Relayed signaling sessions now, by side.",
                                  labels=["side"])
            g.add_metric(["origin"], relay["origin_sessions"])
            g.add_metric(["hosted"], relay["hosted_sessions"])
            yield g
            m = CounterMetricFamily("callsgw_cluster_relay_frames", "Relay bus frames, by event.", labels=["event"])
            for event in ("published", "received", "bad_frames", "lost", "queue_full"):
                m.add_metric([event], relay[f"bus_{event}"])
            yield m

    def _engine(self):
        """The native engine's own counters (numpy arrays read while it runs)."""
        engine = getattr(getattr(self.app, "media", None), "engine", None)
        if engine is None:
            return
        from callsgw._native.engine import ROUTE_COUNTERS, SESSION_COUNTERS

        m = CounterMetricFamily("callsgw_engine_datagrams", "Datagrams read by the native engine.")
        m.add_metric([], engine.totals["datagrams"])
        yield m
        routes = engine.route_counters.sum(axis=0)
        m = GaugeMetricFamily("callsgw_engine_forwarded", "RTP copies the native engine sent on live routes.")
        m.add_metric([], int(routes[ROUTE_COUNTERS.index("packets_out")]))
        yield m
        sessions = engine.session_counters.sum(axis=0)
        m = GaugeMetricFamily("callsgw_engine_drops", "Packets the native engine refused on live sessions "
                              "and routes, by reason.", labels=["reason"])
        for name in ("auth_failures", "replays", "malformed", "srtp_other", "protect_failed", "send_failed"):
            m.add_metric([name], int(sessions[SESSION_COUNTERS.index(name)]))
        for name in ROUTE_COUNTERS[5:]:
            m.add_metric([name], int(routes[ROUTE_COUNTERS.index(name)]))
        m.add_metric(["up_queue_full"], engine.totals["up_overflow"])
        m.add_metric(["oversize"], engine.totals["oversize"])
        yield m
        m = GaugeMetricFamily("callsgw_engine_slots", "Native engine table slots in use.", labels=["table"])
        for table, n in engine.usage().items():
            m.add_metric([table], n)
        yield m


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    if key in counts or len(counts) < MAX_LABEL_VALUES:
        counts[key] = counts.get(key, 0) + n
    else:
        counts["other"] = counts.get("other", 0) + n


def _fmt(bound: float) -> str:
    return repr(float(bound))


def _cpu_and_rss() -> tuple[float, int] | None:
    """This process's CPU seconds (utime + stime) and resident bytes, from /proc; None elsewhere."""
    try:
        times = os.times()
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return times.user + times.system, resident_pages * os.sysconf("SC_PAGE_SIZE")


def registry_for(app) -> CollectorRegistry:
    """The app's own registry (made on first use)."""
    registry = getattr(app, "_callsgw_metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        app._callsgw_metrics_collector = GatewayCollector(app)
        registry.register(app._callsgw_metrics_collector)
        app._callsgw_metrics_registry = registry
    return registry


def live_records(app) -> dict[str, dict]:
    """The live sessions' security records with their current transport counters, by session id."""
    live = {}
    for p in views.live_participants(app):
        record = views.live_record(app, p)
        if record is not None:
            live[record["session_id"]] = record
    return live


def totals_read(live: dict[str, dict]) -> dict:
    """The arguments of the one store read ``/metrics`` makes, given the live records it counts
    from memory (:meth:`~callsgw.security.db.RecordStore.record_totals`)."""
    return {"limit": MAX_RECORDS, "exclude": tuple(live), "buckets": LATENCY_BUCKETS}


def render(app, store=None, live: dict[str, dict] | None = None) -> tuple[bytes, str]:
    """The exposition text and its content type (``store``: read records from it, not ``app.store``;
    ``live``: the :func:`live_records` the store read left out, else read now)."""
    registry = registry_for(app)
    collector = app._callsgw_metrics_collector
    collector.store, collector.live = store, live
    try:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    finally:
        collector.store = collector.live = None

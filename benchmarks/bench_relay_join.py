#!/usr/bin/env python3
"""Relayed-join latency and Redis traffic per join in a two-node cluster (issue #15 item 4).

One invocation starts a private redis-server and a throwaway PostgreSQL (the
same helpers the cluster tests use, from Debian's packages), then two
gateways in this process (node A and node B, cluster mode, everything else at
its defaults but the join rate per address). The call is placed on B. Then,
alternating so that both see the same machine:

* a **same-node** join: a ``callsgw.client`` session connects to B's URL;
* a **relayed** join: it connects to A's URL, and A carries it to B over the
  sealed relay bus.

Each join is timed from the start of ``callsgw.client.connect`` (TCP, TLS,
WebSocket upgrade, ``join`` with a fresh offer) to the ``joined`` answer; the
session then leaves. The client, both nodes and Redis share this machine's
two cores, so the figure that matters is the *difference* of the medians,
measured in the same run.

Redis traffic: a MONITOR connection counts every command Redis is sent during
``--monitor-joins`` relayed joins (one at a time, heartbeats excluded by
counting only the join windows' PUBLISH, GET and SET): the figure is the
commands per join, by command.

    python benchmarks/bench_relay_join.py                 # 40 joins of each kind, about 30 s
    python benchmarks/bench_relay_join.py --joins 100 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr, flush=True)
    if done == total:
        print(file=sys.stderr)


async def run(joins: int, monitor_joins: int) -> dict:
    from callsgw.client import connect
    from callsgw.signaling import tokens
    from tests.cluster.conftest import RedisServer
    from tests.cluster.test_nodes import Monitor
    from tests.security.conftest import _PgCluster
    from tests.signaling.gateway import running_gateway

    work = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    pg = _PgCluster()
    if pg.skip_reason:
        raise SystemExit(f"bench_relay_join: {pg.skip_reason}")
    redis = RedisServer(work / "redis")
    try:
        db = pg.new_database()
        settings = dict(cluster=redis.url, database=db, joins_per_second_per_address=10_000.0)
        async with running_gateway(work / "a", node_id="node-a", **settings) as a, \
                running_gateway(work / "b", node_id="node-b", **settings) as b:
            for node in (a, b):
                await node.cluster.heartbeat()
            assert await b.cluster.place("bench", prefer_self=True) == "node-b"
            secret = b.secrets.current()
            urls = {"same_node": f"wss://127.0.0.1:{b.port}/ws", "relayed": f"wss://127.0.0.1:{a.port}/ws"}
            times: dict[str, list[float]] = {"same_node": [], "relayed": []}
            # a resident participant, so every timed join meets a live call (as real joins do)
            resident = await connect(urls["same_node"], tokens.mint(secret, call="bench", name="resident"), ssl=False)
            try:
                total = 2 * joins
                for i in range(joins):
                    order = ("same_node", "relayed") if i % 2 == 0 else ("relayed", "same_node")
                    for kind in order:
                        token = tokens.mint(secret, call="bench", name=f"{kind[:4]}{i}")
                        start = time.perf_counter()
                        session = await connect(urls[kind], token, ssl=False)
                        times[kind].append((time.perf_counter() - start) * 1000)
                        await session.close()
                        _progress(sum(len(v) for v in times.values()), total, "joins")
                assert "bench" not in a.core.calls and b.core.participant_count >= 1
                # Redis commands per relayed join
                published_before = a.relay.bus.counts["published"] + b.relay.bus.counts["published"]
                monitor = Monitor(redis.port)
                await asyncio.sleep(0.2)
                for i in range(monitor_joins):
                    session = await connect(urls["relayed"], tokens.mint(secret, call="bench", name=f"mon{i}"),
                                            ssl=False)
                    await session.close()
                    await asyncio.sleep(0.1)  # the close frames are published
                seen = monitor.stop()
                published = a.relay.bus.counts["published"] + b.relay.bus.counts["published"] - published_before
            finally:
                await resident.close()
    finally:
        redis.stop()
        pg.stop()
    commands = Counter()
    for line in seen.split(b"\r\n"):
        parts = line.split(b'"')
        if len(parts) > 1:
            commands[parts[1].decode(errors="replace").upper()] += 1
    per_join = {k: round(v / monitor_joins, 2) for k, v in commands.items() if k in ("PUBLISH", "GET", "SET")}

    def summary(values: list[float]) -> dict:
        ordered = sorted(values)
        return {"n": len(values), "median_ms": round(statistics.median(values), 2),
                "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2), "min_ms": round(ordered[0], 2)}

    same, relayed = summary(times["same_node"]), summary(times["relayed"])
    return {
        "same_node": same,
        "relayed": relayed,
        "overhead_median_ms": round(relayed["median_ms"] - same["median_ms"], 2),
        "ratio_median": round(relayed["median_ms"] / same["median_ms"], 3),
        "relay_frames_per_join": round(published / monitor_joins, 2),
        "redis_commands_per_relayed_join": per_join,
        "monitor_joins": monitor_joins,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=40, help="timed joins of each kind (default 40)")
    parser.add_argument("--monitor-joins", type=int, default=10,
                        help="relayed joins whose Redis commands are counted (default 10)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.joins < 1 or args.monitor_joins < 1:
        parser.error("--joins and --monitor-joins must be at least 1")
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(run(args.joins, args.monitor_joins))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for kind in ("same_node", "relayed"):
        r = result[kind]
        print(f"{kind:10s} join -> joined: median {r['median_ms']:.1f} ms  p90 {r['p90_ms']:.1f} ms  "
              f"min {r['min_ms']:.1f} ms  (n={r['n']})")
    print(f"relay overhead: {result['overhead_median_ms']:+.1f} ms at the median "
          f"(relayed/same-node {result['ratio_median']:.2f}x)")
    print(f"relay frames per relayed join and leave: {result['relay_frames_per_join']}; Redis commands per "
          f"relayed join: {result['redis_commands_per_relayed_join']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

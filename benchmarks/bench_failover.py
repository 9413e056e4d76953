#!/usr/bin/env python3
"""Time from SIGKILL of a call's node to restored media, in a two-node cluster (issue #16 item 1).

Each run (``--runs``, default 5) starts a private redis-server, a throwaway PostgreSQL and two
``callsgw serve`` processes, joins a speaker and a listener (``callsgw.client``, each given both
nodes' URLs, so one of them is relayed), kills the node hosting the call with SIGKILL, and times
until the listener hears the speaker again after both joined again (``tests/cluster/failover.py``
describes the path: ``bye`` ``node_lost`` within the registry's 6 s TTL plus one 2 s heartbeat,
a refused resume, a fresh join that places the call on the survivor, ICE and DTLS again).

    python benchmarks/bench_failover.py              # 5 runs, about a minute
    python benchmarks/bench_failover.py --runs 9 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def run(runs: int) -> dict:
    from tests.cluster.conftest import RedisServer
    from tests.cluster.failover import failover_once
    from tests.security.conftest import _PgCluster

    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    pg = _PgCluster()
    if pg.skip_reason:
        raise SystemExit(f"bench_failover: {pg.skip_reason}")
    results = []
    try:
        for i in range(runs):
            redis = RedisServer(work / f"redis{i}")
            try:
                result = await failover_once(work / f"run{i}", redis.url, pg.new_database())
            finally:
                redis.stop()
            results.append(result)
            print(f"run {i + 1}/{runs}: killed {result.killed}, media restored after {result.restored_after:.2f} s "
                  f"(bye {result.bye_reasons})", file=sys.stderr, flush=True)
    finally:
        pg.stop()
    times = [r.restored_after for r in results]
    return {"runs": runs, "restored_after_s": [round(t, 2) for t in times],
            "median_s": round(statistics.median(times), 2), "max_s": round(max(times), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="failovers to time (default 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(run(args.runs))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"SIGKILL -> media restored: median {result['median_s']:.2f} s, max {result['max_s']:.2f} s "
              f"over {result['runs']} runs {result['restored_after_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

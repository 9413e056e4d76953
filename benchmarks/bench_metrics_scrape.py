#!/usr/bin/env python3
"""Memory and time of the records part of a ``/metrics`` scrape, against the records table's size (issue #20 item 2).

The 60-minute soak's RSS crept up by 18 MB/h. The cause: every ``/metrics`` scrape loaded up to
10,000 stored records to count them, and the process kept the peak. This compares, each in a
fresh process on a SQLite store of ``--records`` realistic records:

* ``load``: what a scrape did before, ``store.list(limit=10_000)`` and ``as_dict()`` per record
  (then counted in Python);
* ``aggregate``: what it does now, ``store.record_totals(...)`` (the database counts).

Reported per mode: RSS after ``--scrapes`` scrapes minus RSS before, the tracemalloc peak of one
scrape, and the time of one scrape.

    python benchmarks/bench_metrics_scrape.py                     # 4,000 records, 12 scrapes
    python benchmarks/bench_metrics_scrape.py --records 10000 --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def _records(n: int):
    from callsgw.security.records import Counters, DtlsInfo, IcePair, SessionRecord, SignalingTls

    for i in range(n):
        t = 1.79e9 + i
        yield SessionRecord(
            session_id=f"s{i:08d}", call_id=f"c{i // 5}", participant_id=f"p{i}", participant_name="name",
            joined_at=t, signaling=SignalingTls("TLSv1.3", "TLS_AES_256_GCM_SHA384", "ec", 256, "callsgw.v1"),
            dtls=DtlsInfo("DTLS 1.2", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "server", "AA:" * 32, "BB:" * 32,
                          True, "x25519", t, t + 0.02),
            srtp_profile="AEAD_AES_128_GCM", ice_selected_pair=IcePair("127.0.0.1", 5000, "127.0.0.1", 40000 + i % 1000),
            left_at=t + 60, leave_reason="leave", counters=Counters(3000, 12000, 300000, 1200000, 0, 0),
        )


def child(mode: str, records: int, scrapes: int) -> dict:
    import gc
    import time
    import tracemalloc

    from callsgw.security.db import open_store
    from callsgw.security.totals import tally
    from callsgw.server.metrics import LATENCY_BUCKETS, MAX_RECORDS

    store = open_store(None, Path(tempfile.mkdtemp(prefix="bench-metrics-")))
    store.upsert_many(list(_records(records)))
    gc.collect()

    def scrape():
        if mode == "load":
            return tally([r.as_dict() for r in store.list(limit=MAX_RECORDS)], LATENCY_BUCKETS)
        return store.record_totals(limit=MAX_RECORDS, buckets=LATENCY_BUCKETS)

    before = _rss_mb()
    began = time.perf_counter()
    for _ in range(scrapes):
        totals = scrape()
    per_scrape = (time.perf_counter() - began) / scrapes
    gc.collect()
    after = _rss_mb()
    tracemalloc.start()
    scrape()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert totals.completed == records
    return {"mode": mode, "records": records, "scrapes": scrapes, "rss_before_mb": round(before, 1),
            "rss_after_mb": round(after, 1), "rss_growth_mb": round(after - before, 1),
            "tracemalloc_peak_mb": round(peak / 1e6, 2), "ms_per_scrape": round(per_scrape * 1000, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=4000, help="stored records (default 4000)")
    ap.add_argument("--scrapes", type=int, default=12, help="scrapes per mode (default 12)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--child", choices=("load", "aggregate"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.records, args.scrapes)))
        return 0
    results = []
    for mode in ("load", "aggregate"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--records", str(args.records),
                              "--scrapes", str(args.scrapes)], cwd=REPO, capture_output=True, text=True,
                             check=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        results.append(json.loads(out.stdout))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['mode']:>9}: {r['records']:,} records, {r['scrapes']} scrapes: RSS {r['rss_before_mb']} -> "
                  f"{r['rss_after_mb']} MB ({r['rss_growth_mb']:+} MB), tracemalloc peak of one scrape "
                  f"{r['tracemalloc_peak_mb']} MB, {r['ms_per_scrape']} ms per scrape")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""How long this machine stops a busy CPU: the floor under any latency tail measured here.

One process per CPU (each pinned) spins reading the monotonic clock for
``--seconds`` and records every gap longer than ``--threshold`` between two
consecutive reads. A gap is time the process did not run although it never
blocked: the kernel or, on a virtual machine, the hypervisor took the CPU.

Run it with all CPUs busy (the default) and with one (``--cpus 0``): on the
2-core VM these benchmarks run on, one busy vCPU sees almost no gap, while two
busy vCPUs each lose the CPU for up to 4-13 ms, 0.3-2% of the time. Any
packet that arrives then waits that long, in the gateway or in the tester, so
a p99 below those gaps cannot be measured with both cores loaded.

    python benchmarks/vcpu_stalls.py             # every CPU busy at once
    python benchmarks/vcpu_stalls.py --cpus 0    # one CPU busy
    python benchmarks/vcpu_stalls.py --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time


def spin(cpu: int, seconds: float, threshold: float, out) -> None:
    os.sched_setaffinity(0, {cpu})
    gaps: list[float] = []
    last = start = time.perf_counter()
    end = start + seconds
    while last < end:
        now = time.perf_counter()
        if now - last > threshold:
            gaps.append(now - last)
        last = now
    out.put({
        "cpu": cpu,
        "gaps": len(gaps),
        "stolen_ms": round(sum(gaps) * 1e3, 2),
        "stolen_pct": round(100 * sum(gaps) / seconds, 3),
        "max_ms": round(max(gaps) * 1e3, 2) if gaps else 0.0,
        "largest_ms": sorted(round(g * 1e3, 2) for g in gaps)[-5:],
    })


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="how long each CPU spins (default 5)")
    ap.add_argument("--threshold", type=float, default=0.0005, help="smallest gap recorded, s (default 0.0005)")
    ap.add_argument("--cpus", type=str, default=None, help="comma-separated CPUs to load (default all)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0)) if args.cpus is None else [int(c) for c in args.cpus.split(",")]
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=spin, args=(c, args.seconds, args.threshold, out)) for c in cpus]
    for p in procs:
        p.start()
    results = sorted((out.get() for _ in procs), key=lambda r: r["cpu"])
    for p in procs:
        p.join()
    if args.json:
        print(json.dumps({"seconds": args.seconds, "threshold_s": args.threshold, "cpus": results}, indent=2))
    else:
        print(f"{len(cpus)} CPU(s) spinning for {args.seconds:g} s; gaps over {args.threshold * 1e3:g} ms:")
        for r in results:
            print(f"  cpu {r['cpu']}: {r['gaps']} gaps, {r['stolen_ms']} ms lost ({r['stolen_pct']}%), "
                  f"largest {r['largest_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

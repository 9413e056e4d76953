#!/usr/bin/env python3
"""Memory per held TLS (WSS) connection, and what is given back after they close (issue #20 item 5).

Starts ``callsgw serve`` (defaults, but ``--join-timeout 300`` so that connections that never
join are held, and ``--max-connections`` above ``--connections``), reads its RSS from
``/proc/PID/status``, then:

1. opens ``--connections`` WSS connections (TLS handshake and WebSocket upgrade, no join) and
   holds them: RSS per connection = (RSS held - RSS before) / connections;
2. closes them all and waits ``--settle`` seconds: RSS after, and how much of the growth was
   given back.

``--rounds`` repeats 1-2 to tell a plateau from growth. Run it inside ``unshare -n`` (loopback).

    python benchmarks/bench_tls_memory.py                       # 500 connections, 3 rounds
    python benchmarks/bench_tls_memory.py --connections 700 --rounds 2 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE).group(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def hold(port: int, count: int) -> list:
    import websockets

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    sockets = []
    for start in range(0, count, 50):
        batch = [websockets.connect(f"wss://127.0.0.1:{port}/ws", ssl=ctx, subprotocols=["callsgw.v1"],
                                    open_timeout=30, ping_interval=None, compression=None)
                 for _ in range(min(50, count - start))]
        sockets += await asyncio.gather(*batch)
        print(f"\r  open {len(sockets)}/{count}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return sockets


async def run(connections: int, rounds: int, settle: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-tls-mem-"))
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "callsgw", "serve", "--data-dir", str(work / "data"), "--listen", "127.0.0.1",
         "--port", str(port), "--media-host", "127.0.0.1", "--media-port", "0", "--ice-host", "127.0.0.1",
         "--join-timeout", "300", "--max-connections", str(connections + 100), "--shutdown-grace", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        proc.stdout.readline()
        await asyncio.sleep(1.0)
        warm = await hold(port, 20)  # first use of TLS and websockets paths, not counted
        for ws in warm:
            await ws.close()
        await asyncio.sleep(settle)
        out = {"connections": connections, "rss_start_kib": rss_kib(proc.pid), "rounds": []}
        for r in range(rounds):
            before = rss_kib(proc.pid)
            sockets = await hold(port, connections)
            await asyncio.sleep(1.0)
            held = rss_kib(proc.pid)
            await asyncio.gather(*(ws.close() for ws in sockets))
            await asyncio.sleep(settle)
            after = rss_kib(proc.pid)
            row = {"before_kib": before, "held_kib": held, "after_kib": after,
                   "per_connection_kib": round((held - before) / connections, 1),
                   "given_back_percent": round(100 * (held - after) / max(1, held - before), 1)}
            out["rounds"].append(row)
            print(f"round {r + 1}: RSS {before / 1024:.1f} -> {held / 1024:.1f} MiB with {connections} held "
                  f"({row['per_connection_kib']} KiB each) -> {after / 1024:.1f} MiB after closing "
                  f"({row['given_back_percent']}% given back)", file=sys.stderr, flush=True)
        out["rss_end_kib"] = rss_kib(proc.pid)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=500, help="WSS connections held per round (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="open/close rounds (default 3)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after closing (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.connections < 1 or args.rounds < 1:
        parser.error("--connections and --rounds must be at least 1")
    result = asyncio.run(run(args.connections, args.rounds, args.settle))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        per = [r["per_connection_kib"] for r in result["rounds"]]
        print(f"per held WSS connection: {per} KiB; RSS start {result['rss_start_kib'] / 1024:.1f} MiB, "
              f"end {result['rss_end_kib'] / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Forwarding throughput of the gateway: real SRTP through a real GatewayApp on loopback.

The gateway runs in a child process (this script re-run with a private
``--_gateway`` flag) pinned to one CPU, so its CPU time (utime + stime from
``/proc/<pid>/stat``) and RSS (``VmRSS`` from ``/proc/<pid>/status``) belong
to the gateway alone. The tester (this process) is pinned to another CPU. It
opens P calls; in each, one publisher (``callsgw.client.connect``, voice and
screen share) and N subscribers (``publish_voice=False``), all over
``wss://127.0.0.1`` and ICE/DTLS-SRTP like any client. After a probe phase
(until every subscriber receives both tracks, i.e. the gateway's
renegotiation is done) each publisher sends RTP at a paced offered rate:
160-byte payloads on the voice track (PT 111) or 1200-byte payloads on the
screen-share track (PT 96). Every payload starts with the send time
(``perf_counter_ns``, same host and clock), a step id and a sequence number;
receivers count packets and the send-to-receive delay.

Reported per step: offered packets/s (sent into the gateway), forwarded
packets/s (received by all subscribers / send duration), loss, p50/p99
latency, gateway CPU seconds per million forwarded packets, gateway RSS,
and the tester's CPU use (a step where the tester is near a full core is
flagged: there the tester, not the gateway, may be the limit).

Rates: by default a short ramp per cell, the offered rate multiplied by
``--factor`` from ``--start-rate`` until loss exceeds 1% (or the tester runs
out of CPU, or ``--max-steps``); the cell's "max" is the best forwarded rate
with loss <= 1%. ``--rate R`` instead runs one step at R packets/s offered.

``--path`` selects the gateway's forwarding path. Today the only value is
``python`` (asyncio datagrams and the per-packet ``callsgw.srtp`` API); the
native engine of issue 6 will add ``native`` and the option will accept both
in one run for the same-run comparison.

Latency is end to end through the tester: it includes the tester's own SRTP
protect/unprotect and asyncio scheduling (senders are paced in ~1 ms ticks),
so it is an upper bound on what the gateway adds.

    python benchmarks/bench_forward.py                 # full ramp: N=1,4 x 160,1200 B (a few minutes)
    python benchmarks/bench_forward.py --quick         # N=1,4 at 160 B, 1 s steps (~20 s)
    python benchmarks/bench_forward.py --rate 5000     # one fixed offered load per cell
    python benchmarks/bench_forward.py --json          # machine-readable
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from callsgw.client import RtpReceived

PATHS = ("python",)  # "native" joins when the engine exists (issue 6)
KINDS = {160: ("voice", 111, 960), 1200: ("screen", 96, 3000)}  # payload -> track, PT, timestamp step
STAMP = struct.Struct("!QII")  # send time ns, step id, sequence
LOSS_LIMIT = 0.01
TESTER_BUSY = 0.9  # tester CPU share of one core above which a step is flagged


# -- machine and /proc ------------------------------------------------------------


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release()}


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the gateway child --------------------------------------------------------------


def gateway_child(data_dir: str, cpu: int, path: str) -> None:
    """Run a GatewayApp on 127.0.0.1 (ports 0); print its ports as one JSON line; stop on stdin EOF."""
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    logging.basicConfig(level=logging.WARNING)
    from callsgw.config import Config
    from callsgw.server.app import GatewayApp

    assert path == "python", path  # the only forwarding path there is today

    async def run():
        config = Config(
            data_dir=Path(data_dir), listen_host="127.0.0.1", port=0, media_host="127.0.0.1", media_port=0,
            ice_host="127.0.0.1", shutdown_grace=0.5, joins_per_second_per_address=10_000.0,
            max_participants_per_call=1000,
        )
        app = GatewayApp(config)
        await app.start()
        print(json.dumps({"port": app.port, "media_port": app.media_port, "pid": os.getpid()}), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes the pipe
        await app.stop()

    asyncio.run(run())


class Gateway:
    def __init__(self, cpu: int, path: str):
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-forward-")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_gateway", self.tmp.name, str(cpu), path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise SystemExit("the gateway child did not start")
        info = json.loads(line)
        self.port = info["port"]
        self.pid = self.proc.pid
        from callsgw.datadir import DataDir

        self.secret = DataDir(Path(self.tmp.name)).api_secret()

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss(self) -> float:
        return proc_rss_mb(self.pid)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.tmp.cleanup()


# -- tester side ------------------------------------------------------------------------


def rtp_payload_offset(packet: bytes) -> int:
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        offset += 4 + 4 * struct.unpack_from("!H", packet, offset + 2)[0]
    return offset


class Receiver:
    """Counts the packets of the current step and their delay; sees every RTP event of one subscriber."""

    def __init__(self, session):
        self.step = -1
        self.count = 0
        self.latency: list[int] = []
        self.pts: set[int] = set()
        media = session._media  # the MediaChannel: take its RTP events before the bounded queue
        original = media.on_event

        def on_event(event):
            if isinstance(event, RtpReceived):
                self.on_rtp(event.packet)
            else:
                original(event)

        media.on_event = on_event

    def on_rtp(self, packet: bytes) -> None:
        now = time.perf_counter_ns()
        self.pts.add(packet[1] & 0x7F)
        try:
            sent, step, _seq = STAMP.unpack_from(packet, rtp_payload_offset(packet))
        except struct.error:
            return
        if step == self.step:
            self.count += 1
            self.latency.append(now - sent)


class Publisher:
    def __init__(self, session):
        self.session = session
        self.seq = {"voice": 0, "screen": 0}
        self.ts = {"voice": 0, "screen": 0}

    def send(self, size: int, payload: bytes) -> bool:
        kind, pt, step = KINDS[size]
        seq = self.seq[kind]
        self.seq[kind] = seq + 1
        self.ts[kind] = (self.ts[kind] + step) & 0xFFFFFFFF
        header = struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, self.ts[kind], 0)
        fn = self.session.send_voice if kind == "voice" else self.session.send_screen
        return fn(header + payload)


class Cell:
    """P calls of 1 publisher + N subscribers each, connected and routed."""

    def __init__(self, gateway: Gateway, publishers: int, fanout: int):
        self.gateway = gateway
        self.p = publishers
        self.n = fanout
        self.pubs: list[Publisher] = []
        self.subs: list[Receiver] = []
        self.sessions = []
        self.step_id = 0

    async def open(self, timeout: float = 30) -> None:
        from callsgw.client import connect
        from callsgw.signaling import tokens

        url = f"wss://127.0.0.1:{self.gateway.port}/ws"
        tag = os.urandom(4).hex()
        for c in range(self.p):
            call = f"bench-{tag}-{c}"
            pub = await connect(url, tokens.mint(self.gateway.secret, call=call, name="pub"), ssl=False,
                                publish_screen=True)
            self.sessions.append(pub)
            self.pubs.append(Publisher(pub))
            for s in range(self.n):
                sub = await connect(url, tokens.mint(self.gateway.secret, call=call, name=f"sub{s}"), ssl=False,
                                    publish_voice=False)
                self.sessions.append(sub)
                self.subs.append(Receiver(sub))
        for s in self.sessions:
            await s.wait_connected(timeout=timeout)
        # probe until every subscriber gets both tracks (the gateway's renegotiation is done)
        filler = bytes(max(0, 160 - STAMP.size))
        async with asyncio.timeout(timeout):
            while not all({111, 96} <= r.pts for r in self.subs):
                for pub in self.pubs:
                    probe = STAMP.pack(time.perf_counter_ns(), 0xFFFFFFFF, 0) + filler
                    pub.send(160, probe)
                    pub.send(1200, probe)
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)

    async def close(self) -> None:
        for s in self.sessions:
            try:
                await s.close()
            except Exception:
                pass

    async def step(self, size: int, offered: float, duration: float) -> dict:
        self.step_id += 1
        step_id = self.step_id
        for r in self.subs:
            r.step, r.count, r.latency = step_id, 0, []
        filler = bytes(size - STAMP.size)
        per_pub = offered / self.p
        gw = self.gateway
        cpu0, tcpu0 = gw.cpu(), self_cpu_seconds()
        t0 = time.perf_counter()
        sent = 0  # per publisher
        refused = 0
        while True:
            elapsed = time.perf_counter() - t0
            if elapsed >= duration:
                break
            due = int(per_pub * elapsed) - sent
            for _ in range(due):
                payload = STAMP.pack(time.perf_counter_ns(), step_id, sent) + filler
                for pub in self.pubs:
                    if not pub.send(size, payload):
                        refused += 1
                sent += 1
            await asyncio.sleep(0.001)
        send_time = time.perf_counter() - t0
        tcpu_send = self_cpu_seconds() - tcpu0
        # drain: until counts stop moving for 0.3 s (at most 3 s)
        last, still_since = -1, time.perf_counter()
        deadline = time.perf_counter() + 3
        while time.perf_counter() < deadline:
            total = sum(r.count for r in self.subs)
            if total != last:
                last, still_since = total, time.perf_counter()
            elif time.perf_counter() - still_since > 0.3:
                break
            await asyncio.sleep(0.05)
        gw_cpu = gw.cpu() - cpu0
        received = sum(r.count for r in self.subs)
        expected = sent * self.p * self.n
        lat = np.concatenate([np.asarray(r.latency, dtype=np.int64) for r in self.subs]) if received else None
        for r in self.subs:
            r.step, r.latency = -1, []
        forwarded_pps = received / send_time
        return {
            "payload": size, "publishers": self.p, "fanout": self.n, "duration_s": round(send_time, 3),
            "offered_pps": round(sent * self.p / send_time), "forwarded_pps": round(forwarded_pps),
            "sent": sent * self.p, "send_refused": refused, "expected": expected, "received": received,
            "loss_pct": round(100 * (1 - received / expected), 3) if expected else 0.0,
            "latency_p50_ms": round(float(np.percentile(lat, 50)) / 1e6, 3) if received else None,
            "latency_p99_ms": round(float(np.percentile(lat, 99)) / 1e6, 3) if received else None,
            "gateway_cpu_s": round(gw_cpu, 3),
            "gateway_cpu_share": round(gw_cpu / send_time, 3),
            "gateway_cpu_s_per_mpkt": round(gw_cpu / received * 1e6, 2) if received else None,
            "gateway_rss_mb": round(gw.rss(), 1),
            "tester_cpu_share": round(tcpu_send / send_time, 3),
            "tester_bound": tcpu_send / send_time > TESTER_BUSY,
        }


async def run_cell(gateway, args, fanout: int, sizes, log) -> list[dict]:
    cell = Cell(gateway, args.publishers, fanout)
    results = []
    try:
        await cell.open()
        for size in sizes:
            rates = [args.rate] if args.rate else [args.start_rate * args.factor**k for k in range(args.max_steps)]
            for rate in rates:
                r = await cell.step(size, rate, args.duration)
                r["path"] = args.path
                results.append(r)
                log(f"  N={fanout} {size:>4} B offered {r['offered_pps']:>7,}/s forwarded {r['forwarded_pps']:>7,}/s "
                    f"loss {r['loss_pct']:6.2f}% gw {r['gateway_cpu_share']:.2f} core tester "
                    f"{r['tester_cpu_share']:.2f} core")
                if r["loss_pct"] > 100 * LOSS_LIMIT or r["tester_bound"]:
                    break
                await asyncio.sleep(0.2)
    finally:
        await cell.close()
    return results


def limit(last: dict) -> str:
    """Why a cell's ramp ended, from its last step."""
    if last["loss_pct"] > 100 * LOSS_LIMIT:
        return "loss, gateway CPU-bound" if last["gateway_cpu_share"] >= 0.95 else "loss"
    return "tester CPU" if last["tester_bound"] else "steps (raise --max-steps)"


def summarize(results) -> list[dict]:
    cells: dict = {}
    for r in results:
        cells.setdefault((r["path"], r["payload"], r["fanout"]), []).append(r)
    out = []
    for (path, size, fanout), steps in cells.items():
        ok = [s for s in steps if s["loss_pct"] <= 100 * LOSS_LIMIT]
        best = max(ok, key=lambda s: s["forwarded_pps"]) if ok else None
        out.append({
            "path": path, "payload": size, "fanout": fanout,
            "max_forwarded_pps": best["forwarded_pps"] if best else None,
            "at_offered_pps": best["offered_pps"] if best else None,
            "gateway_cpu_s_per_mpkt": best["gateway_cpu_s_per_mpkt"] if best else None,
            "gateway_pps_per_core": round(best["forwarded_pps"] / best["gateway_cpu_share"])
            if best and best["gateway_cpu_share"] else None,
            "tester_bound": any(s["tester_bound"] for s in steps),
            "limited_by": limit(steps[-1]),
        })
    return out


async def bench(args, log) -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    gw_cpu = args.gateway_cpu if args.gateway_cpu is not None else cpus[0]
    tester_cpu = args.tester_cpu if args.tester_cpu is not None else cpus[-1]
    if gw_cpu == tester_cpu and len(cpus) > 1:
        tester_cpu = next(c for c in cpus if c != gw_cpu)
    os.sched_setaffinity(0, {tester_cpu})
    sizes = (160,) if args.quick else (160, 1200)
    if args.payload:
        sizes = tuple(args.payload)
    gateway = Gateway(gw_cpu, args.path)
    results = []
    try:
        rss_start = gateway.rss()
        for fanout in args.fanout:
            log(f"[{args.path}] {args.publishers} publisher(s) x {fanout} subscriber(s)")
            results += await run_cell(gateway, args, fanout, sizes, log)
        rss_end = gateway.rss()
    finally:
        gateway.close()
    return {
        "machine": machine(), "path": args.path, "gateway_cpu": gw_cpu, "tester_cpu": tester_cpu,
        "publishers": args.publishers, "step_duration_s": args.duration,
        "gateway_rss_start_mb": round(rss_start, 1), "gateway_rss_end_mb": round(rss_end, 1),
        "results": results, "summary": summarize(results),
    }


def print_table(report) -> None:
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, Linux {m['kernel']}")
    print(f"path {report['path']}: gateway pinned to CPU {report['gateway_cpu']}, tester to CPU "
          f"{report['tester_cpu']}; {report['publishers']} publisher(s), {report['step_duration_s']} s per step")
    print(f"gateway RSS {report['gateway_rss_start_mb']} MB at start, {report['gateway_rss_end_mb']} MB at end")
    print()
    header = (f"{'path':<7}{'size':>5}{'N':>3}{'offered/s':>11}{'fwd/s':>10}{'loss%':>8}{'p50 ms':>8}"
              f"{'p99 ms':>8}{'gw core':>8}{'gw s/Mpkt':>10}{'RSS MB':>8}{'tester':>8}")
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        p50 = "-" if r["latency_p50_ms"] is None else f"{r['latency_p50_ms']:.2f}"
        p99 = "-" if r["latency_p99_ms"] is None else f"{r['latency_p99_ms']:.2f}"
        per = "-" if r["gateway_cpu_s_per_mpkt"] is None else f"{r['gateway_cpu_s_per_mpkt']:.1f}"
        flag = "*" if r["tester_bound"] else " "
        print(f"{r['path']:<7}{r['payload']:>5}{r['fanout']:>3}{r['offered_pps']:>11,}{r['forwarded_pps']:>10,}"
              f"{r['loss_pct']:>8.2f}{p50:>8}{p99:>8}{r['gateway_cpu_share']:>8.2f}{per:>10}"
              f"{r['gateway_rss_mb']:>8.1f}{r['tester_cpu_share']:>7.2f}{flag}")
    print()
    print("summary (best step with loss <= 1%):")
    for s in report["summary"]:
        mx = "-" if s["max_forwarded_pps"] is None else f"{s['max_forwarded_pps']:,}/s"
        per_core = "-" if s["gateway_pps_per_core"] is None else f"{s['gateway_pps_per_core']:,}/s"
        print(f"  {s['path']:<7}{s['payload']:>5} B N={s['fanout']}: forwarded {mx} "
              f"({per_core} per gateway core, {s['gateway_cpu_s_per_mpkt']} s CPU per million); "
              f"ramp ended by {s['limited_by']}")
    print()
    print("gw core = gateway CPU seconds / send seconds; tester = the same for this process; '*' = tester")
    print("above 90% of a core (the tester may be the limit). Latency is end to end through the tester.")


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--_gateway":  # internal: the gateway child process
        gateway_child(argv[1], int(argv[2]), argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", choices=PATHS, default="python",
                    help="gateway forwarding path; only 'python' exists today (native engine: issue 6)")
    ap.add_argument("--quick", action="store_true", help="160 B only, 1 s steps, fewer steps")
    ap.add_argument("--publishers", type=int, default=2, help="P: calls, one publisher each (default 2)")
    ap.add_argument("--fanout", type=int, nargs="+", default=[1, 4], help="N: subscribers per publisher (1 4)")
    ap.add_argument("--payload", type=int, nargs="+", choices=sorted(KINDS), default=None,
                    help="payload sizes (default 160 1200; quick 160)")
    ap.add_argument("--rate", type=float, default=None, help="one fixed offered load (packets/s into the gateway)")
    ap.add_argument("--start-rate", type=float, default=None, help="first ramp step (default 2000/s)")
    ap.add_argument("--factor", type=float, default=None, help="ramp multiplier (default 1.5, quick 2)")
    ap.add_argument("--max-steps", type=int, default=None, help="ramp steps per cell (default 10, quick 5)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per step (default 3, quick 1)")
    ap.add_argument("--gateway-cpu", type=int, default=None, help="CPU for the gateway (default the first)")
    ap.add_argument("--tester-cpu", type=int, default=None, help="CPU for the tester (default the last)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = ap.parse_args(argv)
    if args.start_rate is None:
        args.start_rate = 2000.0
    if args.factor is None:
        args.factor = 2.0 if args.quick else 1.5
    if args.max_steps is None:
        args.max_steps = 5 if args.quick else 10
    if args.duration is None:
        args.duration = 1.0 if args.quick else 3.0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report = asyncio.run(bench(args, log))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Join storm: what 100 participants joining at once next door do to a steady call (issue 14).

For each media engine (``--engines``, by default the in-loop native engine, the
native engine on its own thread and the Python path), in one invocation:

1. a gateway (``callsgw serve --media-engine E --joins-per-second 1000``, every
   other setting at its default) is started, pinned to CPU 0 when the machine
   has two or more;
2. the **control** run: a steady call of ``--steady-calls`` x 5 voice
   participants (``loadtest run``, pinned to CPU 1) for ``--duration`` seconds,
   nobody else;
3. the **storm** run: the same steady call; ``--storm-at`` seconds after it
   started, a second ``loadtest run`` joins ``--storm`` participants at once
   (``--ramp-up 0``, calls of 5) for ``--storm-duration`` seconds, then they
   leave;
4. from the steady run's JSON report: the one-way delay p95 of every
   one-second window of its timeline (``delay_p95_ms``), its RFC 3550 jitter
   per window (``mean_jitter_ms``), and the run's p99 and maximum delay
   (``totals.delay_ms``).

Printed per engine: the worst one-second p95 (and when), the run's p99 and
maximum, with and without the storm, and the jitter quiet vs during the storm.
Issue 14's targets for the threaded engine: every window's p95 <= 5 ms, the
run's p99 <= 10 ms. ``--plot DIR`` writes ``join_storm.png`` (per-second p95
delay and jitter over time, the storm shaded, one line per engine and run).

This VM stalls busy vCPUs for milliseconds (``benchmarks/vcpu_stalls.py``):
compare engines within one invocation, not across machines.

    python benchmarks/bench_join_storm.py                          # three engines, about 4 minutes
    python benchmarks/bench_join_storm.py --engines native-thread,native --plot /tmp/storm
    python benchmarks/bench_join_storm.py --storm 40 --duration 25 --storm-at 8 --storm-duration 8 --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("native", "native-thread", "python")


def default_capture() -> Path:
    for base in (ROOT.parent / "shared" / "captures", ROOT / "captures"):
        if (base / "opus_voice_10s.pcap").exists():
            return base / "opus_voice_10s.pcap"
    return ROOT / "captures" / "opus_voice_10s.pcap"


def pin(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def serve(engine: str, data: Path, cpu: int | None) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
    proc = subprocess.Popen(
        [*pin(cpu), sys.executable, "-m", "callsgw", "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
         "--port", "0", "--media-host", "127.0.0.1", "--media-port", "0", "--ice-host", "127.0.0.1",
         "--shutdown-grace", "0", "--joins-per-second", "1000", "--media-engine", engine],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            found = re.search(r"callsgw is serving: open https://127\.0\.0\.1:(\d+)/", line)
            if found:
                return proc, int(found.group(1))
    proc.kill()
    raise RuntimeError(f"callsgw serve --media-engine {engine} did not start")


def loadtest(port: int, data: Path, capture: Path, calls: int, duration: float, ramp: float, out: Path | None,
             cpu: int | None) -> subprocess.Popen:
    argv = [*pin(cpu), sys.executable, "-m", "callsgw", "loadtest", "run", "--url", f"wss://127.0.0.1:{port}/ws",
            "--data-dir", str(data), "--calls", str(calls), "--participants-per-call", "5",
            "--capture", str(capture), "--duration", str(duration), "--ramp-up", str(ramp), "--insecure",
            "--gateway-pid", "none"]
    if out is not None:
        argv += ["--json", str(out)]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def steady_figures(report: dict, storm: tuple[float, float] | None) -> dict:
    timeline = report.get("timeline") or []
    windows = [(p["t"], p.get("delay_p95_ms"), p.get("mean_jitter_ms")) for p in timeline]
    p95s = [(t, v) for t, v, _ in windows if v is not None]
    worst = max(p95s, key=lambda x: x[1]) if p95s else (None, None)
    delay = (report.get("totals") or {}).get("delay_ms") or {}

    def jitter_in(lo: float, hi: float):
        values = [j for t, _, j in windows if j is not None and lo <= t < hi]
        return round(sum(values) / len(values), 3) if values else None

    quiet_end = storm[0] if storm else float("inf")
    out = {
        "windows": [{"t": t, "delay_p95_ms": v, "mean_jitter_ms": j} for t, v, j in windows],
        "worst_window_p95_ms": worst[1], "worst_window_t": worst[0],
        "windows_over_5ms": sum(1 for _, v in p95s if v > 5.0),
        "p99_ms": delay.get("p99"), "max_ms": delay.get("max"), "p95_ms": delay.get("p95"),
        "loss_percent": (report.get("totals") or {}).get("loss_percent"),
        "jitter_quiet_ms": jitter_in(2.0, quiet_end),
    }
    if storm:
        out["jitter_storm_ms"] = jitter_in(storm[0], storm[1] + 2.0)
    return out


def run_engine(engine: str, args, work: Path) -> dict:
    gateway_cpu, tester_cpu = (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)
    data = work / engine / "data"
    data.mkdir(parents=True)
    proc, port = serve(engine, data, gateway_cpu)
    result: dict = {"engine": engine}
    try:
        if args.control:
            out = work / engine / "control.json"
            loadtest(port, data, args.capture, args.steady_calls, args.duration, 20, out, tester_cpu).wait()
            result["control"] = steady_figures(json.loads(out.read_text()), None)
            time.sleep(2)
        out = work / engine / "steady.json"
        steady = loadtest(port, data, args.capture, args.steady_calls, args.duration, 20, out, tester_cpu)
        time.sleep(args.storm_at)
        storm = loadtest(port, data, args.capture, max(1, args.storm // 5), args.storm_duration, 0, None, tester_cpu)
        storm.wait()
        steady.wait()
        window = (args.storm_at, args.storm_at + args.storm_duration + 2.0)  # join, hold, leave
        result["storm"] = steady_figures(json.loads(out.read_text()), window)
        result["storm"]["storm_window_s"] = list(window)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return result


def plot(results: list[dict], path: Path, storm_at: float, storm_duration: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for r in results:
        for run, style in (("storm", "-"), ("control", ":")):
            figures = r.get(run)
            if not figures:
                continue
            w = [x for x in figures["windows"] if x["delay_p95_ms"] is not None]
            ax1.plot([x["t"] for x in w], [x["delay_p95_ms"] for x in w], style, label=f"{r['engine']} ({run})")
            j = [x for x in figures["windows"] if x["mean_jitter_ms"] is not None]
            ax2.plot([x["t"] for x in j], [x["mean_jitter_ms"] for x in j], style, label=f"{r['engine']} ({run})")
    for ax in (ax1, ax2):
        ax.axvspan(storm_at, storm_at + storm_duration + 2.0, color="grey", alpha=0.15)
    ax1.axhline(5.0, color="red", linewidth=0.8, linestyle="--")
    ax1.set_yscale("log")
    ax1.set_ylabel("steady call: p95 one-way delay per second (ms)")
    ax2.set_ylabel("steady call: RFC 3550 jitter (ms)")
    ax2.set_xlabel("seconds since the steady call started (storm shaded)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    path.mkdir(parents=True, exist_ok=True)
    fig.savefig(path / "join_storm.png", dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated media engines")
    parser.add_argument("--steady-calls", type=int, default=2, help="calls of 5 in the steady run (default 2)")
    parser.add_argument("--storm", type=int, default=100, help="participants joining at once (calls of 5)")
    parser.add_argument("--duration", type=float, default=40.0, help="steady run length, seconds")
    parser.add_argument("--storm-at", type=float, default=15.0, help="storm start, seconds into the steady run")
    parser.add_argument("--storm-duration", type=float, default=15.0, help="how long the storm's participants stay")
    parser.add_argument("--no-control", dest="control", action="store_false", help="skip the run without a storm")
    parser.add_argument("--capture", type=Path, default=default_capture(), help="the voice capture to replay")
    parser.add_argument("--plot", type=Path, default=None, metavar="DIR", help="write DIR/join_storm.png")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if any(e not in ENGINES for e in engines):
        parser.error(f"--engines: choose from {', '.join(ENGINES)}")
    if not args.capture.exists():
        parser.error(f"--capture {args.capture} does not exist")
    results = []
    with tempfile.TemporaryDirectory(prefix="callsgw-storm-") as tmp:
        for engine in engines:
            print(f"== {engine}", file=sys.stderr, flush=True)
            try:
                results.append(run_engine(engine, args, Path(tmp)))
            except Exception as exc:  # one engine failing does not lose the others
                results.append({"engine": engine, "error": str(exc)})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(f"steady call {args.steady_calls} x 5 voice; storm {args.storm} at {args.storm_at:.0f} s for "
              f"{args.storm_duration:.0f} s; delay = one-way, tester -> gateway -> tester")
        print(f"{'engine':15} {'run':8} {'worst 1s p95':>13} {'at':>5} {'>5ms wins':>9} {'p99':>8} {'max':>8} "
              f"{'jitter quiet':>12} {'jitter storm':>12} {'loss %':>7}")
        for r in results:
            if "error" in r:
                print(f"{r['engine']:15} failed: {r['error']}")
                continue
            for run in ("control", "storm"):
                f = r.get(run)
                if not f:
                    continue

                def num(v, fmt="{:.2f}"):
                    return fmt.format(v) if v is not None else "-"

                print(f"{r['engine']:15} {run:8} {num(f['worst_window_p95_ms']):>13} {num(f['worst_window_t'], '{:.0f}'):>5}"
                      f" {f['windows_over_5ms']:>9} {num(f['p99_ms']):>8} {num(f['max_ms']):>8}"
                      f" {num(f['jitter_quiet_ms'], '{:.3f}'):>12} {num(f.get('jitter_storm_ms'), '{:.3f}'):>12}"
                      f" {num(f['loss_percent'], '{:.3f}'):>7}")
    if args.plot:
        plot([r for r in results if "error" not in r], args.plot, args.storm_at, args.storm_duration)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Gateway CPU per forwarded packet at ordinary load, next to the kernel floor, in one run (issue #14).

The shape of an ordinary meeting load: ``--calls`` (4) calls of ``--participants`` (5) voice
participants, everyone publishing Opus at 50 packets/s and hearing the other four: 1,000
packets/s in and 4,000 forwarded out. Two measurements, one after the other, in one invocation:

1. **The floor.** ``benchmarks/floor_fanout.c`` (built here with gcc) is a bare fan-out: one UDP
   socket, a blocking ``recvmmsg`` (MSG_WAITFORONE) and one ``sendmmsg`` of 4 copies per
   datagram. It is fed the same 1,000 packets/s of 160 bytes, spread over 20 senders as the
   calls' publishers would be. Its CPU time (``/proc/PID/stat`` utime+stime) over the packets
   it forwarded is what any forwarder pays on this kernel at this load. The packets are spaced
   evenly (one every millisecond), as 20 publishers with independent 20 ms phases arrive: one
   datagram per wakeup, the case the issue measured (5.8-6.6 µs then).
2. **The gateway.** ``callsgw serve`` (defaults: the native engine on its own thread), and
   ``callsgw loadtest run`` with the real protocol (signaling, ICE, DTLS, SRTP; the Opus capture
   from ``../shared/captures``) for ``--duration`` seconds with ``--gateway-pid``: the loadtest's
   own figure, gateway CPU over the packets the testers received, from the second every
   participant was connected.

Both forwarders are pinned to CPU 0 and their feeders to the last CPU (``taskset``). Reported:
µs per forwarded packet for each, and their ratio (issue #14's target: at most 1.5).

    python benchmarks/bench_ordinary.py                  # 30 s each, about 1.5 minutes
    python benchmarks/bench_ordinary.py --duration 60 --runs 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTURE = ROOT.parent / "shared" / "captures" / "opus_voice_10s.pcap"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def _free_udp_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _drain(receivers) -> int:
    """Datagrams waiting on the (non-blocking) receivers, read and counted."""
    count = 0
    for r in receivers:
        while True:
            try:
                r.recv(2048)
                count += 1
            except BlockingIOError:
                break
    return count


def floor(duration: float, calls: int, participants: int, work: Path) -> dict:
    """The bare fan-out at the same load; µs of its CPU per forwarded packet."""
    binary = work / "floor_fanout"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "benchmarks" / "floor_fanout.c")], check=True)
    fanout = participants - 1
    rate = 50 * calls * participants
    port, *dests = _free_udp_ports(1 + fanout)
    receivers = []
    for d in dests:
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        r.bind(("127.0.0.1", d))
        r.setblocking(False)
        receivers.append(r)
    proc = subprocess.Popen([*_pin(0), str(binary), str(port), *map(str, dests)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    if _pin(1):
        os.sched_setaffinity(0, {(os.cpu_count() or 2) - 1})
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(calls * participants)]
    payload = bytes([0x80, 111]) + bytes(158)
    received = 0
    began = time.monotonic()
    cpu0 = cpu_seconds(proc.pid)
    sent = 0
    next_at = began
    gap = 1.0 / rate  # 20 publishers at 50/s with independent phases: one packet every millisecond
    turn = 0
    while time.monotonic() - began < duration:
        senders[turn % len(senders)].sendto(payload, ("127.0.0.1", port))
        turn += 1
        sent += 1
        next_at += gap
        if turn % 20 == 0:
            received += _drain(receivers)
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    time.sleep(0.2)
    cpu = cpu_seconds(proc.pid) - cpu0
    received += _drain(receivers)
    proc.terminate()
    proc.wait(10)
    for s in (*senders, *receivers):
        s.close()
    return {"offered_pps": rate, "sent": sent, "forwarded": received, "cpu_seconds": round(cpu, 4),
            "us_per_forwarded_packet": round(cpu / received * 1e6, 2) if received else None}


def gateway(duration: float, calls: int, participants: int, work: Path) -> dict:
    """callsgw serve under loadtest run with --gateway-pid; the loadtest's µs per forwarded packet."""
    data = work / "gw"
    port = _free_udp_ports(1)[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        tcp = s.getsockname()[1]
    serve = subprocess.Popen(
        [*_pin(0), sys.executable, "-m", "callsgw", "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
         "--port", str(tcp), "--media-host", "127.0.0.1", "--media-port", str(port), "--ice-host", "127.0.0.1",
         "--joins-per-second", "1000", "--shutdown-grace", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert "callsgw is serving" in serve.stdout.readline()
        out = work / "loadtest.json"
        cmd = [*_pin((os.cpu_count() or 2) - 1), sys.executable, "-m", "callsgw", "loadtest", "run",
               "--url", f"wss://127.0.0.1:{tcp}/ws", "--data-dir", str(data), "--calls", str(calls),
               "--participants-per-call", str(participants), "--capture", str(CAPTURE), "--duration", str(duration),
               "--ramp-up", "50", "--insecure", "--gateway-pid", str(serve.pid), "--json", str(out)]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=duration + 120)
        if run.returncode != 0:
            raise RuntimeError(f"loadtest run exited {run.returncode}: {run.stderr[-2000:]}")
        report = json.loads(out.read_text())
        gw = report["gateway"]
        return {"forwarded": gw["forwarded_packets"], "cpu_seconds": gw["cpu_seconds"],
                "cpu_percent": gw["cpu_percent"], "us_per_forwarded_packet": gw["us_per_forwarded_packet"],
                "loss_percent": report["totals"].get("loss_percent"),
                "joined": report["participants"]["joined"]}
    finally:
        serve.terminate()
        try:
            serve.wait(20)
        except subprocess.TimeoutExpired:
            serve.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each measurement (default 30)")
    parser.add_argument("--calls", type=int, default=4, help="calls (default 4)")
    parser.add_argument("--participants", type=int, default=5, help="voice participants per call (default 5)")
    parser.add_argument("--runs", type=int, default=1, help="floor/gateway pairs to run (default 1)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.duration < 5 or args.calls < 1 or args.participants < 2 or args.runs < 1:
        parser.error("--duration >= 5, --calls >= 1, --participants >= 2, --runs >= 1")
    if not CAPTURE.exists():
        parser.error(f"{CAPTURE} is missing (the shared captures sit beside the repository)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ordinary-") as tmp:
        for i in range(args.runs):
            work = Path(tmp) / f"run{i}"
            work.mkdir()
            f = floor(args.duration, args.calls, args.participants, work)
            print(f"run {i + 1}: floor {f['us_per_forwarded_packet']} us/pkt ({f['forwarded']} forwarded)",
                  file=sys.stderr, flush=True)
            g = gateway(args.duration, args.calls, args.participants, work)
            ratio = round(g["us_per_forwarded_packet"] / f["us_per_forwarded_packet"], 2) \
                if g["us_per_forwarded_packet"] and f["us_per_forwarded_packet"] else None
            print(f"run {i + 1}: gateway {g['us_per_forwarded_packet']} us/pkt ({g['forwarded']} forwarded, "
                  f"{g['cpu_percent']}% CPU, loss {g['loss_percent']}%), ratio {ratio}", file=sys.stderr, flush=True)
            rows.append({"floor": f, "gateway": g, "ratio": ratio})
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    result = {"shape": f"{args.calls} calls x {args.participants} voice", "duration_s": args.duration,
              "runs": rows, "median_ratio": statistics.median(ratios) if ratios else None}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in rows:
            print(f"floor {r['floor']['us_per_forwarded_packet']:>6} us/pkt   gateway "
                  f"{r['gateway']['us_per_forwarded_packet']:>6} us/pkt   ratio {r['ratio']}")
        print(f"median ratio gateway/floor: {result['median_ratio']} (issue #14 target: at most 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

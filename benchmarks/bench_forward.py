#!/usr/bin/env python3
"""Forwarding throughput of the gateway: real SRTP through a real GatewayApp on loopback.

The gateway runs in a child process (this script re-run with a private
``--_gateway`` flag) pinned to one CPU, so its CPU time (utime + stime from
``/proc/<pid>/stat``) and RSS (``VmRSS`` from ``/proc/<pid>/status``) belong
to the gateway alone. The tester (this process) is pinned to another CPU. It
opens P calls; in each, one publisher (``callsgw.client.connect``, voice and
screen share) and N subscribers (``publish_voice=False``), all over
``wss://127.0.0.1`` and ICE/DTLS-SRTP like any client.

Once a session's media is connected, the tester takes its socket over
(``CallSession.media_handoff()``; the asyncio transport's reading is paused)
and drives it with ``callsgw._native.udpio``: a ``Sender`` per track builds,
stamps, SRTP-protects and ``sendmmsg``-s whole batches, a ``Receiver`` per
session drains with ``recvmmsg``, unprotects and counts, all without the GIL.
Datagrams that are not RTP from the gateway (STUN consent checks, RTCP, DTLS)
go back to the session's own transport, so ICE consent (RFC 7675) stays
fresh. One asyncio task (the pump) runs every ~1 ms: it sends what each
publisher owes at the offered rate, then drains every socket.

Each payload starts with the send time (``CLOCK_REALTIME`` ns, taken just
before the packet is protected), a step id and a sequence number; the
receive time is the kernel's ``SO_TIMESTAMPNS`` on the subscriber's socket.
Latency is therefore what the gateway and loopback add (plus up to one
batch's protection time in the tester), not the tester's polling delay.
Payloads: 160 bytes on the voice track or 1200 bytes on the screen track.

Reported per step: offered packets/s (accepted by the kernel into the
gateway), forwarded packets/s (received by all subscribers / send duration),
loss, p50/p99 latency, gateway CPU seconds per million forwarded packets,
gateway RSS, and the tester's CPU share of its core (a step above 90% is
flagged with '*': there the tester, not the gateway, may be the limit).

Phases per cell (path x payload x fan-out): a ramp, the offered rate times
``--factor`` from ``--start-rate`` until loss exceeds 1% (or the tester runs
out of CPU, or ``--max-steps``); the cell's "max" is the best forwarded rate
with loss <= 1%. Then (``--p99-at 0.8``, 0 to skip) one step at 80% of that
max's offered rate, reported as the cell's loss and latency at load. ``--rate
R`` instead runs one step at R packets/s offered (no ramp, no 80% step).

``--path native,python`` (the default) runs both forwarding paths in one run
(each in its own gateway child, ``Config(media_engine=...)``) and prints them
side by side with the ratio of gateway CPU per forwarded packet. A gateway
that fails to start is reported as failed and the run continues.

``--soak SECONDS`` adds a bounded steady run (native if selected, else the
first path; 160 B; N = the last ``--fanout``): after a ramp (or at ``--rate``)
it offers 80% of the max for SECONDS in 10 s windows, sampling gateway RSS
each window; reported: RSS at minute 1 and at the end, and the growth.

    python benchmarks/bench_forward.py                    # both paths: N=1,4 x 160,1200 B (several minutes)
    python benchmarks/bench_forward.py --path python --quick   # 160 B, 1 s steps
    python benchmarks/bench_forward.py --rate 5000        # one fixed offered load per cell
    python benchmarks/bench_forward.py --soak 600 --payload 160 --fanout 4
    python benchmarks/bench_forward.py --json             # machine-readable
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import logging
import os
import platform
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PATHS = ("native", "native-thread", "python")
DEFAULT_PATHS = ("native", "python")
KINDS = {160: ("voice", 111, 960), 1200: ("screen", 96, 3000)}  # payload -> track, default PT, timestamp step
PROBE_STEP = 0xFFFFFFFF
LOSS_LIMIT = 0.01
TESTER_BUSY = 0.9  # tester CPU share of one core above which a step is flagged
TICK = 0.001  # pump period (s)
MAX_CATCH_UP = 0.005  # s: after a stall the pump sends at most 5 ms worth per publisher at once; the rest is
# skipped (not sent late in one burst), which shows as a lower offered rate and in tester_skipped
RCVBUF = 4 << 20  # tester socket receive buffer (bytes; capped by net.core.rmem_max)
SOAK_WINDOW = 10.0

# targets of issue 6 item 4 (native path)
TARGET_PPS_PER_CORE = 150_000  # 160 B, N=4
TARGET_P99_MS = 1.0
TARGET_CPU_RATIO = 1 / 3
TARGET_RSS_GROWTH_MB = 5.0


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

    try:
        importlib.import_module("callsgw._native.engine")
        engine_module = True
    except ImportError:
        engine_module = False

    async def run():
        config = Config(
            data_dir=Path(data_dir), listen_host="127.0.0.1", port=0, media_host="127.0.0.1", media_port=0,
            ice_host="127.0.0.1", shutdown_grace=0.5, joins_per_second_per_address=10_000.0,
            max_participants_per_call=1000, media_engine=path,
        )
        app = GatewayApp(config)
        await app.start()
        print(json.dumps({"port": app.port, "media_port": app.media_port, "pid": os.getpid(),
                          "media_engine": config.media_engine, "engine_module": engine_module}), flush=True)
        loop = asyncio.get_running_loop()
        engine = getattr(app.media, "engine", None)
        while True:  # one command per line until the parent closes the pipe
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if line.strip() == "latency":  # the engine's own added-latency histogram
                counts = engine.latency_histogram.tolist() if engine is not None else None
                print(json.dumps({"latency_histogram": counts}), flush=True)
        await app.stop()

    asyncio.run(run())


def histogram_percentile_ms(counts, q: float):
    """Upper edge (ms) of the engine latency bucket holding quantile q (None without samples)."""
    if counts is None:
        return None
    from callsgw._native.engine import latency_percentile

    seconds = latency_percentile(counts, q)
    return None if seconds is None else seconds * 1000


class GatewayFailed(Exception):
    pass


class Gateway:
    def __init__(self, cpu: int, path: str):
        self.path = path
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-forward-")
        self.errlog = open(Path(self.tmp.name) / "gateway-stderr.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_gateway", self.tmp.name, str(cpu), path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errlog, text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            tail = self.stderr_tail()
            self.close()
            last = tail.splitlines()[-1] if tail else "no output"
            raise GatewayFailed(f"the {path} gateway did not start: {last}")
        self.info = json.loads(line)
        self.port = self.info["port"]
        self.pid = self.proc.pid
        from callsgw.datadir import DataDir

        self.secret = DataDir(Path(self.tmp.name)).api_secret()

    def stderr_tail(self, n: int = 600) -> str:
        try:
            self.errlog.flush()
            self.errlog.seek(0)
            return self.errlog.read()[-n:].strip()
        except (OSError, ValueError):
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def latency_histogram(self):
        """The native engine's added-latency histogram (kernel receive -> sendmmsg), or None."""
        try:
            self.proc.stdin.write("latency\n")
            self.proc.stdin.flush()
            counts = json.loads(self.proc.stdout.readline())["latency_histogram"]
        except (OSError, ValueError, KeyError):
            return None
        return None if counts is None else np.asarray(counts, dtype=np.int64)

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
        self.errlog.close()
        self.tmp.cleanup()


# -- tester side ------------------------------------------------------------------------


class Peer:
    """One session whose media socket the tester drives with udpio (after ``media_handoff``)."""

    def __init__(self, session, udpio, publisher: bool):
        self.session = session
        h = session.media_handoff()
        self.handoff = h
        h.udp.pause_reading()  # from now on the pump reads this socket
        sock = h.udp.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass
        host, port = h.remote_address[0], h.remote_address[1]
        self.receiver = udpio.Receiver(h.fd, host, port, h.rx)
        self.senders = {}
        if publisher:
            for size, (kind, default_pt, ts_step) in KINDS.items():
                ssrc = h.voice_ssrc if kind == "voice" else h.screen_ssrc
                pt = (h.voice_pt if kind == "voice" else h.screen_pt) or default_pt
                if ssrc is None:
                    raise RuntimeError(f"the publisher does not send {kind}")
                self.senders[size] = udpio.Sender(h.fd, host, port, h.tx, ssrc, pt, ts_step,
                                                  first_seq=random.getrandbits(15), first_ts=random.getrandbits(32))
        self.handed_back = 0
        self.deliver_errors = 0

    def poll(self) -> None:
        for data, addr in self.receiver.poll():
            self.handed_back += 1
            try:
                self.handoff.deliver(data, addr)
            except Exception:
                self.deliver_errors += 1

    def release(self) -> None:
        """Give the socket back to asyncio (before closing the session)."""
        try:
            if not self.handoff.udp.is_closing():
                self.handoff.udp.resume_reading()
        except Exception:
            pass


class Load:
    """What the pump sends: per publisher ``rate_per_pub`` packets/s of ``size`` bytes, stamped ``step``."""

    def __init__(self, size: int, rate_per_pub: float, step: int, npubs: int):
        self.size = size
        self.rate = rate_per_pub
        self.step = step
        self.t0 = time.perf_counter()
        self.owed_done = [0] * npubs  # packets handed to each publisher's Sender
        self.ticks = 0
        self.max_gap = 0.0
        self.skipped = 0  # packets not sent because the pump fell behind by more than MAX_CATCH_UP
        self.slow: list[dict] = []  # pump iterations over 5 ms (bounded)


class Cell:
    """P calls of 1 publisher + N subscribers each, connected, routed, driven by the pump."""

    def __init__(self, gateway: Gateway, publishers: int, fanout: int):
        self.gateway = gateway
        self.p = publishers
        self.n = fanout
        self.pubs: list[Peer] = []
        self.subs: list[Peer] = []
        self.peers: list[Peer] = []
        self.sessions = []
        self.step_id = 0
        self.load: Load | None = None
        self._pump_task: asyncio.Task | None = None
        self._running = False

    async def open(self, timeout: float = 30) -> None:
        from callsgw._native import udpio
        from callsgw.client import connect
        from callsgw.signaling import tokens

        url = f"wss://127.0.0.1:{self.gateway.port}/ws"
        tag = os.urandom(4).hex()
        pubs, subs = [], []
        for c in range(self.p):
            call = f"bench-{tag}-{c}"
            pub = await connect(url, tokens.mint(self.gateway.secret, call=call, name="pub"), ssl=False,
                                publish_screen=True)
            self.sessions.append(pub)
            pubs.append(pub)
            for s in range(self.n):
                sub = await connect(url, tokens.mint(self.gateway.secret, call=call, name=f"sub{s}"), ssl=False,
                                    publish_voice=False)
                self.sessions.append(sub)
                subs.append(sub)
        for s in self.sessions:
            await s.wait_connected(timeout=timeout)
        self.pubs = [Peer(s, udpio, publisher=True) for s in pubs]
        self.subs = [Peer(s, udpio, publisher=False) for s in subs]
        self.peers = self.pubs + self.subs
        self._running = True
        self._pump_task = asyncio.create_task(self._pump())
        # probe until every subscriber gets both tracks (the gateway's renegotiation is done)
        async with asyncio.timeout(timeout):
            while not all(len(r.receiver.pts_seen()) >= len(KINDS) for r in self.subs):
                for pub in self.pubs:
                    for size, sender in pub.senders.items():
                        sender.send(1, size, PROBE_STEP)
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        gc.collect()
        gc.freeze()  # the sessions' long-lived objects: out of every later collection

    async def close(self) -> None:
        gc.unfreeze()
        self._running = False
        if self._pump_task is not None:
            await self._pump_task
        for p in self.peers:
            p.release()
        for s in self.sessions:
            try:
                await s.close()
            except Exception:
                pass

    async def _pump(self) -> None:
        """Every ~1 ms: send what each publisher owes, then drain every socket."""
        last = time.perf_counter()
        while self._running:
            load = self.load
            now = time.perf_counter()
            sent_at = now
            if load is not None:
                load.ticks += 1
                load.max_gap = max(load.max_gap, now - max(last, load.t0))
                owed_total = int(load.rate * (now - load.t0))
                burst = max(1, int(load.rate * MAX_CATCH_UP))
                for i, pub in enumerate(self.pubs):
                    due = owed_total - load.owed_done[i]
                    if due > burst:
                        load.skipped += due - burst
                        load.owed_done[i] += due - burst
                        due = burst
                    if due > 0:
                        pub.senders[load.size].send(due, load.size, load.step)
                        load.owed_done[i] += due
                sent_at = time.perf_counter()
            last = now
            for peer in self.peers:
                peer.poll()
            if load is not None:
                done = time.perf_counter()
                if done - now > 0.005 and len(load.slow) < 20:
                    load.slow.append({"at_s": round(now - load.t0, 3), "send_ms": round((sent_at - now) * 1e3, 1),
                                      "poll_ms": round((done - sent_at) * 1e3, 1)})
            await asyncio.sleep(TICK)

    def rx_errors(self) -> int:
        return sum(r.receiver.unprotect_errors + r.receiver.truncated for r in self.subs)

    def received(self) -> int:
        return sum(r.receiver.count for r in self.subs)

    async def step(self, size: int, offered: float, duration: float, phase: str = "ramp") -> dict:
        self.step_id += 1
        step_id = self.step_id
        for r in self.subs:
            r.receiver.start_step(step_id)
        senders = [pub.senders[size] for pub in self.pubs]
        back0 = sum(p.handed_back for p in self.peers)
        rxerr0 = self.rx_errors()
        sent0 = sum(s.sent for s in senders)
        dropped0 = sum(s.dropped + s.protect_errors for s in senders)
        gw = self.gateway
        gc.disable()  # no collector pauses inside a measurement (the pump allocates no cycles)
        hist0 = gw.latency_histogram()
        cpu0, tcpu0 = gw.cpu(), self_cpu_seconds()
        load = Load(size, offered / self.p, step_id, self.p)
        self.load = load
        try:
            await asyncio.sleep(duration)
        finally:
            self.load = None
            if sys.exc_info()[0] is not None:
                gc.enable()
        send_time = time.perf_counter() - load.t0
        tcpu_send = self_cpu_seconds() - tcpu0
        sent = sum(s.sent for s in senders) - sent0
        send_dropped = sum(s.dropped + s.protect_errors for s in senders) - dropped0
        # drain: until counts stop moving for 0.3 s (at most 3 s)
        last, still_since = -1, time.perf_counter()
        deadline = time.perf_counter() + 3
        while time.perf_counter() < deadline:
            total = self.received()
            if total != last:
                last, still_since = total, time.perf_counter()
            elif time.perf_counter() - still_since > 0.3:
                break
            await asyncio.sleep(0.05)
        gw_cpu = gw.cpu() - cpu0
        hist1 = gw.latency_histogram()
        gc.enable()
        inside = None if hist0 is None or hist1 is None else hist1 - hist0
        counts, lats = [], []
        for r in self.subs:
            count, lat = r.receiver.take()
            counts.append(count)
            lats.append(np.frombuffer(lat, dtype=np.int64))
            r.receiver.start_step(PROBE_STEP - 1)  # stragglers of this step count nowhere
        received = sum(counts)
        expected = sent * self.n
        lat = np.concatenate(lats) if received else None
        forwarded_pps = received / send_time
        sampled = lat is not None and len(lat) > 0
        return {
            "phase": phase, "payload": size, "publishers": self.p, "fanout": self.n,
            "duration_s": round(send_time, 3), "target_offered_pps": round(offered),
            "offered_pps": round(sent / send_time), "forwarded_pps": round(forwarded_pps),
            "sent": sent, "send_dropped": send_dropped, "expected": expected, "received": received,
            "loss_pct": round(100 * (1 - received / expected), 3) if expected else 0.0,
            "latency_p50_ms": round(float(np.percentile(lat, 50)) / 1e6, 3) if sampled else None,
            "latency_p99_ms": round(float(np.percentile(lat, 99)) / 1e6, 3) if sampled else None,
            "latency_max_ms": round(float(lat.max()) / 1e6, 3) if sampled else None,
            # the gateway alone (native engine): kernel receive on its socket -> sendmmsg, by bucket
            "gateway_latency_p50_ms": histogram_percentile_ms(inside, 0.50),
            "gateway_latency_p99_ms": histogram_percentile_ms(inside, 0.99),
            "gateway_cpu_s": round(gw_cpu, 3),
            "gateway_cpu_share": round(gw_cpu / send_time, 3),
            "gateway_cpu_s_per_mpkt": round(gw_cpu / received * 1e6, 2) if received else None,
            "gateway_rss_mb": round(gw.rss(), 1),
            "tester_cpu_share": round(tcpu_send / send_time, 3),
            "tester_max_tick_gap_ms": round(load.max_gap * 1e3, 2),
            "tester_skipped": load.skipped,
            # the pump fell behind by > MAX_CATCH_UP often enough to miss 3% of the target: machine stalls
            # (on a VM both pinned processes slow down together) or a saturated tester
            "offered_short": sent < 0.97 * offered * send_time,
            "tester_slow_ticks": load.slow,
            "tester_bound": tcpu_send / send_time > TESTER_BUSY,
            "handed_back": sum(p.handed_back for p in self.peers) - back0,  # STUN/RTCP/DTLS given to the clients
            "rx_errors": self.rx_errors() - rxerr0,  # SRTP unprotect failures and truncated datagrams
        }


async def tester_floor(rate: float = 20_000.0, duration: float = 1.0) -> dict:
    """The tester's own latency floor: udpio Sender -> Receiver on loopback, no gateway, same pacing."""
    from callsgw._native import udpio
    from callsgw.srtp import Profile, Session

    profile = Profile.AES128_CM_HMAC_SHA1_80
    key, salt = os.urandom(profile.key_length), os.urandom(profile.salt_length)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for sock in (a, b):
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sender = udpio.Sender(a.fileno(), "127.0.0.1", b.getsockname()[1], Session(profile, key, salt), 1, 111, 960)
        receiver = udpio.Receiver(b.fileno(), "127.0.0.1", a.getsockname()[1], Session(profile, key, salt))
        receiver.start_step(1)
        t0, done = time.perf_counter(), 0
        while (now := time.perf_counter()) - t0 < duration:
            due = min(int(rate * (now - t0)) - done, max(1, int(rate * MAX_CATCH_UP)))
            if due > 0:
                sender.send(due, 160, 1)
                done += due
            receiver.poll()
            await asyncio.sleep(TICK)
        await asyncio.sleep(0.05)
        receiver.poll()
        count, lat = receiver.take()
    finally:
        a.close()
        b.close()
    lat = np.frombuffer(lat, dtype=np.int64)
    return {"rate_pps": round(rate), "received": count,
            "latency_p50_ms": round(float(np.percentile(lat, 50)) / 1e6, 3) if len(lat) else None,
            "latency_p99_ms": round(float(np.percentile(lat, 99)) / 1e6, 3) if len(lat) else None}


def step_line(path: str, r: dict) -> str:
    p99 = "-" if r["latency_p99_ms"] is None else f"{r['latency_p99_ms']:.2f}"
    inside = r.get("gateway_latency_p99_ms")
    inside = "" if inside is None else f" (in gateway <= {inside:g})"
    return (f"  [{path}] {r['phase']:<6} N={r['fanout']} {r['payload']:>4} B offered {r['offered_pps']:>8,}/s "
            f"forwarded {r['forwarded_pps']:>8,}/s loss {r['loss_pct']:6.2f}% p99 {p99} ms{inside} "
            f"gw {r['gateway_cpu_share']:.2f} core tester {r['tester_cpu_share']:.2f} core")


def best_step(steps: list[dict]) -> dict | None:
    ok = [s for s in steps if s["loss_pct"] <= 100 * LOSS_LIMIT and s["received"]]
    return max(ok, key=lambda s: s["forwarded_pps"]) if ok else None


async def ramp(cell: Cell, path: str, size: int, args, log) -> list[dict]:
    """Geometric ramp until loss > 1% (or the tester saturates), then ``--refine`` bisection steps."""
    results = []
    rates = [args.start_rate * args.factor**k for k in range(args.max_steps)]
    good = bad = None
    for rate in rates:
        r = await cell.step(size, rate, args.duration)
        r["path"] = path
        results.append(r)
        log(step_line(path, r))
        if r["tester_bound"]:
            return results
        if r["loss_pct"] > 100 * LOSS_LIMIT:
            bad = rate
            break
        good = rate
        await asyncio.sleep(0.2)
    for _ in range(args.refine if good is not None and bad is not None else 0):
        rate = (good * bad) ** 0.5
        await asyncio.sleep(0.5)
        r = await cell.step(size, rate, args.duration, phase="refine")
        r["path"] = path
        results.append(r)
        log(step_line(path, r))
        if r["tester_bound"]:
            break
        if r["loss_pct"] > 100 * LOSS_LIMIT:
            bad = rate
        else:
            good = rate
    return results


async def run_cell(gateway, path: str, args, fanout: int, sizes, log) -> list[dict]:
    cell = Cell(gateway, args.publishers, fanout)
    results = []
    try:
        await cell.open()
        for size in sizes:
            if args.rate:
                r = await cell.step(size, args.rate, args.duration, phase="rate")
                r["path"] = path
                results.append(r)
                log(step_line(path, r))
                continue
            steps = await ramp(cell, path, size, args, log)
            results += steps
            best = best_step(steps)
            if args.p99_at and best is not None:
                await asyncio.sleep(0.5)
                r = await cell.step(size, args.p99_at * best["offered_pps"], args.p99_duration, phase="p99_at")
                r["path"] = path
                r["fraction_of_max"] = args.p99_at
                results.append(r)
                log(step_line(path, r))
    finally:
        await cell.close()
    return results


async def soak(gateway, path: str, args, log) -> dict:
    size = args.payload[0] if args.payload else 160
    fanout = args.fanout[-1]
    cell = Cell(gateway, args.publishers, fanout)
    windows = []
    try:
        await cell.open()
        if args.rate:
            rate = args.rate
        else:
            best = best_step(await ramp(cell, path, size, args, log))
            if best is None:
                return {"path": path, "error": "no ramp step with loss <= 1%"}
            rate = 0.8 * best["offered_pps"]
        log(f"[{path}] soak: {args.soak:.0f} s at {rate:,.0f} packets/s offered, {size} B, N={fanout}")
        t0 = time.perf_counter()
        rss0 = gateway.rss()
        while time.perf_counter() - t0 < args.soak - 0.5:
            length = min(SOAK_WINDOW, args.soak - (time.perf_counter() - t0))
            r = await cell.step(size, rate, max(length, 0.5), phase="soak")
            r["path"] = path
            r["t_s"] = round(time.perf_counter() - t0, 1)
            windows.append(r)
            log(step_line(path, r) + f" RSS {r['gateway_rss_mb']} MB at {r['t_s']} s")
    finally:
        await cell.close()
    at_min1 = next((w for w in windows if w["t_s"] >= 60), windows[0] if windows else None)
    end = windows[-1] if windows else None
    received = sum(w["received"] for w in windows)
    expected = sum(w["expected"] for w in windows)
    return {
        "path": path, "payload": size, "fanout": fanout, "offered_pps": round(rate), "seconds": args.soak,
        "rss_start_mb": round(rss0, 1),
        "rss_minute1_mb": at_min1["gateway_rss_mb"] if at_min1 else None,
        "rss_end_mb": end["gateway_rss_mb"] if end else None,
        "rss_growth_mb": round(end["gateway_rss_mb"] - at_min1["gateway_rss_mb"], 1) if end else None,
        "loss_pct": round(100 * (1 - received / expected), 4) if expected else None,
        "latency_p99_ms_worst_window": max((w["latency_p99_ms"] or 0) for w in windows) if windows else None,
        "latency_p99_ms_median_window": float(np.median([w["latency_p99_ms"] or 0 for w in windows])) if windows else None,
        "windows_offered_short": sum(1 for w in windows if w["offered_short"]),
        "windows": windows,
    }


def limit(last: dict) -> str:
    """Why a cell's ramp ended, from its last step."""
    if last["loss_pct"] > 100 * LOSS_LIMIT:
        return "loss, gateway CPU-bound" if last["gateway_cpu_share"] >= 0.95 else "loss"
    if last["tester_bound"]:
        return "tester CPU"
    return "steps (raise --max-steps)" if last["phase"] == "ramp" else "fixed --rate"


def summarize(results, failed: dict) -> list[dict]:
    cells: dict = {}
    for r in results:
        if r["phase"] != "soak":
            cells.setdefault((r["path"], r["payload"], r["fanout"]), []).append(r)
    out = []
    for (path, size, fanout), steps in cells.items():
        main_steps = [s for s in steps if s["phase"] in ("ramp", "refine", "rate")]
        at = next((s for s in steps if s["phase"] == "p99_at"), None)
        best = best_step(main_steps)
        out.append({
            "path": path, "payload": size, "fanout": fanout,
            "max_forwarded_pps": best["forwarded_pps"] if best else None,
            "at_offered_pps": best["offered_pps"] if best else None,
            "gateway_cpu_s_per_mpkt": best["gateway_cpu_s_per_mpkt"] if best else None,
            "gateway_pps_per_core": round(best["forwarded_pps"] / best["gateway_cpu_share"])
            if best and best["gateway_cpu_share"] else None,
            "latency_p50_ms": best["latency_p50_ms"] if best else None,
            "latency_p99_ms": best["latency_p99_ms"] if best else None,
            "at_load": None if at is None else {
                "fraction_of_max": at.get("fraction_of_max"), "offered_pps": at["offered_pps"],
                "forwarded_pps": at["forwarded_pps"], "loss_pct": at["loss_pct"], "lost": at["expected"] - at["received"],
                "latency_p50_ms": at["latency_p50_ms"], "latency_p99_ms": at["latency_p99_ms"],
                "gateway_cpu_s_per_mpkt": at["gateway_cpu_s_per_mpkt"], "tester_bound": at["tester_bound"],
            },
            "tester_bound": any(s["tester_bound"] for s in main_steps),
            "limited_by": limit([s for s in main_steps if s["phase"] != "refine"][-1]) if main_steps else "-",
            "failed": None,
        })
    for (path, size, fanout), error in failed.items():
        out.append({"path": path, "payload": size, "fanout": fanout, "failed": error})
    return out


def compare(summary: list[dict]) -> list[dict]:
    """Native vs python per (payload, fan-out): CPU per forwarded packet, from the cells' best steps."""
    by = {(s["path"], s["payload"], s["fanout"]): s for s in summary}
    out = []
    for (path, size, fanout), s in by.items():
        if path != "native":
            continue
        py = by.get(("python", size, fanout))
        if py is None:
            continue
        n, p = s.get("gateway_cpu_s_per_mpkt"), py.get("gateway_cpu_s_per_mpkt")
        out.append({"payload": size, "fanout": fanout, "native_cpu_s_per_mpkt": n, "python_cpu_s_per_mpkt": p,
                    "cpu_ratio_native_over_python": round(n / p, 3) if n and p else None})
    return out


def targets(report) -> list[dict]:
    """Issue 6 item 4 targets for the native path (only those this run measured)."""
    checks = []
    cell = next((s for s in report["summary"] if s["path"] == "native" and s["payload"] == 160
                 and s["fanout"] == 4 and not s["failed"]), None)
    if cell is not None:
        v = cell["gateway_pps_per_core"]
        checks.append({"target": f">= {TARGET_PPS_PER_CORE:,} pkt/s per gateway core (native, 160 B, N=4)",
                       "value": v, "pass": v is not None and v >= TARGET_PPS_PER_CORE and not cell["tester_bound"]})
        at = cell["at_load"]
        if at is not None:
            checks.append({"target": f"at {at['fraction_of_max']:.0%} of max: p99 <= {TARGET_P99_MS} ms, no loss",
                           "value": f"p99 {at['latency_p99_ms']} ms, lost {at['lost']}",
                           "pass": at["latency_p99_ms"] is not None and at["latency_p99_ms"] <= TARGET_P99_MS
                           and at["lost"] <= 0})
    for c in report["comparison"]:
        if c["payload"] == 160 and c["fanout"] == 4 and c["cpu_ratio_native_over_python"] is not None:
            r = c["cpu_ratio_native_over_python"]
            checks.append({"target": "native CPU per forwarded packet <= 1/3 of python (160 B, N=4, same run)",
                           "value": r, "pass": r is not None and r <= TARGET_CPU_RATIO})
    s = report.get("soak")
    if s and s.get("path") == "native" and s.get("rss_growth_mb") is not None:
        checks.append({"target": f"RSS growth minute 1 -> end < {TARGET_RSS_GROWTH_MB} MB ({s['seconds']:.0f} s soak)",
                       "value": s["rss_growth_mb"], "pass": s["rss_growth_mb"] < TARGET_RSS_GROWTH_MB})
    return checks


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
    floor = await tester_floor()
    log(f"tester floor (loopback, no gateway, {floor['rate_pps']:,}/s): p50 {floor['latency_p50_ms']} ms, "
        f"p99 {floor['latency_p99_ms']} ms")
    results: list[dict] = []
    failed: dict = {}
    gateways: dict = {}
    soak_report = None
    soak_path = None
    if args.soak:
        soak_path = "native" if "native" in args.paths else args.paths[0]
    for path in args.paths:
        info: dict = {"ok": False}
        gateways[path] = info
        try:
            gateway = Gateway(gw_cpu, path)
        except GatewayFailed as exc:
            log(f"[{path}] FAILED: {exc}")
            info["error"] = str(exc)
            for fanout in args.fanout:
                for size in sizes:
                    failed[(path, size, fanout)] = str(exc)
            continue
        info.update(ok=True, media_engine=gateway.info.get("media_engine"),
                    engine_module=gateway.info.get("engine_module"))
        if path == "native" and not gateway.info.get("engine_module"):
            log("[native] note: callsgw._native.engine is not built; this gateway may run the python path")
        try:
            info["rss_start_mb"] = round(gateway.rss(), 1)
            if not args.soak_only:
                for fanout in args.fanout:
                    log(f"[{path}] {args.publishers} publisher(s) x {fanout} subscriber(s)")
                    try:
                        results += await run_cell(gateway, path, args, fanout, sizes, log)
                    except Exception as exc:  # one cell failing (e.g. a gateway crash) does not end the run
                        msg = f"{type(exc).__name__}: {exc}"
                        if not gateway.alive():
                            tail = gateway.stderr_tail().splitlines()
                            msg += f" (gateway exited: {tail[-1] if tail else 'no output'})"
                        log(f"[{path}] N={fanout} FAILED: {msg}")
                        for size in sizes:
                            if not any(r["path"] == path and r["payload"] == size and r["fanout"] == fanout
                                       for r in results):
                                failed[(path, size, fanout)] = msg
                        if not gateway.alive():
                            break
            if path == soak_path and gateway.alive():
                try:
                    soak_report = await soak(gateway, path, args, log)
                except Exception as exc:
                    soak_report = {"path": path, "error": f"{type(exc).__name__}: {exc}"}
            info["rss_end_mb"] = round(gateway.rss(), 1) if gateway.alive() else None
        finally:
            gateway.close()
    first = next((g for g in gateways.values() if g.get("ok")), {})
    report = {
        "machine": machine(), "paths": list(args.paths), "path": ",".join(args.paths),
        "gateway_cpu": gw_cpu, "tester_cpu": tester_cpu,
        "publishers": args.publishers, "step_duration_s": args.duration,
        "gateway_rss_start_mb": first.get("rss_start_mb"), "gateway_rss_end_mb": first.get("rss_end_mb"),
        "gateways": gateways, "tester_floor": floor, "results": results,
    }
    report["summary"] = summarize(results, failed)
    report["comparison"] = compare(report["summary"])
    if soak_report is not None:
        report["soak"] = soak_report
    report["targets"] = targets(report)
    return report


def fmt(v, spec: str = "", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def print_table(report) -> None:
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, Linux {m['kernel']}")
    print(f"paths {report['path']}: gateway pinned to CPU {report['gateway_cpu']}, tester to CPU "
          f"{report['tester_cpu']}; {report['publishers']} publisher(s), {report['step_duration_s']} s per step")
    for path, g in report["gateways"].items():
        if g.get("ok"):
            note = "" if path != "native" or g.get("engine_module") else " (callsgw._native.engine not built!)"
            print(f"  {path}: gateway RSS {g.get('rss_start_mb')} MB at start, {g.get('rss_end_mb')} MB at end{note}")
        else:
            print(f"  {path}: FAILED: {g.get('error')}")
    f = report.get("tester_floor") or {}
    print(f"tester latency floor (udpio loopback, no gateway, {f.get('rate_pps', 0):,}/s): "
          f"p50 {f.get('latency_p50_ms')} ms, p99 {f.get('latency_p99_ms')} ms")
    print()
    header = (f"{'path':<7}{'phase':<7}{'size':>5}{'N':>3}{'offered/s':>11}{'fwd/s':>10}{'loss%':>8}{'p50 ms':>8}"
              f"{'p99 ms':>8}{'gw core':>8}{'gw s/Mpkt':>10}{'RSS MB':>8}{'tester':>8}")
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        flag = "*" if r["tester_bound"] else ("!" if r.get("offered_short") else " ")
        print(f"{r['path']:<7}{r['phase']:<7}{r['payload']:>5}{r['fanout']:>3}{r['offered_pps']:>11,}"
              f"{r['forwarded_pps']:>10,}{r['loss_pct']:>8.2f}{fmt(r['latency_p50_ms'], '.2f'):>8}"
              f"{fmt(r['latency_p99_ms'], '.2f'):>8}{r['gateway_cpu_share']:>8.2f}"
              f"{fmt(r['gateway_cpu_s_per_mpkt'], '.1f'):>10}{r['gateway_rss_mb']:>8.1f}{r['tester_cpu_share']:>7.2f}{flag}")
    print()
    paths = report["paths"]
    cells = sorted({(s["payload"], s["fanout"]) for s in report["summary"]})
    by = {(s["path"], s["payload"], s["fanout"]): s for s in report["summary"]}
    print("summary per cell (max = best step with loss <= 1%; 'at 80%' = the --p99-at step):")
    head = f"{'size':>5}{'N':>3}  " + "".join(f"{p + ' max/s':>14}{'per core':>10}{'s/Mpkt':>8}{'80% loss':>9}"
                                                f"{'p99 ms':>8}" for p in paths)
    if len(paths) > 1 and "native" in paths and "python" in paths:
        head += f"{'CPU n/p':>9}"
    print(head)
    print("-" * len(head))
    comp = {(c["payload"], c["fanout"]): c for c in report["comparison"]}
    for size, fanout in cells:
        line = f"{size:>5}{fanout:>3}  "
        for p in paths:
            s = by.get((p, size, fanout))
            if s is None or s.get("failed"):
                line += f"{'FAILED':>14}{'':>10}{'':>8}{'':>9}{'':>8}"
                continue
            at = s["at_load"] or {}
            bound = "*" if s["tester_bound"] else ""
            line += (f"{fmt(s['max_forwarded_pps'], ',') + bound:>14}{fmt(s['gateway_pps_per_core'], ','):>10}"
                     f"{fmt(s['gateway_cpu_s_per_mpkt'], '.1f'):>8}{fmt(at.get('loss_pct'), '.2f'):>9}"
                     f"{fmt(at.get('latency_p99_ms'), '.2f'):>8}")
        if len(paths) > 1 and "native" in paths and "python" in paths:
            c = comp.get((size, fanout))
            line += f"{fmt(c and c['cpu_ratio_native_over_python'], '.3f'):>9}"
        print(line)
    for s in report["summary"]:
        if not s.get("failed"):
            print(f"  {s['path']:<7}{s['payload']:>5} B N={s['fanout']}: ramp ended by {s['limited_by']}")
        else:
            print(f"  {s['path']:<7}{s['payload']:>5} B N={s['fanout']}: FAILED: {s['failed']}")
    soak_r = report.get("soak")
    if soak_r:
        print()
        if soak_r.get("error"):
            print(f"soak ({soak_r['path']}): FAILED: {soak_r['error']}")
        else:
            print(f"soak ({soak_r['path']}, {soak_r['payload']} B, N={soak_r['fanout']}, {soak_r['offered_pps']:,}/s "
                  f"offered, {soak_r['seconds']:.0f} s): RSS {soak_r['rss_start_mb']} MB at start, "
                  f"{soak_r['rss_minute1_mb']} MB at minute 1, {soak_r['rss_end_mb']} MB at end "
                  f"(growth {soak_r['rss_growth_mb']} MB); loss {soak_r['loss_pct']}%, "
                  f"p99 per 10 s window: median {soak_r['latency_p99_ms_median_window']} ms, worst "
                  f"{soak_r['latency_p99_ms_worst_window']} ms; {soak_r['windows_offered_short']} of "
                  f"{len(soak_r['windows'])} windows offered > 3% short")
    if report["targets"]:
        print()
        print("issue 6 targets (native path):")
        for t in report["targets"]:
            print(f"  [{'PASS' if t['pass'] else 'FAIL'}] {t['target']}: {t['value']}")
    print()
    print("gw core = gateway CPU seconds / send seconds; tester = the same for this process; '*' = tester")
    print("above 90% of a core (the tester may be the limit); '!' = offered fell > 3% short of the target (the")
    print("pump stalled > 5 ms often: machine stalls or tester). Latency: kernel receive time at the subscriber")
    print("minus the send stamp taken before SRTP protect (what the gateway and loopback add).")


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--_gateway":  # internal: the gateway child process
        gateway_child(argv[1], int(argv[2]), argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", default=",".join(DEFAULT_PATHS),
                    help="gateway forwarding path(s), comma-separated: native, native-thread (the engine on its "
                    "own thread), python (default native,python, one run)")
    ap.add_argument("--quick", action="store_true", help="160 B only, 1 s steps, fewer steps")
    ap.add_argument("--publishers", type=int, default=2, help="P: calls, one publisher each (default 2)")
    ap.add_argument("--fanout", type=int, nargs="+", default=[1, 4], help="N: subscribers per publisher (1 4)")
    ap.add_argument("--payload", type=int, nargs="+", choices=sorted(KINDS), default=None,
                    help="payload sizes (default 160 1200; quick 160)")
    ap.add_argument("--rate", type=float, default=None, help="one fixed offered load (packets/s into the gateway)")
    ap.add_argument("--start-rate", type=float, default=None, help="first ramp step (default 2000/s)")
    ap.add_argument("--factor", type=float, default=None, help="ramp multiplier (default 1.5, quick 2)")
    ap.add_argument("--max-steps", type=int, default=None, help="ramp steps per cell (default 14, quick 8)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per step (default 3, quick 1)")
    ap.add_argument("--refine", type=int, default=None,
                    help="bisection steps between the last good and the first lossy ramp rate (default 3, quick 2)")
    ap.add_argument("--p99-at", type=float, default=0.8,
                    help="after each ramp, one step at this fraction of the max offered rate (0: skip)")
    ap.add_argument("--p99-duration", type=float, default=None,
                    help="seconds of that step (default 5, quick 2)")
    ap.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                    help="also a steady run at 80%% of max (native if selected), RSS every 10 s")
    ap.add_argument("--soak-only", action="store_true", help="with --soak: skip the cells, only the soak")
    ap.add_argument("--gateway-cpu", type=int, default=None, help="CPU for the gateway (default the first)")
    ap.add_argument("--tester-cpu", type=int, default=None, help="CPU for the tester (default the last)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = ap.parse_args(argv)
    args.paths = [p.strip() for p in args.path.split(",") if p.strip()]
    if not args.paths or any(p not in PATHS for p in args.paths) or len(set(args.paths)) != len(args.paths):
        ap.error(f"--path: a comma-separated list of {', '.join(PATHS)}")
    if args.soak_only and not args.soak:
        ap.error("--soak-only needs --soak SECONDS")
    if args.soak and not 0 < args.soak <= 24 * 3600:
        ap.error("--soak: 1 to 86400 seconds")
    if args.start_rate is None:
        args.start_rate = 2000.0
    if args.factor is None:
        args.factor = 2.0 if args.quick else 1.5
    if args.max_steps is None:
        args.max_steps = 8 if args.quick else 14
    if args.duration is None:
        args.duration = 1.0 if args.quick else 3.0
    if args.refine is None:
        args.refine = 2 if args.quick else 3
    if args.p99_duration is None:
        args.p99_duration = 2.0 if args.quick else 5.0
    if not 0 <= args.p99_at < 1:
        ap.error("--p99-at: a fraction below 1 (0 to skip)")

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

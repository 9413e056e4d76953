#!/usr/bin/env python3
"""Soak with churn (issue 20 deliverable 2): hours of joins and leaves leave the gateway flat.

A gateway (``callsgw serve``, its own process, so that its RSS and descriptors
are its own) and this tester run on this machine, on loopback only. For
``--minutes`` (default 60) of timeline:

* ``--participants`` (default 100) Python clients (``callsgw.client``: WSS
  signaling, ICE, DTLS, SRTP, the real protocol) sit in calls of
  ``--per-call`` (default 5). The first ``--speakers-per-call`` (default 2)
  seats of a call send voice (50 packets/s, Opus-sized), everybody receives;
* every ``--interval`` s (default 10) ``--churn`` participants (default 10)
  leave (four in five with ``leave``, one in five just closing the socket)
  and as many new ones join the seats they left (same calls, new identities);
* one screen sharer per call (VP8-sized packets, 15/s), taking turns: every
  ``--share-turn`` s (default 30), or when the sharer leaves, the next seat
  of the call takes over (``set_screen_share``);
* the WebSocket abuse mix at a low rate alongside, every interval: TCP and
  TLS connect/close, a few idle TLS connections held and replaced, one TLS
  connection trickling its request a byte a second, an unmasked (malformed)
  WebSocket frame, non-JSON and unknown messages, a join with a bad token.
  No abuse test existed in tests/ to reuse, so the mix is defined here.

Sampled every interval: the gateway's RSS (``/proc/PID/status``), open
descriptors and asyncio tasks (``callsgw_process_open_fds`` and
``callsgw_asyncio_tasks`` on ``/metrics``), native engine slots in use
(``callsgw_engine_slots``), live sessions, the records database's rows
(``sessions`` table, read-only), and the window's loss and one-way delay.

Loss: every media payload carries its sender, a per-sender sequence number
and its send time (one clock: the tester sends and receives). Per received
stream (receiver, sender, kind), expected = highest - first + 1 as in RFC 3550
section 6.4.1, so packets lost before a stream's first or after its last
arrival are not seen (joins and leaves cut streams there). Delay: receive
time - send time in this process, so the tester's own event loop is included.

When the timeline is done every participant leaves, the abuse connections
close, and the gateway is watched for up to ``--settle`` s until descriptors,
tasks and slots are back to the baseline sampled before the first join.

Targets (exit status 1 when one is missed): RSS grows less than
``--max-rss-growth-mb`` (10) from ``--warmup`` minutes (5) into the run to its
end (RSS saws by several MB as the gateway collects and trims after closed
connections, so growth is the mean RSS of the last 5 minutes against the mean
of the first 5 minutes after the warm-up; the end-to-end difference and a
least-squares trend in MB/h are reported too); descriptors, tasks and slots back to baseline; loss under
``--max-loss`` (0.5) %; the gateway never exits, no session is closed by the
gateway unasked, and at most 1 % of joins fail. Exit 2: bad arguments.

Written to ``--out DIR`` (default ``/tmp/soak``): ``soak.json`` (the report:
config, segments, every sample, summary, targets), ``soak.png`` (the plot),
``soak_state.json`` (the resume state) and ``data/`` (the gateway's data
directory and records database).

Resuming: long runs get interrupted (a session's processes end with it). The
state file is rewritten after every sample. Running the same command again
with the same ``--out`` continues the timeline where the last saved sample
left it: a new gateway (a new *segment*) starts on the same data directory,
takes its own baseline, and the churn goes on until the timeline reaches
``--minutes`` (which may be raised on resume). The RSS target is then checked
per segment (each gateway process warms up again) and the worst is reported.
``--fresh`` discards the old state. SIGINT/SIGTERM stop cleanly (state kept).

    python benchmarks/soak.py                                   # 60 minutes, 100 participants
    python benchmarks/soak.py --minutes 3 --participants 20 --warmup 1 --out /tmp/soak3
    nohup python benchmarks/soak.py --out /tmp/soak60 > /tmp/soak60/log 2>&1 &   # run it again to resume
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STATE_FILE = "soak_state.json"
REPORT_FILE = "soak.json"
PLOT_FILE = "soak.png"
STATE_VERSION = 1
SHAPE_KEYS = ("participants", "per_call", "speakers_per_call", "interval", "churn", "share_turn", "media_engine")

TAG = b"soak"
VOICE, SCREEN = 0, 1
OPUS_PT, VP8_PT = 111, 96
VOICE_PAYLOAD = 80  # bytes, about a 32 kbit/s Opus frame
SCREEN_PAYLOAD = 900
VOICE_PERIOD = 0.02
SCREEN_EVERY = 3  # a screen packet every third voice tick: about 17/s
DELAY_BUCKET_MS = 0.1
DELAY_BUCKETS = 20_000  # 0..2 s in 0.1 ms buckets; beyond is one overflow bucket
ABUSE_IDLE = 4  # idle TLS connections held at a time


# -- the gateway -------------------------------------------------------------------


def start_gateway(data: Path, engine: str | None, log_path: Path) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
    argv = [sys.executable, "-m", "callsgw", "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
            "--port", "0", "--media-host", "127.0.0.1", "--media-port", "0", "--ice-host", "127.0.0.1",
            "--no-ice-tcp", "--shutdown-grace", "0", "--joins-per-second", "1000",
            "--messages-per-second", "1000"]
    if engine:
        argv += ["--media-engine", engine]
    log = open(log_path, "a")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                            preexec_fn=_die_with_parent)
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"callsgw is serving: open https://127\.0\.0\.1:(\d+)/", line)
        if found:
            # keep draining stdout so that the gateway never blocks on a full pipe
            import threading

            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(found.group(1))
    proc.kill()
    raise RuntimeError(f"callsgw serve did not start (see {log_path})")


def _die_with_parent() -> None:
    """In the gateway's child: SIGTERM when the soak dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


def stop_gateway(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def scrape(port: int, key: str) -> dict:
    """The /metrics figures the soak watches."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(f"https://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
        text = r.read().decode()
    out: dict = {"slots": {}}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r'(\w+)(?:\{table="(\w+)"\})?\s+([0-9.eE+-]+)$', line)
        if not m:
            continue
        name, table, value = m.group(1), m.group(2), float(m.group(3))
        if name == "callsgw_engine_slots" and table:
            out["slots"][table] = int(value)
        elif name in ("callsgw_process_open_fds", "callsgw_asyncio_tasks", "callsgw_sessions_live",
                      "callsgw_calls_live", "callsgw_records_pending"):
            out[name.removeprefix("callsgw_")] = int(value)
    return out


def db_rows(data: Path) -> int | None:
    path = data / "records.sqlite3"
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return None


# -- media accounting ----------------------------------------------------------------


class Stats:
    """Loss and delay of the current window and of the whole run (kept in the state file)."""

    def __init__(self, saved: dict | None = None):
        saved = saved or {}
        self.expected = saved.get("expected", 0)
        self.received = saved.get("received", 0)
        self.hist = Counter({int(k): v for k, v in (saved.get("delay_hist") or {}).items()})
        self.w_expected = self.w_received = 0
        self.w_delays: list[float] = []

    def window(self) -> dict:
        e, r, d = self.w_expected, self.w_received, sorted(self.w_delays)
        self.expected += e
        self.received += r
        self.w_expected = self.w_received = 0
        self.w_delays = []
        return {"expected": e, "received": r, "loss_percent": _loss(e, r),
                "delay_p50_ms": _pct(d, 50), "delay_p95_ms": _pct(d, 95), "delay_max_ms": d[-1] if d else None}

    def record(self, delay_ms: float) -> None:
        if len(self.w_delays) < 50_000:
            self.w_delays.append(delay_ms)
        self.hist[min(int(delay_ms / DELAY_BUCKET_MS), DELAY_BUCKETS)] += 1

    def saved(self) -> dict:
        return {"expected": self.expected, "received": self.received,
                "delay_hist": {str(k): v for k, v in sorted(self.hist.items())}}

    def delay_summary(self) -> dict:
        total = sum(self.hist.values())
        if not total:
            return {}
        out, keys = {}, sorted(self.hist)
        for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
            need, seen = q * total, 0
            for k in keys:
                seen += self.hist[k]
                if seen >= need:
                    out[name] = round((k + 1) * DELAY_BUCKET_MS, 1)  # bucket upper bound
                    break
        out["max"] = round((keys[-1] + 1) * DELAY_BUCKET_MS, 1)  # capped: see beyond_2s
        out["beyond_2s"] = self.hist.get(DELAY_BUCKETS, 0)
        out["packets"] = total
        return out


def _loss(expected: int, received: int) -> float | None:
    return round(100.0 * max(0, expected - received) / expected, 4) if expected else None


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(math.ceil(p / 100 * len(values))) - 1)], 3)


# -- participants --------------------------------------------------------------------


@dataclass(eq=False)
class Member:
    number: int  # unique over the run: the sender id in payloads
    call: int
    seat: int
    speaker: bool
    session: object = None
    tasks: list = field(default_factory=list)
    leaving: bool = False
    streams: dict = field(default_factory=dict)  # (sender, kind) -> [first seq, highest seq, received]


class Soak:
    def __init__(self, args, state: dict, port: int, secret: bytes, rng: random.Random):
        self.args = args
        self.state = state
        self.url = f"wss://127.0.0.1:{port}/ws"
        self.port = port
        self.secret = secret
        self.rng = rng
        self.calls = args.participants // args.per_call
        self.seats: dict[tuple[int, int], Member] = {}
        self.sharer: dict[int, tuple[int, float]] = {}  # call -> (seat, since)
        self.counts: Counter = Counter(state.get("counts") or {})
        self.errors: list[str] = state.setdefault("errors", [])
        self.stats = Stats(state.get("media"))
        self.idle: list[asyncio.StreamWriter] = []
        self.background: set[asyncio.Task] = set()
        self.epoch = f"s{len(state['segments'])}"

    def error(self, text: str) -> None:
        self.counts["errors"] += 1
        if len(self.errors) < 200:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {text}")

    # -- one participant

    async def join(self, call: int, seat: int) -> None:
        from callsgw.client import connect
        from callsgw.signaling import tokens

        self.counts["joins"] += 1
        number = self.counts["joins"]
        m = Member(number, call, seat, speaker=seat < self.args.speakers_per_call)
        self.seats[(call, seat)] = m
        token = tokens.mint(self.secret, call=f"soak-{self.epoch}-{call}", name=f"p{number}", sub=f"p{number}")
        try:
            m.session = await connect(self.url, token, ssl=False, publish_voice=m.speaker, open_timeout=20)
            m.tasks = [asyncio.create_task(c(m)) for c in (self._send, self._receive, self._drain_events, self._watch)]
            await m.session.wait_connected(timeout=30)
        except Exception as exc:
            self.counts["joins_failed"] += 1
            self.error(f"join p{number} call {call}: {type(exc).__name__}: {exc}")
            await self._discard(m)
            return

    async def _discard(self, m: Member) -> None:
        m.leaving = True
        if self.seats.get((m.call, m.seat)) is m:
            del self.seats[(m.call, m.seat)]
        for t in m.tasks:
            t.cancel()
        if m.session is not None:
            try:
                await m.session.close()
            except Exception:
                pass

    async def leave(self, m: Member, graceful: bool) -> None:
        m.leaving = True
        if self.seats.get((m.call, m.seat)) is m:
            del self.seats[(m.call, m.seat)]
        self.counts["leaves" if graceful else "drops"] += 1
        try:
            if graceful:
                await m.session.leave()
            else:
                await m.session.close()
        except Exception as exc:
            self.error(f"leave p{m.number}: {type(exc).__name__}: {exc}")
        for t in m.tasks:
            t.cancel()

    def _payload(self, m: Member, kind: int, seq: int, size: int) -> bytes:
        head = TAG + bytes([kind]) + m.number.to_bytes(4, "big") + seq.to_bytes(4, "big") \
            + time.monotonic_ns().to_bytes(8, "big")
        return head + b"\x00" * (size - len(head))

    async def _send(self, m: Member) -> None:
        s = m.session
        tick = v_seq = s_seq = 0
        while True:
            if m.speaker:
                pkt = _rtp(OPUS_PT, v_seq, v_seq * 960, self._payload(m, VOICE, v_seq, VOICE_PAYLOAD))
                if s.send_voice(pkt):
                    v_seq += 1
            if tick % SCREEN_EVERY == 0 and s.sharing:
                pkt = _rtp(VP8_PT, s_seq, s_seq * 5400, self._payload(m, SCREEN, s_seq, SCREEN_PAYLOAD), True)
                if s.send_screen(pkt):
                    s_seq += 1
            tick += 1
            await asyncio.sleep(VOICE_PERIOD)

    async def _receive(self, m: Member) -> None:
        q = m.session.rtp
        stats = self.stats
        while True:
            packet = await q.get()
            at = packet.find(TAG, 12)
            if at < 0 or len(packet) < at + 21:
                continue
            now = time.monotonic_ns()
            kind = packet[at + 4]
            sender = int.from_bytes(packet[at + 5:at + 9], "big")
            seq = int.from_bytes(packet[at + 9:at + 13], "big")
            sent = int.from_bytes(packet[at + 13:at + 21], "big")
            st = m.streams.get((sender, kind))
            if st is None:
                m.streams[(sender, kind)] = [seq, seq]
                stats.w_expected += 1
                stats.w_received += 1
            else:
                if seq > st[1]:
                    stats.w_expected += seq - st[1]
                    st[1] = seq
                stats.w_received += 1  # a late (reordered) packet fills a gap counted earlier
            stats.record((now - sent) / 1e6)

    async def _drain_events(self, m: Member) -> None:
        while True:
            msg = await m.session.events.get()
            if msg.get("type") == "error" and msg.get("code") not in ("screen_busy", "glare"):
                self.error(f"p{m.number}: gateway error {msg.get('code')}: {msg.get('message')}")

    async def _watch(self, m: Member) -> None:
        closed = await m.session.wait_closed()
        if not m.leaving:
            self.counts["closed_by_gateway"] += 1
            self.error(f"p{m.number}: the gateway closed the session ({closed.code} {closed.reason!r})")
            if self.seats.get((m.call, m.seat)) is m:
                del self.seats[(m.call, m.seat)]
            for t in m.tasks:
                if t is not asyncio.current_task():
                    t.cancel()

    # -- the churn

    async def fill(self) -> None:
        """Join every empty seat (at most 10 joins at once)."""
        empty = [(c, s) for c in range(self.calls) for s in range(self.args.per_call) if (c, s) not in self.seats]
        gate = asyncio.Semaphore(10)

        async def one(c, s):
            async with gate:
                await self.join(c, s)

        await asyncio.gather(*(one(c, s) for c, s in empty))

    async def churn(self) -> None:
        members = list(self.seats.values())
        leaving = self.rng.sample(members, min(self.args.churn, len(members)))
        await asyncio.gather(*(self.leave(m, graceful=self.rng.random() >= 0.2) for m in leaving))
        await self.fill()

    async def rotate_sharers(self, now: float) -> None:
        jobs = []
        for call in range(self.calls):
            seat, since = self.sharer.get(call, (None, 0.0))
            current = self.seats.get((call, seat)) if seat is not None else None
            holding = current is not None and current.session.sharing
            if holding and now - since < self.args.share_turn:
                continue
            start = ((seat + 1) if seat is not None else 0) % self.args.per_call
            order = [(start + i) % self.args.per_call for i in range(self.args.per_call)]
            nxt = next((s for s in order if s != seat and (call, s) in self.seats), None)
            if nxt is None:
                continue
            jobs.append(self._hand_over(call, current if holding else None, self.seats[(call, nxt)], now))
        await asyncio.gather(*jobs)

    async def _hand_over(self, call: int, old: Member | None, new: Member, now: float) -> None:
        try:
            if old is not None and not old.leaving:
                await old.session.set_screen_share(False, timeout=15)
            if new.leaving:
                return
            await new.session.set_screen_share(True, timeout=15)
            self.sharer[call] = (new.seat, now)
            self.counts["share_turns"] += 1
        except Exception as exc:
            if (old is not None and old.leaving) or new.leaving:
                return  # left meanwhile: the next rotation picks someone else
            self.counts["share_failed"] += 1
            self.error(f"share turn in call {call}: {type(exc).__name__}: {exc}")

    async def leave_all(self) -> None:
        await asyncio.gather(*(self.leave(m, graceful=True) for m in list(self.seats.values())))

    # -- the abuse mix

    def abuse(self) -> None:
        task = asyncio.create_task(self._abuse_round())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _tls(self):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port, ssl=ctx), 10)

    async def _abuse_round(self) -> None:
        steps = (self._connect_close, self._tls_close, self._idle, self._trickle, self._unmasked_frame,
                 self._bad_messages)
        results = await asyncio.gather(*(s() for s in steps), return_exceptions=True)
        for step, r in zip(steps, results):
            name = step.__name__.strip("_")
            if isinstance(r, Exception):
                self.counts[f"abuse_{name}_error"] += 1
            else:
                self.counts[f"abuse_{name}"] += 1

    async def _connect_close(self) -> None:
        for _ in range(3):
            _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 10)
            w.close()

    async def _tls_close(self) -> None:
        for _ in range(2):
            _, w = await self._tls()
            w.close()

    async def _idle(self) -> None:
        _, w = await self._tls()
        self.idle.append(w)
        while len(self.idle) > ABUSE_IDLE:
            self.idle.pop(0).close()

    async def _trickle(self) -> None:
        r, w = await self._tls()
        try:
            request = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n").encode()
            for i in range(min(len(request), int(self.args.interval) - 1)):
                w.write(request[i:i + 1])
                await w.drain()
                await asyncio.sleep(1)
        finally:
            w.close()

    async def _ws_open(self):
        r, w = await self._tls()
        w.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: callsgw.v1\r\n\r\n").encode())
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            w.close()
            raise RuntimeError("no upgrade")
        return r, w

    async def _until_closed(self, r, w) -> None:
        try:
            await asyncio.wait_for(r.read(), 10)  # the gateway closes it
        finally:
            w.close()

    async def _unmasked_frame(self) -> None:
        r, w = await self._ws_open()
        w.write(b"\x81\x05hello")  # a client frame without a mask: RFC 6455 section 5.1 says close
        await self._until_closed(r, w)

    async def _bad_messages(self) -> None:
        """Protocol violations, each on its own WebSocket: what the gateway answers and when it closes.

        A bad token is refused at once (close 4001); a frame that is not JSON or of an unknown type
        gets an ``error`` and the socket is closed when the join timeout (10 s) expires (4007).
        """
        await asyncio.gather(*(self._bad_message(name, message) for name, message in (
            ("not_json", "not json {"), ("unknown_type", json.dumps({"type": "no-such-message"})),
            ("bad_token", json.dumps({"type": "join", "token": "e30.e30.bad", "sdp": "v=0"})))))

    async def _bad_message(self, name: str, message: str) -> None:
        import websockets

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        async with websockets.connect(self.url, ssl=ctx, subprotocols=["callsgw.v1"], open_timeout=10) as ws:
            await ws.send(message)
            outcome = "still_open_20s"
            try:
                async with asyncio.timeout(20):
                    async for reply in ws:
                        try:
                            code = json.loads(reply).get("code", "?")
                        except (ValueError, AttributeError):
                            code = "unparsable"
                        self.counts[f"abuse_{name}_reply_{code}"] += 1
                outcome = f"closed_{ws.close_code}"
            except websockets.ConnectionClosed as exc:
                outcome = f"closed_{exc.rcvd.code if exc.rcvd else 'abnormal'}"
            except TimeoutError:
                pass
            self.counts[f"abuse_{name}_{outcome}"] += 1

    async def stop_abuse(self) -> None:
        for t in list(self.background):
            t.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        for w in self.idle:
            w.close()
        self.idle.clear()


def _rtp(pt: int, seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
    return bytes([0x80, pt | (0x80 if marker else 0)]) + (seq & 0xFFFF).to_bytes(2, "big") \
        + (ts & 0xFFFFFFFF).to_bytes(4, "big") + b"\x00\x00\x00\x01" + payload


# -- the run -----------------------------------------------------------------------------


def load_state(out: Path, args) -> dict:
    shape = {k: getattr(args, k) for k in SHAPE_KEYS}
    path = out / STATE_FILE
    if path.exists() and not args.fresh:
        state = json.loads(path.read_text())
        if state.get("version") != STATE_VERSION:
            raise SystemExit(f"soak: {path} is from another version of this script: use --fresh")
        if state["shape"] != shape:
            diff = ", ".join(f"{k} {state['shape'].get(k)} -> {v}" for k, v in shape.items()
                             if state["shape"].get(k) != v)
            raise SystemExit(f"soak: {path} holds a run of another shape ({diff}): same options, or --fresh")
        return state
    if args.fresh and out.exists():
        for name in (STATE_FILE, REPORT_FILE, PLOT_FILE):
            (out / name).unlink(missing_ok=True)
        import shutil

        shutil.rmtree(out / "data", ignore_errors=True)
    return {"version": STATE_VERSION, "shape": shape, "timeline_s": 0.0, "segments": [], "samples": [],
            "counts": {}, "media": None, "errors": [], "finished": False}


def save_state(out: Path, state: dict) -> None:
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, out / STATE_FILE)


def sample(proc, port: int, key: str, data: Path, t: float, segment: int, phase: str) -> dict:
    s = {"t": round(t, 1), "segment": segment, "phase": phase, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "rss_mb": None, "fds": None, "tasks": None, "slots": {}, "sessions": None, "db_rows": db_rows(data)}
    s["rss_mb"] = round(rss_mb(proc.pid) or 0, 2) or None
    try:
        m = scrape(port, key)
        s.update(fds=m.get("process_open_fds"), tasks=m.get("asyncio_tasks"), slots=m["slots"],
                 sessions=m.get("sessions_live"), records_pending=m.get("records_pending"))
    except Exception as exc:
        s["scrape_error"] = f"{type(exc).__name__}: {exc}"
    return s


def progress(s: dict, extra: str = "") -> None:
    slots = sum(s["slots"].values()) if s.get("slots") else None
    loss = s.get("loss_percent")
    p95 = s.get("delay_p95_ms")
    print(f"[soak] t={s['t']:7.0f}s seg {s['segment']} {s['phase']:8} rss {s['rss_mb']} MB  fds {s['fds']}  "
          f"tasks {s['tasks']}  slots {slots}  sessions {s['sessions']}  db {s['db_rows']}  "
          f"loss {loss if loss is not None else '-'}%  p95 {p95 if p95 is not None else '-'} ms{extra}",
          file=sys.stderr, flush=True)


async def run_segment(args, out: Path, state: dict) -> None:
    from callsgw.datadir import DataDir

    data = out / "data"
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file = out / "admin_key"
    key = DataDir(data).admin_key(announce=False) if not (data / "admin_key.sha256").exists() else None
    if key is None and not key_file.exists():
        key = DataDir(data).rotate_admin_key()
    if key is not None:
        key_file.write_text(key)
        key_file.chmod(0o600)
    key = key_file.read_text().strip()
    secret = DataDir(data).api_secret()

    seg_no = len(state["segments"])
    proc, port = start_gateway(data, args.media_engine, out / "gateway.log")
    segment = {"number": seg_no, "pid": proc.pid, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "t_start": state["timeline_s"], "exit": None}
    state["segments"].append(segment)
    rng = random.Random(args.seed + seg_no)
    soak = Soak(args, state, port, secret, rng)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    total = args.minutes * 60.0

    def keep(s: dict) -> None:
        state["samples"].append(s)
        state["counts"] = dict(soak.counts)
        state["media"] = soak.stats.saved()
        save_state(out, state)
        progress(s)

    try:
        await asyncio.sleep(1.0)
        base = await asyncio.to_thread(sample, proc, port, key, data, state["timeline_s"], seg_no, "baseline")
        segment["baseline"] = {k: base[k] for k in ("rss_mb", "fds", "tasks", "slots")}
        keep(base)
        t0 = time.monotonic() - state["timeline_s"]
        next_tick = time.monotonic()
        first = True
        while state["timeline_s"] < total and not stop.is_set():
            if proc.poll() is not None:
                soak.error(f"the gateway exited with status {proc.returncode}")
                break
            if first:
                await soak.fill()
                first = False
            else:
                await soak.churn()
            await soak.rotate_sharers(time.monotonic())
            if args.abuse:
                soak.abuse()
            next_tick += args.interval
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, next_tick - time.monotonic()))
            except TimeoutError:
                pass
            state["timeline_s"] = round(time.monotonic() - t0, 1)
            s = await asyncio.to_thread(sample, proc, port, key, data, state["timeline_s"], seg_no, "churn")
            s.update(soak.stats.window())
            s["members"] = len(soak.seats)
            keep(s)
        # the calls end: everybody leaves, the abuse stops, the gateway should come back to baseline
        await soak.stop_abuse()
        await soak.leave_all()
        soak.stats.window()
        if state["timeline_s"] >= total and proc.poll() is None:
            deadline = time.monotonic() + args.settle
            while True:
                await asyncio.sleep(2.0)
                s = await asyncio.to_thread(sample, proc, port, key, data, state["timeline_s"], seg_no, "after")
                if _at_baseline(s, segment["baseline"]) or time.monotonic() > deadline or stop.is_set():
                    break
            s["settle_s"] = round(args.settle - max(0.0, deadline - time.monotonic()), 1)
            segment["after_calls"] = {k: s[k] for k in ("rss_mb", "fds", "tasks", "slots", "sessions")}
            segment["after_calls"]["settle_s"] = s["settle_s"]
            keep(s)
            state["finished"] = True
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        alive = proc.poll() is None
        segment["gateway_alive_at_end"] = alive
        segment["exit"] = stop_gateway(proc)
        segment["ended_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        segment["t_end"] = state["timeline_s"]
        state["counts"] = dict(soak.counts)
        state["media"] = soak.stats.saved()
        save_state(out, state)
    if stop.is_set() and not state["finished"]:
        raise KeyboardInterrupt


def _at_baseline(s: dict, base: dict) -> bool:
    if s.get("fds") is None or s.get("tasks") is None or base.get("fds") is None:
        return False
    return (s["fds"] <= base["fds"] and s["tasks"] <= base["tasks"]
            and all(s["slots"].get(k, 0) <= v for k, v in base["slots"].items())
            and sum(s["slots"].values()) <= sum(base["slots"].values()))


def summarise(args, state: dict) -> dict:
    samples = state["samples"]
    warm = args.warmup * 60.0
    rss_growth = []
    for seg in state["segments"]:
        mine = [s for s in samples if s["segment"] == seg["number"] and s["phase"] == "churn" and s["rss_mb"]]
        if not mine:
            continue
        start = mine[0]["t"] - args.interval
        ref = next((s for s in mine if s["t"] - start >= warm), None)
        if ref is None:
            continue
        # RSS saws up and down by several MB (the gateway's gc + malloc_trim after closed connections), so
        # growth is the mean of the last window against the mean of the first window after the warm-up
        # (windows of 5 minutes, or half of what is left after the warm-up when that is shorter)
        after = [s for s in mine if s["t"] >= ref["t"]]
        span = min(300.0, (after[-1]["t"] - ref["t"]) / 2)
        first = [s["rss_mb"] for s in after if s["t"] <= ref["t"] + span]
        final = [s["rss_mb"] for s in after if s["t"] >= after[-1]["t"] - span]
        hours = [(s["t"] - ref["t"]) / 3600 for s in after]
        slope = None
        if len(after) >= 3 and hours[-1] > 0:
            mx, my = sum(hours) / len(hours), sum(s["rss_mb"] for s in after) / len(after)
            slope = sum((x - mx) * (s["rss_mb"] - my) for x, s in zip(hours, after)) / sum((x - mx) ** 2 for x in hours)
        rss_growth.append({"segment": seg["number"], "rss_start_mb": mine[0]["rss_mb"], "rss_at_warmup_mb": ref["rss_mb"],
                           "rss_end_mb": mine[-1]["rss_mb"], "rss_max_mb": max(s["rss_mb"] for s in mine),
                           "point_growth_mb": round(mine[-1]["rss_mb"] - ref["rss_mb"], 2),
                           "window_s": round(span), "mean_first_window_mb": round(sum(first) / len(first), 2),
                           "mean_last_window_mb": round(sum(final) / len(final), 2),
                           "growth_mb": round(sum(final) / len(final) - sum(first) / len(first), 2),
                           "slope_mb_per_hour": round(slope, 2) if slope is not None else None,
                           "from_t": ref["t"], "to_t": mine[-1]["t"]})
    stats = Stats(state.get("media"))
    counts = Counter(state.get("counts") or {})
    last = state["segments"][-1] if state["segments"] else {}
    summary = {
        "timeline_s": state["timeline_s"], "finished": state["finished"], "segments": len(state["segments"]),
        "segments_cut": [s["number"] for s in state["segments"] if "ended_utc" not in s],  # killed: no clean stop
        "rss": rss_growth,
        "baseline": last.get("baseline"), "after_calls": last.get("after_calls"),
        "loss_percent": _loss(stats.expected, stats.received), "packets_expected": stats.expected,
        "packets_received": stats.received, "delay_ms": stats.delay_summary(),
        "worst_window_loss_percent": max((s["loss_percent"] for s in samples if s.get("loss_percent") is not None),
                                         default=None),
        "db_rows_end": next((s["db_rows"] for s in reversed(samples) if s.get("db_rows") is not None), None),
        "counts": dict(counts),
        "gateway_exits": [{"segment": s["number"], "exit": s.get("exit"), "alive_at_end": s.get("gateway_alive_at_end")}
                          for s in state["segments"]],
    }
    targets = {}
    if rss_growth:
        worst = max(g["growth_mb"] for g in rss_growth)
        targets["rss_growth_mb"] = {"value": worst, "limit": args.max_rss_growth_mb, "ok": worst < args.max_rss_growth_mb}
    if state["finished"]:
        ok = last.get("after_calls") is not None and _at_baseline(last["after_calls"], last["baseline"])
        targets["back_to_baseline"] = {"value": {k: last["after_calls"][k] for k in ("fds", "tasks", "slots")},
                                       "limit": {k: last["baseline"][k] for k in ("fds", "tasks", "slots")}, "ok": ok}
    loss = summary["loss_percent"]
    targets["loss_percent"] = {"value": loss, "limit": args.max_loss, "ok": loss is not None and loss < args.max_loss}
    alive = all(s.get("gateway_alive_at_end", True) for s in state["segments"])
    joins = counts["joins"]
    failed_joins = counts["joins_failed"]
    targets["no_crash"] = {"value": {"gateway_alive": alive, "closed_by_gateway": counts["closed_by_gateway"],
                                     "joins_failed": failed_joins, "joins": joins},
                           "limit": "gateway alive, 0 closed by the gateway, joins failed <= 1 %",
                           "ok": alive and counts["closed_by_gateway"] == 0 and failed_joins <= 0.01 * max(joins, 1)}
    return {"summary": summary, "targets": targets, "ok": all(t["ok"] for t in targets.values())}


def plot(state: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = state["samples"]
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 2, figsize=(13, 10), sharex=True)
    panels = (
        ("gateway RSS (MB)", lambda s: s.get("rss_mb")),
        ("open descriptors", lambda s: s.get("fds")),
        ("asyncio tasks", lambda s: s.get("tasks")),
        ("engine slots in use (all tables)", lambda s: sum(s["slots"].values()) if s.get("slots") else None),
        ("records database rows", lambda s: s.get("db_rows")),
    )
    run = [s for s in samples if s["phase"] != "after"]
    after = [s for s in samples if s["phase"] == "after"]
    for ax, (title, get) in zip(axes.flat, panels):
        ax.plot([s["t"] / 60 for s in run], [get(s) for s in run], ".-", markersize=3)
        ax.plot([(s["t"] + s.get("settle_s", 0)) / 60 for s in after], [get(s) for s in after], "o",
                color="tab:green", markersize=6, label="after the calls ended")
        for seg in state["segments"]:
            base = seg.get("baseline") or {}
            value = get({**base, "db_rows": None})
            if value is not None and title != "gateway RSS (MB)":
                ax.axhline(value, color="tab:green", linestyle="--", linewidth=0.8)
        ax.set_title(title + ("" if title.startswith(("gateway RSS", "records")) else
                              " (dashed: baseline before the first join)"), fontsize=10)
    ax = axes.flat[5]
    ax.plot(t, [s.get("loss_percent") for s in samples], ".-", markersize=3, color="tab:red", label="loss % (window)")
    ax.axhline(args.max_loss, color="tab:red", linestyle="--", linewidth=0.8)
    ax.set_title("loss % (red) and p95 one-way delay ms (blue) per window", fontsize=10)
    ax2 = ax.twinx()
    ax2.plot(t, [s.get("delay_p95_ms") for s in samples], ".-", markersize=3, color="tab:blue")
    ax2.set_ylabel("p95 delay (ms, log)", color="tab:blue")
    ax2.set_yscale("log")
    ax.set_ylabel("loss (%)", color="tab:red")
    ax.legend(fontsize=8, loc="upper left")
    for ax in axes.flat:
        for seg in state["segments"]:
            ax.axvline(seg["t_start"] / 60, color="grey", linestyle=":", linewidth=0.8)
            ax.axvspan(seg["t_start"] / 60, (seg["t_start"] + args.warmup * 60) / 60, color="grey", alpha=0.08)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("minutes of timeline (dotted: a gateway (re)started; shaded: its warm-up)")
    shape = state["shape"]
    fig.suptitle(f"callsgw soak: {shape['participants']} participants in calls of {shape['per_call']}, "
                 f"{shape['churn']} leave and join every {shape['interval']:g} s (green: after the calls ended)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the timeline (default 60)")
    parser.add_argument("--participants", type=int, default=100, help="participants at any time (default 100)")
    parser.add_argument("--per-call", type=int, default=5, help="participants per call (default 5)")
    parser.add_argument("--speakers-per-call", type=int, default=2, help="seats of a call sending voice (default 2)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between churn steps and samples (10)")
    parser.add_argument("--churn", type=int, default=10, help="participants leaving and joining per step (10)")
    parser.add_argument("--share-turn", type=float, default=30.0, help="seconds a screen sharer keeps its turn (30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes before RSS growth is measured (5)")
    parser.add_argument("--settle", type=float, default=90.0,
                        help="seconds to wait after the calls end for the baseline to come back (90)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=10.0, help="RSS growth target, MB (10)")
    parser.add_argument("--max-loss", type=float, default=0.5, help="loss target, percent (0.5)")
    parser.add_argument("--no-abuse", dest="abuse", action="store_false", help="leave out the WebSocket abuse mix")
    parser.add_argument("--media-engine", default=None, help="callsgw serve --media-engine (default: its default)")
    parser.add_argument("--seed", type=int, default=20, help="random seed of the churn (20)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/soak"), help="report, plot and state directory")
    parser.add_argument("--fresh", action="store_true", help="discard a saved state in --out and start over")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite soak.json and soak.png from the saved state, run nothing")
    args = parser.parse_args(argv)
    if args.per_call < 2 or args.participants < args.per_call or args.participants % args.per_call:
        parser.error("--participants must be a multiple of --per-call (at least 2)")
    if not 0 <= args.churn <= args.participants:
        parser.error("--churn must be between 0 and --participants")
    if args.interval < 2 or args.minutes <= 0 or args.warmup < 0 or args.settle < 0:
        parser.error("--interval at least 2 s, --minutes above 0, --warmup and --settle not negative")
    if not 0 <= args.speakers_per_call <= args.per_call:
        parser.error("--speakers-per-call must be between 0 and --per-call")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out
    if args.report_only and (args.fresh or not (out / STATE_FILE).exists()):
        print(f"soak: --report-only needs a saved state in {out} (and no --fresh)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    try:
        state = load_state(out, args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    if state["finished"] and state["timeline_s"] < args.minutes * 60:
        state["finished"] = False  # --minutes raised: go on
    interrupted = False
    if not state["finished"] and not args.report_only:
        if state["segments"]:
            print(f"[soak] resuming {out / STATE_FILE} at t={state['timeline_s']:.0f} s "
                  f"(segment {len(state['segments'])})", file=sys.stderr, flush=True)
        try:
            asyncio.run(run_segment(args, out, state))
        except KeyboardInterrupt:
            interrupted = True
    report = {"config": {**vars(args), "out": str(out)}, "segments": state["segments"], **summarise(args, state),
              "samples": state["samples"], "errors": state["errors"], "interrupted": interrupted}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1))
    try:
        plot(state, args, out / PLOT_FILE)
    except Exception as exc:  # a missing matplotlib must not lose the report
        print(f"[soak] no plot: {type(exc).__name__}: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        s = report["summary"]
        print(f"soak: {s['timeline_s']:.0f} s of timeline in {s['segments']} segment(s), "
              f"{'finished' if s['finished'] else 'NOT finished (run again to resume)'}")
        for g in s["rss"]:
            print(f"  RSS seg {g['segment']}: start {g['rss_start_mb']:.1f} MB, after warm-up {g['rss_at_warmup_mb']:.1f}, "
                  f"end {g['rss_end_mb']:.1f}, max {g['rss_max_mb']:.1f} (end - after warm-up "
                  f"{g['point_growth_mb']:+.1f}); mean of the last {g['window_s']} s - mean of the first "
                  f"{g['window_s']} s after warm-up: {g['growth_mb']:+.1f} MB; trend {g['slope_mb_per_hour']} MB/h")
        print(f"  baseline {s['baseline']}\n  after calls {s['after_calls']}")
        print(f"  loss {s['loss_percent']} % of {s['packets_expected']} packets (worst window "
              f"{s['worst_window_loss_percent']} %), delay {s['delay_ms']}")
        print(f"  db rows {s['db_rows_end']}, counts {s['counts']}")
        for name, t in report["targets"].items():
            print(f"  target {name}: {'ok' if t['ok'] else 'MISSED'} ({t['value']} vs {t['limit']})")
        print(f"  report {out / REPORT_FILE}, plot {out / PLOT_FILE}, state {out / STATE_FILE}")
    if interrupted:
        return 130
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

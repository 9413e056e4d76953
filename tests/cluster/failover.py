"""A call's node killed with SIGKILL, and the call restored (issue #16 item 1): shared by the test
and ``benchmarks/bench_failover.py``.

Two ``callsgw serve`` processes in one cluster (a real redis-server and PostgreSQL). Two
``callsgw.client`` participants, each given both nodes' URLs (in opposite orders), join one call;
one of them is therefore relayed. The node that hosts the call is killed with SIGKILL; then:

* the participant whose WebSocket was on the killed node sees it drop (1006), tries to resume
  through the other URL, is refused (the session died with its node: 4011, or 1012 while the
  survivor still believes in the lost node) and joins again with its token;
* the participant relayed through the survivor gets ``bye`` ``node_lost`` (``reconnect: true``)
  once the killed node's registry entry has expired, resumes, is refused, joins again.

The first join places the call again (on the survivor), and media flows again. The figure is
the time from SIGKILL to the first voice packet the listener receives from the rejoined speaker.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from callsgw.apisecrets import SystemsApiSecrets
from callsgw.client import connect
from callsgw.cluster import keys
from callsgw.cluster.node import connect_redis, read_nodes
from callsgw.cluster.seal import Seal
from callsgw.security.db import open_store
from callsgw.signaling import tokens

_URL = re.compile(r"open https://127\.0\.0\.1:(\d+)/")


@dataclass
class ServeNode:
    name: str
    proc: subprocess.Popen
    port: int

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ws"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


async def start_node(workdir: Path, name: str, redis_url: str, pg_url: str) -> ServeNode:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "callsgw", "serve", "--data-dir", str(workdir / name), "--cluster", redis_url,
         "--database", pg_url, "--node-id", name, "--listen", "127.0.0.1", "--port", "0",
         "--media-host", "127.0.0.1", "--media-port", "0", "--ice-host", "127.0.0.1", "--shutdown-grace", "0",
         "--joins-per-second", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=60)
    match = _URL.search(line)
    if match is None:
        proc.kill()
        err = proc.stderr.read()
        raise RuntimeError(f"serve {name} did not start: {line!r} {err[-2000:]}")
    return ServeNode(name, proc, int(match.group(1)))


def _voice(session, seq: int) -> bytes:
    ssrc = session.voice_ssrc or 1
    return bytes([0x80, 111]) + (seq & 0xFFFF).to_bytes(2, "big") + (seq * 960 & 0xFFFFFFFF).to_bytes(4, "big") \
        + ssrc.to_bytes(4, "big") + b"\xf8\xff\xfe"


async def talk(session) -> None:
    """Voice from ``session`` every 20 ms until cancelled (nowhere to send between a loss and a rejoin)."""
    seq = 0
    while True:
        seq += 1
        try:
            session.send_voice(_voice(session, seq))
        except Exception:
            pass
        await asyncio.sleep(0.02)


async def _host(redis_url: str, keyring, names: set[str], timeout: float = 15.0) -> str:
    """The node whose registry entry says it hosts one call (after its next heartbeat)."""
    redis = await connect_redis(redis_url)
    seal = Seal("callsgw", "failover-reader", keyring)
    try:
        async with asyncio.timeout(timeout):
            while True:
                entries, _ = await read_nodes(redis, seal, time.time())
                hosts = [e.node_id for e in entries if e.load.calls >= 1]
                if {e.node_id for e in entries} == names and len(hosts) == 1:
                    return hosts[0]
                await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


@dataclass
class FailoverResult:
    killed: str
    restored_after: float  # seconds from SIGKILL to the first voice packet of the rejoined speaker
    bye_reasons: list[str]
    rejoins: int


async def failover_once(workdir: Path, redis_url: str, pg_url: str, call: str = "failover") -> FailoverResult:
    workdir.mkdir(parents=True, exist_ok=True)
    nodes = [await start_node(workdir, n, redis_url, pg_url) for n in ("fo-1", "fo-2")]
    speaker = listener = None
    try:
        store = open_store(pg_url, workdir)
        try:
            secret = SystemsApiSecrets(store).current()
            keyring = keys.read_keyring(store)
        finally:
            store.close()
        urls = [n.ws_url for n in nodes]
        speaker = await connect(urls, tokens.mint(secret, call=call, name="speaker"), ssl=False)
        listener = await connect(list(reversed(urls)), tokens.mint(secret, call=call, name="listener"), ssl=False)
        await asyncio.wait_for(asyncio.gather(speaker.wait_connected(), listener.wait_connected()), 30)
        killed = await _host(redis_url, keyring, {n.name for n in nodes})

        talking = asyncio.create_task(talk(speaker))
        try:
            async with asyncio.timeout(10):  # media flows before the kill
                await listener.rtp.get()
            victim = next(n for n in nodes if n.name == killed)
            victim.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            while not listener.rtp.empty():
                listener.rtp.get_nowait()
            async with asyncio.timeout(45):
                while True:
                    await listener.rtp.get()
                    if speaker.rejoins and listener.rejoins:
                        restored_after = time.monotonic() - killed_at
                        break
        finally:
            talking.cancel()
        byes = []
        for queue in (listener.events, speaker.events):
            while not queue.empty():
                event = queue.get_nowait()
                if event.get("type") == "bye":
                    byes.append(event.get("reason"))
        return FailoverResult(killed, restored_after, byes, speaker.rejoins + listener.rejoins)
    finally:
        for session in (speaker, listener):
            if session is not None:
                await session.close()
        for node in nodes:
            node.stop()

"""Security records through faults (issue #20 item 3): nothing lost, nothing corrupted.

* The PostgreSQL server restarts mid-run: media goes on, records wait in the writer's bounded
  buffer (counted in ``/metrics``), the outage is logged once, and everything is written after the
  store reconnects.
* The SQLite file system fills up: the same, with a real tmpfs in a private mount namespace
  (``unshare -m``), filled by ``nsenter`` into it, then emptied.
* ``kill -9`` of the gateway mid-call, then a restart on the same data directory: the database
  passes ``PRAGMA integrity_check``, every session acknowledged durable before the kill
  (``callsgw_records_written_total``) is there, and the client that was in the call comes back
  through the session-resumption path (its resume is refused by the new process; it joins again).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callsgw.client import connect
from callsgw.security.db import open_store
from callsgw.signaling import tokens
from tests.cluster.test_outages import StoppablePg
from tests.cluster.test_relay import hears
from tests.signaling.gateway import running_gateway


def url(app) -> str:
    return f"wss://127.0.0.1:{app.port}/ws"


async def test_a_postgresql_restart_mid_call_buffers_records_and_writes_them_after(tmp_path, caplog):
    pg = StoppablePg()
    if pg.skip_reason:
        pytest.skip(pg.skip_reason)
    try:
        db = pg.new_database()
        async with running_gateway(tmp_path, database=db) as app:
            secret = app.datadir.api_secret()
            ann = await connect(url(app), tokens.mint(secret, call="pg", name="ann"), ssl=False)
            ben = await connect(url(app), tokens.mint(secret, call="pg", name="ben"), ssl=False)
            try:
                await asyncio.wait_for(asyncio.gather(ann.wait_connected(), ben.wait_connected()), 20)
                assert await app.records.drain(5)
                caplog.set_level(logging.WARNING, logger="callsgw.security")
                await asyncio.to_thread(pg.halt)
                cid = await connect(url(app), tokens.mint(secret, call="pg", name="cid"), ssl=False)
                await cid.wait_connected(timeout=20)
                await hears(ann, cid)  # media goes on while the database is away
                await cid.close()
                await asyncio.sleep(1.5)  # the writer tries, fails, backs off
                stats = app.records.stats()
                assert stats["pending"] >= 1 and stats["failures"] >= 1 and stats["outage"], stats
                await asyncio.to_thread(pg.resume)
                assert await app.records.drain(20), app.records.stats()
                refusals = [r for r in caplog.records if "refuses writes" in r.getMessage()]
                assert len(refusals) == 1  # logged once per outage, however many retries
                assert any("takes writes again" in r.getMessage() for r in caplog.records)
            finally:
                await ann.close()
                await ben.close()
        store = open_store(db, tmp_path)
        try:
            rows = {r.participant_name: r for r in store.list(call_id="pg")}
        finally:
            store.close()
        assert set(rows) == {"ann", "ben", "cid"} and rows["cid"].left_at is not None
    finally:
        pg.stop()


# -- the gateway as a process in a private mount namespace -------------------------------------


def _free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``callsgw serve`` on fixed ports; with ``tmpfs``, its data directory is a private tmpfs."""

    def __init__(self, data: Path, port: int, media_port: int, *, tmpfs: str | None = None):
        self.data, self.port = data, port
        argv = [sys.executable, "-m", "callsgw", "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
                "--port", str(port), "--media-host", "127.0.0.1", "--media-port", str(media_port),
                "--ice-host", "127.0.0.1", "--shutdown-grace", "0", "--joins-per-second", "100"]
        if tmpfs is not None:
            data.mkdir(parents=True, exist_ok=True)
            argv = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size={tmpfs} tmpfs "$0" && exec "$@"', str(data),
                    *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self.proc.stdout.readline()
        if "callsgw is serving" not in line:
            self.proc.kill()
            raise RuntimeError(f"serve did not start: {line!r} {self.proc.stderr.read()[-2000:]}")

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ws"

    def path(self, name: str) -> Path:
        """A file of the data directory as this process sees it (inside its mount namespace)."""
        return Path(f"/proc/{self.proc.pid}/root") / str(self.data).lstrip("/") / name

    def in_namespace(self, *command: str) -> None:
        subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", *command], check=True, capture_output=True)

    def metric(self, name: str) -> float:
        import ssl
        import urllib.request

        key = self.path("admin_key.new").read_text().strip()
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        request = urllib.request.Request(f"https://127.0.0.1:{self.port}/metrics",
                                         headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
            text = response.read().decode()
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match is not None, f"{name} not in /metrics"
        return float(match.group(1))

    def stop(self, sig=signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err


async def _until(predicate, timeout: float, what: str):
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(predicate):
            await asyncio.sleep(0.2)


needs_namespaces = pytest.mark.skipif(shutil.which("nsenter") is None or os.geteuid() != 0,
                                      reason="needs root and nsenter (util-linux) for a private mount namespace")


@needs_namespaces
async def test_a_full_disk_under_sqlite_buffers_records_and_media_goes_on(tmp_path):
    node = ServeProcess(tmp_path / "data", _free_port(), _free_port(socket.SOCK_DGRAM), tmpfs="8m")
    try:
        secret = _read_secret(node)
        ann = await connect(node.ws_url, tokens.mint(secret, call="disk", name="ann"), ssl=False)
        ben = await connect(node.ws_url, tokens.mint(secret, call="disk", name="ben"), ssl=False)
        try:
            await asyncio.wait_for(asyncio.gather(ann.wait_connected(), ben.wait_connected()), 20)
            await _until(lambda: node.metric("callsgw_records_pending") == 0, 10, "records written")
            # fill the tmpfs (a remount read-only is refused while SQLite holds the file open: EBUSY)
            node.in_namespace("sh", "-c", f'dd if=/dev/zero of="{node.data}/fill" bs=64k 2>/dev/null; true')
            cid = await connect(node.ws_url, tokens.mint(secret, call="disk", name="cid"), ssl=False)
            await cid.wait_connected(timeout=20)
            await hears(cid, ann)  # media and joins go on
            await cid.close()
            await _until(lambda: node.metric("callsgw_records_write_failures_total") >= 1, 15, "a refused write")
            assert node.metric("callsgw_records_pending") >= 1
            node.in_namespace("rm", "-f", f"{node.data}/fill")
            await _until(lambda: node.metric("callsgw_records_pending") == 0, 30, "the buffer drained")
            assert node.metric("callsgw_records_dropped_total") == 0
            await hears(ann, ben)
        finally:
            await ann.close()
            await ben.close()
        # SQLite resolves the /proc/PID/root link to the path outside the namespace: copy the files out
        # (the writer is idle, nothing pending) and open the copy, write-ahead log included
        copy = tmp_path / "copy"
        copy.mkdir()
        for suffix in ("", "-wal"):
            source = node.path("records.sqlite3" + suffix)
            if source.exists():
                (copy / ("records.sqlite3" + suffix)).write_bytes(source.read_bytes())
        db = sqlite3.connect(copy / "records.sqlite3")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            names = {row[0] for row in db.execute("SELECT json_extract(record, '$.participant_name') FROM sessions")}
        finally:
            db.close()
        assert names == {"ann", "ben", "cid"}
    finally:
        err = node.stop()
    assert err.count("refuses writes") == 1, err[-3000:]  # one line per outage, not one per retry
    assert "Traceback" not in err


def _read_secret(node: ServeProcess) -> bytes:
    """The data directory's API secret (32 raw bytes), read through the process's mount namespace."""
    return node.path("api_secret").read_bytes()


async def test_kill_9_mid_call_loses_no_acknowledged_record_and_the_client_comes_back(tmp_path):
    port, media_port = _free_port(), _free_port(socket.SOCK_DGRAM)
    node = ServeProcess(tmp_path / "data", port, media_port)
    live = None
    try:
        secret = _read_secret(node)
        for n in range(5):  # sessions that end before the kill
            s = await connect(node.ws_url, tokens.mint(secret, call="crash", name=f"gone{n}"), ssl=False)
            await s.wait_connected(timeout=20)
            await s.close()
        live = await connect(node.ws_url, tokens.mint(secret, call="crash", name="live"), ssl=False)
        await live.wait_connected(timeout=20)
        # the acknowledgement: every version written, nothing pending (5 joins, 5 leaves, 1 join)
        await _until(lambda: node.metric("callsgw_records_pending") == 0
                     and node.metric("callsgw_records_written_total") >= 11, 15, "records durable")
        node.stop(signal.SIGKILL)
        db = sqlite3.connect(tmp_path / "data" / "records.sqlite3")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = dict(db.execute("SELECT json_extract(record, '$.participant_name'), left_at FROM sessions"))
        finally:
            db.close()
        assert {f"gone{n}" for n in range(5)} <= set(rows) and all(rows[f"gone{n}"] is not None for n in range(5))
        assert "live" in rows  # its join was durable; the crash gave it no end
        node = ServeProcess(tmp_path / "data", port, media_port)  # the same data directory, the same ports
        async with asyncio.timeout(40):  # resume refused by the new process, then a fresh join
            while live.rejoins == 0:
                await asyncio.sleep(0.1)
        await live.ping()
        assert live.resumes == 0
    finally:
        if live is not None:
            await live.close()
        node.stop()

"""Real parts for the cluster tests: PostgreSQL and redis-server from Debian's packages, on loopback.

PostgreSQL is the same throwaway cluster the records tests use
(:class:`tests.security.conftest._PgCluster`: ``initdb`` in a temporary
directory, a Unix socket only), started once per session; each test gets its
own database. ``redis_server`` starts a private ``redis-server`` per test on
127.0.0.1 and a free port (no persistence), so every test sees an empty Redis
and a MONITOR sees only that test's traffic. Missing binaries skip the tests
that need them, with the reason (``./scripts/test.sh`` installs both).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from callsgw.security.db import open_store
from tests.security.conftest import _PgCluster


@pytest.fixture(scope="session")
def pg_cluster():
    cluster = _PgCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """A fresh, empty PostgreSQL database."""
    if pg_cluster.skip_reason:
        pytest.skip(pg_cluster.skip_reason)
    return pg_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def systems_store(request, tmp_path):
    """A records store (hence a Systems table) on each backend; ``.url`` and ``.data_dir`` set."""
    data_dir = tmp_path / "data"
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = open_store(url, data_dir)
    store.url = url
    store.data_dir = data_dir
    try:
        yield store
    finally:
        store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process on 127.0.0.1 (no RDB, no AOF), stopped by :meth:`stop`."""

    def __init__(self, workdir: Path):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            pytest.skip("redis-server not found (apt-get install redis-server)")
        self.binary = binary
        self.port = _free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> None:
        """Start redis-server on this port (again, after :meth:`stop`: empty, as after a crash)."""
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start: {err}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()

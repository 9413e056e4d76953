"""Fixtures: a records store on each backend.

``store_factory`` is parametrised over ``sqlite`` and ``postgresql``, so every
test that uses it runs against both. PostgreSQL is a throwaway cluster of
Debian's package (``apt-get install postgresql``), made in a temporary
directory by ``initdb`` and listening only on a Unix socket in that
directory; it is started once per test session and removed at the end. Each
test gets its own database. When PostgreSQL or psycopg is missing, or the
cluster cannot start, the PostgreSQL variants are skipped with the reason.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from callsgw.security.db import open_store


def _pg_bindir() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


class _PgCluster:
    """A private PostgreSQL cluster on a Unix socket; ``skip_reason`` if it could not start."""

    def __init__(self) -> None:
        self.skip_reason: str | None = None
        self.tmp: Path | None = None
        self.started = False
        self.startup_seconds: float | None = None
        self._counter = itertools.count()
        began = time.monotonic()
        try:
            import psycopg  # noqa: F401
        except ImportError:
            self.skip_reason = "psycopg 3 is not installed (pip install 'psycopg[binary]')"
            return
        bindir = _pg_bindir()
        if bindir is None or not (bindir / "pg_ctl").exists():
            self.skip_reason = "PostgreSQL server binaries not found (apt-get install postgresql)"
            return
        self.bindir = bindir
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses to run as root: run the cluster as the postgres user.
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                self.skip_reason = "running as root and there is no 'postgres' user to run the cluster"
                return
            runuser = shutil.which("runuser")
            if runuser is None:
                self.skip_reason = "running as root without runuser(1) to drop to the 'postgres' user"
                return
            self.as_user = [runuser, "-u", "postgres", "--"]
        self.tmp = Path(tempfile.mkdtemp(prefix="callsgw-pg-"))
        if self.as_user:
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
        self.data = self.tmp / "data"
        self.socket_dir = str(self.tmp)
        self.port = 5432  # names the socket file only: nothing listens on TCP
        try:
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                "--no-locale", "--no-sync",
            )
            self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.tmp / "server.log"), "-w", "-t", "60",
                "-o", f"-k {self.socket_dir} -p {self.port} -c listen_addresses='' -c fsync=off"
                " -c synchronous_commit=off -c full_page_writes=off",
                "start",
            )
            self.started = True
        except (OSError, subprocess.SubprocessError) as exc:
            log = ""
            try:
                log = (self.tmp / "server.log").read_text()[-2000:]
            except OSError:
                pass
            self.skip_reason = f"could not start a PostgreSQL cluster: {exc} {getattr(exc, 'stderr', '') or ''} {log}"
            self.stop()
            return
        self.startup_seconds = time.monotonic() - began

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            check=True, capture_output=True, text=True, timeout=120, cwd=self.tmp,
        )

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}&port={self.port}"

    def new_database(self) -> str:
        import psycopg

        name = f"records_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name is ours, not input
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except (OSError, subprocess.SubprocessError):
                pass
            self.started = False
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


@pytest.fixture(scope="session")
def pg_cluster():
    cluster = _PgCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """``(kind, url, data_dir)`` of a fresh, empty database on each backend."""
    data_dir = tmp_path / "data"
    if request.param == "sqlite":
        return "sqlite", None, data_dir
    cluster = request.getfixturevalue("pg_cluster")
    if cluster.skip_reason:
        pytest.skip(cluster.skip_reason)
    return "postgresql", cluster.new_database(), data_dir


@pytest.fixture
def store_factory(backend):
    """``open(target_version=None)`` -> a store on the test's database; all closed at the end."""
    kind, url, data_dir = backend
    opened = []

    def open_(**kwargs):
        store = open_store(url, data_dir, **kwargs)
        opened.append(store)
        return store

    open_.kind = kind
    open_.url = url
    open_.data_dir = data_dir
    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory):
    return store_factory()

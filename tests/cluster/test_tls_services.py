"""TLS to the cluster's shared services (issue #16 deliverable 4), with Debian's redis-server and PostgreSQL.

A throwaway CA signs a certificate for 127.0.0.1 (tests/cluster/tlscerts.py).
redis-server listens with ``--tls-port`` only (``--port 0``: no plain port at
all); PostgreSQL runs with ``ssl=on`` on a TCP listener on 127.0.0.1 and a
``pg_hba.conf`` that admits TCP clients over TLS only (``hostssl``). Two
cluster nodes reach both through
``rediss://...?ssl_ca_certs=CA`` and ``postgresql://...?sslmode=verify-full&sslrootcert=CA``
and carry a relayed call; a CA that did not sign the servers' certificates
stops ``callsgw serve`` with one line, for each service.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from callsgw.client import connect
from callsgw.cluster.services import redis_options, redis_url_problem, tls_failure
from callsgw.config import Config, ConfigError
from tests.cluster.conftest import _free_port
from tests.cluster.test_nodes import cluster_gateway, serve_once, ws_url
from tests.cluster.test_relay import hears, mint
from tests.cluster.tlscerts import issue, make_ca
from tests.security.conftest import _pg_bindir

# -- the URL rules (no services needed) --------------------------------------------------------------


@pytest.mark.parametrize("url, problem", [
    ("rediss://h:6380/0?ssl_cert_reqs=none", "ssl_cert_reqs must stay 'required'"),
    ("rediss://h:6380/0?ssl_cert_reqs=optional", "ssl_cert_reqs must stay 'required'"),
    ("rediss://:hunter2@h:6380/0?ssl_check_hostname=false", "ssl_check_hostname may not be turned off"),
    ("rediss://h:6380/0?ssl_min_version=770", "ssl_min_version must be 771"),
    ("rediss://h:6380/0?ssl_min_version=x", "ssl_min_version must be 771"),
    ("redis://h:6379/0?ssl_ca_certs=/etc/ca.pem", "needs a rediss:// URL"),
])
def test_redis_urls_that_weaken_tls_are_refused_without_echoing_them(url, problem):
    assert problem in redis_url_problem(url)
    with pytest.raises(ConfigError) as refused:
        Config(cluster=url, database="postgresql://h/db")
    assert problem in str(refused.value) and "hunter2" not in str(refused.value)


def test_rediss_urls_are_verified_tls_12_or_newer():
    good = "rediss://h:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_min_version=772"
    assert redis_url_problem(good) is None and redis_url_problem("redis://h:6379/0") is None
    options = redis_options(good)
    assert options["ssl_cert_reqs"] == "required" and options["ssl_check_hostname"] is True
    assert options["ssl_min_version"] == ssl.TLSVersion.TLSv1_2
    assert "ssl_cert_reqs" not in redis_options("redis://h:6379/0")  # plain URLs get no TLS options


def test_sslrootcert_needs_a_verifying_sslmode():
    with pytest.raises(ConfigError, match="sslrootcert is only used with sslmode=verify-full"):
        Config(database="postgresql://gw@h/db?sslrootcert=/etc/ca.pem")
    with pytest.raises(ConfigError, match="sslmode is require"):
        Config(database="postgresql://gw@h/db?sslmode=require&sslrootcert=/etc/ca.pem")
    assert Config(database="postgresql://gw@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem").database


def test_tls_failures_are_told_apart():
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    wrapped = ConnectionError("Error connecting")
    wrapped.__cause__ = verify
    assert "TLS certificate verification failed (unable to get local issuer certificate)" in tls_failure(wrapped)
    assert tls_failure(ConnectionRefusedError(111, "refused")) is None


# -- the services over TLS ---------------------------------------------------------------------------


class TlsRedis:
    """redis-server with a TLS port only (``--port 0``)."""

    def __init__(self, workdir: Path, cert: Path, key: Path, ca: Path):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            pytest.skip("redis-server not found (apt-get install redis-server)")
        self.port = _free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
             "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
             "--save", "", "--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        ctx = ssl.create_default_context(cafile=str(ca))
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw, \
                        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError(f"redis-server with TLS did not start: {err}")
            time.sleep(0.05)

    def url(self, ca: Path) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(ca))}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class TlsPostgres:
    """A private PostgreSQL cluster with ``ssl=on``: TCP on 127.0.0.1 (``hostssl`` only) and its Unix socket."""

    def __init__(self, cert: Path, key: Path):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.skip("psycopg 3 is not installed")
        bindir = _pg_bindir()
        if bindir is None or not (bindir / "pg_ctl").exists():
            pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bindir, self.as_user, self.started = bindir, [], False
        self.tmp = Path(tempfile.mkdtemp(prefix="callsgw-pgtls-"))
        owner = None
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as postgres
            owner = pwd.getpwnam("postgres")
            self.as_user = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
        # the server's key must belong to the server's user and be 0600 (PostgreSQL checks both)
        self.cert, self.key = self.tmp / "server.pem", self.tmp / "server.key"
        shutil.copyfile(cert, self.cert)
        shutil.copyfile(key, self.key)
        os.chmod(self.key, 0o600)
        if owner is not None:
            for path in (self.tmp, self.cert, self.key):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.data, self.port = self.tmp / "data", _free_port()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale",
                  "--no-sync")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 trust\n"  # TCP only over TLS
            "hostnossl all all 127.0.0.1/32 reject\n")
        try:
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.tmp / "server.log"), "-w", "-t", "60", "-o",
                      f"-k {self.tmp} -p {self.port} -c listen_addresses=127.0.0.1 -c ssl=on "
                      f"-c ssl_cert_file={self.cert} -c ssl_key_file={self.key} -c fsync=off", "start")
        except subprocess.CalledProcessError as exc:
            log = (self.tmp / "server.log").read_text() if (self.tmp / "server.log").exists() else ""
            self.stop()
            raise RuntimeError(f"PostgreSQL with ssl=on did not start: {exc.stderr} {log[-2000:]}") from None
        self.started = True
        self._run_sql("CREATE DATABASE records")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / tool), *args], check=True, capture_output=True,
                       text=True, timeout=120, cwd=self.tmp)

    def _run_sql(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@/postgres?host={self.tmp}&port={self.port}",
                             autocommit=True) as conn:
            conn.execute(sql)

    def url(self, ca: Path, mode: str = "verify-full") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/records?sslmode={mode}&sslrootcert={quote(str(ca))}"

    def stop(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except (OSError, subprocess.SubprocessError):
                pass
            self.started = False
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_services(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls-services")
    ca = make_ca(root / "ca")
    wrong = make_ca(root / "other-ca", name="not the services' CA")
    cert, key = issue(ca, root / "server")
    redis = TlsRedis(root / "redis", cert, key, ca.cert_path)
    try:
        pg = TlsPostgres(cert, key)
    except BaseException:
        redis.stop()
        raise
    try:
        yield redis, pg, ca.cert_path, wrong.cert_path
    finally:
        pg.stop()
        redis.stop()


class _Urls:
    def __init__(self, redis_url: str):
        self.url = redis_url


def test_postgresql_refuses_tcp_without_tls_and_reports_tls_to_us(tls_services):
    import psycopg

    _, pg, ca, _ = tls_services
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/records?sslmode=disable", connect_timeout=5)
    with psycopg.connect(pg.url(ca), connect_timeout=5) as conn:
        ssl_on, version = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert ssl_on is True and version in ("TLSv1.2", "TLSv1.3")


async def test_two_nodes_over_tls_to_redis_and_postgresql_carry_a_relayed_call(tmp_path, tls_services):
    redis, pg, ca, _ = tls_services
    services = _Urls(redis.url(ca))
    async with cluster_gateway(tmp_path, "tls-a", services, pg.url(ca)) as a, \
            cluster_gateway(tmp_path, "tls-b", services, pg.url(ca)) as b:
        for node in (a, b):
            await node.cluster.heartbeat()
        assert [n.node_id for n in a.cluster.view] == ["tls-a", "tls-b"]  # registered over rediss://
        assert a.secrets.current() == b.secrets.current()  # the Systems row, read over verified TLS
        assert await b.cluster.place("tls-call", prefer_self=True) == "tls-b"
        ann = await connect(ws_url(a), mint(a, "tls-call", "ann"), ssl=False)  # relayed by A over the TLS bus
        ben = await connect(ws_url(b), mint(b, "tls-call", "ben"), ssl=False)
        try:
            await asyncio.wait_for(asyncio.gather(ann.wait_connected(), ben.wait_connected()), 20)
            assert a.relay.stats()["origin_sessions"] == 1 and b.core.participant_count == 2
            await hears(ann, ben)
            await hears(ben, ann)
            # the operators' commands reach both services over the same verified TLS
            status = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "callsgw", "cluster", "status", "--json", "--data-dir",
                                 str(tmp_path / "ops"), "--cluster", redis.url(ca), "--database", pg.url(ca)],
                capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stderr
            assert [n["node_id"] for n in json.loads(status.stdout)["nodes"]] == ["tls-a", "tls-b"]
        finally:
            await ann.close()
            await ben.close()


def test_serve_stops_with_one_line_when_redis_has_another_ca(tmp_path, tls_services):
    redis, pg, ca, wrong = tls_services
    rc, err = serve_once(tmp_path, "--cluster", redis.url(wrong), "--database", pg.url(ca))
    lines = [line for line in err.splitlines() if "error" in line]
    assert rc == 1 and "Traceback" not in err, err
    assert len(lines) == 1 and f"cannot reach the cluster's Redis at rediss://127.0.0.1:{redis.port}/0" in lines[0]
    assert "TLS certificate verification failed" in lines[0] and str(wrong) not in lines[0]


def test_serve_stops_with_one_line_when_postgresql_has_another_ca(tmp_path, tls_services):
    redis, pg, ca, wrong = tls_services
    rc, err = serve_once(tmp_path, "--cluster", redis.url(ca), "--database", pg.url(wrong))
    lines = [line for line in err.splitlines() if "error" in line]
    assert rc == 1 and "Traceback" not in err, err
    assert len(lines) == 1 and "cannot connect to the records database" in lines[0]
    assert "certificate verify failed" in lines[0]

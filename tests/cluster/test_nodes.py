"""Cluster mode with real parts (issue #15 items 1-3): redis-server and PostgreSQL on loopback.

Gateways run in-process (``GatewayApp``) and as ``callsgw serve`` processes;
``ClusterNode`` instances without a gateway race for placements.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import ssl
import urllib.error
import urllib.request

import pytest

import callsgw.cli as cli
from callsgw.client import connect
from callsgw.cluster import keys
from callsgw.cluster.node import ClusterNode, LocalState, connect_redis, read_nodes
from callsgw.cluster.registry import ENTRY_TTL
from callsgw.cluster.seal import Seal
from callsgw.config import Config, ConfigError
from callsgw.datadir import DataDir
from callsgw.security.db import open_store
from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway


def ws_url(app) -> str:
    return f"wss://127.0.0.1:{app.port}/ws"


@contextlib.asynccontextmanager
async def cluster_gateway(tmp_path, name, redis_server, pg_url, **overrides):
    async with running_gateway(tmp_path / name, cluster=redis_server.url, database=pg_url, node_id=name,
                               **overrides) as app:
        yield app


def api_get(app, path):
    key = DataDir(app.config.data_dir).rotate_admin_key()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(f"https://127.0.0.1:{app.port}{path}", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return resp.read().decode()


# -- settings ------------------------------------------------------------------------------------


def test_cluster_mode_needs_postgresql(tmp_path):
    with pytest.raises(ConfigError, match="cluster mode needs PostgreSQL"):
        Config(data_dir=tmp_path, cluster="redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="cluster mode needs PostgreSQL"):
        Config(data_dir=tmp_path, cluster="redis://127.0.0.1:6379/0", database=f"sqlite:///{tmp_path}/x.db")
    assert Config(data_dir=tmp_path, cluster="redis://h:6379/0", database="postgresql://h/db").cluster


def test_cluster_settings_come_from_flags_environment_and_toml(tmp_path):
    from callsgw.config import load_config

    (tmp_path / "c.toml").write_text('cluster = "redis://t:6379/0"\ndatabase = "postgresql://t/db"\n'
                                     'node_id = "toml-node"\ncluster_name = "prod"\n')
    cfg = load_config({}, {}, tmp_path / "c.toml")
    assert (cfg.cluster, cfg.node_id, cfg.cluster_name) == ("redis://t:6379/0", "toml-node", "prod")
    cfg = load_config({"node_id": "flag-node"}, {"CALLSGW_CLUSTER": "redis://e:6379/1"}, tmp_path / "c.toml")
    assert (cfg.cluster, cfg.node_id) == ("redis://e:6379/1", "flag-node")
    with pytest.raises(ConfigError) as bad:
        load_config({}, {"CALLSGW_CLUSTER": "http://:hunter2@h/"}, tmp_path / "c.toml")
    assert "hunter2" not in str(bad.value) and "CALLSGW_CLUSTER" in str(bad.value)
    with pytest.raises(ConfigError, match="node_id"):
        load_config({"node_id": "no spaces"}, {}, tmp_path / "c.toml")
    assert load_config({}, {}, None).cluster is None  # single node by default


def serve_once(tmp_path, *flags) -> tuple[int, str]:
    """``callsgw serve`` as a process that is expected to stop at start: (exit status, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "callsgw", "serve", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1",
         "--port", "0", "--media-host", "127.0.0.1", "--media-port", "0", *flags],
        capture_output=True, text=True, timeout=60,
    )
    return proc.returncode, proc.stderr


def test_serve_without_postgresql_says_so(tmp_path, capsys):
    assert cli.main(["serve", "--data-dir", str(tmp_path), "--cluster", "redis://127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err
    assert "cluster mode needs PostgreSQL" in err and "postgresql://" in err


def test_the_node_id_is_stable_in_the_data_directory(tmp_path):
    first = DataDir(tmp_path).node_id()
    assert first.startswith("node-") and DataDir(tmp_path).node_id() == first
    assert (tmp_path / "node_id").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(bytes(20)).decode()])
def test_serve_stops_at_start_on_a_bad_cluster_key(tmp_path, pg_url, capsys, value):
    store = open_store(pg_url, tmp_path)
    store.system_insert_if_absent(keys.KEY_ROW, value)
    store.close()
    rc, err = serve_once(tmp_path, "--cluster", "redis://127.0.0.1:1/0", "--database", pg_url)
    assert rc == 2 and "ClusterEncryptionKey" in err and "16, 24 or 32 bytes" in err
    assert value not in err


def test_serve_says_when_redis_is_unreachable_without_its_password(tmp_path, pg_url, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    rc, err = serve_once(tmp_path, "--cluster", f"redis://:hunter2@127.0.0.1:{dead}/0", "--database", pg_url)
    assert rc == 1 and "Traceback" not in err and f"cannot reach the cluster's Redis at redis://127.0.0.1:{dead}/0" in err
    assert "hunter2" not in err


# -- the registry ----------------------------------------------------------------------------------


async def test_two_gateways_register_and_a_token_from_one_verifies_on_the_other(tmp_path, redis_server, pg_url):
    async with cluster_gateway(tmp_path, "gw-a", redis_server, pg_url) as a, \
            cluster_gateway(tmp_path, "gw-b", redis_server, pg_url) as b:
        assert a.secrets.current() == b.secrets.current()  # the Systems row ApiSecret
        await a.cluster.heartbeat()
        assert [n.node_id for n in a.cluster.view] == ["gw-a", "gw-b"]
        entry = {n.node_id: n for n in a.cluster.view}["gw-b"]
        assert entry.url == f"wss://127.0.0.1:{b.port}/ws" and entry.state == "active"
        assert entry.media == (f"127.0.0.1:{b.media_port}",)
        # minted by the CLI against node a's settings, used on node b
        out = subprocess.run(
            [sys.executable, "-m", "callsgw", "token", "--call", "room", "--name", "ann",
             "--data-dir", str(a.config.data_dir), "--cluster", redis_server.url, "--database", pg_url],
            capture_output=True, text=True, timeout=60, check=True,
        )
        await b.cluster.place("room", prefer_self=True)  # else the least-loaded node hosts it, maybe a
        session = await connect(ws_url(b), out.stdout.strip(), ssl=False)
        try:
            await session.wait_connected()
            await b.cluster.heartbeat()
            loads = {n.node_id: n.load for n in b.cluster.view}
            assert loads["gw-b"].calls == 1 and loads["gw-b"].participants == 1
            doc = json.loads(await asyncio.to_thread(api_get, b, "/api/v1/cluster"))
            assert doc["node_id"] == "gw-b" and [n["node_id"] for n in doc["nodes"]] == ["gw-a", "gw-b"]
            assert doc["key"]["algorithm"] == "AES-256" and doc["unreadable"] == 0
            assert a.cluster.seal.keyring.primary.to_text() not in json.dumps(doc)
            metrics = await asyncio.to_thread(api_get, b, "/metrics")
            assert 'callsgw_cluster_drops_total{reason="auth"} 0.0' in metrics
            assert 'callsgw_cluster_nodes{state="active"} 2.0' in metrics
            # the placement of b's call names b
            assert await a.cluster.place("room") == "gw-b"
        finally:
            await session.close()
        # draining (SIGTERM's first step) is seen by the others; stop removes the entry at once
        await b.cluster.drain()
        await a.cluster.heartbeat()
        assert {n.node_id: n.state for n in a.cluster.view} == {"gw-a": "active", "gw-b": "draining"}
        await b.stop()
        await a.cluster.heartbeat()
        assert [n.node_id for n in a.cluster.view] == ["gw-a"]


async def test_the_api_says_a_single_node_is_one(tmp_path):
    async with running_gateway(tmp_path) as app:
        assert app.cluster is None
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(api_get, app, "/api/v1/cluster")
        assert refused.value.code == 404
        assert "callsgw_cluster" not in await asyncio.to_thread(api_get, app, "/metrics")


def _serve(tmp_path, name, redis_url, pg_url) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "callsgw", "serve", "--data-dir", str(tmp_path / name), "--cluster", redis_url,
         "--database", pg_url, "--listen", "127.0.0.1", "--port", "0", "--media-host", "127.0.0.1",
         "--media-port", "0", "--ice-host", "127.0.0.1", "--shutdown-grace", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )


async def _registered(redis_url, keyring, want: set[str], timeout=20.0) -> float:
    redis = await connect_redis(redis_url)
    seal = Seal("callsgw", "test-reader", keyring)
    began = time.monotonic()
    try:
        while True:
            entries, _ = await read_nodes(redis, seal, time.time())
            if {e.node_id for e in entries} == want:
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise AssertionError(f"registry holds {[e.node_id for e in entries]}, wanted {want}")
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


async def test_serve_processes_register_and_a_killed_one_is_gone_within_6_s(tmp_path, redis_server, pg_url):
    procs = [_serve(tmp_path, n, redis_server.url, pg_url) for n in ("p1", "p2")]
    try:
        ids = set()
        for n in ("p1", "p2"):
            async with asyncio.timeout(30):
                while not (tmp_path / n / "node_id").exists():
                    await asyncio.sleep(0.05)
            ids.add((tmp_path / n / "node_id").read_text().strip())
        store = open_store(pg_url, tmp_path)
        keyring = keys.read_keyring(store)
        store.close()
        await _registered(redis_server.url, keyring, ids, timeout=30)
        killed = (tmp_path / "p2" / "node_id").read_text().strip()
        procs[1].send_signal(signal.SIGKILL)
        gone_after = await _registered(redis_server.url, keyring, ids - {killed}, timeout=10)
        assert gone_after <= ENTRY_TTL + 0.5
        # SIGTERM: the node leaves the registry as it stops
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(20) == 0
        assert await _registered(redis_server.url, keyring, set(), timeout=2) < 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()


# -- placement ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bare_nodes(redis_server, pg_url, tmp_path, loads):
    """ClusterNodes without gateways: ``loads[i]`` participants on node i."""
    store = open_store(pg_url, tmp_path)
    keyring = keys.ensure_keyring(store)
    nodes = []
    for i, participants in enumerate(loads):
        redis = await connect_redis(redis_server.url)
        state = LocalState(participants=participants)
        nodes.append(ClusterNode(redis=redis, store=store, keyring=keyring, cluster="callsgw", node_id=f"n{i}",
                                 url=f"wss://127.0.0.{i + 1}:8443/ws", media=(f"127.0.0.{i + 1}:8443",),
                                 local=lambda state=state: state))
    try:
        for node in nodes:
            await node.heartbeat()
        yield nodes
    finally:
        for node in nodes:
            await node.stop()
        store.close()


async def test_racing_nodes_agree_on_one_placement_on_the_least_loaded_node(tmp_path, redis_server, pg_url):
    async with bare_nodes(redis_server, pg_url, tmp_path, [5, 1, 3]) as nodes:
        for round_ in range(30):
            placed = await asyncio.gather(*(n.place(f"call-{round_}") for n in nodes for _ in range(3)))
            assert set(placed) == {"n1"}  # least loaded, and every racer agrees


async def test_racing_claims_agree_even_when_every_node_wants_the_call(tmp_path, redis_server, pg_url):
    async with bare_nodes(redis_server, pg_url, tmp_path, [0, 0, 0]) as nodes:
        for round_ in range(30):
            placed = await asyncio.gather(*(n.place(f"claim-{round_}", prefer_self=True) for n in nodes))
            assert len(set(placed)) == 1


async def test_draining_nodes_get_no_new_calls_and_a_gone_node_s_call_is_placed_again(tmp_path, redis_server, pg_url):
    async with bare_nodes(redis_server, pg_url, tmp_path, [0, 1, 2]) as nodes:
        assert await nodes[2].place("standup") == "n0"
        await nodes[0].drain()
        await nodes[2].heartbeat()
        assert await nodes[2].place("standup") == "n0"  # an existing call stays on its draining node
        assert await nodes[2].place("retro") == "n1"  # a new one does not go there
        # n0 disappears (its entry removed, as after a crash plus the TTL)
        await nodes[0].stop()
        nodes.remove(nodes[0])
        await nodes[1].heartbeat()
        assert await nodes[1].place("standup") == "n1"
        assert await nodes[0].place("standup") == "n1"


async def test_no_active_node_means_no_placement(tmp_path, redis_server, pg_url):
    async with bare_nodes(redis_server, pg_url, tmp_path, [0]) as nodes:
        await nodes[0].drain()
        assert await nodes[0].place("x") is None


async def test_rotation_while_nodes_run_keeps_the_registry_and_placements_readable(tmp_path, redis_server, pg_url):
    async with cluster_gateway(tmp_path, "gw-a", redis_server, pg_url) as a, \
            cluster_gateway(tmp_path, "gw-b", redis_server, pg_url) as b:
        await a.cluster.place("live", prefer_self=True)
        session = await connect(ws_url(a), tokens.mint(a.secrets.current(), call="live", name="ann"), ssl=False)
        # ben reaches b, which relays him to a: his signaling crosses Redis sealed, through the rotation
        relayed = await connect(ws_url(b), tokens.mint(b.secrets.current(), call="live", name="ben"), ssl=False)
        try:
            await session.wait_connected()
            await relayed.wait_connected()
            assert b.relay.stats()["origin_sessions"] == 1
            await a.cluster.heartbeat()
            assert await b.cluster.place("live") == "gw-a"
            before = a.cluster.seal.keyring.primary
            store = open_store(pg_url, tmp_path)
            try:
                rotated = keys.rotate_keyring(store, grace=60, now=time.time())
            finally:
                store.close()
            deadline = time.monotonic() + keys.ACTIVATION_DELAY + 3 * keys.REFRESH_INTERVAL + 2
            while time.monotonic() < deadline:
                await a.cluster.heartbeat()
                await b.cluster.heartbeat()
                assert a.cluster.unreadable == b.cluster.unreadable == 0
                assert await b.cluster.place("live") == "gw-a"  # the live call never moves
                await asyncio.sleep(0.3)
            assert a.cluster.seal.keyring.primary == b.cluster.seal.keyring.primary == rotated.primary != before
            assert a.cluster.seal.keyring.sealing_key(time.time()) == rotated.primary
            assert sum(a.cluster.seal.drops.values()) == sum(b.cluster.seal.drops.values()) == 0
            await session.ping()  # the call itself never noticed
            published = b.relay.bus.counts["published"]
            await relayed.ping()  # relayed frames sealed under the new primary key open on the other node
            assert b.relay.bus.counts["published"] > published
            assert sum(a.cluster.seal.drops.values()) == sum(b.cluster.seal.drops.values()) == 0
        finally:
            await session.close()
            await relayed.close()


async def test_garbage_in_the_registry_is_dropped_and_counted(tmp_path, redis_server, pg_url):
    async with bare_nodes(redis_server, pg_url, tmp_path, [0, 0]) as nodes:
        index = nodes[0].seal.names.fixed("nodes")
        name = nodes[0].seal.names.name("node", "intruder")
        # an entry copied under another node's name does not count either
        copied = nodes[0].seal.names.name("node", "copy")
        await nodes[0].redis.set(copied, await nodes[0].redis.get(nodes[0].seal.names.name("node", "n1")))
        await nodes[0].redis.set(name, b"\x01" + os.urandom(60))
        await nodes[0].redis.zadd(index, {name: int((time.time() + 60) * 1000), copied: int((time.time() + 60) * 1000)})
        await nodes[0].heartbeat()
        assert [n.node_id for n in nodes[0].view] == ["n0", "n1"]
        assert nodes[0].unreadable == 2 and nodes[0].seal.drops["auth"] == 2


# -- what Redis sees ------------------------------------------------------------------------------------


class Monitor:
    """Everything Redis is sent, read with MONITOR on a raw connection (bounded: 16 MiB)."""

    LIMIT = 16 << 20

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        self.data = bytearray()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        self.sock.settimeout(0.2)
        while not self._stop.is_set() and len(self.data) < self.LIMIT:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk

    def stop(self) -> bytes:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()
        return bytes(self.data)


async def test_redis_sees_no_call_id_name_token_sdp_ice_credential_or_key(tmp_path, redis_server, pg_url):
    monitor = Monitor(redis_server.port)
    try:
        async with cluster_gateway(tmp_path, "secret-node-a", redis_server, pg_url) as a, \
                cluster_gateway(tmp_path, "secret-node-b", redis_server, pg_url) as b:
            token = tokens.mint(a.secrets.current(), call="confidential-call-7", name="Zelda Participant")
            await a.cluster.place("confidential-call-7", prefer_self=True)
            session = await connect(ws_url(a), token, ssl=False)
            try:
                await session.wait_connected()
                for _ in range(2):
                    await a.cluster.heartbeat()  # registry + the placement claim of the live call
                    await b.cluster.heartbeat()
                assert await b.cluster.place("confidential-call-7") == "secret-node-a"
                assert await b.cluster.place("another-secret-call") in ("secret-node-a", "secret-node-b")
                ice = (session._core.local_ufrag, session._core.local_pwd)
                cluster_key = a.cluster.seal.keyring.primary
                names_key = a.cluster.seal.keyring.names_key
                api_secret = a.secrets.current()
            finally:
                await session.close()
    finally:
        seen = monitor.stop()
    assert b'"SET"' in seen and b'"ZADD"' in seen and len(seen) > 1000  # the capture is real
    forbidden = {
        "call id": b"confidential-call-7", "other call id": b"another-secret-call", "name": b"Zelda",
        "token": token.encode(), "token payload": token.split(".")[1].encode(), "sdp": b"v=0",
        "ice ufrag": ice[0].encode(), "ice pwd": ice[1].encode(), "node id": b"secret-node",
        "url": b"wss://", "cluster key": cluster_key.to_text().encode(),
        "names key": base64.b64encode(names_key), "api secret": base64.b64encode(api_secret),
    }
    found = [what for what, needle in forbidden.items() if needle in seen]
    assert found == []


async def test_cluster_status_lists_nodes_and_the_key_never_the_key(tmp_path, redis_server, pg_url):
    async with bare_nodes(redis_server, pg_url, tmp_path, [2, 0]) as nodes:
        flags = ["--cluster", redis_server.url, "--database", pg_url, "--data-dir", str(tmp_path / "cli")]
        proc = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "callsgw", "cluster", "status", "--json", *flags],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert [n["node_id"] for n in doc["nodes"]] == ["n0", "n1"]
        assert doc["nodes"][0]["load"]["participants"] == 2 and doc["nodes"][0]["state"] == "active"
        key = nodes[0].seal.keyring.primary
        assert doc["key"]["fingerprint"] == key.fingerprint and key.to_text() not in proc.stdout
        proc = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "callsgw", "cluster", "status", *flags],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "n0" in proc.stdout and "AES-256" in proc.stdout
        assert key.to_text() not in proc.stdout + proc.stderr


async def test_cluster_drain_takes_a_node_out_of_placement_and_undo_puts_it_back(tmp_path, redis_server, pg_url):
    async with bare_nodes(redis_server, pg_url, tmp_path, [0, 5]) as nodes:
        flags = ["--cluster", redis_server.url, "--database", pg_url, "--data-dir", str(tmp_path / "cli")]

        def cli_run(*args):
            return subprocess.run([sys.executable, "-m", "callsgw", "cluster", *args, *flags],
                                  capture_output=True, text=True, timeout=60)

        proc = await asyncio.to_thread(cli_run, "drain", "n0")
        assert proc.returncode == 0, proc.stderr
        for node in nodes:
            await node.heartbeat()
        assert {n.node_id: n.state for n in nodes[1].view} == {"n0": "draining", "n1": "active"}
        assert await nodes[1].place("after-drain") == "n1"  # the less loaded node is draining
        monitor_free = b"n0" not in await nodes[0].redis.get(nodes[0].seal.names.name("drain", "n0"))
        assert monitor_free  # the request is sealed too
        proc = await asyncio.to_thread(cli_run, "drain", "n0", "--undo")
        assert proc.returncode == 0, proc.stderr
        for node in nodes:
            await node.heartbeat()
        assert await nodes[1].place("after-undo") == "n0"

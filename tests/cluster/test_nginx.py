"""nginx in front of a cluster (issue #16 deliverables 5 and 6), as processes on loopback.

The topology of docker-compose.yml, run here without Docker: Debian's nginx
with the repository's template (deploy/nginx/callsgw.conf.template, rendered
the way the nginx image's entrypoint renders it), two ``callsgw serve``
processes in cluster mode with the compose file's gateway environment (only
addresses, ports and data directories changed), redis-server and PostgreSQL.
Through nginx: a call of two ``callsgw.client`` sessions, a spoofed TLS header
that nginx overwrites, ``callsgw audit`` judging nginx's TLS, and a call of
two Chromium pages. nginx's TLS is compared with ``serve``'s own handshake by
handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from callsgw.apisecrets import SystemsApiSecrets
from callsgw.client import connect
from callsgw.security.db import open_store
from callsgw.signaling import tokens
from tests.cluster.conftest import RedisServer, _free_port
from tests.cluster.test_relay import hears
from tests.cluster.tlscerts import issue, make_ca
from tests.signaling.gateway import running_gateway

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "nginx" / "callsgw.conf.template"
COMPOSE = ROOT / "docker-compose.yml"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (scripts/test.sh installs it)")

ADDRESS_SETTINGS = {"CALLSGW_DATA_DIR", "CALLSGW_PORT", "CALLSGW_MEDIA_PORT", "CALLSGW_ICE_HOST", "CALLSGW_CLUSTER",
                    "CALLSGW_DATABASE", "CALLSGW_ADVERTISE_URL"}
"""The only gateway settings of docker-compose.yml the test topology changes (addresses and places)."""


def render(template: str, values: dict[str, str]) -> str:
    """What the nginx image's entrypoint does: envsubst of the named ``${VAR}``s only (nginx's ``$x`` stay)."""
    text = template
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    left = re.findall(r"\$\{[A-Z0-9_]+\}", text)
    assert not left, f"the template needs {left}"
    return text


class Nginx:
    """Debian's nginx in a temporary prefix, in the foreground, with the rendered template."""

    def __init__(self, workdir: Path, values: dict[str, str]):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = int(values["CALLSGW_NGINX_PORT"])
        (workdir / "callsgw.conf").write_text(render(TEMPLATE.read_text(), values))
        temp = "".join(f"    {kind}_temp_path {workdir / kind};\n" for kind in
                       ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (workdir / "nginx.conf").write_text(
            "worker_processes 1;\nevents { worker_connections 512; }\n"
            f"http {{\n    access_log off;\n{temp}    include {workdir / 'callsgw.conf'};\n}}\n")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
             "-g", f"daemon off; pid {workdir / 'nginx.pid'}; error_log stderr;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError(f"nginx did not start: {err}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def compose_gateway_environment() -> dict[str, dict[str, str]]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {name: {k: str(v) for k, v in services[name]["environment"].items()} for name in ("gw1", "gw2")}


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"callsgw serve did not start: {proc.stderr.read() if proc.poll() is not None else ''}")
        time.sleep(0.1)


class Topology:
    """docker-compose.yml's services as processes: redis, PostgreSQL, gw1, gw2, nginx."""

    def __init__(self, root: Path, pg_url: str):
        self.root = root
        self.ca = make_ca(root / "ca")
        self.cert, self.key = issue(self.ca, root / "nginx-tls")
        self.redis = RedisServer(root / "redis")
        self.pg_url = pg_url
        self.nodes: dict[str, subprocess.Popen] = {}
        self.node_ports: dict[str, int] = {}
        self.nginx = None
        self.port = _free_port()
        try:
            for name, environment in compose_gateway_environment().items():
                self._start_node(name, environment)
            self.nginx = Nginx(root / "nginx", {
                "CALLSGW_NGINX_PORT": str(self.port), "CALLSGW_NGINX_CERT": str(self.cert),
                "CALLSGW_NGINX_KEY": str(self.key),
                "CALLSGW_NODE_1": f"127.0.0.1:{self.node_ports['gw1']}",
                "CALLSGW_NODE_2": f"127.0.0.1:{self.node_ports['gw2']}",
            })
        except BaseException:
            self.stop()
            raise

    def _start_node(self, name: str, environment: dict[str, str]) -> None:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
        env.update(environment)
        env.update({
            "CALLSGW_DATA_DIR": str(self.root / name), "CALLSGW_PORT": str(port), "CALLSGW_MEDIA_PORT": "0",
            "CALLSGW_ICE_HOST": "127.0.0.1", "CALLSGW_CLUSTER": self.redis.url, "CALLSGW_DATABASE": self.pg_url,
            "CALLSGW_ADVERTISE_URL": f"wss://127.0.0.1:{self.port}/ws", "PYTHONUNBUFFERED": "1",
            "CALLSGW_MEDIA_HOST": "127.0.0.1", "CALLSGW_SHUTDOWN_GRACE": "0",
        })
        proc = subprocess.Popen([sys.executable, "-m", "callsgw", "serve"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        self.nodes[name], self.node_ports[name] = proc, port
        wait_http(port, proc)

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ws"

    def client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.cert_path))  # nginx's certificate, verified

    def mint(self, call: str, name: str) -> str:
        store = open_store(self.pg_url, self.root)
        try:
            return tokens.mint(SystemsApiSecrets(store).current(), call=call, name=name)
        finally:
            store.close()

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for proc in self.nodes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.nodes.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.redis.stop()


@pytest.fixture(scope="module")
def topology(tmp_path_factory, pg_cluster):
    if pg_cluster.skip_reason:
        pytest.skip(pg_cluster.skip_reason)
    topo = Topology(tmp_path_factory.mktemp("compose"), pg_cluster.new_database())
    try:
        yield topo
    finally:
        topo.stop()


def test_the_test_topology_changes_only_addresses_of_the_compose_settings():
    gw = compose_gateway_environment()
    assert gw["gw1"]["CALLSGW_PLAIN_WS"] == "true" and gw["gw1"]["CALLSGW_TRUSTED_PROXIES"] == "127.0.0.1"
    for name in ("gw1", "gw2"):
        kept = set(gw[name]) - ADDRESS_SETTINGS
        assert {"CALLSGW_PLAIN_WS", "CALLSGW_TRUSTED_PROXIES", "CALLSGW_LISTEN_HOST", "CALLSGW_NODE_ID"} <= kept


async def test_python_clients_call_through_nginx_and_see_nginxs_tls(topology):
    ctx = topology.client_ssl()
    ann = await connect(topology.url, topology.mint("nginx-call", "ann"), ssl=ctx)
    ben = await connect(topology.url, topology.mint("nginx-call", "ben"), ssl=ctx)
    try:
        await asyncio.wait_for(asyncio.gather(ann.wait_connected(), ben.wait_connected()), 25)
        # joined.tls is nginx's TLS with the client (forwarded in its headers), not null as plain ws would give
        for session in (ann, ben):
            assert session.tls == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
        async with asyncio.timeout(10):
            while set(ann.participants) != {ben.participant_id}:
                await asyncio.sleep(0.05)
        await hears(ann, ben)
        await hears(ben, ann)
    finally:
        await ann.close()
        await ben.close()


SPOOF = {"X-Callsgw-TLS-Version": "TLSv1.3", "X-Callsgw-TLS-Cipher": "TLS_AES_256_GCM_SHA384",
         "X-Real-IP": "198.51.100.1"}


@contextlib.contextmanager
def lying_client(monkeypatch, **connect_options):
    """callsgw.client sending the headers a proxy would set (and connecting with ``connect_options``)."""
    import callsgw.client.session as client_session

    real = client_session.ws_connect

    def ws_connect(url, **kwargs):
        return real(url, additional_headers=SPOOF, **connect_options, **kwargs)

    monkeypatch.setattr(client_session, "ws_connect", ws_connect)
    try:
        yield
    finally:
        monkeypatch.setattr(client_session, "ws_connect", real)


async def test_tls_headers_a_client_sends_are_replaced_by_nginx_and_ignored_from_others(topology, monkeypatch):
    ctx = topology.client_ssl()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # so that the truth differs from the lie
    with lying_client(monkeypatch):
        session = await connect(topology.url, topology.mint("spoof", "eve"), ssl=ctx)
    try:
        await asyncio.wait_for(session.wait_connected(), 20)
        assert session.tls == {"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES256-GCM-SHA384"}  # nginx's truth
    finally:
        await session.close()
    # straight to a node from 127.0.0.2, which is not a trusted proxy (127.0.0.1 is): the lie is ignored
    node = f"ws://127.0.0.1:{topology.node_ports['gw1']}/ws"
    with lying_client(monkeypatch, local_addr=("127.0.0.2", 0)):
        session = await connect(node, topology.mint("spoof", "mallory"), ssl=False)
    try:
        await asyncio.wait_for(session.wait_connected(), 20)
        assert session.tls is None  # plain ws://, as without a proxy
    finally:
        await session.close()


def test_audit_through_nginx_passes_and_judges_nginxs_tls(topology):
    token = topology.mint("audit", "auditor")
    out = subprocess.run(
        [sys.executable, "-m", "callsgw", "audit", topology.url, "--token", token, "--insecure", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    report = json.loads(out.stdout)
    text = json.dumps(report)
    der = ssl.PEM_cert_to_DER_cert(topology.cert.read_text().split("-----END CERTIFICATE-----")[0]
                                   + "-----END CERTIFICATE-----\n")
    from callsgw.dtls.certificate import fingerprint_of_der

    assert fingerprint_of_der(der) in text  # the certificate judged is nginx's


def _handshake(port: int, *, version: ssl.TLSVersion, cipher: str | None = None,
               group: str | None = None) -> str | None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if cipher is not None:
        ctx.set_ciphers(cipher)
    if group is not None:
        ctx.set_ecdh_curve(group)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            return f"{tls.version()} {tls.cipher()[0]}"
    except (ssl.SSLError, OSError):
        return None


def _legacy_context_allows_old_versions() -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        return True
    except (ValueError, ssl.SSLError):
        return False


async def test_nginx_accepts_exactly_the_handshakes_serve_accepts(tmp_path, topology):
    cert, key = topology.cert, topology.key  # the same certificate on both, so only the policy differs
    async with running_gateway(tmp_path, tls_cert=cert, tls_key=key) as app:
        probes = [dict(version=v) for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)]
        for cipher in sorted({c["name"] for c in ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).get_ciphers()
                              if c["protocol"] == "TLSv1.2"}):
            probes.append(dict(version=ssl.TLSVersion.TLSv1_2, cipher=cipher))
        for group in ("prime256v1", "secp384r1", "secp521r1", "X25519", "X448", "ffdhe2048", "ffdhe3072"):
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                probes.append(dict(version=version, group=group))
        if _legacy_context_allows_old_versions():
            probes += [dict(version=ssl.TLSVersion.TLSv1, cipher="ALL:@SECLEVEL=0"),
                       dict(version=ssl.TLSVersion.TLSv1_1, cipher="ALL:@SECLEVEL=0")]
        differences, accepted = [], 0
        for probe in probes:
            via_serve = await asyncio.to_thread(_handshake, app.port, **probe)
            via_nginx = await asyncio.to_thread(_handshake, topology.port, **probe)
            accepted += via_serve is not None
            if via_serve != via_nginx:
                differences.append((probe, via_serve, via_nginx))
        assert not differences, differences
        assert accepted >= 4  # the comparison compared something


@pytest.mark.skipif(shutil.which("chromium") is None and not Path("/usr/bin/chromium").exists(),
                    reason="Chromium is not installed (scripts/test.sh installs it)")
async def test_two_chromium_pages_call_through_nginx(topology):
    from urllib.parse import urlencode

    from tests.browser.chromium import Chromium
    from tests.browser.test_call_media import audio_streams_flowing, inbound, wait_inbound
    from tests.browser.test_web_client import open_page

    browser = Chromium()
    try:
        pages = []
        for name in ("web-a", "web-b"):
            page = await open_page(browser)
            token = topology.mint("nginx-web", name)
            await page.goto(f"https://127.0.0.1:{topology.port}/#"
                            + urlencode({"call": "nginx-web", "name": name, "token": token}))
            await page.wait_for("window.callsgw && window.callsgw.pc && "
                                "window.callsgw.pc.connectionState === 'connected'", timeout=30)
            pages.append(page)
        for page in pages:
            stats = await wait_inbound(page, audio_streams_flowing(1), timeout=25)
            assert any(s["kind"] == "audio" and s["packets"] >= 10 for s in stats), await inbound(page)
            # the page's security panel shows nginx's TLS, as the gateway reported it, and judges every check ok
            await page.wait_for("window.callsgw.state.security.verdict === 'ok'", timeout=15)
            signaling = await page.evaluate("window.callsgw.state.security.signaling")
            assert (signaling["version"], signaling["cipher"]) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384"), signaling
    finally:
        browser.close()

"""Issue #18 deliverables 3 and 4 with a real browser: Chromium behind a network without UDP reaches a
gateway that sits behind a port-rewriting NAT (tests/connectivity/nat.py). The page, the WebSocket
and the media all go over TCP to the NAT's public port P, which forwards to the gateway's bound
port; the gateway's ICE-TCP candidate announces P (``ice_port_override``), so the call connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess

import pytest

from callsgw.server import tcp as server_tcp
from tests.browser.chromium import chromium_path
from tests.browser.test_web_client import join_link, open_page
from tests.connectivity.nat import PortNat
from tests.connectivity.test_ice_tcp_browser import BRIDGE_HOST, SELECTED
from tests.connectivity.test_nat_override import INSIDE, free_port_for_udp_and_tcp
from tests.netfilter import NFT, private_namespace
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")


@contextlib.contextmanager
def only_tcp_through_the_nat(public: int, media_port: int, tcp_port: int):
    """No UDP to the NAT's public port; the gateway's ports only from the NAT (TCP) or a bridge (UDP)."""
    if not private_namespace():
        pytest.skip("firewall rules are only set inside a private network namespace (scripts/test.sh)")
    table = f"callsgw_test_nat_tcp_{public}"
    subprocess.run([NFT, "add", "table", "inet", table], check=True)
    try:
        subprocess.run([NFT, "add", "chain", "inet", table, "i", "{ type filter hook input priority 0; }"], check=True)
        for rule in (f"udp dport {public} drop",
                     f"udp dport {media_port} ip saddr != {BRIDGE_HOST} drop",
                     f"tcp dport {tcp_port} ip saddr != {INSIDE} drop"):
            subprocess.run([NFT, "add", "rule", "inet", table, "i", *rule.split()], check=True)
        yield
    finally:
        subprocess.run([NFT, "delete", "table", "inet", table], check=True)


async def test_chromium_without_udp_reaches_a_gateway_behind_a_port_rewriting_nat(tmp_path, browser, monkeypatch):
    monkeypatch.setitem(server_tcp.BRIDGE_HOSTS, socket.AF_INET, BRIDGE_HOST)
    public = free_port_for_udp_and_tcp()
    async with asyncio.timeout(90), running_gateway(tmp_path, ice_port_override=public) as app:
        nat = await PortNat(public, ("127.0.0.1", app.media_port), ("127.0.0.1", app.port), inside=INSIDE).start()
        try:
            with only_tcp_through_the_nat(public, app.media_port, app.port):
                pages = []
                for name in ("ann", "ben"):
                    page = await open_page(browser)
                    await page.goto(join_link(app, "nat-call", name).replace(f":{app.port}/", f":{public}/"))
                    pages.append(page)
                for page in pages:
                    await page.wait_for("window.callsgw && window.callsgw.pc && "
                                        "window.callsgw.pc.connectionState === 'connected'", timeout=30)
                for page in pages:
                    stats = await page.wait_for(f"{SELECTED}.then(s => s.inbound >= 25 ? s : null)", timeout=30)
                    assert stats["localProtocol"] == "tcp" and stats["remotePort"] == public, stats
                    assert stats["srtpCipher"].removeprefix("SRTP_") == "AEAD_AES_128_GCM", stats
                assert nat.stats["tcp"] >= 4  # page, WebSocket and media connections went through the NAT
                assert nat.stats["udp_in"] == 0
        finally:
            nat.close()

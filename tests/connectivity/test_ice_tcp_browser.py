"""Issue #18 deliverable 4: UDP blocked between Chromium and the gateway, the call connects over
ICE-TCP on the HTTPS port, with AEAD_AES_128_GCM negotiated and media both ways.

nftables (inside the private namespace scripts/test.sh makes) drops every UDP datagram to and from
the gateway's media port except those of the gateway's own ICE-TCP bridges, which the test moves
to 127.0.0.2 (callsgw/server/tcp.py: each TCP connection reaches the media port through a loopback
UDP socket). Chromium's UDP checks therefore die; its TCP active candidates reach the gateway's
``tcptype passive`` candidate on the same port as the page and the WebSocket.
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
from tests.netfilter import NFT, private_namespace
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")

BRIDGE_HOST = "127.0.0.2"

SELECTED = """(async () => {
  const stats = [...(await window.callsgw.pc.getStats()).values()];
  const byId = Object.fromEntries(stats.map(s => [s.id, s]));
  const transport = stats.find(s => s.type === 'transport');
  const pair = transport && byId[transport.selectedCandidatePairId];
  const local = pair && byId[pair.localCandidateId];
  const remote = pair && byId[pair.remoteCandidateId];
  const inbound = stats.filter(s => s.type === 'inbound-rtp' && s.kind === 'audio')
                       .reduce((n, s) => n + (s.packetsReceived || 0), 0);
  return {srtpCipher: transport && transport.srtpCipher, dtlsState: transport && transport.dtlsState,
          localProtocol: local && local.protocol, remoteProtocol: remote && remote.protocol,
          remoteTcpType: remote && remote.tcpType, remotePort: remote && remote.port, inbound};
})()"""


@contextlib.contextmanager
def udp_blocked_but_bridges(media_port: int):
    """Drop UDP to and from ``media_port`` unless it comes from or goes to a bridge (BRIDGE_HOST)."""
    if not private_namespace():
        pytest.skip("firewall rules are only set inside a private network namespace (scripts/test.sh)")
    table = f"callsgw_test_ice_tcp_{media_port}"
    subprocess.run([NFT, "add", "table", "inet", table], check=True)
    try:
        for chain, hook, rule in (
            ("i", "input", f"udp dport {media_port} ip saddr != {BRIDGE_HOST} drop"),
            ("o", "output", f"udp sport {media_port} ip daddr != {BRIDGE_HOST} drop"),
        ):
            subprocess.run([NFT, "add", "chain", "inet", table, chain,
                            f"{{ type filter hook {hook} priority 0; }}"], check=True)
            subprocess.run([NFT, "add", "rule", "inet", table, chain, *rule.split()], check=True)
        yield
    finally:
        subprocess.run([NFT, "delete", "table", "inet", table], check=True)


@pytest.mark.parametrize("engine", ["native-thread", "python"])
async def test_udp_blocked_call_connects_over_ice_tcp_on_the_https_port(tmp_path, browser, engine, monkeypatch):
    monkeypatch.setitem(server_tcp.BRIDGE_HOSTS, socket.AF_INET, BRIDGE_HOST)
    async with asyncio.timeout(90), running_gateway(tmp_path, media_engine=engine) as app:
        assert app.ice_tcp is not None and app.ice_tcp.local_address[1] == app.port
        with udp_blocked_but_bridges(app.media_port):
            pages = []
            for name in ("ann", "ben"):
                page = await open_page(browser)
                await page.goto(join_link(app, "tcp-call", name))
                pages.append(page)
            for page in pages:
                await page.wait_for("window.callsgw && window.callsgw.pc && "
                                    "window.callsgw.pc.connectionState === 'connected'", timeout=30)
            for page in pages:
                stats = await page.wait_for(f"{SELECTED}.then(s => s.inbound >= 25 ? s : null)", timeout=30)
                assert stats["localProtocol"] == "tcp" and stats["remoteProtocol"] == "tcp", stats
                assert stats["remoteTcpType"] == "passive" and stats["remotePort"] == app.port, stats
                assert stats["srtpCipher"].removeprefix("SRTP_") == "AEAD_AES_128_GCM", stats
                # the page's security panel: its DTLS/SRTP agrees with what the gateway says it negotiated
                sec = await page.wait_for("window.callsgw.refreshSecurity().then(s => s.verdict === 'ok' ? "
                                          "JSON.parse(JSON.stringify(s)) : null)", timeout=20)
                assert sec["gateway"]["srtp_profile"] == "AEAD_AES_128_GCM", sec["gateway"]
            # the gateway's side: ICE-TCP connections, each the selected address of one transport,
            # whose records say GCM, with media both ways
            assert app.ice_tcp.stats["ice"] >= 2
            bridges = {c.bridge_address for c in app.ice_tcp.connections}
            app.media.sync_counters()
            transports = app.media.mux.transports()
            assert len(transports) == 2
            for transport in transports:
                assert transport.selected_address in bridges
                assert transport.record.srtp_profile == "AEAD_AES_128_GCM"
                assert transport.counters.rtp_in > 20 and transport.counters.rtp_out > 20, transport.counters

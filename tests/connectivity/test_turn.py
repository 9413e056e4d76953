"""Issue #18 deliverables 2 and 4: TURN through a real coturn (Debian's package) with use-auth-secret.

The test starts ``turnserver`` on loopback with ``use-auth-secret`` and the secret the gateway
shares; the gateway hands each participant TURN REST API credentials in ``joined.turn``:

* relay forced (TURN over UDP, and over TCP for networks without UDP): two Chromium pages with
  ``relay=1`` join links (``iceTransportPolicy: "relay"``) connect through coturn: their selected pairs' local candidates are relay candidates, GCM is
  negotiated, audio flows both ways;
* coturn itself refuses a forged credential (wrong secret) and an expired one (a correct HMAC
  over a username whose expiry has passed), and accepts the gateway's (aioice as the TURN client).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import shutil
import socket
import subprocess
import time

import pytest
from aioice import turn as aioturn

from callsgw.turn import turn_credentials
from tests.browser.chromium import chromium_path
from tests.browser.test_web_client import join_link, open_page
from tests.signaling.gateway import running_gateway

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
SECRET = "s3cret-shared-with-coturn-0123456789"

pytestmark = pytest.mark.skipif(not shutil.which("turnserver") and not __import__("os").path.exists(TURNSERVER),
                                reason="coturn is not installed (scripts/test.sh installs it)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def coturn(tmp_path):
    """A real coturn on 127.0.0.1 with use-auth-secret; yields its port."""
    port = _free_port()
    log = tmp_path / "turnserver.log"
    proc = subprocess.Popen(
        [TURNSERVER, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}", "--relay-ip=127.0.0.1",
         "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=callsgw.test", "--no-tls", "--no-dtls",
         "--allow-loopback-peers", "--no-cli", "--min-port=49200", "--max-port=49400", "--simple-log",
         f"--log-file={log}", "--pidfile=" + str(tmp_path / "turnserver.pid"), "--no-software-attribute"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("coturn did not start: " + (log.read_text() if log.exists() else "no log"))
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


async def allocate(port: int, username: str, password: str) -> tuple[str, int]:
    """A TURN allocation (RFC 8656 section 7) from coturn with these long-term credentials."""
    transport, _ = await aioturn.create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port),
                                                      username=username, password=password)
    try:
        return transport.get_extra_info("sockname")
    finally:
        transport.close()


async def test_coturn_takes_the_gateways_credentials_and_refuses_forged_and_expired_ones(coturn):
    now = time.time()
    good = turn_credentials(SECRET.encode(), ("turn:127.0.0.1",), "p1", now, 600)
    relayed = await asyncio.wait_for(allocate(coturn, good["username"], good["credential"]), 10)
    assert relayed[0] == "127.0.0.1"
    forged = turn_credentials(b"not-the-shared-secret-at-all", ("turn:127.0.0.1",), "p1", now, 600)
    with pytest.raises(Exception):
        await asyncio.wait_for(allocate(coturn, forged["username"], forged["credential"]), 10)
    username = f"{int(now) - 60}:p1"  # expired a minute ago, correctly signed
    password = base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()
    with pytest.raises(Exception):
        await asyncio.wait_for(allocate(coturn, username, password), 10)
    # the expiry is part of what is signed: moving it forward breaks the HMAC
    later = f"{int(now) + 600}:p1"
    with pytest.raises(Exception):
        await asyncio.wait_for(allocate(coturn, later, password), 10)


RELAYED = """(async () => {
  const stats = [...(await window.callsgw.pc.getStats()).values()];
  const byId = Object.fromEntries(stats.map(s => [s.id, s]));
  const transport = stats.find(s => s.type === 'transport');
  const pair = transport && byId[transport.selectedCandidatePairId];
  const local = pair && byId[pair.localCandidateId];
  const inbound = stats.filter(s => s.type === 'inbound-rtp' && s.kind === 'audio')
                       .reduce((n, s) => n + (s.packetsReceived || 0), 0);
  return {srtpCipher: transport && transport.srtpCipher, localType: local && local.candidateType,
          relayProtocol: local && local.relayProtocol, inbound};
})()"""


@pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")
# tcp: the browser reaches coturn over TCP (RFC 8656 section 3.1); the relay to the gateway stays UDP
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_relay_forced_call_connects_through_coturn(tmp_path, browser, coturn, transport):
    url = f"turn:127.0.0.1:{coturn}?transport={transport}"
    async with asyncio.timeout(90), running_gateway(
        tmp_path, turn_url=(url,), turn_secret=SECRET, ice_tcp=False,
    ) as app:
        pages = []
        for name in ("ann", "ben"):
            page = await open_page(browser)
            await page.goto(join_link(app, "relay-call", name) + "&relay=1")
            pages.append(page)
        for page in pages:
            turn = await page.wait_for("window.callsgw && window.callsgw.state.turnServers", timeout=20)
            assert turn[0]["urls"] == [url]
            await page.wait_for("window.callsgw.pc && window.callsgw.pc.connectionState === 'connected'", timeout=30)
        for page in pages:
            stats = await page.wait_for(f"{RELAYED}.then(s => s.inbound >= 25 ? s : null)", timeout=30)
            assert stats["localType"] == "relay" and stats["relayProtocol"] == transport, stats
            assert stats["srtpCipher"].removeprefix("SRTP_") == "AEAD_AES_128_GCM", stats
        # the gateway saw both participants at coturn's relayed addresses
        app.media.sync_counters()
        for transport in app.media.mux.transports():
            assert transport.selected_address[0] == "127.0.0.1"
            assert 49200 <= transport.selected_address[1] <= 49400, transport.selected_address
            assert transport.record.srtp_profile == "AEAD_AES_128_GCM"

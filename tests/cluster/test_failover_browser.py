"""Failover in Chromium (issue #16 items 1 and 8): the web page rejoins after its call's node is killed.

Two ``callsgw serve`` processes; the call is placed on ``fo-2``. A page loaded from ``fo-1`` (its
WebSocket relayed to ``fo-2``) and a ``callsgw.client`` participant on ``fo-2`` hear each other.
``fo-2`` is killed with SIGKILL: ``fo-1`` tells the page (``bye`` ``node_lost``, ``reconnect``,
close 1012); the page tries to resume, is refused (the session died with its node), joins again
with its token, and the call, placed again on ``fo-1``, carries media again.
"""

from __future__ import annotations

import asyncio
import signal
import time
from urllib.parse import urlencode

import pytest

from callsgw.apisecrets import SystemsApiSecrets
from callsgw.client import connect
from callsgw.cluster import keys
from callsgw.cluster.node import ClusterNode, LocalState, connect_redis, read_nodes
from callsgw.security.db import open_store
from callsgw.signaling import tokens
from tests.browser.chromium import chromium_path
from tests.browser.conftest import browser  # noqa: F401  (the fixture)
from tests.browser.test_call_media import audio_streams_flowing, inbound, wait_inbound
from tests.browser.test_web_client import open_page
from tests.cluster.failover import start_node, talk

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")


async def place_on(redis_url: str, store, keyring, call: str, node_id: str) -> None:
    """Claim ``call`` for ``node_id`` as that node's own heartbeat would (it must be registered)."""
    redis = await connect_redis(redis_url)
    node = ClusterNode(redis=redis, store=store, keyring=keyring, cluster="callsgw", node_id=node_id, url="wss://x/ws",
                       media=(), local=LocalState)
    try:
        async with asyncio.timeout(20):
            while True:
                entries, _ = await read_nodes(redis, node.seal, time.time())
                alive = {e.node_id: e for e in entries}
                if node_id in alive:
                    break
                await asyncio.sleep(0.1)
        assert await node.place(call, prefer_self=True, alive=alive) == node_id
    finally:
        await redis.aclose()


async def test_the_page_rejoins_after_its_call_s_node_is_killed(tmp_path, browser, redis_server, pg_url):  # noqa: F811
    nodes = [await start_node(tmp_path, n, redis_server.url, pg_url) for n in ("fo-1", "fo-2")]
    survivor, victim = nodes
    py = None
    try:
        store = open_store(pg_url, tmp_path)
        try:
            secret = SystemsApiSecrets(store).current()
            keyring = keys.read_keyring(store)
            await place_on(redis_server.url, store, keyring, "fo-call", "fo-2")
        finally:
            store.close()
        token = tokens.mint(secret, call="fo-call", name="page")
        page = await open_page(browser)
        await page.goto(f"https://127.0.0.1:{survivor.port}/#" + urlencode({"call": "fo-call", "name": "page",
                                                                           "token": token}))
        await page.wait_for("window.callsgw && window.callsgw.pc && window.callsgw.pc.connectionState === 'connected'",
                            timeout=25)
        py = await connect([victim.ws_url, survivor.ws_url], tokens.mint(secret, call="fo-call", name="py"), ssl=False)
        await py.wait_connected(timeout=20)

        talking = asyncio.create_task(talk(py))
        try:
            await wait_inbound(page, audio_streams_flowing(1), timeout=20)
            victim.proc.send_signal(signal.SIGKILL)
            # the page is told, rejoins by itself, and hears the Python client again on a new receiver
            await page.wait_for("window.callsgw.state.byes.includes('node_lost')", timeout=15)
            await page.wait_for("window.callsgw.state.recovery && window.callsgw.state.recovery.status === 'rejoined'",
                                timeout=30)
            await wait_inbound(page, audio_streams_flowing(1), timeout=30)
            assert py.rejoins == 1
        finally:
            talking.cancel()
    finally:
        if py is not None:
            await py.close()
        for node in nodes:
            node.stop()

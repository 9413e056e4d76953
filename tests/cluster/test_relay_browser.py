"""A cross-node call in headless Chromium (issue #15 item 8): the web page joins through node A
for a call hosted on node B, another page joins B directly, and they hear each other.

The page knows nothing of clusters: it opens its own origin's ``/ws`` (node A), and A relays the
session to B. Media goes straight to B, whose candidates are in the answer the page got.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from callsgw.signaling import tokens
from tests.browser.chromium import chromium_path
from tests.browser.conftest import browser  # noqa: F401  (the fixture)
from tests.browser.test_call_media import audio_streams_flowing, inbound, wait_inbound
from tests.browser.test_web_client import open_page
from tests.cluster.test_relay import two_nodes

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")


def cluster_link(app, call: str, name: str) -> str:
    token = tokens.mint(app.secrets.current(), call=call, name=name)
    return f"https://127.0.0.1:{app.port}/#" + urlencode({"call": call, "name": name, "token": token})


async def join_tab(browser, app, call: str, name: str):  # noqa: F811
    page = await open_page(browser)
    await page.goto(cluster_link(app, call, name))
    await page.wait_for("window.callsgw && window.callsgw.pc && window.callsgw.pc.connectionState === 'connected'",
                        timeout=25)
    return page


async def test_two_browsers_on_two_nodes_hear_each_other_through_the_relay(tmp_path, browser, redis_server,  # noqa: F811
                                                                           pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url) as (a, b):
        assert await b.cluster.place("cross", prefer_self=True) == "node-b"
        relayed = await join_tab(browser, a, "cross", "via-a")
        direct = await join_tab(browser, b, "cross", "on-b")
        for page in (relayed, direct):
            stats = await wait_inbound(page, audio_streams_flowing(1), timeout=25)
            assert any(s["kind"] == "audio" and s["packets"] >= 10 for s in stats), await inbound(page)
        assert "cross" in b.core.calls and b.core.participant_count == 2 and not a.core.calls
        assert a.relay.stats()["origin_sessions"] == 1
        # the relayed page's media goes to B: its selected pair's remote port is B's media port
        remote_port = await relayed.evaluate("""(async () => {
          for (const r of (await window.callsgw.pc.getStats()).values())
            if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') {
              const stats = await window.callsgw.pc.getStats();
              return stats.get(r.remoteCandidateId).port;
            }
          return null;
        })()""")
        assert remote_port == b.media_port
        # the page's security panel judges the relayed session as it would on one node: every check holds
        await relayed.wait_for("window.callsgw.state.security.verdict === 'ok'", timeout=15)
        gateway = await relayed.evaluate("window.callsgw.state.security.gateway")
        assert gateway["dtls"]["cipher_suite"] in {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                                                   "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"}

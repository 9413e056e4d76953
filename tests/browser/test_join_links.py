"""Join links (issue #21 item 2): the token travels in the URL fragment and nothing joins before a click.

A real gateway and a real headless Chromium. The gateway records every request
target it receives (its HTTP hook), so the test can show that no request line
ever carried the token; the page's microphone and WebSocket are counted by a
probe installed before the page's own script.
"""

from __future__ import annotations

import asyncio

import pytest

from callsgw.cli import join_link as cli_join_link
from callsgw.signaling import tokens
from tests.browser.chromium import chromium_path
from tests.browser.test_web_client import base_url, open_page, page_problems, quit_browser, wait_joined
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")

# before the page's script: no automatic click, and count what the page asks for
MANUAL = """
window.__manualJoin = true;
window.__asked = {mic: 0, ws: 0};
(() => {
  const gum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (c) => { window.__asked.mic += 1; return gum(c); };
  const WS = window.WebSocket;
  window.WebSocket = function (...args) { window.__asked.ws += 1; return new WS(...args); };
  window.WebSocket.prototype = WS.prototype;
  Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
})();
"""


def record_targets(monkeypatch) -> list[str]:
    """Every request target the gateway's HTTP side sees (page, API and WebSocket upgrades)."""
    from callsgw.server.app import GatewayApp

    seen: list[str] = []
    original = GatewayApp._http

    def hook(self, connection, request):
        seen.append(request.path)
        return original(self, connection, request)

    monkeypatch.setattr(GatewayApp, "_http", hook)
    return seen


async def test_a_join_link_waits_for_one_click_and_never_sends_the_token(tmp_path, browser, monkeypatch):
    seen = record_targets(monkeypatch)
    async with asyncio.timeout(60), running_gateway(tmp_path) as app:
        token = tokens.mint(app.datadir.api_secret(), call="standup", name="alice")
        link = cli_join_link(base_url(app), call="standup", name="alice", token=token)
        assert link.startswith(base_url(app) + "#") and token in link.split("#", 1)[1]
        page = await open_page(browser)
        await page.call("Page.addScriptToEvaluateOnNewDocument", {"source": MANUAL})
        await page.goto(link)
        await page.wait_for("document.documentElement.dataset.linkJoin === 'ready'", timeout=10)
        # the address bar lost the token (and the whole fragment) at once
        assert await page.evaluate("location.href") == base_url(app)
        # one clear button, and nothing asked for or published before the click
        assert await page.evaluate("document.querySelector('#join-btn-text').textContent") == "Join standup as alice"
        await asyncio.sleep(1.5)
        assert await page.evaluate("window.__asked") == {"mic": 0, "ws": 0}
        assert await page.evaluate("window.callsgw.state.phase") == "idle"
        assert await page.evaluate("window.callsgw.pc") is None
        assert app.core.participant_count == 0
        # the click joins, microphone and all
        await page.evaluate("document.querySelector('#join-btn').click()")
        await wait_joined(page)
        assert await page.evaluate("window.__asked.mic") == 1
        assert app.core.participant_count == 1
        # no request the gateway received carried the token
        assert seen and all(token not in target and "token=" not in target for target in seen), seen
        assert await page_problems(page) == []
        quit_browser(browser)


async def test_the_old_query_link_still_works_but_also_waits_for_the_click(tmp_path, browser):
    from urllib.parse import urlencode

    async with asyncio.timeout(60), running_gateway(tmp_path) as app:
        token = tokens.mint(app.datadir.api_secret(), call="c1", name="bob")
        page = await open_page(browser)
        await page.call("Page.addScriptToEvaluateOnNewDocument", {"source": MANUAL})
        await page.goto(base_url(app) + "?" + urlencode({"call": "c1", "name": "bob", "token": token}))
        await page.wait_for("document.documentElement.dataset.linkJoin === 'ready'", timeout=10)
        assert "token" not in await page.evaluate("location.href")
        await asyncio.sleep(1.0)
        assert await page.evaluate("window.__asked") == {"mic": 0, "ws": 0}
        await page.evaluate("document.querySelector('#join-btn').click()")
        await wait_joined(page)
        quit_browser(browser)

"""The page resumes its session when its WebSocket dies (issue #17, docs/PROTOCOL.md "Resuming").

Two Chromium pages in a call through a real gateway; the gateway side of one
page's TCP connection is aborted (no close frame: the page sees 1006). The page
must resume on a new socket within a few seconds, without a rejoin, the other
page must never see it leave, and audio must keep flowing both ways.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.browser.chromium import chromium_path
from tests.browser.test_call_media import INBOUND
from tests.browser.test_web_client import join_link, open_page, page_problems, quit_browser, wait_joined
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")


async def audio_packets(page) -> int:
    return sum(s["packets"] for s in await page.evaluate(INBOUND) if s["kind"] == "audio")


async def wait_audio_growth(page, timeout: float = 15) -> None:
    start = await audio_packets(page)
    async with asyncio.timeout(timeout):
        while await audio_packets(page) < start + 20:
            await asyncio.sleep(0.25)


async def two_pages_in_call(browser, app, call: str):
    """Ann's and Ben's pages joined to ``call``, media connected and audio flowing both ways; Ann's id."""
    a, b = await open_page(browser), await open_page(browser)
    await a.goto(join_link(app, call, "Ann"))
    await wait_joined(a)
    await b.goto(join_link(app, call, "Ben"))
    await wait_joined(b)
    for page in (a, b):
        await page.wait_for("window.callsgw.pc.connectionState === 'connected'", timeout=20)
        await wait_audio_growth(page)
    return a, b, await a.evaluate("window.callsgw.state.participantId")


async def test_a_dropped_websocket_is_resumed_without_a_leave(tmp_path, browser):
    async with asyncio.timeout(90), running_gateway(tmp_path) as app:
        a, b, ann = await two_pages_in_call(browser, app, "resume")
        left_before = await b.evaluate("JSON.stringify(window.callsgw.state.participants)")

        # the gateway's end of Ann's signaling connection dies without a close frame
        conn = next(c for c in app.core.connections.values() if c.participant is not None and c.participant.id == ann)
        app._outboxes[conn.id].ws.transport.abort()

        await a.wait_for("window.callsgw.state.resumes === 1 && !window.callsgw.state.reconnecting", timeout=15)
        assert await a.evaluate("window.callsgw.state.rejoins") == 0
        assert await a.evaluate("window.callsgw.state.phase") == "joined"
        assert app.core.stats.get("resumes") == 1 and app.core.participant_count == 2
        # Ben never saw Ann leave, and both still hear each other
        assert ann in await b.evaluate("Object.keys(window.callsgw.state.participants)")
        assert await b.evaluate("JSON.stringify(window.callsgw.state.participants)") == left_before
        await wait_audio_growth(a)
        await wait_audio_growth(b)
        # signaling works on the new socket: a mute reaches Ben
        await a.evaluate("window.callsgw.toggleMute(true)")
        await b.wait_for(f"window.callsgw.state.participants[{ann!r}].muted === true", timeout=5)
        for page in (a, b):
            assert await page_problems(page) == []
        quit_browser(browser)

"""The page restarts ICE and keeps its call (issue #17 item 1, docs/PROTOCOL.md "Restarting ICE").

Two Chromium pages in a call through a real gateway. One page restarts ICE
(``window.callsgw.restartIce()``, which is what a failed or long-disconnected
ICE connection or a network change makes it do): Chromium offers new
ice-ufrag/ice-pwd, the gateway answers with new credentials of its own, and
media must flow again both ways within 3 s, on the same DTLS association and
SRTP keys, without a leave or a rejoin. Chromium cannot be made to change its
own address in this namespace, so the restart is forced; the Python client's
test (tests/media/test_ice_restart.py) moves a real socket.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.browser.chromium import chromium_path
from tests.browser.test_page_resume import audio_packets, two_pages_in_call, wait_audio_growth
from tests.browser.test_web_client import page_problems, quit_browser
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")

RESTORED_WITHIN = 3.0


async def wait_some_audio(page, since: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while await audio_packets(page) < since + 5:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("engine", ["python", "native", "native-thread"])
async def test_the_page_restarts_ice_without_leaving(tmp_path, browser, engine):
    async with asyncio.timeout(90), running_gateway(tmp_path, media_engine=engine) as app:
        a, b, ann = await two_pages_in_call(browser, app, "restart")
        transport = app.core.calls["restart"].participants[ann].transport
        old_ufrag = transport.record.ice_local_ufrag
        dtls_before = transport.dtls
        participants_before = await b.evaluate("JSON.stringify(window.callsgw.state.participants)")

        loop = asyncio.get_running_loop()
        heard_by_ben, heard_by_ann = await audio_packets(b), await audio_packets(a)
        start = loop.time()
        assert await a.evaluate("window.callsgw.restartIce()") is True
        # the gateway took the restart: new credentials on its side too
        async with asyncio.timeout(RESTORED_WITHIN):
            while transport.record.ice_restarts == 0 or transport.ice.restarting:
                await asyncio.sleep(0.02)
        # and media flows again both ways, within the bound from the restart's start
        await wait_some_audio(b, heard_by_ben, RESTORED_WITHIN - (loop.time() - start))
        await wait_some_audio(a, heard_by_ann, max(0.2, RESTORED_WITHIN - (loop.time() - start)))
        assert transport.record.ice_local_ufrag != old_ufrag
        assert transport.dtls is dtls_before and not transport.counters.srtp_errors
        assert await a.evaluate("window.callsgw.state.iceRestarts") == 1
        assert await a.evaluate("window.callsgw.state.rejoins") == 0
        assert await a.evaluate("window.callsgw.pc.connectionState") == "connected"
        # Chromium's own view: the offer it applied had new credentials
        assert old_ufrag not in await a.evaluate("window.callsgw.pc.remoteDescription.sdp")
        assert ann in await b.evaluate("Object.keys(window.callsgw.state.participants)")
        assert await b.evaluate("JSON.stringify(window.callsgw.state.participants)") == participants_before
        assert app.core.participant_count == 2 and app.core.stats.get("ice_restarts") == 1
        await wait_audio_growth(a)
        await wait_audio_growth(b)
        for page in (a, b):
            assert await page_problems(page) == []
        quit_browser(browser)

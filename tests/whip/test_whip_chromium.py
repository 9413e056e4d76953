"""Chromium in a call with WHIP/WHEP clients (#23 deliverable 4).

A tab of the gateway's web page receives GStreamer's WHIP voice and VP8 screen (Chromium decodes
the frames); a GStreamer WHEP subscriber receives the tab's voice. Three independent stacks:
Chromium's libwebrtc, GStreamer's webrtcbin and the gateway.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.browser.chromium import Chromium, chromium_path
from tests.browser.test_call_media import join_tab, wait_inbound
from tests.signaling.gateway import running_gateway
from tests.whip.test_whip_gstreamer import MISSING, gst_client, gst_srtp, token

pytestmark = [
    pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)"),
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
]


@pytest.fixture
def browser():
    b = Chromium()
    try:
        yield b
    finally:
        b.close()


async def test_chromium_receives_gstreamer_whip_voice_and_screen(tmp_path, browser):
    async with running_gateway(tmp_path, whip_port=0) as app:
        page = await join_tab(browser, app, "room", "ann")
        run = asyncio.create_task(gst_client("whip", app, token(app, "gst"), 10, "--video"))
        try:
            stats = await wait_inbound(
                page, lambda s: any(x["kind"] == "audio" and x["packets"] >= 50 for x in s)
                and any(x["kind"] == "video" and x["frames"] >= 10 for x in s), timeout=30)
            gst = [p for p in app.core.calls["room"].participants.values() if p.name == "gst"][0]
            record = gst.transport.record
        finally:
            result = await run
        assert result["status"] == 201 and result["delete_status"] == 200, result
        assert gst_srtp(result) == record.srtp_profile
        print(f"\nChromium <- GStreamer WHIP: {stats}; gateway {record.dtls.cipher_suite} {record.srtp_profile}")


async def test_gstreamer_whep_receives_a_chromium_participant(tmp_path, browser):
    async with running_gateway(tmp_path, whip_port=0) as app:
        page = await join_tab(browser, app, "room", "ann")
        result = await gst_client("whep", app, token(app, "gst", perms=()), 5)
        assert result["status"] == 201 and result["connection_state"] == "connected", result
        assert result["received"]["audio"] > 100, result["received"]  # 5 s of 20 ms Opus frames, give or take
        assert result["delete_status"] == 200
        await page.wait_for("window.callsgw.state.participants && "
                            "Object.keys(window.callsgw.state.participants).length === 0", timeout=10)

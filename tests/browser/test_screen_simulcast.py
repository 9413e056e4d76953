"""Simulcast screen share in real Chromium (issue #19 deliverable 3), through the Python and native media engines.

One tab shares a (canvas) screen as two RFC 8853 layers, ``h`` and ``l``;
another receives it as one ordinary VP8 stream. The gateway runs in this
process, so the test reads the router's per-layer stats and forces layer
switches through ``Router.force_layer`` (the selector's test hook); the
viewer's getStats() shows the switch (frameWidth) and that decoding goes on.
A second share on the same (reused) transceiver is simulcast again.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.browser.chromium import chromium_path
from tests.browser.test_call_media import join_tab
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")

VIDEO_IN = """(async () => {
  for (const r of (await window.callsgw.pc.getStats()).values())
    if (r.type === 'inbound-rtp' && r.kind === 'video' && (r.packetsReceived || 0) > 0)
      return {frames: r.framesDecoded || 0, width: r.frameWidth || 0, keyframes: r.keyFramesDecoded || 0,
              lost: r.packetsLost || 0, packets: r.packetsReceived || 0};
  return null;
})()"""


async def until(check, timeout: float, what: str):
    """Poll ``check()`` (async) until it returns something true, at most ``timeout`` s."""
    last = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await check()
                if last:
                    return last
                await asyncio.sleep(0.25)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}") from None


@pytest.mark.parametrize("engine", ["python", "native-thread"])
async def test_simulcast_layers_reach_the_gateway_and_a_forced_switch_keeps_the_viewer_decoding(tmp_path, browser,
                                                                                                engine):
    async with running_gateway(tmp_path, media_engine=engine) as app:
        sharer = await join_tab(browser, app, "sim", "sharer")
        viewer = await join_tab(browser, app, "sim", "viewer")
        sharer_id = await sharer.evaluate("window.callsgw.state.participantId")
        viewer_id = await viewer.evaluate("window.callsgw.state.participantId")
        await sharer.evaluate("window.callsgw.startScreenShare({fake: true})")
        router = app.core.calls["sim"].router

        # the offer was simulcast and the gateway answered it
        await sharer.wait_for("window.callsgw.pc.remoteDescription && "
                              "window.callsgw.pc.remoteDescription.sdp.includes('a=simulcast:recv h;l')", timeout=15)
        local = await sharer.evaluate("window.callsgw.pc.localDescription.sdp")
        assert "a=simulcast:send h;l" in local

        async def layers():
            screen = router.stats()["publishers"].get(sharer_id, {}).get("tracks", {}).get("screen", {})
            got = screen.get("layers", {})
            return got if {"h", "l"} <= set(got) and all(v["packets_in"] > 30 for v in got.values()) else None

        got = await until(layers, 25, "both layers at the gateway")
        assert got["h"]["ssrc"] != got["l"]["ssrc"]

        def route():
            return router.stats()["subscribers"][viewer_id]["routes"][f"{sharer_id}/screen"]

        # the viewer is forced onto h (the selector would follow the downlink estimate): full size
        router.force_layer(viewer_id, (sharer_id, "screen"), "h")
        first = await until(lambda: _video(viewer, lambda v: v["frames"] > 10 and v["width"] >= 1000), 25,
                            "the viewer decoding h")
        assert route()["layer"] == "h"
        # the subscriber's SDP never carries the RID extensions or simulcast
        remote = await viewer.evaluate("window.callsgw.pc.remoteDescription.sdp")
        assert "rtp-stream-id" not in remote and "a=simulcast" not in remote

        # forced down to l: a smaller picture, decoding goes on
        router.force_layer(viewer_id, (sharer_id, "screen"), "l")
        low = await until(lambda: _video(viewer, lambda v: 0 < v["width"] <= 400 and v["frames"] > first["frames"]),
                          15, "the viewer on l")
        assert route()["layer"] == "l" and route()["active_ssrc"] == got["l"]["ssrc"]
        later = await until(lambda: _video(viewer, lambda v: v["frames"] >= low["frames"] + 10), 10,
                            "frames decoded on l")
        assert later["width"] <= 400

        # and back up to h
        router.force_layer(viewer_id, (sharer_id, "screen"), "h")
        high = await until(lambda: _video(viewer, lambda v: v["width"] >= 1000 and v["frames"] > later["frames"]),
                           15, "the viewer back on h")
        await until(lambda: _video(viewer, lambda v: v["frames"] >= high["frames"] + 10), 10, "frames decoded on h")
        stats = route()
        assert stats["layer"] == "h" and stats["layer_switches"] >= 2  # down, up (and any automatic ones)
        # one outgoing SSRC throughout, and no decoder restart: exactly one inbound video stream
        n_video = await viewer.evaluate("""(async () => { let n = 0;
          for (const r of (await window.callsgw.pc.getStats()).values())
            if (r.type === 'inbound-rtp' && r.kind === 'video') n++;
          return n; })()""")
        assert n_video == 1

        # a second share reuses the transceiver (encodings are only set by addTransceiver): still simulcast
        await sharer.evaluate("window.callsgw.stopScreenShare()")
        await until(lambda: _route_layer(router, viewer_id, sharer_id, None), 10, "the screen route gone")
        assert await sharer.evaluate("window.callsgw.startScreenShare({fake: true})") is True
        await sharer.wait_for("window.callsgw.pc.signalingState === 'stable' && "
                              "window.callsgw.pc.localDescription.sdp.includes('a=simulcast:send h;l') && "
                              "window.callsgw.pc.remoteDescription.sdp.includes('a=simulcast:recv h;l')", timeout=15)
        before = (await viewer.evaluate(VIDEO_IN)) or {"frames": 0}
        await until(layers, 25, "both layers again")
        await until(lambda: _video(viewer, lambda v: v["frames"] > before["frames"] + 10), 25,
                    "the viewer decoding the second share")
        assert route()["layer"] in ("h", "l")
        assert not [line for line in sharer.console if "could not make an offer" in line]


async def _route_layer(router, viewer_id, sharer_id, _):
    routes = router.stats()["subscribers"].get(viewer_id, {}).get("routes", {})
    return f"{sharer_id}/screen" not in routes or None


async def _video(page, predicate):
    v = await page.evaluate(VIDEO_IN)
    return v if v is not None and predicate(v) else None

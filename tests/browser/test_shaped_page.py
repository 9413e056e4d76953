"""One Chromium page behind loadtest/shaper.py in a real call (issue #19 deliverable 4).

The page's WebSocket shim (tests/browser/page_net.py) rewrites the gateway's candidate in every
SDP the page receives to the shaper's address (benchmarks/bench_screen.py's JS twin of
loadtest.shaper.rewrite_sdp_candidates), so the page's ICE, DTLS and SRTP run through the shaper
while the other page talks to the gateway directly. A cap below one Opus stream then shows up as
queue drops in the shaper and as packetsLost in the page's own getStats, and lifting it stops
the loss.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from loadtest.shaper import LinkConfig, Shaper
from tests.browser.chromium import chromium_path
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")

_spec = importlib.util.spec_from_file_location(
    "bench_screen", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_screen.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

AUDIO_IN = """(async () => {
  let received = 0, lost = 0, streams = 0;
  (await window.callsgw.pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') { streams += 1; received += r.packetsReceived || 0; lost += r.packetsLost || 0; }
  });
  return {received, lost, streams};
})()"""


async def audio_in(page) -> dict:
    return await page.evaluate(AUDIO_IN)


async def test_the_pages_rewrite_is_the_python_one(browser):
    """benchmarks/bench_screen.py rewrites Chromium's view in JS: the same output as
    loadtest.shaper.rewrite_sdp_candidates, line endings included, on the gateway-like SDP of
    tests/loadtest/test_shaper.py; an SDP without the gateway's candidate passes unchanged, counted."""
    from loadtest.shaper import rewrite_sdp_candidates
    from tests.loadtest.test_shaper import GATEWAY_ANSWER

    page = await browser.new_page()
    await page.evaluate(bench.shape_rewrite_js(("127.0.0.1", 40000), ("127.0.0.1", 51234)))
    for sdp in (GATEWAY_ANSWER, GATEWAY_ANSWER.replace("\r\n", "\n")):
        out = await page.evaluate(f"window.__shapeRewrite({json.dumps(sdp)})")
        assert out == rewrite_sdp_candidates(sdp, ("127.0.0.1", 40000), ("127.0.0.1", 51234))
    other = GATEWAY_ANSWER.replace("40000 typ", "40002 typ")
    assert await page.evaluate(f"window.__shapeRewrite({json.dumps(other)})") == other
    assert await page.evaluate("window.__shapeMisses") == 1


async def test_one_page_behind_the_shaper(tmp_path, browser):
    async with running_gateway(tmp_path) as app:
        gateway = ("127.0.0.1", app.media_port)
        with Shaper(("127.0.0.1", 0), gateway, up=LinkConfig(delay_s=0.01),
                    down=LinkConfig(delay_s=0.01, queue_packets=10)) as shaper:
            scripts = (bench.shape_rewrite_js(gateway, shaper.address), bench.SHAPE_MUTATE)
            plain = await bench.join(browser, app, "shaped", "plain")
            shaped = await bench.join(browser, app, "shaped", "shaped", scripts=scripts, net_shim=True)
            # the page only knows the shaper's address, and nothing went around it
            remote = await shaped.evaluate("window.callsgw.pc.remoteDescription.sdp")
            candidates = [line for line in remote.splitlines() if line.startswith("a=candidate:")]
            assert candidates and all(f" {shaper.address[1]} typ host" in c for c in candidates), candidates
            assert await shaped.evaluate("window.__shapeMisses") == 0
            async with asyncio.timeout(20):
                while (await audio_in(shaped))["received"] < 100 or (await audio_in(plain))["received"] < 100:
                    await asyncio.sleep(0.25)
            counters = shaper.counters()
            assert counters["up"]["out_packets"] > 100 and counters["down"]["out_packets"] > 100
            # a cap well below one Opus stream (about 40 kbit/s with headers): drops, and the page sees loss
            before = await audio_in(shaped)
            shaper.set_rate("down", 12_000)
            await asyncio.sleep(3)
            capped = await audio_in(shaped)
            assert shaper.counters()["down"]["dropped_queue"] > 20
            assert capped["lost"] - before["lost"] > 20, (before, capped)
            # lifted: packets flow again without new loss
            shaper.set_rate("down", None)
            await asyncio.sleep(1.5)
            settled = await audio_in(shaped)
            await asyncio.sleep(2)
            after = await audio_in(shaped)
            assert after["received"] - settled["received"] > 60
            assert after["lost"] - settled["lost"] <= 2, (settled, after)

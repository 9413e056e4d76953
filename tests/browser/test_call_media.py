"""Real calls through the gateway in headless Chromium: voice, screen share,
keyframe recovery, leaving, and a mixed call with the Python and aiortc clients.

Each browser participant is a tab of the gateway's own web page, joined by a
join link; media counts come from the page's RTCPeerConnection getStats().
"""

from __future__ import annotations

import asyncio
import json

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from callsgw.client import connect
from callsgw.signaling import tokens
from tests.browser.chromium import chromium_path
from tests.browser.test_web_client import join_link, open_page
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")

INBOUND = """(async () => {
  const out = [];
  for (const r of (await window.callsgw.pc.getStats()).values())
    if (r.type === 'inbound-rtp') out.push({kind: r.kind, packets: r.packetsReceived || 0,
                                            frames: r.framesDecoded || 0, ssrc: r.ssrc});
  return out;
})()"""


async def join_tab(browser, app, call: str, name: str):
    page = await open_page(browser)
    await page.goto(join_link(app, call, name))
    await page.wait_for("window.callsgw && window.callsgw.pc && window.callsgw.pc.connectionState === 'connected'",
                        timeout=20)
    return page


async def inbound(page) -> list[dict]:
    return await page.evaluate(INBOUND)


async def wait_inbound(page, predicate, timeout: float = 20.0) -> list[dict]:
    async with asyncio.timeout(timeout):
        while True:
            stats = await inbound(page)
            if predicate(stats):
                return stats
            await asyncio.sleep(0.25)


def audio_streams_flowing(n: int, minimum: int = 10):
    return lambda stats: sum(1 for s in stats if s["kind"] == "audio" and s["packets"] >= minimum) >= n


def video_decoding(stats) -> bool:
    return any(s["kind"] == "video" and s["frames"] > 0 for s in stats)


@pytest.mark.parametrize("engine", ["native", "native-thread", "python"])
async def test_three_browsers_hear_each_other_and_see_the_shared_screen(tmp_path, browser, engine):
    async with running_gateway(tmp_path, media_engine=engine) as app:
        pages = [await join_tab(browser, app, "meet", name) for name in ("ann", "ben", "cat")]
        for page in pages:
            await wait_inbound(page, audio_streams_flowing(2))
        # ann shares a screen (canvas source); ben and cat decode it
        await pages[0].evaluate("window.callsgw.startScreenShare({fake: true})")
        for page in pages[1:]:
            await wait_inbound(page, video_decoding)
        # cat leaves: ann and ben renegotiate and keep hearing each other
        await pages[2].evaluate("window.callsgw.leave()")
        # per stream: the leaver's stream leaves getStats() whenever the renegotiation lands
        before = {id(p): {s["ssrc"]: s["packets"] for s in await inbound(p) if s["kind"] == "audio"}
                  for p in pages[:2]}
        await asyncio.sleep(2)
        for page in pages[:2]:
            await page.wait_for("window.callsgw.state.participants && "
                                "Object.keys(window.callsgw.state.participants).length === 1", timeout=10)
            after = {s["ssrc"]: s["packets"] for s in await inbound(page) if s["kind"] == "audio"}
            grown = sum(after[ssrc] - n for ssrc, n in before[id(page)].items() if ssrc in after)
            assert grown > 20, "voice stopped after a participant left"
        assert not app.core.calls["meet"].router.stats()["counters"].get("bad_rtcp")


@pytest.mark.parametrize("engine", ["native", "native-thread", "python"])
async def test_late_subscriber_gets_a_keyframe_through_pli(tmp_path, browser, engine):
    async with running_gateway(tmp_path, media_engine=engine) as app:
        sharer = await join_tab(browser, app, "kf", "sharer")
        await sharer.evaluate("window.callsgw.startScreenShare({fake: true})")
        await asyncio.sleep(3)  # the first keyframe is long gone
        late = await join_tab(browser, app, "kf", "late")
        started = asyncio.get_running_loop().time()
        await wait_inbound(late, video_decoding, timeout=10)
        elapsed = asyncio.get_running_loop().time() - started
        assert elapsed < 6, f"keyframe took {elapsed:.1f} s"
        stats = app.core.calls["kf"].router.stats()
        requests = sum(t["keyframe_requests"] for p in stats["publishers"].values() for t in p["tracks"].values())
        assert requests >= 1


@pytest.mark.parametrize("engine", ["native", "native-thread", "python"])
async def test_mixed_call_browser_python_and_aiortc(tmp_path, browser, engine, monkeypatch):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    async with running_gateway(tmp_path, media_engine=engine) as app:
        secret = app.datadir.api_secret()
        url = f"wss://127.0.0.1:{app.port}/ws"
        page = await join_tab(browser, app, "mix", "browser")
        py = await connect(url, tokens.mint(secret, call="mix", name="python"), ssl=False)
        await py.wait_connected(timeout=20)
        # aiortc joins through the documented protocol
        import ssl as ssl_mod

        import websockets

        insecure = ssl_mod.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl_mod.CERT_NONE
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        ws = await websockets.connect(url, ssl=insecure, subprotocols=["callsgw.v1"])
        try:
            await ws.send(json.dumps({"type": "join", "token": tokens.mint(secret, call="mix", name="aiortc"),
                                      "sdp": pc.localDescription.sdp}))

            async def aiortc_signaling():
                while True:
                    msg = json.loads(await ws.recv())
                    if msg["type"] == "joined":
                        await pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="answer"))
                    elif msg["type"] == "offer":
                        await pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="offer"))
                        await pc.setLocalDescription(await pc.createAnswer())
                        await ws.send(json.dumps({"type": "answer", "id": msg["id"], "sdp": pc.localDescription.sdp}))

            signaling = asyncio.create_task(aiortc_signaling())
            # the Python client sends voice (Opus PT 111 frames of silence)
            async def python_voice():
                seq = 0
                while True:
                    packet = bytes([0x80, 111]) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big") \
                        + b"\x00\x00\x00\x01" + b"\xf8\xff\xfe"
                    py.send_voice(packet)
                    seq = (seq + 1) & 0xFFFF
                    await asyncio.sleep(0.02)

            sender = asyncio.create_task(python_voice())
            # the browser hears both the Python client and aiortc
            try:
                await wait_inbound(page, audio_streams_flowing(2), timeout=25)
            except TimeoutError:
                call = app.core.calls["mix"]
                raise AssertionError(f"browser inbound: {await inbound(page)}; pending: {[(p.name, p.negotiation.pending_offer is not None, p.renegotiate_later, len(p.negotiation.sections)) for p in call.participants.values()]}; page: {await page.evaluate('JSON.stringify(window.callsgw.state)')}; console: {page.console[-15:]}")
            # the Python client receives the browser's and aiortc's voice
            async with asyncio.timeout(15):
                sources = set()
                while len(sources) < 2:
                    packet = await py.rtp.get()
                    sources.add(int.from_bytes(packet[8:12], "big"))
            # aiortc decrypts what the gateway forwards to it
            async with asyncio.timeout(15):
                while True:
                    stats = await pc.getStats()
                    if sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp") > 20:
                        break
                    await asyncio.sleep(0.2)
            sender.cancel()
            signaling.cancel()
        finally:
            await ws.close()
            await pc.close()
            await py.close()

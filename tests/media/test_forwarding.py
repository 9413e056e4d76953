"""Media through the gateway: real RTP from ../shared/captures, Python clients.

A publisher sends the Opus voice capture and the VP8 screen capture; each
subscriber must get the same payloads back, byte-identical after decryption,
with only SSRC, sequence and header extensions rewritten by design.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from callsgw.client import connect
from callsgw.signaling import tokens
from tests.media.pcap import CAPTURES, rtp_packets
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(not CAPTURES.exists(), reason="../shared/captures is not beside the repository")


def with_pt(packet: bytes, pt: int) -> bytes:
    return packet[:1] + bytes([(packet[1] & 0x80) | pt]) + packet[2:]


def payload(packet: bytes) -> bytes:
    cc = packet[0] & 0x0F
    offset = 12 + 4 * cc
    if packet[0] & 0x10:
        offset += 4 + 4 * struct.unpack("!H", packet[offset + 2 : offset + 4])[0]
    end = len(packet) - (packet[-1] if packet[0] & 0x20 else 0)
    return packet[offset:end]


async def wait_routes(app, call: str, subscriber_count: int, tracks: int) -> None:
    async with asyncio.timeout(15):
        while True:
            call_obj = app.core.calls.get(call)
            if call_obj is not None:
                ready = [
                    p for p in call_obj.participants.values()
                    if len(p.negotiation.forwarded_sources()) >= tracks and p.negotiation.pending_offer is None
                ]
                if len(ready) >= subscriber_count:
                    return
            await asyncio.sleep(0.05)


async def collect(session, count: int, timeout: float = 15.0) -> list[bytes]:
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(await session.rtp.get())
    return got


@pytest.mark.parametrize("engine", ["native", "native-thread", "python"])
@pytest.mark.parametrize("subscribers", [1, 2])
async def test_capture_payloads_arrive_byte_identical(tmp_path, subscribers, engine):
    # ffmpeg sent Opus as PT 97; the client negotiated Opus as 111 (VP8 is 96 in both)
    voice = [with_pt(p, 111) for p in rtp_packets(CAPTURES / "opus_voice_10s.pcap")[:200]]
    screen = [with_pt(p, 96) for p in rtp_packets(CAPTURES / "vp8_screen_10s.pcap")[:300]]
    async with running_gateway(tmp_path, media_engine=engine) as app:
        secret = app.datadir.api_secret()
        url = f"wss://127.0.0.1:{app.port}/ws"
        publisher = await connect(url, tokens.mint(secret, call="m", name="pub"), ssl=False, publish_screen=True)
        subs = [
            await connect(url, tokens.mint(secret, call="m", name=f"sub{n}"), ssl=False, publish_voice=False)
            for n in range(subscribers)
        ]
        try:
            for s in (publisher, *subs):
                await s.wait_connected(timeout=20)
            await wait_routes(app, "m", subscribers, tracks=2)
            for n in range(max(len(voice), len(screen))):
                if n < len(voice):
                    publisher.send_voice(voice[n])
                if n < len(screen):
                    publisher.send_screen(screen[n])
                if n % 20 == 0:
                    await asyncio.sleep(0.01)  # paced a little, like a real sender
            for sub in subs:
                received = await collect(sub, len(voice) + len(screen))
                by_kind = {"voice": [], "screen": []}
                for packet in received:
                    by_kind["voice" if packet[1] & 0x7F == voice[0][1] & 0x7F else "screen"].append(packet)
                assert [payload(p) for p in by_kind["voice"]] == [payload(p) for p in voice]
                assert [payload(p) for p in by_kind["screen"]] == [payload(p) for p in screen]
                # sequence numbers are continuous for the subscriber
                seqs = [struct.unpack("!H", p[2:4])[0] for p in by_kind["voice"]]
                assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
                # timestamps keep their spacing
                ts = [struct.unpack("!I", p[4:8])[0] for p in by_kind["voice"]]
                orig = [struct.unpack("!I", p[4:8])[0] for p in voice]
                assert [(b - a) & 0xFFFFFFFF for a, b in zip(ts, ts[1:])] == [
                    (b - a) & 0xFFFFFFFF for a, b in zip(orig, orig[1:])
                ]
        finally:
            for s in (publisher, *subs):
                await s.close()

"""WHEP egress through a real gateway, with aiortc as the independent WHEP client.

aiortc offers recvonly m-sections; the gateway answers with pre-allocated
slots (docs/WHIP.md): voice slots fed by the most recent speakers, one screen
slot. `callsgw.client` participants publish; aiortc's own receive statistics
show what arrived on each slot's SSRC, and its loss count shows the sequence
numbers stayed continuous when a slot switched to another publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from callsgw.client import connect
from callsgw.sfu.router import SpeakerChanged
from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway
from tests.whip.helpers import http

SDP = "application/sdp"
OPUS_PT, VP8_PT = 111, 96  # what callsgw.client negotiates


@pytest.fixture(autouse=True)
def loopback_candidates(monkeypatch):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def token(app, name: str, call: str = "room", **kw) -> str:
    return tokens.mint(app.datadir.api_secret(), call=call, name=name, **kw)


def rtp(pt: int, seq: int, ssrc: int, marker: int) -> bytes:
    ts = (seq * 960) & 0xFFFFFFFF
    return (bytes([0x80, pt]) + (seq & 0xFFFF).to_bytes(2, "big") + ts.to_bytes(4, "big") + ssrc.to_bytes(4, "big")
            + bytes([0xF8, 0xFF, 0xFE, marker]) + bytes(36))


async def whep(app, audio: int, video: int, **token_kw) -> tuple[RTCPeerConnection, dict, str]:
    """An aiortc WHEP subscriber: recvonly offer, POST, answer applied."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for _ in range(audio):
        pc.addTransceiver("audio", direction="recvonly")
    for _ in range(video):
        pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    status, fields, body = await http(app.whip.port, "POST", "/whep/room", pc.localDescription.sdp,
                                      {"Authorization": f"Bearer {token(app, 'viewer', perms=(), **token_kw)}",
                                       "Content-Type": SDP})
    assert status == 201, body
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
    return pc, fields, body.decode()


def slot_ssrcs(answer: str) -> list[tuple[str, int]]:
    """(kind, SSRC) of each sendonly m-section of the answer, in order."""
    out = []
    for section in answer.split("m=")[1:]:
        kind = section.split(" ", 1)[0]
        match = re.search(r"^a=ssrc:(\d+) ", section, re.M)
        if "a=sendonly" in section and match:
            out.append((kind, int(match.group(1))))
    return out


async def inbound(pc: RTCPeerConnection) -> dict[int, object]:
    stats = await pc.getStats()
    return {s.ssrc: s for s in stats.values() if s.type == "inbound-rtp"}


@contextlib.asynccontextmanager
async def sending(sessions, *, screen=()):
    """Each session sends voice (and those in ``screen`` VP8) every 20 ms until the block ends."""
    async def run():
        seq = 0
        while True:
            seq += 1
            for n, s in enumerate(sessions):  # each its own sequence numbers and timestamps
                s.send_voice(rtp(OPUS_PT, seq + 10_000 * n, s.voice_ssrc, n))
            for s in screen:
                s.send_screen(rtp(VP8_PT, seq, s.screen_ssrc, 0x10))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        task.cancel()


async def wait_packets(pc, ssrc: int, at_least: int, timeout: float = 20) -> object:
    async with asyncio.timeout(timeout):
        while True:
            stats = (await inbound(pc)).get(ssrc)
            if stats is not None and stats.packetsReceived >= at_least:
                return stats
            await asyncio.sleep(0.1)


async def test_whep_subscriber_receives_voice_and_screen(tmp_path):
    async with running_gateway(tmp_path, whip_port=0) as app:
        ann = await connect(f"wss://127.0.0.1:{app.port}/ws", token(app, "ann"), ssl=False, publish_screen=True)
        pc = None
        try:
            await ann.wait_connected(timeout=20)
            pc, fields, answer = await whep(app, audio=4, video=1)
            assert fields["location"].startswith("/whep/room/")
            slots = slot_ssrcs(answer)
            # three voice slots (whep_audio_slots), the fourth audio section inactive, one screen slot
            assert [k for k, _ in slots] == ["audio", "audio", "audio", "video"], answer
            assert answer.count("a=inactive") == 1 and "a=recvonly" not in answer
            assert "a=ice-lite" in answer and "a=setup:passive" in answer
            async with sending([ann], screen=[ann]):
                voice = await wait_packets(pc, slots[0][1], 25)
                await wait_packets(pc, slots[3][1], 25)
            assert voice.packetsLost <= 2
            (viewer,) = [p for p in app.core.calls["room"].participants.values() if p.name == "viewer"]
            assert viewer.record.signaling.protocol == "whep"
            assert viewer.transport.record.dtls.fingerprint_matched is True
            assert viewer.negotiation.published_tracks() == {}
            assert ann.participants[viewer.id]["name"] == "viewer"  # a viewer is a participant too
            status, _, _ = await http(app.whip.port, "DELETE", fields["location"])
            assert status == 200
            assert list(app.core.calls["room"].participants) == [ann.participant_id]
        finally:
            if pc is not None:
                await pc.close()
            await ann.close()


@pytest.mark.parametrize("engine", ["native-thread", "python"])
async def test_whep_voice_slots_follow_the_speakers(tmp_path, engine):
    """Two voice slots, three publishers: the newest speaker takes the slot of the one heard least
    recently; the slot's SSRC stays and its sequence numbers continue (aiortc counts no loss)."""
    async with running_gateway(tmp_path, whip_port=0, whep_audio_slots=2, media_engine=engine) as app:
        url = f"wss://127.0.0.1:{app.port}/ws"
        pubs = [await connect(url, token(app, f"p{n}"), ssl=False) for n in range(3)]
        pc = None
        try:
            for p in pubs:
                await p.wait_connected(timeout=20)
            pc, _, answer = await whep(app, audio=2, video=0)
            (a_ssrc, b_ssrc) = [ssrc for _, ssrc in slot_ssrcs(answer)]
            call = app.core.calls["room"]
            (viewer,) = [p for p in call.participants.values() if p.name == "viewer"]

            def fed() -> list[str | None]:
                return [s.source[0] if s.source else None for s in viewer.negotiation.sections if s.slot]

            ids = [p.participant_id for p in pubs]
            assert fed() == ids[:2]  # nobody spoke yet: join order
            async with sending(pubs):
                await wait_packets(pc, a_ssrc, 25)
                before = await wait_packets(pc, b_ssrc, 25)
                # p0 speaks, then p2: p2 takes p1's slot (p1 was heard least recently); p0 keeps its own
                for speaker in (ids[0], ids[2]):
                    app.core.speaker_changed("room", SpeakerChanged(speaker))
                    app._flush()
                assert fed() == [ids[0], ids[2]]
                after = await wait_packets(pc, b_ssrc, before.packetsReceived + 40)
                # the datapath moved the route to p2's stream
                route = call.router._subscribers[viewer.id].routes[(ids[2], "voice")]
                assert call.router._route_state(route).active_ssrc == pubs[2].voice_ssrc
                # p1 speaks again: it takes back the slot of p0 (now heard least recently)
                earlier = (await inbound(pc))[a_ssrc].packetsReceived
                app.core.speaker_changed("room", SpeakerChanged(ids[1], ids[2]))
                app._flush()
                assert fed() == [ids[1], ids[2]]
                later = await wait_packets(pc, a_ssrc, earlier + 40)
            # continuous sequence numbers on both switched slots: a jump would count as thousands lost
            assert abs(after.packetsLost) <= 3, after
            assert abs(later.packetsLost) <= 3, later
            # and continuous timestamps: no jump for aiortc's RFC 3550 jitter estimate (RTP units; a
            # 10,000-packet jump between the publishers' timelines read as tens of thousands)
            assert after.jitter < 4800 and later.jitter < 4800, (after, later)
            # a publisher leaving frees its slot for the next one
            await pubs[1].close()
            async with asyncio.timeout(10):
                while fed() != [ids[0], ids[2]]:
                    await asyncio.sleep(0.05)
        finally:
            if pc is not None:
                await pc.close()
            for p in pubs:
                await p.close()


async def test_whep_refusals(tmp_path):
    async with running_gateway(tmp_path, whip_port=0) as app:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        from aiortc.mediastreams import AudioStreamTrack

        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")  # a WHEP offer that receives nothing
        await pc.setLocalDescription(await pc.createOffer())
        try:
            status, _, body = await http(app.whip.port, "POST", "/whep/room", pc.localDescription.sdp,
                                         {"Authorization": f"Bearer {token(app, 'v')}", "Content-Type": SDP})
            assert status == 400 and b"must receive" in body
            status, _, _ = await http(app.whip.port, "POST", "/whep/room", pc.localDescription.sdp,
                                      {"Content-Type": SDP})
            assert status == 401
            assert app.core.calls == {} and app.core.connections == {}
        finally:
            await pc.close()

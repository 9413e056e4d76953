"""WHIP and WHEP in a cluster (issue #23 with #15): a session reaches the node that hosts the call.

The call is placed on node B. aiortc publishes through node A's WHIP endpoint: A relays the session
to B over the sealed relay bus, B's answer carries B's candidates, the call on B hears it, and a
``DELETE`` on A's resource makes it leave on B. A WHEP subscriber through A receives B's call.
"""

from __future__ import annotations

import asyncio

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from callsgw.client import connect
from tests.cluster.test_nodes import ws_url
from tests.cluster.test_relay import mint, two_nodes
from tests.whip.helpers import http

SDP = "application/sdp"


@pytest.fixture(autouse=True)
def loopback_candidates(monkeypatch):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


async def test_whip_through_one_node_publishes_into_the_call_on_another(tmp_path, redis_server, pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url, whip_port=0) as (a, b):
        assert await b.cluster.place("broadcast", prefer_self=True) == "node-b"
        listener = await connect(ws_url(b), mint(b, "broadcast", "ann"), ssl=False)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        try:
            await listener.wait_connected(timeout=20)
            status, fields, body = await http(a.whip.port, "POST", "/whip/broadcast", pc.localDescription.sdp,
                                              {"Authorization": f"Bearer {mint(a, 'broadcast', 'obs')}",
                                               "Content-Type": SDP})
            assert status == 201, body
            answer = body.decode()
            assert f" {b.media_port} typ host" in answer and f" {a.media_port} typ host" not in answer
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            async with asyncio.timeout(20):
                while not any(p["name"] == "obs" for p in listener.participants.values()):
                    await asyncio.sleep(0.05)
                while listener.rtp.empty():  # its audio reaches the call on B
                    await asyncio.sleep(0.05)
            (obs,) = [p for p in b.core.calls["broadcast"].participants.values() if p.name == "obs"]
            assert obs.record.signaling.protocol == "whip"
            assert not a.core.calls and a.relay.stats()["origin_sessions"] == 1
            status, _, _ = await http(a.whip.port, "DELETE", fields["location"])
            assert status == 200
            async with asyncio.timeout(10):
                while any(p["name"] == "obs" for p in listener.participants.values()):
                    await asyncio.sleep(0.05)
            assert a.whip.sessions == 0 and a.relay.stats()["origin_sessions"] == 0
            status, _, _ = await http(a.whip.port, "DELETE", fields["location"])
            assert status == 404
        finally:
            await pc.close()
            await listener.close()


async def test_whep_through_one_node_receives_the_call_on_another(tmp_path, redis_server, pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url, whip_port=0) as (a, b):
        await b.cluster.place("watch", prefer_self=True)
        speaker = await connect(ws_url(b), mint(b, "watch", "ann"), ssl=False)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        got = asyncio.get_running_loop().create_future()

        @pc.on("track")
        def on_track(track):
            async def first_frame():
                await track.recv()
                if not got.done():
                    got.set_result(True)
            asyncio.ensure_future(first_frame())

        try:
            await speaker.wait_connected(timeout=20)
            status, fields, body = await http(a.whip.port, "POST", "/whep/watch", pc.localDescription.sdp,
                                              {"Authorization": f"Bearer {mint(a, 'watch', 'viewer')}",
                                               "Content-Type": SDP})
            assert status == 201, body
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
            seq = 0

            async def talk():
                nonlocal seq
                while True:
                    seq += 1
                    speaker.send_voice(bytes([0x80, 111]) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big")
                                       + speaker.voice_ssrc.to_bytes(4, "big") + b"\xf8\xff\xfe")
                    await asyncio.sleep(0.02)

            talking = asyncio.create_task(talk())
            try:
                await asyncio.wait_for(got, 20)  # the WHEP subscriber on A decodes the speaker on B
            finally:
                talking.cancel()
            assert a.relay.stats()["origin_sessions"] == 1 and "watch" not in a.core.calls
            status, _, _ = await http(a.whip.port, "DELETE", fields["location"])
            assert status == 200
        finally:
            await pc.close()
            await speaker.close()

"""WHIP ingest (RFC 9725) through a real gateway, with aiortc as the independent WHIP client.

Real sockets on loopback: aiortc's ICE, DTLS and SRTP against the gateway's
WHIP port; a `callsgw.client` participant in the same call sees the WHIP
publisher join and receives its audio. The refusals are checked on the wire:
status, problem-details body, nothing left behind in the core.
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
from tests.signaling.gateway import running_gateway
from tests.whip.helpers import http

MANDATED = {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"}
SDP = "application/sdp"


@pytest.fixture(autouse=True)
def loopback_candidates(monkeypatch):
    """aioice leaves 127.0.0.1 out of its host candidates (GUIDE section 6)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def token(app, name: str, call: str = "room", **kw) -> str:
    return tokens.mint(app.datadir.api_secret(), call=call, name=name, **kw)


async def publisher_offer() -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


def problem(body: bytes) -> dict:
    return json.loads(body)


async def test_whip_publisher_joins_the_call_and_is_heard(tmp_path):
    async with running_gateway(tmp_path, whip_port=0) as app:
        listener = await connect(f"wss://127.0.0.1:{app.port}/ws", token(app, "ann"), ssl=False)
        pc = await publisher_offer()
        try:
            await listener.wait_connected(timeout=20)
            status, fields, body = await http(app.whip.port, "POST", "/whip/room", pc.localDescription.sdp,
                                              {"Authorization": f"Bearer {token(app, 'obs')}",
                                               "Content-Type": SDP})
            assert status == 201, body
            assert fields["content-type"] == SDP
            assert fields["location"].startswith("/whip/room/")
            assert fields["etag"].startswith('"')
            answer = body.decode()
            assert "a=ice-lite" in answer and "a=setup:passive" in answer
            assert "a=recvonly" in answer and "a=sendonly" not in answer  # publish only: nothing comes back
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            # the others see it join, like any participant
            async with asyncio.timeout(20):
                while not any(p["name"] == "obs" for p in listener.participants.values()):
                    await asyncio.sleep(0.05)
                # and its audio reaches them through the gateway
                while listener.rtp.empty():
                    await asyncio.sleep(0.05)
            (whip,) = [p for p in app.core.calls["room"].participants.values() if p.name == "obs"]
            # the same contract: ICE-lite, DTLS 1.2 as server with a mandated suite, a mandated SRTP
            # profile, the fingerprint checked in the handshake, the record kept (and marked WHIP)
            record = whip.transport.record
            assert record.dtls.cipher_suite in MANDATED
            assert record.dtls.role == "server" and record.dtls.fingerprint_matched is True
            assert record.srtp_profile in ("AEAD_AES_128_GCM", "AES128_CM_HMAC_SHA1_80")
            assert whip.record.signaling.protocol == "whip"
            assert whip.record.signaling.tls_version == "TLSv1.3"
            assert not whip.negotiation.forwarded_sources()  # publish only
            assert whip.negotiation.pending_offer is None
            # DELETE leaves the call: the others are told
            status, _, _ = await http(app.whip.port, "DELETE", fields["location"])
            assert status == 200
            async with asyncio.timeout(10):
                while any(p["name"] == "obs" for p in listener.participants.values()):
                    await asyncio.sleep(0.05)
            assert app.whip.sessions == 0
            assert len(app.core.connections) == 1  # the virtual connection is gone too
            status, _, body = await http(app.whip.port, "DELETE", fields["location"])
            assert status == 404 and problem(body)["status"] == 404
            # the stored security record says how it was signaled
            assert await app.records.drain(5)
            stored = [r for r in app.store.list(limit=10) if r.participant_name == "obs"]
            assert stored and stored[0].signaling.protocol == "whip" and stored[0].left_at is not None
        finally:
            await pc.close()
            await listener.close()


async def test_whip_refusals(tmp_path):
    async with running_gateway(tmp_path, whip_port=0) as app:
        pc = await publisher_offer()
        sdp = pc.localDescription.sdp
        port = app.whip.port
        good = {"Authorization": f"Bearer {token(app, 'obs')}", "Content-Type": SDP}
        try:
            # no token, a forged one, one for another call: 401 with a challenge
            status, fields, body = await http(port, "POST", "/whip/room", sdp, {"Content-Type": SDP})
            assert status == 401 and fields["www-authenticate"].startswith("Bearer")
            assert fields["content-type"] == "application/problem+json"
            forged = tokens.mint(b"y" * 32, call="room", name="mallory")
            status, _, body = await http(port, "POST", "/whip/room", sdp,
                                         {"Authorization": f"Bearer {forged}", "Content-Type": SDP})
            assert status == 401 and problem(body)["code"] == "invalid_token"
            status, _, body = await http(port, "POST", "/whip/other", sdp, good)
            assert status in (401, 403), body
            # a token without publish permission: 403
            listen_only = token(app, "viewer", perms=())
            status, _, body = await http(port, "POST", "/whip/room", sdp,
                                         {"Authorization": f"Bearer {listen_only}", "Content-Type": SDP})
            assert status == 403 and problem(body)["code"] == "forbidden"
            # not SDP: 415; too large: 413 (before the body is read); not an offer: 400
            status, fields, _ = await http(port, "POST", "/whip/room", "{}",
                                           {**good, "Content-Type": "application/json"})
            assert status == 415 and fields["accept-post"] == SDP
            status, _, body = await http(port, "POST", "/whip/room", "v=0\r\n" + "a=x\r\n" * 20000, good)
            assert status == 413 and problem(body)["status"] == 413
            status, _, body = await http(port, "POST", "/whip/room", "v=0\r\nnot sdp at all\r\n", good)
            assert status == 400 and problem(body)["code"] == "bad_sdp"
            # no Content-Length: 411; unknown paths and methods
            status, _, _ = await http(port, "POST", "/whip/room", sdp, good, content_length=False)
            assert status == 411
            status, _, _ = await http(port, "GET", "/whip/room")
            assert status == 405
            status, _, _ = await http(port, "POST", "/nowhere/room", sdp, good)
            assert status == 404
            status, _, _ = await http(port, "DELETE", "/whip/room/AAAAAAAAAAAAAAAAAAAAAA")
            assert status == 404
            status, _, _ = await http(port, "PATCH", "/whip/room/AAAAAAAAAAAAAAAAAAAAAA", "a=end-of-candidates\r\n",
                                      {"Content-Type": "application/trickle-ice-sdpfrag"})
            assert status == 404
            status, fields, _ = await http(port, "OPTIONS", "/whip/room")
            assert status == 204 and "POST" in fields["allow"]
            assert app.core.calls == {} and app.core.connections == {} and app._outboxes == {}
            # a good one, then trickle on its resource: 405 (RFC 9725 section 4.3.1: neither trickle nor restart)
            status, fields, body = await http(port, "POST", "/whip/room", sdp, good)
            assert status == 201, body
            status, allow, _ = await http(port, "PATCH", fields["location"], "a=end-of-candidates\r\n",
                                          {"Content-Type": "application/trickle-ice-sdpfrag",
                                           "If-Match": fields["etag"]})
            assert status == 405 and "DELETE" in allow["allow"]
            assert app.whip.sessions == 1
            # a raw garbage request just gets a 400 and the gateway goes on
            status, _, _ = await http(port, "", "", raw=b"BLAH\r\n\r\n")
            assert status == 400
            status, _, _ = await http(port, "DELETE", fields["location"])
            assert status == 200
            assert app.core.calls == {}
        finally:
            await pc.close()


async def test_main_port_points_at_the_whip_port(tmp_path):
    async with running_gateway(tmp_path, whip_port=0) as app:
        status, fields, body = await http(app.port, "GET", "/whip/room")
        assert status == 405 and str(app.whip.port).encode() in body
        assert fields["content-type"] == "application/problem+json" and problem(body)["code"] == "wrong_port"


async def test_whip_is_held_to_the_join_limits(tmp_path):
    """The same limits as a WebSocket join: joins per second per address (429), call size (409)."""
    async with running_gateway(tmp_path, whip_port=0, joins_per_second_per_address=1.0,
                               max_participants_per_call=1) as app:
        pc = await publisher_offer()
        sdp = pc.localDescription.sdp
        try:
            status, fields, body = await http(app.whip.port, "POST", "/whip/room", sdp,
                                              {"Authorization": f"Bearer {token(app, 'one')}", "Content-Type": SDP})
            assert status == 201, body
            status, limited, body = await http(app.whip.port, "POST", "/whip/room", sdp,
                                               {"Authorization": f"Bearer {token(app, 'two')}", "Content-Type": SDP})
            assert status == 429 and limited["retry-after"] == "1" and problem(body)["code"] == "rate_limited"
            await asyncio.sleep(1.1)
            status, _, body = await http(app.whip.port, "POST", "/whip/room", sdp,
                                         {"Authorization": f"Bearer {token(app, 'two')}", "Content-Type": SDP})
            assert status == 409 and problem(body)["code"] == "call_full"
            assert len(app.core.calls["room"].participants) == 1 and app.whip.sessions == 1
        finally:
            await pc.close()


async def test_whip_answer_links_the_turn_servers(tmp_path):
    """RFC 9725 section 4.6: with TURN configured, the 201 carries it as Link headers (rel=ice-server)."""
    async with running_gateway(tmp_path, whip_port=0, turn_url=("turn:127.0.0.1:3478?transport=udp",),
                               turn_secret="s" * 32) as app:
        pc = await publisher_offer()
        try:
            status, fields, body = await http(app.whip.port, "POST", "/whip/room", pc.localDescription.sdp,
                                              {"Authorization": f"Bearer {token(app, 'obs')}", "Content-Type": SDP})
            assert status == 201, body
            link = fields["link"]
            assert link.startswith('<turn:127.0.0.1:3478?transport=udp>; rel="ice-server"; username="')
            assert 'credential-type="password"' in link
        finally:
            await pc.close()


async def test_requests_at_once_are_bounded(tmp_path, monkeypatch):
    """A peer holding connections open cannot take them all: past MAX_OPEN at once, 503 at once."""
    from callsgw.server import whip as whip_server
    from tests.whip.helpers import insecure_context

    monkeypatch.setattr(whip_server, "MAX_OPEN", 2)
    async with running_gateway(tmp_path, whip_port=0) as app:
        held = []
        try:
            for _ in range(2):  # two slow requests, their heads never finished
                reader, writer = await asyncio.open_connection("127.0.0.1", app.whip.port, ssl=insecure_context())
                writer.write(b"POST /whip/room HTTP/1.1\r\n")
                await writer.drain()
                held.append(writer)
            await asyncio.sleep(0.2)
            status, fields, body = await http(app.whip.port, "OPTIONS", "/whip/room")
            assert status == 503 and fields["retry-after"] == "1" and problem(body)["code"] == "busy"
        finally:
            for writer in held:
                writer.close()
        await asyncio.sleep(0.2)
        status, _, _ = await http(app.whip.port, "OPTIONS", "/whip/room")
        assert status == 204  # the slots came back


async def test_a_whip_session_that_never_connects_ends_by_itself(tmp_path):
    """A client that POSTs and vanishes (no ICE, no DELETE) loses consent (RFC 7675): the participant
    leaves, the others are told, and its resource is gone."""
    async with running_gateway(tmp_path, whip_port=0) as app:
        listener = await connect(f"wss://127.0.0.1:{app.port}/ws", token(app, "ann"), ssl=False)
        pc = await publisher_offer()
        try:
            await listener.wait_connected(timeout=20)
            app.core.consent_timeout = 2.0  # for the transports made from now on, instead of 30 s
            status, fields, body = await http(app.whip.port, "POST", "/whip/room", pc.localDescription.sdp,
                                              {"Authorization": f"Bearer {token(app, 'ghost')}",
                                               "Content-Type": SDP})
            assert status == 201, body
            await pc.close()  # the answer is never applied: no check ever reaches the gateway
            async with asyncio.timeout(15):
                while app.whip.sessions:
                    await asyncio.sleep(0.1)
            assert [p.name for p in app.core.calls["room"].participants.values()] == ["ann"]
            assert len(app.core.connections) == 1
            status, _, _ = await http(app.whip.port, "DELETE", fields["location"])
            assert status == 404
        finally:
            await pc.close()
            await listener.close()

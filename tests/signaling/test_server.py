"""`callsgw serve` over real sockets on loopback: joins, refusals, limits, bad input.

Clients here are raw WebSocket connections carrying offers made by aiortc
(an independent WebRTC implementation); the Python client has its own tests.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import aioice.ice
import pytest
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway

INSECURE = ssl.create_default_context()
INSECURE.check_hostname = False
INSECURE.verify_mode = ssl.CERT_NONE


@pytest.fixture(autouse=True)
def loopback_candidates(monkeypatch):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


async def ws_open(app):
    return await websockets.connect(
        f"wss://127.0.0.1:{app.port}/ws", ssl=INSECURE, subprotocols=["callsgw.v1"], max_size=2**20
    )


async def recv(ws, kind: str, timeout: float = 10.0) -> dict:
    """The next message of `kind`, skipping others."""
    async with asyncio.timeout(timeout):
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == kind:
                return msg


async def offer_sdp(audio: bool = True, video: bool = False) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if audio:
        pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
    if video:
        pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def token(app, call="c1", name="alice", **kw) -> str:
    return tokens.mint(app.datadir.api_secret(), call=call, name=name, **kw)


async def closed_with(ws, timeout: float = 10.0) -> tuple[int, str]:
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code, exc.rcvd.reason


async def test_join_reports_tls_and_media_connects(tmp_path):
    async with running_gateway(tmp_path) as app:
        pc, sdp = await offer_sdp()
        ws = await ws_open(app)
        try:
            await ws.send(json.dumps({"type": "join", "token": token(app), "sdp": sdp}))
            joined = await recv(ws, "joined")
            assert joined["protocol"] == 1 and joined["call"] == "c1"
            assert joined["participant"]["name"] == "alice"
            assert joined["tls"] == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
            assert "a=ice-lite" in joined["sdp"] and "a=setup:passive" in joined["sdp"]
            await pc.setRemoteDescription(RTCSessionDescription(sdp=joined["sdp"], type="answer"))
            connected = await recv(ws, "connection", timeout=20)
            assert connected["state"] == "connected"
            security = connected["security"]
            assert security["srtp_profile"] == "AEAD_AES_128_GCM"
            assert security["dtls"]["cipher_suite"] in (
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
            )
            await ws.send(json.dumps({"type": "ping", "id": 7}))
            assert (await recv(ws, "pong"))["id"] == 7
            await ws.send(json.dumps({"type": "leave"}))
            assert (await closed_with(ws))[0] == 1000
        finally:
            await pc.close()
            await ws.close()
        assert app.core.calls == {}


async def test_participants_see_each_other_and_leaving(tmp_path):
    # resume_grace 0: a dropped socket leaves at once (the resume tests cover the grace period)
    async with running_gateway(tmp_path, resume_grace=0.0) as app:
        pc_a, sdp_a = await offer_sdp()
        pc_b, sdp_b = await offer_sdp()
        a, b = await ws_open(app), await ws_open(app)
        try:
            await a.send(json.dumps({"type": "join", "token": token(app, name="alice"), "sdp": sdp_a}))
            await recv(a, "joined")
            await b.send(json.dumps({"type": "join", "token": token(app, name="bob"), "sdp": sdp_b}))
            joined_b = await recv(b, "joined")
            assert [p["name"] for p in joined_b["participants"]] == ["alice"]
            seen = await recv(a, "participant_joined")
            assert seen["participant"]["name"] == "bob"
            await b.send(json.dumps({"type": "mute", "muted": True}))
            mute = await recv(a, "mute")
            assert mute == {"type": "mute", "participant_id": seen["participant"]["id"], "muted": True}
            b.transport.abort()  # vanishes: no leave, no close frame, TCP reset
            left = await recv(a, "participant_left")
            assert left["participant_id"] == seen["participant"]["id"]
            # alice is unaffected
            await a.send(json.dumps({"type": "ping"}))
            await recv(a, "pong")
        finally:
            await pc_a.close()
            await pc_b.close()
            await a.close()


async def test_a_second_join_of_the_same_identity_replaces_the_first(tmp_path):
    """bye `replaced`, close 4009 for the old session; the seat (and the call) go to the new one."""
    async with running_gateway(tmp_path) as app:
        pcs = [await offer_sdp() for _ in range(3)]
        stolen = token(app, name="alice", sub="alice-id")
        a, b, thief = await ws_open(app), await ws_open(app), await ws_open(app)
        try:
            await b.send(json.dumps({"type": "join", "token": token(app, name="bob"), "sdp": pcs[1][1]}))
            await recv(b, "joined")
            await thief.send(json.dumps({"type": "join", "token": stolen, "sdp": pcs[2][1]}))
            await recv(thief, "joined")
            await recv(b, "participant_joined")
            # the owner comes back with the same token: the thief's session is replaced
            await a.send(json.dumps({"type": "join", "token": stolen, "sdp": pcs[0][1]}))
            joined = await recv(a, "joined")
            assert [p["name"] for p in joined["participants"]] == ["bob"]
            assert (await recv(thief, "bye"))["reason"] == "replaced"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv(thief, "never")
            assert closed.value.rcvd.code == 4009
            left = await recv(b, "participant_left")
            assert left == {"type": "participant_left", "participant_id": "alice-id", "reason": "replaced"}
            assert (await recv(b, "participant_joined"))["participant"]["id"] == "alice-id"
            assert app.core.participant_count == 2
        finally:
            for pc, _ in pcs:
                await pc.close()
            await a.close()
            await b.close()


async def test_a_dropped_socket_resumes_without_a_leave(tmp_path):
    """TCP reset mid-call: `resume` on a new socket re-attaches; others see no leave; a replay is refused."""
    async with running_gateway(tmp_path, resume_grace=3.0) as app:
        (pc_a, sdp_a), (pc_b, sdp_b) = await offer_sdp(), await offer_sdp()
        a, b = await ws_open(app), await ws_open(app)
        try:
            await a.send(json.dumps({"type": "join", "token": token(app, name="alice", sub="alice"), "sdp": sdp_a}))
            joined = await recv(a, "joined")
            credential = joined["resume"]["credential"]
            assert joined["resume"]["grace"] == 3.0 and len(credential) >= 40
            await b.send(json.dumps({"type": "join", "token": token(app, name="bob"), "sdp": sdp_b}))
            await recv(b, "joined")
            a.transport.abort()  # no close frame: a dropped connection
            await asyncio.sleep(0.5)
            a2 = await ws_open(app)
            await a2.send(json.dumps({"type": "resume", "participant_id": "alice", "call": "c1",
                                      "credential": credential}))
            resumed = await recv(a2, "resumed")
            assert [p["name"] for p in resumed["participants"]] == ["bob"]
            assert resumed["resume"]["credential"] != credential
            offer = await recv(a2, "offer")  # the offer of bob's voice, sent again
            assert offer["id"] == 1
            # the used credential cannot be replayed
            thief = await ws_open(app)
            await thief.send(json.dumps({"type": "resume", "participant_id": "alice", "call": "c1",
                                         "credential": credential}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv(thief, "never")
            assert closed.value.rcvd.code == 4011
            await asyncio.sleep(3.5)  # past the grace period: alice is still there, bob saw no leave
            await b.send(json.dumps({"type": "ping"}))
            async with asyncio.timeout(5):
                while (msg := json.loads(await b.recv()))["type"] != "pong":
                    assert msg["type"] != "participant_left"
            assert app.core.participant_count == 2
            # a drop that is not resumed ends after the grace period
            a2.transport.abort()
            left = await recv(b, "participant_left", timeout=10)
            assert left["reason"] == "disconnected"
        finally:
            await pc_a.close()
            await pc_b.close()
            await b.close()


@pytest.mark.parametrize(
    "make_token, join_extra, code",
    [
        (lambda app: token(app, call="other"), {"call": "c1"}, 4003),
        (lambda app: token(app, ttl=60, now=time.time() - 7200), {}, 4002),
        (lambda app: tokens.mint(b"x" * 32, call="c1", name="mallory"), {}, 4001),
        (lambda app: "not.a.token", {}, 4001),
        (lambda app: token(app, perms=("publish_screen",)), {}, 4003),  # offer publishes voice
    ],
    ids=["other-call", "expired", "forged", "garbage", "missing-permission"],
)
async def test_token_rejections_leave_nothing_behind(tmp_path, make_token, join_extra, code):
    async with running_gateway(tmp_path) as app:
        pc, sdp = await offer_sdp()
        ws = await ws_open(app)
        try:
            await ws.send(json.dumps({"type": "join", "token": make_token(app), "sdp": sdp, **join_extra}))
            got, reason = await closed_with(ws)
            assert got == code and reason
        finally:
            await pc.close()
        assert app.core.calls == {} and app.core.participant_count == 0
        assert app.media.mux.transports() == []


async def test_call_full_and_too_many_calls(tmp_path):
    async with running_gateway(tmp_path, max_participants_per_call=2, max_calls=1) as app:
        pcs, sockets = [], []
        try:
            for name in ("a", "b"):
                pc, sdp = await offer_sdp()
                ws = await ws_open(app)
                pcs.append(pc)
                sockets.append(ws)
                await ws.send(json.dumps({"type": "join", "token": token(app, name=name), "sdp": sdp}))
                await recv(ws, "joined")
            pc, sdp = await offer_sdp()
            pcs.append(pc)
            third = await ws_open(app)
            await third.send(json.dumps({"type": "join", "token": token(app, name="c"), "sdp": sdp}))
            assert (await closed_with(third))[0] == 4004
            other = await ws_open(app)
            await other.send(json.dumps({"type": "join", "token": token(app, call="c2", name="d"), "sdp": sdp}))
            assert (await closed_with(other))[0] == 4005
            # the call is unharmed
            await sockets[0].send(json.dumps({"type": "ping"}))
            await recv(sockets[0], "pong")
            assert len(app.core.calls["c1"].participants) == 2
        finally:
            for pc in pcs:
                await pc.close()
            for ws in sockets:
                await ws.close()


async def test_join_rate_cap_per_address(tmp_path):
    async with running_gateway(tmp_path, joins_per_second_per_address=1.0) as app:
        pc, sdp = await offer_sdp()
        try:
            first = await ws_open(app)
            await first.send(json.dumps({"type": "join", "token": token(app, name="a"), "sdp": sdp}))
            await recv(first, "joined")
            second = await ws_open(app)
            await second.send(json.dumps({"type": "join", "token": token(app, name="b"), "sdp": sdp}))
            assert (await closed_with(second))[0] == 4006
            await first.close()
        finally:
            await pc.close()


async def test_bad_input_gets_clear_errors_and_harms_nobody(tmp_path):
    async with running_gateway(tmp_path) as app:
        pc_a, sdp_a = await offer_sdp()
        a = await ws_open(app)
        try:
            await a.send(json.dumps({"type": "join", "token": token(app, name="alice"), "sdp": sdp_a}))
            await recv(a, "joined")
            bad = await ws_open(app)
            await bad.send("{not json")
            assert (await recv(bad, "error"))["code"] == "bad_json"
            await bad.send(json.dumps({"type": "teleport"}))
            assert (await recv(bad, "error"))["code"] == "unknown_type"
            await bad.send(json.dumps({"type": "mute", "muted": True}))
            assert (await recv(bad, "error"))["code"] == "not_joined"
            await bad.send(json.dumps({"type": "join", "token": 5, "sdp": "x"}))
            assert (await recv(bad, "error"))["code"] == "bad_message"
            await bad.send(json.dumps({"type": "join", "token": token(app, name="eve"), "sdp": "v=0\r\ngarbage"}))
            code, reason = await closed_with(bad)
            assert code == 4008 and "SDP" in reason
            no_fp = await ws_open(app)
            stripped = "\r\n".join(l for l in sdp_a.split("\r\n") if not l.startswith("a=fingerprint"))
            await no_fp.send(json.dumps({"type": "join", "token": token(app, name="fp"), "sdp": stripped}))
            code, reason = await closed_with(no_fp)
            assert code == 4008 and "fingerprint" in reason
            big = await ws_open(app)
            await big.send("x" * 70_000)
            assert (await closed_with(big))[0] == 1009
            # alice is unaffected
            await a.send(json.dumps({"type": "ping", "id": 1}))
            assert (await recv(a, "pong"))["id"] == 1
            assert len(app.core.calls["c1"].participants) == 1
        finally:
            await pc_a.close()
            await a.close()


async def test_join_timeout(tmp_path):
    async with running_gateway(tmp_path, join_timeout=0.5) as app:
        ws = await ws_open(app)
        assert (await closed_with(ws))[0] == 4007


async def test_glare_both_sides_offer_at_once(tmp_path):
    """Alice (aiortc) publishes screen while the gateway offers Bob's voice."""
    async with running_gateway(tmp_path) as app:
        pc_a, sdp_a = await offer_sdp()
        pc_b, sdp_b = await offer_sdp()
        a, b = await ws_open(app), await ws_open(app)
        try:
            await a.send(json.dumps({"type": "join", "token": token(app, name="alice"), "sdp": sdp_a}))
            joined = await recv(a, "joined")
            await pc_a.setRemoteDescription(RTCSessionDescription(sdp=joined["sdp"], type="answer"))
            await b.send(json.dumps({"type": "join", "token": token(app, name="bob"), "sdp": sdp_b}))
            joined_b = await recv(b, "joined")
            await pc_b.setRemoteDescription(RTCSessionDescription(sdp=joined_b["sdp"], type="answer"))
            gateway_offer = await recv(a, "offer")  # Bob's voice for Alice
            # Alice offers at the same time (adds a screen-share section)
            # (aiortc can neither roll back a local description nor answer
            # with a transceiver that the offer lacks: so its glaring offer
            # is sent without being applied, and dropping it is the rollback;
            # the screen section is added once the gateway's offer is answered)
            early_offer = await pc_a.createOffer()
            await a.send(json.dumps({"type": "offer", "id": 1, "sdp": early_offer.sdp}))
            refused = await recv(a, "error")
            assert refused["code"] == "glare" and refused["id"] == 1
            # polite client: roll back, answer the gateway, offer again
            await pc_a.setRemoteDescription(RTCSessionDescription(sdp=gateway_offer["sdp"], type="offer"))
            await pc_a.setLocalDescription(await pc_a.createAnswer())
            await a.send(json.dumps({"type": "answer", "id": gateway_offer["id"], "sdp": pc_a.localDescription.sdp}))
            pc_a.addTransceiver("video", direction="sendonly")
            await pc_a.setLocalDescription(await pc_a.createOffer())
            await a.send(json.dumps({"type": "offer", "id": 2, "sdp": pc_a.localDescription.sdp}))
            answer = await recv(a, "answer")
            assert answer["id"] == 2
            await pc_a.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            # Bob (aiortc) answers the gateway's offers; the one after Alice's
            # screen section appeared carries it as a sendonly video section
            async with asyncio.timeout(15):
                while True:
                    offer_b = await recv(b, "offer")
                    await pc_b.setRemoteDescription(RTCSessionDescription(sdp=offer_b["sdp"], type="offer"))
                    await pc_b.setLocalDescription(await pc_b.createAnswer())
                    await b.send(json.dumps({"type": "answer", "id": offer_b["id"], "sdp": pc_b.localDescription.sdp}))
                    if "m=video" in offer_b["sdp"]:
                        break
            video = offer_b["sdp"].split("m=video", 1)[1]
            assert "a=sendonly" in video and "a=ssrc:" in video
        finally:
            await pc_a.close()
            await pc_b.close()
            await a.close()
            await b.close()


async def test_graceful_shutdown_says_bye(tmp_path):
    async with running_gateway(tmp_path, shutdown_grace=0.5) as app:
        pc, sdp = await offer_sdp()
        ws = await ws_open(app)
        await ws.send(json.dumps({"type": "join", "token": token(app), "sdp": sdp}))
        await recv(ws, "joined")
        stopping = asyncio.create_task(app.stop())
        assert (await recv(ws, "bye"))["reason"] == "shutdown"
        assert (await closed_with(ws))[0] == 1001
        await stopping
        await pc.close()

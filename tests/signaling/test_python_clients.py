"""Two and three `callsgw.client` sessions in one call through a real gateway."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from callsgw.client import connect
from callsgw.client.session import JoinError
from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway

MANDATED = {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"}


def url(app) -> str:
    return f"wss://127.0.0.1:{app.port}/ws"


def token(app, name: str, call: str = "room") -> str:
    return tokens.mint(app.datadir.api_secret(), call=call, name=name)


@contextlib.asynccontextmanager
async def ann_and_ben(app, *, media: bool = True):
    """Two clients in a call that know each other (and, with ``media``, whose media connected)."""
    a = await connect(url(app), token(app, "ann"), ssl=False)
    b = await connect(url(app), token(app, "ben"), ssl=False)
    try:
        if media:
            await asyncio.wait_for(asyncio.gather(a.wait_connected(), b.wait_connected()), 20)
        async with asyncio.timeout(10):
            while set(a.participants) != {b.participant_id}:
                await asyncio.sleep(0.05)
        yield a, b
    finally:
        await a.close()
        await b.close()


def drain_events(session) -> list[dict]:
    out = []
    while not session.events.empty():
        out.append(session.events.get_nowait())
    return out


@pytest.mark.parametrize("count", [2, 3])
async def test_clients_join_and_complete_ice_dtls_srtp(tmp_path, count):
    async with running_gateway(tmp_path) as app:
        sessions = []
        try:
            for n in range(count):
                sessions.append(await connect(url(app), token(app, f"p{n}"), ssl=False))
            async with asyncio.timeout(20):
                for s in sessions:
                    await s.wait_connected(timeout=20)
            ids = {s.participant_id for s in sessions}
            assert len(ids) == count
            for s in sessions:
                assert s.tls == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
                assert s.security is not None
                record = s.security.as_dict()
                assert record["dtls"]["cipher_suite"] in MANDATED
                assert record["srtp_profile"] == "AEAD_AES_128_GCM"
                assert record["dtls"]["fingerprint_matched"] is True
            # everybody eventually knows everybody else
            async with asyncio.timeout(10):
                while any(set(s.participants) != ids - {s.participant_id} for s in sessions):
                    await asyncio.sleep(0.05)
            # the gateway's own records agree
            call = app.core.calls["room"]
            assert len(call.participants) == count
            for p in call.participants.values():
                assert p.transport.record.srtp_profile == "AEAD_AES_128_GCM"
        finally:
            for s in sessions:
                await s.close()


async def test_client_join_refused_with_bad_token(tmp_path):
    async with running_gateway(tmp_path) as app:
        forged = tokens.mint(b"y" * 32, call="room", name="mallory")
        with pytest.raises(JoinError) as exc:
            await connect(url(app), forged, ssl=False)
        assert exc.value.code == 4001
        assert app.core.calls == {}


async def test_client_refuses_unverified_self_signed_certificate(tmp_path):
    async with running_gateway(tmp_path) as app:
        with pytest.raises(Exception) as exc:
            await connect(url(app), token(app, "a"))
        assert "certificate" in str(exc.value).lower()


async def test_vanished_participant_is_removed_after_consent_expires(tmp_path):
    """RFC 7675: no ICE check for the consent timeout -> removed, others told."""
    async with running_gateway(tmp_path) as app:
        app.core.consent_timeout = 7.0  # instead of 30 s (clients check every 4-6 s)
        a = await connect(url(app), token(app, "a"), ssl=False)
        b = await connect(url(app), token(app, "b"), ssl=False)
        try:
            await a.wait_connected(timeout=20)
            await b.wait_connected(timeout=20)
            a._media.udp.abort()  # media vanishes without a word (no close_notify); signaling stays
            async with asyncio.timeout(15):
                while True:
                    msg = await b.events.get()
                    if msg.get("type") == "participant_left":
                        break
            assert msg["participant_id"] == a.participant_id
            assert msg["reason"] == "ice_consent_lost"
            closed = await asyncio.wait_for(a.wait_closed(), 5)
            assert closed.code == 4010
            assert list(app.core.calls["room"].participants) == [b.participant_id]
        finally:
            await a.close()
            await b.close()


async def test_client_leaves_when_it_cannot_answer_a_gateway_offer(tmp_path):
    """An unanswerable offer would block the session's renegotiation for good: the client leaves."""
    async with running_gateway(tmp_path) as app, ann_and_ben(app, media=False) as (a, b):
        core = app.core
        conn = next(c for c in core.connections.values()
                    if c.participant is not None and c.participant.id == b.participant_id)
        core._send(conn, {"type": "offer", "id": 99, "sdp": "v=0\r\nnot a session description"})
        app._flush()
        closed = await asyncio.wait_for(b.wait_closed(), 10)
        assert closed.code == 1000
        assert any(e.get("type") == "client_error" and e.get("code") == "bad_offer" for e in drain_events(b))
        async with asyncio.timeout(10):
            while a.participants:
                await asyncio.sleep(0.05)


def voice(session, seq: int) -> bytes:
    return bytes([0x80, 111]) + seq.to_bytes(2, "big") + bytes(4) + session.voice_ssrc.to_bytes(4, "big") + bytes(40)


async def test_client_resumes_after_its_websocket_is_cut(tmp_path):
    """The TCP connection dies (no close frame): the client resumes, nobody sees it leave, media goes on."""
    async with running_gateway(tmp_path) as app, ann_and_ben(app) as (a, b):
        a._ws.transport.abort()  # the signaling connection is cut; media is untouched
        async with asyncio.timeout(10):
            while a.resumes == 0:
                await asyncio.sleep(0.05)
        await a.ping()  # signaling works on the new socket
        assert set(a.participants) == {b.participant_id}
        # ben saw no leave, and ann's voice still reaches him through the gateway
        assert "participant_left" not in [e["type"] for e in drain_events(b)]
        while not b.rtp.empty():
            b.rtp.get_nowait()
        seq = 1
        async with asyncio.timeout(10):
            while b.rtp.empty():
                seq += 1
                a.send_voice(voice(a, seq))
                await asyncio.sleep(0.05)
        assert app.core.stats.get("resumes") == 1


async def test_a_five_second_signaling_outage_is_resumed_and_media_never_stops(tmp_path):
    """The TCP connection is killed and the gateway unreachable over TCP for 5 s (issue #17 item 5).

    The client retries with backoff while media keeps flowing over UDP; once TCP is back it resumes:
    no ``participant_left`` anywhere, the same participant, no rejoin.
    """
    from tests.netfilter import blocked

    async with running_gateway(tmp_path) as app, ann_and_ben(app) as (a, b):
        for session in (a, b):
            drain_events(session)  # what happened before the outage
        loop = asyncio.get_running_loop()
        with blocked(app.port, "in", proto="tcp"):
            a._ws.transport.abort()  # the connection dies; new ones cannot get through
            outage_end = loop.time() + 5.0
            heard = 0
            seq = 100
            while loop.time() < outage_end:
                seq += 1
                a.send_voice(voice(a, seq))
                await asyncio.sleep(0.1)
                while not b.rtp.empty():
                    b.rtp.get_nowait()
                    heard += 1
            assert a.resumes == 0 and heard > 20  # media went on through the whole outage
        async with asyncio.timeout(10):
            while a.resumes == 0:
                await asyncio.sleep(0.05)
        await a.ping()
        assert app.core.stats.get("resumes") == 1 and app.core.participant_count == 2
        for session in (a, b):
            kinds = [e["type"] for e in drain_events(session)]
            assert "participant_left" not in kinds and "participant_joined" not in kinds, kinds
            assert ("resumed" in kinds) == (session is a)

"""ICE restart through a real gateway (issue #17 item 1; RFC 8445 section 9).

A participant's network changes mid-call: its media socket is rebound (a new
local port, the old one gone) and it restarts ICE with new credentials
through an offer. The gateway answers with new credentials of its own, its
ICE-lite agent validates the new address and retires the old one, and DTLS
and SRTP carry on: the rollover counters run through the move (sequence
numbers wrap across it) and nobody else in the call sees a leave.

Paths are killed with nftables inside the test namespace (tests/netfilter.py): dropping
what leaves the client's port makes its socket report EPERM, the "network is
gone" a laptop sees; dropping what arrives at it makes the path silent, which
only the missing consent answers reveal. Both engines are covered.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from callsgw.client import connect
from callsgw.signaling import tokens
from tests.netfilter import blocked
from tests.signaling.gateway import running_gateway

RESTORED_WITHIN = 3.0  # seconds from the restart's start to media flowing again (the bound)


def url(app) -> str:
    return f"wss://127.0.0.1:{app.port}/ws"


def token(app, name: str) -> str:
    return tokens.mint(app.datadir.api_secret(), call="room", name=name)


def voice(ssrc: int, seq: int) -> bytes:
    return bytes([0x80, 111]) + (seq & 0xFFFF).to_bytes(2, "big") + (seq * 960 & 0xFFFFFFFF).to_bytes(4, "big") \
        + ssrc.to_bytes(4, "big") + b"\x55" * 40


class Talker:
    """Sends voice every 20 ms; :meth:`near_wrap` makes its sequence numbers wrap soon (RFC 3711 section 3.3.1)."""

    def __init__(self, session, first_seq: int = 40000):
        self.session = session
        self.seq = first_seq
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.session.send_voice(voice(self.session.voice_ssrc, self.seq))
            self.seq += 1
            await asyncio.sleep(0.02)

    def near_wrap(self) -> None:
        """Jump ahead (less than 2^15, so the index estimate follows) to wrap in about 0.2 s."""
        assert 40000 <= self.seq < 65526
        self.seq = 65526

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def drain(queue: asyncio.Queue) -> list:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def wait_for_media(listener, timeout: float) -> float:
    """Seconds until ``listener`` receives a packet sent from now on (the queue is emptied first)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    drain(listener.rtp)
    async with asyncio.timeout(timeout):
        await listener.rtp.get()
    return loop.time() - start


@contextlib.asynccontextmanager
async def call_of_two(tmp_path, engine: str, **client_options):
    async with running_gateway(tmp_path, media_engine=engine) as app:
        a = await connect(url(app), token(app, "ann"), ssl=False, **client_options)
        b = await connect(url(app), token(app, "ben"), ssl=False)
        talkers = []
        try:
            await asyncio.wait_for(asyncio.gather(a.wait_connected(), b.wait_connected()), 20)
            async with asyncio.timeout(10):
                while set(a.participants) != {b.participant_id} or set(b.participants) != {a.participant_id}:
                    await asyncio.sleep(0.05)
            talkers = [Talker(a), Talker(b)]
            await wait_for_media(b, 10)  # ann's voice reaches ben...
            await wait_for_media(a, 10)  # ...and ben's reaches ann
            yield app, a, b, talkers
        finally:
            for talker in talkers:
                await talker.stop()
            await a.close()
            await b.close()


def assert_nobody_left(session) -> None:
    assert "participant_left" not in [event["type"] for event in drain(session.events)]


def assert_moved(app, session, old_address) -> None:
    """The gateway kept the participant and its keys, accepts the new address and no longer the old one."""
    participant = app.core.calls["room"].participants[session.participant_id]
    transport = participant.transport
    assert transport.record.ice_restarts >= 1 and transport.ice.local_ufrags == (transport.record.ice_local_ufrag,)
    new_address = session._media.local_address
    assert new_address != old_address
    assert transport.selected_address[1] == new_address[1]
    assert not any(addr[1] == old_address[1] for addr in transport.ice.validated_addresses)
    media_server = getattr(app, "media", None) or app.udp
    assert media_server.mux.transport_for(transport.selected_address) is transport
    # SRTP carried on: no authentication or replay failure on either side of the move
    assert not transport.counters.srtp_errors, transport.counters.srtp_errors
    assert not session.media_counters.srtp_errors, session.media_counters.srtp_errors


@pytest.mark.parametrize("engine", ["python", "native", "native-thread"])
async def test_a_client_whose_address_changes_restarts_ice_and_keeps_its_media(tmp_path, engine):
    async with call_of_two(tmp_path, engine) as (app, a, b, talkers):
        old = a._media.local_address
        participant_ids = set(app.core.calls["room"].participants)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await a.restart_ice(rebind=True, timeout=RESTORED_WITHIN)
        # media flows both ways again within the bound, counted from the restart's start
        await wait_for_media(b, RESTORED_WITHIN - (loop.time() - start))
        await wait_for_media(a, max(0.5, RESTORED_WITHIN - (loop.time() - start)))
        assert a.ice_restarts == 1 and a.security.ice_restarts == 1
        assert_moved(app, a, old)
        assert set(app.core.calls["room"].participants) == participant_ids
        assert_nobody_left(b)
        # both senders' sequence numbers wrap after the move: the rollover counters go on
        for talker in talkers:
            talker.near_wrap()
        await asyncio.sleep(0.5)
        assert all(talker.seq > 0x10000 for talker in talkers)  # sent past the wrap
        await wait_for_media(b, 2)
        await wait_for_media(a, 2)
        assert_moved(app, a, old)  # and still no SRTP failure anywhere


@pytest.mark.parametrize(("direction", "engine"), [("out", "python"), ("in", "native")])
async def test_a_dead_path_is_noticed_and_restarted_by_the_client_itself(tmp_path, direction, engine):
    """``out``: the socket reports EPERM at once; ``in``: only missing consent answers tell."""
    options = {"ice_options": {"consent_interval": 0.5, "consent_timeout": 10.0}}
    async with call_of_two(tmp_path, engine, **options) as (app, a, b, talkers):
        a.ice_restart_after = 1.5
        old = a._media.local_address
        loop = asyncio.get_running_loop()
        with blocked(old[1], direction):
            start = loop.time()
            async with asyncio.timeout(15):
                while a.ice_restarts == 0:
                    await asyncio.sleep(0.05)
            took = loop.time() - start
            await wait_for_media(b, 5)
            await wait_for_media(a, 5)
        kinds = [e["type"] for e in drain(a.events)]
        assert "client_ice_restarting" in kinds and "client_ice_restarted" in kinds
        assert took < (3 if direction == "out" else 8), took
        assert_moved(app, a, old)
        assert_nobody_left(b)

"""A peer that vanishes in every handshake state is freed (issue #20 item 3).

Six participants join one call and each goes silent (sends nothing more, on any socket) at its
own point of the media handshake, while two healthy participants talk in another call:

``before_ice``    never sends a connectivity check (its transport was made by the join)
``after_ice``     its checks validated its address; no DTLS record follows
``dtls_1``        after DTLS flight 1 (the ClientHello)
``dtls_2``        after flight 3 (the ClientHello with the server's cookie)
``dtls_3``        after flight 5 (certificate to Finished): the gateway completes, the client never
                  reads flight 6
``after_keys``    after DTLS completed on both sides and SRTP keys were made (media connected)

Within the consent timeout (30 s, RFC 7675) plus one check interval, the gateway removes every
one of them (``participant_left``), the UDP mux and the native engine count their slots back to
what the healthy call alone uses, and the healthy call's media never stops.
"""

from __future__ import annotations

import asyncio

import pytest

from callsgw.client import connect, session as client_session
from callsgw.signaling import tokens
from callsgw.wire.demux import PacketKind, classify
from tests.signaling.gateway import running_gateway

STAGES = ("before_ice", "after_ice", "dtls_1", "dtls_2", "dtls_3", "after_keys")


class Vanish:
    """Decides, datagram by datagram, when a client's media socket goes silent for good."""

    def __init__(self, stage: str):
        self.stage = stage
        self.dtls_sent = 0
        self.silent = stage == "before_ice"
        self.dropped = 0

    def allows(self, data: bytes) -> bool:
        if self.silent:
            self.dropped += 1
            return False
        if classify(data) is PacketKind.DTLS:
            limit = {"after_ice": 0, "dtls_1": 1, "dtls_2": 2, "dtls_3": 3}.get(self.stage)
            if limit == 0:
                self.silent = True
                self.dropped += 1
                return False
            self.dtls_sent += 1
            if limit is not None and self.dtls_sent >= limit:
                self.silent = True  # this datagram goes out; nothing after it
        return True


@pytest.fixture
def vanishing(monkeypatch):
    """Each MediaChannel made while ``plans`` is not empty takes the next plan."""
    plans: list[Vanish] = []
    original_init, original_flush = client_session.MediaChannel.__init__, client_session.MediaChannel._flush

    def init(self, core, on_event=None):
        original_init(self, core, on_event)
        self.vanish = plans.pop(0) if plans else None

    def flush(self):
        plan = getattr(self, "vanish", None)
        if plan is None or self.udp is None or self.udp.is_closing():
            return original_flush(self)
        for data, addr in self.core.datagrams_to_send():
            if plan.allows(data):
                self.udp.sendto(data, addr)

    monkeypatch.setattr(client_session.MediaChannel, "__init__", init)
    monkeypatch.setattr(client_session.MediaChannel, "_flush", flush)
    return plans


def voice(session, seq: int) -> bytes:
    return bytes([0x80, 111]) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big") \
        + session.voice_ssrc.to_bytes(4, "big") + b"\xf8\xff\xfe"


async def test_peers_vanishing_in_every_handshake_state_are_freed(tmp_path, vanishing):
    async with running_gateway(tmp_path, media_engine="native-thread", joins_per_second_per_address=100) as app:
        url = f"wss://127.0.0.1:{app.port}/ws"
        secret = app.datadir.api_secret()
        ann = await connect(url, tokens.mint(secret, call="healthy", name="ann"), ssl=False)
        ben = await connect(url, tokens.mint(secret, call="healthy", name="ben"), ssl=False)
        vanishers = []
        try:
            await asyncio.wait_for(asyncio.gather(ann.wait_connected(), ben.wait_connected()), 20)
            engine = app.media.engine
            for seq in range(1, 26):  # the healthy call's own slots (its voice stream) exist before the baseline
                ann.send_voice(voice(ann, seq))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            baseline = engine.usage()
            transports = len(app.media.mux.transports())
            plans = [Vanish(stage) for stage in STAGES]
            vanishing.extend(plans)
            for stage in STAGES:
                session = await connect(url, tokens.mint(secret, call="vanish", name=stage), ssl=False)
                vanishers.append(session)
                if stage == "after_keys":
                    await session.wait_connected(timeout=20)
                    plans[-1].silent = True
            assert app.core.calls["vanish"].participants and len(app.core.calls["vanish"].participants) == 6
            loop = asyncio.get_running_loop()
            began = loop.time()
            heard, seq = 0, 25
            while "vanish" in app.core.calls and loop.time() - began < 45:
                seq += 1
                ann.send_voice(voice(ann, seq))
                await asyncio.sleep(0.02)
                while not ben.rtp.empty():
                    ben.rtp.get_nowait()
                    heard += 1
            gone_after = loop.time() - began
            assert "vanish" not in app.core.calls, {p.name: p.transport.state for p in
                                                    app.core.calls["vanish"].participants.values()}
            assert gone_after < 40, gone_after  # the consent timeout (30 s) and a check interval
            # every stage sent what it was allowed to, then nothing; a whole handshake is the client's
            # three DTLS flights (1: ClientHello, 3: with the cookie, 5: certificate to Finished)
            assert [p.dtls_sent for p in plans] == [0, 0, 1, 2, 3, 3]
            assert all(p.silent for p in plans)
            # the healthy call went on the whole time (50 packets a second)
            assert heard > 25 * gone_after, (heard, gone_after)
            await asyncio.sleep(0.5)
            assert len(app.media.mux.transports()) == transports
            assert engine.usage() == baseline
        finally:
            for session in vanishers:
                await session.close()
            await ann.close()
            await ben.close()

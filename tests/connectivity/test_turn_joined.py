"""``joined.turn`` on the wire (docs/PROTOCOL.md "TURN"): present with TURN configured, absent without."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from callsgw.client import connect
from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway

SECRET = "shared-with-the-turn-server-42"


async def test_joined_carries_turn_rest_api_credentials(tmp_path):
    urls = ("turn:198.51.100.9:3478?transport=udp", "turns:turn.example.com:5349")
    async with running_gateway(tmp_path, turn_url=urls, turn_secret=SECRET, turn_ttl=600) as app:
        token = tokens.mint(app.datadir.api_secret(), call="t", name="alice")
        session = await connect(f"wss://127.0.0.1:{app.port}/ws", token, ssl=False)
        try:
            turn = session.turn
            assert turn["urls"] == list(urls) and turn["ttl"] == 600
            expiry, participant = turn["username"].split(":")
            assert participant == session.participant_id
            assert abs(int(expiry) - (time.time() + 600)) < 5
            want = base64.b64encode(hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest())
            assert turn["credential"] == want.decode()
            await session.wait_connected(timeout=20)  # the client itself still goes straight over UDP
        finally:
            await session.close()


async def test_joined_has_no_turn_without_turn_servers(tmp_path):
    async with running_gateway(tmp_path) as app:
        token = tokens.mint(app.datadir.api_secret(), call="t", name="bob")
        session = await connect(f"wss://127.0.0.1:{app.port}/ws", token, ssl=False)
        try:
            assert session.turn is None
            joined = session.events.get_nowait()  # the first event is the joined message itself
            assert joined["type"] == "joined" and "turn" not in joined
        finally:
            await session.close()

"""The live admin view agrees with the stored records: bytes move with packets, times are Unix times.

A real two-party call on each media engine sends voice one way; the live
record read through ``/api/v1/sessions/{id}`` must count the SRTP octets of
the packets it counts, and its DTLS handshake times must be Unix times, the
same numbers the store keeps for that session once it has left.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time

import pytest

from tests.admin.test_admin_api import _routed, get, two_party_call, wait_for
from tests.signaling.gateway import running_gateway

PACKETS = 20
PAYLOAD = 100
# RTP header 12 + payload; SRTP adds at least a 10-byte tag (HMAC-SHA1-80) or 16 (GCM)
MIN_SRTP = 12 + PAYLOAD + 10


async def _live(app, key, session_id):
    status, _, body = await get(app.port, f"/api/v1/sessions/{session_id}", key)
    assert status == 200
    return json.loads(body)


@pytest.mark.parametrize("engine", ["native", "native-thread", "python"])
async def test_live_record_counts_bytes_and_uses_unix_time(tmp_path, engine):
    async with running_gateway(tmp_path, media_engine=engine) as app:
        key = app.datadir.admin_key(announce=False)
        a, b, _ = await two_party_call(app, call="live")
        await wait_for(lambda: _routed(app, "live"))
        for seq in range(PACKETS):
            a.send_voice(struct.pack("!BBHII", 0x80, 111, seq, seq * 960, 0) + bytes(PAYLOAD))
        async with asyncio.timeout(10):
            for _ in range(PACKETS):
                await b.rtp.get()

        status, _, body = await get(app.port, "/api/v1/calls/live", key)
        assert status == 200
        ids = {p["name"]: p["session_id"] for p in json.loads(body)["participants"]}

        sender = await _live(app, key, ids["alice"])
        receiver = await _live(app, key, ids["bob"])
        sent, got = sender["counters"], receiver["counters"]
        assert sent["packets_in"] >= PACKETS and sent["bytes_in"] >= PACKETS * MIN_SRTP, sent
        assert got["packets_out"] >= PACKETS and got["bytes_out"] >= PACKETS * MIN_SRTP, got

        now = time.time()
        for record in (sender, receiver):
            dtls = record["dtls"]
            started, done = dtls["handshake_started_at"], dtls["handshake_completed_at"]
            assert record["joined_at"] - 1 <= started <= done <= now, (record["joined_at"], started, done, now)
            assert done - started < 10

        await a.leave()
        await b.leave()

        async def stored_left():
            rows = await asyncio.to_thread(app.store.list, call_id="live")
            return rows if rows and all(r.left_at is not None for r in rows) else None

        rows = {r.session_id: r for r in await wait_for(stored_left)}
        for live in (sender, receiver):
            stored = rows[live["session_id"]]
            assert stored.dtls.handshake_started_at == pytest.approx(live["dtls"]["handshake_started_at"], abs=1e-6)
            assert stored.dtls.handshake_completed_at == pytest.approx(live["dtls"]["handshake_completed_at"],
                                                                       abs=1e-6)
        assert rows[sender["session_id"]].counters.bytes_in >= sent["bytes_in"]
        assert rows[receiver["session_id"]].counters.bytes_out >= got["bytes_out"]

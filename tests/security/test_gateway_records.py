"""The running gateway records what every session negotiated (SQLite default)."""

from __future__ import annotations

import asyncio

from callsgw.client import connect
from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway

MANDATED = {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"}


async def wait_for(predicate, timeout: float = 10.0):
    async with asyncio.timeout(timeout):
        while not (result := await predicate()):
            await asyncio.sleep(0.05)
        return result


async def test_sessions_are_recorded_from_join_to_leave(tmp_path):
    async with running_gateway(tmp_path) as app:
        secret = app.datadir.api_secret()
        url = f"wss://127.0.0.1:{app.port}/ws"
        a = await connect(url, tokens.mint(secret, call="rec", name="alice"), ssl=False)
        await a.wait_connected(timeout=20)

        async def connected_record():
            rows = await asyncio.to_thread(app.store.list, call_id="rec")
            return rows if rows and rows[0].dtls.cipher_suite else None

        (record,) = await wait_for(connected_record)
        assert record.participant_name == "alice"
        assert record.signaling.tls_version == "TLSv1.3"
        assert record.signaling.tls_cipher == "TLS_AES_256_GCM_SHA384"
        assert (record.signaling.cert_key_type, record.signaling.cert_key_bits) == ("RSA", 2048)
        assert record.dtls.version == "DTLS 1.2" and record.dtls.cipher_suite in MANDATED
        assert record.dtls.fingerprint_matched is True
        assert record.srtp_profile == "AEAD_AES_128_GCM"
        assert record.ice_selected_pair is not None and record.left_at is None
        await a.leave()

        async def left_record():
            row = await asyncio.to_thread(app.store.get, record.session_id)
            return row if row.left_at is not None else None

        left = await wait_for(left_record)
        assert left.leave_reason == "left"
        summary = await asyncio.to_thread(app.store.summary)
        assert summary["by_srtp_profile"] == {"AEAD_AES_128_GCM": 1}
        # nothing secret reached the record
        text = left.to_json()
        assert secret.hex() not in text and "token" not in text.lower()

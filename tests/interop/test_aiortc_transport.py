"""aiortc as an independent peer: its own ICE, DTLS and SRTP against the gateway.

Real UDP sockets on loopback. aiortc offers (controlling ICE, DTLS client),
the gateway answers as ICE-lite with a=setup:passive. Media flows both ways:
aiortc's audio reaches the gateway and decrypts there, and the gateway's
echo (under another SSRC, with the gateway's keys) decrypts in aiortc.
"""

from __future__ import annotations

import asyncio

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from callsgw.dtls.profiles import DtlsPolicy
from callsgw.srtp import Profile
from callsgw.transport.media import TransportState
from tests.gateway_harness import TestGateway

CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
}


@pytest.fixture(autouse=True)
def loopback_candidates(monkeypatch):
    """aioice leaves 127.0.0.1 out of its host candidates (GUIDE section 6)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


async def offer_to(gw: TestGateway, mangle=lambda sdp: sdp) -> RTCPeerConnection:
    """An aiortc peer sending audio, whose (optionally mangled) offer the gateway answers."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    answer = gw.answer(mangle(pc.localDescription.sdp))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return pc


async def inbound_packets(pc: RTCPeerConnection) -> int:
    stats = await pc.getStats()
    return sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")


@pytest.mark.parametrize(
    "iana_cipher, profile",
    [
        ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", Profile.AEAD_AES_128_GCM),
        ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", Profile.AES128_CM_HMAC_SHA1_80),
        ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", Profile.AES128_CM_HMAC_SHA1_80),
        ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", Profile.AEAD_AES_128_GCM),
    ],
)
async def test_aiortc_media_both_ways(iana_cipher, profile):
    policy = DtlsPolicy(ciphers=(CIPHERS[iana_cipher],), srtp_profiles=(profile,))
    gw = await TestGateway(policy, echo=True).start()
    pc = await offer_to(gw)
    try:
        async with asyncio.timeout(20):
            await gw.connected.wait()
            (transport,) = gw.transports
            while gw.received_rtp(transport) < 10 or await inbound_packets(pc) < 5:
                await asyncio.sleep(0.1)
        assert transport.state is TransportState.CONNECTED
        record = transport.record
        assert record.dtls.cipher_suite == iana_cipher
        assert record.srtp_profile == profile.name
        assert record.dtls.fingerprint_matched is True
        assert record.dtls.role == "server"
        assert record.selected_pair[1][0] == "127.0.0.1"
        assert transport.counters.srtp_errors == {}
        # aiortc saw the same suite from its side
        dtls = pc.getTransceivers()[0].sender.transport
        assert dtls._ssl.get_cipher_name() == CIPHERS[iana_cipher]
    finally:
        await pc.close()
        gw.close()


async def test_default_policy_prefers_gcm_with_aiortc():
    """aiortc lists AEAD_AES_256_GCM first; the gateway's order picks AEAD_AES_128_GCM."""
    gw = await TestGateway().start()
    pc = await offer_to(gw)
    try:
        async with asyncio.timeout(20):
            await gw.connected.wait()
        (transport,) = gw.transports
        assert transport.record.srtp_profile == "AEAD_AES_128_GCM"
        assert transport.record.dtls.version == "DTLS 1.2"
    finally:
        await pc.close()
        gw.close()


async def test_wrong_fingerprint_in_offer_fails_the_handshake():
    def wrong_fingerprint(sdp: str) -> str:
        return "\r\n".join(
            "a=fingerprint:sha-256 " + ":".join(["00"] * 32) if line.startswith("a=fingerprint:sha-256 ") else line
            for line in sdp.split("\r\n")
        )

    gw = await TestGateway().start()
    pc = await offer_to(gw, wrong_fingerprint)
    try:
        async with asyncio.timeout(20):
            while not gw.transports or not gw.failures(gw.transports[0]):
                await asyncio.sleep(0.05)
        (transport,) = gw.transports
        assert transport.state is TransportState.FAILED
        assert transport.record.failure == "fingerprint_mismatch"
        assert transport.tx is None and transport.rx is None
    finally:
        await pc.close()
        gw.close()

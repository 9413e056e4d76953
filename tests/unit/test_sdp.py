"""callsgw.sdp: transport-level offer checks and the ICE-lite/passive answer."""

from __future__ import annotations

import re

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.sdp import SessionDescription
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.sdp import LocalTransport, SdpError, build_answer, gateway_addresses, parse_offer

FP = ":".join(["AB"] * 32)


async def aiortc_offer(kinds=("audio",)) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for kind in kinds:
            pc.addTransceiver(kind, direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def local(addresses=("192.0.2.10",), port=8443) -> LocalTransport:
    return LocalTransport(
        ice_ufrag="gwufrag1", ice_pwd="p" * 24, fingerprint=FP, addresses=addresses, port=port
    )


async def test_parses_an_aiortc_offer():
    text = await aiortc_offer(("audio", "video"))
    remote = parse_offer(text)
    assert remote.setup == "actpass"
    assert len(remote.bundle_mids) == 2
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", remote.fingerprint)
    assert len(remote.ice_pwd) >= 22


async def test_answer_is_ice_lite_passive_with_candidates_and_parses_back():
    remote = parse_offer(await aiortc_offer(("audio", "video")))
    text = build_answer(remote, local(("192.0.2.10", "198.51.100.7")))
    assert "a=ice-lite" in text
    assert text.count("a=setup:passive") == 2
    assert f"a=fingerprint:sha-256 {FP}" in text
    assert "a=group:BUNDLE 0 1" in text
    assert "a=rtcp-mux" in text
    parsed = SessionDescription.parse(text)
    assert [m.rtp.muxId for m in parsed.media] == list(remote.bundle_mids)
    for media in parsed.media:
        assert media.ice.iceLite
        assert media.ice.usernameFragment == "gwufrag1"
        assert {(c.ip, c.port, c.type) for c in media.ice_candidates} == {
            ("192.0.2.10", 8443, "host"),
            ("198.51.100.7", 8443, "host"),
        }
        assert media.rtp.codecs  # the first offered codec was kept
    assert "p" * 24 not in repr(local())  # the ICE password stays out of logs


async def test_offer_checks():
    good = await aiortc_offer()
    no_fp = "\r\n".join(l for l in good.split("\r\n") if not l.startswith("a=fingerprint"))
    with pytest.raises(SdpError, match="fingerprint"):
        parse_offer(no_fp)
    only_sha1 = re.sub(r"a=fingerprint:sha-256 ", "a=fingerprint:sha-1 ", good)
    with pytest.raises(SdpError, match="sha-256"):
        parse_offer(only_sha1)
    passive = good.replace("a=setup:actpass", "a=setup:passive")
    with pytest.raises(SdpError, match="DTLS server"):
        parse_offer(passive)
    no_bundle = "\r\n".join(l for l in good.split("\r\n") if not l.startswith("a=group:BUNDLE"))
    with pytest.raises(SdpError, match="BUNDLE"):
        parse_offer(no_bundle)
    no_mux = "\r\n".join(l for l in good.split("\r\n") if l != "a=rtcp-mux")
    with pytest.raises(SdpError, match="rtcp-mux"):
        parse_offer(no_mux)
    no_pwd = "\r\n".join(l for l in good.split("\r\n") if not l.startswith("a=ice-pwd"))
    with pytest.raises(SdpError, match="ice-pwd"):
        parse_offer(no_pwd)
    assert parse_offer(good.replace("a=setup:actpass", "a=setup:active")).setup == "active"


async def test_truncated_offers_give_sdp_errors():
    good = await aiortc_offer()
    for n in range(0, len(good), 7):
        try:
            parse_offer(good[:n])
        except SdpError:
            pass


@pytest.mark.parametrize("junk", ["", "hello", "v=0\r\n", "v=0\r\nm=audio x", "\x00" * 100, "v=0\r\n" + "a=x\r\n" * 10])
def test_garbage_gives_sdp_error(junk):
    with pytest.raises(SdpError):
        parse_offer(junk)


def test_oversize_and_non_text():
    with pytest.raises(SdpError, match="larger"):
        parse_offer("v=0\r\n" + "a=x\r\n" * 20000)
    with pytest.raises(SdpError):
        parse_offer(b"v=0")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_random_text_never_raises_anything_else(text):
    try:
        parse_offer("v=0\r\n" + text)
    except SdpError:
        pass


def test_gateway_addresses():
    assert gateway_addresses("203.0.113.5") == ("203.0.113.5",)
    with pytest.raises(ValueError):
        gateway_addresses("not-an-ip")
    found = gateway_addresses()
    assert found
    for ip in found:
        assert not ip.startswith("169.254.") and not ip.lower().startswith("fe80")


# -- callsgw.wire.sdp: what the gateway and the client read alike -----------------------


def test_wire_sdp_is_the_one_both_roles_use():
    from callsgw import sdp as gateway_sdp
    from callsgw.client import sdp as client_sdp
    from callsgw.wire import sdp as wire_sdp

    assert gateway_sdp.SdpError is client_sdp.SdpError is wire_sdp.SdpError
    assert issubclass(wire_sdp.SdpError, ValueError)
    assert gateway_sdp.MAX_SDP_BYTES == client_sdp.MAX_SDP_BYTES == wire_sdp.MAX_SDP_BYTES == 64 * 1024


def test_wire_raw_setups_reads_the_text():
    from callsgw.wire.sdp import raw_setups

    text = "v=0\r\nm=audio 9 x 0\r\n A=SETUP: ActPass \r\na=setup:active\na=setupx\r\n"
    assert raw_setups(text) == {"actpass", "active"}
    assert raw_setups("v=0\r\n") == set()


def test_wire_bundle_mids():
    from callsgw.wire.sdp import bundle_mids

    head = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    assert bundle_mids(SessionDescription.parse(head + "a=group:BUNDLE 0 1\r\n")) == ("0", "1")
    assert bundle_mids(SessionDescription.parse(head + "a=group:LS 0 1\r\n")) == ()
    assert bundle_mids(SessionDescription.parse(head)) == ()


def test_wire_sha256_fingerprints():
    from aiortc.sdp import RTCDtlsFingerprint

    from callsgw.wire.sdp import sha256_fingerprints

    ok = RTCDtlsFingerprint(algorithm="SHA-256", value=FP.lower())
    other = RTCDtlsFingerprint(algorithm="sha-1", value=":".join(["CD"] * 20))
    assert sha256_fingerprints([other, ok, ok]) == {FP}
    assert sha256_fingerprints([other]) == set()
    with pytest.raises(ValueError):
        sha256_fingerprints([ok, RTCDtlsFingerprint(algorithm="sha-256", value="AB:CD")])

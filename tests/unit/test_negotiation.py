"""Negotiation: the m-sections of one participant across offers and answers."""

from __future__ import annotations

import pytest

from callsgw.client import sdp as client_sdp
from callsgw.sdp import LocalTransport, parse_offer
from callsgw.signaling.negotiation import Negotiation, NegotiationError

FP_CLIENT = ":".join(["AA"] * 32)
FP_GW = ":".join(["BB"] * 32)
LOCAL = LocalTransport("gwufrag12345", "g" * 24, FP_GW, ("127.0.0.1",), 8443)
PERMS = frozenset({"publish_voice", "publish_screen"})


def client_offer(tracks=("voice",), ufrag="cliufrag", pwd="c" * 24, fp=FP_CLIENT) -> str:
    return client_sdp.build_offer(ufrag, pwd, fp, list(tracks))


def answer_gateway_offer(offer: str) -> str:
    return client_sdp.build_answer(offer, "cliufrag", "c" * 24, FP_CLIENT)


def joined(tracks=("voice",), perms=PERMS) -> Negotiation:
    offer = client_offer(tracks)
    n = Negotiation(LOCAL, parse_offer(offer), may_publish=perms)
    answer = n.answer(offer)
    assert "a=setup:passive" in answer and "a=ice-lite" in answer
    return n


def test_publishing_and_permissions():
    n = joined(("voice", "screen"))
    assert set(n.published_tracks()) == {"voice", "screen"}
    with pytest.raises(NegotiationError) as exc:
        joined(("voice",), perms=frozenset({"publish_screen"}))
    assert exc.value.code == "forbidden"


def test_a_new_fingerprint_is_refused_even_with_an_ice_restart():
    n = joined()
    with pytest.raises(NegotiationError, match="fingerprint"):
        n.answer(client_offer(fp=":".join(["CC"] * 32)))
    with pytest.raises(NegotiationError, match="fingerprint"):
        n.answer(client_offer(ufrag="other123", fp=":".join(["CC"] * 32)))
    assert n.ice_restarts == 0 and n.local == LOCAL and n.remote.ice_ufrag == "cliufrag"


def test_an_offer_with_new_ice_credentials_restarts_ice():
    n = joined(("voice",))
    answer = n.answer(client_offer(ufrag="other123", pwd="d" * 24))
    assert n.ice_restarts == 1 and n.remote.ice_ufrag == "other123"
    # RFC 8839 section 4.4: the answer to a restart has new credentials of the gateway's own
    assert n.local.ice_ufrag != LOCAL.ice_ufrag and n.local.ice_pwd != LOCAL.ice_pwd
    assert f"a=ice-ufrag:{n.local.ice_ufrag}" in answer and f"a=ice-pwd:{n.local.ice_pwd}" in answer
    assert LOCAL.ice_ufrag not in answer and "a=ice-lite" in answer
    assert (n.local.fingerprint, n.local.port) == (LOCAL.fingerprint, LOCAL.port)
    assert set(n.published_tracks()) == {"voice"}
    # the same credentials again: no second restart; a changed password alone is one
    n.answer(client_offer(ufrag="other123", pwd="d" * 24))
    assert n.ice_restarts == 1
    n.answer(client_offer(ufrag="other123", pwd="e" * 24))
    assert n.ice_restarts == 2


def test_forwarded_sections_are_offered_answered_and_reused():
    alice = joined()
    bob = joined()
    wanted = {("bob", "voice"): bob.published_tracks()["voice"]}
    offer_id, offer = alice.create_offer(wanted)
    assert "a=setup:actpass" in offer and offer.count("m=audio") == 2
    alice.apply_answer(offer_id, answer_gateway_offer(offer))
    assert alice.forwarded_sources() == [("bob", "voice")]
    assert alice.create_offer(wanted) is None  # nothing changed
    # bob leaves: his section is stopped (port 0), not removed
    offer_id, offer = alice.create_offer({})
    alice.apply_answer(offer_id, answer_gateway_offer(offer))
    assert alice.forwarded_sources() == [] and len(alice.sections) == 2
    # carol and dave come and go many times: the SDP does not grow
    for n in range(10):
        carol = joined()
        offer_id, offer = alice.create_offer({(f"carol{n}", "voice"): carol.published_tracks()["voice"]})
        alice.apply_answer(offer_id, answer_gateway_offer(offer))
        offer_id, offer = alice.create_offer({})
        alice.apply_answer(offer_id, answer_gateway_offer(offer))
    assert len(alice.sections) == 2


def test_answers_must_match_the_outstanding_offer():
    alice = joined()
    bob = joined()
    offer_id, offer = alice.create_offer({("bob", "voice"): bob.published_tracks()["voice"]})
    with pytest.raises(NegotiationError) as exc:
        alice.apply_answer(offer_id + 1, answer_gateway_offer(offer))
    assert exc.value.code == "unexpected_answer"
    passive = answer_gateway_offer(offer).replace("a=setup:active", "a=setup:passive")
    with pytest.raises(Exception):
        alice.apply_answer(offer_id, passive)
    alice.apply_answer(offer_id, answer_gateway_offer(offer))
    assert alice.pending_offer is None


def test_one_voice_track_only():
    offer = client_offer(("voice", "voice"))
    n = Negotiation(LOCAL, parse_offer(offer), may_publish=PERMS)
    with pytest.raises(NegotiationError, match="only one voice"):
        n.answer(offer)


def test_forwarded_sections_use_the_subscribers_numbering():
    """One PT and one extension ID mean one thing across a BUNDLE group
    (RFC 8843): a publisher's numbering is translated for each subscriber."""
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters

    alice = joined()
    voice = alice.published_tracks()["voice"]
    # a publisher (say aiortc) that numbers Opus 96 and the audio level as id 1
    foreign = joined().published_tracks()["voice"]
    foreign.codecs = [RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=96)]
    foreign.extensions = [RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
                          RTCRtpHeaderExtensionParameters(id=9, uri="urn:example:unknown-to-alice")]
    offer_id, offer = alice.create_offer({("bob", "voice"): foreign})
    forwarded = alice.pending_offer[1][-1]
    assert [c.payloadType for c in forwarded.codecs] == [voice.codecs[0].payloadType]
    alice_ids = {e.uri: e.id for e in voice.extensions}
    for e in forwarded.extensions:
        if e.uri in alice_ids:
            assert e.id == alice_ids[e.uri]
        else:
            assert e.id not in alice_ids.values()
    assert len({e.id for e in forwarded.extensions}) == len(forwarded.extensions)

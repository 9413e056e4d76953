"""Security checks that a mutation run showed no test guarded (issue #21 item 10).

* The ``publish_screen`` permission, in both places that enforce it: the
  negotiation of an offer that sends video (``signaling/negotiation.py``) and
  the ``screen`` announcement (``signaling/core.py``). A token with
  ``publish_voice`` alone may speak but never share a screen.
* The SRTP protection profiles OpenSSL may select (RFC 5764 section 4.1.2):
  a client offering only a profile outside the contract must see the
  handshake fail (a fatal alert) and no ServerHello that selects it. A
  profile wrongly added to the list handed to OpenSSL still ends in a failed
  handshake (the gateway checks the profile when the client's certificate
  arrives), so only the client's view of the ServerHello shows it.
"""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from callsgw.dtls.connection import FailureReason, HandshakeFailed
from callsgw.dtls.profiles import DtlsPolicy
from callsgw.sdp import parse_offer
from callsgw.signaling.negotiation import Negotiation, NegotiationError
from tests.signaling.pump import Pump
from tests.unit.test_dtls import control_pair, is_fatal_alert, last_sent, only_event, probe_server
from tests.unit.test_negotiation import LOCAL, client_offer

VOICE_ONLY = frozenset({"publish_voice"})


# -- publish_screen in the negotiation ------------------------------------------------------------


def test_a_voice_only_token_may_not_offer_a_screen_section():
    offer = client_offer(("voice", "screen"))
    with pytest.raises(NegotiationError) as exc:
        Negotiation(LOCAL, parse_offer(offer), may_publish=VOICE_ONLY).answer(offer)
    assert exc.value.code == "forbidden" and "publish_screen" in str(exc.value)
    # the control: voice alone is fine, and with publish_screen the same offer is answered
    voice = client_offer(("voice",))
    assert "a=ice-lite" in Negotiation(LOCAL, parse_offer(voice), may_publish=VOICE_ONLY).answer(voice)
    both = frozenset({"publish_voice", "publish_screen"})
    assert "a=ice-lite" in Negotiation(LOCAL, parse_offer(offer), may_publish=both).answer(offer)


def test_a_voice_only_token_may_not_add_a_screen_section_later():
    voice = client_offer(("voice",))
    n = Negotiation(LOCAL, parse_offer(voice), may_publish=VOICE_ONLY)
    n.answer(voice)
    with pytest.raises(NegotiationError) as exc:
        n.answer(client_offer(("voice", "screen")))
    assert exc.value.code == "forbidden"
    assert set(n.published_tracks()) == {"voice"}


# -- publish_screen for the screen message (the core) ---------------------------------------------


def test_screen_announcement_needs_publish_screen():
    pump = Pump()
    alice = pump.open("alice", screen=False)  # a token with publish_voice only
    bob = pump.open("bob")
    pump.drain()
    assert alice.joined and bob.joined
    seen_by_bob = len(bob.log)
    alice.screen(True)
    pump.drain()
    refusals = [e for e in alice.errors if e.get("ref") == "screen"]
    assert [e["code"] for e in refusals] == ["forbidden"], alice.errors
    call = next(iter(pump.core.calls.values()))
    assert call.sharer is None
    assert not any(p.sharing for p in call.participants.values())
    assert "screen" not in bob.log[seen_by_bob:], "bob was told alice shares"
    assert not bob.participants[alice.my_id]["sharing"]
    # the control: bob's token allows it
    bob.screen(True)
    pump.drain()
    assert call.sharer is not None and call.sharer.name == "bob"


# -- SRTP profiles handed to OpenSSL --------------------------------------------------------------

OUTSIDE_THE_CONTRACT = (
    "SRTP_AES128_CM_SHA1_32",
    "SRTP_AEAD_AES_256_GCM",
    "SRTP_ARIA_128_CTR_HMAC_SHA1_80",
    "SRTP_AEAD_ARIA_128_GCM",
)


@pytest.mark.parametrize("profile", OUTSIDE_THE_CONTRACT)
def test_openssl_never_selects_a_profile_outside_the_contract(profile):
    offered = profile.encode()
    try:
        control_server, control_client = control_pair({"srtp": offered}, {"srtp": offered})
    except SSL.Error:
        pytest.skip(f"this OpenSSL does not know {profile}")
    # the positive control: a permissive server does select it
    assert control_client.established and control_client.ssl.get_selected_srtp_profile() == offered

    server, client, log = probe_server(srtp=offered)
    failed = only_event(server, HandshakeFailed)
    assert failed.reason is FailureReason.NO_SHARED_SRTP_PROFILE, failed
    assert is_fatal_alert(last_sent(log, server))
    assert not client.established
    # The handshake fails either way (the gateway checks the profile when the client's
    # certificate arrives); what must not happen is a ServerHello that selects the profile.
    assert client.ssl.get_selected_srtp_profile() in (b"", None), f"the gateway's ServerHello selected {profile}"


def test_the_policy_hands_openssl_exactly_the_mandated_profiles():
    assert DtlsPolicy().openssl_srtp_profiles == b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80"

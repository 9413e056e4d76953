"""Every crash the fuzz targets found, as a test (issue #20: a regression test before the fix).

The inputs libFuzzer wrote are kept in ``tests/fuzz/crashes/<target>-<what>`` and replayed through
their target; a hand-made minimal case states the bug against the module itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import fuzz
from callsgw import sdp as gateway_sdp
from callsgw.client import sdp as client_sdp
from callsgw.client.sdp import SdpError
from fuzz.fuzz_client_sdp import FINGERPRINT, PWD, TRACKS, UFRAG
from fuzz.fuzz_sdp_offer import LOCAL

CRASHES = Path(__file__).parent / "crashes"


@pytest.mark.parametrize("path", sorted(CRASHES.iterdir()), ids=lambda p: p.name)
def test_crash_input_no_longer_crashes(path):
    target = fuzz.load(path.name.split("-", 1)[0])
    target.TestOneInput(path.read_bytes())


def _gateway_offer(extra: str = "") -> str:
    client_offer = client_sdp.build_offer(UFRAG, PWD, FINGERPRINT, ["voice"])
    answer = gateway_sdp.build_answer(gateway_sdp.parse_offer(client_offer), LOCAL)
    return answer.replace("a=setup:passive", "a=setup:actpass") + extra


def test_a_rejected_section_whose_mid_is_not_a_token_is_an_sdp_error():
    """Found by fuzz_client_sdp: a port-0 m-section with ``a=mid:a b`` passed ``parse_offer`` and
    ``build_answer`` raised ValueError (from MediaSection), not the documented SdpError; a gateway
    offer like it would have escaped ``ClientNegotiation.receive``, which never raises."""
    offer = _gateway_offer("m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:a b\r\n")
    with pytest.raises(SdpError):
        client_sdp.build_answer(offer, UFRAG, PWD, FINGERPRINT, TRACKS)
    assert client_sdp.build_answer(_gateway_offer(), UFRAG, PWD, FINGERPRINT, TRACKS).startswith("v=0")


def test_the_negotiation_core_leaves_on_such_an_offer_instead_of_raising():
    from fuzz.fuzz_negotiation import joined_core

    neg = joined_core()
    offer = _gateway_offer("m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:a b\r\n")
    remote = neg.remote  # the gateway's transport must stay the same within the session
    offer = offer.replace(f"a=ice-ufrag:{LOCAL.ice_ufrag}", f"a=ice-ufrag:{remote.ice_ufrag}")
    offer = offer.replace(f"a=ice-pwd:{LOCAL.ice_pwd}", f"a=ice-pwd:{remote.ice_pwd}")
    offer = offer.replace(LOCAL.fingerprint, remote.fingerprint)
    assert neg.receive({"type": "offer", "id": 7, "sdp": offer}, 1.0) == [{"type": "leave"}]


def _duplicated_audio_section(offer: str) -> str:
    start = offer.index("m=audio")  # the offer's only m-section: it runs to the end
    return offer + offer[start:]


def test_an_offer_with_a_repeated_mid_is_an_sdp_error():
    """Found by fuzz_negotiation (the smoke run): a gateway offer with two m-sections ``a=mid:0``
    passed ``parse_offer``; the answer then failed in ``describe`` ("mids must be unique"), outside
    the ``SdpError`` handling of ``ClientNegotiation._gateway_offer``, so ``receive`` raised."""
    offer = _duplicated_audio_section(_gateway_offer())
    assert offer.count("a=mid:0") == 2
    with pytest.raises(SdpError):
        client_sdp.parse_offer(offer)
    with pytest.raises(SdpError):
        client_sdp.parse_answer(offer.replace("a=setup:actpass", "a=setup:passive"))


def test_the_negotiation_core_leaves_on_an_offer_with_a_repeated_mid():
    from fuzz.fuzz_negotiation import _same_transport, joined_core

    neg = joined_core()
    offer = _same_transport(_duplicated_audio_section(_gateway_offer()), neg)
    assert neg.receive({"type": "offer", "id": 8, "sdp": offer}, 1.0) == [{"type": "leave"}]


def test_the_gateway_refuses_an_offer_with_a_repeated_mid():
    """Seen while fixing the client side (not a crash, so no fuzz target flags it): callsgw.sdp's
    parse_offer accepted two m-sections with ``a=mid:0`` and build_answer wrote an answer that
    repeated the mid, which RFC 5888 section 4 and RFC 9143 forbid. Now refused."""
    client_offer = client_sdp.build_offer(UFRAG, PWD, FINGERPRINT, ["voice"])
    with pytest.raises(SdpError):
        gateway_sdp.parse_offer(_duplicated_audio_section(client_offer))


def test_a_content_length_of_non_ascii_digits_is_a_bad_request():
    """Found by fuzz_whip: ``Content-Length: \\xb23`` (a head decoded as Latin-1: ``²3``) passed the
    ``str.isdigit`` check (superscript two is a Unicode digit) and ``int()`` raised ValueError, not
    the documented ``Problem``; the WHIP endpoint would have failed the request with a traceback.
    Only ASCII digits are a number (RFC 9110 section 8.6: ``Content-Length = 1*DIGIT``)."""
    from callsgw.signaling import whip

    for raw in ("\xb23", "\u0663", "\uff11\uff12", "1\u00b9"):  # superscript, Arabic-Indic, fullwidth
        assert raw.isdigit()
        with pytest.raises(whip.Problem) as problem:
            whip.content_length({"content-length": raw})
        assert problem.value.status == 400
    assert whip.content_length({"content-length": "123"}) == 123

"""The client's parsers of what the gateway sends (callsgw.client.sdp): answers and renegotiation offers.

Documented: ``parse_answer`` and ``parse_offer`` raise only ``SdpError``; an offer that parses is
answered with ``build_answer`` (``SdpError`` too) and the answer must parse back as an answer
a description.
"""

from __future__ import annotations

from callsgw.client import sdp
from callsgw.client.sdp import SdpError

UFRAG = "clfz"
PWD = "c" * 24
FINGERPRINT = ":".join(["CD"] * 32)
TRACKS = (sdp.MediaSection.voice(mid="0", ssrc=0x11223344),)


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        answer = sdp.parse_answer(text)
    except SdpError:
        answer = None
    if answer is not None:
        answer.media_by_mid("0")
        for media in answer.media:
            media.payload_types
            media.extmap
    try:
        offer = sdp.parse_offer(text)
    except SdpError:
        return
    try:
        reply = sdp.build_answer(text, UFRAG, PWD, FINGERPRINT, TRACKS)
    except SdpError:
        return
    assert reply.startswith("v=0")
    assert len(sdp.answer_sections(offer, TRACKS)) == len(offer.media)

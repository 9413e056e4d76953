"""RTP (RFC 3550) and its header extensions (RFC 8285), callsgw.wire.rtp: raises only ``RtpError``.

Every entry point a received packet goes through: ``layout`` (the hot-path framing check),
``validate``, ``RtpHeader.parse``, ``extension_value``, ``audio_level`` (RFC 6464), ``mid``
(RFC 8843), ``rewrite`` (what the router does per subscriber) and ``unwrap_rtx`` (RFC 4588).
The parsers must agree: what ``validate`` accepts, ``RtpHeader.parse`` accepts, with the same
layout, and a rewritten packet is still valid.
"""

from __future__ import annotations

from callsgw.wire import rtp
from callsgw.wire.rtp import RtpError

AUDIO_LEVEL_ID = 1
MID_ID = 3  # ids the corpus's browser-like packets use (sdes:mid in one-byte form)


def TestOneInput(data: bytes) -> None:
    try:
        laid = rtp.layout(data)
    except RtpError:
        laid = None
    try:
        valid = rtp.validate(data)
    except RtpError:
        valid = None
    if laid is None:
        assert valid is None, "validate accepted what layout refused"
    try:
        header = rtp.RtpHeader.parse(data)
    except RtpError:
        assert valid is None, "RtpHeader.parse refused what validate accepted"
        header = None
    if header is None:
        return
    assert valid is not None, "RtpHeader.parse accepted what validate refused"
    assert header.header_length == valid[3] and header.padding_length == valid[4]
    assert 0 <= header.payload_length <= len(data)
    for ext_id in (AUDIO_LEVEL_ID, MID_ID, 15, 255):
        try:
            rtp.extension_value(data, ext_id)
            rtp.audio_level(data, ext_id)
            rtp.mid(data, ext_id)
        except RtpError:
            pass
    ids = {i: (i % 14) + 1 for i in header.extensions}
    try:
        out = rtp.rewrite(
            data,
            ssrc=0x01020304,
            sequence=(header.sequence + 1) & 0xFFFF,
            timestamp=(header.timestamp + 960) & 0xFFFFFFFF,
            payload_type=(header.payload_type + 1) & 0x7F,
            extension_ids=ids,
            drop_extensions={MID_ID},
            extension_values={AUDIO_LEVEL_ID: b"\x7f"} if AUDIO_LEVEL_ID in header.extensions else None,
        )
    except RtpError:
        pass
    else:
        again = rtp.RtpHeader.parse(out)
        assert again.ssrc == 0x01020304 and again.marker == header.marker
    try:
        original = rtp.unwrap_rtx(data, payload_type=111, ssrc=0x0A0B0C0D)
    except RtpError:
        pass
    else:
        rtp.validate(original)

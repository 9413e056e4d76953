"""The VP8 RTP payload descriptor (RFC 7741 section 4.2) and payload header (section 4.3): parse and rewrite.

What a simulcast layer switch needs (:class:`callsgw.sfu.datapath.PythonDatapath.route_select`):

* whether a packet starts a keyframe: the descriptor's S bit set and PID
  (partition index) 0, so the VP8 payload header follows the descriptor,
  and that header's P bit ("inverse key frame flag", section 4.3) is 0;
* the PictureID (7 or 15 bits, the M bit tells) and TL0PICIDX, rewritten in
  place so that the subscriber's decoder sees one continuous picture
  numbering across a switch of input stream.

The descriptor, one octet and its optional extensions::

     0 1 2 3 4 5 6 7
    |X|R|N|S|R| PID |     required
    |I|L|T|K| RSV   |     if X
    |M| PictureID   |     if I (a second octet of PictureID if M)
    |   TL0PICIDX   |     if L
    |TID|Y| KEYIDX  |     if T or K

Every function takes the RTP *payload* (after the header, extensions and
before the padding) and never reads past it: a truncated descriptor raises
:class:`Vp8Error`, which the caller counts.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Descriptor", "Vp8Error", "is_keyframe_start", "parse", "rewrite_ids"]


class Vp8Error(ValueError):
    """The payload is too short for the descriptor it announces."""


class Descriptor(NamedTuple):
    """A parsed descriptor; offsets are into the payload (None: the field is absent)."""

    start: bool  # S: the first packet of a partition
    partition: int  # PID
    picture_id: int | None
    picture_id_bits: int  # 7 or 15 (0: no PictureID)
    picture_id_at: int | None
    tl0picidx: int | None
    tl0picidx_at: int | None
    size: int  # descriptor octets; the VP8 payload (header) starts there


def parse(payload: bytes | bytearray | memoryview) -> Descriptor:
    """Parse the payload descriptor at the start of a VP8 RTP payload (RFC 7741 section 4.2)."""
    n = len(payload)
    if n < 1:
        raise Vp8Error("empty VP8 payload")
    b0 = payload[0]
    start = bool(b0 & 0x10)
    partition = b0 & 0x07
    at = 1
    picture_id = picture_id_at = tl0 = tl0_at = None
    bits = 0
    if b0 & 0x80:  # X
        if n < 2:
            raise Vp8Error("VP8 descriptor truncated in its extension octet")
        x = payload[1]
        at = 2
        if x & 0x80:  # I
            if n < at + 1:
                raise Vp8Error("VP8 descriptor truncated in its PictureID")
            picture_id_at = at
            if payload[at] & 0x80:  # M: 15 bits
                if n < at + 2:
                    raise Vp8Error("VP8 descriptor truncated in its 15-bit PictureID")
                picture_id = ((payload[at] & 0x7F) << 8) | payload[at + 1]
                bits = 15
                at += 2
            else:
                picture_id = payload[at] & 0x7F
                bits = 7
                at += 1
        if x & 0x40:  # L
            if n < at + 1:
                raise Vp8Error("VP8 descriptor truncated in its TL0PICIDX")
            tl0, tl0_at = payload[at], at
            at += 1
        if x & 0x30:  # T or K: one octet TID/Y/KEYIDX
            if n < at + 1:
                raise Vp8Error("VP8 descriptor truncated in its TID/KEYIDX octet")
            at += 1
    return Descriptor(start, partition, picture_id, bits, picture_id_at, tl0, tl0_at, at)


def is_keyframe_start(payload: bytes | bytearray | memoryview) -> bool:
    """Whether this packet begins a VP8 keyframe: S=1, PID=0 and the payload header's P bit 0 (section 4.3).

    A descriptor without a payload header octet after it is not a keyframe
    start; a truncated descriptor raises :class:`Vp8Error`.
    """
    d = parse(payload)
    if not d.start or d.partition != 0:
        return False
    if len(payload) <= d.size:
        return False
    return not payload[d.size] & 0x01


def rewrite_ids(buffer: bytearray, d: Descriptor, picture_offset: int, tl0_offset: int, base: int = 0) -> None:
    """Add ``picture_offset`` to the PictureID (modulo its width, M kept) and ``tl0_offset`` to
    TL0PICIDX (modulo 256), in place; fields the descriptor lacks stay absent. ``base``: where the
    payload that ``d`` was parsed from starts in ``buffer`` (the RTP header length)."""
    payload = buffer
    if d.picture_id is not None:
        at = base + d.picture_id_at
        if d.picture_id_bits == 15:
            value = (d.picture_id + picture_offset) & 0x7FFF
            payload[at] = 0x80 | (value >> 8)
            payload[at + 1] = value & 0xFF
        else:
            payload[at] = (d.picture_id + picture_offset) & 0x7F
    if d.tl0picidx is not None:
        payload[base + d.tl0picidx_at] = (d.tl0picidx + tl0_offset) & 0xFF

"""RTP packets (RFC 3550 section 5.1) and their header extensions (RFC 8285).

Two layers, both sans-I/O and raising only :class:`RtpError` on bad input:

* :meth:`RtpHeader.parse` gives a light, immutable view of one packet: the
  fixed header, the CSRC list, the extension block and its elements, and
  where the payload starts and ends. It copies nothing but the (small)
  extension element values.
* :func:`rewrite_into` edits a packet held in a ``bytearray`` in place (SSRC,
  sequence number, timestamp, payload type, extension element IDs and
  values); :func:`rewrite` is the same on a copy. This is what the router
  does once per subscriber, so it walks the header once and builds nothing
  it does not need.

Framing rules checked (RFC 3550 section 5.1 and Appendix A.1):

* at least 12 bytes, version 2;
* the CSRC list (CC x 4 bytes) and, with X set, the 4-byte extension header
  and its ``length`` 32-bit words all inside the packet;
* with P set, the last byte (the padding count, which counts itself) is at
  least 1 and no larger than what follows the header.

Header extensions (RFC 8285 section 4): the one-byte form has the profile
``0xBEDE`` (section 4.2), the two-byte form ``0x100`` followed by four
application bits (``0x1000``-``0x100F``, section 4.3). In both forms a zero
byte between elements is padding. In the one-byte form an element is
``ID(4) L(4)`` followed by ``L + 1`` bytes; ID 0 is reserved for padding (a
byte with ID 0 is skipped as one byte, as libwebrtc does) and ID 15 ends
the processing of the block (section 4.2: "processing of the entire
extension MUST terminate at that point"). In the two-byte form an element is
``ID(8) L(8)`` followed by ``L`` bytes (0 to 255). An element that runs past
the block is an error, and so are more than :data:`MAX_ELEMENTS` elements.
Any other profile is kept as an opaque block.

Also here: :func:`layout` (the framing check alone, for the hot path),
:func:`validate` (framing and elements), :func:`extension_value`, :func:`element_at`,
:func:`audio_level` (RFC 6464), :func:`mid` (RFC 8843) and
:func:`unwrap_rtx` (RFC 4588).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "ONE_BYTE_PROFILE",
    "TWO_BYTE_PROFILE",
    "RtpError",
    "RtpHeader",
    "audio_level",
    "extension_value",
    "layout",
    "mid",
    "rewrite",
    "rewrite_into",
    "unwrap_rtx",
    "validate",
]

ONE_BYTE_PROFILE = 0xBEDE  # RFC 8285 section 4.2
TWO_BYTE_PROFILE = 0x1000  # RFC 8285 section 4.3 ("0x100" + appbits)
FIXED_HEADER = 12
MAX_ELEMENTS = 64  # a 255-word block could hold more; nobody sends that many

_HDR = struct.Struct("!BBHII")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_EXT = struct.Struct("!HH")


class RtpError(ValueError):
    """Malformed RTP packet or header extension."""


def _is_two_byte(profile: int) -> bool:
    return profile & 0xFFF0 == TWO_BYTE_PROFILE


def layout(packet) -> tuple[int, int, int, int, int]:
    """Check the framing and return ``(profile, ext_start, ext_end, header_length, padding)``.

    ``profile`` is -1 without an extension; ``ext_start:ext_end`` are the
    element bytes (after the 4-byte extension header); ``header_length`` is
    where the payload begins; ``padding`` the number of padding bytes at
    the end (RFC 3550 section 5.1).
    """
    size = len(packet)
    if size < FIXED_HEADER:
        raise RtpError(f"RTP packet of {size} bytes is shorter than the 12-byte fixed header")
    b0 = packet[0]
    if b0 >> 6 != 2:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    pos = FIXED_HEADER + 4 * (b0 & 0x0F)
    if pos > size:
        raise RtpError("RTP CSRC list runs past the packet")
    profile, ext_start, ext_end = -1, pos, pos
    if b0 & 0x10:
        if pos + 4 > size:
            raise RtpError("RTP header extension header runs past the packet")
        profile, words = _EXT.unpack_from(packet, pos)
        ext_start = pos + 4
        ext_end = ext_start + 4 * words
        if ext_end > size:
            raise RtpError("RTP header extension runs past the packet")
        pos = ext_end
    padding = 0
    if b0 & 0x20:
        padding = packet[-1]
        if padding == 0 or padding > size - pos:
            raise RtpError(f"RTP padding count {padding} is invalid for {size - pos} bytes after the header")
    return profile, ext_start, ext_end, pos, padding


def _elements(packet, profile: int, start: int, end: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """Walk an RFC 8285 block: ``([(element_offset, id, value_offset, length)], stop)``.

    Offsets are absolute. Padding bytes are skipped. In the one-byte form ID
    15 ends the walk (section 4.2) and ``stop`` is its offset; otherwise
    ``stop`` is ``end``. Raises :class:`RtpError` for an element past the block.
    """
    out: list[tuple[int, int, int, int]] = []
    pos = start
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            b = packet[pos]
            ext_id = b >> 4
            if ext_id == 0:
                pos += 1  # padding; like libwebrtc, a stray length nibble is ignored
                continue
            if ext_id == 15:
                return out, pos
            length = (b & 0x0F) + 1
            if pos + 1 + length > end:
                raise RtpError(f"one-byte header extension element {ext_id} runs past the extension block")
            if len(out) >= MAX_ELEMENTS:
                raise RtpError("too many header extension elements")
            out.append((pos, ext_id, pos + 1, length))
            pos += 1 + length
    elif _is_two_byte(profile):
        while pos < end:
            ext_id = packet[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise RtpError("two-byte header extension element header runs past the extension block")
            length = packet[pos + 1]
            if pos + 2 + length > end:
                raise RtpError(f"two-byte header extension element {ext_id} runs past the extension block")
            if len(out) >= MAX_ELEMENTS:
                raise RtpError("too many header extension elements")
            out.append((pos, ext_id, pos + 2, length))
            pos += 2 + length
    return out, end


def validate(packet) -> tuple[int, int, int, int, int]:
    """:func:`layout` plus a walk of the RFC 8285 elements: the packet is safe to rewrite."""
    result = layout(packet)
    if result[0] >= 0:
        _elements(packet, result[0], result[1], result[2])
    return result


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """A parsed view of one RTP packet (RFC 3550 section 5.1, RFC 8285)."""

    version: int
    padding: bool
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...]
    extension_profile: int | None  # None when the X bit is clear
    header_length: int  # bytes before the payload (fixed header, CSRCs, extension)
    payload_offset: int
    payload_length: int  # without padding
    padding_length: int
    extensions: dict[int, bytes]  # RFC 8285 element ID -> value (first occurrence)

    @classmethod
    def parse(cls, packet: bytes | bytearray | memoryview) -> "RtpHeader":
        """Parse and validate one RTP packet; raises :class:`RtpError`."""
        profile, ext_start, ext_end, header_length, padding = layout(packet)
        b0, b1, seq, ts, ssrc = _HDR.unpack_from(packet, 0)
        cc = b0 & 0x0F
        csrcs = struct.unpack_from(f"!{cc}I", packet, FIXED_HEADER) if cc else ()
        extensions: dict[int, bytes] = {}
        if profile >= 0:
            for _, ext_id, at, length in _elements(packet, profile, ext_start, ext_end)[0]:
                if ext_id not in extensions:
                    extensions[ext_id] = bytes(packet[at : at + length])
        return cls(
            version=2,
            padding=bool(b0 & 0x20),
            marker=bool(b1 & 0x80),
            payload_type=b1 & 0x7F,
            sequence=seq,
            timestamp=ts,
            ssrc=ssrc,
            csrcs=tuple(csrcs),
            extension_profile=profile if profile >= 0 else None,
            header_length=header_length,
            payload_offset=header_length,
            payload_length=len(packet) - header_length - padding,
            padding_length=padding,
            extensions=extensions,
        )


def extension_value(packet: bytes | bytearray | memoryview, ext_id: int) -> bytes | None:
    """The value of RFC 8285 element ``ext_id``, or None; raises :class:`RtpError` on bad framing."""
    where = element_at(packet, ext_id)
    return bytes(packet[where[0] : where[0] + where[1]]) if where is not None else None


def element_at(packet: bytes | bytearray | memoryview, ext_id: int) -> tuple[int, int] | None:
    """Where RFC 8285 element ``ext_id``'s value is, as ``(offset, length)``, or None.

    For in-place writes of a fixed-size value (the transport-wide sequence
    number); raises :class:`RtpError` on bad framing.
    """
    profile, start, end, _, _ = layout(packet)
    if profile < 0:
        return None
    for _, element_id, at, length in _elements(packet, profile, start, end)[0]:
        if element_id == ext_id:
            return at, length
    return None


def audio_level(packet: bytes | bytearray | memoryview, ext_id: int) -> tuple[bool, int] | None:
    """``(voice_activity, level)`` from the RFC 6464 client-to-mixer audio level, or None.

    RFC 6464 section 3: one byte, ``V(1) level(7)``; the level is in -dBov,
    so 0 is the loudest and 127 digital silence. The element must be exactly
    one byte (one-byte form ``L = 0``, two-byte form length 1).
    """
    value = extension_value(packet, ext_id)
    if value is None:
        return None
    if len(value) != 1:
        raise RtpError(f"audio level element has {len(value)} bytes, RFC 6464 section 3 says 1")
    return bool(value[0] & 0x80), value[0] & 0x7F


def mid(packet: bytes | bytearray | memoryview, ext_id: int) -> str | None:
    """The RFC 8843 section 15.2 MID (an RTP SDES item) carried in element ``ext_id``, or None."""
    value = extension_value(packet, ext_id)
    if value is None:
        return None
    if not value:
        raise RtpError("empty MID header extension")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise RtpError("MID header extension is not UTF-8") from None


def _serialize_elements(elements: list[tuple[int, bytes]], two_byte_profile: int) -> tuple[int, bytes]:
    """Pack elements in the one-byte form when all fit (RFC 8285 section 4.2), else two-byte."""
    if all(1 <= i <= 14 and 1 <= len(v) <= 16 for i, v in elements):
        profile = ONE_BYTE_PROFILE
        out = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements)
    else:
        profile = two_byte_profile
        out = b"".join(bytes([i, len(v)]) + v for i, v in elements)
    return profile, out + b"\x00" * (-len(out) % 4)


def rewrite_into(
    buf: bytearray,
    *,
    ssrc: int | None = None,
    sequence: int | None = None,
    timestamp: int | None = None,
    payload_type: int | None = None,
    extension_ids: dict[int, int] | None = None,
    drop_extensions: set[int] | frozenset[int] | None = None,
    extension_values: dict[int, bytes] | None = None,
) -> None:
    """Rewrite an RTP packet held in ``buf`` in place; raises :class:`RtpError`.

    * ``ssrc``, ``sequence``, ``timestamp``, ``payload_type``: new header
      fields (RFC 3550 section 5.1); the marker bit is kept.
    * ``extension_ids``: RFC 8285 element ID -> new ID. An ID the block's
      form cannot carry (one-byte form: 1 to 14; two-byte form: 1 to 255)
      drops the element.
    * ``drop_extensions``: element IDs (before mapping) to remove.
    * ``extension_values``: new values for elements, keyed by their ID
      *after* mapping; an element is only replaced, never added.

    Dropped elements become padding bytes (zeros, allowed between elements by
    RFC 8285 section 4.2/4.3) and IDs are rewritten in place, so the packet
    keeps its size. Only a value of a different length makes the block be
    rebuilt, which resizes ``buf`` (the block is then written in the
    one-byte form when every element fits it, else in the two-byte form).
    Blocks of another profile than RFC 8285's are left untouched. A
    replacement value is cut to 255 bytes (the two-byte form's limit). The
    packet is checked before anything is written, so on :class:`RtpError`
    ``buf`` is unchanged.
    """
    profile, start, end, _, _ = layout(buf)
    if payload_type is not None and not 0 <= payload_type <= 127:
        raise RtpError(f"payload type {payload_type} is not 7 bits")
    one_byte = profile == ONE_BYTE_PROFILE
    edit = (one_byte or (profile >= 0 and _is_two_byte(profile))) and bool(
        extension_ids or drop_extensions or extension_values
    )
    if edit:
        elements, stop = _elements(buf, profile, start, end)  # may raise: nothing changed yet
    if ssrc is not None:
        _U32.pack_into(buf, 8, ssrc & 0xFFFFFFFF)
    if sequence is not None:
        _U16.pack_into(buf, 2, sequence & 0xFFFF)
    if timestamp is not None:
        _U32.pack_into(buf, 4, timestamp & 0xFFFFFFFF)
    if payload_type is not None:
        buf[1] = (buf[1] & 0x80) | payload_type
    if not edit:
        return
    limit = 14 if one_byte else 255
    kept: list[tuple[int, bytes]] = []
    rebuild = False
    for at, ext_id, value_at, length in elements:
        new_id = ext_id
        if drop_extensions and ext_id in drop_extensions:
            new_id = 0
        elif extension_ids and ext_id in extension_ids:
            new_id = extension_ids[ext_id]
            if not 1 <= new_id <= limit:
                new_id = 0
        if new_id == 0:
            buf[at : value_at + length] = bytes(value_at + length - at)
            continue
        value = bytes(buf[value_at : value_at + length])
        if extension_values and new_id in extension_values:
            replacement = bytes(extension_values[new_id])[:255]
            if len(replacement) == length:
                buf[value_at : value_at + length] = replacement
            else:
                rebuild = True
            value = replacement
        if new_id != ext_id:
            buf[at] = (new_id << 4) | (buf[at] & 0x0F) if one_byte else new_id
        kept.append((new_id, value))
    if stop < end:
        # one-byte ID 15 (RFC 8285 section 4.2): what follows is never forwarded
        buf[stop:end] = bytes(end - stop)
    if not rebuild:
        return
    new_profile, block = _serialize_elements(kept, profile if not one_byte else TWO_BYTE_PROFILE)
    buf[start - 4 : end] = _EXT.pack(new_profile, len(block) // 4) + block


def rewrite(
    packet: bytes | bytearray | memoryview,
    *,
    ssrc: int | None = None,
    sequence: int | None = None,
    timestamp: int | None = None,
    payload_type: int | None = None,
    extension_ids: dict[int, int] | None = None,
    drop_extensions: set[int] | frozenset[int] | None = None,
    extension_values: dict[int, bytes] | None = None,
) -> bytes:
    """:func:`rewrite_into` on a copy of ``packet``; returns the rewritten bytes."""
    buf = bytearray(packet)
    rewrite_into(
        buf,
        ssrc=ssrc,
        sequence=sequence,
        timestamp=timestamp,
        payload_type=payload_type,
        extension_ids=extension_ids,
        drop_extensions=drop_extensions,
        extension_values=extension_values,
    )
    return bytes(buf)


def unwrap_rtx(packet: bytes | bytearray | memoryview, *, payload_type: int, ssrc: int) -> bytes:
    """Recover the original packet from an RTX retransmission (RFC 4588 section 4).

    The RTX payload starts with the original sequence number (OSN, 2 bytes);
    the original packet gets ``payload_type`` (the RTX ``apt``), ``ssrc``
    (the original stream's), the OSN, and the rest of the payload. The
    timestamp, marker, CSRCs and header extensions are the RTX packet's
    (section 4: "the same as the original"). RTX padding is removed. A
    packet without an OSN (libwebrtc's padding-only probes) raises
    :class:`RtpError`.
    """
    _, _, _, header_length, padding = layout(packet)
    end = len(packet) - padding
    if end - header_length < 2:
        raise RtpError("RTX packet without an original sequence number (padding only)")
    if not 0 <= payload_type <= 127:
        raise RtpError(f"payload type {payload_type} is not 7 bits")
    osn = _U16.unpack_from(packet, header_length)[0]
    out = bytearray(packet[:header_length])
    out += packet[header_length + 2 : end]
    out[0] &= ~0x20 & 0xFF
    out[1] = (out[1] & 0x80) | payload_type
    _U16.pack_into(out, 2, osn)
    _U32.pack_into(out, 8, ssrc & 0xFFFFFFFF)
    return bytes(out)

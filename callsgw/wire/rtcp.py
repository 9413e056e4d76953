"""RTCP compound packets (RFC 3550 section 6, RFC 4585, RFC 5104), parsed strictly.

:func:`parse` splits a (decrypted) compound packet into typed, immutable
items and raises only :class:`RtcpError`:

========  =====  ==============================================  ======================
PT        FMT    meaning                                         item
========  =====  ==============================================  ======================
200              sender report (RFC 3550 section 6.4.1)          :class:`SenderReport`
201              receiver report (RFC 3550 section 6.4.2)        :class:`ReceiverReport`
202              source description (RFC 3550 section 6.5)       :class:`SourceDescription`
203              goodbye (RFC 3550 section 6.6)                  :class:`Bye`
204              application-defined (RFC 3550 section 6.7)      :class:`App`
205      1       generic NACK (RFC 4585 section 6.2.1)           :class:`Nack`
205      15      transport-wide CC (draft-holmer-rmcat-twcc-01)  :class:`TransportCc` (raw)
206      1       picture loss indication (RFC 4585 6.3.1)        :class:`Pli`
206      4       full intra request (RFC 5104 section 4.3.1)     :class:`Fir`
206      15      REMB (draft-alvestrand-rmcat-remb-03)           :class:`Remb`
205/206  other   other feedback (RFC 4585 section 6.1)           :class:`Feedback` (raw FCI)
192-223  other   any other RTCP type (e.g. XR, 207)              :class:`Unknown` (raw)
========  =====  ==============================================  ======================

Framing checks (RFC 3550 section 6.4.1 and Appendix A.2):

* every packet has version 2 and a ``length`` (32-bit words minus one) that
  fits in what is left of the compound; the compound is consumed exactly;
* the packet type is an RTCP type (192-223, RFC 5761 section 4);
* only the last packet may have the padding bit, and its padding count is
  non-zero and no larger than its body (section 6.4.1, A.2). Section 6.4.1
  says the count "will be a multiple of four", but libwebrtc pads its
  transport-cc feedback to a 32-bit boundary with 1 to 3 bytes and the padding
  bit (transport_feedback.cc), so any count is accepted, as libwebrtc does;
* report counts, SDES chunks, BYE sources and feedback FCIs fit their body.

A compound that does not start with an SR or RR breaks RFC 3550 section
6.1, but RFC 5506 (reduced-size RTCP, which browsers negotiate with
``a=rtcp-rsize``) allows it, so it is accepted and flagged with
:attr:`Compound.reduced_size`. Bounded: at most :data:`MAX_ITEMS` packets per
compound and :data:`MAX_NACK_ENTRIES` NACK FCI entries over the compound.

The builders (:func:`build_sr`, :func:`build_rr`, :func:`build_pli`,
:func:`build_fir`, :func:`build_nack`, :func:`build_sdes_cname`) and each
item's ``bytes()`` produce single packets; concatenate them for a compound.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Union

__all__ = [
    "App",
    "Bye",
    "Compound",
    "Feedback",
    "Fir",
    "MAX_ITEMS",
    "MAX_NACK_ENTRIES",
    "Nack",
    "Pli",
    "ReceiverReport",
    "Remb",
    "ReportBlock",
    "RtcpError",
    "SenderReport",
    "SourceDescription",
    "TransportCc",
    "Unknown",
    "build_fir",
    "build_nack",
    "build_pli",
    "build_rr",
    "build_sdes_cname",
    "build_sr",
    "nack_entries",
    "parse",
]

SR, RR, SDES, BYE, APP, RTPFB, PSFB = 200, 201, 202, 203, 204, 205, 206
FMT_NACK = 1  # RFC 4585 section 6.2.1
FMT_TWCC = 15  # draft-holmer-rmcat-transport-wide-cc-extensions-01 section 3.1
FMT_PLI = 1  # RFC 4585 section 6.3.1
FMT_FIR = 4  # RFC 5104 section 4.3.1
FMT_AFB = 15  # RFC 4585 section 6.4 application layer feedback (REMB)

MAX_ITEMS = 64
MAX_NACK_ENTRIES = 512
MAX_REPORT_BLOCKS = 31  # the 5-bit count field

_HEADER = struct.Struct("!BBH")
_BLOCK = struct.Struct("!IIIIII")  # ssrc, fraction|lost, highest, jitter, lsr, dlsr
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc, ntp, rtp, packets, octets
_FB = struct.Struct("!II")


class RtcpError(ValueError):
    """Malformed RTCP."""


def _header(pt: int, count: int, body_len: int) -> bytes:
    if body_len % 4:
        raise RtcpError("RTCP body length must be a multiple of 4")
    return _HEADER.pack(0x80 | count, pt, body_len // 4)


# -- report blocks ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 section 6.4.1).

    ``cumulative_lost`` is the signed 24-bit field; ``highest_seq`` the
    extended highest sequence number received; ``lsr`` the middle 32 bits of
    the last SR's NTP timestamp and ``dlsr`` the delay since it, in 1/65536 s.
    """

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_seq: int
    jitter: int
    lsr: int = 0
    dlsr: int = 0

    def __bytes__(self) -> bytes:
        lost = max(-(1 << 23), min((1 << 23) - 1, self.cumulative_lost)) & 0xFFFFFF
        return _BLOCK.pack(
            self.ssrc & 0xFFFFFFFF,
            ((self.fraction_lost & 0xFF) << 24) | lost,
            self.highest_seq & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.lsr & 0xFFFFFFFF,
            self.dlsr & 0xFFFFFFFF,
        )

    @classmethod
    def _parse(cls, data: bytes, pos: int) -> "ReportBlock":
        ssrc, word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, pos)
        lost = word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, word >> 24, lost, highest, jitter, lsr, dlsr)


def _blocks(body: bytes, pos: int, count: int) -> tuple[ReportBlock, ...]:
    return tuple(ReportBlock._parse(body, pos + 24 * i) for i in range(count))


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR (RFC 3550 section 6.4.1); ``extension`` is any profile-specific extension."""

    ssrc: int
    ntp_timestamp: int  # 64-bit NTP format
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def __bytes__(self) -> bytes:
        if len(self.reports) > MAX_REPORT_BLOCKS:
            raise RtcpError(f"an SR carries at most {MAX_REPORT_BLOCKS} report blocks")
        body = _SENDER_INFO.pack(
            self.ssrc & 0xFFFFFFFF,
            self.ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
            self.rtp_timestamp & 0xFFFFFFFF,
            self.packet_count & 0xFFFFFFFF,
            self.octet_count & 0xFFFFFFFF,
        )
        body += b"".join(bytes(r) for r in self.reports) + self.extension
        return _header(SR, len(self.reports), len(body)) + body

    @classmethod
    def _parse(cls, count: int, body: bytes) -> "SenderReport":
        need = 24 + 24 * count
        if len(body) < need:
            raise RtcpError(f"SR with {count} report blocks needs {need} bytes, has {len(body)}")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body, 0)
        return cls(ssrc, ntp, rtp_ts, packets, octets, _blocks(body, 24, count), bytes(body[need:]))


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR (RFC 3550 section 6.4.2); ``extension`` is any profile-specific extension."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def __bytes__(self) -> bytes:
        if len(self.reports) > MAX_REPORT_BLOCKS:
            raise RtcpError(f"an RR carries at most {MAX_REPORT_BLOCKS} report blocks")
        body = struct.pack("!I", self.ssrc & 0xFFFFFFFF) + b"".join(bytes(r) for r in self.reports)
        body += self.extension
        return _header(RR, len(self.reports), len(body)) + body

    @classmethod
    def _parse(cls, count: int, body: bytes) -> "ReceiverReport":
        need = 4 + 24 * count
        if len(body) < need:
            raise RtcpError(f"RR with {count} report blocks needs {need} bytes, has {len(body)}")
        return cls(struct.unpack_from("!I", body)[0], _blocks(body, 4, count), bytes(body[need:]))


# -- SDES, BYE, APP ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """SDES (RFC 3550 section 6.5): the chunk SSRCs are read, the packet kept as is."""

    ssrcs: tuple[int, ...]
    raw: bytes

    def __bytes__(self) -> bytes:
        return self.raw

    @classmethod
    def _parse(cls, count: int, body: bytes, raw: bytes) -> "SourceDescription":
        pos, ssrcs = 0, []
        for _ in range(count):
            if pos + 4 > len(body):
                raise RtcpError("SDES chunk runs past the packet")
            ssrcs.append(struct.unpack_from("!I", body, pos)[0])
            pos += 4
            while True:  # items up to the null item, then pad to a word
                if pos >= len(body):
                    raise RtcpError("SDES chunk has no terminating null item")
                if body[pos] == 0:
                    pos += 1
                    pos += -pos % 4
                    break
                if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                    raise RtcpError("SDES item runs past the packet")
                pos += 2 + body[pos + 1]
        if pos > len(body) or any(body[pos:]):
            raise RtcpError("SDES packet has bytes after its chunks")
        return cls(tuple(ssrcs), raw)


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE (RFC 3550 section 6.6)."""

    ssrcs: tuple[int, ...]
    reason: bytes | None = None

    def __bytes__(self) -> bytes:
        body = b"".join(struct.pack("!I", s) for s in self.ssrcs)
        if self.reason is not None:
            reason = self.reason[:255]
            body += bytes([len(reason)]) + reason
            body += b"\x00" * (-len(body) % 4)
        return _header(BYE, len(self.ssrcs), len(body)) + body

    @classmethod
    def _parse(cls, count: int, body: bytes) -> "Bye":
        need = 4 * count
        if len(body) < need:
            raise RtcpError(f"BYE with {count} sources needs {need} bytes, has {len(body)}")
        ssrcs = struct.unpack_from(f"!{count}I", body) if count else ()
        reason = None
        if len(body) > need:
            length = body[need]
            end = need + 1 + length
            if end > len(body) or len(body) - end > 3:
                raise RtcpError("BYE reason length does not match the packet")
            reason = bytes(body[need + 1 : end])
        return cls(tuple(ssrcs), reason)


@dataclass(frozen=True, slots=True)
class App:
    """APP (RFC 3550 section 6.7), kept as is."""

    subtype: int
    ssrc: int
    name: bytes
    raw: bytes

    def __bytes__(self) -> bytes:
        return self.raw

    @classmethod
    def _parse(cls, count: int, body: bytes, raw: bytes) -> "App":
        if len(body) < 8:
            raise RtcpError("APP packet shorter than SSRC and name")
        return cls(count, struct.unpack_from("!I", body)[0], bytes(body[4:8]), raw)


@dataclass(frozen=True, slots=True)
class Unknown:
    """An RTCP packet type this module does not interpret (e.g. XR, RFC 3611), kept as is."""

    packet_type: int
    count: int
    raw: bytes

    def __bytes__(self) -> bytes:
        return self.raw


# -- feedback (RFC 4585 section 6.1) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Nack:
    """Generic NACK (RFC 4585 section 6.2.1): entries of (PID, BLP)."""

    sender_ssrc: int
    media_ssrc: int
    entries: tuple[tuple[int, int], ...]

    def sequences(self) -> list[int]:
        """Every sequence number the entries ask for, in order (PID, then BLP bits 0..15)."""
        out = []
        for pid, blp in self.entries:
            out.append(pid)
            for bit in range(16):
                if blp >> bit & 1:
                    out.append((pid + bit + 1) & 0xFFFF)
        return out

    def __bytes__(self) -> bytes:
        return build_nack(self.sender_ssrc, self.media_ssrc, self.entries)


@dataclass(frozen=True, slots=True)
class TransportCc:
    """Transport-wide congestion control feedback (RTPFB FMT 15), FCI kept raw."""

    sender_ssrc: int
    media_ssrc: int
    fci: bytes

    def __bytes__(self) -> bytes:
        body = _FB.pack(self.sender_ssrc, self.media_ssrc) + self.fci
        return _header(RTPFB, FMT_TWCC, len(body)) + body


@dataclass(frozen=True, slots=True)
class Pli:
    """Picture loss indication (RFC 4585 section 6.3.1): no FCI."""

    sender_ssrc: int
    media_ssrc: int

    def __bytes__(self) -> bytes:
        return build_pli(self.sender_ssrc, self.media_ssrc)


@dataclass(frozen=True, slots=True)
class Fir:
    """Full intra request (RFC 5104 section 4.3.1): entries of (SSRC, command sequence number).

    The media source SSRC of a FIR is unused (section 4.3.1.2: set to 0);
    the targets are in the entries.
    """

    sender_ssrc: int
    media_ssrc: int
    entries: tuple[tuple[int, int], ...]

    def __bytes__(self) -> bytes:
        return build_fir(self.sender_ssrc, self.entries, media_ssrc=self.media_ssrc)


@dataclass(frozen=True, slots=True)
class Remb:
    """Receiver estimated maximum bitrate (draft-alvestrand-rmcat-remb-03 section 2.2)."""

    sender_ssrc: int
    media_ssrc: int
    bitrate: int
    ssrcs: tuple[int, ...]

    def __bytes__(self) -> bytes:
        mantissa, exponent = self.bitrate, 0
        while mantissa > 0x3FFFF:
            mantissa >>= 1
            exponent += 1
        fci = b"REMB" + struct.pack("!BBH", len(self.ssrcs), (exponent << 2) | (mantissa >> 16), mantissa & 0xFFFF)
        fci += b"".join(struct.pack("!I", s) for s in self.ssrcs)
        body = _FB.pack(self.sender_ssrc, self.media_ssrc) + fci
        return _header(PSFB, FMT_AFB, len(body)) + body


@dataclass(frozen=True, slots=True)
class Feedback:
    """Any other transport-layer (205) or payload-specific (206) feedback, FCI kept raw."""

    packet_type: int
    fmt: int
    sender_ssrc: int
    media_ssrc: int
    fci: bytes

    def __bytes__(self) -> bytes:
        body = _FB.pack(self.sender_ssrc, self.media_ssrc) + self.fci
        return _header(self.packet_type, self.fmt, len(body)) + body


def _parse_feedback(pt: int, fmt: int, body: bytes):
    if len(body) < 8:
        raise RtcpError("feedback packet shorter than its two SSRCs (RFC 4585 section 6.1)")
    sender, media = _FB.unpack_from(body, 0)
    fci = bytes(body[8:])
    if pt == RTPFB and fmt == FMT_NACK:
        if not fci or len(fci) % 4:
            raise RtcpError("generic NACK FCI must be one or more 4-byte entries (RFC 4585 section 6.2.1)")
        entries = tuple(struct.iter_unpack("!HH", fci))
        return Nack(sender, media, entries)
    if pt == RTPFB and fmt == FMT_TWCC:
        if len(fci) < 8:
            raise RtcpError("transport-cc feedback shorter than its 8-byte header")
        return TransportCc(sender, media, fci)
    if pt == PSFB and fmt == FMT_PLI:
        if fci:
            raise RtcpError("PLI carries no FCI (RFC 4585 section 6.3.1)")
        return Pli(sender, media)
    if pt == PSFB and fmt == FMT_FIR:
        if not fci or len(fci) % 8:
            raise RtcpError("FIR FCI must be one or more 8-byte entries (RFC 5104 section 4.3.1.1)")
        return Fir(sender, media, tuple((ssrc, word >> 24) for ssrc, word in struct.iter_unpack("!II", fci)))
    if pt == PSFB and fmt == FMT_AFB and fci[:4] == b"REMB":
        if len(fci) < 8:
            raise RtcpError("REMB FCI shorter than 8 bytes")
        count = fci[4]
        if len(fci) != 8 + 4 * count:
            raise RtcpError(f"REMB with {count} SSRCs needs {8 + 4 * count} FCI bytes, has {len(fci)}")
        exponent = fci[5] >> 2
        mantissa = ((fci[5] & 0x03) << 16) | (fci[6] << 8) | fci[7]
        ssrcs = struct.unpack_from(f"!{count}I", fci, 8) if count else ()
        return Remb(sender, media, mantissa << exponent, tuple(ssrcs))
    return Feedback(pt, fmt, sender, media, fci)


Item = Union[
    SenderReport, ReceiverReport, SourceDescription, Bye, App, Nack, TransportCc, Pli, Fir, Remb, Feedback, Unknown
]


@dataclass(frozen=True, slots=True)
class Compound:
    """A parsed compound RTCP packet (RFC 3550 section 6.1)."""

    items: tuple[Item, ...]
    reduced_size: bool  # does not start with SR/RR: RFC 5506 reduced-size RTCP

    def __bytes__(self) -> bytes:
        return b"".join(bytes(i) for i in self.items)


def parse(data: bytes | bytearray | memoryview) -> Compound:
    """Parse a compound RTCP packet; raises :class:`RtcpError` on anything malformed."""
    data = bytes(data)
    size = len(data)
    if size == 0:
        raise RtcpError("empty RTCP packet")
    items: list[Item] = []
    nack_entries = 0
    pos = 0
    while pos < size:
        if len(items) >= MAX_ITEMS:
            raise RtcpError(f"more than {MAX_ITEMS} packets in one compound")
        if pos + 4 > size:
            raise RtcpError("RTCP header runs past the compound")
        b0, pt, words = _HEADER.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise RtcpError(f"RTCP version {b0 >> 6}, expected 2")
        if not 192 <= pt <= 223:
            raise RtcpError(f"packet type {pt} is not RTCP (RFC 5761 section 4)")
        end = pos + 4 + 4 * words
        if end > size:
            raise RtcpError(f"RTCP length of {words} words runs past the compound")
        body = data[pos + 4 : end]
        if b0 & 0x20:
            if end != size:
                raise RtcpError("only the last packet of a compound may be padded (RFC 3550 section 6.4.1)")
            pad = body[-1] if body else 0
            if pad == 0 or pad > len(body):  # not required to be a multiple of 4: see the module docstring
                raise RtcpError(f"RTCP padding count {pad} is invalid")
            body = body[:-pad]
        count = b0 & 0x1F
        raw = data[pos:end]
        if pt == SR:
            item: Item = SenderReport._parse(count, body)
        elif pt == RR:
            item = ReceiverReport._parse(count, body)
        elif pt == SDES:
            item = SourceDescription._parse(count, body, raw)
        elif pt == BYE:
            item = Bye._parse(count, body)
        elif pt == APP:
            item = App._parse(count, body, raw)
        elif pt in (RTPFB, PSFB):
            item = _parse_feedback(pt, count, body)
            if isinstance(item, Nack):
                nack_entries += len(item.entries)
                if nack_entries > MAX_NACK_ENTRIES:
                    raise RtcpError(f"more than {MAX_NACK_ENTRIES} NACK entries in one compound")
        else:
            item = Unknown(pt, count, raw)
        items.append(item)
        pos = end
    return Compound(tuple(items), reduced_size=not isinstance(items[0], (SenderReport, ReceiverReport)))


# -- builders ---------------------------------------------------------------------------


def build_sr(
    ssrc: int,
    ntp_timestamp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: Iterable[ReportBlock] = (),
) -> bytes:
    """An SR (RFC 3550 section 6.4.1)."""
    return bytes(SenderReport(ssrc, ntp_timestamp, rtp_timestamp, packet_count, octet_count, tuple(reports)))


def build_rr(ssrc: int, reports: Iterable[ReportBlock] = ()) -> bytes:
    """An RR (RFC 3550 section 6.4.2); ``ssrc`` is the reporter's."""
    return bytes(ReceiverReport(ssrc, tuple(reports)))


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """A PLI (RFC 4585 section 6.3.1)."""
    return _header(PSFB, FMT_PLI, 8) + _FB.pack(sender_ssrc & 0xFFFFFFFF, media_ssrc & 0xFFFFFFFF)


def build_fir(sender_ssrc: int, entries: Iterable[tuple[int, int]], *, media_ssrc: int = 0) -> bytes:
    """A FIR (RFC 5104 section 4.3.1) with (target SSRC, command sequence number) entries."""
    fci = b"".join(struct.pack("!IBxxx", ssrc & 0xFFFFFFFF, seq & 0xFF) for ssrc, seq in entries)
    if not fci:
        raise RtcpError("a FIR needs at least one entry")
    body = _FB.pack(sender_ssrc & 0xFFFFFFFF, media_ssrc & 0xFFFFFFFF) + fci
    return _header(PSFB, FMT_FIR, len(body)) + body


def nack_entries(sequences: Iterable[int]) -> list[tuple[int, int]]:
    """Pack sequence numbers into generic NACK (PID, BLP) entries (RFC 4585 section 6.2.1).

    Each PID covers itself and the 16 following numbers (modulo 2^16); the
    input order decides which number starts an entry, repeats are ignored.
    """
    entries: list[tuple[int, int]] = []
    seen: set[int] = set()
    for seq in sequences:
        seq &= 0xFFFF
        if seq in seen:
            continue
        seen.add(seq)
        if entries:
            pid, blp = entries[-1]
            delta = (seq - pid) & 0xFFFF
            if delta == 0:
                continue
            if delta <= 16:
                entries[-1] = (pid, blp | 1 << (delta - 1))
                continue
        entries.append((seq, 0))
    return entries


def build_nack(sender_ssrc: int, media_ssrc: int, entries: Iterable[tuple[int, int]]) -> bytes:
    """A generic NACK (RFC 4585 section 6.2.1) from (PID, BLP) entries (see :func:`nack_entries`)."""
    fci = b"".join(struct.pack("!HH", pid & 0xFFFF, blp & 0xFFFF) for pid, blp in entries)
    if not fci:
        raise RtcpError("a NACK needs at least one entry")
    body = _FB.pack(sender_ssrc & 0xFFFFFFFF, media_ssrc & 0xFFFFFFFF) + fci
    return _header(RTPFB, FMT_NACK, len(body)) + body


def build_sdes_cname(ssrc: int, cname: str) -> bytes:
    """An SDES packet with one chunk carrying a CNAME item (RFC 3550 section 6.5.1)."""
    value = cname.encode("utf-8")[:255]
    chunk = struct.pack("!IBB", ssrc & 0xFFFFFFFF, 1, len(value)) + value + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return _header(SDES, 1, len(chunk)) + chunk

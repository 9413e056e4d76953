"""Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01), sans-I/O.

The RTCP framing (RTPFB, FMT 15, RFC 4585 section 6.1) is :class:`callsgw.wire.rtcp.TransportCc`,
which keeps the FCI raw; this module reads and writes that FCI (section 3.1)::

    base sequence number (16) | packet status count (16)
    reference time (24, signed, 64 ms units) | feedback packet count (8)
    packet chunks (16 bits each) ... | receive deltas (8 or 16 bits each) ... | zero padding to 32 bits

* Packet status symbols (section 3.1.1): 00 not received, 01 received with a
  small delta, 10 received with a large or negative delta, 11 reserved.
* Run-length chunk (section 3.1.3): ``0 S(2) run length(13)``.
* Status vector chunk (section 3.1.4): ``1 s(1) symbols(14)``, with ``s = 0``
  fourteen 1-bit symbols (0 not received, 1 small delta) and with ``s = 1``
  seven 2-bit symbols.
* Receive delta (section 3.1.5): in multiples of 250 us, one unsigned byte
  (0 to 63.75 ms) for a small delta, a signed 16-bit big-endian word (-8192 to
  8191.75 ms) for a large one; the first is relative to the reference time,
  each next to the previous received packet.

:func:`parse_fci` is strict and raises only :class:`TwccError` (a
:class:`~callsgw.wire.rtcp.RtcpError`): a truncated header, chunk or delta; a
zero-length run; the reserved symbol (libwebrtc refuses it too); more than
three bytes after the deltas or non-zero ones (a sender that does not use the
RTCP padding bit pads with up to three zero bytes, as mediasoup does). The last
chunk may describe more packets than the status count (its tail is ignored,
as libwebrtc and pion do). Feedback without receive deltas (libwebrtc reads a
packet too short for its deltas as "no timestamps", a mode of the later
transport-wide-cc-02 feedback-on-request extension that is not negotiated
here) is refused like any truncation. :func:`parse_compound` takes a whole (decrypted)
RTCP compound, e.g. one captured from Chromium, and returns its feedback.

:func:`build` encodes a list of ``(extended sequence number, arrival time in
us or None)`` into one or more RTCP packets. Chunks are chosen greedily as
libwebrtc's sender does: a run-length chunk for runs of one symbol, a 1-bit
vector while no large delta is involved, a 2-bit vector otherwise. A new
feedback packet (with its own base sequence number and reference time) is
started when one would exceed ``max_size`` bytes or 65535 statuses, or when a
delta does not fit the signed 16-bit large delta (section 3.1.5). The
reference time is written modulo 2^24 (libwebrtc does the same); readers
compare reference times with :func:`reference_delta`.

Also: the transport-wide sequence number header extension value (section 2,
two bytes, big-endian): :func:`pack_seq` / :func:`unpack_seq`, and
:class:`SeqUnwrapper` for extending 16-bit sequence numbers.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from itertools import accumulate
from typing import Iterable, Sequence

from callsgw.wire import rtcp
from callsgw.wire.rtcp import RtcpError

__all__ = [
    "DELTA_TICK_US",
    "EXTENSION_URI",
    "LARGE",
    "NOT_RECEIVED",
    "REFERENCE_TICK_US",
    "SMALL",
    "PacketStatus",
    "SeqUnwrapper",
    "TwccError",
    "TwccFeedback",
    "build",
    "pack_seq",
    "parse_compound",
    "parse_fci",
    "parse_item",
    "reference_delta",
    "unpack_seq",
]

EXTENSION_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

NOT_RECEIVED, SMALL, LARGE, RESERVED = 0, 1, 2, 3  # section 3.1.1
DELTA_TICK_US = 250  # section 3.1.5
REFERENCE_TICK_US = 64_000  # section 3.1: reference time in multiples of 64 ms
_TICKS_PER_REFERENCE = REFERENCE_TICK_US // DELTA_TICK_US  # 256
_REF_MOD = 1 << 24
MAX_STATUS_COUNT = 0xFFFF
MAX_RUN_LENGTH = 0x1FFF  # 13 bits (section 3.1.3)
MAX_GAP = 0x7FFF  # build() refuses larger jumps (a restarted sender: start a new feedback run)
DEFAULT_MAX_SIZE = 1200  # bytes per RTCP packet, a safe MTU share
_MIN_PACKET = 4 + 8 + 8  # RTCP header, two SSRCs, FCI header

_RECEIVED = re.compile(rb"[^\x00]")
_RECEIVED_RUN = re.compile(rb"[^\x00]+")
_FCI_HEADER = struct.Struct("!HHI")
_U16 = struct.Struct("!H")
_S16 = struct.Struct("!h")


class TwccError(RtcpError):
    """Malformed transport-wide congestion control feedback."""


# -- the header extension (section 2) ----------------------------------------------------


def pack_seq(seq: int) -> bytes:
    """The transport-wide sequence number header extension value: 16 bits, big-endian (section 2)."""
    return _U16.pack(seq & 0xFFFF)


def unpack_seq(value: bytes | bytearray | memoryview) -> int:
    """Read the header extension value; it must be exactly two bytes (section 2)."""
    if len(value) != 2:
        raise TwccError(f"transport-wide sequence number element has {len(value)} bytes, expected 2")
    return _U16.unpack(bytes(value))[0]


class SeqUnwrapper:
    """Extend 16-bit sequence numbers to a monotonic integer space (wrap 65535 -> 0).

    Each number is placed at the extended value nearest to the last one
    returned (a jump of up to 32767 either way), as libwebrtc's unwrapper does.
    """

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: int | None = None

    def unwrap(self, seq16: int) -> int:
        seq16 &= 0xFFFF
        if self.last is None:
            self.last = seq16
            return seq16
        delta = (seq16 - self.last) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        value = self.last + delta
        if value > self.last:
            self.last = value
        return value


def reference_delta(newer: int, older: int) -> int:
    """``newer - older`` for two reference times (in 64 ms units), modulo 2^24, signed."""
    delta = (newer - older) % _REF_MOD
    return delta - _REF_MOD if delta >= _REF_MOD // 2 else delta


# -- parsed feedback ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacketStatus:
    """One packet of a feedback: its 16-bit sequence number and, if received, its arrival time.

    ``arrival_us`` is in microseconds in the feedback sender's time base:
    ``reference_time * 64000`` plus the deltas up to this packet (section 3.1.5).
    """

    seq: int
    received: bool
    arrival_us: int | None


@dataclass(frozen=True, slots=True)
class TwccFeedback:
    """One transport-cc feedback packet (section 3.1), decoded.

    ``statuses`` has one symbol per reported packet (``packet status count``
    of them, as bytes: 0 not received, 1 small, 2 large delta); ``deltas``
    one receive delta in 250 us ticks per received packet, in order.
    :meth:`received` costs in proportion to the received packets, not the
    status count (a 40-byte FCI can announce 65535 statuses);
    :meth:`packets` lists every status.
    """

    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    reference_time: int  # signed 24-bit, 64 ms units
    fb_count: int
    statuses: bytes
    deltas: tuple[int, ...]

    @property
    def status_count(self) -> int:
        return len(self.statuses)

    @property
    def reference_us(self) -> int:
        return self.reference_time * REFERENCE_TICK_US

    def packets(self) -> list[PacketStatus]:
        """Every reported packet in sequence order, with its arrival time when received."""
        out = []
        ticks = self.reference_time * _TICKS_PER_REFERENCE
        deltas = iter(self.deltas)
        base = self.base_seq
        for i, symbol in enumerate(self.statuses):
            seq = (base + i) & 0xFFFF
            if symbol == NOT_RECEIVED:
                out.append(PacketStatus(seq, False, None))
            else:
                ticks += next(deltas)
                out.append(PacketStatus(seq, True, ticks * DELTA_TICK_US))
        return out

    def received(self) -> list[tuple[int, int]]:
        """``(seq16, arrival_us)`` of the received packets, in sequence order."""
        ticks = accumulate(self.deltas, initial=self.reference_time * _TICKS_PER_REFERENCE)
        next(ticks)
        base = self.base_seq
        statuses = self.statuses if isinstance(self.statuses, bytes) else bytes(self.statuses)
        return [
            ((base + i) & 0xFFFF, t * DELTA_TICK_US)
            for i, t in zip((m.start() for m in _RECEIVED.finditer(statuses)), ticks)
        ]

    def to_item(self) -> rtcp.TransportCc:
        """The RTCP item: the FCI encoded with :func:`build`'s chunk choice, zero-padded to 32 bits."""
        fci = _encode_fci(self)
        return rtcp.TransportCc(self.sender_ssrc, self.media_ssrc, fci + b"\x00" * (-len(fci) % 4))

    def __bytes__(self) -> bytes:
        return bytes(self.to_item())


def parse_fci(fci: bytes | bytearray | memoryview, sender_ssrc: int = 0, media_ssrc: int = 0) -> TwccFeedback:
    """Decode a transport-cc FCI (section 3.1); raises only :class:`TwccError`."""
    fci = bytes(fci)
    size = len(fci)
    if size < 8:
        raise TwccError(f"transport-cc FCI of {size} bytes is shorter than its 8-byte header (section 3.1)")
    base_seq, count, word = _FCI_HEADER.unpack_from(fci, 0)
    reference = word >> 8
    if reference & 0x800000:
        reference -= _REF_MOD
    fb_count = word & 0xFF
    statuses = bytearray()
    pos = 8
    while len(statuses) < count:
        if pos + 2 > size:
            raise TwccError(
                f"transport-cc packet chunks end after {len(statuses)} of {count} packet statuses (section 3.1.2)"
            )
        (chunk,) = _U16.unpack_from(fci, pos)
        pos += 2
        if not chunk & 0x8000:  # run-length chunk, section 3.1.3
            symbol, run = (chunk >> 13) & 0x3, chunk & 0x1FFF
            if run == 0:
                raise TwccError("transport-cc run-length chunk with a zero run length (section 3.1.3)")
            if symbol == RESERVED:
                raise TwccError("transport-cc run-length chunk with the reserved symbol 11 (section 3.1.1)")
            statuses += bytes((symbol,)) * min(run, count - len(statuses))
        elif not chunk & 0x4000:  # 1-bit status vector, section 3.1.4
            for bit in range(13, -1, -1):
                if len(statuses) == count:
                    break
                statuses.append((chunk >> bit) & 1)
        else:  # 2-bit status vector
            for shift in range(12, -1, -2):
                if len(statuses) == count:
                    break
                symbol = (chunk >> shift) & 0x3
                if symbol == RESERVED:
                    raise TwccError("transport-cc status vector with the reserved symbol 11 (section 3.1.1)")
                statuses.append(symbol)
    # receive deltas (section 3.1.5), run by run of received packets: in proportion to what was received
    deltas: list[int] = []
    for match in _RECEIVED_RUN.finditer(statuses):
        run = match.group()
        if LARGE not in run:
            n = len(run)
            if pos + n > size:
                raise TwccError(f"transport-cc receive deltas end after {len(deltas) + size - pos} deltas "
                                "(section 3.1.5)")
            deltas += fci[pos : pos + n]
            pos += n
            continue
        for symbol in run:
            if symbol == SMALL:
                if pos + 1 > size:
                    raise TwccError(f"transport-cc receive deltas end after {len(deltas)} deltas (section 3.1.5)")
                deltas.append(fci[pos])
                pos += 1
            else:
                if pos + 2 > size:
                    raise TwccError(f"transport-cc receive deltas end after {len(deltas)} deltas (section 3.1.5)")
                deltas.append(_S16.unpack_from(fci, pos)[0])
                pos += 2
    rest = size - pos
    if rest > 3:
        raise TwccError(f"transport-cc FCI has {rest} bytes after its receive deltas")
    if any(fci[pos:]):
        raise TwccError("transport-cc FCI padding after the receive deltas is not zero")
    return TwccFeedback(sender_ssrc, media_ssrc, base_seq, reference, fb_count, bytes(statuses), tuple(deltas))


def parse_item(item: rtcp.TransportCc) -> TwccFeedback:
    """Decode the FCI of a parsed :class:`~callsgw.wire.rtcp.TransportCc` item."""
    return parse_fci(item.fci, item.sender_ssrc, item.media_ssrc)


def parse_compound(data: bytes | bytearray | memoryview) -> list[TwccFeedback]:
    """Every transport-cc feedback in a (decrypted) RTCP compound, in order.

    The compound is framed by :func:`callsgw.wire.rtcp.parse`; raises
    :class:`~callsgw.wire.rtcp.RtcpError` (or :class:`TwccError`) on anything malformed.
    """
    return [parse_item(item) for item in rtcp.parse(data).items if isinstance(item, rtcp.TransportCc)]


# -- building -----------------------------------------------------------------------------


class _ChunkEncoder:
    """Greedy packet-chunk encoder (section 3.1.2-3.1.4).

    Symbols collect in ``buf`` as long as one chunk can still hold them all: up
    to 7 of any kind (a 2-bit vector), up to 14 without a large delta (a 1-bit
    vector), or any number up to 8191 while they are all the same (a run).
    When the next symbol does not fit, a chunk is emitted first.
    """

    __slots__ = ("chunks", "buf", "all_same", "has_large")

    def __init__(self) -> None:
        self.chunks: list[int] = []
        self.buf: list[int] = []
        self.all_same = True
        self.has_large = False

    def _can_add(self, symbol: int) -> bool:
        n = len(self.buf)
        if n < 7:
            return True
        if n < 14 and not self.has_large and symbol != LARGE:
            return True
        return self.all_same and symbol == self.buf[0] and n < MAX_RUN_LENGTH

    def _reset(self, rest: list[int]) -> None:
        self.buf = rest
        self.all_same = all(s == rest[0] for s in rest) if rest else True
        self.has_large = LARGE in rest

    def _emit(self) -> None:
        buf = self.buf
        if self.all_same:
            self.chunks.append((buf[0] << 13) | len(buf))
            self._reset([])
        elif len(buf) == 14:
            self.chunks.append(_one_bit(buf))
            self._reset([])
        else:  # 7..13 symbols with a large delta about: a 2-bit vector of the first 7
            self.chunks.append(_two_bit(buf[:7]))
            self._reset(buf[7:])

    def add(self, symbol: int) -> None:
        while not self._can_add(symbol):
            self._emit()
        if self.buf and symbol != self.buf[0]:
            self.all_same = False
        if symbol == LARGE:
            self.has_large = True
        self.buf.append(symbol)

    def pending_chunks(self) -> int:
        """Chunks the encoding would have if it ended now."""
        return len(self.chunks) + (1 if self.buf else 0)

    def finish(self) -> list[int]:
        buf = self.buf
        if buf:
            if self.all_same:
                self.chunks.append((buf[0] << 13) | len(buf))
            elif len(buf) <= 7:
                self.chunks.append(_two_bit(buf))
            else:
                self.chunks.append(_one_bit(buf))
            self._reset([])
        return self.chunks


def _one_bit(symbols: Sequence[int]) -> int:
    word = 0x8000
    for i, s in enumerate(symbols):
        word |= (s & 1) << (13 - i)
    return word


def _two_bit(symbols: Sequence[int]) -> int:
    word = 0xC000
    for i, s in enumerate(symbols):
        word |= s << (12 - 2 * i)
    return word


def _encode_fci(fb: TwccFeedback) -> bytes:
    enc = _ChunkEncoder()
    for s in fb.statuses:
        enc.add(s)
    out = bytearray(
        _FCI_HEADER.pack(
            fb.base_seq & 0xFFFF,
            len(fb.statuses),
            ((fb.reference_time % _REF_MOD) << 8) | (fb.fb_count & 0xFF),
        )
    )
    for chunk in enc.finish():
        out += _U16.pack(chunk)
    deltas = iter(fb.deltas)
    for s in fb.statuses:
        if s == SMALL:
            out.append(next(deltas))
        elif s == LARGE:
            out += _S16.pack(next(deltas))
    return bytes(out)


def _packet_bytes(sender_ssrc: int, media_ssrc: int, fci: bytes) -> bytes:
    fci += b"\x00" * (-len(fci) % 4)
    return bytes(rtcp.TransportCc(sender_ssrc & 0xFFFFFFFF, media_ssrc & 0xFFFFFFFF, fci))


def build(
    packets: Iterable[tuple[int, int | None]],
    *,
    sender_ssrc: int,
    media_ssrc: int,
    fb_count: int = 0,
    max_size: int = DEFAULT_MAX_SIZE,
) -> list[bytes]:
    """Encode ``(extended sequence number, arrival_us or None)`` pairs as transport-cc RTCP packets.

    Sequence numbers must be strictly increasing; a gap counts as packets not
    received. Arrival times are integer microseconds from any origin (they are
    rounded to 250 us ticks without drift). Each returned packet is one
    RTPFB FMT 15 (its FCI zero-padded to 32 bits), with feedback packet counts
    ``fb_count``, ``fb_count + 1``, ... modulo 256. A packet is split off when
    the next status would take it past ``max_size`` bytes or 65535 statuses, or
    when a receive delta does not fit 16 signed bits (then the next packet
    gets a new reference time).
    """
    if max_size < _MIN_PACKET + 8:
        raise ValueError(f"max_size {max_size} is too small for a transport-cc packet")
    out: list[bytes] = []
    # current packet state
    base: int | None = None
    enc = _ChunkEncoder()
    header_ref = 0
    ref_ticks: int | None = None  # reference time in 250 us ticks, set by the first received packet
    last_ticks = 0
    status_count = 0
    deltas = bytearray()
    last_seq: int | None = None
    count = fb_count

    def flush() -> None:
        nonlocal base, enc, ref_ticks, status_count, deltas, count
        if base is None or status_count == 0:
            return
        chunks = enc.finish()
        fci = bytearray(_FCI_HEADER.pack(base & 0xFFFF, status_count, ((header_ref % _REF_MOD) << 8) | (count & 0xFF)))
        for chunk in chunks:
            fci += _U16.pack(chunk)
        fci += deltas
        out.append(_packet_bytes(sender_ssrc, media_ssrc, bytes(fci)))
        count = (count + 1) & 0xFF
        base, enc, ref_ticks, status_count, deltas = None, _ChunkEncoder(), None, 0, bytearray()

    def size_with(extra_delta: int) -> int:
        raw = _MIN_PACKET + 2 * (enc.pending_chunks() + 1) + len(deltas) + extra_delta
        return raw + (-raw % 4)

    def add(seq: int, arrival_us: int | None) -> None:
        nonlocal base, header_ref, ref_ticks, last_ticks, status_count
        for _attempt in range(2):
            if base is None:
                base = seq
            if arrival_us is None:
                symbol, delta = NOT_RECEIVED, 0
                dsize = 0
            else:
                ticks = _round_div(arrival_us, DELTA_TICK_US)
                if ref_ticks is None:
                    ref = ticks // _TICKS_PER_REFERENCE
                    reference_ticks = ref * _TICKS_PER_REFERENCE
                    delta = ticks - reference_ticks
                else:
                    delta = ticks - last_ticks
                if 0 <= delta <= 0xFF:
                    symbol, dsize = SMALL, 1
                elif -0x8000 <= delta <= 0x7FFF:
                    symbol, dsize = LARGE, 2
                else:
                    symbol, dsize = LARGE, -1
            fits = dsize >= 0 and status_count < MAX_STATUS_COUNT and size_with(dsize) <= max_size
            if not fits and status_count:
                flush()
                continue  # retry in a fresh packet (whose first delta always fits)
            if arrival_us is not None:
                if ref_ticks is None:
                    header_ref = ticks // _TICKS_PER_REFERENCE
                    ref_ticks = header_ref * _TICKS_PER_REFERENCE
                last_ticks = ticks
                if symbol == SMALL:
                    deltas.append(delta)
                else:
                    deltas.extend(_S16.pack(delta))
            enc.add(symbol)
            status_count += 1
            return
        raise AssertionError("unreachable: a fresh feedback packet takes any first status")

    for seq, arrival in packets:
        seq = int(seq)
        if last_seq is not None:
            if seq <= last_seq:
                raise ValueError(f"sequence numbers must increase: {seq} after {last_seq}")
            if seq - last_seq > MAX_GAP:
                raise ValueError(f"sequence number gap of {seq - last_seq} is larger than {MAX_GAP}")
            for missing in range(last_seq + 1, seq):
                add(missing, None)
        add(seq, None if arrival is None else int(arrival))
        last_seq = seq
    flush()
    return out


def _round_div(value: int, divisor: int) -> int:
    """``value / divisor`` rounded half up, for integers of any sign."""
    return (2 * value + divisor) // (2 * divisor)

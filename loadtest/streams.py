"""Split the RTP in a capture into streams and guess each stream's codec.

A UDP payload is taken as RTP when it is at least 12 bytes, its version is 2 (first byte
128..191, so never STUN, DTLS, ZRTP or TURN by RFC 7983), its payload type is not in 64..95
(RTCP packet types 192..223 with the marker bit masked off, RFC 5761 section 4) and its CSRC
list and header extension fit in the datagram. Streams are
keyed by (source, destination, SSRC), in order of first appearance.

Codec guess, first match wins:

1. an SDP (``--sdp``) ``a=rtpmap`` for the payload type;
2. the static payload types of RFC 3551 section 6 (PCMU, PCMA, G722, ...);
3. for dynamic payload types, the payload itself: Opus when the RTP timestamp advances, for
   (nearly) every pair of consecutive packets, by the 48 kHz duration the first one's TOC byte
   declares (configuration and frame count; the configuration may change); VP8
   when a packet starting a partition (VP8 payload descriptor S=1, PID=0) carries a key frame
   whose start code is ``9d 01 2a``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.capture import UdpDatagram

__all__ = ["RtpPacket", "Stream", "Codec", "parse_rtp", "split_streams", "parse_sdp", "STATIC_PAYLOAD_TYPES"]


@dataclass(frozen=True)
class Codec:
    name: str
    clock_rate: int | None
    source: str  # "sdp", "static", "guess", "unknown"


# RFC 3551 section 6, table 4 and 5 (audio and video static payload types).
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int]] = {
    0: ("PCMU", 8000),
    3: ("GSM", 8000),
    4: ("G723", 8000),
    5: ("DVI4", 8000),
    6: ("DVI4", 16000),
    7: ("LPC", 8000),
    8: ("PCMA", 8000),
    9: ("G722", 8000),  # clock rate 8000 by RFC 3551's historical error, sampling 16 kHz
    10: ("L16", 44100),
    11: ("L16", 44100),
    12: ("QCELP", 8000),
    13: ("CN", 8000),
    14: ("MPA", 90000),
    15: ("G728", 8000),
    16: ("DVI4", 11025),
    17: ("DVI4", 22050),
    18: ("G729", 8000),
    25: ("CelB", 90000),
    26: ("JPEG", 90000),
    28: ("nv", 90000),
    31: ("H261", 90000),
    32: ("MPV", 90000),
    33: ("MP2T", 90000),
    34: ("H263", 90000),
}

# Opus TOC configuration (RFC 6716 section 3.1) -> frame duration in 48 kHz samples.
_OPUS_FRAME = [480, 960, 1920, 2880] * 3 + [480, 960] * 2 + [120, 240, 480, 960] * 4


@dataclass(frozen=True)
class RtpPacket:
    time: float
    seq: int
    timestamp: int
    ssrc: int
    payload_type: int
    marker: bool
    size: int  # UDP payload bytes
    payload: bytes  # after CSRCs and header extension (padding kept)


def parse_rtp(payload: bytes, time: float) -> RtpPacket | None:
    """An RTP packet, or None when the datagram is not RTP (see the module docstring)."""
    if len(payload) < 12:
        return None
    b0, b1 = payload[0], payload[1]
    if b0 >> 6 != 2 or 64 <= (b1 & 0x7F) <= 95:
        return None
    seq, ts, ssrc = struct.unpack_from("!HII", payload, 2)
    off = 12 + 4 * (b0 & 0x0F)
    if off > len(payload):
        return None  # the CSRC list overruns the datagram: not RTP
    if b0 & 0x10:
        if len(payload) < off + 4:
            return None
        off += 4 + 4 * struct.unpack_from("!H", payload, off + 2)[0]
        if off > len(payload):
            return None  # the header extension overruns the datagram: not RTP
    return RtpPacket(time, seq, ts, ssrc, b1 & 0x7F, bool(b1 & 0x80), len(payload), payload[off:])


@dataclass
class Stream:
    src: tuple[str, int]
    dst: tuple[str, int]
    ssrc: int
    packets: list[RtpPacket] = field(default_factory=list)
    codec: Codec | None = None

    @property
    def payload_type(self) -> int:
        """The most frequent payload type of the stream."""
        counts: dict[int, int] = {}
        for p in self.packets:
            counts[p.payload_type] = counts.get(p.payload_type, 0) + 1
        return max(counts, key=counts.__getitem__)

    @property
    def payload_types(self) -> list[int]:
        return sorted({p.payload_type for p in self.packets})

    @property
    def duration(self) -> float:
        return self.packets[-1].time - self.packets[0].time if self.packets else 0.0

    @property
    def packet_rate(self) -> float:
        """Packets per second (0 for a stream shorter than one interval)."""
        d = self.duration
        return (len(self.packets) - 1) / d if d > 0 else 0.0

    @property
    def bitrate(self) -> float:
        """RTP bits per second (UDP payload, all but the last packet over the duration)."""
        d = self.duration
        return sum(p.size for p in self.packets[:-1]) * 8 / d if d > 0 else 0.0

    def summary(self) -> dict:
        codec = self.codec or Codec("unknown", None, "unknown")
        return {
            "src": f"{self.src[0]}:{self.src[1]}" if ":" not in self.src[0] else f"[{self.src[0]}]:{self.src[1]}",
            "dst": f"{self.dst[0]}:{self.dst[1]}" if ":" not in self.dst[0] else f"[{self.dst[0]}]:{self.dst[1]}",
            "protocol": "udp",
            "ssrc": self.ssrc,
            "payload_type": self.payload_type,
            "codec": codec.name,
            "clock_rate": codec.clock_rate,
            "codec_source": codec.source,
            "packets": len(self.packets),
            "duration_s": round(self.duration, 6),
            "packet_rate": round(self.packet_rate, 3),
            "bitrate_bps": round(self.bitrate, 1),
        }


def parse_sdp(text: str) -> dict[int, tuple[str, int]]:
    """``a=rtpmap`` lines of an SDP: payload type -> (encoding name, clock rate)."""
    out: dict[int, tuple[str, int]] = {}
    for m in re.finditer(r"^a=rtpmap:(\d+)\s+([^/\s]+)/(\d+)", text, re.MULTILINE):
        out[int(m.group(1))] = (m.group(2), int(m.group(3)))
    return out


def load_sdp(path: str | Path) -> dict[int, tuple[str, int]]:
    return parse_sdp(Path(path).read_text(encoding="utf-8", errors="replace"))


def _opus_samples(payload: bytes) -> int | None:
    """48 kHz samples in one Opus packet from its TOC byte (RFC 6716 section 3.1), None if malformed."""
    if not payload:
        return None
    frame = _OPUS_FRAME[payload[0] >> 3]
    code = payload[0] & 3
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(payload) < 2 or not payload[1] & 0x3F:
            return None
        frames = payload[1] & 0x3F
    samples = frame * frames
    return samples if samples <= 5760 else None  # at most 120 ms per packet


def _looks_opus(packets: list[RtpPacket]) -> bool:
    """Opus when the RTP timestamp advances, packet after packet, by the duration each packet's own
    TOC byte declares (the encoder may switch between SILK, hybrid and CELT configurations)."""
    if len(packets) < 3 or max(p.size for p in packets) > 1500:
        return False
    good = total = 0
    for a, b in zip(packets, packets[1:]):
        if (b.seq - a.seq) & 0xFFFF != 1:
            continue
        total += 1
        samples = _opus_samples(a.payload)
        good += samples is not None and (b.timestamp - a.timestamp) & 0xFFFFFFFF == samples
    return total >= 2 and good >= 0.9 * total


def _looks_vp8(packets: list[RtpPacket]) -> bool:
    for p in packets:
        d = p.payload
        if len(d) < 10 or d[0] & 0x48:  # reserved bits set: not a VP8 descriptor
            continue
        if not (d[0] & 0x10) or d[0] & 0x07:  # not the start of partition 0
            continue
        off = 1
        if d[0] & 0x80:  # X: extension byte
            x = d[1]
            off = 2
            if x & 0x80:  # I: picture id, 1 or 2 bytes
                off += 2 if d[off] & 0x80 else 1
            if x & 0x40:  # L: TL0PICIDX
                off += 1
            if x & 0x30:  # T or K
                off += 1
        frame = d[off:]
        if len(frame) >= 6 and not frame[0] & 0x01 and frame[3:6] == b"\x9d\x01\x2a":
            return True
    return False


def guess_codec(payload_type: int, packets: list[RtpPacket], sdp: dict[int, tuple[str, int]] | None = None) -> Codec:
    if sdp and payload_type in sdp:
        name, rate = sdp[payload_type]
        return Codec(name, rate, "sdp")
    if payload_type in STATIC_PAYLOAD_TYPES:
        name, rate = STATIC_PAYLOAD_TYPES[payload_type]
        return Codec(name, rate, "static")
    mine = [p for p in packets if p.payload_type == payload_type]
    if _looks_vp8(mine):
        return Codec("VP8", 90000, "guess")
    if _looks_opus(mine):
        return Codec("opus", 48000, "guess")
    return Codec("unknown", None, "unknown")


def split_streams(
    datagrams: Iterable[UdpDatagram], sdp: dict[int, tuple[str, int]] | None = None
) -> list[Stream]:
    """RTP streams of the datagrams, keyed by (src, dst, SSRC), in order of first packet."""
    streams: dict[tuple, Stream] = {}
    for d in datagrams:
        p = parse_rtp(d.payload, d.time)
        if p is None:
            continue
        key = (d.src, d.dst, p.ssrc)
        s = streams.get(key)
        if s is None:
            s = streams[key] = Stream(d.src, d.dst, p.ssrc)
        s.packets.append(p)
    out = list(streams.values())
    for s in out:
        s.codec = guess_codec(s.payload_type, s.packets, sdp)
    return out

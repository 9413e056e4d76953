"""First-byte classification of datagrams arriving on a WebRTC media port.

RFC 7983 section 7 assigns ranges of the first byte to the protocols that may
share one UDP 5-tuple:

=========  ==============================
first byte protocol
=========  ==============================
0..3       STUN (RFC 8489)
16..19     ZRTP (RFC 6189)           -> UNKNOWN here
20..63     DTLS (RFC 6347 / RFC 9147)
64..79     TURN channel (RFC 8656)   -> UNKNOWN here
128..191   RTP or RTCP (version 2)
=========  ==============================

RTP and RTCP on one port (RFC 5761) are told apart by the second byte. RFC
5761 section 4 reserves RTCP packet types 192..223 and forbids RTP payload
types 64..95 on a muxed port, so that an RTP packet with the marker bit set can
never look like RTCP. As libwebrtc does, the split tests the second byte with
the marker bit masked off: ``byte1 & 0x7F`` in 64..95 is RTCP, anything else
is RTP. This covers RFC 5761's 192..223 and also classifies the forbidden
payload types 64..95 without the marker bit as RTCP, where SRTCP
authentication will reject them.

The gateway classifies once at the edge and carries the :class:`PacketKind`
from then on. This module only looks at one or two bytes: validating each
protocol's framing is its parser's job.
"""

from __future__ import annotations

import enum

__all__ = ["PacketKind", "classify"]


class PacketKind(enum.Enum):
    """What a datagram is, from its first byte (RFC 7983 section 7)."""

    STUN = "stun"
    DTLS = "dtls"
    RTP = "rtp"
    RTCP = "rtcp"
    #: Empty input, ZRTP, TURN ChannelData, and every unassigned first byte.
    UNKNOWN = "unknown"


def _first_byte_table() -> tuple[PacketKind, ...]:
    table = [PacketKind.UNKNOWN] * 256
    for b in range(0, 4):
        table[b] = PacketKind.STUN
    for b in range(20, 64):
        table[b] = PacketKind.DTLS
    for b in range(128, 192):
        table[b] = PacketKind.RTP  # split into RTP / RTCP by the second byte
    return tuple(table)


_BY_FIRST_BYTE = _first_byte_table()

_STUN = PacketKind.STUN
_DTLS = PacketKind.DTLS
_RTP = PacketKind.RTP
_RTCP = PacketKind.RTCP
_UNKNOWN = PacketKind.UNKNOWN


def classify(data: bytes | bytearray | memoryview) -> PacketKind:
    """Classify one datagram by its first byte (RFC 7983 section 7).

    RTP and RTCP are split per RFC 5761 section 4 (see the module docstring).
    A datagram whose first byte says RTP/RTCP but which has no second byte is
    ``UNKNOWN``. Never raises for any bytes-like input.
    """
    if not data:
        return _UNKNOWN
    kind = _BY_FIRST_BYTE[data[0]]
    if kind is _RTP:
        if len(data) < 2:
            return _UNKNOWN
        if 64 <= (data[1] & 0x7F) <= 95:
            return _RTCP
    return kind

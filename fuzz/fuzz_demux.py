"""The RFC 7983 first-byte demultiplexer, then the parser the gateway hands each kind to.

Documented: :func:`callsgw.wire.demux.classify` never raises for any bytes-like input; STUN goes
to ``stun.parse`` (``StunError``), RTP to ``rtp.validate`` (``RtpError``), RTCP to
``rtcp.parse`` (``RtcpError``; the gateway parses RTCP after SRTCP unprotect, here the plaintext).
"""

from __future__ import annotations

from callsgw.wire import demux, rtcp, rtp, stun
from callsgw.wire.demux import PacketKind


def TestOneInput(data: bytes) -> None:
    kind = demux.classify(data)
    assert isinstance(kind, PacketKind)
    assert demux.classify(bytearray(data)) is kind
    assert demux.classify(memoryview(data)) is kind
    if kind is PacketKind.STUN:
        try:
            stun.parse(data)
        except stun.StunError:
            pass
    elif kind is PacketKind.RTP:
        try:
            rtp.validate(data)
        except rtp.RtpError:
            pass
    elif kind is PacketKind.RTCP:
        try:
            rtcp.parse(data)
        except rtcp.RtcpError:
            pass

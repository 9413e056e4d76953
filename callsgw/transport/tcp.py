"""ICE-TCP framing and the first-bytes rule of the shared TCP port (sans-I/O).

RFC 6544 section 3 carries ICE, DTLS and SRTP over TCP in RFC 4571 frames: each packet is
preceded by a 16-bit big-endian length (RFC 4571 section 2). The gateway accepts ICE-TCP only
as the passive side (RFC 6544 section 4.1, ``tcptype passive``), on the TCP port that also serves
HTTPS and WSS, or on a port of its own.

Telling the two apart (:func:`classify_start`) needs the first ten bytes at most:

* a TLS connection starts with a handshake record: content type 22 (0x16), then the record
  version 0x03 0x0N (RFC 8446 section 5.1); read as an RFC 4571 length that would be 5,6xx bytes,
  far more than any first frame the gateway accepts;
* an ICE-TCP connection's first frame must be a STUN binding request (RFC 6544 section 7.1: the
  active side sends its connectivity check first): length 20..:data:`MAX_FIRST_FRAME`, then the
  STUN header with message type 0x0001 and the magic cookie (RFC 8489 section 5);
* anything else (plain HTTP when TLS is left to a proxy, ``GET ...``) is not ICE-TCP and goes to
  the HTTP/WebSocket server as it is.

:class:`FrameDecoder` cuts a byte stream into frames with a buffer that never holds more than
one frame plus its length field; a frame longer than the largest datagram the media port accepts
is a :class:`FramingError` (the stream cannot be resynchronised, so the connection is closed).
"""

from __future__ import annotations

import enum
import struct

from callsgw.wire.stun import MAGIC_COOKIE

__all__ = [
    "FrameDecoder",
    "FramingError",
    "MAX_FIRST_FRAME",
    "MAX_FRAME",
    "Start",
    "classify_start",
    "frame",
]

#: Largest frame accepted: the media port's largest datagram (callsgw.transport.mux.MAX_DATAGRAM).
MAX_FRAME = 2048
#: Largest first frame (the STUN binding request of RFC 6544 section 7.1). Browsers send about
#: 100 bytes; 548 leaves room for every attribute ICE defines, and rules out every TLS record.
MAX_FIRST_FRAME = 548
#: Bytes :func:`classify_start` may need before it can decide.
START_BYTES = 10
_STUN_HEADER = 20
_BINDING_REQUEST = b"\x00\x01"  # RFC 8489 section 5: class request, method Binding
_TLS_HANDSHAKE = 0x16  # RFC 8446 section 5.1 ContentType.handshake


class FramingError(ValueError):
    """The byte stream is not RFC 4571 framing the gateway accepts."""


class Start(enum.Enum):
    """What a new TCP connection on the shared port is, from its first bytes."""

    TLS = "tls"  # a TLS handshake record: HTTPS or WSS
    ICE = "ice"  # an RFC 4571 frame holding a STUN binding request: ICE-TCP
    OTHER = "other"  # neither (plain HTTP behind a TLS proxy, or garbage): the HTTP server decides
    NEED_MORE = "need_more"  # too few bytes yet


def classify_start(data: bytes) -> Start:
    """Classify a connection by the bytes it sent first (see the module docstring)."""
    if not data:
        return Start.NEED_MORE
    if data[0] == _TLS_HANDSHAKE:
        return Start.TLS
    # An ICE-TCP first frame is at most MAX_FIRST_FRAME (< 0x300) bytes: its first byte is 0..2.
    if data[0] > (MAX_FIRST_FRAME >> 8):
        return Start.OTHER
    if len(data) < START_BYTES:
        # every prefix so far could still be an ICE start: wait for the rest
        return Start.NEED_MORE if _could_be_ice(data) else Start.OTHER
    return Start.ICE if _could_be_ice(data) else Start.OTHER


def _could_be_ice(data: bytes) -> bool:
    """True if ``data`` (up to START_BYTES long) agrees with an ICE-TCP start so far."""
    want = bytearray(START_BYTES)
    if len(data) >= 2:
        length = (data[0] << 8) | data[1]
        if not _STUN_HEADER <= length <= MAX_FIRST_FRAME or length % 4:
            return False  # STUN messages are a multiple of 4 bytes (RFC 8489 section 5)
    want[2:4] = _BINDING_REQUEST
    want[6:10] = MAGIC_COOKIE
    for i in range(2, min(len(data), START_BYTES)):
        if i in (4, 5):
            continue  # the STUN message length: checked against the frame length below
        if data[i] != want[i]:
            return False
    if len(data) >= 6:
        stun_length = (data[4] << 8) | data[5]
        if stun_length + _STUN_HEADER != (data[0] << 8 | data[1]):
            return False  # the frame must hold exactly one STUN message
    return True


def frame(packet: bytes) -> bytes:
    """One RFC 4571 frame: a 16-bit length, then the packet."""
    if len(packet) > 0xFFFF:
        raise FramingError(f"a packet of {len(packet)} bytes does not fit an RFC 4571 frame")
    return struct.pack("!H", len(packet)) + packet


class FrameDecoder:
    """Cuts an RFC 4571 byte stream into packets, holding at most one frame in its buffer.

    :meth:`feed` returns the complete packets in the bytes given so far. Zero-length frames
    carry nothing and are skipped (counted in ``empty``); a frame longer than ``max_frame`` is a
    :class:`FramingError`, after which the decoder refuses everything (the stream is lost).
    """

    def __init__(self, max_frame: int = MAX_FRAME):
        if not 1 <= max_frame <= 0xFFFF:
            raise ValueError("max_frame must be 1..65535")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # the current frame's length, once its length field is in
        self.empty = 0
        self.frames = 0
        self.failed = False

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (never more than max_frame + 2)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self.failed:
            raise FramingError("the stream already failed")
        out: list[bytes] = []
        view = memoryview(data)
        while view:
            if self._need is None:
                take = min(2 - len(self._buf), len(view))
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) < 2:
                    break
                need = (self._buf[0] << 8) | self._buf[1]
                self._buf.clear()
                if need == 0:
                    self.empty += 1
                    continue
                if need > self.max_frame:
                    self.failed = True
                    raise FramingError(f"frame of {need} bytes is longer than {self.max_frame}")
                self._need = need
            take = min(self._need - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self._need:
                out.append(bytes(self._buf))
                self._buf.clear()
                self._need = None
                self.frames += 1
        return out

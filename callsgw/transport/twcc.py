"""Transport-wide sequence numbers on the Python media path (issue #19), sans-I/O.

draft-holmer-rmcat-transport-wide-cc-extensions-01 gives every RTP packet on a
transport (all its SSRCs, audio and video, under BUNDLE) one 16-bit sequence
number in a header extension (section 2), and the receiver reports when each one
arrived (section 3). The gateway plays both ends:

* **toward a publisher** it is the receiver: it logs each arriving number with
  its arrival time, and the router turns the log into transport-cc feedback
  (:mod:`callsgw.wire.twcc`) so the publisher's own estimator can ramp up;
* **toward a subscriber** it is the sender: every copy it sends carries the
  gateway's own per-transport number (whatever the publisher's was; numbers are
  per transport, and each subscriber's transport is its own), and each send is
  logged with its RTP size, so the subscriber's transport-cc feedback tells the
  gateway what its downlink carries (:mod:`callsgw.sfu.bwe`). The datapath
  stamps (``PythonDatapath``, the engine's ``_twcc_stamp``), because only it
  knows a retransmission: that is the same SRTP index again and must be
  byte-identical under AES-GCM, so it carries the number of its first send.

The native engine keeps the same two logs per session in C
(``Engine.session_twcc``/``Engine.take_twcc``); :class:`TwccLog` is their twin
for ``media_engine = "python"``, with the same :meth:`TwccLog.take` result, so
what reads them does not care which engine ran. Both are bounded rings:
entries not drained in time are overwritten and counted (``overflow``).

Times are ``CLOCK_REALTIME`` nanoseconds, as the kernel's ``SO_TIMESTAMPNS``
receive stamps the native engine uses; only differences between them matter.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

import numpy as np

from callsgw.wire.rtp import RtpError, element_at

TWCC_LOG = 1024  # entries per direction (= the engine's TWCC_LOG)


def _number_at(packet: bytes, ext_id: int) -> int | None:
    """Where the 2-byte transport-wide sequence number (section 2) is in ``packet``, or None (off: ID 0)."""
    if not ext_id:
        return None
    try:
        where = element_at(packet, ext_id)
    except RtpError:
        return None
    return where[0] if where is not None and where[1] == 2 else None


def _empty_arrivals() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, np.uint16), np.empty(0, np.int64)


class TwccLog:
    """One transport's transport-wide sequence numbers: arrivals in, sends out (see the module docstring).

    ``in_id``/``out_id`` are the RFC 8285 element IDs the peer negotiated for the
    transport-wide sequence number in its packets and in ours (0: off);
    ``feedback_up`` mirrors the engine's flag (the peer's transport-cc and REMB
    reach the router). ``clock`` returns nanoseconds (injected in tests).
    """

    def __init__(self, clock: Callable[[], int] = time.time_ns, capacity: int = TWCC_LOG):
        self.clock = clock
        self.in_id = 0
        self.out_id = 0
        self.feedback_up = False
        self.next_seq = 0
        self.overflow = 0
        self._arrivals: deque[tuple[int, int]] = deque(maxlen=capacity)
        self._sent: deque[tuple[int, int, int]] = deque(maxlen=capacity)

    def configure(self, in_id: int, out_id: int, feedback_up: bool) -> None:
        if not (0 <= in_id <= 255 and 0 <= out_id <= 255):
            raise ValueError("header extension IDs are 0..255")
        self.in_id, self.out_id, self.feedback_up = in_id, out_id, bool(feedback_up)

    @property
    def active(self) -> bool:
        return bool(self.in_id or self.out_id)

    def received(self, packet: bytes) -> None:
        """A decrypted RTP packet arrived from the peer: log its number (if it carries one)."""
        at = _number_at(packet, self.in_id)
        if at is not None:
            self._log(self._arrivals, (packet[at] << 8 | packet[at + 1], self.clock()))

    def stamp(self, packet: bytes, seq: int | None = None) -> tuple[bytes, int | None]:
        """Write a transport-wide number into our copy to the peer (the datapath calls this).

        ``seq`` None: this transport's next number, and the send is logged
        with the copy's size; else ``seq`` again (a retransmission of an index
        sent before, which must be byte-identical; not logged). Returns the
        packet (a new one when stamped) and the number written, or None when
        the copy carries no transport-wide element (the publisher's packet had
        none) or stamping is off.
        """
        at = _number_at(packet, self.out_id)
        if at is None:
            return packet, None
        first = seq is None
        if first:
            seq = self.next_seq
            self.next_seq = (seq + 1) & 0xFFFF
        stamped = bytearray(packet)
        stamped[at] = seq >> 8
        stamped[at + 1] = seq & 0xFF
        if first:
            self._log(self._sent, (seq, self.clock(), min(len(packet), 0xFFFF)))
        return bytes(stamped), seq

    def _log(self, ring: deque, entry: tuple) -> None:
        if len(ring) == ring.maxlen:
            self.overflow += 1
        ring.append(entry)

    def take(self):
        """Drain both logs, oldest first, as ``Engine.take_twcc`` returns them.

        ``(arrivals, sent)``: ``arrivals`` = (uint16 numbers, int64 ns);
        ``sent`` = (uint16 numbers, int64 ns, uint16 sizes).
        """
        if self._arrivals:
            seq, ns = zip(*self._arrivals)
            arrivals = (np.array(seq, np.uint16), np.array(ns, np.int64))
            self._arrivals.clear()
        else:
            arrivals = _empty_arrivals()
        if self._sent:
            seq, ns, size = zip(*self._sent)
            sent = (np.array(seq, np.uint16), np.array(ns, np.int64), np.array(size, np.uint16))
            self._sent.clear()
        else:
            sent = _empty_arrivals() + (np.empty(0, np.uint16),)
        return arrivals, sent

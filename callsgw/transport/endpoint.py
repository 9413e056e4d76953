"""What both ends of a media transport share: the SRTP half, bounded queues, events (sans-I/O).

The gateway's :class:`~callsgw.transport.media.MediaTransport` and the client's
:class:`~callsgw.client.transport.ClientTransport` are opposite roles up to the end of the
handshake: ICE-lite versus controlling ICE (RFC 8445 section 6.1.1), DTLS server versus client
(RFC 5763 section 5). From the moment RFC 5764 section 4.2 keying material exists they are the
same machine, and that machine lives here once:

* :class:`SrtpEndpoint`: ``tx``/``rx`` (:class:`callsgw.srtp.Session`), protecting to and
  unprotecting from the ICE-selected address with :class:`TransportCounters`, a bounded queue of
  datagrams to send and a bounded queue of events (overflow is counted, never raised);
* the events both ends emit: :class:`Connected`, :class:`Failed`, :class:`Closed`,
  :class:`RtpReceived`, :class:`RtcpReceived`;
* :func:`security_record_dict`: the one JSON form of what a transport negotiated (no key
  material), for both ends' records.
"""

from __future__ import annotations

import abc
from collections import Counter, deque
from dataclasses import dataclass, field

from callsgw.dtls.connection import ConnectionClosed, HandshakeCompleted, HandshakeFailed
from callsgw.srtp import SrtpError
from callsgw.wire.demux import PacketKind

__all__ = [
    "Closed",
    "Connected",
    "Failed",
    "MAX_QUEUED_DATAGRAMS",
    "MAX_QUEUED_EVENTS",
    "RtcpReceived",
    "RtpReceived",
    "SrtpEndpoint",
    "TransportCounters",
    "security_record_dict",
]

Address = tuple
MAX_QUEUED_DATAGRAMS = 256
MAX_QUEUED_EVENTS = 1024


# -- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    """DTLS completed: SRTP flows. ``record`` says what was negotiated."""

    record: object


@dataclass(frozen=True)
class Failed:
    """The transport is dead: ``reason`` is ``"ice_failed"``, ``"ice_consent_lost"`` or a
    :class:`callsgw.dtls.FailureReason` value (``"fingerprint_mismatch"``, ...)."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Closed:
    """The association ended: ``"dtls_closed_by_peer"`` (close_notify or alert), ``"dtls_closed"`` or
    the reason given to ``close()``."""

    reason: str


@dataclass(frozen=True)
class RtpReceived:
    packet: bytes  # decrypted RTP
    addr: Address | None = None  # where it came from (the selected address)


@dataclass(frozen=True)
class RtcpReceived:
    packet: bytes  # decrypted (compound) RTCP
    addr: Address | None = None


# -- counters and records ----------------------------------------------------------------


@dataclass
class TransportCounters:
    rtp_in: int = 0
    rtcp_in: int = 0
    rtp_out: int = 0
    rtcp_out: int = 0
    bytes_in: int = 0  # SRTP/SRTCP octets accepted (after authentication)
    bytes_out: int = 0  # SRTP/SRTCP octets sent
    srtp_errors: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)


def security_record_dict(record, selected_pair: dict | None) -> dict:
    """The JSON form shared by the gateway's and the client's transport records.

    ``record`` has ice_local_ufrag, ice_remote_ufrag, ice_restarts, dtls, srtp_profile,
    failure, failure_detail and the three timestamps; no key material.
    """
    return {
        "ice": {
            "local_ufrag": record.ice_local_ufrag,
            "remote_ufrag": record.ice_remote_ufrag,
            "selected_pair": selected_pair,
            "restarts": record.ice_restarts,
        },
        "dtls": record.dtls.as_dict() if record.dtls is not None else None,
        "srtp_profile": record.srtp_profile,
        "failure": record.failure,
        "failure_detail": record.failure_detail,
        "created_at": record.created_at,
        "connected_at": record.connected_at,
        "closed_at": record.closed_at,
    }


# -- the SRTP half -----------------------------------------------------------------------


def _status_name(exc: SrtpError) -> str:
    status = getattr(exc, "status", None)
    return status.name.lower() if status is not None else "error"


class SrtpEndpoint(abc.ABC):
    """The SRTP half of a transport and its bounded queues (see the module docstring).

    A subclass keeps its ICE agent in ``ice``, calls :meth:`_init_endpoint`, sets ``tx``/``rx``
    when its handshake completes (and back to ``None`` when it fails or closes), and says in
    :meth:`_media_address` where media may go now (``None``: not connected).
    """

    tx = None  # callsgw.srtp.Session with this end's write keys
    rx = None  # callsgw.srtp.Session with the peer's write keys
    # callsgw.transport.twcc.TwccLog: the arrivals of the peer's transport-wide sequence numbers are
    # logged here; the datapath stamps ours into the copies (python media engine only: the native
    # engine keeps its own logs); None: off
    twcc = None

    def _init_endpoint(self) -> None:
        self.tx = self.rx = None
        self.counters = TransportCounters()
        self._out: deque[tuple[bytes, Address]] = deque()
        self._events: deque = deque()

    @abc.abstractmethod
    def _media_address(self) -> Address | None:
        """Where SRTP goes now: the selected address once connected, else ``None`` (each end its own rule)."""

    # -- identity (both ends keep their ICE agent in ``self.ice``) ------------------------

    @property
    def local_ufrag(self) -> str:
        return self.ice.local_ufrag

    @property
    def local_pwd(self) -> str:
        return self.ice.local_pwd

    @property
    def selected_address(self) -> Address | None:
        """The peer address of the ICE-selected pair, or ``None``."""
        return self.ice.selected_address

    # -- output ---------------------------------------------------------------------------

    def send_rtp(self, packet: bytes) -> bool:
        """Protect an RTP packet with ``tx`` and queue it to the selected address; False if not possible."""
        return self._send_media(packet, rtcp=False)

    def send_rtcp(self, packet: bytes) -> bool:
        """Protect a (compound) RTCP packet with ``tx`` and queue it; False if not possible."""
        return self._send_media(packet, rtcp=True)

    def _send_media(self, packet: bytes, *, rtcp: bool) -> bool:
        addr = self._media_address()
        if self.tx is None or addr is None:
            self.counters.drops["send_before_connected"] += 1
            return False
        try:
            data = self.tx.protect_rtcp(packet) if rtcp else self.tx.protect(packet)
        except SrtpError as exc:
            self.counters.srtp_errors[f"send_{_status_name(exc)}"] += 1
            return False
        if rtcp:
            self.counters.rtcp_out += 1
        else:
            self.counters.rtp_out += 1
        self.counters.bytes_out += len(data)
        self._send(data, addr)
        return True

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """``(datagram, address)`` pairs to send, oldest first."""
        out = list(self._out)
        self._out.clear()
        return out

    def next_event(self):
        return self._events.popleft() if self._events else None

    # -- input ----------------------------------------------------------------------------

    def _receive_media(self, kind: PacketKind, data: bytes, addr: Address) -> None:
        """Authenticate and decrypt SRTP/SRTCP with ``rx`` (RFC 3711 section 3.3); failures are counted."""
        if self.rx is None:
            self.counters.drops["srtp_before_keys"] += 1
            return
        try:
            if kind is PacketKind.RTP:
                packet = self.rx.unprotect(data)
                self.counters.rtp_in += 1
                event = RtpReceived(packet, addr)
                if self.twcc is not None:
                    self.twcc.received(packet)
            else:
                packet = self.rx.unprotect_rtcp(data)
                self.counters.rtcp_in += 1
                event = RtcpReceived(packet, addr)
        except SrtpError as exc:
            self.counters.srtp_errors[_status_name(exc)] += 1
            return
        self.counters.bytes_in += len(data)
        self._event(event)

    # -- the handshake's outcome ------------------------------------------------------------

    def _apply_dtls_events(self, now: float, *, connected, closed, **session_options) -> None:
        """Act on ``self.dtls``'s events: on completion the RFC 5764 section 4.2 keys become
        ``tx``/``rx`` (with ``session_options``) and the state ``connected``; a failed handshake
        calls ``self._fail``; close_notify or a fatal alert after the handshake drops the keys and
        sets ``closed`` (then :meth:`_dtls_closed`)."""
        while (event := self.dtls.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.tx, self.rx = event.keys.sessions(**session_options)
                self.record.dtls = event.record
                self.record.srtp_profile = event.keys.profile.name
                self.record.connected_at = now
                self.state = connected
                self._event(Connected(self.record))
            elif isinstance(event, HandshakeFailed):
                self._fail(event.reason.value, event.detail, now)
                return
            elif isinstance(event, ConnectionClosed):
                self.state = closed
                self.record.closed_at = now
                self.tx = self.rx = None
                self._dtls_closed()
                self._event(Closed("dtls_closed_by_peer" if event.by_peer else "dtls_closed"))
                return

    def _dtls_closed(self) -> None:
        """The DTLS association ended after the handshake (a subclass stops what else it runs)."""

    # -- queues ---------------------------------------------------------------------------

    def _send(self, data: bytes, addr: Address) -> None:
        if len(self._out) >= MAX_QUEUED_DATAGRAMS:
            self.counters.drops["send_queue_full"] += 1
            return
        self._out.append((data, addr))

    def _event(self, event) -> None:
        if len(self._events) >= MAX_QUEUED_EVENTS:
            self._events.popleft()
            self.counters.drops["event_queue_full"] += 1
        self._events.append(event)

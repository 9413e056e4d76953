"""One participant's media transport: ICE-lite, then DTLS, then SRTP (sans-I/O).

``MediaTransport`` composes the three protocol cores for one participant.
It takes classified datagrams with ``(data, addr, now)`` and returns
datagrams to send, events and a deadline; it never touches a socket or the
clock (the media shells in ``callsgw.server`` do). The SRTP half, the
bounded queues and the events are shared with the client
(:mod:`callsgw.transport.endpoint`).

Order of trust, per packet kind:

* STUN goes to the ICE-lite agent, which answers only authenticated checks.
* DTLS is accepted **only from an address that passed an ICE check**
  (the 2024 "DTLS ClientHello race"); anything else is dropped and counted.
* SRTP/SRTCP is accepted only from a validated address, and only once DTLS
  has produced keys (RFC 5764 section 4.2).

When the handshake completes the transport holds two ``callsgw.srtp``
sessions: ``tx`` with the gateway's (server) write keys and ``rx`` with the
participant's. The security record (``record``) says what was negotiated.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from callsgw.dtls.connection import DtlsConnection
from callsgw.dtls.certificate import DtlsCertificate
from callsgw.dtls.profiles import DtlsPolicy
from callsgw.ice.lite import AddressValidated, ConsentExpired, IceLiteAgent, SelectedAddressChanged
from callsgw.sdp import RemoteTransport
from callsgw.transport import endpoint  # the SRTP half and the events, shared with the client
from callsgw.transport.endpoint import RtcpReceived, RtpReceived, TransportCounters, security_record_dict
from callsgw.transport.twcc import TwccLog
from callsgw.wire.demux import PacketKind

Address = tuple[str, int]

# The gateway's names for the shared events (callsgw.transport.endpoint).
TransportConnected = endpoint.Connected
TransportFailed = endpoint.Failed
TransportClosed = endpoint.Closed
__all__ = [
    "MediaTransport", "RtcpReceived", "RtpReceived", "TransportClosed", "TransportConnected", "TransportCounters",
    "TransportFailed", "TransportSecurityRecord", "TransportState", "security_record_dict",
]


class TransportState(enum.Enum):
    NEW = "new"  # waiting for the first valid ICE check
    CONNECTING = "connecting"  # ICE validated, DTLS handshake running
    CONNECTED = "connected"  # SRTP keys in place
    FAILED = "failed"
    CLOSED = "closed"


@dataclass
class TransportSecurityRecord:
    """What this transport negotiated; never holds key material (issue #3 item 5)."""

    ice_local_ufrag: str
    ice_remote_ufrag: str
    selected_pair: tuple[Address, Address] | None = None  # (gateway, participant)
    ice_restarts: int = 0  # ICE restarts begun (RFC 8445 section 9)
    dtls: object | None = None  # callsgw.dtls.connection.DtlsSecurityRecord
    srtp_profile: str | None = None
    failure: str | None = None
    failure_detail: str | None = None
    created_at: float = 0.0
    connected_at: float | None = None
    closed_at: float | None = None

    def as_dict(self) -> dict:
        pair = self.selected_pair
        return security_record_dict(
            self, {"local": list(pair[0]), "remote": list(pair[1])} if pair else None
        )


class MediaTransport(endpoint.SrtpEndpoint):
    """ICE-lite + DTLS (server role) + SRTP for one participant, on the shared port."""

    def __init__(
        self,
        *,
        certificate: DtlsCertificate,
        remote: RemoteTransport,
        local_address: Address,
        policy: DtlsPolicy | None = None,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        consent_timeout: float = 30.0,
        now: float = 0.0,
    ):
        if local_ufrag is None or local_pwd is None:
            local_ufrag, local_pwd = IceLiteAgent.generate_credentials()
        self.local_address = local_address
        self.remote = remote
        self.state = TransportState.NEW
        self.ice = IceLiteAgent(
            local_ufrag, local_pwd, remote.ice_ufrag, remote.ice_pwd, consent_timeout=consent_timeout, now=now
        )
        self.dtls = DtlsConnection(
            "server", certificate, remote.fingerprint, policy or DtlsPolicy(), now=now
        )
        self.certificate = certificate
        self._init_endpoint()  # tx: the gateway's write keys, rx: the participant's, once DTLS completed
        # transport-wide CC for the python engine (issue #19): off until the call's router configures it
        self.twcc = TwccLog()
        self.record = TransportSecurityRecord(
            ice_local_ufrag=local_ufrag, ice_remote_ufrag=remote.ice_ufrag, created_at=now
        )
        self._dtls_peer: Address | None = None

    # -- ICE restart -----------------------------------------------------------

    def restart_ice(self, local_ufrag: str, local_pwd: str, remote: RemoteTransport) -> None:
        """The participant restarted ICE (RFC 8445 section 9): new credentials on both sides.

        Only ICE starts again (:meth:`IceLiteAgent.restart`): the DTLS
        association and both SRTP sessions carry on, so rollover counters and
        replay windows stay continuous across the move. Media keeps flowing on
        the old address until the first check under the new credentials
        validates the new one; from then on only the new address is accepted.
        The shell must register the new ufrag on the mux
        (:meth:`UdpMux.refresh`). ``ValueError`` if the transport is over or
        the credentials are not new.
        """
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            raise ValueError(f"cannot restart ICE on a transport that is {self.state.value}")
        self.ice.restart(local_ufrag, local_pwd, remote.ice_ufrag, remote.ice_pwd)
        self.remote = remote
        self.record.ice_local_ufrag = local_ufrag
        self.record.ice_remote_ufrag = remote.ice_ufrag
        self.record.ice_restarts += 1

    # -- input ---------------------------------------------------------------

    def receive(self, kind: PacketKind, data: bytes, addr: Address, now: float) -> None:
        """Feed one datagram already classified by the mux (RFC 7983)."""
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            self.counters.drops["transport_closed"] += 1
            return
        if kind is PacketKind.STUN:
            response = self.ice.receive(data, addr, now)
            if response is not None:
                self._send(response, addr)
            self._drain_ice(now)
            return
        if not self.ice.is_validated(addr):
            # RFC 8826 / the ClientHello race: nothing but STUN before ICE.
            self.counters.drops[f"{kind.name.lower()}_from_unvalidated_address"] += 1
            return
        if kind is PacketKind.DTLS:
            self._dtls_peer = addr
            self.dtls.receive_datagram(data, now)
            self._drain_dtls(now)
        elif kind in (PacketKind.RTP, PacketKind.RTCP):
            self._receive_media(kind, data, addr)
        else:
            self.counters.drops["unclassified"] += 1

    def receive_decrypted(self, kind: PacketKind, packet: bytes, addr: Address) -> None:
        """RTP/RTCP the native engine already authenticated and decrypted with ``rx``.

        The engine only decrypts for the address the shell registered, which
        is this transport's ICE-selected address, and only with this
        transport's keys; here the packet becomes the same event as in
        :meth:`receive`. (The engine counts the SRTP octets.)
        """
        if self.state is not TransportState.CONNECTED:
            self.counters.drops["transport_closed"] += 1
            return
        if kind is PacketKind.RTP:
            self.counters.rtp_in += 1
            self._event(RtpReceived(packet, addr))
        else:
            self.counters.rtcp_in += 1
            self._event(RtcpReceived(packet, addr))

    # -- output --------------------------------------------------------------

    def _media_address(self) -> Address | None:
        """SRTP goes to the ICE-selected address, once DTLS produced keys."""
        return self.ice.selected_address if self.state is TransportState.CONNECTED else None

    def get_timer(self) -> float | None:
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            return None  # nothing more to time; a stale deadline would spin the shell
        timers = [t for t in (self.ice.get_timer(), self.dtls.get_timer()) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            return
        self.ice.handle_timer(now)
        self._drain_ice(now)
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            return
        self.dtls.handle_timer(now)
        self._drain_dtls(now)

    def close(self, now: float, reason: str = "closed") -> None:
        """Close the transport (sends DTLS close_notify when connected)."""
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            return
        if self.state is TransportState.CONNECTED:
            self.dtls.close()
            self._flush_dtls()
        self.state = TransportState.CLOSED
        self.record.closed_at = now
        self._event(TransportClosed(reason))

    # -- internals ---------------------------------------------------------

    def _drain_ice(self, now: float) -> None:
        while (ev := self.ice.next_event()) is not None:
            if isinstance(ev, AddressValidated) and self.state is TransportState.NEW:
                self.state = TransportState.CONNECTING
            elif isinstance(ev, SelectedAddressChanged):
                self.record.selected_pair = (self.local_address, ev.new) if ev.new else None
            elif isinstance(ev, ConsentExpired):
                self._fail("ice_consent_lost", "no valid ICE check for the consent timeout (RFC 7675)", now)
                return
        if self.ice.selected_address is not None:
            self.record.selected_pair = (self.local_address, self.ice.selected_address)

    def _flush_dtls(self) -> None:
        target = self._dtls_peer or self.ice.selected_address
        for datagram in self.dtls.datagrams_to_send():
            if target is not None:
                self._send(datagram, target)

    def _drain_dtls(self, now: float) -> None:
        self._flush_dtls()
        # The router may resend identical bytes for a NACK (same SSRC, index and plaintext), so
        # protect must allow a repeat and remember enough history (RFC 4585 retransmission).
        self._apply_dtls_events(now, connected=TransportState.CONNECTED, closed=TransportState.CLOSED,
                                replay_window=512, allow_repeat_tx=True)

    def _fail(self, reason: str, detail: str, now: float) -> None:
        self.state = TransportState.FAILED
        self.record.failure = reason
        self.record.failure_detail = detail
        self.record.closed_at = now
        self.tx = self.rx = None
        self._event(TransportFailed(reason, detail))

"""The client's media transport: controlling ICE, then DTLS (client role), then SRTP (sans-I/O).

``ClientTransport`` is the mirror image of the gateway's
:class:`callsgw.transport.media.MediaTransport`. It composes three cores:

1. :class:`callsgw.client.ice.IceControllingAgent` runs the connectivity
   checks against the gateway's ICE-lite candidates and selects a pair
   (RFC 8445), then keeps consent fresh (RFC 7675);
2. once a pair is selected, :class:`callsgw.dtls.DtlsConnection` in the
   **client** role (``a=setup:active``, RFC 8842 section 5) sends its
   ClientHello to the selected address and pins the gateway's certificate to
   the SDP fingerprint in OpenSSL's verify callback (RFC 8122 section 5);
3. the RFC 5764 section 4.2 keying material becomes two
   :class:`callsgw.srtp.Session` s: ``tx`` with the client write keys and
   ``rx`` with the server's.

ICE restart (RFC 8445 section 9): :meth:`ClientTransport.begin_ice_restart`
makes a second ICE agent with new credentials for the restart offer, and
:meth:`ClientTransport.complete_ice_restart` starts its checks with the
gateway's new credentials from the answer. Until it selects a pair the old
agent keeps carrying media (and its consent expiring is not a failure while
the restart runs); then it replaces the old one (:class:`IceRestarted`). DTLS
and the SRTP sessions are untouched, so the keys, rollover counters and
replay windows carry on.

Each datagram is classified once by its first byte (RFC 7983 section 7,
:func:`callsgw.wire.demux.classify`). STUN goes to the ICE agent, which only
accepts answers to its own transactions. DTLS, RTP and RTCP are accepted only
from the selected pair's remote address (GUIDE section 4: never process DTLS
from an address that did not pass a check) and dropped otherwise. Media is
sent only to the selected address, only once keys exist, and never after ICE
consent expired (RFC 7675 section 5.1).

The shell calls :meth:`ClientTransport.receive`, sends
:meth:`ClientTransport.datagrams_to_send`, drains
:meth:`ClientTransport.next_event` and calls
:meth:`ClientTransport.handle_timer` at :meth:`ClientTransport.get_timer`.
Queues are bounded (:data:`MAX_QUEUED_DATAGRAMS`, :data:`MAX_QUEUED_EVENTS`);
overflow is counted, never raised.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from callsgw.client.ice import Address, IceControllingAgent, IceFailed, IceState, PairSelected, generate_credentials
from callsgw.dtls.certificate import DtlsCertificate, fingerprint_digest
from callsgw.dtls.connection import DtlsConnection, DtlsSecurityRecord
from callsgw.dtls.profiles import DtlsPolicy
from callsgw.transport.endpoint import Closed, Connected, Failed, RtcpReceived, RtpReceived, SrtpEndpoint
from callsgw.transport.endpoint import MAX_QUEUED_DATAGRAMS, MAX_QUEUED_EVENTS, TransportCounters  # noqa: F401
from callsgw.transport.endpoint import security_record_dict
from callsgw.wire.demux import PacketKind, classify

__all__ = [
    "ClientSecurityRecord",
    "ClientState",
    "ClientTransport",
    "Closed",
    "Connected",
    "Failed",
    "IceRestartFailed",
    "IceRestarted",
    "MAX_QUEUED_DATAGRAMS",
    "MAX_QUEUED_EVENTS",
    "RtcpReceived",
    "RtpReceived",
    "TransportCounters",
]

MAX_DATAGRAM = 2048  # larger than any STUN, DTLS or SRTP datagram the gateway sends


class ClientState(str, enum.Enum):
    NEW = "new"  # created, remote parameters not applied yet
    CHECKING = "checking"  # ICE connectivity checks running
    CONNECTING = "connecting"  # pair selected, DTLS handshake running
    CONNECTED = "connected"  # SRTP keys in place
    FAILED = "failed"
    CLOSED = "closed"


@dataclass
class ClientSecurityRecord:
    """What the client's transport negotiated; never holds key material."""

    ice_local_ufrag: str
    ice_remote_ufrag: str | None = None
    remote_address: Address | None = None  # the gateway candidate of the selected pair
    mapped_address: Address | None = None  # our address as the gateway saw it
    ice_restarts: int = 0  # ICE restarts completed (RFC 8445 section 9)
    dtls: DtlsSecurityRecord | None = None
    srtp_profile: str | None = None
    failure: str | None = None
    failure_detail: str | None = None
    created_at: float = 0.0
    connected_at: float | None = None
    closed_at: float | None = None

    def as_dict(self) -> dict:
        pair = None
        if self.remote_address:
            pair = {
                "local": list(self.mapped_address) if self.mapped_address else None,
                "remote": list(self.remote_address),
            }
        return security_record_dict(self, pair)


# -- events -------------------------------------------------------------------


@dataclass(frozen=True)
class IceRestarted:
    """An ICE restart completed: media now goes to ``remote_addr`` (``mapped_addr``: us, as the gateway saw us)."""

    remote_addr: Address
    mapped_addr: Address | None


@dataclass(frozen=True)
class IceRestartFailed:
    """The restart's checks failed (``reason`` as :class:`IceFailed`); the old path, if alive, still carries media."""

    reason: str
    detail: str


ClientEvent = Connected | Failed | Closed | IceRestarted | IceRestartFailed | RtpReceived | RtcpReceived


class ClientTransport(SrtpEndpoint):
    """ICE (controlling) + DTLS (client role) + SRTP for one call session (see the module docstring).

    Create it with the session's DTLS certificate (its fingerprint goes into
    the offer) and ICE credentials (generated unless given), then call
    :meth:`start` with the gateway's parameters from the answer.
    ``ice_options`` go to :class:`~callsgw.client.ice.IceControllingAgent`
    (``ta``, ``rto``, ``consent_interval``, ...).
    """

    def __init__(
        self,
        *,
        certificate: DtlsCertificate | None = None,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        policy: DtlsPolicy | None = None,
        now: float = 0.0,
        **ice_options,
    ) -> None:
        if (local_ufrag is None) != (local_pwd is None):
            raise ValueError("give both local_ufrag and local_pwd, or neither")
        if local_ufrag is None or local_pwd is None:
            local_ufrag, local_pwd = generate_credentials()
        self.certificate = certificate or DtlsCertificate.generate()
        self.policy = policy or DtlsPolicy()
        self._ice_options = ice_options
        self.ice = IceControllingAgent(local_ufrag, local_pwd, **ice_options)
        # ICE restart: the next agent, NEW until the answer, then CHECKING next to ``ice``
        self.next_ice: IceControllingAgent | None = None
        self.dtls: DtlsConnection | None = None
        self._init_endpoint()  # tx: the client write keys, rx: the gateway's, once DTLS completed
        self.state = ClientState.NEW
        self.record = ClientSecurityRecord(ice_local_ufrag=local_ufrag, created_at=now)
        self._remote_fingerprint: str | None = None

    # -- identity ------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """Our certificate's SHA-256 fingerprint, ``"AB:CD:..."``, for the offer."""
        return self.certificate.fingerprint

    @property
    def offer_credentials(self) -> tuple[str, str]:
        """The ICE ufrag and password our next offer carries: a pending restart's, else the current ones."""
        agent = self.next_ice if self.next_ice is not None else self.ice
        return agent.local_ufrag, agent.local_pwd

    @property
    def restarting_ice(self) -> bool:
        return self.next_ice is not None

    # -- control -------------------------------------------------------------

    def start(
        self,
        *,
        remote_ufrag: str,
        remote_pwd: str,
        remote_fingerprint: str,
        candidates: Iterable[Address],
        now: float,
    ) -> None:
        """Apply the gateway's answer and start ICE checks to ``candidates`` (best first).

        ``remote_fingerprint`` is the answer's sha-256 fingerprint, which the
        gateway's DTLS certificate must match. Raises ``ValueError`` for bad
        parameters or if already started.
        """
        if self.state is not ClientState.NEW:
            raise ValueError(f"cannot start a transport that is {self.state.value}")
        fingerprint_digest(remote_fingerprint)  # ValueError if malformed
        self.ice.set_remote(remote_ufrag, remote_pwd, candidates)
        self._remote_fingerprint = remote_fingerprint
        self.record.ice_remote_ufrag = remote_ufrag
        self.state = ClientState.CHECKING
        self.ice.start(now)
        self._drain_ice(now)

    def begin_ice_restart(self) -> tuple[str, str]:
        """Prepare an ICE restart (RFC 8445 section 9); return the new ``(ufrag, pwd)`` for the offer.

        Checks start with :meth:`complete_ice_restart` once the gateway
        answered. Calling it again while a restart is pending returns the
        pending credentials (an offer that was rolled back offers them again).
        ``ValueError`` once the transport failed or closed.
        """
        if self.state in (ClientState.NEW, ClientState.FAILED, ClientState.CLOSED):
            raise ValueError(f"cannot restart ICE on a transport that is {self.state.value}")
        if self.next_ice is None:
            ufrag, pwd = generate_credentials()
            self.next_ice = IceControllingAgent(ufrag, pwd, **self._ice_options)
        return self.next_ice.local_ufrag, self.next_ice.local_pwd

    def cancel_ice_restart(self, now: float) -> None:
        """Forget a pending or running restart (its offer was refused); the current agent stays.

        If the current agent has failed meanwhile, the transport fails now.
        """
        if self.next_ice is not None:
            self.next_ice.close()
            self.next_ice = None
            if self.ice.state in (IceState.FAILED, IceState.CLOSED):
                self._fail("ice_consent_lost", "the path failed and the ICE restart was given up", now)

    def complete_ice_restart(self, *, remote_ufrag: str, remote_pwd: str, candidates: Iterable[Address],
                             now: float) -> None:
        """Start the restart's checks with the gateway's new credentials from its answer."""
        agent = self.next_ice
        if agent is None or agent.state is not IceState.NEW:
            raise ValueError("no ICE restart is waiting for an answer")
        if self.state in (ClientState.FAILED, ClientState.CLOSED):
            raise ValueError(f"cannot restart ICE on a transport that is {self.state.value}")
        agent.set_remote(remote_ufrag, remote_pwd, candidates)
        agent.start(now)
        self._drain_ice(now)

    def close(self, now: float, reason: str = "closed") -> None:
        """Close: DTLS close_notify if connected (queued for sending), ICE stops. Emits :class:`Closed`."""
        if self.state in (ClientState.FAILED, ClientState.CLOSED):
            return
        target = self.ice.selected_address
        if self.dtls is not None:
            self.dtls.close()
            if target is not None:
                for datagram in self.dtls.datagrams_to_send():
                    self._send(datagram, target)
        self.ice.close()
        if self.next_ice is not None:
            self.next_ice.close()
            self.next_ice = None
        self.state = ClientState.CLOSED
        self.record.closed_at = now
        self.tx = self.rx = None
        self._event(Closed(reason))

    # -- input ---------------------------------------------------------------

    def receive(self, data: bytes, addr: Address, now: float) -> None:
        """Handle one datagram from ``addr`` (an ``(ip, port)`` pair). Never raises for any ``data``."""
        if self.state in (ClientState.FAILED, ClientState.CLOSED, ClientState.NEW):
            self.counters.drops["not_running"] += 1
            return
        if len(data) > MAX_DATAGRAM:
            self.counters.drops["oversize"] += 1
            return
        kind = classify(data)
        if kind is PacketKind.STUN:
            restart = self.next_ice
            if restart is not None and restart.state is not IceState.NEW and restart.owns(data):
                restart.receive(data, addr, now)
            else:
                self.ice.receive(data, addr, now)
            self._drain_ice(now)
            return
        if kind is PacketKind.UNKNOWN:
            self.counters.drops["unclassified"] += 1
            return
        if addr != self.ice.selected_address:
            # RFC 8445 / GUIDE section 4: nothing but STUN from an unchecked address
            self.counters.drops[f"{kind.name.lower()}_from_unselected_address"] += 1
            return
        if kind is PacketKind.DTLS:
            if self.dtls is None:
                self.counters.drops["dtls_before_selection"] += 1
                return
            self.dtls.receive_datagram(data, now)
            self._drain_dtls(now)
        else:
            self._receive_media(kind, data, addr)

    def _media_address(self) -> Address | None:
        """SRTP goes to the selected pair's gateway address, once DTLS produced keys (and ICE
        consent holds: a failed agent has no selection, RFC 7675 section 5.1)."""
        return self.ice.selected_address if self.state is ClientState.CONNECTED else None

    # -- time ----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest ICE or DTLS deadline, or ``None``."""
        if self.state in (ClientState.FAILED, ClientState.CLOSED, ClientState.NEW):
            return None
        timers = [self.ice.get_timer()]
        if self.next_ice is not None:
            timers.append(self.next_ice.get_timer())
        if self.dtls is not None:
            timers.append(self.dtls.get_timer())
        timers = [t for t in timers if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        if self.state in (ClientState.FAILED, ClientState.CLOSED, ClientState.NEW):
            return
        self.ice.handle_timer(now)
        if self.next_ice is not None:
            self.next_ice.handle_timer(now)
        self._drain_ice(now)
        if self.state in (ClientState.FAILED, ClientState.CLOSED):
            return
        if self.dtls is not None and self.state is ClientState.CONNECTING:
            self.dtls.handle_timer(now)
            self._drain_dtls(now)

    # -- internals -------------------------------------------------------------

    def _drain_ice(self, now: float) -> None:
        if self.next_ice is not None:
            self._drain_restart(now)
        for datagram, addr in self.ice.datagrams_to_send():
            self._send(datagram, addr)
        while (event := self.ice.next_event()) is not None:
            if isinstance(event, IceFailed) and self.next_ice is not None:
                continue  # the old path died; the restart carries on (cancel_ice_restart fails us)
            if isinstance(event, PairSelected):
                self.record.remote_address = event.remote_addr
                self.record.mapped_address = event.mapped_addr
                self._start_dtls(now)
            elif isinstance(event, IceFailed):
                reason = "ice_consent_lost" if event.reason == "consent_expired" else "ice_failed"
                self._fail(reason, event.detail or event.reason, now)
                return

    def _start_dtls(self, now: float) -> None:
        if self.dtls is None and self.state is ClientState.CHECKING:
            # RFC 8842 section 5: the active side starts the handshake,
            # towards the address that just passed a check
            self.state = ClientState.CONNECTING
            self.dtls = DtlsConnection("client", self.certificate, self._remote_fingerprint, self.policy, now=now)
            self._drain_dtls(now)

    def _drain_restart(self, now: float) -> None:
        """Send the restart agent's checks; on its selection it replaces the old agent."""
        agent = self.next_ice
        for datagram, addr in agent.datagrams_to_send():
            self._send(datagram, addr)
        while (event := agent.next_event()) is not None:
            if isinstance(event, PairSelected):
                old, self.ice, self.next_ice = self.ice, agent, None
                old.close()
                self.record.ice_local_ufrag = agent.local_ufrag
                self.record.ice_remote_ufrag = agent.remote_ufrag
                self.record.remote_address = event.remote_addr
                self.record.mapped_address = event.mapped_addr
                self.record.ice_restarts += 1
                # the old agent's queue (consent checks to the old path) is moot now
                old.datagrams_to_send()
                if self.state is ClientState.CHECKING:
                    self._start_dtls(now)  # restarted before the first selection: go on as without
                else:
                    self._event(IceRestarted(event.remote_addr, event.mapped_addr))
                return
            if isinstance(event, IceFailed):
                self.next_ice = None
                if self.ice.state in (IceState.FAILED, IceState.CLOSED):
                    self._fail("ice_failed", f"ICE restart failed: {event.detail or event.reason}", now)
                else:
                    self._event(IceRestartFailed(event.reason, event.detail))
                return

    def _drain_dtls(self, now: float) -> None:
        target = self.ice.selected_address
        for datagram in self.dtls.datagrams_to_send():
            if target is not None:
                self._send(datagram, target)
        self._apply_dtls_events(now, connected=ClientState.CONNECTED, closed=ClientState.CLOSED)

    def _dtls_closed(self) -> None:
        self.ice.close()  # the gateway ended the association: no more consent checks either

    def _fail(self, reason: str, detail: str, now: float) -> None:
        if self.state in (ClientState.FAILED, ClientState.CLOSED):
            return
        self.state = ClientState.FAILED
        self.record.failure = reason
        self.record.failure_detail = detail
        self.record.closed_at = now
        self.tx = self.rx = None
        if reason != "ice_consent_lost" and reason != "ice_failed":
            self.ice.close()  # DTLS failed: stop consent checks too
        if self.next_ice is not None:
            self.next_ice.close()
            self.next_ice = None
        self._event(Failed(reason, detail))

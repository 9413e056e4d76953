"""The asyncio shell of the Python call client: signaling over WebSocket, media over UDP.

:func:`connect` joins a call through the signaling protocol of
``docs/PROTOCOL.md`` (WebSocket subprotocol ``callsgw.v1``) and returns a
:class:`CallSession`. Media runs on the project's own sans-I/O cores in
:class:`callsgw.client.transport.ClientTransport` (controlling ICE, DTLS
client role, SRTP); this module only adds sockets, the clock and tasks, in
the aioquic ``asyncio/protocol.py`` pattern (GUIDE section 1):
:class:`MediaChannel` feeds datagrams to the core with the loop's monotonic
clock, sends what it queued, hands its events on and keeps one timer armed
at its earliest deadline.

Every signaling decision (the join offer, answers to gateway offers, glare,
renegotiation, resume and ICE restart offers) is made by the sans-I/O core
:class:`callsgw.client.negotiation.ClientNegotiation`; :class:`CallSession`
feeds it the gateway's messages, sends what it returns and turns its events
into the futures of :meth:`CallSession.set_screen_share`,
:meth:`CallSession.restart_ice` and friends. ``join`` carries the offer;
``joined`` the gateway's ICE-lite answer, whose candidates the ICE agent
checks (loopback ones first when the signaling server is on loopback;
loopback ones never when it is not). :meth:`CallSession.set_screen_share`
sends ``screen``, confirms with a ``ping`` that the gateway accepted it
(messages are handled in order, so a refusal arrives before the ``pong``),
then offers the video section or stops it (port 0).

Network trouble (PROTOCOL.md "Restarting ICE", "Resuming"): a WebSocket that
dies without a close frame is resumed on a new one; a media path that goes
silent (no answer to consent checks for :attr:`CallSession.ice_restart_after`
seconds) or whose socket reports send errors is moved to a new UDP socket and
restarted with new ICE credentials through an offer
(:meth:`CallSession.restart_ice`), keeping DTLS and SRTP.

TLS for ``wss://`` URLs verifies the server certificate normally (system CAs,
or ``cafile``, or a given :class:`ssl.SSLContext`). ``ssl=False`` turns
verification off: it exists for tests and demos against the gateway's
self-signed default certificate, and must not be used across a network an
attacker may reach, since the signaling channel carries the DTLS fingerprints
that authenticate the media.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
import socket
import ssl as _ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import connect as ws_connect

from callsgw import logsafety

from callsgw.client.negotiation import (
    ClientNegotiation,
    Converged,
    IceRestartAnswered,
    Refused,
    Trouble,
)
from callsgw.client.sdp import MediaSection, RemoteDescription, RemoteMedia, SdpError
from callsgw.client.transport import (
    ClientEvent,
    ClientSecurityRecord,
    ClientState,
    ClientTransport,
    Closed,
    Connected,
    Failed,
    IceRestarted,
    IceRestartFailed,
    RtcpReceived,
    RtpReceived,
)
from callsgw.dtls.certificate import DtlsCertificate
from callsgw.signaling.protocol import SUBPROTOCOL  # one definition, shared with the gateway

logsafety.install()  # websockets would log join messages (tokens) at DEBUG

log = logging.getLogger(__name__)

__all__ = [
    "CallSession",
    "JoinError",
    "MediaChannel",
    "MediaError",
    "MediaHandoff",
    "SUBPROTOCOL",
    "SessionClosed",
    "SessionError",
    "SignalingError",
    "connect",
    "open_media_channel",
    "order_candidates",
]

#: Largest signaling message accepted from the gateway: a 64 KiB SDP plus a
#: participant list, with room to spare.
MAX_MESSAGE_BYTES = 256 * 1024
RTP_QUEUE_SIZE = 1024
RTCP_QUEUE_SIZE = 256
EVENT_QUEUE_SIZE = 512
RESUME_BACKOFF = (0.5, 1.0, 2.0, 4.0)  # seconds between resume attempts, the last one repeated
RESUMABLE_CLOSE = (1006, 1012)  # a dropped socket; a cluster node's "reconnect" (docs/PROTOCOL.md)
REJOIN_WINDOW = 60.0  # seconds a session whose resume was refused keeps trying to join again
PERMANENT_CLOSE = (4001, 4002, 4003, 4004, 4005, 4008, 4009)  # joining again with the same token cannot work
#: Seconds without an answer to a consent check before the client restarts ICE on its own. Checks
#: go out every 4 to 6 s (RFC 7675), so 8 s means at least one check went unanswered; RFC 7675's
#: 30 s consent timeout leaves time for a few restart attempts.
ICE_RESTART_AFTER = 8.0
ICE_RESTART_BACKOFF = (0.0, 1.0, 2.0, 4.0)  # seconds before automatic restart attempts, the last one repeated
MEDIA_WATCH_INTERVAL = 0.5  # seconds between looks at the media path's health


# -- errors and results ----------------------------------------------------------


class SessionError(Exception):
    """Base class of the client's errors."""


class JoinError(SessionError):
    """The gateway refused the join: ``code`` is the WebSocket close code (or
    ``None``), ``reason`` its reason, ``error`` the last ``error`` message seen."""

    def __init__(self, message: str, code: int | None = None, reason: str = "", error: dict | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.error = error


class SignalingError(SessionError):
    """The gateway refused a request with an ``error`` message (PROTOCOL.md "Errors")."""

    def __init__(self, code: str, message: str, ref: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref


class MediaError(SessionError):
    """The media transport failed (``reason`` as in :class:`callsgw.client.transport.Failed`)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class MediaHandoff:
    """What a batched media tool needs to drive one session's media socket itself.

    Returned by :meth:`CallSession.media_handoff` once media is connected.
    ``fd`` is the UDP socket's descriptor and ``udp`` its asyncio transport
    (``udp.pause_reading()`` stops the event loop's reads); ``remote_address``
    is the selected gateway address; ``tx`` / ``rx`` are the session's
    :class:`callsgw.srtp.Session` s (client write keys / gateway write keys).
    ``deliver(data, addr)`` hands one datagram read from ``fd`` to the
    client's own transport (STUN consent answers, RTCP, DTLS), exactly as if
    the event loop had read it. SSRCs are ``None`` for a track the session
    does not send; payload types are the first negotiated codec's.
    """

    fd: int
    udp: asyncio.DatagramTransport
    local_address: tuple[str, int]
    remote_address: tuple[str, int]
    tx: object
    rx: object
    deliver: Callable[[bytes, tuple], None]
    voice_ssrc: int | None
    screen_ssrc: int | None
    voice_pt: int | None
    screen_pt: int | None


@dataclass(frozen=True)
class SessionClosed:
    """How the signaling connection ended: the WebSocket close code and reason."""

    code: int | None
    reason: str


# -- the UDP shell ---------------------------------------------------------------


class MediaChannel(asyncio.DatagramProtocol):
    """A :class:`ClientTransport` on one UDP socket, driven by the event loop's clock."""

    def __init__(self, core: ClientTransport, on_event: Callable[[ClientEvent], None] | None = None):
        self.core = core
        self.on_event = on_event
        self.udp: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    # asyncio.DatagramProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.udp is None:
            self.udp = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr) -> None:
        self.core.receive(data, (addr[0], addr[1]), self._loop.time())
        self._service()

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable, EPERM/ENETUNREACH on send
        self.send_errors += 1
        log.debug("UDP error on the client's media socket: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.udp is None or self.udp.is_closing():  # not an old socket given up by rebind()
            self._cancel_timer()

    send_errors = 0  # errors the socket reported (a path that is gone)

    # API

    @property
    def local_address(self) -> tuple[str, int]:
        assert self.udp is not None
        host, port = self.udp.get_extra_info("sockname")[:2]
        return host, port

    def start(self, *, remote_ufrag: str, remote_pwd: str, remote_fingerprint: str, candidates) -> None:
        """Start ICE towards ``candidates`` (see :meth:`ClientTransport.start`)."""
        self.core.start(
            remote_ufrag=remote_ufrag,
            remote_pwd=remote_pwd,
            remote_fingerprint=remote_fingerprint,
            candidates=candidates,
            now=self._loop.time(),
        )
        self._service()

    async def rebind(self) -> None:
        """Move to a new UDP socket on a new port (the network changed); the old one is closed.

        The core is untouched: ICE sees a new local address, which is what an
        ICE restart (:meth:`CallSession.restart_ice`) then checks.
        """
        old = self.udp
        if old is None or old.is_closing():
            raise MediaError("closed", "the media socket is closed")
        sock = old.get_extra_info("socket")
        host = old.get_extra_info("sockname")[0]
        new, _ = await self._loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0), family=sock.family)
        self.udp = new
        old.close()
        self._service()

    def complete_restart(self, *, remote_ufrag: str, remote_pwd: str, candidates) -> None:
        """The gateway answered our ICE restart: check its candidates with its new credentials."""
        self.core.complete_ice_restart(remote_ufrag=remote_ufrag, remote_pwd=remote_pwd, candidates=candidates,
                                       now=self._loop.time())
        self._service()

    def cancel_restart(self) -> None:
        self.core.cancel_ice_restart(self._loop.time())
        self._service()

    def send_rtp(self, packet: bytes) -> bool:
        ok = self.core.send_rtp(packet)
        self._flush()
        return ok

    def send_rtcp(self, packet: bytes) -> bool:
        ok = self.core.send_rtcp(packet)
        self._flush()
        return ok

    def close(self) -> None:
        """Close the core (DTLS close_notify goes out) and the socket."""
        self.core.close(self._loop.time())
        self._service()
        self._cancel_timer()
        if self.udp is not None:
            self.udp.close()

    # internals

    def _flush(self) -> None:
        if self.udp is None or self.udp.is_closing():
            self.core.datagrams_to_send()
            return
        for data, addr in self.core.datagrams_to_send():
            self.udp.sendto(data, addr)

    def _service(self) -> None:
        self._flush()
        while (event := self.core.next_event()) is not None:
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:  # a handler bug must not stop the media
                    log.exception("client media event handler failed")
        self._flush()
        self._arm()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _arm(self) -> None:
        when = self.core.get_timer()
        if when == self._timer_at and self._timer is not None:
            return
        self._cancel_timer()
        if when is not None:
            self._timer_at = when
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        # call_at may fire up to one clock resolution early: the deadline is "now"
        now = max(self._loop.time(), self._timer_at or 0.0)
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(now)
        self._service()


async def open_media_channel(
    core: ClientTransport,
    *,
    family: int = socket.AF_INET,
    on_event: Callable[[ClientEvent], None] | None = None,
    local_host: str | None = None,
) -> MediaChannel:
    """Bind a UDP socket (port 0, every address of ``family`` unless ``local_host``) for ``core``."""
    loop = asyncio.get_running_loop()
    host = local_host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    _, channel = await loop.create_datagram_endpoint(
        lambda: MediaChannel(core, on_event), local_addr=(host, 0), family=family
    )
    return channel


def order_candidates(candidates, signaling_ip: str | None) -> list[tuple[str, int]]:
    """The gateway candidates worth checking from here, best first, one address family.

    When the signaling server was reached on a loopback address, loopback
    candidates come first (and alone, if there are any). Otherwise loopback
    candidates are dropped (they would reach this host, not the gateway), and
    a candidate on the signaling server's own address comes first. The
    answer's priority order decides the rest. Only the first candidate's
    family is kept, since one socket serves one family.
    """
    parsed = []
    for ip, port in candidates:
        try:
            parsed.append((ipaddress.ip_address(ip), (ip, port)))
        except ValueError:
            continue
    server = None
    if signaling_ip:
        try:
            server = ipaddress.ip_address(signaling_ip.split("%")[0])
            if isinstance(server, ipaddress.IPv6Address) and server.ipv4_mapped is not None:
                server = server.ipv4_mapped
        except ValueError:
            server = None
    if server is not None and server.is_loopback:
        loopback = [p for p in parsed if p[0].is_loopback]
        ordered = loopback or parsed
    else:
        usable = [p for p in parsed if not p[0].is_loopback]
        ordered = [p for p in usable if p[0] == server] + [p for p in usable if p[0] != server]
    if not ordered:
        return []
    version = ordered[0][0].version
    return [c for ip, c in ordered if ip.version == version]


def _ssl_context(url: str, ssl, cafile: str | None):
    scheme = urlsplit(url).scheme.lower()
    if scheme == "ws":
        if isinstance(ssl, _ssl.SSLContext) or cafile:
            raise ValueError("TLS options were given for a ws:// URL; use wss://")
        return None
    if scheme != "wss":
        raise ValueError(f"the signaling URL must be ws:// or wss://, not {url!r}")
    if isinstance(ssl, _ssl.SSLContext):
        return ssl
    if ssl is False:
        # tests and demos only: the gateway's self-signed default certificate
        context = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = _ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = _ssl.CERT_NONE
        return context
    if ssl not in (None, True):
        raise TypeError("ssl must be an ssl.SSLContext, True, False or None")
    context = _ssl.create_default_context(cafile=cafile)
    context.minimum_version = _ssl.TLSVersion.TLSv1_2
    return context


def _drop_oldest_put(queue: asyncio.Queue, item) -> bool:
    """Put ``item``; if the queue is full, drop the oldest first. True if something was dropped."""
    dropped = False
    if queue.full():
        try:
            queue.get_nowait()
            dropped = True
        except asyncio.QueueEmpty:
            pass
    queue.put_nowait(item)
    return dropped


# -- the session -------------------------------------------------------------------


class CallSession:
    """One participant in one call (create it with :func:`connect`).

    Attributes kept up to date by the reader task:

    * ``participant_id``, ``call_id``, ``name``, ``tls`` (the signaling TLS
      version and cipher as the gateway saw them, from ``joined``);
    * ``participants``: the *other* participants, id -> ``{"id", "name",
      "muted", "sharing"}``, updated from ``participant_joined``/``left``,
      ``mute`` and ``screen``;
    * ``security``: the client's :class:`ClientSecurityRecord` once media is
      connected; ``gateway_security``: the record from the gateway's last
      ``connection`` message;
    * ``rtp`` / ``rtcp``: bounded queues of decrypted packets received; when
      full the oldest is dropped and counted in ``stats``;
    * ``events``: a bounded queue of every signaling message received
      (dicts), oldest dropped when full.
    """

    def __init__(self, ws, *, url: str, publish_voice: bool, publish_screen: bool, name: str | None,
                 ssl_context=None, open_timeout: float = 10, ice_options: dict | None = None,
                 urls: tuple[str, ...] = (), token: str | None = None):
        self._ws = ws
        self.url = url  # the gateway URL in use now
        #: every URL this session may use, in order: resumes and rejoins move on to the next one
        self.urls: tuple[str, ...] = urls or (url,)
        self._token = token  # kept to join again when a lost node took the session with it (a secret)
        self._publish = (publish_voice, publish_screen)
        self._ice_options = dict(ice_options or {})
        self.rejoins = 0
        self._ssl_context = ssl_context
        self._open_timeout = open_timeout
        self._resume: dict | None = None  # {"credential", "grace"} from joined / resumed (a secret)
        self.turn: dict | None = None  # {"urls", "username", "credential", "ttl"} from joined.turn (a secret)
        self.resumes = 0
        self._loop = asyncio.get_running_loop()
        self.certificate = DtlsCertificate.generate()  # fresh per session
        self._core = ClientTransport(certificate=self.certificate, now=self._loop.time(), **(ice_options or {}))
        self._media: MediaChannel | None = None
        #: seconds of consent silence before an automatic ICE restart (None: never on its own)
        self.ice_restart_after: float | None = ICE_RESTART_AFTER
        self.ice_restarts = 0  # ICE restarts completed
        self._restart_done: asyncio.Future | None = None
        self._watcher: asyncio.Task | None = None
        self._handed_off = False  # media_handoff() gave the socket to a batch tool
        self._sdp_filter: Callable[[str], str] | None = None  # connect(sdp_filter=...)
        self._requested_name = name
        # every offer/answer decision: the sans-I/O core (callsgw.client.negotiation)
        self._neg = ClientNegotiation(ice_ufrag=self._core.local_ufrag, ice_pwd=self._core.local_pwd,
                                      fingerprint=self.certificate.fingerprint, publish_voice=publish_voice,
                                      publish_screen=publish_screen)

        self.participant_id: str | None = None
        self.call_id: str | None = None
        self.name: str | None = None
        self.protocol: int | None = None
        self.tls: dict | None = None
        self.security: ClientSecurityRecord | None = None
        self.gateway_security: dict | None = None
        self.bye_reason: str | None = None
        self.media_failure: MediaError | None = None
        self.rtp: asyncio.Queue[bytes] = asyncio.Queue(RTP_QUEUE_SIZE)
        self.rtcp: asyncio.Queue[bytes] = asyncio.Queue(RTCP_QUEUE_SIZE)
        self.events: asyncio.Queue[dict] = asyncio.Queue(EVENT_QUEUE_SIZE)
        self.stats = {
            "rtp_dropped": 0,
            "rtcp_dropped": 0,
            "events_dropped": 0,
            "bad_messages": 0,
            "send_refused": 0,
            "offers_answered": 0,
            "glare": 0,
        }
        self._neg.stats = self.stats  # the core counts offers answered and glare into the same dict

        self._waiters: list[asyncio.Future] = []  # renegotiate() callers, settled by the core's events
        self._neg_timer: asyncio.TimerHandle | None = None
        self._op_lock = asyncio.Lock()
        self._screen_errors: list[Refused] = []
        self._pings: dict[int, asyncio.Future] = {}
        self._next_ping_id = 1
        self._muted = False

        self._connected: asyncio.Future = self._loop.create_future()
        self._closed: asyncio.Future = self._loop.create_future()
        self._reader: asyncio.Task | None = None
        self._closing = False

    # -- opening -------------------------------------------------------------------

    async def _join(self, token: str, timeout: float) -> None:
        message = {"type": "join", "token": token, "sdp": self._neg.join_offer()}
        if self._requested_name is not None:
            message["name"] = self._requested_name
        last_error = None
        try:
            async with asyncio.timeout(timeout):
                await self._ws.send(json.dumps(message))
                while True:
                    raw = await self._ws.recv()
                    msg = self._decode(raw)
                    if msg is None:
                        continue
                    self._push_event(msg)
                    if msg["type"] == "joined":
                        break
                    if msg["type"] == "error":
                        last_error = msg
        except websockets.ConnectionClosed as exc:
            code, reason = _close_info(exc)
            detail = f": {last_error.get('message')}" if last_error else ""
            raise JoinError(f"the gateway refused the join (close {code} {reason!r}){detail}", code, reason,
                            last_error) from None
        except TimeoutError:
            raise JoinError(f"no 'joined' within {timeout:g} s", error=last_error) from None

        self.protocol = msg.get("protocol")
        self.call_id = msg.get("call")
        me = msg.get("participant") or {}
        self.participant_id = me.get("id")
        self.name = me.get("name")
        self.tls = msg.get("tls")
        self._resume = msg.get("resume") if isinstance(msg.get("resume"), dict) else None
        # joined.turn (docs/PROTOCOL.md): kept for callers; this client's ICE agent uses host candidates only
        turn = msg.get("turn")
        self.turn = turn if isinstance(turn, dict) and isinstance(turn.get("urls"), list) else None
        wanted_screen = self._neg.wants_screen
        try:
            self._neg.joined(msg)
        except SdpError as exc:
            raise SessionError(f"the gateway's answer is unusable: {exc}") from None
        if wanted_screen and not self._neg.wants_screen:
            log.warning("the gateway rejected the screen-share section of the join offer")

    def _candidates(self, remote: RemoteDescription) -> list[tuple[str, int]]:
        """The gateway's candidates worth checking from here, best first (:func:`order_candidates`)."""
        remote_ip = None
        try:
            remote_ip = self._ws.remote_address[0]
        except (AttributeError, TypeError, IndexError):
            pass
        return order_candidates(remote.candidates, remote_ip)

    async def _start_media(self) -> None:
        remote = self._neg.remote
        candidates = self._candidates(remote)
        if not candidates:
            raise SessionError(
                f"the gateway's answer offers no candidate reachable from here: {remote.candidates}"
            )
        family = socket.AF_INET6 if ipaddress.ip_address(candidates[0][0]).version == 6 else socket.AF_INET
        self._media = await open_media_channel(self._core, family=family, on_event=self._on_media_event)
        self._media.start(
            remote_ufrag=remote.ice_ufrag,
            remote_pwd=remote.ice_pwd,
            remote_fingerprint=remote.fingerprint,
            candidates=candidates,
        )

    # -- public API ----------------------------------------------------------------

    @property
    def media_state(self) -> ClientState:
        return self._core.state

    @property
    def muted(self) -> bool:
        return self._muted

    @property
    def sharing(self) -> bool:
        """True while the negotiated screen section sends."""
        return self._neg.sharing

    @property
    def participants(self) -> dict[str, dict]:
        """The other participants: id -> ``{"id", "name", "muted", "sharing"}``."""
        return self._neg.participants

    @property
    def sections(self) -> tuple[MediaSection, ...]:
        """The negotiated m-sections, from the client's side."""
        return tuple(self._neg.sections)

    @property
    def remote_media(self) -> tuple[RemoteMedia, ...]:
        """The m-sections of the gateway's description last applied (its latest offer, or
        its answer to ours), as the gateway wrote them: ``direction`` is the gateway's, and
        ``msid`` names the publisher of a forwarded section. Same mids, same order as
        :attr:`sections`; read-only."""
        latest = self._neg.latest_remote
        return latest.media if latest is not None else ()

    @property
    def pending_offer_id(self) -> int | None:
        """The id of this client's own ``offer`` still waiting for the gateway's answer, or None."""
        return self._neg.pending_offer_id

    @property
    def voice_ssrc(self) -> int | None:
        section = self._neg.voice_section
        return section.ssrc if section is not None and section.sends else None

    @property
    def screen_ssrc(self) -> int | None:
        section = self._neg.screen_section
        return section.ssrc if section is not None and section.sends else None

    def media_handoff(self) -> MediaHandoff:
        """The media socket, keys and track parameters (see :class:`MediaHandoff`); read-only.

        Raises :class:`MediaError` unless media is connected. Nothing changes
        in the session: a caller that reads ``fd`` itself should pause the
        transport's reading and pass every datagram it does not consume to
        ``deliver`` so that ICE consent (RFC 7675) keeps being answered.
        """
        media = self._media
        core = self._core
        if (media is None or media.udp is None or core.state is not ClientState.CONNECTED
                or core.tx is None or core.rx is None or core.selected_address is None):
            raise MediaError("not_connected", "media is not connected")

        def first_pt(section: MediaSection | None) -> int | None:
            if section is None:
                return None
            codecs = section.effective_codecs
            return codecs[0].payload_type if codecs else None

        sock = media.udp.get_extra_info("socket")
        self._handed_off = True  # the caller drives the socket now: no automatic ICE restart moves it
        return MediaHandoff(
            fd=sock.fileno(),
            udp=media.udp,
            local_address=media.local_address,
            remote_address=tuple(core.selected_address),
            tx=core.tx,
            rx=core.rx,
            deliver=media.datagram_received,
            voice_ssrc=self.voice_ssrc,
            screen_ssrc=self.screen_ssrc,
            voice_pt=first_pt(self._neg.voice_section),
            screen_pt=first_pt(self._neg.screen_section),
        )

    @property
    def media_counters(self):
        return self._core.counters

    async def wait_connected(self, timeout: float | None = 10) -> ClientSecurityRecord:
        """Wait until DTLS completed; raises :class:`MediaError` if the transport failed."""
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self._connected)

    async def wait_closed(self) -> SessionClosed:
        """Wait until the signaling connection is closed; returns its close code and reason."""
        return await asyncio.shield(self._closed)

    def send_voice(self, packet: bytes) -> bool:
        """Protect and send one RTP packet on the voice track.

        The SSRC is rewritten to the one announced in the offer; sequence
        number, timestamp, payload type and payload are kept. Returns False
        (and counts) if the packet is not RTP, voice is not negotiated for
        sending, the session is muted, media is not connected, or SRTP refuses
        it (an (SSRC, index) already sent under this key: RFC 3711 section 9.1).
        """
        if self._muted:
            self.stats["send_refused"] += 1
            return False
        return self._send_track(self._neg.voice_section, packet)

    def send_screen(self, packet: bytes) -> bool:
        """Like :meth:`send_voice`, on the screen-share track (while sharing)."""
        return self._send_track(self._neg.screen_section, packet)

    def send_rtcp(self, packet: bytes) -> bool:
        """Protect and send one (compound) RTCP packet as given."""
        if self._media is None:
            return False
        return self._media.send_rtcp(packet)

    async def mute(self, muted: bool) -> None:
        """Announce the voice mute state (``mute``); while muted, :meth:`send_voice` sends nothing."""
        self._muted = bool(muted)
        await self._send({"type": "mute", "muted": self._muted})

    async def restart_ice(self, *, rebind: bool = True, timeout: float = 10) -> None:
        """Restart ICE (RFC 8445 section 9; PROTOCOL.md "Restarting ICE"); return once media moved.

        With ``rebind`` the media first moves to a new UDP socket (what a
        network change calls for). An offer of the current m-sections with new
        ICE credentials follows; the gateway answers with new credentials of
        its own, checks run from the socket, and once a pair is selected media
        flows there. DTLS and SRTP carry on. Until then the old path, if it
        still works, carries media. The session calls this on its own when
        the path goes silent (:attr:`ice_restart_after`) or the socket reports
        errors. Raises :class:`MediaError` or :class:`SignalingError` if the
        restart fails, ``TimeoutError`` after ``timeout``.
        """
        if self._media is None or self._closing:
            raise SessionError("the session is closed")
        if self._restart_done is None or self._restart_done.done():
            self._restart_done = self._loop.create_future()
        done = self._restart_done
        async with asyncio.timeout(timeout):
            if rebind:
                await self._media.rebind()
            try:
                ufrag, pwd = self._core.begin_ice_restart()
            except ValueError as exc:
                raise MediaError("ice_failed", str(exc)) from None
            await self._send_all(self._neg.restart_ice(ufrag, pwd, self._loop.time()))
            await asyncio.shield(done)

    def _give_up_restart(self, error: Exception) -> None:
        """The restart's offer was refused or its answer unusable: back to the old path (if any)."""
        self._neg.cancel_ice_restart()
        if self._media is not None:
            self._media.cancel_restart()
        self._settle_restart(error)

    def _settle_restart(self, error: Exception | None) -> None:
        done = self._restart_done
        if done is not None and not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
                done.exception()

    async def _watch_media(self) -> None:
        """Restart ICE on our own when the path goes silent or the socket fails (PROTOCOL.md)."""
        attempt = 0
        errors = 0
        next_try = 0.0
        while not self._closing:
            await asyncio.sleep(MEDIA_WATCH_INTERVAL)
            media, core = self._media, self._core
            if (media is None or core.state is not ClientState.CONNECTED or core.restarting_ice
                    or self._handed_off):
                continue
            now = self._loop.time()
            age = core.ice.consent_age(now)
            silent = self.ice_restart_after is not None and (age is None or age > self.ice_restart_after)
            failing = media.send_errors > errors
            errors = media.send_errors
            if not (silent or failing) or now < next_try:
                if not silent and not failing:
                    attempt = 0
                continue
            reason = "socket errors" if failing else f"no consent answer for {age or 0:.1f} s"
            log.info("media path lost (%s): restarting ICE on a new socket", reason)
            self._push_event({"type": "client_ice_restarting", "reason": "socket_error" if failing else "silent"})
            try:
                await self.restart_ice(rebind=True)
            except (SessionError, TimeoutError, OSError) as exc:
                log.info("ICE restart attempt %d failed: %s", attempt + 1, exc)
                next_try = self._loop.time() + ICE_RESTART_BACKOFF[min(attempt + 1, len(ICE_RESTART_BACKOFF) - 1)]
                attempt += 1
            else:
                attempt = 0
            errors = media.send_errors

    async def ping(self, timeout: float = 10) -> None:
        """Round trip to the gateway (``ping``/``pong``)."""
        ping_id = self._next_ping_id
        self._next_ping_id += 1
        future = self._loop.create_future()
        self._pings[ping_id] = future
        try:
            await self._send({"type": "ping", "id": ping_id})
            async with asyncio.timeout(timeout):
                await future
        finally:
            self._pings.pop(ping_id, None)

    async def set_screen_share(self, on: bool, timeout: float = 10) -> None:
        """Start or stop sharing the screen.

        Sends ``screen``, waits (with a ``ping``) until the gateway took it,
        then renegotiates: an ``offer`` adding a VP8 video section (or
        reusing this client's stopped one), or stopping it with port 0.
        Raises :class:`SignalingError` if the gateway refuses (``forbidden``,
        ``screen_busy``, ``bad_sdp``, ...), leaving the previous state.
        """
        on = bool(on)
        async with self._op_lock:
            if on == self._neg.wants_screen and on == self.sharing and self._neg.pending_offer_id is None:
                return
            self._screen_errors.clear()
            await self._send({"type": "screen", "sharing": on})
            await self.ping(timeout)
            if self._screen_errors:
                err = self._screen_errors[-1]
                raise SignalingError(err.code, err.message, "screen")
            try:
                await self._renegotiate(timeout, screen=on)
            except SignalingError:
                if on:
                    await self._send({"type": "screen", "sharing": False})
                raise

    async def _announce_initial_screen(self, timeout: float) -> None:
        """After joining with a screen section: send ``screen``; if refused, stop the section."""
        async with self._op_lock:
            self._screen_errors.clear()
            await self._send({"type": "screen", "sharing": True})
            await self.ping(timeout)
            if self._screen_errors:
                log.warning("the gateway refused the screen share: %s", self._screen_errors[-1].message)
                await self._renegotiate(timeout, screen=False)

    async def leave(self, timeout: float = 5) -> SessionClosed:
        """Send ``leave`` and wait (bounded) for the gateway to close, then close everything."""
        if not self._closing and not self._closed.done():
            try:
                await self._send({"type": "leave"})
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._closed)
            except (SessionError, TimeoutError):
                pass
        return await self.close()

    async def close(self) -> SessionClosed:
        """Close the media (DTLS close_notify) and the WebSocket (1000). Idempotent."""
        if not self._closing:
            self._closing = True
            if self._media is not None:
                self._media.close()
            try:
                await self._ws.close(1000, "client closed")
            except Exception:  # already closed or broken: nothing left to do
                pass
            if self._reader is not None:
                try:
                    async with asyncio.timeout(5):
                        await asyncio.shield(self._reader)
                except (TimeoutError, asyncio.CancelledError):
                    self._reader.cancel()
            self._finish_closed()
        return await asyncio.shield(self._closed)

    async def __aenter__(self) -> "CallSession":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    # -- media -----------------------------------------------------------------------

    def _send_track(self, section: MediaSection | None, packet: bytes) -> bool:
        if section is None or not section.sends or self._media is None:
            self.stats["send_refused"] += 1
            return False
        if len(packet) < 12 or packet[0] >> 6 != 2:
            self.stats["send_refused"] += 1
            return False
        if section.ssrc is not None:
            packet = bytes(packet[:8]) + section.ssrc.to_bytes(4, "big") + bytes(packet[12:])
        return self._media.send_rtp(packet)

    def _on_media_event(self, event: ClientEvent) -> None:
        if isinstance(event, RtpReceived):
            if _drop_oldest_put(self.rtp, event.packet):
                self.stats["rtp_dropped"] += 1
        elif isinstance(event, RtcpReceived):
            if _drop_oldest_put(self.rtcp, event.packet):
                self.stats["rtcp_dropped"] += 1
        elif isinstance(event, IceRestarted):
            self.ice_restarts += 1
            log.info("ICE restart %d: media path moved", self.ice_restarts)
            self._push_event({"type": "client_ice_restarted", "count": self.ice_restarts})
            self._settle_restart(None)
        elif isinstance(event, IceRestartFailed):
            self._push_event({"type": "client_ice_restart_failed", "reason": event.reason})
            self._settle_restart(MediaError(event.reason, event.detail))
        elif isinstance(event, Connected):
            self.security = event.record
            if not self._connected.done():
                self._connected.set_result(event.record)
        elif isinstance(event, Failed):
            log.info("media transport failed: %s: %s", event.reason, event.detail)
            self.media_failure = MediaError(event.reason, event.detail)
            self._settle_restart(self.media_failure)
            if not self._connected.done():
                self._connected.set_exception(MediaError(event.reason, event.detail))
                self._connected.exception()  # retrieved: no "never retrieved" warning
        elif isinstance(event, Closed):
            if not self._connected.done():
                self._connected.set_exception(MediaError("closed", event.reason))
                self._connected.exception()

    # -- signaling -------------------------------------------------------------------

    async def _send(self, message: dict) -> None:
        try:
            await self._ws.send(json.dumps(message))
        except websockets.ConnectionClosed as exc:
            code, reason = _close_info(exc)
            raise SessionError(f"the signaling connection is closed ({code} {reason!r})") from None

    def _decode(self, raw) -> dict | None:
        if not isinstance(raw, str):
            self.stats["bad_messages"] += 1
            return None
        try:
            msg = json.loads(raw)
        except ValueError:
            self.stats["bad_messages"] += 1
            return None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self.stats["bad_messages"] += 1
            return None
        if self._sdp_filter is not None and isinstance(msg.get("sdp"), str):
            msg["sdp"] = self._sdp_filter(msg["sdp"])  # connect(sdp_filter=...): tests and load tools only
        return msg

    def _push_event(self, msg: dict) -> None:
        if _drop_oldest_put(self.events, msg):
            self.stats["events_dropped"] += 1

    async def _read(self) -> None:
        try:
            while True:
                try:
                    async for raw in self._ws:
                        msg = self._decode(raw)
                        if msg is None:
                            continue
                        self._push_event(msg)
                        try:
                            await self._dispatch(msg)
                        except SessionError as exc:  # the connection went away mid-answer
                            log.debug("signaling dispatch stopped: %s", exc)
                        except Exception:
                            log.exception("failed to handle a %r message", msg.get("type"))
                except websockets.ConnectionClosed:
                    pass
                # A close frame means the gateway (or we) ended the session; a connection that
                # just died (1006), or a cluster node's 1012 "reconnect", is resumed on a new
                # socket (docs/PROTOCOL.md "Resuming", "Clusters").
                if self._closing or self._ws.close_code not in RESUMABLE_CLOSE:
                    return
                if not await self._resume_session() and not await self._rejoin():
                    return
        finally:
            self._finish_closed()

    async def _resume_session(self) -> bool:
        """Reconnect with backoff and ``resume``; True once re-attached, False if refused or too late."""
        if self._resume is None or not self._resume.get("grace"):
            return False
        self._push_event({"type": "client_reconnecting"})
        deadline = self._loop.time() + float(self._resume["grace"])
        for attempt in itertools.count():
            if self._closing:
                return False
            delay = RESUME_BACKOFF[min(attempt, len(RESUME_BACKOFF) - 1)] if attempt else 0.0
            if self._loop.time() + delay >= deadline:
                return False
            await asyncio.sleep(delay)
            if attempt:
                self._next_url()  # the node we were on may be the one that is gone
            try:
                ws = await _open_signaling(self.url, self._ssl_context, self._open_timeout)
            except (OSError, TimeoutError, websockets.WebSocketException, SessionError) as exc:
                log.debug("resume attempt %d: cannot connect: %s", attempt + 1, exc)
                continue
            try:
                async with asyncio.timeout(self._open_timeout):
                    await ws.send(json.dumps({"type": "resume", "participant_id": self.participant_id,
                                              "call": self.call_id, "credential": self._resume["credential"]}))
                    while True:
                        msg = self._decode(await ws.recv())
                        if msg is not None and msg["type"] == "resumed":
                            break
            except websockets.ConnectionClosed as exc:
                code, reason = _close_info(exc)
                log.info("resume refused (close %s %r)", code, reason)
                self._ws = ws
                return False
            except (TimeoutError, OSError) as exc:
                log.debug("resume attempt %d failed: %s", attempt + 1, exc)
                await ws.close()
                continue
            if self._closing:
                await ws.close(1000, "client closed")
                return False
            self._ws = ws
            self.resumes += 1
            self._push_event(msg)
            await self._on_resumed(msg)
            return True
        return False

    def _next_url(self) -> str:
        """Move on to the next URL of :attr:`urls` (round robin)."""
        index = self.urls.index(self.url) if self.url in self.urls else -1
        self.url = self.urls[(index + 1) % len(self.urls)]
        return self.url

    async def _rejoin(self) -> bool:
        """The gateway no longer knows this session (a resume was refused: its node was lost, or the
        grace ran out): join again with the token, over :attr:`urls`, with fresh ICE credentials.

        The same participant identity comes back (the token's), with a new participant id; the
        ``rtp``/``events`` queues go on. Permanent refusals (PROTOCOL.md: 4001-4005, 4008, 4009) end it.
        """
        code = self._ws.close_code
        if self._token is None or self._closing or code in PERMANENT_CLOSE or self._handed_off:
            return False  # a handed-off media socket belongs to its batch tool (the loadtest): no new transport
        self._push_event({"type": "client_rejoining"})
        deadline = self._loop.time() + REJOIN_WINDOW
        for attempt in itertools.count():
            delay = RESUME_BACKOFF[min(attempt, len(RESUME_BACKOFF) - 1)] if attempt else 0.0
            if self._closing or self._loop.time() + delay >= deadline:
                return False
            await asyncio.sleep(delay)
            if attempt:
                self._next_url()
            try:
                ws = await _open_signaling(self.url, self._ssl_context, self._open_timeout)
            except (OSError, TimeoutError, websockets.WebSocketException, SessionError) as exc:
                log.debug("rejoin attempt %d: cannot connect: %s", attempt + 1, exc)
                continue
            old_media, old_core = self._media, self._core
            self._ws = ws
            self._core = ClientTransport(certificate=self.certificate, now=self._loop.time(), **self._ice_options)
            self._neg = ClientNegotiation(ice_ufrag=self._core.local_ufrag, ice_pwd=self._core.local_pwd,
                                          fingerprint=self.certificate.fingerprint, publish_voice=self._publish[0],
                                          publish_screen=self._publish[1])
            self._neg.stats = self.stats
            try:
                await self._join(self._token, self._open_timeout)
            except JoinError as exc:
                log.info("rejoin attempt %d refused (close %s)", attempt + 1, exc.code)
                if exc.code in PERMANENT_CLOSE:
                    self._media, self._core = old_media, old_core
                    return False
                continue
            except (SessionError, OSError) as exc:
                log.debug("rejoin attempt %d failed: %s", attempt + 1, exc)
                continue
            if old_media is not None:
                old_media.close()
            self._media = None
            try:
                await self._start_media()
            except (SessionError, OSError) as exc:
                log.warning("rejoined, but media cannot start: %s", exc)
                await ws.close(1000, "media cannot start")
                return False
            self.rejoins += 1
            self._push_event({"type": "client_rejoined", "participant_id": self.participant_id})
            return True
        return False

    async def _on_resumed(self, msg: dict) -> None:
        """Take the gateway's snapshot; settle an offer of ours that the drop may have cut."""
        if isinstance(msg.get("resume"), dict):
            self._resume = msg["resume"]
        await self._send_all(self._neg.resumed(msg, self._loop.time()))

    def _finish_closed(self) -> None:
        if self._closed.done():
            return
        code, reason = self._ws.close_code, self._ws.close_reason or ""
        if self._media is not None and not self._closing:
            self._media.close()
        self._closing = True
        self._neg.leaving()
        if self._neg_timer is not None:
            self._neg_timer.cancel()
            self._neg_timer = None
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        error = SessionError(f"the signaling connection closed ({code} {reason!r})")
        self._settle_restart(error)
        for future in [*self._waiters, *self._pings.values()]:
            if not future.done():
                future.set_exception(error)
                future.exception()
        self._waiters.clear()
        if not self._connected.done():
            self._connected.set_exception(MediaError("closed", "the session closed before media connected"))
            self._connected.exception()
        self._closed.set_result(SessionClosed(code, reason))

    async def _dispatch(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "connection":
            if isinstance(msg.get("security"), dict):
                self.gateway_security = msg["security"]
        elif kind == "bye":
            self.bye_reason = msg.get("reason")
        elif kind == "pong":
            ping_id = msg.get("id")
            future = self._pings.get(ping_id) if isinstance(ping_id, int) else None
            if future is not None and not future.done():
                future.set_result(None)
        else:  # participants, offers, answers, errors: the negotiation core decides
            await self._send_all(self._neg.receive(msg, self._loop.time()))

    # -- negotiation (decisions in callsgw.client.negotiation; here only futures and sending) --

    async def _send_all(self, messages: list[dict]) -> None:
        """Send what the negotiation core asked for, then act on what it reports."""
        self._neg_events()
        for message in messages:
            await self._send(message)
        self._arm_negotiation_timer()

    def _neg_events(self) -> None:
        while (event := self._neg.next_event()) is not None:
            if isinstance(event, Converged):
                for future in self._waiters:
                    if not future.done():
                        future.set_result(None)
                self._waiters.clear()
            elif isinstance(event, Refused) and event.what == "offer":
                self._fail_waiters(SignalingError(event.code, event.message, "offer"))
            elif isinstance(event, Refused) and event.what == "screen":
                self._screen_errors.append(event)
            elif isinstance(event, Refused):  # "ice_restart"
                self._give_up_restart(SignalingError(event.code, event.message, "offer"))
            elif isinstance(event, IceRestartAnswered):
                if self._media is not None:
                    try:
                        self._media.complete_restart(remote_ufrag=event.remote.ice_ufrag,
                                                     remote_pwd=event.remote.ice_pwd,
                                                     candidates=self._candidates(event.remote))
                    except ValueError as exc:  # the transport failed meanwhile
                        self._give_up_restart(MediaError("ice_failed", str(exc)))
            elif isinstance(event, Trouble):  # bad_offer (we left) or negotiation_stuck
                log.warning("negotiation trouble (%s) with offer %r: %s", event.code, event.offer_id, event.message)
                self._push_event({"type": "client_error", "code": event.code, "message": event.message,
                                  "id": event.offer_id})
                if event.code == "negotiation_stuck":
                    self._fail_waiters(SignalingError(event.code, event.message, "offer"))

    def _arm_negotiation_timer(self) -> None:
        if self._neg_timer is not None:
            self._neg_timer.cancel()
            self._neg_timer = None
        when = self._neg.get_timer()
        if when is not None and not self._closing:
            self._neg_timer = self._loop.call_at(when, self._on_negotiation_timer)

    def _on_negotiation_timer(self) -> None:
        self._neg_timer = None
        self._neg.handle_timer(self._loop.time())
        self._neg_events()
        self._arm_negotiation_timer()

    async def _renegotiate(self, timeout: float, *, screen: bool | None = None) -> None:
        """Offer what is wanted now (the screen section started or stopped); wait until settled."""
        future = self._loop.create_future()
        self._waiters.append(future)
        now = self._loop.time()
        messages = self._neg.renegotiate(now) if screen is None else self._neg.want_screen(screen, now)
        await self._send_all(messages)
        async with asyncio.timeout(timeout):
            await future

    def _fail_waiters(self, error: Exception) -> None:
        for future in self._waiters:
            if not future.done():
                future.set_exception(error)
                future.exception()
        self._waiters.clear()


def _close_info(exc: websockets.ConnectionClosed) -> tuple[int | None, str]:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return None, ""
    return frame.code, frame.reason


async def _open_signaling(url: str, context, open_timeout: float):
    """The signaling WebSocket (``callsgw.v1``, bounded frames), for a join or a resume."""
    ws = await ws_connect(
        url,
        subprotocols=[SUBPROTOCOL],
        max_size=MAX_MESSAGE_BYTES,
        open_timeout=open_timeout,
        ssl=context,
        compression=None,
    )
    if ws.subprotocol != SUBPROTOCOL:
        await ws.close(1002, "callsgw.v1 required")
        raise SessionError(f"the server does not speak {SUBPROTOCOL} (it chose {ws.subprotocol!r})")
    return ws


async def connect(
    url: str | list[str] | tuple[str, ...],
    token: str,
    *,
    publish_voice: bool = True,
    publish_screen: bool = False,
    ssl: _ssl.SSLContext | bool | None = None,
    cafile: str | None = None,
    name: str | None = None,
    open_timeout: float = 10,
    ice_options: dict | None = None,
    sdp_filter: Callable[[str], str] | None = None,
) -> CallSession:
    """Join the call the ``token`` admits to, through the gateway at ``url`` (``wss://HOST:8443/ws``).

    ``url`` may be a list of the URLs of a cluster's nodes (docs/PROTOCOL.md "Clusters"): the
    first that opens is used; when the signaling connection drops, the resume (and, if the
    gateway lost the session with a node, a fresh join with the same token) moves through the list.

    Opens the WebSocket (subprotocol ``callsgw.v1``, bounded message size),
    sends ``join`` with an offer for the published tracks (a fresh DTLS
    certificate and ICE credentials per session), waits for ``joined``,
    binds a UDP socket and starts ICE towards the gateway's candidates. It
    returns without waiting for media: use :meth:`CallSession.wait_connected`.
    With ``publish_screen`` it also sends ``screen``; if the gateway refuses
    (``forbidden``, ``screen_busy``) the video section is stopped again,
    ``CallSession.sharing`` is False and the ``error`` is in ``events``.

    ``ice_options`` go to the ICE agent (:class:`~callsgw.client.ice.IceControllingAgent`:
    ``consent_interval``, ``rto``, ...).

    ``sdp_filter`` (tests and load tools): called with the ``sdp`` of every gateway message
    (``joined``, ``offer``, ...) before the session reads it, its result used instead; e.g.
    :func:`loadtest.shaper.rewrite_sdp_candidates` to put this one client behind a shaped link.
    What it raises propagates (from ``connect`` itself for the ``joined`` answer).

    ``ssl``: a :class:`ssl.SSLContext` to use as is; ``None``/``True`` to
    verify the server normally (with ``cafile`` if given); ``False`` to skip
    verification, for tests and demos against the gateway's self-signed
    default certificate only. Raises :class:`JoinError` if the gateway
    refuses the join, :class:`SessionError` for other failures, and the
    ``websockets``/``OSError`` exceptions of a failed connection.
    """
    urls = (url,) if isinstance(url, str) else tuple(url)
    if not urls or not all(isinstance(u, str) for u in urls):
        raise ValueError("url must be a signaling URL or a non-empty list of them")
    schemes = {urlsplit(u).scheme.lower() for u in urls}
    if len(schemes) != 1:
        raise ValueError("the signaling URLs must all be wss:// (or all ws://)")
    context = _ssl_context(urls[0], ssl, cafile)
    ws, failure = None, None
    for candidate in urls:
        try:
            ws = await _open_signaling(candidate, context, open_timeout)
            url = candidate
            break
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            failure = exc
            if len(urls) == 1:
                raise
            log.info("cannot open %s (%s); trying the next URL", candidate, type(exc).__name__)
    if ws is None:
        raise failure
    session = CallSession(ws, url=url, publish_voice=publish_voice, publish_screen=publish_screen, name=name,
                          ssl_context=context, open_timeout=open_timeout, ice_options=ice_options,
                          urls=urls, token=token)
    session._sdp_filter = sdp_filter
    try:
        await session._join(token, open_timeout)
        await session._start_media()
    except BaseException:
        session._closing = True
        if session._media is not None:
            session._media.close()
        try:
            await ws.close(1000, "client gave up")
        except Exception:
            pass
        raise
    session._reader = asyncio.create_task(session._read(), name=f"callsgw-client-{session.participant_id}")
    session._watcher = asyncio.create_task(session._watch_media(), name=f"callsgw-media-{session.participant_id}")
    if session.sharing:
        await session._announce_initial_screen(open_timeout)
    return session

"""The gateway's signaling core: connections, joins, calls, renegotiation.

Sans-I/O (the h11/aioquic shape): the shell calls :meth:`GatewayCore.connect`,
:meth:`receive`, :meth:`disconnect`, :meth:`transport_event`,
:meth:`speaker_changed` and :meth:`handle_timer` with ``now``, then carries
out the :class:`Action`s returned by :meth:`actions`: send a message, close a
connection, add or remove a media transport on the UDP mux. No sockets, no
clock, no asyncio. Media does not pass through here: each call's
:class:`~callsgw.sfu.call.CallMedia` is fed by the media shell directly.

Every refusal follows docs/PROTOCOL.md: an ``error`` message for a bad
request, a close code for a refused join; a refused join leaves nothing
behind, and a bad participant never disturbs the others.
"""

from __future__ import annotations

import hashlib
import itertools
import hmac
import logging
import secrets
from collections import deque
from dataclasses import dataclass

from callsgw.dtls.certificate import DtlsCertificate
from callsgw.dtls.profiles import DtlsPolicy
from callsgw.ice.lite import IceLiteAgent
from callsgw.ratelimit import TokenBucket
from callsgw.sdp import LocalTransport, SdpError, parse_offer
from callsgw.security.records import SessionRecord, transport_times_as_unix
from callsgw.sfu.call import Call, Participant
from callsgw.signaling import protocol as P
from callsgw.signaling import tokens
from callsgw.signaling.negotiation import Negotiation, NegotiationError
from callsgw.sfu.call import MediaPort
from callsgw.sfu.layers import layer_switch_supported
from callsgw.sfu.router import SpeakerChanged
from callsgw.signaling.negotiation import PARTICIPANT, ROLES, SCREEN, VOICE, WHEP, WHIP
from callsgw.transport.media import (
    MediaTransport,
    TransportClosed,
    TransportConnected,
    TransportFailed,
    TransportState,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]
MAX_BAD_MESSAGES = 20
MAX_RATE_VIOLATIONS = 10
RATE_STATE_LIMIT = 10_000  # source addresses remembered for the join cap


@dataclass(frozen=True)
class Limits:
    max_participants_per_call: int = 50
    max_calls: int = 1000
    joins_per_second_per_address: float = 5.0
    messages_per_second: float = 50.0
    join_timeout: float = 10.0
    max_connections: int = 2000
    max_token_ttl: float | None = 86400.0  # a token living longer (exp - iat) is refused
    resume_grace: float = 30.0  # seconds a participant whose socket dropped stays, to resume (0: off)


# -- actions for the shell ---------------------------------------------------------


@dataclass(frozen=True)
class Send:
    conn_id: int
    message: dict


@dataclass(frozen=True)
class Close:
    conn_id: int
    code: int
    reason: str


@dataclass(frozen=True)
class AddTransport:
    """Serve a new participant's transport; its decrypted RTP and RTCP go to ``port`` (the call's media plane)."""

    transport: MediaTransport
    port: MediaPort | None = None


@dataclass(frozen=True)
class RemoveTransport:
    transport: MediaTransport


@dataclass(frozen=True)
class RestartIce:
    """The transport's ICE agent restarted (RFC 8445 section 9): route its new ufrag (``UdpMux.refresh``).

    Comes before the answer that announces the new credentials, so the first
    check under them finds the transport.
    """

    transport: MediaTransport


@dataclass(frozen=True)
class StoreRecord:
    """Write a session security record (``insert`` for a new session, else update)."""

    record: SessionRecord
    insert: bool


Action = Send | Close | AddTransport | RemoveTransport | RestartIce | StoreRecord


class _StaticSecret:
    """One fixed API secret (tests, embedders): no rotation."""

    __slots__ = ("_keys",)

    def __init__(self, secret: bytes):
        self._keys = (secret,)

    def verification_keys(self, now: float) -> tuple[bytes, ...]:
        return self._keys


@dataclass(eq=False)
class Connection:
    id: int
    peer: Address
    tls: dict | None
    opened_at: float
    messages: TokenBucket
    participant: Participant | None = None
    bad_messages: int = 0
    rate_violations: int = 0
    closing: bool = False
    role: str = PARTICIPANT  # a WebSocket client, or the virtual connection of a WHIP/WHEP session


class GatewayCore:
    """All calls of one gateway; the shell feeds it and executes its actions."""

    def __init__(
        self,
        *,
        api_secret,
        certificate: DtlsCertificate,
        media_address: Address,
        announce: tuple[str, ...],
        policy: DtlsPolicy | None = None,
        limits: Limits = Limits(),
        consent_timeout: float = 30.0,
        cert_info=None,
        wall_offset: float = 0.0,
        datapath=None,
        whep_audio_slots: int = 3,
    ):
        """``api_secret``: the key that checks tokens (bytes), or anything with
        ``verification_keys(unix_now)`` (:class:`callsgw.apisecrets.ApiSecrets`: a
        rotation's grace period). ``datapath``: a
        :class:`callsgw.sfu.native.SharedEngine` (the native engine), or None."""
        self._secrets = api_secret if hasattr(api_secret, "verification_keys") else _StaticSecret(api_secret)
        self._revoked: dict[str, float] = {}  # jti -> Unix time after which the entry can go
        self.certificate = certificate
        self.media_address = media_address
        self.announce = announce
        self.policy = policy or DtlsPolicy()
        self.limits = limits
        self.ice_tcp_port: int | None = None  # the advertised ICE-TCP port (RFC 6544), set by the shell
        self.turn = None  # callsgw.turn.TurnConfig: joined.turn credentials (issue #18), set by the shell
        self.consent_timeout = consent_timeout
        self.cert_info = cert_info  # the signaling certificate's key facts, for records
        self.wall_offset = wall_offset  # `now` + wall_offset = Unix time, for records
        self.datapath = datapath
        self.whep_audio_slots = whep_audio_slots  # voice slots of a WHEP subscriber (callsgw.signaling.whip)
        self.calls: dict[str, Call] = {}
        self.connections: dict[int, Connection] = {}
        self._by_transport: dict[MediaTransport, Participant] = {}
        self._join_buckets: dict[str, TokenBucket] = {}
        self._resume_index: dict[bytes, Participant] = {}  # SHA-256 of a resume credential -> its session
        self._actions: deque[Action] = deque()
        self.accepting = True
        self.stats = {"joins": 0, "join_refusals": {}, "errors": {}}

    # -- shell interface -----------------------------------------------------

    def actions(self) -> list[Action]:
        out = list(self._actions)
        self._actions.clear()
        return out

    def connect(self, conn_id: int, peer: Address, tls: dict | None, now: float, *, role: str = PARTICIPANT) -> bool:
        """A WebSocket opened. False (and a Close action) when over capacity.

        ``role`` :data:`~callsgw.signaling.negotiation.WHIP` or ``WHEP``: the virtual
        connection of a WHIP/WHEP session (callsgw.server.whip), whose participant is
        never sent an offer (docs/WHIP.md)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if not self.accepting:
            self._actions.append(Close(conn_id, P.Close.GOING_AWAY, "gateway is shutting down"))
            return False
        if len(self.connections) >= self.limits.max_connections:
            self._actions.append(Close(conn_id, P.Close.RATE_LIMITED, "too many connections"))
            return False
        rate = self.limits.messages_per_second
        self.connections[conn_id] = Connection(
            conn_id, peer, tls, now, TokenBucket(rate, max(2 * rate, 1.0), now), role=role
        )
        return True

    def receive(self, conn_id: int, text: str | bytes, now: float) -> None:
        conn = self.connections.get(conn_id)
        if conn is None or conn.closing:
            return
        if not conn.messages.take(now):
            conn.rate_violations += 1
            if conn.rate_violations > MAX_RATE_VIOLATIONS:
                self._close(conn, P.Close.RATE_LIMITED, "too many messages", now)
            else:
                self._send(conn, P.error("rate_limited", "too many messages; slow down"))
            return
        try:
            message = P.parse_client_message(text)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("signaling %s -> %s", self._who(conn), _summary(type(message).__name__.lower(), message))
            self._dispatch(conn, message, now)
        except P.ProtocolError as exc:
            self._count_error(exc.code)
            conn.bad_messages += 1
            self._send(conn, exc.to_message())
            if conn.bad_messages > MAX_BAD_MESSAGES:
                self._close(conn, P.Close.PROTOCOL_VIOLATION, "too many bad messages", now)
            else:
                self._offer_waiting(conn.participant)

    def disconnect(self, conn_id: int, now: float, reason: str = "disconnected", *, clean: bool = False) -> None:
        """The socket went away.

        ``clean``: the client closed it on purpose (close code 1000/1001): the
        participant leaves. Otherwise (a dropped connection) the participant stays
        for ``resume_grace`` seconds, media and all, so that the client can
        ``resume`` on a new socket; the others notice nothing unless it expires.
        """
        conn = self.connections.pop(conn_id, None)
        if conn is None or conn.participant is None:
            return
        participant = conn.participant
        if clean or self.limits.resume_grace <= 0 or participant.resume_hash is None:
            self._remove_participant(participant, reason, now)
            return
        participant.conn_id = None
        participant.detached_until = now + self.limits.resume_grace
        log.debug("signaling %s dropped; resumable for %.0f s", self._who(conn), self.limits.resume_grace)

    def transport_event(self, transport: MediaTransport, event, now: float) -> None:
        """A media transport's state changed (connected, failed, closed).

        Media never comes here: the shell hands RTP and RTCP to the call's
        media plane (the ``port`` of :class:`AddTransport`), whose router makes
        the RTCP decisions; the core hears back only :meth:`speaker_changed`.
        """
        participant = self._by_transport.get(transport)
        if participant is None:
            return
        conn = self.connections.get(participant.conn_id)
        if isinstance(event, TransportConnected):
            self._record(participant, now)
            if conn is not None:
                self._send(conn, {"type": "connection", "state": "connected", "security": event.record.as_dict()})
        elif isinstance(event, (TransportFailed, TransportClosed)):
            reason = getattr(event, "reason", "transport_failed")
            why = "ice_consent_lost" if reason == "ice_consent_lost" else "transport_failed"
            if conn is not None:
                self._send(conn, {"type": "connection", "state": "failed", "reason": reason})
                self._close(conn, P.Close.TRANSPORT_FAILED, f"media transport failed: {reason}", now, who=why)
            else:
                self._remove_participant(participant, why, now)

    def speaker_changed(self, call_id: str, event: SpeakerChanged) -> None:
        """A call's media plane changed its active speaker: tell every participant (``speaking``)."""
        call = self.calls.get(call_id)
        if call is None:
            return
        for pid, speaking in ((event.previous, False), (event.participant_id, True)):
            if pid is None or pid not in call.participants:
                continue
            message = {"type": "speaking", "participant_id": pid, "speaking": speaking}
            for other in call.participants.values():
                conn = self.connections.get(other.conn_id)
                if conn is not None:
                    self._send(conn, message)
        for subscriber in call.participants.values():
            if subscriber.negotiation.slots is not None:  # WHEP: the speaker may take a voice slot
                subscriber.negotiation.slots.heard(event.participant_id)
                self._assign_slots(call, subscriber)

    def get_timer(self) -> float | None:
        pending = [c.opened_at + self.limits.join_timeout for c in self.connections.values()
                   if c.participant is None and not c.closing]
        pending += [p.detached_until for call in self.calls.values() for p in call.participants.values()
                    if p.detached_until is not None]
        return min(pending) if pending else None

    def handle_timer(self, now: float) -> None:
        for conn in list(self.connections.values()):
            if conn.participant is None and not conn.closing and now >= conn.opened_at + self.limits.join_timeout:
                self._close(conn, P.Close.JOIN_TIMEOUT, "no join in time", now)
        for call in list(self.calls.values()):
            for participant in list(call.participants.values()):
                if participant.detached_until is not None and now >= participant.detached_until:
                    self._remove_participant(participant, "disconnected", now)

    def revoke(self, jti: str, until: float, now: float) -> int:
        """Deny the token ``jti`` (kept until Unix time ``until``, its expiry); end its sessions.

        Returns how many sessions used it. Each is closed with 4001, like a join
        with that token would be now.
        """
        self._revoked[jti] = until
        wall = now + self.wall_offset
        for key in [k for k, t in self._revoked.items() if t < wall]:
            del self._revoked[key]
        ended = 0
        for participant in [p for call in self.calls.values() for p in call.participants.values() if p.jti == jti]:
            ended += 1
            conn = self.connections.get(participant.conn_id)
            if conn is not None:
                self._close(conn, P.Close.INVALID_TOKEN, "the token has been revoked", now, who="revoked")
            else:  # detached: it may not resume either
                self._remove_participant(participant, "revoked", now)
        return ended

    def shutdown(self, now: float) -> None:
        """Stop taking joins and tell every participant (graceful shutdown)."""
        self.accepting = False
        for conn in self.connections.values():
            if conn.participant is not None:
                self._send(conn, {"type": "bye", "reason": "shutdown"})

    def close_all(self, now: float) -> None:
        for conn in list(self.connections.values()):
            self._close(conn, P.Close.GOING_AWAY, "gateway is shutting down", now)

    @property
    def participant_count(self) -> int:
        return sum(len(c.participants) for c in self.calls.values())

    # -- dispatch ------------------------------------------------------------

    def _dispatch(self, conn: Connection, message: P.ClientMessage, now: float) -> None:
        if isinstance(message, P.Ping):
            self._send(conn, {"type": "pong", **({"id": message.id} if message.id is not None else {})})
            return
        if isinstance(message, P.Join):
            if conn.participant is not None:
                raise P.ProtocolError("already_joined", "this connection already joined a call", ref="join")
            self._join(conn, message, now)
            return
        if isinstance(message, P.Resume):
            if conn.participant is not None:
                raise P.ProtocolError("already_joined", "this connection already belongs to a session", ref="resume")
            self._resume(conn, message, now)
            return
        participant = conn.participant
        if participant is None:
            raise P.ProtocolError("not_joined", "send 'join' first", ref=type(message).__name__.lower())
        if isinstance(message, P.Offer):
            self._client_offer(conn, participant, message, now)
        elif isinstance(message, P.Answer):
            self._client_answer(conn, participant, message, now)
        elif isinstance(message, P.Mute):
            participant.muted = message.muted
            self._broadcast(participant, {"type": "mute", "participant_id": participant.id, "muted": message.muted})
        elif isinstance(message, P.Screen):
            self._screen(conn, participant, message.sharing)
        elif isinstance(message, P.Leave):
            self._close(conn, P.Close.NORMAL, "left", now, who="left")

    # -- join ----------------------------------------------------------------

    def _refuse(self, conn: Connection, code: int, reason: str, now: float) -> None:
        refusals = self.stats["join_refusals"]
        refusals[reason] = refusals.get(reason, 0) + 1
        self._close(conn, code, reason, now)

    def _admission_refused(self, conn: Connection, now: float) -> bool:
        """Shutdown and the per-address join rate, for joins and resumes alike (True: refused)."""
        if not self.accepting:
            self._refuse(conn, P.Close.GOING_AWAY, "gateway is shutting down", now)
            return True
        if not self._join_allowed(conn.peer[0], now):
            self._refuse(conn, P.Close.RATE_LIMITED, "too many joins from this address", now)
            return True
        return False

    def _join(self, conn: Connection, join: P.Join, now: float) -> None:
        if self._admission_refused(conn, now):
            return
        wall = now + self.wall_offset
        try:
            claims = tokens.verify(
                self._secrets.verification_keys(wall), join.token, call=join.call, now=wall,
                max_ttl=self.limits.max_token_ttl, revoked=self._revoked.__contains__,
            )
        except tokens.TokenError as exc:
            self._refuse(conn, exc.close_code, str(exc), now)
            return
        call = self.calls.get(claims.call)
        if call is None and len(self.calls) >= self.limits.max_calls:
            self._refuse(conn, P.Close.TOO_MANY_CALLS, "too many calls on this gateway", now)
            return
        # One session per identity: a valid join replaces an older session of the same
        # identity (its seat is reused), so a leaked token cannot lock the owner out.
        previous = call.participants.get(claims.sub) if call is not None else None
        seats = len(call.participants) - (previous is not None) if call is not None else 0
        if call is not None and seats >= self.limits.max_participants_per_call:
            self._refuse(conn, P.Close.CALL_FULL, f"call is full ({self.limits.max_participants_per_call} participants)", now)
            return
        try:
            remote = parse_offer(join.sdp)
        except SdpError as exc:
            self._refuse(conn, P.Close.BAD_SDP, f"bad SDP: {exc}", now)
            return
        ufrag, pwd = IceLiteAgent.generate_credentials()
        local = LocalTransport(ufrag, pwd, self.certificate.fingerprint, self.announce, self.media_address[1],
                               tcp_port=self.ice_tcp_port)
        negotiation = Negotiation(local, remote, may_publish=frozenset(claims.perms), role=conn.role,
                                  audio_slots=self.whep_audio_slots,
                                  simulcast=layer_switch_supported(self.datapath))
        try:
            answer = negotiation.answer(join.sdp)
        except NegotiationError as exc:
            code = P.Close.FORBIDDEN if exc.code == "forbidden" else P.Close.BAD_SDP
            self._refuse(conn, code, str(exc), now)
            return
        transport = MediaTransport(
            certificate=self.certificate,
            remote=remote,
            local_address=self.media_address,
            policy=self.policy,
            local_ufrag=ufrag,
            local_pwd=pwd,
            consent_timeout=self.consent_timeout,
            now=now,
        )
        if previous is not None:
            self._replace(previous, now)
            call = self.calls.get(claims.call)  # gone if the replaced session was alone in it
        if call is None:
            call = self.calls[claims.call] = Call(claims.call, now, datapaths=self.datapath)
        participant = Participant(
            id=claims.sub,
            name=join.name if join.name and not claims.name else claims.name,
            call_id=call.id,
            conn_id=conn.id,
            permissions=frozenset(claims.perms),
            jti=claims.jti,
            transport=transport,
            negotiation=negotiation,
            joined_at=now,
        )
        call.participants[participant.id] = participant
        conn.participant = participant
        participant.tls = conn.tls
        participant.record = SessionRecord.from_transport(
            transport_times_as_unix(transport.record.as_dict(), self.wall_offset), call_id=call.id, participant_id=participant.id,
            participant_name=participant.name, joined_at=now + self.wall_offset, tls=conn.tls,
            cert=self.cert_info, protocol=conn.role,
        )
        self._actions.append(StoreRecord(participant.record, insert=True))
        self._by_transport[transport] = participant
        self._actions.append(AddTransport(transport, call.media.port(participant.id)))
        self.stats["joins"] += 1
        self._send(
            conn,
            {
                "type": "joined",
                "protocol": P.PROTOCOL_VERSION,
                "call": call.id,
                "participant": {"id": participant.id, "name": participant.name},
                "participants": [p.public() for p in call.others(participant)],
                "sdp": answer,
                "tls": conn.tls,
                "ice_lite": True,
                "resume": self._new_resume_credential(participant),
                **({"turn": self.turn.credentials(participant.id, now + self.wall_offset)} if self.turn else {}),
            },
        )
        self._broadcast(participant, {"type": "participant_joined", "participant": participant.public()})
        self._sync_published(call, participant)
        self._renegotiate(call)

    def _join_allowed(self, address: str, now: float) -> bool:
        bucket = self._join_buckets.get(address)
        if bucket is None:
            if len(self._join_buckets) >= RATE_STATE_LIMIT:
                # forget quiet addresses (full buckets: forgetting changes nothing for them) without
                # spending anyone's tokens; if none is quiet, the oldest, so that the table stays bounded
                batch = max(1, RATE_STATE_LIMIT // 10)
                quiet = [k for k, b in self._join_buckets.items() if b.refill(now) >= b.burst][:batch]
                for key in quiet or list(itertools.islice(self._join_buckets, batch)):
                    del self._join_buckets[key]
            rate = self.limits.joins_per_second_per_address
            bucket = self._join_buckets[address] = TokenBucket(rate, max(rate, 1.0), now)
        return bucket.take(now)

    # -- resume ----------------------------------------------------------------

    def _new_resume_credential(self, participant: Participant) -> dict:
        """A fresh credential for ``participant`` (the previous one stops working)."""
        if participant.resume_hash is not None:
            self._resume_index.pop(participant.resume_hash, None)
        credential = secrets.token_urlsafe(32)
        participant.resume_hash = hashlib.sha256(credential.encode()).digest()
        self._resume_index[participant.resume_hash] = participant
        return {"credential": credential, "grace": self.limits.resume_grace}

    def _resume(self, conn: Connection, resume: P.Resume, now: float) -> None:
        """Re-attach a session whose socket dropped; refusals close with 4011 and change nothing."""
        if self._admission_refused(conn, now):
            return
        # The credential (256 random bits) is looked up by its SHA-256: the table never
        # holds it, and a lookup reveals nothing about other credentials.
        participant = self._resume_index.get(hashlib.sha256(resume.credential.encode()).digest())
        call = self.calls.get(participant.call_id) if participant is not None else None
        if (participant is None or call is None or call.participants.get(participant.id) is not participant
                or not hmac.compare_digest(participant.id.encode(), resume.participant_id.encode())
                or not hmac.compare_digest(call.id.encode(), resume.call.encode())):
            self._refuse(conn, P.Close.RESUME_REFUSED,
                         "resume refused: unknown, used or expired credential; join again with a token", now)
            return
        old = self.connections.get(participant.conn_id) if participant.conn_id is not None else None
        if old is not None:
            # the old socket is not known to be dead yet: it is replaced, the session stays
            old.participant = None
            self._send(old, {"type": "bye", "reason": "replaced"})
            self._close(old, P.Close.REPLACED, "resumed on another connection", now)
        participant.conn_id = conn.id
        participant.detached_until = None
        conn.participant = participant
        participant.resumes += 1
        self.stats["resumes"] = self.stats.get("resumes", 0) + 1
        negotiation = participant.negotiation
        message = {
            "type": "resumed",
            "call": call.id,
            "participant": {"id": participant.id, "name": participant.name},
            "participants": [p.public() for p in call.others(participant)],
            "muted": participant.muted,
            "sharing": participant.sharing,
            "resume": self._new_resume_credential(participant),
            "connection": "connected" if participant.transport.state is TransportState.CONNECTED else "connecting",
        }
        if negotiation.last_answer is not None:
            message["answer"] = {"id": negotiation.last_answer[0], "sdp": negotiation.last_answer[1]}
        self._send(conn, message)
        if negotiation.pending_offer is not None:
            # maybe lost with the old socket: the same offer again (a client answers an id once)
            self._send(conn, {"type": "offer", "id": negotiation.pending_offer[0], "sdp": negotiation.pending_offer_sdp})
        else:
            self._offer_waiting(participant)

    # -- renegotiation ---------------------------------------------------------

    def _client_offer(self, conn: Connection, participant: Participant, offer: P.Offer, now: float) -> None:
        negotiation = participant.negotiation
        if negotiation.pending_offer is not None:
            raise P.ProtocolError(
                "glare", "the gateway's offer is outstanding: roll back, answer it, then offer again",
                ref="offer", msg_id=offer.id,
            )
        before = set(negotiation.published_tracks())
        restarts = negotiation.ice_restarts
        try:
            answer = negotiation.answer(offer.sdp)
        except NegotiationError as exc:
            raise P.ProtocolError(exc.code, str(exc), ref="offer", msg_id=offer.id) from None
        except SdpError as exc:
            raise P.ProtocolError("bad_sdp", str(exc), ref="offer", msg_id=offer.id) from None
        if negotiation.ice_restarts != restarts:
            self._restart_ice(conn, participant)
        self._send(conn, {"type": "answer", "id": offer.id, "sdp": answer})
        negotiation.last_answer = (offer.id, answer)
        call = self.calls[participant.call_id]
        self._sync_published(call, participant)
        if set(negotiation.published_tracks()) != before:
            self._renegotiate(call)

    def _restart_ice(self, conn: Connection, participant: Participant) -> None:
        """The participant's offer restarted ICE: its transport takes the new credentials (media carries on)."""
        local, remote = participant.negotiation.local, participant.negotiation.remote
        try:
            participant.transport.restart_ice(local.ice_ufrag, local.ice_pwd, remote)
        except ValueError as exc:  # the transport just failed or closed: its close is on its way
            log.debug("signaling %s: ICE restart not applied: %s", self._who(conn), exc)
            return
        log.debug("signaling %s: ICE restart %d", self._who(conn), participant.negotiation.ice_restarts)
        self.stats["ice_restarts"] = self.stats.get("ice_restarts", 0) + 1
        self._actions.append(RestartIce(participant.transport))

    def _client_answer(self, conn: Connection, participant: Participant, answer: P.Answer, now: float) -> None:
        try:
            participant.negotiation.apply_answer(answer.id, answer.sdp)
        except (NegotiationError, SdpError) as exc:
            code = exc.code if isinstance(exc, NegotiationError) else "bad_sdp"
            if code == "bad_sdp":
                # A broken answer ends that offer. The client applied it before
                # answering, so its m-sections are the offer's. A fresh offer of the
                # current state follows the error (receive() sends it after the
                # error): nothing the offer carried, nor a change that waited, is lost.
                participant.negotiation.assume_offer_applied()
                self.calls[participant.call_id].router.set_forwarded(participant.id, participant.negotiation.sections)
                participant.renegotiate_later = True
            raise P.ProtocolError(code, str(exc), ref="answer", msg_id=answer.id) from None
        call = self.calls[participant.call_id]
        call.router.set_forwarded(participant.id, participant.negotiation.sections)
        self._offer_waiting(participant)

    def _offer_waiting(self, participant: Participant | None) -> None:
        """Offer a change that waited for the participant's offer slot, once the slot is free."""
        if (participant is not None and participant.renegotiate_later
                and participant.negotiation.pending_offer is None):
            participant.renegotiate_later = False
            self._offer_to(participant)

    def _renegotiate(self, call: Call) -> None:
        for participant in call.participants.values():
            self._offer_to(participant)

    def _offer_to(self, participant: Participant) -> None:
        role = participant.negotiation.role
        if role != PARTICIPANT:  # WHIP/WHEP: no offer can reach it (docs/WHIP.md)
            call = self.calls.get(participant.call_id)
            if role == WHEP and call is not None:
                self._assign_slots(call, participant)
            return
        if participant.negotiation.pending_offer is not None:
            participant.renegotiate_later = True
            return
        call = self.calls.get(participant.call_id)
        if call is None:
            return
        wanted = {
            (other.id, track): section
            for other in call.others(participant)
            for track, section in other.negotiation.published_tracks().items()
        }
        result = participant.negotiation.create_offer(wanted)
        conn = self.connections.get(participant.conn_id)
        if result is not None and conn is not None:
            offer_id, sdp = result
            self._send(conn, {"type": "offer", "id": offer_id, "sdp": sdp})

    # -- screen share ----------------------------------------------------------

    def _screen(self, conn: Connection, participant: Participant, sharing: bool) -> None:
        call = self.calls[participant.call_id]
        if sharing:
            if "publish_screen" not in participant.permissions:
                raise P.ProtocolError("forbidden", "the token does not allow publish_screen", ref="screen")
            sharer = call.sharer
            if sharer is not None and sharer is not participant:
                raise P.ProtocolError("screen_busy", f"{sharer.name} is sharing the screen", ref="screen")
        if participant.sharing == sharing:
            return
        participant.sharing = sharing
        self._broadcast(participant, {"type": "screen", "participant_id": participant.id, "sharing": sharing},
                        include_self=True)
        for subscriber in call.participants.values():
            if subscriber.negotiation.role == WHEP:
                self._assign_slots(call, subscriber)

    def _assign_slots(self, call: Call, subscriber: Participant) -> None:
        """Point a WHEP subscriber's slots at their publishers (the slot rule, callsgw.signaling.whip)."""
        slots = subscriber.negotiation.slots
        if slots is None:
            return
        others = call.others(subscriber)
        voice = [p.id for p in others if VOICE in p.negotiation.published_tracks()]
        screens = [p.id for p in others if SCREEN in p.negotiation.published_tracks()]
        screens.sort(key=lambda pid: not call.participants[pid].sharing)  # the sharer first, else join order
        if slots.assign(subscriber.negotiation.sections, voice, screens):
            call.router.set_forwarded(subscriber.id, subscriber.negotiation.sections)

    # -- leaving ---------------------------------------------------------------

    def _replace(self, participant: Participant, now: float) -> None:
        """A newer join of the same identity takes this session's seat: ``bye`` ``replaced``, close 4009."""
        conn = self.connections.get(participant.conn_id)
        if conn is not None and conn.participant is participant:
            self._send(conn, {"type": "bye", "reason": "replaced"})
            self._close(conn, P.Close.REPLACED, "replaced by a newer join of the same identity", now, who="replaced")
        else:
            self._remove_participant(participant, "replaced", now)

    def _close(self, conn: Connection, code: int, reason: str, now: float, who: str | None = None) -> None:
        if conn.closing:
            return
        conn.closing = True
        self._actions.append(Close(conn.id, code, reason[:120]))
        if conn.participant is not None:
            self._remove_participant(conn.participant, who or "disconnected", now)
            conn.participant = None

    def _remove_participant(self, participant: Participant, reason: str, now: float) -> None:
        call = self.calls.get(participant.call_id)
        if call is None or call.participants.get(participant.id) is not participant:
            return
        del call.participants[participant.id]
        if participant.resume_hash is not None:
            self._resume_index.pop(participant.resume_hash, None)
            participant.resume_hash = None
        self._record(participant, now, left=reason)
        call.router.remove_participant(participant.id)
        self._by_transport.pop(participant.transport, None)
        participant.transport.close(now, reason)
        self._actions.append(RemoveTransport(participant.transport))
        for other in call.participants.values():
            conn = self.connections.get(other.conn_id)
            if conn is not None:
                self._send(conn, {"type": "participant_left", "participant_id": participant.id, "reason": reason})
        if call.participants:
            self._renegotiate(call)
        else:
            del self.calls[call.id]

    # -- records ---------------------------------------------------------------

    def _record(self, participant: Participant, now: float, left: str | None = None) -> None:
        """Refresh the participant's security record from its transport."""
        if participant.record is None:
            return
        transport = participant.transport
        record = SessionRecord.from_transport(
            transport_times_as_unix(transport.record.as_dict(), self.wall_offset), call_id=participant.call_id,
            participant_id=participant.id, participant_name=participant.name,
            joined_at=participant.record.joined_at, counters=transport.counters, tls=participant.tls,
            cert=self.cert_info, session_id=participant.record.session_id,
            left_at=now + self.wall_offset if left is not None else None, leave_reason=left,
            bytes_in=transport.counters.bytes_in, bytes_out=transport.counters.bytes_out,
            protocol=participant.negotiation.role,
        )
        if left is not None and record.failure is None and left == "ice_consent_lost":
            record = record.with_failure("ice_consent_lost", "no valid ICE check for the consent timeout")
        participant.record = record
        self._actions.append(StoreRecord(record, insert=False))

    # -- media ---------------------------------------------------------------

    def _sync_published(self, call: Call, participant: Participant) -> None:
        published = participant.negotiation.published_tracks()
        for track in (VOICE, SCREEN):
            if track in published:
                call.router.set_published(participant.id, track, published[track])
            else:
                call.router.remove_published(participant.id, track)

    # -- helpers ---------------------------------------------------------------

    def _send(self, conn: Connection, message: dict) -> None:
        if not conn.closing:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("signaling %s <- %s", self._who(conn), _summary(message["type"], message))
            self._actions.append(Send(conn.id, message))

    @staticmethod
    def _who(conn: Connection) -> str:
        participant = conn.participant
        return f"conn {conn.id}" + (f" ({participant.call_id}/{participant.id})" if participant is not None else "")

    def _broadcast(self, participant: Participant, message: dict, *, include_self: bool = False) -> None:
        call = self.calls.get(participant.call_id)
        if call is None:
            return
        for other in call.participants.values():
            if other is participant and not include_self:
                continue
            conn = self.connections.get(other.conn_id)
            if conn is not None:
                self._send(conn, message)

    def _count_error(self, code: str) -> None:
        errors = self.stats["errors"]
        errors[code] = errors.get(code, 0) + 1



#: message fields worth a DEBUG line: ids and states, never SDP, tokens or names
_TRACED = ("id", "participant_id", "muted", "sharing", "speaking", "state", "reason", "code", "ref")


def _summary(kind: str, message) -> str:
    """``type`` plus the fields in :data:`_TRACED` (a dict or a parsed message)."""
    get = message.get if isinstance(message, dict) else lambda key: getattr(message, key, None)
    parts = [kind]
    for key in _TRACED:
        value = get(key)
        if value is not None and not (key == "id" and kind == "join"):
            parts.append(f"{key}={value}")
    if kind == "participant_joined":
        parts.append(f"participant_id={message['participant']['id']}")
    elif kind == "joined":
        parts.append(f"participants={len(message['participants'])}")
    return " ".join(parts)

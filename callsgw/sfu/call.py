"""Calls and participants: plain data owned by the signaling core, and each call's media plane.

Ownership: a :class:`Call` owns its participants, its router (the SFU maps
and decisions) and its :class:`CallMedia`; a :class:`Participant` owns its
media transport and its SDP negotiation. Nothing here does I/O.

Control plane and data plane split along one line with either engine: the
signaling core (:class:`callsgw.signaling.core.GatewayCore`) builds calls and
tells the router who publishes and receives what; RTP and RTCP go from the
media shell (``callsgw.server.udp``/``callsgw.server.native``) straight to the
call's :class:`CallMedia` through a :class:`MediaPort` the core hands out with
each transport, and the core hears back only speaker changes.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Callable

from callsgw.sfu.router import Outgoing, Router, SpeakerChanged
from callsgw.signaling.negotiation import Negotiation
from callsgw.transport.media import MediaTransport


@dataclass(eq=False)
class Participant:
    id: str
    name: str
    call_id: str
    conn_id: int | None  # None while detached (its socket dropped; it may resume)
    permissions: frozenset[str]
    transport: MediaTransport
    negotiation: Negotiation
    joined_at: float
    jti: str | None = None  # the token's id, for revocation
    resume_hash: bytes | None = None  # SHA-256 of the current resume credential
    detached_until: float | None = None  # set while the socket is gone: the end of the grace period
    resumes: int = 0
    muted: bool = False
    sharing: bool = False
    renegotiate_later: bool = False  # an offer was due while one was outstanding
    record: object | None = None  # callsgw.security.records.SessionRecord (latest)
    tls: dict | None = None  # the signaling TLS version/cipher as the gateway saw them

    def public(self) -> dict:
        """What other participants may know about this one."""
        return {"id": self.id, "name": self.name, "muted": self.muted, "sharing": self.sharing}


@dataclass(eq=False)
class Call:
    id: str
    created_at: float
    participants: dict[str, Participant] = field(default_factory=dict)
    # where the router gets its datapath: a callsgw.sfu.native.SharedEngine (the native engine), or
    # None for a PythonDatapath
    datapaths: InitVar[object | None] = None
    router: Router = field(init=False)  # this call's SFU maps and decisions (owned)
    media: "CallMedia" = field(init=False, repr=False)  # the router fed by the media shell (owned)

    def __post_init__(self, datapaths):
        self.router = Router(datapath=datapaths.for_call(self.transport_of) if datapaths is not None else None)
        if hasattr(self.router.datapath, "twcc_of"):  # the Python datapath stamps through the transports' logs
            self.router.datapath.twcc_of = self._twcc_of
        self.media = CallMedia(self.id, self.router, self.transport_of)

    def _twcc_of(self, participant_id: str):
        transport = self.transport_of(participant_id)
        return getattr(transport, "twcc", None)

    def transport_of(self, participant_id: str) -> MediaTransport | None:
        participant = self.participants.get(participant_id)
        return participant.transport if participant is not None else None

    def others(self, participant: Participant) -> list[Participant]:
        return [p for p in self.participants.values() if p is not participant]

    @property
    def sharer(self) -> Participant | None:
        return next((p for p in self.participants.values() if p.sharing), None)


class CallMedia:
    """One call's media plane (sans-I/O): the router, fed straight from the media shell.

    RTP and RTCP from a participant go to the router (:meth:`MediaPort.rtp`,
    :meth:`MediaPort.rtcp`); what it returns is queued on the receivers'
    transports (``MediaTransport.send_rtp``/``send_rtcp`` protect each copy
    with that receiver's SRTP keys). The shell then sends what
    :meth:`take_touched` lists, hands :meth:`take_events` (speaker changes)
    to the signaling core, and runs :meth:`handle_timer` at :meth:`get_timer`
    (RFC 3550 section 6.4.2 receiver reports, the speaker evaluation).
    """

    def __init__(self, call_id: str, router: Router, transport_of: Callable[[str], object | None]):
        self.call_id = call_id
        self.router = router
        self._transport_of = transport_of
        self._touched: dict[object, None] = {}  # transports with datagrams queued, in order
        if hasattr(router.datapath, "owner"):
            router.datapath.owner = self  # the native engine's "route started" finds the call here

    def port(self, participant_id: str) -> "MediaPort":
        """What the media shell feeds one participant's decrypted RTP and RTCP into."""
        return MediaPort(self, participant_id)

    def route_started(self, route, now: float) -> None:
        """The native engine sent a video route's first packet (the router asks for a keyframe)."""
        self._deliver(self.router.route_started(route, now))

    def get_timer(self) -> float | None:
        return self.router.get_timer()

    def twcc_ids(self, participant_id: str) -> tuple[int, int, bool]:
        """The participant transport's transport-wide CC settings (:meth:`Router.twcc_ids`)."""
        return self.router.twcc_ids(participant_id)

    def handle_timer(self, now: float) -> None:
        timer = self.router.get_timer()
        if timer is not None and timer <= now:
            self._deliver(self.router.handle_timer(now))

    def take_touched(self) -> list:
        """Transports that have datagrams queued since the last call (the shell flushes them)."""
        touched = list(self._touched)
        self._touched.clear()
        return touched

    def take_events(self) -> list[SpeakerChanged]:
        events = []
        while (event := self.router.next_event()) is not None:
            events.append(event)
        return events

    def _deliver(self, outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            transport = self._transport_of(out.participant_id)
            if transport is None:
                continue
            if transport.send_rtcp(out.packet) if out.is_rtcp else transport.send_rtp(out.packet):
                self._touched[transport] = None


class MediaPort:
    """One participant's way into its call's media plane (:meth:`CallMedia.port`)."""

    __slots__ = ("call", "participant_id")

    def __init__(self, call: CallMedia, participant_id: str):
        self.call = call
        self.participant_id = participant_id

    def rtp(self, packet: bytes, now: float) -> None:
        """A decrypted RTP packet from this participant (``RtpReceived.packet``)."""
        self.call._deliver(self.call.router.on_rtp(self.participant_id, packet, now))

    def rtcp(self, packet: bytes, now: float) -> None:
        """A decrypted RTCP compound from this participant: the router's RTCP policy decides."""
        self.call._deliver(self.call.router.on_rtcp(self.participant_id, packet, now))

    def twcc(self, arrivals, sent, now: float) -> None:
        """This participant transport's transport-wide logs, times in seconds on ``now``'s clock."""
        self.call._deliver(self.call.router.on_twcc(self.participant_id, arrivals, sent, now))

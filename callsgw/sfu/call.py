"""Calls and participants: plain data owned by the signaling core.

Ownership: a :class:`Call` owns its participants and its router (the SFU
maps); a :class:`Participant` owns its media transport and its SDP
negotiation. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from callsgw.sfu.router import Router
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
    router: Router = field(default_factory=Router)  # this call's SFU maps (owned)

    def transport_of(self, participant_id: str) -> MediaTransport | None:
        participant = self.participants.get(participant_id)
        return participant.transport if participant is not None else None

    def others(self, participant: Participant) -> list[Participant]:
        return [p for p in self.participants.values() if p is not participant]

    @property
    def sharer(self) -> Participant | None:
        return next((p for p in self.participants.values() if p.sharing), None)

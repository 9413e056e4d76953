"""The Python client's side of the call protocol, without I/O: offers, answers, glare, ICE restart.

:class:`ClientNegotiation` is everything ``callsgw.client`` decides about one call session's
signaling (docs/PROTOCOL.md), as a sans-I/O core in the aioquic / str0m style: the shell
(:mod:`callsgw.client.session`) feeds it the gateway's messages with
:meth:`ClientNegotiation.receive` and the user's wishes with :meth:`~ClientNegotiation.want_screen`,
:meth:`~ClientNegotiation.restart_ice` and :meth:`~ClientNegotiation.renegotiate`; each returns the
messages to send, in order, and :meth:`~ClientNegotiation.next_event` says how the negotiation
went. No sockets, no asyncio, no clock: ``now`` comes with every call and only dates an outstanding
offer (:meth:`~ClientNegotiation.get_timer`). The same object is driven against the real
``GatewayCore`` without a socket in ``tests/signaling/pump.py``.

The protocol's rules as the client keeps them:

* ``join`` carries the first offer (``a=setup:actpass``, BUNDLE, rtcp-mux, one m-section per
  track); ``joined`` carries the gateway's ICE-lite answer (:meth:`ClientNegotiation.joined`).
* **Polite side** (PROTOCOL.md "Renegotiation and glare"; RFC 8829 section 4.1.10.2): a gateway
  ``offer`` is answered at once (``a=setup:active``: the client stays the DTLS client), keeping
  every m-section, directions mirrored. If our own offer is outstanding, it is discarded first
  (rollback); the gateway refuses it with ``glare`` and we offer again from the new state, at
  most :data:`MAX_GLARE_RETRIES` times in a row.
* At most one own offer outstanding; a wish that arrives meanwhile is offered after its answer.
* An offer the client cannot answer (:class:`~callsgw.client.sdp.SdpError`) would block every
  later renegotiation: the client leaves (``leave`` plus :class:`Trouble` ``bad_offer``), so that the call
  converges without it.
* **Resume** (PROTOCOL.md "Resuming"): :meth:`ClientNegotiation.resumed` applies the snapshot; an
  own offer the drop may have cut is settled with ``resumed.answer`` or offered again, and a
  gateway offer sent again gets the same answer as before.
* **ICE restart** (PROTOCOL.md "Restarting ICE"): the next offer carries the new credentials;
  the gateway's answer must carry new ones too (:class:`IceRestartAnswered`).
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, replace
from typing import Union

from callsgw.client.sdp import (
    MediaSection,
    RemoteDescription,
    SdpError,
    answer_sections,
    applied_answer,
    build_offer,
    check_same_transport,
    describe,
    parse_answer,
    parse_offer,
    random_cname,
)

__all__ = [
    "ClientNegotiation",
    "Converged",
    "IceRestartAnswered",
    "MAX_GLARE_RETRIES",
    "MAX_REMEMBERED_ANSWERS",
    "NegotiationEvent",
    "Refused",
    "Trouble",
]

#: Consecutive glare refusals of one wish before giving up.
MAX_GLARE_RETRIES = 5
#: Our answers to gateway offers, kept to send again after a resume.
MAX_REMEMBERED_ANSWERS = 8
#: An own offer without ``answer`` or ``error`` this long (seconds) means the session cannot be
#: trusted any more (PROTOCOL.md "What a client does so that every call converges", rule 3).
OFFER_ANSWER_TIMEOUT = 10.0


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Converged:
    """Nothing is outstanding and nothing more is wanted: every wish so far is negotiated."""


@dataclass(frozen=True)
class Refused:
    """The gateway refused something of ours. ``what`` is ``"offer"`` (an own offer: the wish
    behind it is dropped), ``"screen"`` (a ``screen`` announcement) or ``"ice_restart"`` (the
    offer that restarted ICE: the old path stays; an ``"offer"`` refusal follows). ``code`` is
    the gateway's ``error`` code, or ``bad_answer``, ``rejected``, or ``glare`` after too many
    retries."""

    what: str
    code: str
    message: str


@dataclass(frozen=True)
class IceRestartAnswered:
    """The gateway answered our ICE restart: check ``remote`` (its new credentials) now."""

    remote: RemoteDescription


@dataclass(frozen=True)
class Trouble:
    """The negotiation cannot go on as it should; ``code`` is the ``client_error`` code to report:
    ``bad_offer`` (a gateway offer could not be answered: ``leave`` was sent, the caller may join
    again) or ``negotiation_stuck`` (an own offer got neither ``answer`` nor ``error`` within
    :data:`OFFER_ANSWER_TIMEOUT`)."""

    code: str
    offer_id: object
    message: str


NegotiationEvent = Union[Converged, Refused, IceRestartAnswered, Trouble]

MAX_QUEUED_EVENTS = 256


class ClientNegotiation:
    """One call session's signaling state, from the client's side (see the module docstring).

    ``ice_ufrag``/``ice_pwd`` are the media transport's credentials and ``fingerprint`` its DTLS
    certificate's; ``publish_voice``/``publish_screen`` decide the join offer's sections.
    """

    def __init__(self, *, ice_ufrag: str, ice_pwd: str, fingerprint: str, publish_voice: bool = True,
                 publish_screen: bool = False, cname: str | None = None, session_id: int | None = None) -> None:
        self.fingerprint = fingerprint
        self.ice_ufrag, self.ice_pwd = ice_ufrag, ice_pwd  # what our answers carry
        self._restart_credentials: tuple[str, str] | None = None  # what our next offer carries, if new
        self._cname = cname or random_cname()
        self._session_id = session_id if session_id is not None else secrets.randbelow(2**62)  # RFC 8866 5.2
        self._session_version = 1

        self.remote: RemoteDescription | None = None  # the gateway's transport (credentials, candidates)
        self.latest_remote: RemoteDescription | None = None  # its last offer or answer applied
        self.sections: list[MediaSection] = []
        self.participants: dict[str, dict] = {}  # the others: id -> {"id", "name", "muted", "sharing"}
        self.participant_id: str | None = None
        self.joined_message: dict | None = None

        self._own_mids: set[str] = set()  # sections this client created
        self._voice_mid: str | None = None
        self._screen_mid: str | None = None
        self._want_screen = publish_screen
        self._pending: tuple[int, list[MediaSection]] | None = None
        self._pending_since = 0.0
        self._restart_offer_id: int | None = None  # the outstanding offer that restarts ICE
        self._next_offer_id = 1
        self._glare_retries = 0
        self._answers: dict[object, str] = {}  # gateway offer id -> our answer, sent again after a resume
        self._left = False
        self._events: deque[NegotiationEvent] = deque()
        self.stats = {"offers_answered": 0, "glare": 0}

        initial = [MediaSection.voice("0", direction="sendonly" if publish_voice else "recvonly")]
        if publish_screen:
            initial.append(MediaSection.screen("1"))
        self._initial = initial

    # -- joining ------------------------------------------------------------------------

    def join_offer(self) -> str:
        """The SDP of the ``join`` message."""
        return self._offer_text(self._initial)

    def joined(self, msg: dict) -> None:
        """Apply ``joined``: the gateway's answer, who we are, who is there. Raises :class:`SdpError`."""
        answer = parse_answer(msg.get("sdp"))
        self.sections = applied_answer(self._initial, answer)
        self.remote = self.latest_remote = answer
        self.joined_message = msg
        me = msg.get("participant") or {}
        self.participant_id = me.get("id") if isinstance(me.get("id"), str) else None
        self._take_participants(msg.get("participants"))
        self._own_mids = {s.mid for s in self.sections}
        self._voice_mid = "0"
        self._screen_mid = "1" if len(self.sections) > 1 and not self.sections[1].stopped else None
        self._want_screen = self._screen_mid is not None

    # -- state ---------------------------------------------------------------------------

    @property
    def sharing(self) -> bool:
        """True while the negotiated screen section sends."""
        section = self.section(self._screen_mid)
        return section is not None and section.sends

    @property
    def wants_screen(self) -> bool:
        return self._want_screen

    @property
    def voice_section(self) -> MediaSection | None:
        return self.section(self._voice_mid)

    @property
    def screen_section(self) -> MediaSection | None:
        return self.section(self._screen_mid)

    @property
    def pending_offer_id(self) -> int | None:
        """The id of our own ``offer`` still waiting for the gateway's answer, or None."""
        return self._pending[0] if self._pending is not None else None

    @property
    def restarting_ice(self) -> bool:
        """An ICE restart is wanted or offered and not yet answered."""
        return self._restart_credentials is not None

    def section(self, mid: str | None) -> MediaSection | None:
        if mid is None:
            return None
        return next((s for s in self.sections if s.mid == mid), None)

    def next_event(self) -> NegotiationEvent | None:
        return self._events.popleft() if self._events else None

    # -- the user's wishes ---------------------------------------------------------------

    def want_screen(self, on: bool, now: float) -> list[dict]:
        """Start or stop sending the screen section; the ``offer`` to send, if one can go now."""
        self._want_screen = bool(on)
        return self.renegotiate(now)

    def restart_ice(self, ufrag: str, pwd: str, now: float) -> list[dict]:
        """Offer new ICE credentials (RFC 8445 section 9): the ``offer`` to send, if one can go now.

        While an offer is outstanding the restart goes with the next one; after a rollback
        (glare) it is offered again.
        """
        self._restart_credentials = (ufrag, pwd)
        return self.renegotiate(now)

    def cancel_ice_restart(self) -> None:
        self._restart_credentials = None

    def renegotiate(self, now: float) -> list[dict]:
        """Our next ``offer`` if one is needed and none is outstanding (else :class:`Converged` when settled)."""
        if self._pending is not None or self._left or self.remote is None:
            return []
        proposal = self._desired()
        if proposal == self.sections and self._restart_credentials is None:
            self._glare_retries = 0
            self._event(Converged())
            return []
        offer_id = self._next_offer_id
        self._next_offer_id += 1
        self._pending = (offer_id, proposal)
        self._pending_since = now
        self._restart_offer_id = offer_id if self._restart_credentials is not None else None
        return [{"type": "offer", "id": offer_id, "sdp": self._offer_text(proposal)}]

    # -- the gateway's messages ------------------------------------------------------------

    def receive(self, msg: dict, now: float) -> list[dict]:
        """Apply one message of the gateway; return the messages to send, in order. Never raises."""
        kind = msg.get("type")
        if kind == "participant_joined":
            p = msg.get("participant")
            if isinstance(p, dict) and isinstance(p.get("id"), str):
                self.participants[p["id"]] = dict(p)
        elif kind == "participant_left":
            if isinstance(msg.get("participant_id"), str):
                self.participants.pop(msg["participant_id"], None)
        elif kind in ("mute", "screen"):
            field, value = ("muted", msg.get("muted")) if kind == "mute" else ("sharing", msg.get("sharing"))
            pid = msg.get("participant_id")
            p = self.participants.get(pid) if isinstance(pid, str) else None
            if p is not None and isinstance(value, bool):
                p[field] = value
        elif kind == "offer":
            return self._gateway_offer(msg, now)
        elif kind == "answer":
            return self._answer(msg, now)
        elif kind == "error":
            return self._error(msg, now)
        return []

    def resumed(self, msg: dict, now: float) -> list[dict]:
        """Apply ``resumed`` (PROTOCOL.md "Resuming"): the snapshot, and our offer the drop may have cut."""
        self._take_participants(msg.get("participants"))
        if self._pending is None:
            return []
        answer = msg.get("answer")
        if isinstance(answer, dict) and answer.get("id") == self._pending[0]:
            return self._answer({"type": "answer", **answer}, now)
        self._pending = None  # it never reached the gateway: offer again
        self._restart_offer_id = None
        return self.renegotiate(now)

    def leaving(self) -> None:
        """The session is over: nothing more is offered."""
        self._left = True

    # -- time ------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When an outstanding own offer counts as unanswered (:class:`Trouble`), or None."""
        return self._pending_since + OFFER_ANSWER_TIMEOUT if self._pending is not None else None

    def handle_timer(self, now: float) -> None:
        if self._pending is not None and now >= self._pending_since + OFFER_ANSWER_TIMEOUT:
            waited = now - self._pending_since
            self._event(Trouble("negotiation_stuck", self._pending[0],
                                f"no answer to offer {self._pending[0]} in {waited:.0f} s"))
            self._pending_since = now  # once per timeout, not at every call

    # -- internals ---------------------------------------------------------------------------

    def _take_participants(self, listed) -> None:
        if not isinstance(listed, list):
            listed = []  # a gateway that sends no list (or garbage) has told us of nobody
        self.participants = {p["id"]: dict(p) for p in listed
                             if isinstance(p, dict) and isinstance(p.get("id"), str)}

    def _event(self, event: NegotiationEvent) -> None:
        if len(self._events) >= MAX_QUEUED_EVENTS:
            self._events.popleft()
        self._events.append(event)

    def _offer_text(self, sections: list[MediaSection]) -> str:
        self._session_version += 1
        ufrag, pwd = self._restart_credentials or (self.ice_ufrag, self.ice_pwd)
        return build_offer(ufrag, pwd, self.fingerprint, sections, cname=self._cname,
                           session_id=self._session_id, session_version=self._session_version)

    def _desired(self) -> list[MediaSection]:
        """The sections we want: the negotiated ones with the screen track started or stopped."""
        sections = list(self.sections)
        current = self.section(self._screen_mid)
        sending = current is not None and current.sends
        if self._want_screen and not sending:
            if current is not None and current.stopped and current.mid in self._own_mids:
                # reuse our own stopped section, same mid (RFC 3264 section 8.1)
                sections[sections.index(current)] = MediaSection.screen(current.mid)
            else:
                taken = {s.mid for s in sections}
                n = len(sections)
                while str(n) in taken:
                    n += 1
                sections.append(MediaSection.screen(str(n)))
        elif not self._want_screen and sending:
            sections[sections.index(current)] = replace(current, stopped=True, direction="inactive")
        return sections

    def _refused(self, code: str, message: str, *, restart: bool) -> None:
        self._want_screen = self.sharing
        if restart:
            self._restart_credentials = None
            self._event(Refused("ice_restart", code, message))
        self._event(Refused("offer", code, message))

    def _answer(self, msg: dict, now: float) -> list[dict]:
        pending = self._pending
        if pending is None or msg.get("id") != pending[0]:
            return []  # an answer to an offer rolled back meanwhile
        self._pending = None
        restart = self._restart_offer_id == pending[0]
        self._restart_offer_id = None
        try:
            answer = parse_answer(msg.get("sdp"))
            check_same_transport(self.remote, answer, ice_restart=restart)
            sections = applied_answer(pending[1], answer)
        except SdpError as exc:
            self._refused("bad_answer", str(exc), restart=restart)
            return []
        for section in pending[1]:
            if section.mid not in {s.mid for s in self.sections}:
                self._own_mids.add(section.mid)
            if section.track_id == "screen" and section.sends:
                self._screen_mid = section.mid
                self._own_mids.add(section.mid)
        self.sections = sections
        self.latest_remote = answer
        if restart:
            self.ice_ufrag, self.ice_pwd = self._restart_credentials
            self._restart_credentials = None
            self.remote = answer  # the gateway's credentials from now on
            self._event(IceRestartAnswered(answer))
        if self._want_screen and not self.sharing:
            self._want_screen = False
            self._event(Refused("offer", "rejected", "the gateway rejected the screen-share section"))
            return []
        return self.renegotiate(now)

    def _gateway_offer(self, msg: dict, now: float) -> list[dict]:
        offer_id = msg.get("id")
        if not isinstance(offer_id, int) or isinstance(offer_id, bool) or self.remote is None:
            return []  # not an offer we can refer to, or before `joined` (the gateway sends none then)
        if offer_id in self._answers:
            # the same offer again after a resume: our answer was lost with the old socket
            return [{"type": "answer", "id": offer_id, "sdp": self._answers[offer_id]}]
        try:
            offer = parse_offer(msg.get("sdp"))
            check_same_transport(self.remote, offer)
            publishing = [s for s in self.sections if s.sends]
            sections = answer_sections(offer, publishing)
        except SdpError as exc:
            # Nothing sensible to answer, and an unanswered offer would block every later
            # renegotiation of this session (PROTOCOL.md, "What a client does so that every
            # call converges"): leave, so that the call converges without us.
            self._left = True
            self._event(Trouble("bad_offer", offer_id, str(exc)))
            return [{"type": "leave"}]
        if self._pending is not None:
            # glare: the gateway never rolls back, so ours will be refused; we are the polite
            # side: roll back (RFC 8829 section 4.1.10.2) and answer; an ICE restart stays
            # wanted and goes with the next offer
            self.stats["glare"] += 1
            self._pending = None
            self._restart_offer_id = None
        own_live = {s.mid for s in self.sections if s.sends}
        for section in sections:
            if section.mid not in own_live and not section.stopped:
                self._own_mids.discard(section.mid)  # the gateway (re)uses it for someone else
        self._session_version += 1
        answer = describe(sections, ice_ufrag=self.ice_ufrag, ice_pwd=self.ice_pwd, fingerprint=self.fingerprint,
                          setup="active", cname=self._cname, session_id=self._session_id,
                          session_version=self._session_version)
        self.sections = sections
        self.latest_remote = offer
        self._answers[offer_id] = answer
        while len(self._answers) > MAX_REMEMBERED_ANSWERS:
            del self._answers[next(iter(self._answers))]
        self.stats["offers_answered"] += 1
        return [{"type": "answer", "id": offer_id, "sdp": answer}, *self.renegotiate(now)]

    def _error(self, msg: dict, now: float) -> list[dict]:
        ref = msg.get("ref")
        code = msg.get("code") if isinstance(msg.get("code"), str) else "error"
        text = msg.get("message") if isinstance(msg.get("message"), str) else ""
        if ref == "screen":
            self._event(Refused("screen", code, text))
            return []
        if ref != "offer" or self._pending is None or msg.get("id") != self._pending[0]:
            return []  # about a message already dealt with (e.g. a rolled-back offer)
        self._pending = None
        restart, self._restart_offer_id = self._restart_offer_id is not None, None
        if code == "glare":
            self.stats["glare"] += 1
            self._glare_retries += 1
            if self._glare_retries > MAX_GLARE_RETRIES:
                self._refused(code, text, restart=restart)
                return []
            return self.renegotiate(now)
        self._refused(code, text, restart=restart)
        return []

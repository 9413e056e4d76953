"""WHIP (RFC 9725) and WHEP: what the gateway decides, without I/O.

A WHIP publisher or WHEP subscriber is one HTTP exchange of SDP: ``POST`` an
offer with ``Authorization: Bearer <token>``, get ``201 Created`` with the
answer and a ``Location`` (the session's resource), ``DELETE`` the resource
to leave. The shell (:mod:`callsgw.server.whip`) turns each resource into a
*virtual connection* of :class:`callsgw.signaling.core.GatewayCore`: a
``join`` with the token and the offer goes through the same join path as a
``callsgw.v1`` client (token checks, join rate, call size, SDP size and
rules, ICE-lite, DTLS 1.2 with the mandated suites as server, the SRTP
profiles, the fingerprint checked in the handshake, the security record).
This module holds the decisions around that path:

* the request checks (:func:`parse_head`, :func:`route`, :func:`content_length`,
  :func:`offer_text`, :func:`bearer_token`) and what a refusal of the core
  becomes in HTTP (:func:`refusal`, :func:`error_refusal`): every refusal is
  a 4xx/5xx with an RFC 9457 ``application/problem+json`` body
  (:class:`Problem`), never a traceback;
* the WHEP answer: its pre-allocated m-sections (*slots*,
  :func:`subscriber_sections`);
* the **slot rule** (:class:`SlotState`), which publisher feeds each slot.

The slot rule (docs/WHIP.md)
----------------------------

WHEP has no server-initiated offer, so a subscriber's m-sections are fixed by
its one offer: the first ``whep_audio_slots`` (default 3) audio m-sections it
offers to receive become voice slots, the first video m-section the screen
slot; further sections are answered ``inactive``. Each slot has one gateway
SSRC for the whole session, announced in the answer; the publisher feeding it
is switched by the router (a route's source changes, its SSRC stays; the
datapath continues the sequence numbers and the timestamps across the
switch, see :mod:`callsgw.sfu.router`). Which publisher feeds a slot:

* voice slots hold the most recently heard active speakers (the router's
  RFC 6464 speaker detection); while fewer have spoken since the subscriber
  joined, voice publishers fill the rest in join order. A publisher already
  in a slot keeps it (no reshuffling); a newly wanted one takes a free slot
  (empty, or held by one no longer wanted), lowest first. A slot with nobody
  to carry stays silent.
* the screen slot carries the participant sharing its screen (``screen``
  ``sharing: true``), else the first participant publishing a screen track.

After a switch the new publisher's timestamps are moved to follow the last
one sent on the slot by the time in between, so the slot keeps one
timeline; sender reports are translated with the same offset.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote

from callsgw.signaling import protocol as P
from callsgw.signaling.negotiation import (
    SCREEN,
    VIDEO_CODEC_PREFERENCE,
    VIDEO_FEEDBACK,
    VOICE,
    WHEP,
    WHIP,
    NegotiationError,
    Section,
    _choose_codecs,
    _choose_extensions,
)
from callsgw.signaling.tokens import CALL_ID_RE
from callsgw.wire.sdp import MAX_SDP_BYTES

SDP_TYPE = "application/sdp"
TRICKLE_TYPE = "application/trickle-ice-sdpfrag"
PROBLEM_TYPE = "application/problem+json"
MAX_TOKEN_CHARS = 4096  # as for a join's token
ENDPOINTS = {"whip": WHIP, "whep": WHEP}
RESOURCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_HEARD = 64  # speakers remembered per subscriber for the slot rule
MAX_HEADERS = 64  # header fields in a request head
ENDPOINT_METHODS = "POST, OPTIONS"
RESOURCE_METHODS = "DELETE, OPTIONS"


@dataclass
class Problem(Exception):
    """An HTTP refusal with an RFC 9457 problem-details body."""

    status: HTTPStatus
    detail: str
    code: str = ""  # a short machine-readable reason (the core's close code name or error code)
    headers: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.detail)

    def body(self) -> bytes:
        problem = {"type": "about:blank", "title": self.status.phrase, "status": self.status.value,
                   "detail": self.detail[:300]}
        if self.code:
            problem["code"] = self.code
        return json.dumps(problem, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Target:
    """What a request path names: an endpoint (``resource`` None) or a session's resource."""

    endpoint: str  # "whip" or "whep"
    call: str
    resource: str | None = None

    @property
    def role(self) -> str:
        return ENDPOINTS[self.endpoint]


@dataclass(frozen=True)
class Head:
    """A parsed HTTP/1.1 request head: method, target path, header fields by lower-case name."""

    method: str
    path: str
    fields: dict[str, str]


def parse_head(head: bytes) -> Head:
    """Parse a request head (RFC 9112 sections 3 and 5) up to, not including, the blank line.

    Strict: ``METHOD SP PATH SP HTTP/1.x``, at most :data:`MAX_HEADERS` fields, each ``name: value``
    with a token name; ``Content-Length``, ``Authorization`` and ``Content-Type`` at most once.
    Anything else is a :class:`Problem` (400, 431 or 505).
    """
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise Problem(HTTPStatus.BAD_REQUEST, "malformed request line", "bad_request")
    method, path, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise Problem(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/1.1 only", "bad_request")
    if len(lines) - 1 > MAX_HEADERS:
        raise Problem(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields", "bad_request")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise Problem(HTTPStatus.BAD_REQUEST, "malformed header field", "bad_request")
        name = name.lower()
        if name in fields and name in ("content-length", "authorization", "content-type"):
            raise Problem(HTTPStatus.BAD_REQUEST, f"{name} given twice", "bad_request")
        fields[name] = value.strip(" \t")
    return Head(method, path, fields)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 section 5.6.2


def route(method: str, path: str) -> Target:
    """Check the path and the method: ``POST``/``OPTIONS`` on ``/{whip|whep}/{call}``,
    ``DELETE``/``PATCH``/``OPTIONS`` on ``/{whip|whep}/{call}/{resource}``.

    ``PATCH`` passes: whether the resource exists decides between 404 and 405.
    """
    parts = path.split("?", 1)[0].split("/")
    if len(parts) not in (3, 4) or parts[0] != "" or parts[1] not in ENDPOINTS:
        raise Problem(HTTPStatus.NOT_FOUND, "no such endpoint: use /whip/{call} or /whep/{call}", "not_found")
    call = unquote(parts[2])
    if not CALL_ID_RE.fullmatch(call):
        raise Problem(HTTPStatus.NOT_FOUND, "the call id must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
                      "not_found")
    if len(parts) == 3:
        if method not in ("POST", "OPTIONS"):
            raise Problem(HTTPStatus.METHOD_NOT_ALLOWED, f"{method[:16]} is not allowed on an endpoint",
                          "method_not_allowed", [("Allow", ENDPOINT_METHODS)])
        return Target(parts[1], call)
    if not RESOURCE_RE.fullmatch(parts[3]):
        raise Problem(HTTPStatus.NOT_FOUND, "no such session", "not_found")
    if method not in ("DELETE", "PATCH", "OPTIONS"):
        raise Problem(HTTPStatus.METHOD_NOT_ALLOWED, f"{method[:16]} is not allowed on a session",
                      "method_not_allowed", [("Allow", RESOURCE_METHODS)])
    return Target(parts[1], call, parts[3])


def content_length(headers: Mapping[str, str], *, limit: int = MAX_SDP_BYTES) -> int:
    """The body length of a POST: required (no chunked bodies), at most ``limit`` (the join's SDP limit)."""
    if "transfer-encoding" in headers:
        raise Problem(HTTPStatus.LENGTH_REQUIRED, "send the offer with Content-Length, not chunked",
                      "length_required")
    raw = headers.get("content-length")
    if raw is None:
        raise Problem(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required", "length_required")
    # ASCII digits only (RFC 9110 section 8.6: 1*DIGIT): str.isdigit() is true of "²" or "３" too,
    # which int() refuses (found by fuzz_whip)
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise Problem(HTTPStatus.BAD_REQUEST, "Content-Length is not a number", "bad_request")
    length = int(raw)
    if length > limit:
        raise Problem(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the offer is larger than {limit} bytes", "too_large")
    return length


def media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def offer_text(headers: Mapping[str, str], body: bytes) -> str:
    """The SDP offer of a POST: ``application/sdp`` (RFC 9725 section 4.2), UTF-8."""
    if media_type(headers) != SDP_TYPE:
        raise Problem(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the offer must be sent as application/sdp",
                      "unsupported_media_type", [("Accept-Post", SDP_TYPE)])
    if len(body) > MAX_SDP_BYTES:
        raise Problem(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the offer is larger than {MAX_SDP_BYTES} bytes", "too_large")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(HTTPStatus.BAD_REQUEST, "the offer is not UTF-8 text", "bad_sdp") from None


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of ``Authorization: Bearer <token>`` (RFC 6750 section 2.1; RFC 9725 section 4.5)."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Problem(HTTPStatus.UNAUTHORIZED, "send the call token as Authorization: Bearer <token>",
                      "missing_token", [("WWW-Authenticate", 'Bearer realm="callsgw"')])
    if len(token) > MAX_TOKEN_CHARS:
        raise Problem(HTTPStatus.UNAUTHORIZED, "the token is too long", "invalid_token",
                      [("WWW-Authenticate", 'Bearer realm="callsgw", error="invalid_token"')])
    return token


def join_message(token: str, sdp: str, call: str) -> str:
    """The ``join`` a virtual connection feeds the core (docs/PROTOCOL.md): the token must be for ``call``."""
    return P.encode({"type": "join", "token": token, "sdp": sdp, "call": call})


def ice_server_links(turn: dict | None) -> list[tuple[str, str]]:
    """``Link`` headers for the TURN servers of ``joined.turn`` (RFC 9725 section 4.6, RFC 8288 link values).

    ``<turn:host:3478?transport=udp>; rel="ice-server"; username="..."; credential="...";
    credential-type="password"``. A URL or value that would break the header is left out.
    """
    if not turn:
        return []
    username, credential = str(turn.get("username", "")), str(turn.get("credential", ""))
    if any(c in value for value in (username, credential) for c in '"\\\r\n'):
        return []
    links = []
    for url in turn.get("urls") or []:
        url = str(url)
        if not url.startswith(("turn:", "turns:", "stun:")) or any(c in url for c in '<>"\r\n '):
            continue
        links.append(("Link", f'<{url}>; rel="ice-server"; username="{username}"; credential="{credential}"; '
                              'credential-type="password"'))
    return links


def new_resource() -> str:
    """A session's resource id: 128 random bits, the capability to end the session."""
    return secrets.token_urlsafe(16)


def new_etag() -> str:
    """A strong entity-tag for the session's ICE session (RFC 9725 section 4.3.1; RFC 9110 section 8.8.3)."""
    return f'"{secrets.token_hex(8)}"'


# close code of a refused join -> HTTP status
_REFUSALS = {
    P.Close.INVALID_TOKEN: (HTTPStatus.UNAUTHORIZED, "invalid_token"),
    P.Close.TOKEN_EXPIRED: (HTTPStatus.UNAUTHORIZED, "token_expired"),
    P.Close.FORBIDDEN: (HTTPStatus.FORBIDDEN, "forbidden"),
    P.Close.CALL_FULL: (HTTPStatus.CONFLICT, "call_full"),
    P.Close.TOO_MANY_CALLS: (HTTPStatus.SERVICE_UNAVAILABLE, "too_many_calls"),
    P.Close.RATE_LIMITED: (HTTPStatus.TOO_MANY_REQUESTS, "rate_limited"),
    P.Close.BAD_SDP: (HTTPStatus.BAD_REQUEST, "bad_sdp"),
    P.Close.GOING_AWAY: (HTTPStatus.SERVICE_UNAVAILABLE, "going_away"),
}


def refusal(code: int, reason: str) -> Problem:
    """What a join the core refused with close ``code`` becomes in HTTP."""
    status, name = _REFUSALS.get(code, (HTTPStatus.BAD_REQUEST, "refused"))
    headers = []
    if status == HTTPStatus.UNAUTHORIZED:
        headers.append(("WWW-Authenticate", 'Bearer realm="callsgw", error="invalid_token"'))
    elif status in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE):
        headers.append(("Retry-After", "1"))
    return Problem(status, reason, name, headers)


def error_refusal(message: dict) -> Problem:
    """An ``error`` message for the join (a field out of bounds): 400 with its code."""
    return Problem(HTTPStatus.BAD_REQUEST, str(message.get("message", "bad request")),
                   str(message.get("code", "bad_request")))


# -- WHEP slots ----------------------------------------------------------------------------------


def _video_codecs(media) -> list:
    """Every video codec the gateway forwards that the offer lists (VP8, H.264, VP9, AV1, with RTX):
    the screen slot carries whichever one the sharing publisher sends."""
    out = []
    for name in VIDEO_CODEC_PREFERENCE:
        for codec in [c for c in media.rtp.codecs if c.name.upper() == name]:
            codec.rtcpFeedback = [fb for fb in codec.rtcpFeedback
                                  if (fb.type + (" " + fb.parameter if fb.parameter else "")) in VIDEO_FEEDBACK]
            out.append(codec)
            out += [c for c in media.rtp.codecs
                    if c.name.lower() == "rtx" and str(c.parameters.get("apt")) == str(codec.payloadType)][:1]
    return out


def _receives(direction: str | None) -> bool:
    return (direction or "sendrecv") in ("sendrecv", "recvonly")


def subscriber_sections(offered, audio_slots: int, bundled: set[str] = frozenset()) -> list[Section]:
    """The m-sections of a WHEP answer: up to ``audio_slots`` voice slots and one screen slot.

    The subscriber's audio m-sections that receive become voice slots (Opus),
    its first such video m-section the screen slot (every supported codec it
    offers); the rest are kept ``inactive`` (or rejected when nothing in them
    is usable). Each slot gets its own gateway SSRC. ``bundled``: mids offered
    ``a=bundle-only`` with port 0, which are live (RFC 8843 section 6).
    """
    sections: list[Section] = []
    ssrcs: set[int] = set()
    voice = screen = 0
    for media in offered:
        mid = media.rtp.muxId
        if mid is None:
            raise NegotiationError("every m-section needs a=mid")
        if media.kind not in ("audio", "video") or (media.port == 0 and mid not in bundled):
            sections.append(Section(mid=mid, kind=media.kind, direction="inactive", stopped=True))
            continue
        slot = None
        if _receives(media.direction):
            if media.kind == "audio" and voice < audio_slots:
                slot, codecs = VOICE, _choose_codecs(media)
            elif media.kind == "video" and screen < 1:
                slot, codecs = SCREEN, _video_codecs(media)
        if slot is None or not codecs:
            codecs = _choose_codecs(media)
            sections.append(Section(mid=mid, kind=media.kind, direction="inactive", codecs=codecs,
                                    stopped=not codecs))
            continue
        ssrc = secrets.randbits(32) or 1
        while ssrc in ssrcs:
            ssrc = secrets.randbits(32) or 1
        ssrcs.add(ssrc)
        voice += slot == VOICE
        screen += slot == SCREEN
        sections.append(Section(mid=mid, kind=media.kind, direction="sendonly", codecs=codecs,
                                extensions=_choose_extensions(media), ssrc=ssrc, slot=slot))
    if not voice and not screen:
        raise NegotiationError(
            "a WHEP offer must receive: offer recvonly audio (Opus) or video (VP8, H.264, VP9 or AV1) m-sections"
        )
    return sections


class SlotState:
    """One WHEP subscriber's memory for the slot rule (the module docstring): who was heard last."""

    def __init__(self):
        self.heard_order: list[str] = []  # most recent first

    def heard(self, participant_id: str | None) -> None:
        """``participant_id`` became the active speaker."""
        if participant_id is None:
            return
        if participant_id in self.heard_order:
            self.heard_order.remove(participant_id)
        self.heard_order.insert(0, participant_id)
        del self.heard_order[MAX_HEARD:]

    def assign(self, sections: list[Section], voice: list[str], screens: list[str]) -> bool:
        """Point each slot at its publisher: ``voice``/``screens`` are the call's other voice and
        screen publishers in join order, the sharer first among ``screens``. True when a slot changed."""
        changed = False
        slots = [s for s in sections if s.slot == VOICE and not s.stopped]
        publishing = set(voice)
        ranked = [p for p in self.heard_order if p in publishing]
        ranked += [p for p in voice if p not in ranked]
        wanted = ranked[: len(slots)]
        keep = {s.source[0] for s in slots if s.source is not None and s.source[0] in wanted}
        waiting = [p for p in wanted if p not in keep]
        for section in slots:
            if section.source is not None and section.source[0] in keep:
                continue
            source = (waiting.pop(0), VOICE) if waiting else None
            if section.source != source:
                section.source = source
                changed = True
        for section in [s for s in sections if s.slot == SCREEN and not s.stopped][:1]:
            source = (screens[0], SCREEN) if screens else None
            if section.source != source:
                section.source = source
                changed = True
        return changed

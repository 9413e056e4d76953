"""Signaling protocol v1: message schema, error codes and close codes.

The normative description is ``docs/PROTOCOL.md``; this module is its code.
Parsing is strict about what it needs and tolerant of unknown fields; every
bad input becomes a :class:`ProtocolError` with a code from the document,
never another exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from callsgw import logsafety

logsafety.install()  # server and client both speak this protocol through websockets

PROTOCOL_VERSION = 1
SUBPROTOCOL = "callsgw.v1"
MAX_SDP_CHARS = 64 * 1024


class Close:
    """WebSocket close codes (docs/PROTOCOL.md "Close codes")."""

    NORMAL = 1000
    GOING_AWAY = 1001
    TOO_BIG = 1009
    PROTOCOL_VIOLATION = 4000
    INVALID_TOKEN = 4001
    TOKEN_EXPIRED = 4002
    FORBIDDEN = 4003
    CALL_FULL = 4004
    TOO_MANY_CALLS = 4005
    RATE_LIMITED = 4006
    JOIN_TIMEOUT = 4007
    BAD_SDP = 4008
    REPLACED = 4009
    RESUME_REFUSED = 4011
    TRANSPORT_FAILED = 4010
    CLUSTER_UNAVAILABLE = 4012


class ProtocolError(ValueError):
    """A client message was refused; ``code`` is the error code sent back."""

    def __init__(self, code: str, message: str, ref: str | None = None, msg_id: int | None = None):
        super().__init__(message)
        self.code = code
        self.ref = ref
        self.msg_id = msg_id

    def to_message(self) -> dict:
        return error(self.code, str(self), ref=self.ref, msg_id=self.msg_id)


# -- client -> gateway messages ---------------------------------------------------


@dataclass(frozen=True)
class Join:
    token: str
    sdp: str
    name: str | None = None
    call: str | None = None  # when given, the token must be for this call


@dataclass(frozen=True)
class Offer:
    id: int
    sdp: str


@dataclass(frozen=True)
class Answer:
    id: int
    sdp: str


@dataclass(frozen=True)
class Mute:
    muted: bool


@dataclass(frozen=True)
class Screen:
    sharing: bool


@dataclass(frozen=True)
class Leave:
    pass


@dataclass(frozen=True)
class Ping:
    id: int | None = None


@dataclass(frozen=True)
class Resume:
    """Re-attach to a session whose WebSocket dropped (docs/PROTOCOL.md "Resuming")."""

    participant_id: str
    call: str
    credential: str = field(repr=False)


ClientMessage = Join | Offer | Answer | Mute | Screen | Leave | Ping | Resume


def _field(obj: dict, name: str, kind: type, ref: str, *, optional: bool = False, max_len: int | None = None):
    if name not in obj or obj[name] is None:
        if optional:
            return None
        raise ProtocolError("bad_message", f"'{ref}' needs the field '{name}'", ref=ref)
    value = obj[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ProtocolError("bad_message", f"'{ref}.{name}' must be an integer", ref=ref)
    if kind is not int and not isinstance(value, kind):
        raise ProtocolError("bad_message", f"'{ref}.{name}' must be a {kind.__name__}", ref=ref)
    if max_len is not None and isinstance(value, str) and len(value) > max_len:
        raise ProtocolError("bad_message", f"'{ref}.{name}' is longer than {max_len} characters", ref=ref)
    if kind is int and not 0 <= value < 2**31:
        raise ProtocolError("bad_message", f"'{ref}.{name}' is out of range", ref=ref)
    return value


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse one frame from a client; raises :class:`ProtocolError`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("bad_json", "frames must be UTF-8 JSON text") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", "frame must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "message needs a string 'type'")
    if kind == "join":
        return Join(
            token=_field(obj, "token", str, kind, max_len=4096),
            sdp=_field(obj, "sdp", str, kind, max_len=MAX_SDP_CHARS),
            name=_field(obj, "name", str, kind, optional=True, max_len=64),
            call=_field(obj, "call", str, kind, optional=True, max_len=128),
        )
    if kind == "offer":
        return Offer(id=_field(obj, "id", int, kind), sdp=_field(obj, "sdp", str, kind, max_len=MAX_SDP_CHARS))
    if kind == "answer":
        return Answer(id=_field(obj, "id", int, kind), sdp=_field(obj, "sdp", str, kind, max_len=MAX_SDP_CHARS))
    if kind == "mute":
        return Mute(muted=_field(obj, "muted", bool, kind))
    if kind == "screen":
        return Screen(sharing=_field(obj, "sharing", bool, kind))
    if kind == "leave":
        return Leave()
    if kind == "ping":
        return Ping(id=_field(obj, "id", int, kind, optional=True))
    if kind == "resume":
        return Resume(
            participant_id=_field(obj, "participant_id", str, kind, max_len=128),
            call=_field(obj, "call", str, kind, max_len=128),
            credential=_field(obj, "credential", str, kind, max_len=128),
        )
    raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}", ref=kind[:40])


# -- gateway -> client messages ---------------------------------------------------


def error(code: str, message: str, *, ref: str | None = None, msg_id: int | None = None) -> dict:
    out: dict = {"type": "error", "code": code, "message": message}
    if ref is not None:
        out["ref"] = ref
    if msg_id is not None:
        out["id"] = msg_id
    return out


def encode(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))

"""Relayed signaling between cluster nodes (issue #15 item 4): the frames, sans-I/O.

A client may reach any node (node A, the *origin*) for a call placed on
another node (B, the *host*). A then carries the client's WebSocket and
forwards its frames, unchanged, to B; B runs the session in its own
:class:`~callsgw.signaling.core.GatewayCore` exactly as if the client were
connected to it (its answer carries B's ICE candidates, so media goes straight
to B) and sends everything the core says back to A, which writes it to the
client. Neither node parses what it carries beyond the first frame (A reads
the call id of ``join``/``resume`` to ask for the placement).

Between the two, every frame is one JSON object, sealed by
:class:`callsgw.cluster.seal.Seal` on the destination node's *inbox* channel
(:func:`inbox_channel`): nothing of it reaches Redis in clear. The frames:

``open``   A -> B: a new relayed session ``s`` (24 hex digits, random), the
           client's address ``peer`` ([host, port]), its TLS ``tls`` (what
           ``joined.tls`` reports), its first frame ``text``, and for a WHIP or
           WHEP session its ``role`` (``whip``/``whep``; absent for a WebSocket)
``msg``    both ways: one WebSocket text frame ``text`` of session ``s``
``close``  A -> B: the client's socket ended (``clean``: it closed with
           1000/1001, so the participant leaves at once rather than after the
           resume grace); B -> A: close the client's socket with ``code`` and
           ``reason``

:func:`parse_frame` is strict: anything malformed is a :class:`RelayError`
(the bus counts and drops it), never another exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from callsgw.cluster.seal import Seal

KINDS = ("open", "msg", "close")
MAX_TEXT = 256 * 1024
"""Longest carried frame (the gateway's own ``max_message_size`` is smaller; this bounds the relay)."""
ROLES = ("whip", "whep")
MAX_REASON = 123  # a WebSocket close reason is at most 123 bytes (RFC 6455 section 5.5)
_SESSION = re.compile(r"[0-9a-f]{24}")


class RelayError(ValueError):
    """A relay frame that is not well formed."""


@dataclass(frozen=True)
class RelayFrame:
    kind: str
    session: str
    text: str | None = None
    peer: tuple[str, int] | None = None
    tls: dict | None = None
    role: str | None = None
    code: int | None = None
    reason: str = ""
    clean: bool = False


def inbox_channel(seal: Seal, node_id: str) -> str:
    """The pub/sub channel a node reads its relay frames from (an HMAC-derived name)."""
    return seal.names.name("inbox", node_id)


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def open_frame(session: str, peer: tuple[str, int], tls: dict | None, text: str, role: str | None = None) -> bytes:
    obj = {"k": "open", "s": session, "peer": [peer[0], peer[1]], "tls": tls, "text": text}
    if role is not None:
        obj["role"] = role
    return _dump(obj)


def msg_frame(session: str, text: str) -> bytes:
    return _dump({"k": "msg", "s": session, "text": text})


def close_frame(session: str, *, code: int | None = None, reason: str = "", clean: bool = False) -> bytes:
    obj: dict = {"k": "close", "s": session, "clean": bool(clean)}
    if code is not None:
        obj["code"] = code
        obj["reason"] = reason.encode()[:MAX_REASON].decode(errors="ignore")
    return _dump(obj)


def _text(obj: dict) -> str:
    text = obj.get("text")
    if not isinstance(text, str):
        raise RelayError("a relay frame's text must be a string")
    if len(text) > MAX_TEXT:
        raise RelayError(f"a relay frame's text is longer than {MAX_TEXT} characters")
    return text


def _tls(value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 8 or not all(
            isinstance(k, str) and len(k) <= 32 and isinstance(v, str) and len(v) <= 128 for k, v in value.items()):
        raise RelayError("a relay frame's tls must be null or a small object of strings")
    return dict(value)


def _peer(value) -> tuple[str, int]:
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and 0 < len(value[0]) <= 64
            and isinstance(value[1], int) and not isinstance(value[1], bool) and 0 <= value[1] <= 65535):
        raise RelayError("a relay frame's peer must be [host, port]")
    return value[0], value[1]


def parse_frame(body: bytes) -> RelayFrame:
    """One opened relay frame; :class:`RelayError` for anything else."""
    if not isinstance(body, (bytes, bytearray)) or len(body) > MAX_TEXT + 4096:
        raise RelayError("a relay frame must be at most MAX_TEXT bytes of JSON")
    try:
        obj = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RelayError("a relay frame is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise RelayError("a relay frame must be a JSON object")
    kind, session = obj.get("k"), obj.get("s")
    if kind not in KINDS:
        raise RelayError("unknown relay frame kind")
    if not isinstance(session, str) or not _SESSION.fullmatch(session):
        raise RelayError("a relay frame's session must be 24 hex digits")
    if kind == "open":
        role = obj.get("role")
        if role is not None and role not in ROLES:
            raise RelayError("a relay frame's role must be whip or whep")
        return RelayFrame("open", session, text=_text(obj), peer=_peer(obj.get("peer")), tls=_tls(obj.get("tls")),
                          role=role)
    if kind == "msg":
        return RelayFrame("msg", session, text=_text(obj))
    clean = obj.get("clean", False)
    if not isinstance(clean, bool):
        raise RelayError("a close frame's clean must be a boolean")
    code = obj.get("code")
    if code is None:
        return RelayFrame("close", session, clean=clean)
    reason = obj.get("reason", "")
    if isinstance(code, bool) or not isinstance(code, int) or not 1000 <= code <= 4999:
        raise RelayError("a close frame's code must be a WebSocket close code")
    if not isinstance(reason, str) or len(reason.encode()) > MAX_REASON:
        raise RelayError("a close frame's reason must be a string of at most 123 bytes")
    return RelayFrame("close", session, code=code, reason=reason, clean=clean)

"""The node registry's entries and the placement choice (issue #15 items 1 and 3), sans-I/O.

Each node keeps one entry in Redis, sealed (:mod:`callsgw.cluster.seal`) and
stored under an HMAC-derived name with a TTL; :mod:`callsgw.cluster.node`
does the I/O. An entry is JSON inside the seal::

    {"node_id": ..., "url": "wss://...", "media": ["192.0.2.7:8443"],
     "state": "active" | "draining", "started_at": UNIX,
     "load": {"calls": N, "participants": N, "forwarded_pps": X, "cpu": X}}

``cpu`` is the process's CPU time over the last heartbeat divided by the wall
time (1.0 = one core busy). Every field is checked and bounded when read, so a
peer holding the key still cannot make a reader allocate without limit.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

HEARTBEAT = 2.0
"""Seconds between a node's registry writes."""
ENTRY_TTL = 6.0
"""Seconds an entry lives without a heartbeat (Redis PX), and the oldest sealed time a reader accepts."""
PLACEMENT_TTL = 30.0
"""Seconds a call's placement lives unless its node renews it (every heartbeat while the call is live)."""
STATES = ("active", "draining")
MAX_ENTRY = 8192
MAX_MEDIA = 8
MAX_URL = 512


class EntryError(ValueError):
    """An authentic entry that is not a well-formed registry entry."""


@dataclass(frozen=True)
class Load:
    calls: int = 0
    participants: int = 0
    forwarded_pps: float = 0.0
    cpu: float = 0.0


@dataclass(frozen=True)
class NodeEntry:
    node_id: str
    url: str
    media: tuple[str, ...]
    state: str = "active"
    started_at: float = 0.0
    load: Load = field(default_factory=Load)

    def to_bytes(self) -> bytes:
        doc = asdict(self)
        doc["media"] = list(self.media)
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "NodeEntry":
        if len(data) > MAX_ENTRY:
            raise EntryError("entry too large")
        try:
            doc = json.loads(data)
            load = doc["load"]
            entry = cls(
                node_id=_text(doc["node_id"], 64),
                url=_text(doc["url"], MAX_URL),
                media=tuple(_text(m, 64) for m in _list(doc["media"], MAX_MEDIA)),
                state=doc["state"] if doc["state"] in STATES else _bad("state"),
                started_at=_number(doc["started_at"]),
                load=Load(calls=int(_number(load["calls"])), participants=int(_number(load["participants"])),
                          forwarded_pps=_number(load["forwarded_pps"]), cpu=_number(load["cpu"])),
            )
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise EntryError(f"not a registry entry: {exc}") from None
        return entry

    def public(self) -> dict:
        """What ``cluster status`` and ``/api/v1/cluster`` show."""
        doc = asdict(self)
        doc["media"] = list(self.media)
        return doc


def _bad(what: str):
    raise ValueError(f"bad {what}")


def _text(value, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise ValueError("bad text field")
    return value


def _list(value, limit: int) -> list:
    if not isinstance(value, list) or len(value) > limit:
        raise ValueError("bad list field")
    return value


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError("bad number field")
    return float(value)


def least_loaded(entries: list[NodeEntry]) -> NodeEntry | None:
    """The ``active`` node a new call goes to: fewest participants, then fewest calls, then lowest CPU.

    Draining nodes get no new calls. Ties break on the node id, so every node
    computing it from the same entries picks the same one.
    """
    active = [e for e in entries if e.state == "active"]
    if not active:
        return None
    return min(active, key=lambda e: (e.load.participants, e.load.calls, round(e.load.cpu, 2), e.node_id))


def placement_body(node_id: str) -> bytes:
    return json.dumps({"node": node_id}, separators=(",", ":")).encode()


def placement_node(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return _text(doc["node"], 64)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise EntryError(f"not a placement: {exc}") from None

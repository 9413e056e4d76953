"""TURN credentials in the TURN REST API style (coturn's ``use-auth-secret``).

The gateway itself is never a TURN client: it is ICE-lite on a public address, and relay
candidates reach it like any other peer address. It only hands each participant short-lived
credentials for the operator's TURN server, in ``joined.turn`` (docs/PROTOCOL.md), following
draft-uberti-behave-turn-rest-00 section 2.2 as coturn implements it (``use-auth-secret`` with
``static-auth-secret``):

* username: ``<expiry>:<participant id>``, the expiry a Unix time in seconds;
* password: ``base64(HMAC-SHA1(secret, username))``.

coturn recomputes the password from the username and refuses a username whose expiry has passed,
so a credential is good for ``ttl`` seconds and for nothing else; the shared secret never leaves
the gateway (and is kept out of logs, ``repr`` and the settings view).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field

__all__ = ["TurnConfig", "parse_turn_urls", "turn_credentials"]

MAX_URLS = 8
# RFC 7065 section 3.1: turnURI = scheme ":" host [ ":" port ] [ "?transport=" transport ]
_TURN_URL = re.compile(
    r"turns?:(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(?::(?P<port>\d{1,5}))?(?:\?transport=(?:udp|tcp))?"
)


def parse_turn_urls(items) -> tuple[str, ...]:
    """Check ``turn:``/``turns:`` URLs (RFC 7065 section 3.1); ``ValueError`` naming a bad one."""
    urls = tuple(str(u).strip() for u in items if str(u).strip())
    if len(urls) > MAX_URLS:
        raise ValueError(f"at most {MAX_URLS} TURN URLs")
    for url in urls:
        match = _TURN_URL.fullmatch(url)
        if match is None:
            raise ValueError(f"{url!r} is not a turn:HOST[:PORT][?transport=udp|tcp] or turns: URL (RFC 7065)")
        if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
            raise ValueError(f"{url!r}: the port must be 1 to 65535")
    return urls


@dataclass(frozen=True)
class TurnConfig:
    """The operator's TURN servers and the secret shared with them (coturn ``static-auth-secret``)."""

    urls: tuple[str, ...]
    secret: bytes = field(repr=False)
    ttl: float = 86400.0

    def credentials(self, participant_id: str, unix_now: float) -> dict:
        """``joined.turn``: ``urls``, ``username``, ``credential`` and ``ttl`` for one participant."""
        return turn_credentials(self.secret, self.urls, participant_id, unix_now, self.ttl)


def turn_credentials(secret: bytes, urls: tuple[str, ...], participant_id: str, unix_now: float,
                     ttl: float) -> dict:
    """TURN REST API credentials (the module docstring) good until ``unix_now + ttl``."""
    if ":" in participant_id:
        raise ValueError("a participant id must not contain ':' (the username's separator)")
    expiry = int(unix_now + ttl)
    username = f"{expiry}:{participant_id}"
    password = base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()
    return {"urls": list(urls), "username": username, "credential": password, "ttl": int(ttl)}

"""Access tokens (callsgw.signaling.tokens.verify) with garbage and with well-signed garbage.

Documented: every refusal is a ``TokenError`` (``InvalidToken``, ``ExpiredToken``, ``WrongCall``,
``MissingPermission``, ``RevokedToken``). The first input byte picks a mode:

* even: the rest is the token text itself (garbage tokens, mutated real tokens);
* odd: the rest is ``header JSON \\0 payload JSON``, base64url-encoded and signed with HS256 under
  the gateway's secret, so the fuzzer reaches the claim checks past the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from callsgw.signaling import tokens
from callsgw.signaling.tokens import TokenError

SECRET = b"fuzz-api-secret-" + b"k" * 32
OLD_SECRET = b"fuzz-old-secret-" + b"o" * 32
CALL = "fuzzcall"
NOW = 1_800_000_000.0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign(header: bytes, payload: bytes, key: bytes = SECRET) -> str:
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    mac = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    if mode & 1:
        header, _, payload = rest.partition(b"\0")
        token = sign(header, payload)
    else:
        token = rest.decode("utf-8", "replace")
    for kwargs in (
        {},
        {"call": CALL, "require": ("publish_voice",), "max_ttl": 86400.0, "revoked": lambda jti: jti == "x"},
    ):
        try:
            claims = tokens.verify((SECRET, OLD_SECRET), token, now=NOW, **kwargs)
        except TokenError:
            continue
        assert isinstance(claims, tokens.Claims)
        for perm in tokens.PERMISSIONS:
            claims.has(perm)

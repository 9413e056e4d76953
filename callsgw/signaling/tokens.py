"""Access tokens: HS256 JSON Web Tokens signed with the gateway's API secret.

A token admits one participant to one call (docs/PROTOCOL.md, "Tokens"). Its
claims are ``call``, ``sub`` (participant identity), ``name`` (display name),
``perm`` (a list drawn from :data:`PERMISSIONS`), ``iat`` and ``exp``
(NumericDate, RFC 7519 section 4.1).

Only HS256 (RFC 7518 section 3.2) is accepted: a header naming any other
algorithm, ``none`` included (RFC 8725 section 3.1), is refused before the
signature is looked at, and PyJWT is only ever asked for HS256, so a token
cannot choose how it is checked. PyJWT compares MACs with
:func:`hmac.compare_digest`; this module never compares secrets itself.

Every refusal is a :class:`TokenError` carrying the WebSocket ``close_code``
and the ``code`` the signaling server reports. Messages never include the
token or the secret.

Lifetime and revocation: :func:`verify` can bound a token's lifetime
(``exp - iat``, the gateway's ``max_token_ttl``), accepts several keys (the
current API secret and, during a rotation's grace period, the previous one;
see :mod:`callsgw.apisecrets`), and every minted token carries a random
``jti`` (RFC 7519 section 4.1.7) by which it can be revoked.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"

PERMISSIONS: tuple[str, ...] = ("publish_voice", "publish_screen")
"""Every permission a token can grant; tokens grant all of them by default."""

MAX_TOKEN_LENGTH = 4096
MAX_NAME_LENGTH = 64
MAX_CALL_ID_LENGTH = 128
MAX_SUB_LENGTH = 128
MIN_SECRET_BYTES = 32
"""RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output."""

IAT_LEEWAY = 60.0
"""Seconds an ``iat`` may lie in the future (clock skew between minter and gateway)."""

CALL_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,%d}" % MAX_CALL_ID_LENGTH)
_SUB_RE = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_SUB_LENGTH)
_REQUIRED_CLAIMS = ("call", "sub", "name", "perm", "exp", "iat")


class TokenError(ValueError):
    """A token was refused. ``close_code`` and ``code`` follow docs/PROTOCOL.md."""

    close_code = 4001
    code = "invalid_token"


class InvalidToken(TokenError):
    """Malformed, badly signed, wrong algorithm, bad or missing claims (4001)."""

    close_code = 4001
    code = "invalid_token"


class ExpiredToken(TokenError):
    """The token's ``exp`` has passed (4002)."""

    close_code = 4002
    code = "token_expired"


class WrongCall(TokenError):
    """The token admits another call (4003)."""

    close_code = 4003
    code = "forbidden"


class MissingPermission(TokenError):
    """The token lacks a permission the request needs (4003)."""

    close_code = 4003
    code = "forbidden"

    def __init__(self, message: str, permission: str):
        super().__init__(message)
        self.permission = permission


class RevokedToken(TokenError):
    """The token's ``jti`` is on the gateway's deny list (4001)."""

    close_code = 4001
    code = "invalid_token"


@dataclass(frozen=True)
class Claims:
    """The verified content of a token."""

    call: str
    sub: str
    name: str
    perms: frozenset[str]
    exp: float
    iat: float
    jti: str | None = None  # absent in tokens minted before revocation existed

    def has(self, permission: str) -> bool:
        """True if the token grants ``permission`` (one of :data:`PERMISSIONS`)."""
        _check_permission_name(permission)
        return permission in self.perms


def mint(
    secret: bytes,
    *,
    call: str,
    name: str,
    sub: str | None = None,
    perms: Iterable[str] = PERMISSIONS,
    ttl: float = 3600,
    now: float | None = None,
) -> str:
    """Sign a token admitting ``sub`` (default: a random id) to ``call``.

    ``perms`` defaults to every permission; ``ttl`` is the lifetime in seconds
    (at least 1). Bad arguments raise ``ValueError`` naming the argument.
    """
    _check_secret(secret)
    if not isinstance(call, str) or not CALL_ID_RE.fullmatch(call):
        raise ValueError(
            f"call id must be 1 to {MAX_CALL_ID_LENGTH} characters of A-Z a-z 0-9 . _ -"
        )
    if not _valid_name(name):
        raise ValueError(
            f"name must be 1 to {MAX_NAME_LENGTH} characters, not blank, without control characters"
        )
    sub = secrets.token_urlsafe(16) if sub is None else sub
    if not isinstance(sub, str) or not _SUB_RE.fullmatch(sub):
        raise ValueError(
            f"sub must be 1 to {MAX_SUB_LENGTH} printable ASCII characters without spaces"
        )
    if isinstance(perms, str):
        raise ValueError("perms must be a collection of permission names, not one string")
    granted = set()
    for perm in perms:
        _check_permission_name(perm)
        granted.add(perm)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl < 1:
        raise ValueError(f"ttl must be a number of seconds, at least 1, got {ttl!r}")
    issued = int(time.time() if now is None else now)
    payload = {
        "call": call,
        "sub": sub,
        "name": name,
        "perm": [p for p in PERMISSIONS if p in granted],
        "iat": issued,
        "exp": issued + math.ceil(ttl),
        "jti": new_jti(),
    }
    token = jwt.encode(payload, secret, algorithm=ALGORITHM, headers={"typ": "JWT"})
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"the token would exceed {MAX_TOKEN_LENGTH} characters")
    return token


def new_jti() -> str:
    """A fresh token id: 96 random bits, base64url (RFC 7519 section 4.1.7)."""
    return secrets.token_urlsafe(12)


def verify(
    secret: bytes | Iterable[bytes],
    token: Any,
    *,
    call: str | None = None,
    require: Iterable[str] = (),
    now: float | None = None,
    max_ttl: float | None = None,
    revoked: Callable[[str], bool] | None = None,
) -> Claims:
    """Check ``token`` and return its :class:`Claims`.

    In order: size and form, header algorithm (HS256 only), signature (under
    ``secret``, or any of the keys when several are given: a rotation's grace
    period), claim types, expiry (:class:`ExpiredToken`), a lifetime above
    ``max_ttl`` seconds, a ``jti`` for which ``revoked`` is true
    (:class:`RevokedToken`), then the ``call`` it must admit
    (:class:`WrongCall`) and the permissions in ``require``
    (:class:`MissingPermission`). Anything else wrong is :class:`InvalidToken`.
    """
    keys = [secret] if isinstance(secret, (bytes, bytearray)) else list(secret)
    if not keys:
        raise ValueError("verify needs at least one API secret")
    for key in keys:
        _check_secret(key)
    required = tuple(require)
    for perm in required:
        _check_permission_name(perm)
    now = time.time() if now is None else now

    if not isinstance(token, str):
        raise InvalidToken("the token must be a string")
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken(f"the token is longer than {MAX_TOKEN_LENGTH} characters")
    if not token.isascii() or token.count(".") != 2:
        raise InvalidToken("the token is not a JWT (three base64url parts)")
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise InvalidToken("the token header is malformed") from None
    alg = header.get("alg")
    if alg != ALGORITHM:
        shown = alg if isinstance(alg, str) and len(alg) <= 16 else "?"
        raise InvalidToken(f"the token uses algorithm {shown!r}; only {ALGORITHM} is accepted")
    if "crit" in header:
        raise InvalidToken("the token header has critical extensions, which are not supported")
    payload = None
    for key in keys:
        try:
            payload = _decode(token, key)
            break
        except jwt.InvalidSignatureError:
            continue
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("the token is malformed") from None
    if payload is None:
        raise InvalidToken("the token signature is not valid")

    claims = _claims(payload, now)
    if max_ttl is not None and claims.exp - claims.iat > max_ttl:
        raise InvalidToken(
            f"the token's lifetime ({claims.exp - claims.iat:.0f} s) is longer than this gateway "
            f"accepts (max_token_ttl {max_ttl:.0f} s)"
        )
    if claims.jti is not None and revoked is not None and revoked(claims.jti):
        raise RevokedToken("the token has been revoked")
    if call is not None and claims.call != call:
        raise WrongCall("the token is for another call")
    for perm in required:
        if perm not in claims.perms:
            raise MissingPermission(f"the token does not grant {perm}", perm)
    return claims


def _decode(token: str, key: bytes) -> Any:
    """The payload if the HS256 signature under ``key`` holds; claims are checked by the caller."""
    return jwt.decode(
        token,
        key,
        algorithms=[ALGORITHM],
        options={
            "verify_signature": True,
            "verify_exp": False,  # checked in _claims against `now`
            "verify_iat": False,
            "verify_nbf": False,
            "verify_aud": False,
            "verify_iss": False,
            "verify_sub": False,
            "verify_jti": False,
        },
    )


def _claims(payload: Any, now: float) -> Claims:
    if not isinstance(payload, dict):
        raise InvalidToken("the token payload is not a JSON object")
    missing = [c for c in _REQUIRED_CLAIMS if c not in payload]
    if missing:
        raise InvalidToken("the token lacks the claim(s) " + ", ".join(missing))
    call, sub, name, perm = payload["call"], payload["sub"], payload["name"], payload["perm"]
    if not isinstance(call, str) or not CALL_ID_RE.fullmatch(call):
        raise InvalidToken(
            f"the token's call id is not 1 to {MAX_CALL_ID_LENGTH} characters of A-Z a-z 0-9 . _ -"
        )
    if not isinstance(sub, str) or not _SUB_RE.fullmatch(sub):
        raise InvalidToken(f"the token's sub is not 1 to {MAX_SUB_LENGTH} printable characters")
    if not _valid_name(name):
        raise InvalidToken(f"the token's name is not 1 to {MAX_NAME_LENGTH} printable characters")
    if not isinstance(perm, list) or not all(isinstance(p, str) for p in perm):
        raise InvalidToken("the token's perm claim is not a list of strings")
    unknown = [p for p in perm if p not in PERMISSIONS]
    if unknown:
        shown = unknown[0] if len(unknown[0]) <= 32 else unknown[0][:32] + "..."
        raise InvalidToken(f"the token grants an unknown permission {shown!r}")
    exp, iat = _numeric_date(payload["exp"], "exp"), _numeric_date(payload["iat"], "iat")
    if exp <= iat:
        raise InvalidToken("the token expires before it was issued")
    if iat > now + IAT_LEEWAY:
        raise InvalidToken("the token was issued in the future")
    if exp <= now:
        raise ExpiredToken("the token has expired")
    jti = payload.get("jti")
    if jti is not None and (not isinstance(jti, str) or not _SUB_RE.fullmatch(jti)):
        raise InvalidToken(f"the token's jti is not 1 to {MAX_SUB_LENGTH} printable characters")
    return Claims(call=call, sub=sub, name=name, perms=frozenset(perm), exp=exp, iat=iat, jti=jti)


def _numeric_date(value: Any, claim: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken(f"the token's {claim} is not a number")
    try:
        result = float(value)
    except OverflowError:
        raise InvalidToken(f"the token's {claim} is not a valid time") from None
    if not math.isfinite(result) or result < 0:
        raise InvalidToken(f"the token's {claim} is not a valid time")
    return result


def _valid_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME_LENGTH
        and name.strip() != ""
        and name.isprintable()
    )


def _check_permission_name(perm: Any) -> None:
    if perm not in PERMISSIONS:
        raise ValueError(f"unknown permission {perm!r}; known: {', '.join(PERMISSIONS)}")


def _check_secret(secret: Any) -> None:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the API secret must be at least {MIN_SECRET_BYTES} bytes")

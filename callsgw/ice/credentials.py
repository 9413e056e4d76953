"""ICE short-term credentials (RFC 8445 section 5.3), shared by both ICE agents.

ice-char = ALPHA / DIGIT / "+" / "/"; a ufrag has 4 to 256 of them and a
password 22 to 256. Generated credentials use letters and digits only:
16 characters give 95 bits for the ufrag and 32 give 190 bits for the
password, more than the 24 and 128 bits section 5.3 asks for.
"""

from __future__ import annotations

import secrets
import string
from typing import Final

ICE_CHARS: Final = frozenset(string.ascii_letters + string.digits + "+/")
UFRAG_MIN: Final = 4
PWD_MIN: Final = 22
CRED_MAX: Final = 256
_GEN_ALPHABET: Final = string.ascii_letters + string.digits
_GEN_UFRAG_LEN, _GEN_PWD_LEN = 16, 32


def check_credential(what: str, value: str, minimum: int) -> str:
    """Return `value` if it is a valid ufrag/password, else raise ValueError/TypeError."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not minimum <= len(value) <= CRED_MAX:
        raise ValueError(f"{what} must have {minimum} to {CRED_MAX} characters (RFC 8445 section 5.3)")
    if not ICE_CHARS.issuperset(value):
        raise ValueError(f"{what} must contain only ice-chars: letters, digits, '+', '/' (RFC 8445 section 5.3)")
    return value


def generate_credentials() -> tuple[str, str]:
    """A fresh ``(ufrag, pwd)`` from :mod:`secrets`."""
    ufrag = "".join(secrets.choice(_GEN_ALPHABET) for _ in range(_GEN_UFRAG_LEN))
    pwd = "".join(secrets.choice(_GEN_ALPHABET) for _ in range(_GEN_PWD_LEN))
    return ufrag, pwd

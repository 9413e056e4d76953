"""The DTLS cipher suites and SRTP protection profiles the contract allows.

The security contract names exactly two DTLS 1.2 cipher suites and exactly two
DTLS-SRTP protection profiles (RFC 5764 section 4.1.2, RFC 7714 section 14.2).
WebRTC's own mandatory set (RFC 8827 section 6.5) is a superset; the gateway
offers and accepts only these:

========================================  ====================================
OpenSSL name                              IANA name
========================================  ====================================
``ECDHE-ECDSA-AES128-GCM-SHA256``         ``TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256``
``ECDHE-ECDSA-AES256-SHA``                ``TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA``
========================================  ====================================

SRTP profiles, in the gateway's preference order: ``SRTP_AEAD_AES_128_GCM``
(RFC 7714), then ``SRTP_AES128_CM_SHA1_80`` (RFC 5764).

An operator may *narrow* these lists with :class:`DtlsPolicy` (for example to
GCM only) but can never widen them: anything outside the mandated sets is a
``ValueError`` at configuration time, not a surprise on the wire.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from callsgw.srtp import Profile

MANDATED_CIPHERS: tuple[str, ...] = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-SHA",
)
"""The DTLS 1.2 cipher suites of the contract, OpenSSL names, preferred first."""

IANA_CIPHER_NAMES: dict[str, str] = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-SHA": "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
}
"""OpenSSL name -> IANA (RFC 8422 section 6) name of each mandated suite."""

MANDATED_SRTP_PROFILES: tuple[Profile, ...] = (
    Profile.AEAD_AES_128_GCM,
    Profile.AES128_CM_HMAC_SHA1_80,
)
"""The DTLS-SRTP protection profiles of the contract, preferred first."""

DEFAULT_HANDSHAKE_TIMEOUT = 30.0
"""Seconds a DTLS handshake may take before it fails with a timeout."""

_OPENSSL_BY_IANA = {iana: openssl for openssl, iana in IANA_CIPHER_NAMES.items()}


def iana_cipher_name(openssl_name: str) -> str:
    """Return the IANA name of a mandated cipher suite given its OpenSSL name.

    Raises ``ValueError`` for any suite outside the contract.
    """
    try:
        return IANA_CIPHER_NAMES[openssl_name]
    except KeyError:
        raise ValueError(
            f"cipher suite {openssl_name!r} is not allowed; allowed: "
            + ", ".join(MANDATED_CIPHERS)
        ) from None


def _cipher_value(value: object) -> object:
    """Map an IANA suite name to its OpenSSL name; leave anything else as is."""
    if isinstance(value, str):
        return _OPENSSL_BY_IANA.get(value, value)
    return value


def _profile_value(value: object) -> object:
    """Map a profile given as a Profile, its OpenSSL name, its enum name or its
    RFC 5764 code point to a Profile; leave anything unknown as is for
    :meth:`DtlsPolicy.validate` to reject."""
    if isinstance(value, Profile):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return Profile(value)
        except ValueError:
            return value
    if isinstance(value, str):
        for profile in Profile:
            if value in (profile.dtls_name, profile.name):
                return profile
    return value


def _tuple_of(values: object, field_name: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"DtlsPolicy.{field_name} must be a list or tuple, got {values!r}")
    return tuple(values)


def _check_subset(values: tuple, allowed: tuple, what: str, describe) -> None:
    allowed_text = ", ".join(describe(v) for v in allowed)
    if not values:
        raise ValueError(f"at least one {what} is required; allowed: {allowed_text}")
    seen = set()
    for value in values:
        if value not in allowed:
            raise ValueError(
                f"{what} {value!r} is not allowed by the security contract; "
                f"allowed: {allowed_text}"
            )
        if value in seen:
            raise ValueError(f"{what} {describe(value)} is listed twice")
        seen.add(value)


@dataclass(frozen=True)
class DtlsPolicy:
    """What one DTLS association may negotiate.

    ``ciphers`` (OpenSSL or IANA names) and ``srtp_profiles`` (``Profile``
    members, or their OpenSSL names such as ``"SRTP_AEAD_AES_128_GCM"``) must
    each be a non-empty subset of the mandated sets, without repeats; their
    order is the preference order offered by a client and enforced by a server
    (RFC 5246 section 7.4.1.2, RFC 5764 section 4.1.1). ``handshake_timeout``
    is the number of seconds a handshake may take in total.

    The constructor normalises names and calls :meth:`validate`, so a
    ``DtlsPolicy`` that exists is valid.
    """

    ciphers: tuple[str, ...] = MANDATED_CIPHERS
    srtp_profiles: tuple[Profile, ...] = MANDATED_SRTP_PROFILES
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT

    def __post_init__(self) -> None:
        ciphers = tuple(_cipher_value(c) for c in _tuple_of(self.ciphers, "ciphers"))
        profiles = tuple(
            _profile_value(p) for p in _tuple_of(self.srtp_profiles, "srtp_profiles")
        )
        object.__setattr__(self, "ciphers", ciphers)
        object.__setattr__(self, "srtp_profiles", profiles)
        self.validate()

    def validate(self) -> "DtlsPolicy":
        """Check that the policy only narrows the contract; return it.

        Raises ``ValueError`` naming the offending value and the allowed ones.
        """
        _check_subset(self.ciphers, MANDATED_CIPHERS, "cipher suite", str)
        _check_subset(
            self.srtp_profiles,
            MANDATED_SRTP_PROFILES,
            "SRTP protection profile",
            lambda p: p.dtls_name if isinstance(p, Profile) else repr(p),
        )
        timeout = self.handshake_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ValueError(
                f"handshake_timeout must be a positive number of seconds, got {timeout!r}"
            )
        return self

    @property
    def openssl_cipher_list(self) -> bytes:
        """The ``SSL_CTX_set_cipher_list`` string, e.g. ``b"A:B"``."""
        return ":".join(self.ciphers).encode("ascii")

    @property
    def openssl_srtp_profiles(self) -> bytes:
        """The ``SSL_CTX_set_tlsext_use_srtp`` string, in preference order."""
        return ":".join(p.dtls_name for p in self.srtp_profiles).encode("ascii")

"""Pure-Python definitions of the SRTP core: profiles, status codes, errors.

They live outside the ``callsgw.srtp`` package because the native extension
imports them while ``callsgw.srtp`` is importing the extension. Users import
them from ``callsgw.srtp``.
"""

from __future__ import annotations

import enum

class Profile(enum.IntEnum):
    """An SRTP protection profile, with the lengths it implies."""

    AES128_CM_HMAC_SHA1_80 = 0x0001
    AEAD_AES_128_GCM = 0x0007

    @property
    def aead(self) -> bool:
        """True for the AEAD (AES-GCM, RFC 7714) profile."""
        return self is Profile.AEAD_AES_128_GCM

    @property
    def key_length(self) -> int:
        """Master key length in bytes (both profiles use AES-128)."""
        return 16

    @property
    def salt_length(self) -> int:
        """Master salt length in bytes: 112 bits for AES-CM, 96 for GCM."""
        return 12 if self.aead else 14

    @property
    def tag_length(self) -> int:
        """Authentication tag length in bytes: 80-bit HMAC or 128-bit GCM tag."""
        return 16 if self.aead else 10

    @property
    def dtls_name(self) -> str:
        """The profile's name in OpenSSL's use_srtp extension list."""
        return "SRTP_AEAD_AES_128_GCM" if self.aead else "SRTP_AES128_CM_SHA1_80"

    @classmethod
    def from_dtls_name(cls, name: str) -> "Profile":
        """Map an OpenSSL SRTP profile name (e.g. from DTLS) to a Profile."""
        for profile in cls:
            if profile.dtls_name == name:
                return profile
        raise ValueError(f"SRTP profile {name!r} is not allowed by callsgw")


class Status(enum.IntEnum):
    """Per-packet result of the batch API (mirrors ``srtp_status`` in srtp.pxd)."""

    OK = 0
    AUTH = 1
    REPLAY = 2
    REPLAY_OLD = 3
    TOO_SHORT = 4
    BAD_VERSION = 5
    BAD_HEADER = 6
    TOO_LONG = 7
    NO_SPACE = 8
    STREAM_LIMIT = 9
    INDEX_EXHAUSTED = 10
    UNENCRYPTED = 11
    CRYPTO = 12
    BOUNDS = 13
    NO_MEMORY = 14


class SrtpError(ValueError):
    """An SRTP packet could not be processed. ``status`` gives the reason."""

    def __init__(self, message: str, status: Status | None = None):
        super().__init__(message)
        self.status = status


class AuthenticationError(SrtpError):
    """The authentication tag did not verify (tampering, wrong key or profile)."""


class ReplayError(SrtpError):
    """The packet index was already accepted, or is older than the window.

    On protect: refusing to reuse an (SSRC, index) pair under one key.
    """


class MalformedPacketError(SrtpError):
    """The packet is not well-formed RTP/RTCP/SRTP, or does not fit its buffer."""


class StreamLimitError(SrtpError):
    """A new SSRC would exceed the session's ``max_streams``."""


class KeyExhaustedError(SrtpError):
    """The packet index space is used up (RFC 3711 section 9.2); re-key."""


class PolicyError(SrtpError):
    """The packet is valid but not allowed, such as unencrypted SRTCP."""

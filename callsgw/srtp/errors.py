"""SRTP errors and the batch API's per-packet status codes.

The per-packet API raises a subclass of :class:`SrtpError` (itself a
``ValueError``); the batch API returns the matching :class:`Status` code for
each packet instead of raising.
"""

from __future__ import annotations

import enum


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

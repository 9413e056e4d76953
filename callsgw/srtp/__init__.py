"""SRTP and SRTCP for callsgw (RFC 3711, RFC 7714), on OpenSSL.

Public API::

    from callsgw.srtp import Profile, Session
    tx = Session(Profile.AEAD_AES_128_GCM, key, salt)
    srtp = tx.protect(rtp)

``Session`` covers every SSRC of one direction of one DTLS association. It has
a per-packet API (``protect``, ``unprotect``, ``protect_rtcp``,
``unprotect_rtcp``: bytes in, bytes out, ``SrtpError`` subclasses on failure)
and a batch API (``*_batch``: many packets in one buffer, processed without
the GIL, per-packet :class:`Status` codes). Native code cimports the C-level
interface from ``native/srtp.pxd``.
"""

from callsgw.srtp_defs import (
    AuthenticationError,
    KeyExhaustedError,
    MalformedPacketError,
    PolicyError,
    Profile,
    ReplayError,
    SrtpError,
    Status,
    StreamLimitError,
)

_FIX = (
    "callsgw's native SRTP extension (callsgw._native.srtp, built from native/srtp.pyx) "
    "is not available. Build it with `pip install -e '.[test]'` (or `pip install .`) "
    "from the callsgw source tree; that needs a C compiler and OpenSSL headers "
    "(`apt-get install gcc libssl-dev`)."
)

try:
    from callsgw._native.srtp import (  # noqa: E402
        OPENSSL_VERSION_TEXT,
        Session,
        error_for_status,
    )
except ImportError as exc:  # pragma: no cover - exercised by test_import_message
    raise ImportError(f"{_FIX} (underlying error: {exc})") from exc

__all__ = [
    "AuthenticationError",
    "KeyExhaustedError",
    "MalformedPacketError",
    "OPENSSL_VERSION_TEXT",
    "PolicyError",
    "Profile",
    "ReplayError",
    "Session",
    "SrtpError",
    "Status",
    "StreamLimitError",
    "error_for_status",
]

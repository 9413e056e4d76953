"""DTLS 1.2 for the media transport: certificates, the contract's suites, and a
sans-I/O connection that yields DTLS-SRTP keys (RFC 6347, RFC 5764, RFC 8827).

Public API::

    from callsgw.dtls import DtlsCertificate, DtlsConnection, DtlsPolicy, DtlsRole
    cert = DtlsCertificate.generate()          # a=fingerprint:sha-256 <cert.fingerprint>
    conn = DtlsConnection(DtlsRole.SERVER, cert, remote_sdp_fingerprint, DtlsPolicy(), now)
    conn.receive_datagram(data, now); conn.handle_timer(now)
    conn.datagrams_to_send(); conn.get_timer(); conn.next_event()
"""

from callsgw.dtls.certificate import (
    FINGERPRINT_ALGORITHM,
    DtlsCertificate,
    fingerprint_digest,
    fingerprint_of_der,
    format_fingerprint,
    parse_fingerprint,
)
from callsgw.dtls.connection import (
    DTLS1_2_VERSION,
    MAX_DATAGRAM_SIZE,
    MAX_HANDSHAKE_BYTES,
    MAX_HANDSHAKE_DATAGRAMS,
    MAX_QUEUED_DATAGRAMS,
    MTU,
    ConnectionClosed,
    DtlsConnection,
    DtlsEvent,
    DtlsRole,
    DtlsSecurityRecord,
    DtlsState,
    FailureReason,
    HandshakeCompleted,
    HandshakeFailed,
    SrtpKeys,
)
from callsgw.dtls.profiles import (
    IANA_CIPHER_NAMES,
    MANDATED_CIPHERS,
    MANDATED_SRTP_PROFILES,
    DtlsPolicy,
    iana_cipher_name,
)

__all__ = [
    "ConnectionClosed",
    "DTLS1_2_VERSION",
    "DtlsCertificate",
    "DtlsConnection",
    "DtlsEvent",
    "DtlsPolicy",
    "DtlsRole",
    "DtlsSecurityRecord",
    "DtlsState",
    "FINGERPRINT_ALGORITHM",
    "FailureReason",
    "HandshakeCompleted",
    "HandshakeFailed",
    "IANA_CIPHER_NAMES",
    "MANDATED_CIPHERS",
    "MANDATED_SRTP_PROFILES",
    "MAX_DATAGRAM_SIZE",
    "MAX_HANDSHAKE_BYTES",
    "MAX_HANDSHAKE_DATAGRAMS",
    "MAX_QUEUED_DATAGRAMS",
    "MTU",
    "SrtpKeys",
    "fingerprint_digest",
    "fingerprint_of_der",
    "format_fingerprint",
    "iana_cipher_name",
    "parse_fingerprint",
]

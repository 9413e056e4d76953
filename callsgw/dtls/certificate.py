"""Self-signed DTLS certificates and their SDP fingerprints.

WebRTC endpoints authenticate DTLS with self-signed certificates whose hash is
carried in the SDP ``a=fingerprint`` attribute (RFC 8122 section 5, RFC 8842
section 5, RFC 8827 section 6.5). The certificate itself proves nothing; the
fingerprint, delivered over the authenticated signaling channel, does.

The gateway uses ECDSA P-256 certificates (the curve every browser supports,
and what the ``ECDHE-ECDSA`` suites of the contract require) and SHA-256
fingerprints. Rotating the certificate is generating a new one: connections
created afterwards use it, existing connections keep theirs.
"""

from __future__ import annotations

import datetime
import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

FINGERPRINT_ALGORITHM = "sha-256"
"""The only fingerprint hash function callsgw produces or accepts."""

DEFAULT_VALIDITY = datetime.timedelta(days=30)
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(days=1)

_DIGEST_SIZE = hashlib.sha256().digest_size
_FINGERPRINT_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){%d}" % (_DIGEST_SIZE - 1))


def format_fingerprint(digest: bytes) -> str:
    """Format a SHA-256 digest in SDP form: ``"AB:CD:..."`` (RFC 8122 section 5)."""
    if len(digest) != _DIGEST_SIZE:
        raise ValueError(f"a SHA-256 fingerprint has {_DIGEST_SIZE} bytes, got {len(digest)}")
    return ":".join(f"{b:02X}" for b in digest)


def fingerprint_of_der(der: bytes) -> str:
    """SHA-256 fingerprint of a DER-encoded certificate, in SDP form."""
    return format_fingerprint(hashlib.sha256(der).digest())


def _canonical_value(value: str) -> str:
    if not _FINGERPRINT_RE.fullmatch(value):
        raise ValueError(
            f"malformed SHA-256 fingerprint {value!r}: expected {_DIGEST_SIZE} "
            "colon-separated pairs of hex digits"
        )
    return value.upper()


def parse_fingerprint(sdp_value: str) -> str:
    """Parse the value of an SDP ``a=fingerprint`` attribute.

    ``sdp_value`` is ``"<hash-func> <fingerprint>"`` (RFC 8122 section 5), for
    example ``"sha-256 AB:CD:..."``. The hash function name and the hex digits
    are case-insensitive. Returns the fingerprint in canonical upper-case form.
    Any hash function other than SHA-256, or a malformed value, is a
    ``ValueError``.
    """
    if not isinstance(sdp_value, str):
        raise ValueError(f"fingerprint must be a string, got {type(sdp_value).__name__}")
    parts = sdp_value.split()
    if len(parts) != 2:
        raise ValueError(
            f"malformed fingerprint attribute {sdp_value!r}: expected '<hash-func> <fingerprint>'"
        )
    algorithm, value = parts
    if algorithm.lower() != FINGERPRINT_ALGORITHM:
        raise ValueError(
            f"fingerprint hash function {algorithm!r} is not accepted; "
            f"only {FINGERPRINT_ALGORITHM} is"
        )
    return _canonical_value(value)


def fingerprint_digest(value: str) -> bytes:
    """The 32 digest bytes of a fingerprint given either as a whole SDP value
    (``"sha-256 AB:CD:..."``) or as the bare ``"AB:CD:..."`` part."""
    if not isinstance(value, str):
        raise ValueError(f"fingerprint must be a string, got {type(value).__name__}")
    canonical = parse_fingerprint(value) if len(value.split()) > 1 else _canonical_value(value.strip())
    return bytes.fromhex(canonical.replace(":", ""))


class DtlsCertificate:
    """An ECDSA P-256 private key and the self-signed certificate for it.

    The private key never appears in ``repr()``; only the public fingerprint
    does. Instances compare and hash by identity.
    """

    __slots__ = ("_private_key", "_certificate", "_der", "_fingerprint")

    algorithm = FINGERPRINT_ALGORITHM

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate):
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise ValueError("a DTLS certificate key must be an ECDSA P-256 private key")
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        encoding = serialization.Encoding.DER
        if certificate.public_key().public_bytes(encoding, public) != private_key.public_key().public_bytes(
            encoding, public
        ):
            raise ValueError("the certificate does not belong to the private key")
        self._private_key = private_key
        self._certificate = certificate
        self._der = certificate.public_bytes(serialization.Encoding.DER)
        self._fingerprint = fingerprint_of_der(self._der)

    @classmethod
    def generate(
        cls,
        *,
        validity: datetime.timedelta = DEFAULT_VALIDITY,
        common_name: str = "callsgw",
        now: datetime.datetime | None = None,
    ) -> "DtlsCertificate":
        """Make a fresh key and a self-signed certificate for it.

        The serial number is random, the certificate is valid from a day
        before ``now`` (to tolerate a peer's clock skew) until ``validity``
        after it.
        """
        if validity <= datetime.timedelta(0):
            raise ValueError("certificate validity must be positive")
        now = now or datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
            .not_valid_after(now + validity)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def der(self) -> bytes:
        return self._der

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint in SDP form, ``"AB:CD:..."``."""
        return self._fingerprint

    @property
    def sdp_fingerprint(self) -> str:
        """The whole ``a=fingerprint`` value, ``"sha-256 AB:CD:..."``."""
        return f"{self.algorithm} {self._fingerprint}"

    @property
    def not_valid_after(self) -> datetime.datetime:
        return self._certificate.not_valid_after_utc

    def install(self, context: SSL.Context) -> None:
        """Load the certificate and key into a pyOpenSSL context and check
        that they match. pyOpenSSL converts the ``cryptography`` objects to
        OpenSSL's ``X509`` and ``EVP_PKEY`` itself."""
        context.use_certificate(self._certificate)
        context.use_privatekey(self._private_key)
        context.check_privatekey()

    def __repr__(self) -> str:
        return (
            f"DtlsCertificate({self.algorithm} {self._fingerprint}, "
            f"not_valid_after={self.not_valid_after.isoformat()})"
        )

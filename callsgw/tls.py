"""TLS for the signaling port: certificates, key checks and the server context.

The contract is "TLS encryption including AES-256 with 2048-bit RSA on all
data transmissions between client applications and the server". On the TCP
port (HTTPS page, WSS signaling, admin API) that means:

- TLS 1.2 (RFC 5246) or TLS 1.3 (RFC 8446) only;
- TLS 1.2 suites exactly ``ECDHE-ECDSA-AES256-GCM-SHA384`` and
  ``ECDHE-RSA-AES256-GCM-SHA384`` (RFC 5289), so forward secrecy and AES-256-GCM;
- TLS 1.3: Python 3.11's :mod:`ssl` cannot narrow the TLS 1.3 suites, so the
  server enforces its own preference order (``OP_CIPHER_SERVER_PREFERENCE``),
  in which OpenSSL lists ``TLS_AES_256_GCM_SHA384`` first: a default client
  ends up with it;
- no compression (CRIME), no renegotiation, no session tickets;
- a certificate key of at least RSA-2048 or ECDSA P-256 (NIST SP 800-57 part 1
  rev. 5, 112-bit security); the default is a self-signed RSA-2048 certificate
  kept in the data directory.

Behind a TLS-terminating proxy (``plain_ws``) none of this applies here; the
proxy must be configured the same way (the README shows NGINX).
"""

from __future__ import annotations

import asyncio.sslproto
import ctypes
import ctypes.util
import datetime
import ipaddress
import logging
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from callsgw.datadir import DataDir
from callsgw.dtls.certificate import fingerprint_of_der

if TYPE_CHECKING:
    from callsgw.config import Config

log = logging.getLogger(__name__)

TLS12_CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
"""The only TLS 1.2 cipher suites the signaling port accepts (OpenSSL names)."""

TLS13_PREFERRED_CIPHER = "TLS_AES_256_GCM_SHA384"
"""The TLS 1.3 suite a default client negotiates under the server's preference."""

MIN_RSA_BITS = 2048
MIN_EC_BITS = 256
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
"""NIST curves that TLS clients support for ECDSA certificates (RFC 8422 section 5.1.1)."""

DEFAULT_KEY_BITS = 2048
DEFAULT_VALIDITY = datetime.timedelta(days=365)
RENEWAL_MARGIN = datetime.timedelta(days=7)
"""A default certificate expiring within this margin is made anew at start."""

_BACKDATE = datetime.timedelta(hours=1)
_DNS_NAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


class TlsConfigError(ValueError):
    """A certificate or key is unusable or too weak; the gateway refuses to start."""


@dataclass(frozen=True)
class CertInfo:
    """What :func:`check_certificate` found: safe to log and to show operators."""

    key_type: str
    """``"RSA"`` or ``"ECDSA"``."""
    key_bits: int
    subject: str
    """RFC 4514 string of the certificate's subject."""
    not_after: datetime.datetime
    """End of validity (UTC, timezone-aware)."""
    fingerprint_sha256: str
    """SHA-256 over the DER certificate, ``"AB:CD:..."``."""


def check_certificate(
    cert_path: Path | str,
    key_path: Path | str,
    *,
    now: datetime.datetime | None = None,
) -> CertInfo:
    """Check that the pair can serve the signaling port; describe the certificate.

    Raises :class:`TlsConfigError` with a one-line reason for: unreadable or
    unparsable files, an encrypted key, an RSA key under 2048 bits, an EC key on
    a curve other than P-256/P-384/P-521, any other key type (DSA, EdDSA, ...),
    a key that does not belong to the certificate, and an expired certificate.
    A chain after the leaf certificate is allowed; only the leaf is checked.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert = _load_leaf(cert_path)
    key = _load_key(key_path)
    key_type, key_bits = _check_key_strength(key, key_path)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TlsConfigError(f"TLS key {key_path} does not belong to the certificate {cert_path}")
    not_after = cert.not_valid_after_utc
    if not_after <= now:
        raise TlsConfigError(f"TLS certificate {cert_path} expired on {not_after:%Y-%m-%d %H:%M} UTC")
    return CertInfo(
        key_type=key_type,
        key_bits=key_bits,
        subject=cert.subject.rfc4514_string(),
        not_after=not_after,
        fingerprint_sha256=fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER)),
    )


def ensure_default_certificate(datadir: DataDir) -> tuple[Path, Path]:
    """Return the data directory's self-signed certificate, making it if needed.

    The certificate is RSA-2048, SHA-256-signed, valid for a year, with SANs
    ``DNS:localhost``, ``DNS:<host name>``, ``IP:127.0.0.1`` and ``IP:::1``;
    the key file has mode 0600. An existing pair is reused unless it is
    unreadable, mismatched, too weak or expires within :data:`RENEWAL_MARGIN`,
    in which case a new one replaces it (clients that pinned the old one must
    accept the new one). A symbolic link, a file owned by another user or a
    non-regular file there is refused (:class:`~callsgw.datadir.DataDirError`).
    """
    cert_path, key_path = datadir.tls_paths()
    if os.path.lexists(cert_path) or os.path.lexists(key_path):
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            _read_private(datadir, cert_path)
            _read_private(datadir, key_path)
            info = check_certificate(cert_path, key_path, now=now + RENEWAL_MARGIN)
        except TlsConfigError as exc:
            log.warning(
                "making a new default TLS certificate (the old one is unusable or expires "
                "within %d days): %s",
                RENEWAL_MARGIN.days, exc,
            )
        else:
            log.debug("reusing default TLS certificate %s (%s)", cert_path, info.fingerprint_sha256)
            return cert_path, key_path
    cert_pem, key_pem = make_self_signed_certificate()
    datadir.write_private_file(key_path.name, key_pem, replace=True)
    datadir.write_private_file(cert_path.name, cert_pem, replace=True)
    info = check_certificate(cert_path, key_path)
    log.info(
        "made default TLS certificate %s (RSA-%d, SHA-256 %s)",
        cert_path, info.key_bits, info.fingerprint_sha256,
    )
    return cert_path, key_path


def make_self_signed_certificate(
    *,
    hostname: str | None = None,
    key_bits: int = DEFAULT_KEY_BITS,
    validity: datetime.timedelta = DEFAULT_VALIDITY,
) -> tuple[bytes, bytes]:
    """A self-signed RSA server certificate; returns ``(cert_pem, key_pem)``.

    The key is PKCS #8, unencrypted: whoever writes it must protect the file.
    """
    hostname = socket.gethostname() if hostname is None else hostname
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    dns_names = ["localhost"]
    if hostname and hostname != "localhost" and _DNS_NAME_RE.fullmatch(hostname):
        dns_names.append(hostname)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, dns_names[-1]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "callsgw self-signed"),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName(n) for n in dns_names] + [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def server_ssl_context(cert_path: Path | str, key_path: Path | str) -> ssl.SSLContext:
    """The signaling port's server context; checks the pair first.

    Raises :class:`TlsConfigError` if :func:`check_certificate` refuses the
    pair or OpenSSL cannot load it.
    """
    check_certificate(cert_path, key_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= (
        ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_NO_COMPRESSION
        | ssl.OP_NO_TICKET
        | ssl.OP_NO_RENEGOTIATION
    )
    ctx.num_tickets = 0  # TLS 1.3: no session tickets at all (RFC 8446 section 4.6.1)
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"OpenSSL cannot load {cert_path} with {key_path}: {exc}") from None
    return ctx


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, str] | None:
    """``{"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}`` of a live
    connection, as reported to the client in ``joined.tls`` (docs/PROTOCOL.md);
    ``None`` for a connection without TLS (``plain_ws`` behind a proxy).

    Raises ``ValueError`` before the handshake has completed.
    """
    if ssl_object is None:
        return None
    version, cipher = ssl_object.version(), ssl_object.cipher()
    if version is None or cipher is None:
        raise ValueError("the TLS handshake has not completed")
    return {"version": version, "cipher": cipher[0]}


def certificate_for(config: Config) -> tuple[Path, Path, CertInfo] | None:
    """The certificate the gateway serves with these settings.

    ``None`` with ``plain_ws``; the operator's checked pair if ``tls_cert`` is
    set; else the data directory's default certificate, made if needed. Raises
    :class:`TlsConfigError` (or :class:`~callsgw.datadir.DataDirError`).
    """
    if config.plain_ws:
        return None
    if config.tls_cert is not None and config.tls_key is not None:
        return config.tls_cert, config.tls_key, check_certificate(config.tls_cert, config.tls_key)
    cert_path, key_path = ensure_default_certificate(DataDir(config.data_dir))
    return cert_path, key_path, check_certificate(cert_path, key_path)


def _read_private(datadir: DataDir, path: Path) -> None:
    """Check that the default certificate file is there; an unsafe one (a symbolic link, a
    file of another user, not a regular file) is a :class:`DataDirError`, a refusal like
    every other data-directory file, never silently replaced."""
    data = datadir.read_private_file(path.name)
    if data is None:
        raise TlsConfigError(f"{path} is missing")


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(1 << 20)
    except OSError as exc:
        raise TlsConfigError(f"cannot read TLS {what} {path}: {exc.strerror}") from None


def _load_leaf(path: Path) -> x509.Certificate:
    data = _read(path, "certificate")
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(f"TLS certificate {path} is not a PEM certificate") from None
    return chain[0]


def _load_key(path: Path):
    data = _read(path, "key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsConfigError(
            f"TLS key {path} is encrypted; give the gateway an unencrypted key file "
            "readable only by its user"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsConfigError(f"TLS key {path} is not a PEM private key") from None


def _check_key_strength(key, key_path: Path) -> tuple[str, int]:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise TlsConfigError(
                f"TLS key {key_path} is RSA-{key.key_size}; at least RSA-{MIN_RSA_BITS} is required"
            )
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curve = key.curve
        if curve.key_size < MIN_EC_BITS:
            raise TlsConfigError(
                f"TLS key {key_path} is ECDSA on {curve.name} ({curve.key_size} bits); "
                "at least P-256 is required"
            )
        if not isinstance(curve, ACCEPTED_CURVES):
            raise TlsConfigError(
                f"TLS key {key_path} uses curve {curve.name}, which TLS clients do not accept; "
                "use P-256, P-384 or P-521"
            )
        return "ECDSA", curve.key_size
    kind = type(key).__name__.removesuffix("PrivateKey").lstrip("_") or "unknown"
    raise TlsConfigError(
        f"TLS key {key_path} is a {kind} key; only RSA (2048 bits or more) and ECDSA "
        "(P-256 or stronger) keys are accepted"
    )


# -- memory per connection (issue #20 item 5) --------------------------------------------------

TLS_READ_BUFFER = 32 * 1024
"""Bytes asyncio's TLS transport reads per call, and allocates once per connection.

Python 3.11's :class:`asyncio.sslproto.SSLProtocol` keeps a ``max_size``
(256 KiB) ``bytearray`` per connection as its read buffer, zero-filled, so
every held WSS connection cost about 280 KiB of RSS, most of it this buffer
(``benchmarks/bench_tls_memory.py``). A TLS record carries at most 16 KiB of
plaintext (RFC 8446 section 5.1), so 32 KiB still takes two records per read;
signaling messages are far smaller.
"""


def shrink_tls_read_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Make every TLS connection asyncio creates from now on use a ``size``-byte read buffer."""
    asyncio.sslproto.SSLProtocol.max_size = size


_libc = None


def give_memory_back() -> bool:
    """Return freed heap memory to the kernel (glibc ``malloc_trim(0)``); False where unavailable.

    After a flood of connections closes, glibc keeps the freed chunks in its
    arenas (its mmap threshold rises with the first large free), so RSS stays
    at the flood's peak. ``malloc_trim`` releases the free pages (``madvise``)
    of every arena. It takes the allocator's locks: call it from a worker thread.
    """
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    trim = getattr(_libc, "malloc_trim", None) if _libc else None
    if trim is None:
        return False
    trim(0)
    return True


"""A sans-I/O DTLS 1.2 endpoint that negotiates DTLS-SRTP keys.

:class:`DtlsConnection` runs one DTLS 1.2 handshake (RFC 6347) with the
``use_srtp`` extension (RFC 5764) over pyOpenSSL memory BIOs. Like aioquic's
``QuicConnection`` it owns no socket, no task and no clock: the caller feeds it
datagrams with :meth:`~DtlsConnection.receive_datagram`, calls
:meth:`~DtlsConnection.handle_timer` when :meth:`~DtlsConnection.get_timer`
says so, sends what :meth:`~DtlsConnection.datagrams_to_send` returns and
drains :meth:`~DtlsConnection.next_event`. ``now`` is always an argument.

What the handshake enforces, and where:

* DTLS 1.2 only (RFC 6347, the version of RFC 8827 section 6.5's mandatory
  suite), exactly the policy's cipher suites and SRTP profiles, no
  renegotiation (refused with a no_renegotiation alert, as RFC 8827 section
  6.5 requires), and no session resumption (a resumed session would skip the
  certificate check).
* The peer's certificate must hash to the SDP fingerprint (RFC 8122 section 5,
  RFC 8842 section 5). This is checked in OpenSSL's verify callback, so a
  mismatch aborts the handshake *with a fatal alert*, before any key exists.
  The server requests and requires a client certificate, whose possession
  OpenSSL proves with CertificateVerify (RFC 5246 section 7.4.8).
* The server (the gateway's ``a=setup:passive`` role, RFC 8842 section 5)
  answers a first ClientHello with a HelloVerifyRequest carrying an HMAC
  cookie (RFC 6347 section 4.2.1) and imposes its own preference order on
  cipher suites and SRTP profiles.
* Every buffer a peer can fill is bounded (see the module constants).

On success the keys are exported with the ``EXTRACTOR-dtls_srtp`` label and
split as RFC 5764 section 4.2 prescribes; see :class:`SrtpKeys`.

OpenSSL's retransmission timer reads the wall clock; this module maps the time
left on it onto the caller's ``now``. In production ``now`` is a monotonic
clock and the two agree; under a simulated clock a retransmission only happens
once that much real time has passed too.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import logging
import os
import weakref
from collections import deque
from dataclasses import asdict, dataclass, field

from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _openssl_lib

from callsgw.dtls.certificate import DtlsCertificate, fingerprint_digest, format_fingerprint
from callsgw.dtls.profiles import DtlsPolicy, iana_cipher_name
from callsgw.srtp import Profile, Session

logger = logging.getLogger(__name__)

DTLS1_2_VERSION = 0xFEFD
"""The DTLS 1.2 protocol version on the wire (RFC 6347 section 4.1)."""

SRTP_EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"
"""RFC 5764 section 4.2 label for the keying material exporter (RFC 5705)."""

MTU = 1200
"""Largest datagram sent: OpenSSL fragments handshake messages to fit it."""

MAX_DATAGRAM_SIZE = 4096
"""Incoming datagrams larger than this are dropped unread."""

MAX_HANDSHAKE_BYTES = 256 * 1024
MAX_HANDSHAKE_DATAGRAMS = 500
"""Before the handshake completes, more bytes or datagrams than these fail it."""

MAX_QUEUED_DATAGRAMS = 64
"""Outgoing datagrams kept when the caller does not drain them; oldest go first."""

ECDH_GROUPS = b"X25519:P-256"
"""Key exchange groups offered and accepted (RFC 8422 section 5.1.1)."""

_RECORD_HEADER = 13  # DTLS record header length, RFC 6347 section 4.1
_CONTENT_TYPE_MIN, _CONTENT_TYPE_MAX = 20, 63  # DTLS first-byte range, RFC 7983 section 7
_COOKIE_LABEL = b"callsgw DTLS HelloVerifyRequest cookie"


class DtlsRole(str, enum.Enum):
    """``server`` is the gateway's role (``a=setup:passive``); ``client`` is
    the ``a=setup:active`` side (RFC 8842 section 5, RFC 4145 section 4)."""

    SERVER = "server"
    CLIENT = "client"


class DtlsState(str, enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    FAILED = "failed"
    CLOSED = "closed"


_TRANSITIONS: dict[DtlsState, frozenset[DtlsState]] = {
    DtlsState.HANDSHAKING: frozenset({DtlsState.ESTABLISHED, DtlsState.FAILED, DtlsState.CLOSED}),
    DtlsState.ESTABLISHED: frozenset({DtlsState.CLOSED}),
    DtlsState.FAILED: frozenset(),
    DtlsState.CLOSED: frozenset(),
}


class FailureReason(enum.Enum):
    """Why a handshake failed."""

    NO_SHARED_CIPHER = "no_shared_cipher"
    NO_SHARED_SRTP_PROFILE = "no_shared_srtp_profile"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    NO_CERTIFICATE = "no_certificate"
    WRONG_VERSION = "wrong_version"
    TIMEOUT = "timeout"
    RESOURCE_LIMIT = "resource_limit"
    PEER_ALERT = "peer_alert"
    """The peer aborted with a fatal alert that names no more precise reason."""
    PROTOCOL_ERROR = "protocol_error"


@dataclass(frozen=True)
class DtlsSecurityRecord:
    """What one completed handshake negotiated. Holds no key material."""

    version: str
    cipher_suite: str
    cipher_openssl: str
    key_exchange_group: str | None
    role: str
    srtp_profile: str
    local_fingerprint: str
    remote_fingerprint: str
    fingerprint_matched: bool
    started_at: float
    completed_at: float

    def as_dict(self) -> dict[str, str | bool | float | None]:
        """The record as plain JSON-serialisable values, for security logs."""
        return asdict(self)


@dataclass(frozen=True, eq=False, repr=False)
class SrtpKeys:
    """SRTP master keys and salts of one DTLS association, from our side.

    ``local_*`` protect what we send, ``remote_*`` what we receive. The
    exporter output is ``client_write_key | server_write_key |
    client_write_salt | server_write_salt`` (RFC 5764 section 4.2); the server
    sends with the server keys. ``repr()`` never shows key bytes.
    """

    profile: Profile
    local_key: bytes = field(repr=False)
    local_salt: bytes = field(repr=False)
    remote_key: bytes = field(repr=False)
    remote_salt: bytes = field(repr=False)

    @classmethod
    def from_exporter(cls, profile: Profile, material: bytes, role: DtlsRole) -> "SrtpKeys":
        """Split exported keying material (RFC 5764 section 4.2)."""
        key_len, salt_len = profile.key_length, profile.salt_length
        if len(material) != 2 * (key_len + salt_len):
            raise ValueError("keying material has the wrong length for the profile")
        client_key = material[:key_len]
        server_key = material[key_len : 2 * key_len]
        client_salt = material[2 * key_len : 2 * key_len + salt_len]
        server_salt = material[2 * key_len + salt_len :]
        if role is DtlsRole.SERVER:
            return cls(profile, server_key, server_salt, client_key, client_salt)
        return cls(profile, client_key, client_salt, server_key, server_salt)

    def sessions(self, **options) -> tuple[Session, Session]:
        """``(tx, rx)`` SRTP sessions; ``options`` go to both ``Session``s."""
        tx = Session(self.profile, self.local_key, self.local_salt, **options)
        rx = Session(self.profile, self.remote_key, self.remote_salt, **options)
        return tx, rx

    def __repr__(self) -> str:
        return f"SrtpKeys(profile={self.profile.name}, keys=<hidden>)"


@dataclass(frozen=True)
class HandshakeCompleted:
    record: DtlsSecurityRecord
    keys: SrtpKeys


@dataclass(frozen=True)
class HandshakeFailed:
    reason: FailureReason
    detail: str


@dataclass(frozen=True)
class ConnectionClosed:
    """An established association ended: close_notify or a fatal alert from
    the peer (``by_peer``), or a record we could not accept."""

    by_peer: bool
    detail: str


DtlsEvent = HandshakeCompleted | HandshakeFailed | ConnectionClosed


class _Rejected(Exception):
    """A handshake result the policy refuses."""

    def __init__(self, reason: FailureReason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class DtlsConnection:
    """One DTLS 1.2 association, driven by datagrams and ``now``.

    ``remote_fingerprint`` is the peer's SDP fingerprint, either the whole
    ``"sha-256 AB:CD:..."`` value or the bare ``"AB:CD:..."`` part. A client
    sends its ClientHello at construction; fetch it with
    :meth:`datagrams_to_send`.
    """

    def __init__(
        self,
        role: DtlsRole | str,
        certificate: DtlsCertificate,
        remote_fingerprint: str,
        policy: DtlsPolicy = DtlsPolicy(),
        now: float = 0.0,
    ):
        self.role = DtlsRole(role)
        self.certificate = certificate
        self.policy = policy.validate()
        self._expected_digest = fingerprint_digest(remote_fingerprint)
        self._state = DtlsState.HANDSHAKING
        self._started_at = now
        self._deadline = now + policy.handshake_timeout
        self._retransmit_at: float | None = None
        self._events: deque[DtlsEvent] = deque()
        self._outgoing: deque[bytes] = deque()
        self._received_bytes = 0
        self._received_datagrams = 0
        self._cookie_secret = os.urandom(32)
        self._peer_verified = False
        self._peer_fingerprint: str | None = None
        self._rejection: _Rejected | None = None
        self.dropped_incoming = 0
        """Received datagrams dropped unread (oversize, empty, not DTLS)."""
        self.dropped_outgoing = 0
        """Queued datagrams dropped because the caller did not drain them."""

        ssl = SSL.Connection(_context_for(self.role, certificate, self.policy), None)
        ssl.set_app_data(weakref.ref(self))
        ssl.set_ciphertext_mtu(MTU)
        if self.role is DtlsRole.SERVER:
            ssl.set_accept_state()
        else:
            ssl.set_connect_state()
        self._ssl: SSL.Connection | None = ssl
        self._handshake(now)

    # -- public API ---------------------------------------------------------

    @property
    def state(self) -> DtlsState:
        return self._state

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Process one UDP payload that carries DTLS records (RFC 7983).

        Never raises for anything the peer sends: bad input is dropped, or
        fails the handshake with a :class:`HandshakeFailed` event.
        """
        if self._state in (DtlsState.FAILED, DtlsState.CLOSED):
            return
        if self._state is DtlsState.HANDSHAKING:
            self._received_datagrams += 1
            self._received_bytes += len(data)
            if (
                self._received_datagrams > MAX_HANDSHAKE_DATAGRAMS
                or self._received_bytes > MAX_HANDSHAKE_BYTES
            ):
                self._fail(
                    FailureReason.RESOURCE_LIMIT,
                    f"more than {MAX_HANDSHAKE_DATAGRAMS} datagrams or "
                    f"{MAX_HANDSHAKE_BYTES} bytes before the handshake completed",
                )
                return
        if (
            not data
            or len(data) > MAX_DATAGRAM_SIZE
            or not _CONTENT_TYPE_MIN <= data[0] <= _CONTENT_TYPE_MAX
        ):
            self.dropped_incoming += 1
            return
        # One datagram at a time: OpenSSL consumes the whole memory BIO in the
        # call below, so datagram boundaries survive the stream BIO.
        self._ssl.bio_write(bytes(data))
        if self._state is DtlsState.HANDSHAKING:
            self._handshake(now)
        else:
            self._read_records(now)

    def handle_timer(self, now: float) -> None:
        """Fail a handshake past its deadline, or let OpenSSL retransmit."""
        if self._state is not DtlsState.HANDSHAKING:
            return
        if now >= self._deadline:
            self._fail(
                FailureReason.TIMEOUT,
                f"handshake not complete after {self.policy.handshake_timeout:g} s",
            )
            return
        if self._retransmit_at is not None and now >= self._retransmit_at:
            try:
                self._ssl.DTLSv1_handle_timeout()
            except SSL.Error as exc:
                # OpenSSL gives up after too many retransmissions.
                self._fail(FailureReason.TIMEOUT, _error_text(exc))
                return
            self._flush(now)

    def get_timer(self) -> float | None:
        """Absolute time (on the caller's clock) of the next retransmission
        or of the handshake deadline, whichever is first; ``None`` once the
        handshake is over."""
        if self._state is not DtlsState.HANDSHAKING:
            return None
        if self._retransmit_at is None:
            return self._deadline
        return min(self._deadline, self._retransmit_at)

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams to send to the peer, each at most :data:`MTU` bytes."""
        datagrams = list(self._outgoing)
        self._outgoing.clear()
        return datagrams

    def next_event(self) -> DtlsEvent | None:
        """The next :class:`HandshakeCompleted`, :class:`HandshakeFailed` or
        :class:`ConnectionClosed` event, or ``None``."""
        return self._events.popleft() if self._events else None

    def __repr__(self) -> str:
        return f"<DtlsConnection {self.role.value} {self._state.value}>"

    def close(self) -> None:
        """Close the association: an established one sends close_notify
        (RFC 5246 section 7.2.1); a handshake in progress is abandoned
        silently. A local close produces no event."""
        if self._state is DtlsState.ESTABLISHED:
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
            self._drain_bio()
        if self._state in (DtlsState.HANDSHAKING, DtlsState.ESTABLISHED):
            self._set_state(DtlsState.CLOSED)
            self._release()

    # -- OpenSSL callbacks --------------------------------------------------

    def _verify_peer(self, ssl: SSL.Connection, der: bytes, depth: int) -> bool:
        """Pin the peer's leaf certificate to the SDP fingerprint.

        Called by OpenSSL for each certificate of the chain, leaf last. Only
        the leaf is pinned (RFC 8122 section 5); self-signed and otherwise
        "untrusted" certificates are fine, since the fingerprint arrived over
        the authenticated signaling channel. Returning False makes OpenSSL
        abort the handshake with a fatal alert.
        """
        if depth > 0:
            return True
        digest = hashlib.sha256(der).digest()
        self._peer_fingerprint = format_fingerprint(digest)
        if not hmac.compare_digest(digest, self._expected_digest):
            self._rejection = _Rejected(
                FailureReason.FINGERPRINT_MISMATCH,
                f"peer certificate fingerprint {self._peer_fingerprint} does not match "
                f"the SDP fingerprint {format_fingerprint(self._expected_digest)}",
            )
            return False
        # The SRTP profile is settled by the time certificates are exchanged
        # (ServerHello, RFC 5764 section 4.1.1). Without one the association
        # is useless, so abort now, with an alert, rather than after Finished.
        if self._selected_profile(ssl) is None:
            self._rejection = _Rejected(
                FailureReason.NO_SHARED_SRTP_PROFILE,
                "no SRTP protection profile in common (offered: "
                + self.policy.openssl_srtp_profiles.decode()
                + ")",
            )
            return False
        self._peer_verified = True
        return True

    def _cookie(self) -> bytes:
        return hmac.new(self._cookie_secret, _COOKIE_LABEL, hashlib.sha256).digest()

    def _cookie_matches(self, cookie: bytes) -> bool:
        return hmac.compare_digest(cookie, self._cookie())

    # -- internals ----------------------------------------------------------

    def _set_state(self, state: DtlsState) -> None:
        if state not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"illegal DTLS state transition {self._state.value} -> {state.value}")
        self._state = state

    def _handshake(self, now: float) -> None:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._flush(now)
            return
        except SSL.ZeroReturnError:
            self._fail(FailureReason.PEER_ALERT, "peer sent close_notify during the handshake")
            return
        except SSL.Error as exc:
            if self._rejection is not None:
                self._fail(self._rejection.reason, self._rejection.detail)
            else:
                text = _error_text(exc)
                self._fail(_classify(text), text)
            return
        self._complete(now)

    def _complete(self, now: float) -> None:
        try:
            record, keys = self._results(now)
        except _Rejected as rejected:
            # Unreachable with a working verify callback; if it ever happens,
            # at least tell the peer the association is over.
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
            self._fail(rejected.reason, rejected.detail)
            return
        self._set_state(DtlsState.ESTABLISHED)
        self._events.append(HandshakeCompleted(record, keys))
        # The server's final flight, or alerts, may still be in the BIO; and
        # a DTLS 1.2 server needs no further timer (RFC 6347 section 4.2.4).
        self._flush(now)

    def _results(self, now: float) -> tuple[DtlsSecurityRecord, SrtpKeys]:
        """Check what was negotiated against the policy (defence in depth
        behind the OpenSSL configuration) and export the SRTP keys."""
        ssl = self._ssl
        if ssl.get_protocol_version() != DTLS1_2_VERSION:
            raise _Rejected(
                FailureReason.WRONG_VERSION,
                f"negotiated {ssl.get_protocol_version_name()}, only DTLS 1.2 is allowed",
            )
        cipher = ssl.get_cipher_name()
        if cipher not in self.policy.ciphers:
            raise _Rejected(FailureReason.NO_SHARED_CIPHER, f"negotiated cipher {cipher!r} is not allowed")
        peer = ssl.get_peer_certificate()
        if peer is None:
            raise _Rejected(FailureReason.NO_CERTIFICATE, "the peer presented no certificate")
        digest = hashlib.sha256(_der(peer)).digest()
        if not self._peer_verified or not hmac.compare_digest(digest, self._expected_digest):
            raise _Rejected(
                FailureReason.FINGERPRINT_MISMATCH,
                "the peer certificate was not verified against the SDP fingerprint",
            )
        profile = self._selected_profile(ssl)
        if profile is None:
            raise _Rejected(FailureReason.NO_SHARED_SRTP_PROFILE, "no SRTP protection profile selected")
        material = ssl.export_keying_material(
            SRTP_EXPORTER_LABEL, 2 * (profile.key_length + profile.salt_length)
        )
        keys = SrtpKeys.from_exporter(profile, material, self.role)
        record = DtlsSecurityRecord(
            version="DTLS 1.2",
            cipher_suite=iana_cipher_name(cipher),
            cipher_openssl=cipher,
            key_exchange_group=ssl.get_group_name(),
            role=self.role.value,
            srtp_profile=profile.dtls_name,
            local_fingerprint=self.certificate.fingerprint,
            remote_fingerprint=format_fingerprint(digest),
            fingerprint_matched=True,
            started_at=self._started_at,
            completed_at=now,
        )
        return record, keys

    def _selected_profile(self, ssl: SSL.Connection) -> Profile | None:
        name = ssl.get_selected_srtp_profile().decode("ascii", "replace")
        try:
            profile = Profile.from_dtls_name(name)
        except ValueError:
            return None
        return profile if profile in self.policy.srtp_profiles else None

    def _read_records(self, now: float) -> None:
        """After the handshake: let OpenSSL handle alerts, close_notify and
        retransmitted peer flights; application data is read and dropped."""
        try:
            while True:
                self._ssl.recv(MAX_DATAGRAM_SIZE)
        except SSL.WantReadError:
            self._flush(now)
        except SSL.ZeroReturnError:
            try:
                self._ssl.shutdown()  # answer close_notify with close_notify
            except SSL.Error:
                pass
            self._end(ConnectionClosed(by_peer=True, detail="close_notify"))
        except SSL.Error as exc:
            self._end(ConnectionClosed(by_peer=True, detail=_error_text(exc)))

    def _flush(self, now: float) -> None:
        self._drain_bio()
        if self._state is DtlsState.HANDSHAKING:
            remaining = self._ssl.DTLSv1_get_timeout()
            self._retransmit_at = None if remaining is None else now + remaining

    def _drain_bio(self) -> None:
        chunks = []
        while True:
            try:
                chunks.append(self._ssl.bio_read(65536))
            except SSL.WantReadError:
                break
        for datagram in _pack_records(b"".join(chunks), MTU):
            self._queue(datagram)

    def _queue(self, datagram: bytes) -> None:
        # A caller that stops draining loses the oldest datagrams, as a full
        # socket buffer would; DTLS retransmission recovers (RFC 6347 4.2.4).
        if len(self._outgoing) >= MAX_QUEUED_DATAGRAMS:
            self._outgoing.popleft()
            self.dropped_outgoing += 1
        self._outgoing.append(datagram)

    def _fail(self, reason: FailureReason, detail: str) -> None:
        logger.debug("DTLS %s handshake failed: %s: %s", self.role.value, reason.value, detail)
        self._drain_bio()  # the alert OpenSSL wrote, if any
        self._set_state(DtlsState.FAILED)
        self._events.append(HandshakeFailed(reason, detail))
        self._release()

    def _end(self, event: ConnectionClosed) -> None:
        logger.debug("DTLS %s association closed: %s", self.role.value, event.detail)
        self._drain_bio()
        self._set_state(DtlsState.CLOSED)
        self._events.append(event)
        self._release()

    def _release(self) -> None:
        self._retransmit_at = None
        self._ssl = None


def _der(cert: crypto.X509) -> bytes:
    """The certificate's DER bytes as OpenSSL holds them. Deliberately not
    through ``cryptography``, whose strict parser rejects certificates that
    OpenSSL accepted; such a certificate must fail the fingerprint check, not
    the callback."""
    return crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)


def _owner(ssl: SSL.Connection) -> DtlsConnection | None:
    ref = ssl.get_app_data()
    return ref() if ref is not None else None


def _verify_callback(ssl: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    # Registered on a shared context: never raise (pyOpenSSL would re-raise
    # the exception in whichever connection next reports an error).
    try:
        owner = _owner(ssl)
        return owner is not None and owner._verify_peer(ssl, _der(cert), depth)
    except Exception:
        logger.exception("DTLS certificate verification callback failed")
        return False


def _generate_cookie(ssl: SSL.Connection) -> bytes:
    owner = _owner(ssl)
    # An empty cookie fails the handshake; only if the owner is gone.
    return owner._cookie() if owner is not None else b""


def _verify_cookie(ssl: SSL.Connection, cookie: bytes) -> bool:
    owner = _owner(ssl)
    return owner is not None and owner._cookie_matches(cookie)


@functools.lru_cache(maxsize=16)
def _context_for(role: DtlsRole, certificate: DtlsCertificate, policy: DtlsPolicy) -> SSL.Context:
    """The OpenSSL context for one (role, certificate, policy).

    Building a context costs about half a millisecond, so contexts are shared;
    per-connection state reaches the callbacks through the connection's app
    data. A rotated certificate gets a new context.
    """
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    ctx.set_cipher_list(policy.openssl_cipher_list)
    ctx.set_tlsext_use_srtp(policy.openssl_srtp_profiles)
    # pyOpenSSL exposes only a single-curve setter (set_tmp_ecdh); the group
    # list needs SSL_CTX_set1_groups_list through its cffi binding.
    if _openssl_lib.SSL_CTX_set1_curves_list(ctx._context, ECDH_GROUPS) != 1:
        raise RuntimeError(f"OpenSSL refused the ECDH groups {ECDH_GROUPS!r}")
    ctx.set_options(
        SSL.OP_NO_TICKET
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_NO_COMPRESSION
        | SSL.OP_NO_QUERY_MTU
        | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    certificate.install(ctx)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_callback)
    if role is DtlsRole.SERVER:
        ctx.set_options(SSL.OP_COOKIE_EXCHANGE)
        ctx.set_cookie_generate_callback(_generate_cookie)
        ctx.set_cookie_verify_callback(_verify_cookie)
    return ctx


def _pack_records(stream: bytes, mtu: int) -> list[bytes]:
    """Cut OpenSSL's output into whole DTLS records and pack them into
    datagrams of at most ``mtu`` bytes (several records may share a datagram,
    RFC 6347 section 4.1.1). OpenSSL already keeps each record within the MTU.
    """
    records = []
    offset = 0
    while offset < len(stream):
        if len(stream) - offset < _RECORD_HEADER:
            records.append(stream[offset:])
            break
        length = int.from_bytes(stream[offset + 11 : offset + 13], "big")
        end = min(offset + _RECORD_HEADER + length, len(stream))
        records.append(stream[offset:end])
        offset = end
    datagrams: list[bytes] = []
    current = b""
    for record in records:
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


def _error_text(exc: SSL.Error) -> str:
    """The OpenSSL reason strings of a pyOpenSSL error, or its text."""
    if exc.args and isinstance(exc.args[0], list):
        reasons = [entry[2] for entry in exc.args[0] if isinstance(entry, tuple) and len(entry) == 3]
        if reasons:
            return "; ".join(reasons)
    return str(exc) or type(exc).__name__


_VERSION_ERRORS = (
    "unsupported protocol",
    "wrong version number",
    "wrong ssl version",
    "version too low",
    "version too high",
    "bad protocol version number",
    "alert protocol version",
)


def _classify(text: str) -> FailureReason:
    """Map OpenSSL 4 reason strings onto a :class:`FailureReason`."""
    if "no shared cipher" in text:
        return FailureReason.NO_SHARED_CIPHER
    if "srtp" in text:
        return FailureReason.NO_SHARED_SRTP_PROFILE
    if any(marker in text for marker in _VERSION_ERRORS):
        return FailureReason.WRONG_VERSION
    if "peer did not return a certificate" in text or "alert no certificate" in text:
        return FailureReason.NO_CERTIFICATE
    if "timeout" in text:
        return FailureReason.TIMEOUT
    if "alert" in text:
        return FailureReason.PEER_ALERT
    return FailureReason.PROTOCOL_ERROR

"""Security records: what one participant session negotiated (issue #7 item 1).

A :class:`SessionRecord` is built from facts the gateway already has and is
safe to show a security reviewer: protocol versions, cipher suites by name,
the SRTP profile, certificate fingerprints and key type/size, the ICE pair,
times, counters and, for a failed handshake, the reason. It never holds key
material, tokens, passwords or salts: only ``str``/``int``/``float``/``bool``
and ``None`` values, and no field named like a secret apart from the
certificate ``*_fingerprint`` and ``cert_key_type``/``cert_key_bits``.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Handshake/transport failure reasons a record may carry (issue #7 item 1).
# Anything else the transport reports is stored as "other", with the
# original reason kept at the start of ``failure_detail``.
FAILURE_REASONS = (
    "no_shared_cipher",
    "no_shared_srtp_profile",
    "fingerprint_mismatch",
    "wrong_version",
    "timeout",
    "ice_consent_lost",
    "other",
)

MAX_DETAIL = 500
"""Longest ``failure_detail`` / ``leave_reason`` kept (peer-influenced text)."""


def transport_times_as_unix(transport_record: dict, wall_offset: float) -> dict:
    """``TransportSecurityRecord.as_dict()`` with its times (the core's monotonic clock) as Unix times.

    Changes ``transport_record`` in place and returns it: ``created_at``,
    ``connected_at``, ``closed_at`` and the DTLS ``started_at`` /
    ``completed_at`` each get ``wall_offset`` added (``None`` stays ``None``).
    Records are stored and shown in Unix time, live or not.
    """
    for holder, keys in ((transport_record, ("created_at", "connected_at", "closed_at")),
                         (transport_record.get("dtls") or {}, ("started_at", "completed_at"))):
        for key in keys:
            if holder.get(key) is not None:
                holder[key] = holder[key] + wall_offset
    return transport_record


def new_session_id() -> str:
    """A random, unguessable session id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def _short(text: object | None) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def normalize_failure(reason: str | None, detail: str | None) -> tuple[str | None, str | None]:
    """Map a transport/DTLS failure reason onto :data:`FAILURE_REASONS`."""
    if reason is None:
        return None, _short(detail)
    reason = str(getattr(reason, "value", reason))
    if reason in FAILURE_REASONS:
        return reason, _short(detail)
    return "other", _short(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class SignalingTls:
    """The signaling connection's TLS, as the gateway saw it (None values behind a TLS-terminating proxy).

    ``protocol``: how the session was signaled: ``callsgw.v1`` (WebSocket), ``whip`` or
    ``whep`` (HTTP, docs/WHIP.md); None in records made before it was kept.
    """

    tls_version: str | None = None
    tls_cipher: str | None = None
    cert_key_type: str | None = None
    cert_key_bits: int | None = None
    protocol: str | None = None


@dataclass(frozen=True)
class DtlsInfo:
    """What the DTLS handshake negotiated (no key material)."""

    version: str | None = None
    cipher_suite: str | None = None  # IANA name, e.g. TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    role: str | None = None
    local_fingerprint: str | None = None
    remote_fingerprint: str | None = None
    fingerprint_matched: bool | None = None
    ecdhe_group: str | None = None
    handshake_started_at: float | None = None
    handshake_completed_at: float | None = None


@dataclass(frozen=True)
class IcePair:
    """The ICE selected pair: the gateway's address and the participant's."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int


@dataclass(frozen=True)
class Counters:
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    srtp_auth_failures: int = 0
    srtp_replays: int = 0

    @classmethod
    def from_transport(cls, counters: Any, *, bytes_in: int | None = None,
                       bytes_out: int | None = None) -> "Counters":
        """From a :class:`callsgw.transport.media.TransportCounters`, a mapping or a :class:`Counters`.

        ``TransportCounters`` counts packets, SRTP octets (``bytes_in`` /
        ``bytes_out``; the native engine's are folded in by the shell) and SRTP
        failure statuses (names of :class:`callsgw.srtp_defs.Status`, lower
        case; ``send_*`` for our own protect errors). ``bytes_in`` /
        ``bytes_out`` given here override the counters' own.
        """
        if counters is None:
            return cls(bytes_in=bytes_in or 0, bytes_out=bytes_out or 0)
        if isinstance(counters, Counters):
            return counters
        if isinstance(counters, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: int(v) for k, v in counters.items() if k in known})
        errors = getattr(counters, "srtp_errors", {}) or {}
        return cls(
            packets_in=int(getattr(counters, "rtp_in", 0)) + int(getattr(counters, "rtcp_in", 0)),
            packets_out=int(getattr(counters, "rtp_out", 0)) + int(getattr(counters, "rtcp_out", 0)),
            bytes_in=int(getattr(counters, "bytes_in", 0) if bytes_in is None else bytes_in),
            bytes_out=int(getattr(counters, "bytes_out", 0) if bytes_out is None else bytes_out),
            srtp_auth_failures=int(errors.get("auth", 0)),
            srtp_replays=int(errors.get("replay", 0)) + int(errors.get("replay_old", 0)),
        )


@dataclass(frozen=True)
class SessionRecord:
    """The security record of one participant session."""

    session_id: str
    call_id: str
    participant_id: str
    participant_name: str
    joined_at: float
    signaling: SignalingTls = field(default_factory=SignalingTls)
    dtls: DtlsInfo = field(default_factory=DtlsInfo)
    srtp_profile: str | None = None
    ice_selected_pair: IcePair | None = None
    left_at: float | None = None
    leave_reason: str | None = None
    counters: Counters = field(default_factory=Counters)
    failure: str | None = None
    failure_detail: str | None = None

    def __post_init__(self) -> None:
        if self.failure is not None and self.failure not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {self.failure!r}; use normalize_failure()")

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_transport(
        cls,
        transport_record: Any,
        *,
        call_id: str,
        participant_id: str,
        participant_name: str,
        joined_at: float,
        counters: Any = None,
        tls: Mapping[str, str] | None = None,
        cert: Any = None,
        left_at: float | None = None,
        leave_reason: str | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
        session_id: str | None = None,
        protocol: str | None = None,
    ) -> "SessionRecord":
        """Build a record from what the gateway knows.

        ``transport_record``: ``TransportSecurityRecord.as_dict()`` (or the
        record itself, or ``None`` before the transport exists); ``counters``:
        the transport's ``TransportCounters``; ``tls``: ``callsgw.tls.describe()``
        of the signaling connection (``None`` behind a TLS-terminating proxy);
        ``cert``: the served certificate's ``CertInfo`` (ignored when ``tls``
        is ``None``).
        """
        t = transport_record
        if t is not None and not isinstance(t, Mapping):
            t = t.as_dict()
        t = t or {}
        d = t.get("dtls") or {}
        if not isinstance(d, Mapping):
            d = d.as_dict()
        pair = None
        sel = (t.get("ice") or {}).get("selected_pair")
        if sel:
            (lip, lport), (rip, rport) = sel["local"][:2], sel["remote"][:2]
            pair = IcePair(str(lip), int(lport), str(rip), int(rport))
        signaling = SignalingTls(protocol=protocol)
        if tls is not None:
            signaling = SignalingTls(
                tls_version=tls.get("version"),
                tls_cipher=tls.get("cipher"),
                cert_key_type=getattr(cert, "key_type", None),
                cert_key_bits=getattr(cert, "key_bits", None),
                protocol=protocol,
            )
        dtls = DtlsInfo(
            version=d.get("version"),
            cipher_suite=d.get("cipher_suite"),
            role=d.get("role"),
            local_fingerprint=d.get("local_fingerprint"),
            remote_fingerprint=d.get("remote_fingerprint"),
            fingerprint_matched=d.get("fingerprint_matched"),
            ecdhe_group=d.get("key_exchange_group"),
            handshake_started_at=d.get("started_at"),
            handshake_completed_at=d.get("completed_at"),
        )
        failure, detail = normalize_failure(t.get("failure"), t.get("failure_detail"))
        return cls(
            session_id=session_id or new_session_id(),
            call_id=call_id,
            participant_id=participant_id,
            participant_name=participant_name,
            joined_at=float(joined_at),
            signaling=signaling,
            dtls=dtls,
            srtp_profile=t.get("srtp_profile") or d.get("srtp_profile"),
            ice_selected_pair=pair,
            left_at=left_at,
            leave_reason=_short(leave_reason),
            counters=Counters.from_transport(counters, bytes_in=bytes_in, bytes_out=bytes_out),
            failure=failure,
            failure_detail=detail,
        )

    def left(self, left_at: float, reason: str | None, counters: Any = None, **byte_counts: int) -> "SessionRecord":
        """This record at leave time (for :meth:`RecordStore.update`)."""
        changes: dict[str, Any] = {"left_at": float(left_at), "leave_reason": _short(reason)}
        if counters is not None or byte_counts:
            changes["counters"] = Counters.from_transport(counters, **byte_counts)
        return dataclasses.replace(self, **changes)

    def with_failure(self, reason: str, detail: str | None = None) -> "SessionRecord":
        failure, detail = normalize_failure(reason, detail)
        return dataclasses.replace(self, failure=failure, failure_detail=detail)

    # -- serialisation ---------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (nested dicts), for the API and the database."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SessionRecord":
        def sub(kind, value):
            if value is None:
                return None
            known = {f.name for f in dataclasses.fields(kind)}
            return kind(**{k: v for k, v in value.items() if k in known})

        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["signaling"] = sub(SignalingTls, data.get("signaling")) or SignalingTls()
        values["dtls"] = sub(DtlsInfo, data.get("dtls")) or DtlsInfo()
        values["counters"] = sub(Counters, data.get("counters")) or Counters()
        values["ice_selected_pair"] = sub(IcePair, data.get("ice_selected_pair"))
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "SessionRecord":
        return cls.from_dict(json.loads(text))

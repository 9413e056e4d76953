"""Records built from the real transport types, for the security tests."""

from __future__ import annotations

import re
from collections import Counter
from types import SimpleNamespace

from callsgw.dtls.connection import DtlsSecurityRecord
from callsgw.security.records import SessionRecord
from callsgw.transport.media import TransportCounters, TransportSecurityRecord

FP_LOCAL = "sha-256 " + ":".join(["AB"] * 32)
FP_REMOTE = "sha-256 " + ":".join(["CD"] * 32)
CERT = SimpleNamespace(key_type="RSA", key_bits=2048)  # stands in for callsgw.tls.CertInfo

ALLOWED_KEYLIKE = {"local_fingerprint", "remote_fingerprint", "cert_key_type", "cert_key_bits"}
SECRET_NAME = re.compile(r"key|secret|token|salt|pwd|passw|master", re.I)


def transport_record(
    cipher="TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    profile="AEAD_AES_128_GCM",
    failure=None,
    detail=None,
) -> TransportSecurityRecord:
    rec = TransportSecurityRecord(ice_local_ufrag="gwUf", ice_remote_ufrag="peerUf", created_at=1.0)
    if failure is None:
        rec.selected_pair = (("192.0.2.1", 8443), ("198.51.100.7", 50000))
        rec.dtls = DtlsSecurityRecord(
            version="DTLSv1.2",
            cipher_suite=cipher,
            cipher_openssl="ECDHE-ECDSA-AES128-GCM-SHA256",
            key_exchange_group="X25519",
            role="server",
            srtp_profile=profile,
            local_fingerprint=FP_LOCAL,
            remote_fingerprint=FP_REMOTE,
            fingerprint_matched=True,
            started_at=1.5,
            completed_at=1.6,
        )
        rec.srtp_profile = profile
        rec.connected_at = 1.6
    else:
        rec.failure, rec.failure_detail, rec.closed_at = failure, detail, 2.0
    return rec


def counters(rtp_in=10, rtcp_in=2, rtp_out=20, rtcp_out=3, auth=1, replay=2, replay_old=1) -> TransportCounters:
    c = TransportCounters(rtp_in=rtp_in, rtcp_in=rtcp_in, rtp_out=rtp_out, rtcp_out=rtcp_out)
    c.srtp_errors = Counter({"auth": auth, "replay": replay, "replay_old": replay_old, "send_error": 5})
    return c


def make_record(call_id="standup", name="alice", joined_at=100.0, tls=True, **transport) -> SessionRecord:
    return SessionRecord.from_transport(
        transport_record(**transport).as_dict(),
        call_id=call_id,
        participant_id=f"p-{name}",
        participant_name=name,
        joined_at=joined_at,
        counters=counters(),
        tls={"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"} if tls else None,
        cert=CERT,
        bytes_in=1000,
        bytes_out=2000,
    )


def walk(value, path=""):
    """Yield ``(path, key, value)`` for every mapping entry and ``(path, None, value)`` for leaves."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path, k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]")
    else:
        yield path, None, value


def assert_no_secrets(data) -> None:
    for path, key, value in walk(data):
        assert not isinstance(value, (bytes, bytearray, memoryview)), f"bytes at {path}.{key}"
        if key is not None:
            assert key in ALLOWED_KEYLIKE or not SECRET_NAME.search(key), f"secret-like field {path}.{key}"

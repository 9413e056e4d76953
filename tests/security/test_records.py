"""SessionRecord: built from the transport's record, JSON round trip, no secrets."""

from __future__ import annotations

import dataclasses
import json

import pytest

from callsgw.security.records import FAILURE_REASONS, SessionRecord, normalize_failure

from .helpers import CERT, FP_LOCAL, FP_REMOTE, assert_no_secrets, counters, make_record, transport_record


def test_from_transport_takes_every_fact():
    r = make_record()
    assert len(r.session_id) >= 20
    assert (r.call_id, r.participant_id, r.participant_name, r.joined_at) == ("standup", "p-alice", "alice", 100.0)
    assert r.signaling.tls_version == "TLSv1.3"
    assert r.signaling.tls_cipher == "TLS_AES_256_GCM_SHA384"
    assert (r.signaling.cert_key_type, r.signaling.cert_key_bits) == ("RSA", 2048)
    assert r.dtls.version == "DTLSv1.2"
    assert r.dtls.cipher_suite == "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
    assert r.dtls.role == "server"
    assert (r.dtls.local_fingerprint, r.dtls.remote_fingerprint) == (FP_LOCAL, FP_REMOTE)
    assert r.dtls.fingerprint_matched is True
    assert r.srtp_profile == "AEAD_AES_128_GCM"
    pair = r.ice_selected_pair
    assert (pair.local_ip, pair.local_port, pair.remote_ip, pair.remote_port) == ("192.0.2.1", 8443, "198.51.100.7", 50000)
    c = r.counters
    assert (c.packets_in, c.packets_out, c.bytes_in, c.bytes_out) == (12, 23, 1000, 2000)
    assert (c.srtp_auth_failures, c.srtp_replays) == (1, 3)
    assert r.left_at is None and r.failure is None


def test_from_transport_accepts_the_record_object_and_no_tls():
    rec = transport_record()
    a = SessionRecord.from_transport(
        rec, call_id="c", participant_id="p", participant_name="n", joined_at=1.0, tls=None, cert=CERT
    )
    assert a.signaling.tls_version is None and a.signaling.cert_key_type is None  # proxy terminates TLS
    assert a.dtls.cipher_suite == rec.dtls.cipher_suite
    assert a.counters.packets_in == 0


def test_session_ids_are_random():
    assert len({make_record().session_id for _ in range(50)}) == 50


def test_frozen_and_left():
    r = make_record()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.left_at = 5.0  # type: ignore[misc]
    done = r.left(200.0, "bye", counters(rtp_in=99))
    assert (done.left_at, done.leave_reason, done.counters.packets_in) == (200.0, "bye", 101)
    assert done.session_id == r.session_id and r.left_at is None


@pytest.mark.parametrize("reason", [r for r in FAILURE_REASONS if r != "other"])
def test_failure_reasons_kept(reason):
    r = make_record(failure=reason, detail="why")
    assert (r.failure, r.failure_detail) == (reason, "why")
    assert r.dtls.cipher_suite is None and r.srtp_profile is None and r.ice_selected_pair is None


@pytest.mark.parametrize("reason", ["protocol_error", "peer_alert", "no_certificate", "resource_limit"])
def test_other_failures_normalised(reason):
    r = make_record(failure=reason, detail="details")
    assert r.failure == "other"
    assert r.failure_detail == f"{reason}: details"


def test_unknown_failure_refused_and_detail_bounded():
    with pytest.raises(ValueError):
        dataclasses.replace(make_record(), failure="made_up")
    assert len(normalize_failure("timeout", "x" * 10_000)[1]) <= 500


def test_json_round_trip():
    for r in (make_record(), make_record(failure="timeout", detail="no ClientHello"), make_record(tls=False)):
        text = r.to_json()
        assert json.loads(text) == r.as_dict()
        assert SessionRecord.from_json(text) == r


def test_no_key_material_or_tokens():
    for r in (make_record(), make_record(failure="fingerprint_mismatch", detail="d")):
        assert_no_secrets(r.as_dict())
        assert_no_secrets(json.loads(r.to_json()))
        for f in dataclasses.fields(r):
            assert "bytes" not in str(f.type)
    # the DTLS record's "key_exchange_group" is renamed, not copied under a key-like name
    assert make_record().dtls.ecdhe_group == "X25519"
    assert "gwUf" not in make_record().to_json()  # ICE credentials are not recorded

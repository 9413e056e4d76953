"""RecordStore: the same tests against SQLite and PostgreSQL (see conftest.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat

import pytest

from callsgw.security.db import SQLITE_FILE, DuplicateSession, StoreError, UnknownSession, open_store
from callsgw.security.migrations import LATEST, MIGRATIONS

from .helpers import SECRET_NAME, assert_no_secrets, make_record


def raw_rows(factory, table="sessions"):
    """Every row of ``table`` as dicts, read with the driver directly (not through the store)."""
    if factory.kind == "sqlite":
        conn = sqlite3.connect(factory.data_dir / SQLITE_FILE)
        try:
            cur = conn.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(factory.url) as conn:
        cur = conn.execute(f"SELECT * FROM {table}")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def test_insert_get(store):
    r = make_record()
    store.insert(r)
    assert store.get(r.session_id) == r
    assert store.get("nope") is None
    with pytest.raises(DuplicateSession):
        store.insert(r)


def test_update_at_leave(store):
    r = make_record()
    store.insert(r)
    done = r.left(160.0, "bye")
    store.update(done)
    assert store.get(r.session_id) == done
    assert store.live() == []
    with pytest.raises(UnknownSession):
        store.update(make_record())


def test_list_filters_and_order(store):
    recs = [make_record(call_id=c, name=f"u{i}", joined_at=float(t)) for i, (c, t) in
            enumerate([("a", 10), ("a", 30), ("b", 20), ("a", 40)])]
    for r in recs:
        store.insert(r)
    assert [r.joined_at for r in store.list()] == [40.0, 30.0, 20.0, 10.0]
    assert [r.joined_at for r in store.list(call_id="a")] == [40.0, 30.0, 10.0]
    assert [r.joined_at for r in store.list(call_id="a", since=30.0)] == [40.0, 30.0]
    assert [r.joined_at for r in store.list(limit=2)] == [40.0, 30.0]
    assert store.list(call_id="zzz") == []
    assert store.list(limit=0) == []
    with pytest.raises(ValueError):
        store.list(limit=-1)


def test_list_is_parameterised(store):
    store.insert(make_record(call_id="x"))
    evil = "x' OR '1'='1"
    assert store.list(call_id=evil) == []
    store.insert(make_record(call_id=evil))
    assert [r.call_id for r in store.list(call_id=evil)] == [evil]
    assert store.get("' OR 1=1 --") is None


def test_live(store):
    a, b, c = make_record(joined_at=1.0), make_record(joined_at=2.0), make_record(joined_at=3.0)
    for r in (a, b, c):
        store.insert(r)
    store.update(b.left(5.0, "left"))
    assert [r.session_id for r in store.live()] == [a.session_id, c.session_id]


def test_summary(store):
    assert store.summary() == {
        "sessions": 0, "live": 0, "failed": 0, "by_cipher_suite": {}, "by_dtls_version": {},
        "by_srtp_profile": {}, "failures_by_reason": {},
    }
    gcm = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
    cbc = "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
    store.insert(make_record(cipher=gcm, profile="AEAD_AES_128_GCM"))
    store.insert(make_record(cipher=gcm, profile="AES128_CM_HMAC_SHA1_80"))
    store.insert(make_record(cipher=cbc, profile="AES128_CM_HMAC_SHA1_80").left(9.0, "bye"))
    store.insert(make_record(failure="no_shared_cipher", detail="offered only CHACHA20").left(9.0, "failed"))
    store.insert(make_record(failure="no_shared_cipher").left(9.0, "failed"))
    store.insert(make_record(failure="ice_consent_lost").left(9.0, "failed"))
    store.insert(make_record(failure="protocol_error", detail="bad record").left(9.0, "failed"))
    s = store.summary()
    assert (s["sessions"], s["live"], s["failed"]) == (7, 2, 4)
    assert s["by_cipher_suite"] == {gcm: 2, cbc: 1}
    assert s["by_dtls_version"] == {"DTLSv1.2": 3}
    assert s["by_srtp_profile"] == {"AEAD_AES_128_GCM": 1, "AES128_CM_HMAC_SHA1_80": 2}
    assert s["failures_by_reason"] == {"ice_consent_lost": 1, "no_shared_cipher": 2, "other": 1}
    json.dumps(s)


def test_failure_records_round_trip(store):
    for reason in ("no_shared_cipher", "no_shared_srtp_profile", "fingerprint_mismatch", "wrong_version",
                   "timeout", "ice_consent_lost", "peer_alert"):
        r = make_record(failure=reason, detail=f"detail of {reason}")
        store.insert(r)
        got = store.get(r.session_id)
        assert got == r and got.failure in (reason, "other")


def test_prune_retention(store):
    old = make_record(joined_at=0.0).left(100.0, "bye")
    recent = make_record(joined_at=0.0).left(950.0, "bye")
    live_old = make_record(joined_at=0.0)
    for r in (old, recent, live_old):
        store.insert(r)
    assert store.prune(3600, now=1000.0) == 0
    assert store.prune(100, now=1000.0) == 1
    assert store.get(old.session_id) is None
    assert {r.session_id for r in store.list()} == {recent.session_id, live_old.session_id}
    assert store.prune(0, now=10_000.0) == 1  # live sessions are never pruned
    assert [r.session_id for r in store.list()] == [live_old.session_id]
    with pytest.raises(ValueError):
        store.prune(-1)


def test_reopen_keeps_records(store_factory):
    s = store_factory()
    r = make_record()
    s.insert(r)
    s.close()
    assert store_factory().get(r.session_id) == r


def test_migrations_from_v1(store_factory):
    s1 = store_factory(target_version=1)
    assert s1.schema_version() == 1
    r = make_record()
    # a row as version 1 wrote it: no dtls_version column yet
    s1._execute(
        "INSERT INTO sessions (session_id, call_id, participant_id, joined_at, left_at, dtls_cipher,"
        " srtp_profile, failure, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (r.session_id, r.call_id, r.participant_id, r.joined_at, None, r.dtls.cipher_suite, r.srtp_profile,
         None, r.to_json()),
    )
    s1.close()
    s = store_factory()
    assert s.schema_version() == LATEST
    assert s.get(r.session_id) == r
    assert s.summary()["by_dtls_version"] == {"DTLSv1.2": 1}  # back-filled by migration 2
    s.insert(make_record())
    s.close()
    # idempotent: opening again applies nothing
    s = store_factory()
    assert s.schema_version() == LATEST
    versions = [row["version"] for row in raw_rows(store_factory, "schema_version")]
    assert sorted(versions) == [m.version for m in MIGRATIONS]
    assert len(s.list()) == 2


def test_newer_schema_refused(store_factory):
    s = store_factory()
    s._execute("INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
               (LATEST + 1, "from the future", 0.0))
    s.close()
    with pytest.raises(StoreError, match="newer"):
        store_factory()


def test_no_secrets_in_raw_rows(store_factory):
    s = store_factory()
    for r in (make_record(), make_record(failure="fingerprint_mismatch", detail="sha-256 differs")):
        s.insert(r)
        s.update(r.left(500.0, "bye"))
    rows = raw_rows(store_factory)
    assert len(rows) == 2
    for row in rows:
        for column, value in row.items():
            assert not isinstance(value, (bytes, bytearray, memoryview)), column
            assert not SECRET_NAME.search(column), column
        assert_no_secrets(json.loads(row["record"]))
        assert "gwUf" not in row["record"] and "peerUf" not in row["record"]


def test_sqlite_file_mode_0600(tmp_path):
    data = tmp_path / "new-data-dir"
    with open_store(None, data) as s:
        s.insert(make_record())
    path = data / SQLITE_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    # a file left readable by others is tightened at open
    os.chmod(path, 0o644)
    open_store(None, data).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # sqlite:/// URLs name another file
    other = tmp_path / "elsewhere" / "r.db"
    open_store(f"sqlite:///{other}", data).close()
    assert stat.S_IMODE(os.stat(other).st_mode) == 0o600


def test_unsupported_url(tmp_path):
    with pytest.raises(StoreError, match="unsupported"):
        open_store("mysql://u:p@h/db", tmp_path)


def test_dataclass_fields_stored_as_columns(store_factory):
    store_factory().insert(make_record(failure="timeout"))
    row = raw_rows(store_factory)[0]
    assert {"session_id", "call_id", "joined_at", "left_at", "dtls_cipher", "dtls_version", "srtp_profile",
            "failure", "record"} <= set(row)
    assert row["failure"] == "timeout"
    assert dataclasses.is_dataclass(make_record())


def test_revoked_tokens_are_kept_until_their_expiry(store):
    now = 1_800_000_000.0
    store.revoke("jti-a", now + 60, now=now)
    store.revoke("jti-b", now + 10, now=now)
    store.revoke("jti-a", now + 120, now=now)  # again: the later expiry wins, no duplicate
    assert store.revoked(now=now) == {"jti-a": now + 120, "jti-b": now + 10}
    assert store.revoked(now=now + 30) == {"jti-a": now + 120}
    store.prune(86400, now=now + 30)
    assert store.revoked(now=now) == {"jti-a": now + 120}  # b's row is gone for good
    for bad in ("", "x" * 129, "a\nb", None):
        with pytest.raises(ValueError):
            store.revoke(bad, now + 1, now=now)

"""Versioned schema migrations of the records database.

``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``. Each is a
description and, per dialect (``"sqlite"``, ``"postgresql"``), a list of SQL
statements. :mod:`callsgw.security.db` applies the missing ones in order at
open, each in one transaction together with the ``schema_version`` row, so
opening is idempotent. Never edit a released migration: append a new one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]

    def statements(self, dialect: str) -> tuple[str, ...]:
        return getattr(self, dialect)


_V1_TABLE = """
CREATE TABLE sessions (
    session_id     TEXT PRIMARY KEY,
    call_id        TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    joined_at      {real} NOT NULL,
    left_at        {real},
    dtls_cipher    TEXT,
    srtp_profile   TEXT,
    failure        TEXT,
    record         TEXT NOT NULL
)
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "sessions table: queried columns plus the whole record as JSON",
        sqlite=(_V1_TABLE.format(real="REAL"),),
        postgresql=(_V1_TABLE.format(real="DOUBLE PRECISION"),),
    ),
    Migration(
        2,
        "indexes for list/live/prune; dtls_version column, back-filled from the JSON",
        sqlite=(
            "CREATE INDEX sessions_call_joined ON sessions (call_id, joined_at)",
            "CREATE INDEX sessions_joined ON sessions (joined_at)",
            "CREATE INDEX sessions_left ON sessions (left_at)",
            "ALTER TABLE sessions ADD COLUMN dtls_version TEXT",
            "UPDATE sessions SET dtls_version = json_extract(record, '$.dtls.version')",
        ),
        postgresql=(
            "CREATE INDEX sessions_call_joined ON sessions (call_id, joined_at)",
            "CREATE INDEX sessions_joined ON sessions (joined_at)",
            "CREATE INDEX sessions_left ON sessions (left_at)",
            "ALTER TABLE sessions ADD COLUMN dtls_version TEXT",
            "UPDATE sessions SET dtls_version = (record::jsonb -> 'dtls' ->> 'version')",
        ),
    ),
)

_V3_REVOKED = """
CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at {real} NOT NULL,
    revoked_at {real} NOT NULL
)
"""

MIGRATIONS += (
    Migration(
        3,
        "revoked_tokens: the jti deny-list (kept until the token would have expired)",
        sqlite=(_V3_REVOKED.format(real="REAL"),),
        postgresql=(_V3_REVOKED.format(real="DOUBLE PRECISION"),),
    ),
)

_V4_SYSTEMS = "CREATE TABLE Systems (name TEXT PRIMARY KEY, value TEXT NOT NULL)"

MIGRATIONS += (
    Migration(
        4,
        "Systems(name, value): cluster-wide settings and secrets (ClusterEncryptionKey, ApiSecret), "
        "written insert-if-absent in serializable transactions (issue #15)",
        sqlite=(_V4_SYSTEMS,),
        postgresql=(_V4_SYSTEMS,),
    ),
)

LATEST = MIGRATIONS[-1].version

assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))

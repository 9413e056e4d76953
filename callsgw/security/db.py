"""The records database (issue #7 item 2): SQLite by default, PostgreSQL on request.

:func:`open_store` returns a :class:`RecordStore`:

- ``url`` ``None`` (or empty): SQLite, the file ``records.sqlite3`` in the data
  directory, created with mode 0600; no set-up. ``sqlite:///abs/path`` names
  another file.
- ``url`` ``postgresql://...`` (or ``postgres://...``): PostgreSQL through
  psycopg 3 (``pip install 'psycopg[binary]'``).

Both apply the versioned migrations of :mod:`callsgw.security.migrations` in
order at open (a ``schema_version`` table records each one); opening an
up-to-date database changes nothing, and a database newer than this code is
refused. Every statement is parameterised. The queried parts of a record are
columns (call, times, DTLS cipher suite and version, SRTP profile, failure);
the whole record is kept as JSON text.

A store is safe to share between threads (one connection, one lock). Its
methods block; call them from an executor if that matters to an event loop.
"""

from __future__ import annotations

import abc
import errno
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from callsgw.datadir import DataDirError
from callsgw.security.migrations import LATEST, MIGRATIONS
from callsgw.security.records import SessionRecord
from callsgw.security.totals import COUNTER_FIELDS, GROUPS, RecordTotals

log = logging.getLogger(__name__)

SQLITE_FILE = "records.sqlite3"
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")
"""Files SQLite keeps beside the database (rollback journal, write-ahead log, its index)."""
MAX_LIST = 10_000
"""Largest ``limit`` :meth:`RecordStore.list` accepts."""

_COLUMNS = (
    "session_id",
    "call_id",
    "participant_id",
    "joined_at",
    "left_at",
    "dtls_cipher",
    "dtls_version",
    "srtp_profile",
    "failure",
    "record",
)


_SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


class StoreError(Exception):
    """The records database cannot be opened or used as asked."""


class StoreFileError(StoreError, DataDirError):
    """The SQLite file or a journal beside it cannot be used safely (a data-directory refusal).

    Also a :class:`~callsgw.datadir.DataDirError`, so the command line reports
    it like every other refusal of the data directory: one line, exit 2.
    """


class StoreUnavailable(StoreError):
    """The records database server could not be reached (may work on a retry)."""


class DuplicateSession(StoreError):
    """:meth:`RecordStore.insert` of a session id that is already stored."""


class UnknownSession(StoreError, KeyError):
    """:meth:`RecordStore.update` of a session id that is not stored."""


def _row_values(record: SessionRecord) -> tuple[Any, ...]:
    return (
        record.session_id,
        record.call_id,
        record.participant_id,
        record.joined_at,
        record.left_at,
        record.dtls.cipher_suite,
        record.dtls.version,
        record.srtp_profile,
        record.failure,
        record.to_json(),
    )


class RecordStore(abc.ABC):
    """Session security records, whatever the backend."""

    dialect: str  # "sqlite" or "postgresql"

    def __init__(self, *, target_version: int | None = None) -> None:
        self._lock = threading.RLock()
        self._target = LATEST if target_version is None else target_version

    # -- backend hooks ----------------------------------------------------------

    @abc.abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement (``?`` placeholders) in its own transaction; rows if any."""

    @abc.abstractmethod
    def _in_transaction(self, fn: Callable[[Callable[..., list[tuple]]], Any]) -> Any:
        """``fn(execute)`` in one transaction, exclusive against other writers/openers."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; the store is unusable afterwards."""

    def __enter__(self) -> "RecordStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- migrations ---------------------------------------------------------------

    def schema_version(self) -> int:
        with self._lock:
            rows = self._execute("SELECT MAX(version) FROM schema_version")
            return int(rows[0][0] or 0) if rows else 0

    def _migrate(self) -> None:
        self._execute(_SCHEMA_VERSION_TABLE)
        current = self.schema_version()
        if current > LATEST:
            raise StoreError(
                f"the records database has schema version {current}, newer than this callsgw knows ({LATEST})"
            )
        for migration in MIGRATIONS:
            if current < migration.version <= self._target:

                def apply(execute, migration=migration) -> bool:
                    # Checked again under the lock: another opener may have applied it.
                    rows = execute("SELECT MAX(version) FROM schema_version")
                    if int(rows[0][0] or 0) >= migration.version:
                        return False
                    for sql in migration.statements(self.dialect):
                        execute(sql)
                    execute(
                        "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                        (migration.version, migration.description, time.time()),
                    )
                    return True

                if self._in_transaction(apply):
                    log.info("records database: applied migration %d (%s)", migration.version, migration.description)
                current = migration.version

    _integrity_errors: tuple[type[BaseException], ...] = ()

    # -- records ------------------------------------------------------------------

    def insert(self, record: SessionRecord) -> None:
        """Store a new record; :class:`DuplicateSession` if its id exists."""
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self._lock:
            try:
                self._execute(f"INSERT INTO sessions ({', '.join(_COLUMNS)}) VALUES ({placeholders})", _row_values(record))
            except self._integrity_errors as exc:
                raise DuplicateSession(record.session_id) from exc

    def upsert_many(self, records: Sequence[SessionRecord]) -> None:
        """Store each record (new, or replacing the stored one with its session id), all in one
        transaction: when this returns, every one of them is durable (the backend committed)."""
        if not records:
            return
        placeholders = ", ".join("?" for _ in _COLUMNS)
        sets = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
        sql = (f"INSERT INTO sessions ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
               f"ON CONFLICT (session_id) DO UPDATE SET {sets}")

        def write(execute) -> None:
            for record in records:
                execute(sql, _row_values(record))

        with self._lock:
            self._in_transaction(write)

    def update(self, record: SessionRecord) -> None:
        """Replace the stored record with the same session id (e.g. at leave)."""
        values = _row_values(record)
        sets = ", ".join(f"{c} = ?" for c in _COLUMNS[1:])
        with self._lock:
            rows = self._execute(
                f"UPDATE sessions SET {sets} WHERE session_id = ? RETURNING session_id", (*values[1:], values[0])
            )
            if not rows:
                raise UnknownSession(record.session_id)

    def get(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            rows = self._execute("SELECT record FROM sessions WHERE session_id = ?", (session_id,))
        return SessionRecord.from_json(rows[0][0]) if rows else None

    def list(
        self, call_id: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[SessionRecord]:
        """Most recent first (by join time): of one call if ``call_id``; joined at or after ``since``."""
        limit = int(limit)
        if not 0 <= limit <= MAX_LIST:
            raise ValueError(f"limit must be between 0 and {MAX_LIST}")
        where, params = [], []
        if call_id is not None:
            where.append("call_id = ?")
            params.append(call_id)
        if since is not None:
            where.append("joined_at >= ?")
            params.append(float(since))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            rows = self._execute(
                f"SELECT record FROM sessions{clause} ORDER BY joined_at DESC, session_id LIMIT ?", (*params, limit)
            )
        return [SessionRecord.from_json(r[0]) for r in rows]

    def live(self) -> list[SessionRecord]:
        """Sessions that have not left, oldest first."""
        with self._lock:
            rows = self._execute("SELECT record FROM sessions WHERE left_at IS NULL ORDER BY joined_at, session_id")
        return [SessionRecord.from_json(r[0]) for r in rows]

    def summary(self) -> dict[str, Any]:
        """Counts: sessions, live, failed; by DTLS cipher suite, DTLS version and SRTP profile; failures by reason."""

        def counts(column: str) -> dict[str, int]:
            rows = self._execute(
                f"SELECT {column}, COUNT(*) FROM sessions WHERE {column} IS NOT NULL GROUP BY {column} ORDER BY {column}"
            )
            return {str(k): int(n) for k, n in rows}

        with self._lock:
            total, live, failed = self._execute(
                "SELECT COUNT(*),"
                " COALESCE(SUM(CASE WHEN left_at IS NULL THEN 1 ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN failure IS NOT NULL THEN 1 ELSE 0 END), 0)"
                " FROM sessions"
            )[0]
            return {
                "sessions": int(total),
                "live": int(live),
                "failed": int(failed),
                "by_cipher_suite": counts("dtls_cipher"),
                "by_dtls_version": counts("dtls_version"),
                "by_srtp_profile": counts("srtp_profile"),
                "failures_by_reason": counts("failure"),
            }

    def _json_number(self, path: tuple[str, str], kind: str) -> str:
        """SQL for a number inside the ``record`` JSON (``recent.j``), ``kind`` an SQL type name."""
        if self.dialect == "sqlite":
            return f"CAST(json_extract(j, '$.{path[0]}.{path[1]}') AS {kind})"
        return f"CAST(j #>> '{{{path[0]},{path[1]}}}' AS {kind})"

    def record_totals(self, *, limit: int = MAX_LIST, exclude: Sequence[str] = (),
                      buckets: Sequence[float] = ()) -> RecordTotals:
        """What ``/metrics`` counts (:mod:`callsgw.security.totals`) over the ``limit`` most recent
        records (by join time, as :meth:`list`), leaving out the sessions ``exclude`` names (the
        live ones, counted from memory), with the handshake latency histogram's ``buckets``.

        One aggregate statement (one consistent view): a few rows come back whatever the table's
        size, nothing is decoded per record in Python.
        """
        limit = int(limit)
        if not 0 <= limit <= MAX_LIST:
            raise ValueError(f"limit must be between 0 and {MAX_LIST}")
        buckets = tuple(float(b) for b in buckets)
        if self.dialect == "sqlite":
            j, ids = "record", "SELECT value FROM json_each(?)"
        else:
            j, ids = "CAST(record AS jsonb)", "SELECT jsonb_array_elements_text(CAST(? AS jsonb))"
        counters = ", ".join(f"COALESCE({self._json_number(('counters', name), 'BIGINT')}, 0) AS c_{name}"
                             for name in COUNTER_FIELDS)
        started = self._json_number(("dtls", "handshake_started_at"), "DOUBLE PRECISION")
        done = self._json_number(("dtls", "handshake_completed_at"), "DOUBLE PRECISION")
        branches = [
            f"SELECT '{kind}', {column}, CAST(COUNT(*) AS BIGINT), MAX(joined_at) FROM kept"
            f" WHERE {column} <> '' GROUP BY {column}"
            for kind, column in (("suites", "dtls_cipher"), ("profiles", "srtp_profile"), ("failures", "failure"))
        ]
        branches += [f"SELECT 'counter', '{name}', CAST(COALESCE(SUM(c_{name}), 0) AS BIGINT), NULL FROM kept"
                     for name in COUNTER_FIELDS]
        branches += [f"SELECT 'le', '{i}', CAST(COUNT(CASE WHEN x <= ? THEN 1 END) AS BIGINT), NULL FROM lat"
                     for i in range(len(buckets))]
        branches += ["SELECT 'count', NULL, CAST(COUNT(x) AS BIGINT), NULL FROM lat",
                     "SELECT 'sum', NULL, NULL, SUM(x) FROM lat"]
        sql = (
            f"WITH recent AS (SELECT session_id, joined_at, dtls_cipher, srtp_profile, failure, {j} AS j"
            " FROM sessions ORDER BY joined_at DESC, session_id LIMIT ?),"
            f" kept AS (SELECT joined_at, dtls_cipher, srtp_profile, failure, {counters},"
            f" CASE WHEN dtls_cipher <> '' THEN {started} END AS hs,"
            f" CASE WHEN dtls_cipher <> '' THEN {done} END AS hd"
            f" FROM recent WHERE session_id NOT IN ({ids})),"
            " lat AS (SELECT CASE WHEN hd >= hs THEN hd - hs END AS x FROM kept) "
            + " UNION ALL ".join(branches)
        )
        with self._lock:
            rows = self._execute(sql, (limit, json.dumps([str(s) for s in exclude]), *buckets))
        groups: dict[str, list[tuple[float, str, int]]] = {g: [] for g in GROUPS}
        counts = dict.fromkeys(COUNTER_FIELDS, 0)
        le = [0] * len(buckets)
        n_latencies, latency_sum = 0, 0.0
        for kind, label, n, x in rows:
            if kind in groups:
                groups[kind].append((-float(x), str(label), int(n)))
            elif kind == "counter":
                counts[label] = int(n)
            elif kind == "le":
                le[int(label)] = int(n)
            elif kind == "count":
                n_latencies = int(n)
            else:
                latency_sum = float(x or 0.0)
        # newest first: the order a scan of the records by join time meets each value in
        ordered = {g: tuple((label, n) for _, label, n in sorted(v)) for g, v in groups.items()}
        return RecordTotals(buckets=buckets, counters=counts, latency_le=tuple(le), latency_count=n_latencies,
                            latency_sum=latency_sum, **ordered)

    # -- Systems(name, value): cluster-wide settings and secrets (issue #15) ------------------

    def _serializable(self, fn: Callable[[Callable[..., list[tuple]]], Any]) -> Any:
        """``fn(execute)`` in one SERIALIZABLE transaction (retried on serialization failures)."""
        return self._in_transaction(fn)

    def system_value(self, name: str) -> str | None:
        """The value of the Systems row ``name``, or None if there is none."""
        _check_system_name(name)
        with self._lock:
            rows = self._execute("SELECT value FROM Systems WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def system_values(self, names: Sequence[str]) -> dict[str, str | None]:
        """Several Systems rows read in one transaction (a consistent view)."""
        for name in names:
            _check_system_name(name)

        def read(execute) -> dict[str, str | None]:
            out: dict[str, str | None] = {}
            for name in names:
                rows = execute("SELECT value FROM Systems WHERE name = ?", (name,))
                out[name] = rows[0][0] if rows else None
            return out

        with self._lock:
            return self._serializable(read)

    def system_insert_if_absent(self, name: str, value: str) -> str:
        """Insert the row unless it exists, in a serializable transaction; the value it holds after.

        Every caller racing to create the row gets the first writer's value.
        """
        _check_system_name(name)
        _check_system_value(value)

        def insert(execute) -> str:
            execute("INSERT INTO Systems (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, value))
            return execute("SELECT value FROM Systems WHERE name = ?", (name,))[0][0]

        with self._lock:
            return self._serializable(insert)

    def system_update(self, fn: Callable[[dict[str, str | None]], dict[str, str | None]],
                      names: Sequence[str]) -> dict[str, str | None]:
        """Read-modify-write of the Systems rows ``names`` in one serializable transaction.

        ``fn`` gets the current values (None: absent) and returns the rows to
        write (None: delete); it may run more than once (a retried
        transaction), so it must not have side effects. Returns what it wrote.
        """
        for name in names:
            _check_system_name(name)

        def update(execute) -> dict[str, str | None]:
            current: dict[str, str | None] = {}
            for name in names:
                rows = execute("SELECT value FROM Systems WHERE name = ?", (name,))
                current[name] = rows[0][0] if rows else None
            changes = fn(dict(current))
            for name, value in changes.items():
                if name not in current:
                    raise ValueError(f"system_update wrote {name!r}, which it did not read")
                if value is None:
                    execute("DELETE FROM Systems WHERE name = ?", (name,))
                    continue
                _check_system_value(value)
                execute("INSERT INTO Systems (name, value) VALUES (?, ?)"
                        " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))
            return changes

        with self._lock:
            return self._serializable(update)

    # -- revoked tokens (the jti deny-list) -------------------------------------------------

    def revoke(self, jti: str, expires_at: float, *, now: float | None = None) -> None:
        """Deny the token ``jti`` until ``expires_at`` (Unix time; after it the token is dead anyway)."""
        if not isinstance(jti, str) or not 0 < len(jti) <= 128 or not jti.isprintable():
            raise ValueError("a jti is 1 to 128 printable characters")
        stamp = time.time() if now is None else now
        with self._lock:
            self._in_transaction(lambda execute: (
                execute("DELETE FROM revoked_tokens WHERE jti = ?", (jti,)),
                execute("INSERT INTO revoked_tokens (jti, expires_at, revoked_at) VALUES (?, ?, ?)",
                        (jti, float(expires_at), stamp)),
            ))

    def revoked(self, *, now: float | None = None) -> dict[str, float]:
        """Every jti still denied at ``now``, with the time it can be forgotten."""
        cutoff = time.time() if now is None else now
        with self._lock:
            rows = self._execute("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > ?", (cutoff,))
        return {jti: expires for jti, expires in rows}

    def prune(self, older_than_seconds: float, *, now: float | None = None) -> int:
        """Delete sessions that left more than ``older_than_seconds`` ago (live ones stay); how many."""
        if older_than_seconds < 0:
            raise ValueError("older_than_seconds must not be negative")
        cutoff = (time.time() if now is None else now) - older_than_seconds
        with self._lock:
            rows = self._execute(
                "DELETE FROM sessions WHERE left_at IS NOT NULL AND left_at < ? RETURNING session_id", (cutoff,)
            )
            self._execute("DELETE FROM revoked_tokens WHERE expires_at <= ? RETURNING jti",
                          (time.time() if now is None else now,))
        return len(rows)


MAX_SYSTEM_NAME = 64
MAX_SYSTEM_VALUE = 64 * 1024
"""Bounds of a Systems row's name and value (the rows are keys and small JSON documents)."""


def _check_system_name(name: str) -> None:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_SYSTEM_NAME or not name.isascii() \
            or not name.isprintable():
        raise ValueError(f"a Systems row name is 1 to {MAX_SYSTEM_NAME} printable ASCII characters")


def _check_system_value(value: str) -> None:
    if not isinstance(value, str) or len(value) > MAX_SYSTEM_VALUE:
        raise ValueError(f"a Systems row value is text of at most {MAX_SYSTEM_VALUE} characters")


# -- SQLite ------------------------------------------------------------------------


class SqliteRecordStore(RecordStore):
    dialect = "sqlite"
    _integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path, *, target_version: int | None = None) -> None:
        super().__init__(target_version=target_version)
        self.path = Path(path)
        check_sqlite_files(self.path)
        _create_private(self.path)
        try:
            # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE).
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            raise StoreFileError(f"cannot open the records database {self.path}: {exc}") from None
        try:
            self._conn.execute("PRAGMA foreign_keys = ON")
            # Write-ahead log: a crash (kill -9) mid-write never leaves a torn database, and
            # readers do not block the writer; FULL: a committed record survives power loss too.
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            with self._lock:
                self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreFileError(
                f"{self.path} is not a usable records database ({exc}); move it away to start a new one"
            ) from None
        except BaseException:
            self._conn.close()
            raise

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    def _in_transaction(self, fn):
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self._execute)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return result

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def check_sqlite_files(path: Path) -> None:
    """Refuse the database file and its journals unless each is absent or a regular file of ours.

    SQLite follows symbolic links and opens whatever it finds at
    ``records.sqlite3``, ``-journal``, ``-wal`` and ``-shm``; a planted link
    would make it write the records (or roll a "hot" journal back) elsewhere.
    Each refusal is one :class:`StoreFileError` naming the file.
    """
    uid = os.geteuid()
    for candidate in (path, *(Path(f"{path}{suffix}") for suffix in SQLITE_SIDE_FILES)):
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreFileError(f"cannot inspect {candidate}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise StoreFileError(f"{candidate} is a symbolic link; refusing to follow it")
        if not stat.S_ISREG(st.st_mode):
            raise StoreFileError(f"{candidate} is not a regular file")
        if st.st_uid != uid:
            raise StoreFileError(
                f"{candidate} is owned by uid {st.st_uid}, not by the user running callsgw "
                f"(uid {uid}); refusing to keep records there"
            )


def _create_private(path: Path) -> None:
    """Make the database file with mode 0600 (its journal files inherit the mode)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreFileError(f"{path} is a symbolic link; refusing to follow it") from None
        raise StoreFileError(f"cannot open the records database {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreFileError(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise StoreFileError(f"{path} is owned by uid {st.st_uid}, not by the user running callsgw")
        if stat.S_IMODE(st.st_mode) & 0o077:
            log.warning("%s was readable by others; setting mode 0600", path)
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


# -- PostgreSQL --------------------------------------------------------------------


class PostgresRecordStore(RecordStore):
    dialect = "postgresql"
    _MIGRATION_LOCK = 0x63616C6C  # pg_advisory_xact_lock key: "call"

    def __init__(self, url: str, *, target_version: int | None = None) -> None:
        super().__init__(target_version=target_version)
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise StoreError("PostgreSQL records need psycopg 3: pip install 'psycopg[binary]'") from exc
        self._psycopg = psycopg
        self._integrity_errors = (psycopg.errors.IntegrityError,)
        self._url = url
        self._conn = self._connect()
        try:
            with self._lock:
                self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _connect(self):
        try:
            return self._psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as exc:
            # The message may echo the URL's host but psycopg never prints the password.
            raise StoreUnavailable(f"cannot connect to the records database: {exc}") from None

    def _usable(self):
        """The connection, opened again if the server went away since (a restart, a failover):
        the statement that found it broken failed; the next one reconnects."""
        if self._conn.closed or self._conn.broken:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = self._connect()
            log.info("reconnected to the records database")
        return self._conn

    @staticmethod
    def _sql(sql: str) -> str:
        # Our statements contain no literal "?" or "%": placeholders only.
        return sql.replace("?", "%s")

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = self._usable().execute(self._sql(sql), tuple(params) if params else None)
        return cur.fetchall() if cur.description is not None else []

    def _in_transaction(self, fn):
        self._usable()
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._MIGRATION_LOCK,))
            return fn(self._execute)

    SERIALIZATION_RETRIES = 10

    def _serializable(self, fn):
        errors = self._psycopg.errors
        for attempt in range(self.SERIALIZATION_RETRIES):
            try:
                self._usable()
                with self._conn.transaction():
                    self._conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                    return fn(self._execute)
            except (errors.SerializationFailure, errors.DeadlockDetected):
                if attempt == self.SERIALIZATION_RETRIES - 1:
                    raise StoreError("the records database kept refusing a serializable transaction") from None
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def _migrate(self) -> None:
        # CREATE TABLE IF NOT EXISTS can race between openers: serialise it too.
        self._in_transaction(lambda execute: execute(_SCHEMA_VERSION_TABLE))
        super()._migrate()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# -- opening -------------------------------------------------------------------------


def open_store(url: str | None, data_dir: Path, *, target_version: int | None = None) -> RecordStore:
    """The records store the ``--database`` setting names (see the module doc).

    ``target_version`` (tests only) stops the migrations at that version.
    """
    if not url:
        return SqliteRecordStore(Path(data_dir) / SQLITE_FILE, target_version=target_version)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresRecordStore(url, target_version=target_version)
    if url.startswith("sqlite:///"):
        return SqliteRecordStore(Path(url[len("sqlite://"):]), target_version=target_version)
    scheme = url.split(":", 1)[0]
    raise StoreError(f"unsupported records database URL scheme {scheme!r}: use postgresql://... or none for SQLite")

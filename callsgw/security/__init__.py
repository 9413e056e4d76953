"""Security records of every participant session and their database (issue #7).

- :mod:`callsgw.security.records`: :class:`SessionRecord`, what one session negotiated.
- :mod:`callsgw.security.db`: :func:`open_store` -> :class:`RecordStore` (SQLite or PostgreSQL).
- :mod:`callsgw.security.migrations`: the versioned schema.
"""

from callsgw.security.db import (
    DuplicateSession,
    RecordStore,
    StoreError,
    UnknownSession,
    open_store,
)
from callsgw.security.records import (
    FAILURE_REASONS,
    Counters,
    DtlsInfo,
    IcePair,
    SessionRecord,
    SignalingTls,
    normalize_failure,
)

__all__ = [
    "FAILURE_REASONS",
    "Counters",
    "DtlsInfo",
    "DuplicateSession",
    "IcePair",
    "RecordStore",
    "SessionRecord",
    "SignalingTls",
    "StoreError",
    "UnknownSession",
    "normalize_failure",
    "open_store",
]

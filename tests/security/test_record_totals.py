"""RecordStore.record_totals: what /metrics counts, by the database, equal to counting the loaded records.

Issue #20 item 2: a /metrics scrape loaded up to 10,000 records to count them, and the gateway's
RSS kept the peak. The database now counts (one aggregate statement); these tests hold it to the
old answer, computed here by loading the records and counting them in Python (``tally`` over
``list``), on SQLite and PostgreSQL, with the edge cases of the old loop: no or an empty cipher
suite, missing handshake times, a completion before the start, failures of every reason, the
``limit`` (most recent first) and the live sessions left out.
"""

from __future__ import annotations

import random

import pytest

from callsgw.security.records import FAILURE_REASONS, Counters, DtlsInfo, SessionRecord
from callsgw.security.totals import RecordTotals, tally
from callsgw.server.metrics import LATENCY_BUCKETS

SUITES = (None, "", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA")
PROFILES = (None, "", "AEAD_AES_128_GCM", "SRTP_AES128_CM_HMAC_SHA1_80")


def _records(n: int, seed: int = 7) -> list[SessionRecord]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        joined = 1.79e9 + rnd.randrange(0, 5000) + rnd.random()
        started = rnd.choice([None, joined + rnd.random()])
        done = rnd.choice([None, (started or joined) + rnd.choice([0.0, 0.004, 0.005, 0.01, rnd.random() * 3, -0.5]),
                           int(joined) + 2])  # an integer time too, as JSON may hold one
        out.append(SessionRecord(
            session_id=f"s-{i:05d}", call_id=f"c{i % 17}", participant_id=f"p{i}", participant_name="n",
            joined_at=joined,
            dtls=DtlsInfo(version="DTLS 1.2", cipher_suite=rnd.choice(SUITES), handshake_started_at=started,
                          handshake_completed_at=done),
            srtp_profile=rnd.choice(PROFILES),
            failure=rnd.choice([None, None, None, *FAILURE_REASONS]),
            left_at=rnd.choice([None, joined + 60]),
            counters=Counters(*(rnd.randrange(0, 1 << rnd.choice([4, 20, 40])) for _ in range(6))),
        ))
    return out


def _reference(store, *, limit: int, exclude=()) -> RecordTotals:
    """The old way: load the records, count them in Python."""
    return tally([r.as_dict() for r in store.list(limit=limit) if r.session_id not in set(exclude)],
                 LATENCY_BUCKETS)


def _same(got: RecordTotals, want: RecordTotals) -> None:
    assert dict(got.suites) == dict(want.suites)
    assert dict(got.profiles) == dict(want.profiles)
    assert dict(got.failures) == dict(want.failures)
    assert dict(got.counters) == dict(want.counters)
    assert got.latency_le == want.latency_le and got.latency_count == want.latency_count
    assert got.latency_sum == pytest.approx(want.latency_sum, rel=1e-12, abs=1e-12)  # the order of additions
    assert (got.completed, got.failed) == (want.completed, want.failed)


def test_record_totals_equal_counting_the_loaded_records(store):
    records = _records(600)
    store.upsert_many(records)
    live = tuple(r.session_id for r in records[::9])
    for limit in (10_000, 600, 250, 1, 0):
        for exclude in ((), live, ("no-such-session",)):
            got = store.record_totals(limit=limit, exclude=exclude, buckets=LATENCY_BUCKETS)
            _same(got, _reference(store, limit=limit, exclude=exclude))
    full = store.record_totals(limit=10_000, buckets=LATENCY_BUCKETS)
    assert full.completed > 100 and full.failed > 50 and full.latency_count > 50  # the data covers the cases
    assert 0 < full.latency_le[0] < full.latency_count
    assert full.counters["bytes_out"] > 1 << 32  # past 32 bits
    # the newest value of each group comes first, as a scan by join time meets them
    newest_suite = next(r.dtls.cipher_suite for r in store.list(limit=10_000) if r.dtls.cipher_suite)
    assert full.suites[0][0] == newest_suite


def test_record_totals_of_an_empty_table_and_live_plus_stored(store):
    empty = store.record_totals(limit=10_000, exclude=("x",), buckets=LATENCY_BUCKETS)
    assert empty == RecordTotals(buckets=tuple(LATENCY_BUCKETS))
    records = _records(40, seed=3)
    store.upsert_many(records[:30])
    # /metrics: the live ones from memory (some of them also stored), the stored rest by the database
    live = [r.as_dict() for r in records[25:]]
    both = tally(live, LATENCY_BUCKETS) + store.record_totals(
        exclude=tuple(r["session_id"] for r in live), buckets=LATENCY_BUCKETS)
    _same(both, tally([r.as_dict() for r in records], LATENCY_BUCKETS))
    with pytest.raises(ValueError):
        store.record_totals(limit=10_001)


def test_a_scrape_fetches_a_bounded_number_of_rows(store):
    """The point of it: the rows the database returns do not grow with the table (they did: one per record)."""
    fetched = []
    execute = store._execute

    def counting(sql, params=()):
        rows = execute(sql, params)
        fetched.append(len(rows))
        return rows

    store._execute = counting
    sizes = {}
    for n in (50, 3000):
        store.upsert_many(_records(n, seed=n))
        fetched.clear()
        store.record_totals(limit=10_000, buckets=LATENCY_BUCKETS)
        sizes[n] = sum(fetched)
    # groups (suites, profiles, failure reasons) + 6 counters + the buckets + count and sum
    bound = len(SUITES) + len(PROFILES) + len(FAILURE_REASONS) + 6 + len(LATENCY_BUCKETS) + 2
    assert sizes[50] <= bound and sizes[3000] <= bound, sizes

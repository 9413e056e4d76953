"""callsgw.ratelimit.TokenBucket: the one token bucket (sans-I/O, ``now`` passed in)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.ratelimit import TokenBucket


def test_starts_full_and_allows_a_burst_then_refuses():
    bucket = TokenBucket(rate=2.0, burst=3.0, now=10.0)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.tokens == 0.0


def test_refills_at_rate_with_fractional_tokens():
    bucket = TokenBucket(rate=2.0, burst=2.0, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert not bucket.take(0.25)  # half a token
    assert bucket.tokens == pytest.approx(0.5)
    assert bucket.take(0.5)  # the half plus another half: exactly one
    assert bucket.tokens == pytest.approx(0.0)
    assert not bucket.take(0.5)


def test_exactly_one_token_is_enough():
    bucket = TokenBucket(rate=1.0, burst=1.0, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.999)
    assert bucket.take(1.0)


def test_never_holds_more_than_burst():
    bucket = TokenBucket(rate=100.0, burst=5.0, now=0.0)
    assert bucket.refill(1e9) == 5.0
    assert sum(bucket.take(1e9) for _ in range(10)) == 5


def test_zero_rate_never_refills():
    bucket = TokenBucket(rate=0.0, burst=1.0, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(1e6)


def test_burst_below_one_never_allows():
    bucket = TokenBucket(rate=10.0, burst=0.5, now=0.0)
    assert not any(bucket.take(t) for t in (0.0, 1.0, 100.0))


def test_a_clock_stepping_back_mints_no_tokens_and_takes_none():
    bucket = TokenBucket(rate=1.0, burst=2.0, now=100.0)
    assert bucket.take(100.0) and bucket.take(100.0)
    assert not bucket.take(50.0)  # back: nothing earned, nothing lost
    assert bucket.tokens == 0.0 and bucket.stamp == 100.0
    assert not bucket.take(100.5)  # forward again: only the time past 100 counts
    assert bucket.take(101.0)


def test_without_now_the_clock_starts_at_the_first_take():
    bucket = TokenBucket(rate=1.0, burst=1.0)
    assert bucket.stamp is None
    assert bucket.take(1000.0)  # full from the start, and no refill for the time "before"
    assert bucket.stamp == 1000.0
    assert not bucket.take(1000.5)
    assert bucket.take(1001.0)


def test_refill_does_not_spend():
    bucket = TokenBucket(rate=1.0, burst=3.0, now=0.0)
    assert bucket.refill(5.0) == 3.0
    assert bucket.refill(5.0) == 3.0
    assert bucket.tokens == 3.0


@pytest.mark.parametrize("rate, burst", [(-1.0, 1.0), (1.0, -1.0)])
def test_negative_rate_or_burst_is_refused(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


class _Before:
    """The bucket GatewayCore carried before callsgw.ratelimit (issue #13), for comparison."""

    def __init__(self, rate, burst, now):
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now):
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.0, 1000.0),
    burst=st.floats(0.0, 100.0),
    steps=st.lists(st.floats(0.0, 10.0), max_size=60),
)
def test_same_decisions_as_before_on_a_monotonic_clock(rate, burst, steps):
    now = 0.0
    new, old = TokenBucket(rate, burst, now), _Before(rate, burst, now)
    for step in steps:
        now += step
        assert new.take(now) == old.take(now)
        assert new.tokens == old.tokens


def test_the_join_table_stays_bounded_and_evicting_spends_no_tokens(monkeypatch):
    """GatewayCore's per-address join buckets: a full table forgets quiet addresses first, the oldest
    when none is quiet, and looking for quiet ones takes no token from anybody."""
    from callsgw.signaling import core as core_module
    from tests.signaling.pump import make_core

    monkeypatch.setattr(core_module, "RATE_STATE_LIMIT", 50)
    core = make_core(core_module.Limits(joins_per_second_per_address=1.0))
    for n in range(50):
        assert core._join_allowed(f"10.0.0.{n}", 0.0)  # each bucket: 1 token, now spent
    busy = core._join_buckets["10.0.0.49"]
    # nobody is quiet yet: the oldest are forgotten and the table stays bounded
    assert core._join_allowed("10.0.1.1", 0.5)
    assert len(core._join_buckets) <= 50 and "10.0.0.0" not in core._join_buckets
    assert busy.tokens == 0.5  # refilled for the look, never spent by it
    assert not core._join_allowed("10.0.0.49", 0.5)  # its limit still holds
    # later everyone is full again: the quiet ones go, the new address gets its bucket
    assert core._join_allowed("10.0.1.2", 5.0)
    assert len(core._join_buckets) <= 50

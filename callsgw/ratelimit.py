"""One token bucket for every rate limit in callsgw (sans-I/O: the caller passes ``now``).

A :class:`TokenBucket` allows ``rate`` events per second on average and
bursts of up to ``burst`` events: it holds at most ``burst`` tokens, gains
``rate`` tokens per second of ``now``, and each allowed event spends one.
It starts full. ``now`` is any monotonic clock in seconds (the shells pass the
event loop's); nothing here reads a clock.

Used by :class:`callsgw.signaling.core.GatewayCore` (signaling messages per
connection, joins per address).

Clock steps: a ``now`` earlier than the last one adds no tokens and does not
move the bucket's clock back, so a clock that steps back and forth never
mints tokens. A bucket made without ``now`` starts its clock at its first
:meth:`take` (for owners that are created where no clock is at hand).
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """Rate limiter: ``rate`` per second, bursts up to ``burst``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float | None = None):
        if rate < 0 or burst < 0:
            raise ValueError("a token bucket's rate and burst must not be negative")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now  # the time tokens were last added; None until the first take

    def refill(self, now: float) -> float:
        """Add the tokens earned since the last call; returns how many the bucket holds."""
        if self.stamp is None:
            self.stamp = now
        elif now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, now: float) -> bool:
        """Spend one token if the bucket holds one; whether the event is allowed."""
        if self.refill(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}, burst={self.burst}, tokens={self.tokens:.3f})"

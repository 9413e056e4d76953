"""Load stages of ``callsgw loadtest run`` (issue #22 deliverable 4), as k6 has them:
``--stage 30s:50 --stage 60s:50 --stage 10s:0`` ramps to 50 participants in 30 s, holds 50 for
60 s and ramps down to none in 10 s. A stage moves the number of participants in the run
linearly from the previous stage's target to its own over its duration: joins (in participant
order) or departures (the last joined first, closing their session as a participant leaving a
call does). A stage whose target equals the previous one is a *hold*; the run's loss, delay and
jitter figures then come from the hold windows only.

The shape is one peak (rise, hold, fall; a participant joins at most once), and the peak is
``--calls`` x ``--participants-per-call`` (everybody is in the call at once then, so every pair
of a call overlaps).
"""

from __future__ import annotations

import argparse
import math
import re

__all__ = ["Stage", "parse_stage", "schedule", "check"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


class Stage(tuple):
    """(duration in s, target participants)."""

    def __new__(cls, duration: float, target: int):
        return super().__new__(cls, (duration, target))

    @property
    def duration(self) -> float:
        return self[0]

    @property
    def target(self) -> int:
        return self[1]


def parse_stage(text: str) -> Stage:
    """``30s:50``, ``1.5m:200``, ``10:0`` (seconds) -> Stage."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|)\s*:\s*([0-9]+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected DURATION:PARTICIPANTS like 30s:50 or 1m:200, got {text!r}")
    duration = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(duration) or duration <= 0 or duration > 86400:
        raise argparse.ArgumentTypeError(f"a stage lasts more than 0 s and at most a day, got {text!r}")
    return Stage(duration, int(m.group(3)))


def check(stages: list[Stage], planned: int) -> str | None:
    """Why these stages cannot run with ``planned`` participants (None when they can)."""
    targets = [s.target for s in stages]
    peak = max(targets)
    if peak != planned:
        return (f"the stages reach {peak} participants at most, but --calls x --participants-per-call is "
                f"{planned}: make them equal")
    top = targets.index(peak)
    rising, falling = [0, *targets[: top + 1]], targets[top:]
    if any(b < a for a, b in zip(rising, rising[1:])) or any(b > a for a, b in zip(falling, falling[1:])):
        return "the stages must rise, hold and fall once (a participant joins at most once): " + \
            " -> ".join(str(t) for t in [0, *targets])
    return None


def schedule(stages: list[Stage]) -> tuple[list[float], list[float | None], list[tuple[float, float]]]:
    """(join time per participant, leave time per participant or None, hold windows), in s from
    the run's start. Ramping from a to b over d s, participant j (a <= j < b) joins at
    T + (j - a) / (b - a) * d; ramping down from a to b, participant j (b <= j < a, the last
    first) leaves at T + (a - j) / (a - b) * d."""
    peak = max(s.target for s in stages)
    joins: list[float] = [0.0] * peak
    leaves: list[float | None] = [None] * peak
    holds: list[tuple[float, float]] = []
    t, current = 0.0, 0
    for stage in stages:
        d, target = stage.duration, stage.target
        if target > current:
            for j in range(current, target):
                joins[j] = t + (j - current) / (target - current) * d
        elif target < current:
            for j in range(target, current):
                leaves[j] = t + (current - j) / (current - target) * d
        elif target > 0:
            holds.append((t, t + d))
        t += d
        current = target
    return joins, leaves, holds

"""Pass/fail thresholds of ``callsgw loadtest run`` (issue #22 deliverable 2), as k6 has them.

Each threshold reads one figure of the report:

* ``--max-loss PERCENT``: the true loss, ``totals.loss_percent`` (sent against received);
* ``--max-delay-p95 MS``: the 95th percentile one-way delay, ``totals.delay_ms.p95``;
* ``--max-jitter MS``: the 95th percentile over streams of each stream's RFC 3550 interarrival
  jitter at the end of the run, ``totals.jitter_p95_ms``;
* ``--max-handshake-p95 MS``: the 95th percentile handshake time, ``handshake_ms.p95``;
* ``--min-joined N`` or ``P%``: participants that joined, ``participants.joined``.

A figure the run could not measure (no delay sample, nobody joined) fails its threshold. Any
failed threshold makes the exit status 5 (``EXIT_THRESHOLD`` in loadtest.cli).
"""

from __future__ import annotations

import argparse
import math

__all__ = ["THRESHOLDS", "add_arguments", "evaluate", "min_joined"]

# option -> (name in the report, unit, getter)
THRESHOLDS = {
    "max_loss": ("--max-loss", "%", lambda r: r["totals"].get("loss_percent")),
    "max_delay_p95": ("--max-delay-p95", "ms", lambda r: (r["totals"].get("delay_ms") or {}).get("p95")),
    "max_jitter": ("--max-jitter", "ms", lambda r: r["totals"].get("jitter_p95_ms")),
    "max_handshake_p95": ("--max-handshake-p95", "ms", lambda r: r["handshake_ms"].get("p95")),
}


def non_negative(what: str):
    """An argparse type: a finite number >= 0, named ``what`` in its errors (thresholds, percentages)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be a finite {what.split(' ', 1)[-1]} >= 0, got {text!r}")
        return value
    return parse


_limit = non_negative("a number")


def min_joined(text: str) -> tuple[float, bool]:
    """``N`` (participants) or ``P%`` (of those planned): (value, is_percent)."""
    percent = text.endswith("%")
    try:
        value = float(text[:-1]) if percent else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or a percentage like 95%, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (percent and value > 100):
        raise argparse.ArgumentTypeError(f"must be 0..participants or 0%..100%, got {text!r}")
    return value, percent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "thresholds", "Pass/fail limits: any one breached makes the exit status 5, and the summary and the "
        "JSON (thresholds) name each one that failed. A figure the run could not measure fails.")
    group.add_argument("--max-loss", type=_limit, metavar="PERCENT",
                       help="Largest true loss (sent vs received, all streams) in percent.")
    group.add_argument("--max-delay-p95", type=_limit, metavar="MS",
                       help="Largest 95th percentile one-way delay in ms.")
    group.add_argument("--max-jitter", type=_limit, metavar="MS",
                       help="Largest RFC 3550 interarrival jitter in ms: the 95th percentile over streams of each "
                       "stream's jitter at the end of the run.")
    group.add_argument("--max-handshake-p95", type=_limit, metavar="MS",
                       help="Largest 95th percentile handshake time (signaling connect to SRTP ready) in ms.")
    group.add_argument("--min-joined", type=min_joined, metavar="N|P%",
                       help="Fewest participants that must join: a count, or a percentage of those planned.")


def evaluate(report: dict, args) -> dict:
    """The thresholds section of the report: every threshold given, its figure, pass or fail."""
    checked = []
    for attr, (option, unit, get) in THRESHOLDS.items():
        limit = getattr(args, attr, None)
        if limit is None:
            continue
        value = get(report)
        passed = value is not None and value <= limit
        checked.append({"threshold": option, "limit": limit, "unit": unit, "value": value, "passed": passed})
    wanted = getattr(args, "min_joined", None)
    if wanted is not None:
        amount, percent = wanted
        planned = report["participants"]["planned"]
        need = math.ceil(planned * amount / 100 - 1e-9) if percent else int(amount)
        value = report["participants"]["joined"]
        checked.append({"threshold": "--min-joined", "limit": need, "unit": "participants",
                        "value": value, "passed": value >= need,
                        **({"limit_percent": amount} if percent else {})})
    return {"checked": checked, "failed": [c["threshold"] for c in checked if not c["passed"]]}


def describe(check: dict) -> str:
    """One line: '--max-loss 1 % (measured 2.5 %)'."""
    value = "not measured" if check["value"] is None else f"measured {check['value']:g} {check['unit']}"
    limit = f"{check['limit']:g}" + (f" ({check['limit_percent']:g}%)" if "limit_percent" in check else "")
    return f"{check['threshold']} {limit} {check['unit']} ({value})"

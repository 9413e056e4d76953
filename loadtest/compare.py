"""``callsgw loadtest compare A.json B.json`` (issue #22 deliverable 5): two ``loadtest run``
reports side by side, figure by figure, and a gate on regressions.

Each figure has a direction (lower is better for loss, delay, jitter, handshake, CPU, RSS; higher
for participants joined) or none (throughput and bitrates, which follow the load). B regressed on
a figure when it moved the wrong way by more than the figure's *noise floor* (an absolute amount
below which runs on one machine differ anyway: two identical 10 x 5 runs on the shared 2-core
test host differed by 0.6 ms in voice delay p95 and 0.7 ms in voice jitter p95) and, with ``--max-regression PCT``, by more than
PCT percent of A's figure (from zero, any move past the floor is more than any percentage).
Figures either report lacks are shown as ``-`` and never regress. Reports whose identity
differs in what was run (captures, calls, participants, duration, speed, ramp) get a warning:
they measure different loads.

Exit status: 0 no figure regressed beyond ``--max-regression`` (or no gate given); 6 at least one
did (each one is a ``REGRESSED`` line); 2 bad input (a file missing, unreadable or not a
``loadtest run`` JSON report).
"""

from __future__ import annotations

import argparse
import json
import math

from loadtest.thresholds import non_negative

__all__ = ["FIGURES", "EXIT_REGRESSED", "add_parser", "compare", "figures", "main"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_REGRESSED = 6


def _get(*path):
    def get(report: dict):
        value = report
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return get


def _received_pps(report: dict):
    tot, secs = report.get("totals") or {}, report.get("run_seconds")
    if not secs or tot.get("packets_received") is None:
        return None
    return tot["packets_received"] / secs


def _failures(report: dict):
    failures = report.get("failures")
    return None if failures is None else len(failures)


# (name, unit, getter, better: "lower" | "higher" | None, noise floor in the figure's unit)
FIGURES = [
    ("participants joined", "", _get("participants", "joined"), "higher", 0),
    ("failures", "", _failures, "lower", 0),
    ("streams missing", "", _get("convergence", "missing_streams"), "lower", 0),
    ("loss", "%", _get("totals", "loss_percent"), "lower", 0.01),
    ("voice loss", "%", _get("by_kind", "voice", "loss", "loss_percent"), "lower", 0.01),
    ("screen loss", "%", _get("by_kind", "screen", "loss", "loss_percent"), "lower", 0.01),
    ("jitter mean", "ms", _get("totals", "mean_jitter_ms"), "lower", 1.0),
    ("jitter p95", "ms", _get("totals", "jitter_p95_ms"), "lower", 1.0),
    ("voice jitter p95", "ms", _get("by_kind", "voice", "jitter_ms", "p95"), "lower", 1.0),
    ("screen jitter p95", "ms", _get("by_kind", "screen", "jitter_ms", "p95"), "lower", 1.0),
    ("delay mean", "ms", _get("totals", "delay_ms", "mean"), "lower", 1.0),
    ("delay p95", "ms", _get("totals", "delay_ms", "p95"), "lower", 1.0),
    ("delay p99", "ms", _get("totals", "delay_ms", "p99"), "lower", 1.0),
    ("voice delay p95", "ms", _get("by_kind", "voice", "delay_ms", "p95"), "lower", 1.0),
    ("screen delay p95", "ms", _get("by_kind", "screen", "delay_ms", "p95"), "lower", 1.0),
    ("handshake p50", "ms", _get("handshake_ms", "p50"), "lower", 2.0),
    ("handshake p95", "ms", _get("handshake_ms", "p95"), "lower", 2.0),
    ("received", "pkt/s", _received_pps, None, 0),
    ("voice kbit/s per stream", "kbit/s", _get("by_kind", "voice", "received_kbps_per_stream", "mean"), None, 0),
    ("screen kbit/s per stream", "kbit/s", _get("by_kind", "screen", "received_kbps_per_stream", "mean"), None, 0),
    ("tester CPU", "% of a core", _get("tester", "cpu_percent_of_one_core"), "lower", 2.0),
    ("gateway CPU", "% of a core", _get("gateway", "cpu_percent"), "lower", 2.0),
    ("gateway us per forwarded packet", "us", _get("gateway", "us_per_forwarded_packet"), "lower", 0.5),
    ("gateway RSS max", "MB", _get("gateway", "rss_mb", "max"), "lower", 5.0),
]

# identity settings that make two runs different loads when they differ
LOAD_SETTINGS = ("calls", "participants_per_call", "speakers_per_call", "duration", "stage", "speed", "ramp_up",
                 "stream", "loss", "jitter", "rate_limit", "impair_side", "impaired_calls", "agents")


def figures(report: dict) -> dict[str, float | None]:
    return {name: get(report) for name, _, get, _, _ in FIGURES}


def compare(a: dict, b: dict, max_regression: float | None = None) -> dict:
    """Per figure: A, B, the change, its percentage of A, the verdict; the regressions; load warnings."""
    rows = []
    for name, unit, get, better, floor in FIGURES:
        va, vb = get(a), get(b)
        row = {"figure": name, "unit": unit, "a": va, "b": vb, "change": None, "change_percent": None,
               "better": better, "noise_floor": floor, "verdict": "-"}
        if va is not None and vb is not None:
            change = vb - va
            row["change"] = round(change, 6)
            row["change_percent"] = (round(100 * change / abs(va), 3) if va else
                                     (0.0 if change == 0 else math.copysign(math.inf, change)))
            if better is None:
                row["verdict"] = "same" if change == 0 else "changed"
            else:
                worse = change > floor if better == "lower" else -change > floor
                improved = -change > floor if better == "lower" else change > floor
                row["verdict"] = "worse" if worse else "better" if improved else "same"
                if worse and max_regression is not None and abs(row["change_percent"]) > max_regression:
                    row["verdict"] = "REGRESSED"
        rows.append(row)
    warnings = []
    sa, sb = (a.get("identity") or {}).get("settings") or {}, (b.get("identity") or {}).get("settings") or {}
    for key in LOAD_SETTINGS:
        if key in sa and key in sb and sa[key] != sb[key]:
            warnings.append(f"the runs differ in {key.replace('_', '-')}: {sa[key]} against {sb[key]}")
    ca = [c.get("sha256") or c.get("name") for c in (a.get("identity") or {}).get("captures", ())]
    cb = [c.get("sha256") or c.get("name") for c in (b.get("identity") or {}).get("captures", ())]
    if ca and cb and ca != cb:
        warnings.append("the runs replayed different captures")
    if not a.get("identity") or not b.get("identity"):
        warnings.append("a report has no identity (made before it was recorded): the loads cannot be checked")
    return {"max_regression_percent": max_regression, "figures": rows,
            "regressed": [r["figure"] for r in rows if r["verdict"] == "REGRESSED"], "warnings": warnings}


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _pct(value) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "+inf%" if value > 0 else "-inf%"
    return f"{value:+.1f}%" if value else "0.0%"


def _describe(report: dict, path: str) -> str:
    ident = report.get("identity") or {}
    cfg = report.get("config") or {}
    caps = " + ".join(c.get("name", "?") for c in ident.get("captures", ())) or "?"
    return (f"{path}: callsgw {ident.get('callsgw_version', '?')}, {ident.get('started_at', 'time unknown')}, "
            f"{cfg.get('calls', '?')} x {cfg.get('participants_per_call', '?')}, {cfg.get('duration_s', '?')} s, {caps}")


def render(result: dict, a_path: str, b_path: str, a: dict, b: dict) -> str:
    rows = [[r["figure"] + (f" ({r['unit']})" if r["unit"] else ""), _fmt(r["a"]), _fmt(r["b"]),
             ("-" if r["change"] is None else ("+" if r["change"] > 0 else "") + _fmt(r["change"])),
             _pct(r["change_percent"]),
             r["verdict"]] for r in result["figures"]]
    headers = ["figure", "A", "B", "B - A", "change", "verdict"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [f"A = {_describe(a, a_path)}", f"B = {_describe(b, b_path)}", "",
           line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows), ""]
    for warning in result["warnings"]:
        out.append(f"WARNING: {warning}")
    gate = result["max_regression_percent"]
    for r in result["figures"]:
        if r["verdict"] == "REGRESSED":
            out.append(f"REGRESSED: {r['figure']} {_fmt(r['a'])} -> {_fmt(r['b'])} {r['unit']} "
                       f"({_pct(r['change_percent'])}, more than "
                       f"--max-regression {gate:g}%)")
    if gate is not None and not result["regressed"]:
        out.append(f"no figure regressed by more than {gate:g}% (beyond its noise floor)")
    return "\n".join(out)


_percent = non_negative("a percentage")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two 'loadtest run --json' reports figure by figure; gate on regressions",
        description="Print the figures of two 'callsgw loadtest run --json' reports side by side (A the "
        "baseline, B the new run): participants, failures, loss (all, voice, screen), jitter, one-way delay, "
        "handshake, throughput, bitrates, tester and gateway CPU, gateway RSS, with B - A, the change in "
        "percent of A and a verdict (better / worse / same beyond each figure's noise floor). Reports of "
        "different loads (calls, participants, duration, speed, ramp-up, captures) get a warning. "
        "Exit status: 0 no regression past --max-regression (or none given); 6 a figure regressed by more "
        "than --max-regression percent; 2 bad input.")
    p.add_argument("a", metavar="A.json", help="The baseline report (loadtest run --json).")
    p.add_argument("b", metavar="B.json", help="The report to check against it.")
    p.add_argument("--max-regression", type=_percent, metavar="PCT", default=None,
                   help="Fail (exit 6) when a figure with a direction got worse by more than PCT percent of A's "
                   "figure and by more than its noise floor (loss 0.01 points, delay 1 ms, jitter 1 ms, "
                   "handshake 2 ms, CPU 2 points, 0.5 us per packet, RSS 5 MB; any change in participants "
                   "joined, failures or missing streams).")
    p.add_argument("--json", dest="compare_json", action="store_true",
                   help="Print the comparison as JSON on stdout instead of a table.")


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(report, dict) or not all(k in report for k in ("config", "totals", "participants")):
        raise ValueError(f"{path}: not a 'callsgw loadtest run --json' report")
    return report


def main(args: argparse.Namespace, err) -> int:
    try:
        a, b = _read(args.a), _read(args.b)
    except ValueError as exc:
        err(str(exc))
        return EXIT_BAD_INPUT
    result = compare(a, b, args.max_regression)
    if args.compare_json:
        print(json.dumps({"a": args.a, "b": args.b, **result}, indent=2))
    else:
        print(render(result, args.a, args.b, a, b))
    return EXIT_REGRESSED if result["regressed"] else EXIT_OK

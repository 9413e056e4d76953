"""Output of ``callsgw loadtest run``: live progress, the summary table, JSON and PNG plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from loadtest.thresholds import describe

__all__ = ["Progress", "summary_text", "write_json", "write_plots"]


MISSING_LISTED = 10  # missing streams named one per line in the summary (all are in the JSON)
FAILURES_LISTED = 10  # failures named one per line in the summary (all are in the JSON)


def _f(value, fmt: str = "{:.2f}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


class Progress:
    """Once-a-second progress: a rich live line on a terminal, else a plain line on stderr."""

    def __init__(self, planned: int, stream=None, use_rich: bool | None = None):
        self.planned = planned
        self.stream = stream or sys.stderr
        self._live = None
        if use_rich is None:
            use_rich = hasattr(self.stream, "isatty") and self.stream.isatty()
        if use_rich:
            try:
                from rich.console import Console
                from rich.live import Live

                self._live = Live("starting…", console=Console(file=self.stream), refresh_per_second=4, transient=False)
            except ImportError:
                self._live = None

    def line(self, point: dict) -> str:
        return (f"t={point['t']:5.1f}s  connected {point['connected']}/{self.planned}  "
                f"sent {point['sent_pps']:.0f} pkt/s  received {point['received_pps']:.0f} pkt/s  "
                f"loss {point['cumulative_loss_percent']:.2f}%  jitter {_f(point['mean_jitter_ms'])} ms  "
                f"delay {_f(point['delay_mean_ms'])} ms  tester CPU {point['tester_cpu_percent']:.0f}%"
                + (f"  gateway CPU {point['gateway_cpu_percent']:.0f}% "
                   f"{_f(point.get('gateway_us_per_forwarded'), '{:.1f}')} us/pkt"
                   if point.get("gateway_cpu_percent") is not None else ""))

    def __enter__(self):
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.__exit__(*exc)

    def __call__(self, point: dict, run=None) -> None:
        text = self.line(point)
        if self._live is not None:
            self._live.update(text)
        else:
            print(f"callsgw loadtest: {text}", file=self.stream, flush=True)


def summary_text(report: dict) -> str:
    """The human summary printed at the end of a run."""
    cfg, parts, tot, tester = report["config"], report["participants"], report["totals"], report["tester"]
    hs = report["handshake_ms"]
    delay = tot["delay_ms"] or {}
    rows = [
        ("calls x participants", f"{cfg['calls']} x {cfg['participants_per_call']} "
                                 f"({cfg['screen_sharers']} sharing a screen)"),
        ("joined", f"{parts['joined']}/{parts['planned']}" + (f" ({parts['failed']} failed)" if parts["failed"] else "")),
        ("run", f"{report['run_seconds']:.1f} s (duration {cfg['duration_s']:g} s, speed {cfg['speed']:g}, "
                f"ramp-up {cfg['ramp_up_per_second']:g}/s)"),
        ("handshake ms (p50/p95/max)", f"{_f(hs.get('p50'), '{:.1f}')} / {_f(hs.get('p95'), '{:.1f}')} / "
                                       f"{_f(hs.get('max'), '{:.1f}')}"),
        ("packets sent / received", f"{tot['packets_sent']} / {tot['packets_received']} over {tot['streams']} streams"),
        ("loss (sent vs received)", f"{tot['lost']} of {tot['expected']} ({tot['loss_percent']:.3f}%)"
                                    + _loss_detail(report.get("loss"))),
        ("duplicates / reordered", f"{tot['duplicates']} / {tot['reordered']}"),
        ("jitter ms (mean/p95/max)", f"{_f(tot['mean_jitter_ms'], '{:.3f}')} / {_f(tot.get('jitter_p95_ms'), '{:.3f}')}"
                                     f" / {_f(tot['max_jitter_ms'], '{:.3f}')}"),
        ("one-way delay ms (mean/p95/max)", f"{_f(delay.get('mean'), '{:.2f}')} / {_f(delay.get('p95'), '{:.2f}')} / "
                                            f"{_f(delay.get('max'), '{:.2f}')}"),
        ("tester CPU", f"{tester['cpu_seconds']:.2f} s = {tester['cpu_percent_of_one_core']:.0f}% of one core"),
        ("send lag ms (p95/max)", f"{_f((tester['send_lag_ms'] or {}).get('p95'))} / "
                                  f"{_f((tester['send_lag_ms'] or {}).get('max'))}"),
    ]
    gw = report.get("gateway") or {}
    if gw.get("pid") is not None:
        rss = gw.get("rss_mb") or {}
        rows.append(("gateway CPU", f"{_f(gw.get('cpu_percent'), '{:.1f}')}% of one core, "
                                    f"{_f(gw.get('us_per_forwarded_packet'), '{:.2f}')} us per forwarded packet "
                                    f"(pid {gw['pid']}, steady phase)"))
        rows.append(("gateway RSS MB (first/max/last)", f"{_f(rss.get('first'), '{:.1f}')} / "
                                                       f"{_f(rss.get('max'), '{:.1f}')} / {_f(rss.get('last'), '{:.1f}')}"))
    elif gw.get("note"):
        rows.append(("gateway CPU", gw["note"]))
    conv = report.get("convergence")
    if conv is not None:
        rows.append(("streams missing", (
            f"{conv['missing_streams']} of {conv['expected_streams']} expected"
            + (f", at {conv['participants_with_missing_streams']} of {conv['participants_checked']} participants"
               if conv["missing_streams"] else "")
        )))
    if tester.get("receive_backlog_ms"):
        backlog = tester["receive_backlog_ms"]
        rows.append(("receive backlog ms (p95/max)", f"{_f(backlog.get('p95'))} / {_f(backlog.get('max'))}"))
    if tester.get("media_path"):
        rows.append(("tester media path", tester["media_path"]))
    checks = report.get("thresholds") or {}
    if checks.get("checked"):
        rows.append(("thresholds", f"{len(checks['checked']) - len(checks['failed'])} of {len(checks['checked'])} "
                                   "passed" + (f" (failed: {', '.join(checks['failed'])})" if checks["failed"] else "")))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    for line in cfg.get("streams_used", ()):
        lines.append(line)
    lines.append(f"note: {report['note']}")
    if report.get("interrupted"):
        lines.append(f"INTERRUPTED: {report['interrupted']} ended the run after {report['run_seconds']:.1f} s; "
                     "the figures cover the run until then")
    checks = report.get("thresholds") or {}
    for check in checks.get("checked", ()):
        if not check["passed"]:
            lines.append(f"THRESHOLD FAILED: {describe(check)}")
    failures = report.get("failures") or []
    for failure in failures[:FAILURES_LISTED]:
        lines.append(f"FAILED: {failure['detail']}")
    if len(failures) > FAILURES_LISTED:
        lines.append(f"FAILED: ... and {len(failures) - FAILURES_LISTED} more (failures in the JSON report)")
    for error, count in report["participants"]["errors"].items():
        lines.append(f"join failures: {count} x {error}")
    missing = [(row, m) for row in report.get("per_participant", ()) for m in row["missing_streams"]]
    for row, m in missing[:MISSING_LISTED]:
        lines.append(f"missing stream: {row['name']} (call {row['call']}) received nothing from {m['name']} ({m['kind']})")
    if len(missing) > MISSING_LISTED:
        lines.append(f"missing stream: ... and {len(missing) - MISSING_LISTED} more (per_participant in the JSON report)")
    for warning in tester["warnings"]:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


def _loss_detail(loss: dict | None) -> str:
    if not loss:
        return ""
    parts = [f"{kind} {v['loss_percent']:.3f}%" for kind, v in loss.get("by_kind", {}).items() if v["streams"]]
    if loss.get("streams_missing"):
        parts.append(f"{loss['streams_missing']} stream(s) never arrived")
    if loss.get("streams_stopped"):
        parts.append(f"{loss['streams_stopped']} stream(s) stopped")
    return f"; {', '.join(parts)}" if parts else ""


def write_json(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def write_plots(report: dict, directory: str | Path) -> list[Path]:
    """delay.png, jitter.png, loss.png, gateway.png when the gateway was measured (over time) and
    handshake.png (distribution)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    timeline = report["timeline"]
    t = [p["t"] for p in timeline]
    written = []

    def series(title: str, ylabel: str, name: str, curves: list[tuple[str, str]]) -> None:
        fig, ax = plt.subplots(figsize=(8, 4))
        for key, label in curves:
            xs = [x for x, p in zip(t, timeline) if p.get(key) is not None]
            ys = [p[key] for p in timeline if p.get(key) is not None]
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    series("One-way delay (tester -> gateway -> tester)", "ms", "delay.png",
           [("delay_mean_ms", "mean"), ("delay_p95_ms", "p95")])
    series("Interarrival jitter (RFC 3550), mean over streams", "ms", "jitter.png", [("mean_jitter_ms", "jitter")])
    series("Packet loss", "%", "loss.png",
           [("loss_percent", "in the second"), ("cumulative_loss_percent", "cumulative")])
    if (report.get("gateway") or {}).get("pid") is not None:
        series("Gateway CPU per forwarded packet", "us", "gateway.png",
               [("gateway_us_per_forwarded", "us per forwarded packet"), ("gateway_cpu_percent", "CPU % of one core")])

    fig, ax = plt.subplots(figsize=(8, 4))
    values = report["handshake_ms"].get("values", [])
    ax.hist(values or [0], bins=min(30, max(5, len(values))))
    ax.set_title(f"Handshake time, signaling connect to SRTP ready ({len(values)} participants)")
    ax.set_xlabel("ms")
    ax.set_ylabel("participants")
    fig.tight_layout()
    path = out / "handshake.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written

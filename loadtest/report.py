"""Output of ``callsgw loadtest run``: live progress, the summary table, JSON and PNG plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from loadtest.thresholds import describe

__all__ = ["Progress", "identity_line", "summary_text", "plot_figures", "write_csv", "write_json", "write_plots"]


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
                f"loss {_f(point.get('loss_percent'), '{:.2f}%')} (run {_f(point.get('cumulative_loss_percent'), '{:.2f}%')})  "
                f"jitter {_f(point['mean_jitter_ms'])} ms  "
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


def _agent_rows(report: dict) -> list[tuple[str, str]]:
    """--agents: who ran what (loadtest.agent)."""
    agents = report.get("agents")
    if not agents:
        return []
    shares = "; ".join(f"{a['name']} calls {a['calls'][0]}..{a['calls'][1] - 1}: {a['joined']}/{a['planned']} joined, "
                       f"loss {a['loss_percent']:.3f}%" for a in agents["per_agent"])
    return [("agents", f"{agents['count']} ({shares})"),
            ("one-way delay pairs", "same agent only (calls are not split across agents; no clock shared between "
                                    "agents is assumed)")]


def _impairment_rows(report: dict) -> list[tuple[str, str]]:
    """--loss/--jitter/--rate-limit: what was applied and what it did (loadtest.impair)."""
    imp = report.get("impairment") or (report.get("config") or {}).get("impairment")
    if not imp or not imp.get("applied"):
        return []
    parts = []
    if imp.get("loss_percent"):
        parts.append(f"loss {imp['loss_percent']:g}%")
    if imp.get("jitter_ms"):
        parts.append(f"jitter 0..{imp['jitter_ms']:g} ms uniform")
    if imp.get("rate_limit_kbps") is not None:
        parts.append(f"rate limit {imp['rate_limit_kbps']:g} kbit/s")
    who = ("per participant" if imp.get("impaired_calls") is None
           else f"per participant of the first {imp['impaired_calls']} call(s) (the others: control group)")
    rows = [("impairment (injected)", ", ".join(parts) + f" {who}, {imp['side']} side, seed {imp['seed']}")]
    send = imp.get("send")
    if send:
        rows.append(("impairment send side", f"{send['packets']} packets of {send['publishers']} publishers: "
                     f"{send['dropped_loss']} dropped ({send['loss_applied_percent']:.2f}%), "
                     f"{send['dropped_rate_limit']} over the rate limit; "
                     f"{_f(send.get('cost_us_per_packet'), '{:.2f}')} us of tester CPU per packet"))
    recv = imp.get("receive")
    if recv:
        rows.append(("impairment receive side", f"{recv['dropped_loss']} of {recv['records']} records dropped "
                     f"({recv['loss_applied_percent']:.2f}%)"))
    return rows


def summary_text(report: dict) -> str:
    """The human summary printed at the end of a run."""
    cfg, parts, tot, tester = report["config"], report["participants"], report["totals"], report["tester"]
    hs = report["handshake_ms"]
    delay = tot["delay_ms"] or {}
    ident = report.get("identity") or {}
    rows = []
    if ident:
        rows.append(("run identity", f"callsgw {ident.get('callsgw_version')}, {ident.get('started_at')} to "
                                     f"{ident.get('finished_at')}, host {ident.get('host')}"))
        rows.append(("captures", ", ".join(
            f"{c['name']}" + (f" (sha256 {c['sha256'][:12]})" if c.get("sha256") else "")
            for c in ident.get("captures", ()))))
    rows += [
        ("calls x participants", f"{cfg['calls']} x {cfg['participants_per_call']} "
                                 + (f"({cfg['speakers_per_call']} speaking per call, the others listening; "
                                    if cfg.get("speakers_per_call") else "(")
                                 + f"{cfg['screen_sharers']} sharing a screen)"),
        ("joined", f"{parts['joined']}/{parts['planned']}" + (f" ({parts['failed']} failed)" if parts["failed"] else "")
                   + (f"; {parts['join_retries']} joins rate-limited (4006) and retried"
                      if parts.get("join_retries") else "")),
        ("run", f"{report['run_seconds']:.1f} s (duration {cfg['duration_s']:g} s, speed {cfg['speed']:g}, "
                + ("joins and departures by --stage)" if cfg.get("stages") else
                   f"ramp-up {cfg['ramp_up_per_second']:g}/s)")),
        *([("stages", ", ".join(f"{d:g}s:{n}" for d, n in cfg["stages"])
                    + f"; loss, delay and jitter from the hold windows {tot.get('measured_over', '')}"
                    .replace("hold windows hold windows", "hold windows"))] if cfg.get("stages") else []),
        *_impairment_rows(report),
        *_agent_rows(report),
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
        *_kind_rows(report.get("by_kind")),
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


def _kind_rows(by_kind: dict | None) -> list[tuple[str, str]]:
    """One summary row per kind with streams: loss, jitter, delay, bitrate."""
    rows = []
    for kind, v in (by_kind or {}).items():
        if not v.get("streams") and not (v.get("loss") or {}).get("streams"):
            continue
        loss, jit, delay, rate = v.get("loss") or {}, v.get("jitter_ms") or {}, v.get("delay_ms") or {}, \
            v.get("received_kbps_per_stream") or {}
        rows.append((f"{kind} ({v['streams']} streams)",
                     f"loss {_f(loss.get('loss_percent'), '{:.3f}')}% of {loss.get('sent', 0)}, "
                     f"jitter mean/p95/max {_f(jit.get('mean'))} / {_f(jit.get('p95'))} / {_f(jit.get('max'))} ms, "
                     f"delay mean/p95 {_f(delay.get('mean'))} / {_f(delay.get('p95'))} ms, "
                     f"{_f(rate.get('mean'), '{:.1f}')} kbit/s per stream received "
                     f"(sent {_f(v.get('sent_kbps_per_stream'), '{:.1f}')})"))
    return rows


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


CSV_FIRST = ("t", "connected", "sent_pps", "received_pps", "loss_percent", "cumulative_loss_percent",
             "mean_jitter_ms", "delay_mean_ms", "delay_p95_ms", "tester_cpu_percent", "gateway_cpu_percent",
             "gateway_us_per_forwarded", "gateway_rss_mb")


def write_csv(report: dict, path: str | Path) -> None:
    """The timeline, one row a second: the known columns first, any others after (sorted); an
    empty cell where a second has no figure."""
    import csv

    timeline = report.get("timeline") or []
    keys = {k for p in timeline for k in p}
    columns = [k for k in CSV_FIRST if k in keys or k in ("t", "connected")] + sorted(keys - set(CSV_FIRST))
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(columns)
        for p in timeline:
            out.writerow(["" if p.get(k) is None else p[k] for k in columns])


def identity_line(report: dict) -> str:
    """The run's identity in one line, for plot titles."""
    ident, cfg = report.get("identity") or {}, report["config"]
    names = " + ".join(c["name"] for c in ident.get("captures", ())) or "captures ?"
    when = (ident.get("started_at") or "?").replace("T", " ").replace("Z", " UTC")
    return (f"callsgw {ident.get('callsgw_version', '?')} | {when} | {cfg['calls']} x {cfg['participants_per_call']} "
            f"| {cfg['duration_s']:g} s | {names}")


def _x(key: str, t: float, point: dict) -> float:
    """Where a timeline figure belongs on the time axis: the live loss at its send-time window
    (the middle for the second's figure, the end for the cumulative one), the rest at the sample."""
    window = point.get("loss_window_s")
    if window and key == "loss_percent":
        return (window[0] + window[1]) / 2
    if window and key == "cumulative_loss_percent":
        return window[1]
    return t


def connected_steps(report: dict) -> tuple[list[float], list[int]]:
    """Participants connected over time, as step points: from each participant's connect and close
    times (per_participant[].signaling) when the report has them, else the timeline's samples."""
    events = []
    for row in report.get("per_participant") or ():
        sig = row.get("signaling") or {}
        if sig.get("connected_at_s") is not None:
            events.append((sig["connected_at_s"], 1))
            gone = sig.get("closed_at_s") if sig.get("closed_at_s") is not None else sig.get("left_at_s")
            if gone is not None:
                events.append((gone, -1))
    end = max([report.get("run_seconds") or 0.0, *(p["t"] for p in report.get("timeline") or ())])
    if not events:
        timeline = report.get("timeline") or []
        return [0.0, *(p["t"] for p in timeline)], [0, *(p["connected"] for p in timeline)]
    xs, ys, n = [0.0], [0], 0
    for at, step in sorted(events):
        n += step
        xs.append(at)
        ys.append(n)
    xs.append(end)
    ys.append(n)
    return xs, ys


def _nice_top(values: list[float], floor: float) -> float:
    """An upper axis limit: a little above the largest value, never below ``floor``."""
    top = max((v for v in values if v is not None), default=0.0)
    return max(floor, top * 1.15)


def write_plots(report: dict, directory: str | Path) -> list[Path]:
    """Every figure of :func:`plot_figures` as DIR/NAME (PNG); the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in plot_figures(report).items():
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_figures(report: dict) -> dict:
    """name -> matplotlib figure. Over time (each with the participants connected on a second axis): delay.png (log scale),
    jitter.png, loss.png, throughput.png, cpu.png, gateway.png when the gateway was measured; and
    handshake.png (distribution). Every title carries the run's identity; every linear axis starts
    at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    timeline = report["timeline"]
    t = [p["t"] for p in timeline]
    planned = report["participants"]["planned"]
    ident = identity_line(report)
    t_end = max([report.get("run_seconds") or 0.0, *t, 1.0])
    figures = {}

    steps_t, steps_n = connected_steps(report)

    def connected_line(ax) -> None:
        ax2 = ax.twinx()
        ax2.step(steps_t, steps_n, where="post", color="0.55", linestyle="--", linewidth=1.2,
                 label="participants connected")
        ax2.set_ylim(0, max(1, planned) * 1.08)
        ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel("participants connected", color="0.4")
        ax2.tick_params(axis="y", colors="0.4")
        return ax2

    def panel(ax, ylabel: str, curves: list[tuple[str, str]], log: bool = False, floor: float = 1.0,
              connected: bool = True, legend_y: float = -0.16, xlabel: str = "time since start (s)") -> bool:
        drawn, values = False, []
        for key, label in curves:
            xs = [_x(key, x, p) for x, p in zip(t, timeline) if p.get(key) is not None and (not log or p[key] > 0)]
            ys = [p[key] for p in timeline if p.get(key) is not None and (not log or p[key] > 0)]
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=label, clip_on=False, zorder=3)
                drawn = True
                values += ys
        ax.set_xlim(0, t_end)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if log:
            from matplotlib.ticker import FuncFormatter, LogLocator

            ax.set_yscale("log")
            if values:
                ax.set_ylim(min(values) / 2, max(values) * 2)
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        else:
            ax.set_ylim(0, _nice_top(values, floor))
        for i, (start, end) in enumerate((report.get("hold") or {}).get("windows_s") or ()):
            ax.axvspan(start, end, color="tab:green", alpha=0.08, label=None if i else "hold (measured)")
        handles, labels = ax.get_legend_handles_labels()
        if connected:
            ax2 = connected_line(ax)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if not drawn:
            ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, legend_y), ncol=4, fontsize=8,
                  frameon=False)
        return drawn

    def save(fig, name: str, **margins) -> None:
        # fixed margins (tight_layout draws every figure once more: twice the time)
        fig.subplots_adjust(**{"left": 0.08, "right": 0.91, "top": 0.87, "bottom": 0.24, **margins})
        figures[name] = fig

    def series(title: str, name: str, ylabel: str, curves, **kw) -> None:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.set_title(f"{title}\n{ident}", fontsize=10)
        panel(ax, ylabel, curves, **kw)
        save(fig, name)

    series("One-way delay (tester -> gateway -> tester), log scale", "delay.png", "ms",
           [("delay_mean_ms", "mean"), ("delay_p95_ms", "p95")], log=True)
    series("Interarrival jitter (RFC 3550), mean over streams", "jitter.png", "ms",
           [("mean_jitter_ms", "jitter")], floor=1.0)
    series("Packet loss, sent vs received, by send time (the live figures; the summary's are final)", "loss.png",
           "% of packets sent", [("loss_percent", "in the second"), ("cumulative_loss_percent", "cumulative")],
           floor=1.0)
    series("Throughput", "throughput.png", "packets per second",
           [("sent_pps", "sent by the tester"), ("received_pps", "received by the tester")], floor=10.0)
    gateway_measured = (report.get("gateway") or {}).get("pid") is not None
    series("CPU use", "cpu.png", "% of one core",
           [("tester_cpu_percent", "tester")] + ([("gateway_cpu_percent", "gateway")] if gateway_measured else []),
           floor=10.0)
    if gateway_measured:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
        top.set_title(f"Gateway: CPU per forwarded packet and memory\n{ident}", fontsize=10)
        panel(top, "us of CPU per forwarded packet", [("gateway_us_per_forwarded", "us per forwarded packet")],
              legend_y=-0.1, xlabel="")
        panel(bottom, "RSS (MB)", [("gateway_rss_mb", "gateway RSS")], floor=10.0, legend_y=-0.3)
        save(fig, "gateway.png", top=0.9, bottom=0.17, hspace=0.3)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    values = report["handshake_ms"].get("values", [])
    if values:
        ax.hist(values, bins=min(30, max(5, len(values))), range=(0, max(values) * 1.05))
    else:
        ax.text(0.5, 0.5, "nobody connected", transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xlim(0, max(values) * 1.05 if values else 1)
    ax.set_title(f"Handshake time, signaling connect to SRTP ready ({len(values)} participants)\n{ident}",
                 fontsize=10)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("ms")
    ax.set_ylabel("participants")
    save(fig, "handshake.png", right=0.97, bottom=0.12)
    return figures

"""Reports you can compare (issue #22 deliverable 5): plots with the run's identity, the
participants connected, throughput and CPU, a log delay axis and sane axes at zero; the timeline
as CSV; ``loadtest compare`` and its regression gate. Synthetic reports: no gateway needed (the
real run in test_replay checks identity, voice/screen figures and --csv end to end)."""

from __future__ import annotations

import copy
import csv
import json

import pytest

from callsgw.cli import main
from loadtest.compare import EXIT_REGRESSED, compare
from loadtest.report import connected_steps, identity_line, plot_figures, summary_text, write_csv


def _report(loss: float = 0.0, gateway: bool = True, joined: int = 4) -> dict:
    timeline = []
    for i in range(1, 9):
        point = {"t": i + 0.01, "connected": min(i, joined), "sent_pps": 100.0 * min(i, joined),
                 "received_pps": 300.0 * min(i, joined - 1) if i > 1 else 0.0,
                 "loss_percent": loss, "cumulative_loss_percent": loss,
                 "mean_jitter_ms": None if i == 1 else 2.0, "delay_mean_ms": None if i == 1 else 0.2 * i,
                 "delay_p95_ms": None if i == 1 else 0.5 * i, "tester_cpu_percent": 8.0, "received_total": 300 * i}
        if gateway:
            point.update(gateway_cpu_s=0.1 * i, gateway_rss_mb=90.0 + i)
            if i > 1:
                point.update(gateway_cpu_percent=3.0, gateway_us_per_forwarded=20.0 if i > 2 else None)
        timeline.append(point)
    kind = {"streams": 6, "loss": {"streams": 6, "sent": 1000, "lost": 0, "loss_percent": loss},
            "jitter_ms": {"mean": 2.0, "p95": 3.0, "max": 4.0},
            "delay_ms": {"mean": 0.2, "p50": 0.2, "p95": 0.6, "p99": 1.0, "max": 2.0},
            "received_kbps_per_stream": {"mean": 50.0, "min": 49.0, "max": 51.0}, "sent_kbps_per_stream": 50.0}
    return {
        "identity": {"started_at": "2026-12-03T17:30:52Z", "finished_at": "2026-12-03T17:31:01Z",
                     "callsgw_version": "9.8.7", "host": "h",
                     "captures": [{"name": "opus.pcap", "sha256": "ab" * 32}],
                     "settings": {"calls": 1, "participants_per_call": joined, "duration": 9.0, "speed": 1.0,
                                  "ramp_up": 1.0, "stream": None}},
        "config": {"calls": 1, "participants_per_call": joined, "duration_s": 9.0, "speed": 1.0,
                   "ramp_up_per_second": 1.0, "screen_sharers": 0},
        "participants": {"planned": joined, "joined": joined, "failed": 0, "errors": {}},
        "per_participant": [{"index": i, "name": f"vp{i}", "call": 0, "missing_streams": [],
                             "signaling": {"connected_at_s": 0.5 + i, "closed_at_s": None}} for i in range(joined)],
        "run_seconds": 9.0,
        "failures": [],
        "convergence": {"missing_streams": 0, "expected_streams": 12, "participants_checked": joined,
                        "participants_with_missing_streams": 0},
        "handshake_ms": {"p50": 30.0, "p95": 40.0, "values": [25.0, 30.0, 35.0, 40.0][:joined]},
        "totals": {"loss_percent": loss, "mean_jitter_ms": 2.0, "jitter_p95_ms": 3.0, "packets_received": 9000,
                   "delay_ms": {"mean": 0.2, "p95": 0.6, "p99": 1.0}},
        "by_kind": {"voice": kind, "screen": {**kind, "streams": 0, "loss": {"streams": 0, "sent": 0, "lost": 0,
                                                                              "loss_percent": 0.0}}},
        "tester": {"cpu_percent_of_one_core": 8.0},
        "gateway": {"pid": 1234 if gateway else None, "cpu_percent": 3.0, "us_per_forwarded_packet": 20.0,
                    "rss_mb": {"max": 98.0}},
        "timeline": timeline,
    }


def test_plots_carry_identity_connected_line_and_sane_axes():
    import matplotlib.pyplot as plt

    report = _report(loss=0.0)
    figures = plot_figures(report)
    try:
        assert set(figures) == {"delay.png", "jitter.png", "loss.png", "throughput.png", "cpu.png", "gateway.png",
                                "handshake.png"}
        ident = identity_line(report)
        assert "callsgw 9.8.7" in ident and "2026-12-03 17:30:52 UTC" in ident and "1 x 4" in ident
        assert "opus.pcap" in ident
        for name, fig in figures.items():
            titles = [ax.get_title() for ax in fig.axes]
            assert any(ident in t for t in titles), name
            if name == "handshake.png":
                continue
            labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
            assert "participants connected" in labels, name
            connected = next(line for ax in fig.axes for line in ax.get_lines()
                             if line.get_label() == "participants connected")
            assert list(connected.get_ydata())[-1] == 4
        delay = figures["delay.png"].axes[0]
        assert delay.get_yscale() == "log"
        assert delay.get_ylim()[0] > 0
        # zero loss: the axis runs from 0 to 1 %, not -0.04..+0.04
        assert figures["loss.png"].axes[0].get_ylim() == (0.0, 1.0)
        for name in ("jitter.png", "throughput.png", "cpu.png"):
            assert figures[name].axes[0].get_ylim()[0] == 0.0, name
            assert figures[name].axes[0].get_xlim()[0] == 0.0, name
        cpu_labels = [line.get_label() for line in figures["cpu.png"].axes[0].get_lines()]
        assert cpu_labels == ["tester", "gateway"]
        tp_labels = [line.get_label() for line in figures["throughput.png"].axes[0].get_lines()]
        assert tp_labels == ["sent by the tester", "received by the tester"]
        # 2.5 % loss: the axis reaches past it; no gateway measured: no gateway.png, no gateway line
        alone = plot_figures(_report(loss=2.5, gateway=False))
        bottom, top = alone["loss.png"].axes[0].get_ylim()
        assert bottom == 0.0 and 2.5 < top < 3.5
        assert "gateway.png" not in alone
        assert [line.get_label() for line in alone["cpu.png"].axes[0].get_lines()] == ["tester"]
        for fig in alone.values():
            plt.close(fig)
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_connected_steps_follow_joins_and_departures():
    report = _report()
    report["per_participant"][1]["signaling"]["closed_at_s"] = 6.0
    xs, ys = connected_steps(report)
    assert xs == [0.0, 0.5, 1.5, 2.5, 3.5, 6.0, 9.0] and ys == [0, 1, 2, 3, 4, 3, 3]
    del report["per_participant"]  # an older report: the timeline's samples
    xs, ys = connected_steps(report)
    assert ys[:3] == [0, 1, 2] and xs[1] == 1.01


def test_csv_has_every_timeline_second_and_empty_cells_for_missing_figures(tmp_path):
    report = _report()
    path = tmp_path / "t.csv"
    write_csv(report, path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    assert header[:5] == ["t", "connected", "sent_pps", "received_pps", "loss_percent"]
    assert "gateway_us_per_forwarded" in header and header[-2:] == ["gateway_cpu_s", "received_total"]
    assert len(body) == 8
    first = dict(zip(header, body[0]))
    assert first["mean_jitter_ms"] == "" and first["gateway_cpu_percent"] == "" and first["connected"] == "1"
    assert dict(zip(header, body[-1]))["delay_p95_ms"] == "4.0"


def test_summary_names_the_run_and_each_kind():
    text = summary_text({**_report(), "streams": [], "note": "n", "tester": {
        "cpu_seconds": 1, "cpu_percent_of_one_core": 8.0, "send_lag_ms": None, "warnings": []},
        "config": {**_report()["config"], "duration_s": 9.0},
        "totals": {**_report()["totals"], "packets_sent": 1, "streams": 6, "lost": 0, "expected": 1000,
                   "duplicates": 0, "reordered": 0, "max_jitter_ms": 4.0}})
    assert "run identity" in text and "callsgw 9.8.7, 2026-12-03T17:30:52Z to 2026-12-03T17:31:01Z" in text
    assert "opus.pcap (sha256 abababababab)" in text
    assert "voice (6 streams)" in text and "loss 0.000% of 1000" in text and "50.0 kbit/s per stream" in text
    assert "screen (" not in text  # no screen streams: no row


def _write(tmp_path, name: str, report: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return str(path)


def test_compare_flags_regressions_past_the_gate_and_the_noise_floor():
    a, b = _report(), _report()
    b["totals"]["delay_ms"]["p95"] = 1.8  # +200%, 1.2 ms: past the 1 ms floor
    b["totals"]["delay_ms"]["p99"] = 1.5  # +50%, but 0.5 ms: within the floor
    b["handshake_ms"]["p95"] = 41.0  # +2.5%, within the 2 ms floor
    b["gateway"]["us_per_forwarded_packet"] = 15.0  # better
    b["totals"]["loss_percent"] = 0.005  # from zero, but within the 0.01-point floor
    b["by_kind"]["voice"]["loss"]["loss_percent"] = 0.5  # from zero: past any percentage
    rows = {r["figure"]: r for r in compare(a, b, max_regression=20)["figures"]}
    assert rows["delay p95"]["verdict"] == "REGRESSED" and rows["delay p95"]["change_percent"] == 200.0
    assert rows["delay p99"]["verdict"] == "same"
    assert rows["handshake p95"]["verdict"] == "same"
    assert rows["gateway us per forwarded packet"]["verdict"] == "better"
    assert rows["loss"]["verdict"] == "same"
    assert rows["voice loss"]["verdict"] == "REGRESSED" and rows["voice loss"]["change_percent"] == float("inf")
    assert rows["received"]["verdict"] == "same" and rows["received"]["better"] is None
    # a looser gate keeps the +200 % delay as "worse", not a regression
    loose = compare(a, b, max_regression=250)
    assert loose["regressed"] == ["voice loss"]
    assert {r["figure"]: r["verdict"] for r in loose["figures"]}["delay p95"] == "worse"
    # fewer participants joined is a regression too (higher is better)
    c = copy.deepcopy(a)
    c["participants"]["joined"] = 3
    assert compare(a, c, max_regression=10)["regressed"] == ["participants joined"]
    assert compare(a, c)["regressed"] == []  # no gate: reported, never failed


def test_compare_cli_exit_codes_table_json_and_warnings(tmp_path, capsys):
    a, b = _report(), _report()
    b["totals"]["delay_ms"]["p95"] = 2.4
    pa, pb = _write(tmp_path, "a.json", a), _write(tmp_path, "b.json", b)
    assert main(["loadtest", "compare", pa, pa, "--max-regression", "5"]) == 0
    out = capsys.readouterr().out
    assert "no figure regressed by more than 5%" in out and f"A = {pa}: callsgw 9.8.7" in out
    assert main(["loadtest", "compare", pa, pb, "--max-regression", "10"]) == EXIT_REGRESSED == 6
    out = capsys.readouterr().out
    assert "REGRESSED: delay p95 0.600 -> 2.400 ms (+300.0%, more than --max-regression 10%)" in out
    assert main(["loadtest", "compare", pa, pb]) == 0  # no gate
    assert "worse" in capsys.readouterr().out
    assert main(["loadtest", "compare", pa, pb, "--json", "--max-regression", "10"]) == 6
    result = json.loads(capsys.readouterr().out)
    assert result["regressed"] == ["delay p95"] and result["a"] == pa
    # different loads are named
    c = _report(joined=3)
    pc = _write(tmp_path, "c.json", c)
    main(["loadtest", "compare", pa, pc])
    assert "WARNING: the runs differ in participants-per-call: 4 against 3" in capsys.readouterr().out
    # an older report without identity or by_kind still compares
    old = _report()
    del old["identity"], old["by_kind"]
    po = _write(tmp_path, "old.json", old)
    assert main(["loadtest", "compare", po, pa]) == 0
    out = capsys.readouterr().out
    assert "a report has no identity" in out and "voice loss (%)" in out


@pytest.mark.parametrize("content, needle", [
    (None, "no such file"), ("{", "not JSON"), ('{"a": 1}', "not a 'callsgw loadtest run --json' report"),
    ("[1, 2]", "not a 'callsgw loadtest run --json' report")])
def test_compare_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, needle):
    good = _write(tmp_path, "good.json", _report())
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert main(["loadtest", "compare", good, str(bad)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["loadtest", "compare", good, good, "--max-regression", "-1"]) == 2
    assert "--max-regression" in capsys.readouterr().err

"""Load shapes (issue #22 deliverable 4): joins rate-limited with close 4006 back off and retry; a
ramp that cannot fit in --duration is refused at the start; --speakers-per-call K."""

from __future__ import annotations

import json

import pytest

from callsgw.cli import main
from loadtest.cli import ramp_problem
from tests.loadtest.test_replay import cli, real
from tests.signaling.gateway import running_gateway


def test_a_ramp_that_cannot_fit_is_refused_at_once(tmp_path, capsys):
    assert ramp_problem(6, 50, 4.5) is None and ramp_problem(1, 0.1, 1) is None and ramp_problem(50, 0, 2) is None
    problem = ramp_problem(20, 5, 5)  # 3.8 s of ramp + 1 s of media > 4.5 s of sending
    assert "over 3.8 s" in problem and "--ramp-up to 5.5/s or more" in problem and "--duration to 5.3 s" in problem
    # the suggestions fit
    assert ramp_problem(20, 5.5, 5) is None and ramp_problem(20, 5, 5.3) is None
    short = ramp_problem(4, 2, 2)  # 1.5 s of ramp in a 2 s run
    assert short is not None and ramp_problem(4, 2, float(short.split("--duration to ")[1].split()[0])) is None
    (tmp_path / "s").write_bytes(bytes(32))
    opus = str(real("opus_voice_10s.pcap"))
    code = main(["loadtest", "run", "--url", "wss://127.0.0.1:9/ws", "--token-secret-file", str(tmp_path / "s"),
                 "--calls", "4", "--participants-per-call", "5", "--capture", opus, "--duration", "5",
                 "--ramp-up", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "leaves less than 1 s of media" in err and err.count("\n") == 1  # before any join
    code = main(["loadtest", "run", "--url", "wss://127.0.0.1:9/ws", "--token-secret-file", str(tmp_path / "s"),
                 "--calls", "1", "--participants-per-call", "3", "--speakers-per-call", "4", "--capture", opus,
                 "--duration", "5"])
    assert code == 2 and "--speakers-per-call 4 is more than --participants-per-call 3" in capsys.readouterr().err


async def test_rate_limited_joins_back_off_and_retry(tmp_path, capsys):
    """The gateway admits 2 joins a second from 127.0.0.1; 6 participants start at once (--ramp-up 0):
    4 are refused with 4006 at first, back off, and all 6 join."""
    opus = real("opus_voice_10s.pcap")
    report_path = tmp_path / "report.json"
    async with running_gateway(tmp_path, joins_per_second_per_address=2) as app:
        app.datadir.api_secret()
        code, out, err = await cli(
            capsys, "--url", f"wss://127.0.0.1:{app.port}/ws", "--data-dir", str(tmp_path / "data"),
            "--calls", "1", "--participants-per-call", "6", "--capture", str(opus), "--duration", "6",
            "--ramp-up", "0", "--insecure", "--json", str(report_path))
    report = json.loads(report_path.read_text())
    parts = report["participants"]
    assert code == 0, err
    assert parts["joined"] == 6 and parts["failed"] == 0
    assert parts["join_retries"] >= 3 and parts["rate_limited_participants"] >= 3
    assert "joins rate-limited (4006) and retried" in out
    assert "WARNING: the gateway rate-limited joins (close 4006)" in out and "--joins-per-second" in out
    assert report["failures"] == [] and report["loss"]["loss_percent"] < 1.0


async def test_speakers_per_call_the_others_listen(tmp_path, capsys):
    """2 calls x 4, 1 speaker per call (who also shares the screen): each call has 1 voice and 1
    screen; the 3 listeners of each call hear both, the speaker hears nothing (nobody else talks)."""
    opus, vp8 = real("opus_voice_10s.pcap"), real("vp8_screen_10s.pcap")
    report_path = tmp_path / "report.json"
    async with running_gateway(tmp_path, joins_per_second_per_address=1000) as app:
        app.datadir.api_secret()
        code, out, err = await cli(
            capsys, "--url", f"wss://127.0.0.1:{app.port}/ws", "--data-dir", str(tmp_path / "data"),
            "--calls", "2", "--participants-per-call", "4", "--speakers-per-call", "1", "--capture", str(opus),
            "--capture", str(vp8), "--duration", "4.5", "--ramp-up", "50", "--insecure", "--json", str(report_path))
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["config"]["speakers"] == 2 and report["config"]["speakers_per_call"] == 1
    assert report["identity"]["settings"]["speakers_per_call"] == 1
    assert report["participants"]["joined"] == 8
    voices = [s for s in report["streams"] if s["kind"] == "voice"]
    screens = [s for s in report["streams"] if s["kind"] == "screen"]
    assert len(voices) == 6 and len(screens) == 6  # 3 listeners x 2 calls, one voice and one screen each
    assert {s["publisher"] for s in voices} == {0, 1}  # the first member of each call
    assert {s["subscriber"] for s in voices} == {2, 3, 4, 5, 6, 7}
    assert report["convergence"]["expected_streams"] == 12 and report["convergence"]["missing_streams"] == 0
    assert report["loss"]["streams"] == 12 and report["loss"]["loss_percent"] < 1.0
    assert "1 speaking per call, the others listening" in out


def test_stages_parse_check_and_schedule():
    import argparse

    from loadtest.stages import check, parse_stage, schedule

    assert parse_stage("30s:50") == (30.0, 50) and parse_stage("1.5m:200") == (90.0, 200)
    assert parse_stage("500ms:0") == (0.5, 0) and parse_stage("10:3") == (10.0, 3)
    for bad in ("30s", "s:5", "0s:5", "-1s:5", "30x:5", "30s:-1", "30s:1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_stage(bad)
    stages = [parse_stage(x) for x in ("2s:4", "3s:4", "2s:0")]
    assert check(stages, 4) is None
    assert "reach 4 participants at most" in check(stages, 6)
    assert "rise, hold and fall once" in check([parse_stage(x) for x in ("1s:4", "1s:2", "1s:4")], 4)
    joins, leaves, holds = schedule(stages)
    assert joins == [0.0, 0.5, 1.0, 1.5] and holds == [(2.0, 5.0)]
    assert leaves == [7.0, 6.5, 6.0, 5.5]  # the last joined leaves first
    joins, leaves, holds = schedule([parse_stage(x) for x in ("1s:2", "1s:2", "1s:4", "2s:4")])
    assert joins == [0.0, 0.5, 2.0, 2.5] and leaves == [None] * 4 and holds == [(1.0, 2.0), (3.0, 5.0)]


def test_stage_usage_errors(tmp_path, capsys):
    (tmp_path / "s").write_bytes(bytes(32))
    base = ["loadtest", "run", "--url", "wss://127.0.0.1:9/ws", "--token-secret-file", str(tmp_path / "s"),
            "--calls", "1", "--participants-per-call", "4", "--capture", str(real("opus_voice_10s.pcap"))]
    cases = [([], "give --duration S"),
             (["--stage", "2s:4", "--duration", "5"], "--duration and --stage"),
             (["--stage", "2s:4", "--ramp-up", "5"], "--ramp-up and --stage"),
             (["--stage", "2s:3"], "reach 3 participants at most"),
             (["--stage", "2s:4", "--stage", "1s:1", "--stage", "1s:4"], "rise, hold and fall once")]
    for extra, needle in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err


async def test_stages_ramp_hold_and_fall_with_figures_from_the_hold(tmp_path, capsys):
    """1 x 4: up to 4 in 2 s, hold 3 s, down to 0 in 1.5 s. Departures are no failures; the loss,
    delay and jitter come from the hold window; the participants connected fall back to 0."""
    opus, vp8 = real("opus_voice_10s.pcap"), real("vp8_screen_10s.pcap")
    report_path = tmp_path / "report.json"
    async with running_gateway(tmp_path, joins_per_second_per_address=1000) as app:
        app.datadir.api_secret()
        code, out, err = await cli(
            capsys, "--url", f"wss://127.0.0.1:{app.port}/ws", "--data-dir", str(tmp_path / "data"),
            "--calls", "1", "--participants-per-call", "4", "--capture", str(opus), "--capture", str(vp8),
            "--stage", "2s:4", "--stage", "3s:4", "--stage", "1.5s:0", "--insecure", "--json", str(report_path),
            "--max-loss", "1")
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["config"]["stages"] == [[2.0, 4], [3.0, 4], [1.5, 0]] and report["config"]["duration_s"] == 7.0
    assert report["participants"]["joined"] == 4 and report["failures"] == []
    left = sorted(row["signaling"]["left_at_s"] for row in report["per_participant"])
    assert all(left) and 5.0 < left[0] < left[-1] < 7.0
    hold, totals = report["hold"], report["totals"]
    assert hold["windows_s"] == [[2.0, 5.0]]
    # the totals are the hold's; the whole run's figures are kept beside and cover more packets
    assert totals["expected"] == hold["expected"] > 0 and totals["loss_percent"] == hold["loss_percent"] < 1
    assert totals["whole_run"]["expected"] > totals["expected"]
    assert totals["delay_ms"]["matched"] < totals["whole_run"]["delay_ms"]["matched"]
    assert totals["jitter_p95_ms"] is not None and "hold windows" in totals["measured_over"]
    assert report["thresholds"]["checked"][0]["value"] == hold["loss_percent"]
    assert report["by_kind"]["voice"]["loss"]["sent"] + report["by_kind"]["screen"]["loss"]["sent"] == hold["expected"]
    connected = [p["connected"] for p in report["timeline"]]
    assert max(connected) == 4 and connected[-1] == 0
    assert "stages                           2s:4, 3s:4, 1.5s:0" in out and "hold windows [[2.0, 5.0]]" in out

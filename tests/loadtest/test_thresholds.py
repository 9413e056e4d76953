"""``loadtest run`` thresholds gate CI (issue #22 deliverable 2): every breach named, exit 5."""

from __future__ import annotations

import argparse
import json

import pytest

from callsgw.cli import main
from loadtest.cli import EXIT_THRESHOLD, exit_status
from loadtest.report import summary_text
from loadtest.thresholds import evaluate, min_joined
from tests.loadtest.test_replay import cli, real
from tests.signaling.gateway import running_gateway


def _report(**totals) -> dict:
    return {"totals": {"loss_percent": 0.5, "delay_ms": {"p95": 3.0}, "jitter_p95_ms": 2.0, **totals},
            "handshake_ms": {"p95": 40.0}, "participants": {"planned": 20, "joined": 19, "failed": 1}}


def _args(**limits) -> argparse.Namespace:
    base = dict(max_loss=None, max_delay_p95=None, max_jitter=None, max_handshake_p95=None, min_joined=None)
    return argparse.Namespace(**{**base, **limits})


def test_each_threshold_passes_at_its_figure_and_fails_below_it():
    report = _report()
    at = evaluate(report, _args(max_loss=0.5, max_delay_p95=3.0, max_jitter=2.0, max_handshake_p95=40.0,
                                min_joined=(19, False)))
    assert at["failed"] == [] and len(at["checked"]) == 5
    under = evaluate(report, _args(max_loss=0.4, max_delay_p95=2.9, max_jitter=1.9, max_handshake_p95=39,
                                   min_joined=(20, False)))
    assert under["failed"] == ["--max-loss", "--max-delay-p95", "--max-jitter", "--max-handshake-p95",
                               "--min-joined"]
    assert exit_status({**report, "thresholds": under}) == EXIT_THRESHOLD == 5
    assert exit_status({**report, "thresholds": under, "failures": [{"kind": "gateway_gone"}]}) == 4
    assert exit_status({**report, "thresholds": under, "interrupted": "SIGTERM"}) == 143
    assert exit_status({**report, "thresholds": at}) == 3  # one participant did not join, no threshold on it


def test_percentages_and_unmeasured_figures():
    report = _report(delay_ms=None)
    assert evaluate(report, _args(min_joined=(95, True)))["failed"] == []  # 19 of 20 is 95%
    assert evaluate(report, _args(min_joined=(96, True)))["failed"] == ["--min-joined"]  # needs 20
    checked = evaluate(report, _args(max_delay_p95=1000))
    assert checked["failed"] == ["--max-delay-p95"] and checked["checked"][0]["value"] is None
    for bad in ("-1", "abc", "101%", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            min_joined(bad)


def test_bad_limits_are_usage_errors(tmp_path, capsys):
    opus = str(real("opus_voice_10s.pcap"))
    (tmp_path / "s").write_bytes(bytes(32))
    for option, value in (("--max-loss", "nan"), ("--max-jitter", "-1"), ("--max-delay-p95", "inf")):
        code = main(["loadtest", "run", "--url", "wss://127.0.0.1:9/ws", "--token-secret-file", str(tmp_path / "s"),
                     "--calls", "1", "--participants-per-call", "1", "--capture", opus, "--duration", "1",
                     option, value])
        assert code == 2 and f"argument {option}" in capsys.readouterr().err


async def test_a_real_run_names_every_breached_threshold(tmp_path, capsys):
    opus = real("opus_voice_10s.pcap")
    report_path = tmp_path / "report.json"
    async with running_gateway(tmp_path, joins_per_second_per_address=1000) as app:
        app.datadir.api_secret()
        code, out, err = await cli(
            capsys, "--url", f"wss://127.0.0.1:{app.port}/ws", "--data-dir", str(tmp_path / "data"),
            "--calls", "1", "--participants-per-call", "3", "--capture", str(opus), "--duration", "3.5",
            "--ramp-up", "50", "--insecure", "--json", str(report_path),
            "--max-loss", "5", "--min-joined", "100%", "--max-jitter", "500",  # these hold
            "--max-handshake-p95", "0.001", "--max-delay-p95", "0.0001",  # these cannot
        )
    assert code == 5, err
    report = json.loads(report_path.read_text())
    assert report["failures"] == []
    assert report["thresholds"]["failed"] == ["--max-delay-p95", "--max-handshake-p95"]
    assert {c["threshold"]: c["passed"] for c in report["thresholds"]["checked"]} == {
        "--max-loss": True, "--max-delay-p95": False, "--max-jitter": True, "--max-handshake-p95": False,
        "--min-joined": True}
    assert "THRESHOLD FAILED: --max-delay-p95 0.0001 ms (measured" in out
    assert "THRESHOLD FAILED: --max-handshake-p95 0.001 ms (measured" in out
    assert "thresholds                       3 of 5 passed (failed: --max-delay-p95, --max-handshake-p95)" in out
    assert summary_text(report) in out

"""Smoke test of benchmarks/bench_forward.py: a tiny run end to end, not a measurement."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_forward.py"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and pins CPUs")


def load():
    spec = importlib.util.spec_from_file_location("bench_forward", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_reports_forwarded_packets(capsys):
    bench = load()
    rc = bench.main([
        "--path", "python", "--publishers", "1", "--fanout", "1", "--payload", "160",
        "--rate", "200", "--duration", "1", "--json",
    ])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("machine", "path", "gateway_rss_start_mb", "gateway_rss_end_mb", "results", "summary"):
        assert key in report
    assert report["path"] == "python"
    assert report["gateway_rss_start_mb"] > 0 and report["gateway_rss_end_mb"] > 0
    (step,) = report["results"]
    for key in ("offered_pps", "forwarded_pps", "loss_pct", "latency_p50_ms", "latency_p99_ms",
                "gateway_cpu_s_per_mpkt", "gateway_rss_mb", "tester_cpu_share", "tester_bound"):
        assert key in step, key
    assert step["payload"] == 160 and step["fanout"] == 1
    assert step["received"] > 0 and step["forwarded_pps"] > 0
    assert step["latency_p99_ms"] >= step["latency_p50_ms"] >= 0

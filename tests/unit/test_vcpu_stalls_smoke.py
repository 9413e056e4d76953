"""benchmarks/vcpu_stalls.py runs and reports every CPU it loaded (a benchmark, not a timed test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vcpu_stalls.py"


def test_reports_each_loaded_cpu():
    cpu = sorted(os.sched_getaffinity(0))[0]
    out = subprocess.run([sys.executable, str(SCRIPT), "--seconds", "0.2", "--cpus", str(cpu), "--json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    report = json.loads(out)
    (row,) = report["cpus"]
    assert row["cpu"] == cpu and row["gaps"] >= 0 and 0 <= row["stolen_pct"] <= 100
    assert row["max_ms"] >= 0 and len(row["largest_ms"]) <= 5

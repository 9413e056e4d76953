"""The soak with churn (issue 20 deliverable 2): ``benchmarks/soak.py`` for 3 minutes, and its resume.

20 participants in calls of 5 on a real ``callsgw serve`` process (loopback):
every 10 s 4 of them leave (``leave`` or a closed socket) and 4 new ones join,
the screen share takes turns in every call, the WebSocket abuse mix runs
alongside. Then everyone leaves. Checked from the script's JSON report:

* the gateway never exited, closed no session unasked, refused no join;
* loss (RFC 3550 expected vs received, per received stream) under 0.5 %;
* open descriptors, asyncio tasks and native engine slots back to the
  baseline sampled before the first join, within the settle time;
* RSS grows less than 20 MB from minute 1 to minute 3. The 60-minute run's
  target is 10 MB after 5 minutes; here the warm-up is only 1 minute, while
  the allocator and the gateway's bounded caches (records, per-call state,
  TLS session memory of the abuse connections) are still filling. Measured:
  +4.6 MB (105 to 110 MB) on this 2-core machine with a 100-participant soak
  running next to it (the sawtooth of the gc/``malloc_trim`` after closed
  connections is about 4 MB), so 20 MB leaves room for noise and still
  catches a per-session leak that matters: about 70 participants pass
  through after minute 1, so 300 KB kept per session shows as +20 MB.
* the churn really happened: joins, leaves, share turns and abuse rounds,
  and the gateway answered every protocol violation.

The second test stops a run with SIGTERM and runs the same command again: the
timeline goes on from the saved state with a new gateway process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[2]
ABUSE_STEPS = ("connect_close", "tls_close", "idle", "trickle", "unmasked_frame", "bad_messages")


def test_soak_three_minutes(tmp_path):
    out = tmp_path / "soak"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "3", "--participants", "20",
         "--per-call", "5", "--churn", "4", "--warmup", "1", "--settle", "60", "--max-rss-growth-mb", "20",
         "--out", str(out), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=330,
    )
    assert proc.returncode in (0, 1), f"soak.py failed to run ({proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    assert (out / "soak.png").stat().st_size > 10_000
    assert json.loads((out / "soak.json").read_text())["targets"] == report["targets"]
    s, targets = report["summary"], report["targets"]
    context = f"summary: {json.dumps(s)}\nerrors: {report['errors'][:20]}\n{proc.stderr[-2000:]}"

    assert s["finished"] and s["segments"] == 1, context
    assert targets["no_crash"]["ok"], context
    assert s["counts"].get("joins_failed", 0) == 0, context
    assert targets["loss_percent"]["ok"], context
    assert s["packets_expected"] > 20_000, context  # media really flowed (about 4 streams per receiver)
    assert s["baseline"]["fds"] > 0 and s["baseline"]["tasks"] > 0, context  # the /metrics gauges are there
    assert targets["back_to_baseline"]["ok"], context
    assert s["after_calls"]["slots"]["sessions"] == 0 and s["after_calls"]["sessions"] == 0, context
    assert targets["rss_growth_mb"]["ok"], context

    counts = s["counts"]
    steps = sum(1 for x in report["samples"] if x["phase"] == "churn")
    assert steps >= 15, context
    assert counts["joins"] >= 20 + 4 * (steps - 1), context
    assert counts.get("leaves", 0) + counts.get("drops", 0) >= 4 * (steps - 1), context
    assert counts.get("share_turns", 0) >= 4 * 3, context  # every call changed sharer several times
    done = sum(counts.get(f"abuse_{step}", 0) for step in ABUSE_STEPS)
    failed = sum(counts.get(f"abuse_{step}_error", 0) for step in ABUSE_STEPS)
    assert done >= len(ABUSE_STEPS) * steps // 2 and failed <= done // 10, context  # the last rounds are cut
    # every protocol violation is answered and closed by the gateway: a bad token at once (4001),
    # a bad frame before join with an error, then at the join timeout (4007)
    assert counts.get("abuse_bad_token_closed_4001", 0) >= steps // 2, context
    for name, error in (("not_json", "bad_json"), ("unknown_type", "unknown_type")):
        assert counts.get(f"abuse_{name}_reply_{error}", 0) >= steps // 2, context
        assert counts.get(f"abuse_{name}_closed_4007", 0) >= steps // 2, context
    assert not [k for k in counts if "still_open" in k], context
    assert s["db_rows_end"] == counts["joins"], context  # one security record per session


def test_soak_resumes_after_an_interruption(tmp_path):
    """SIGTERM stops the soak cleanly (exit 130, state kept); the same command goes on from there."""
    out = tmp_path / "soak"
    argv = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "0.6", "--participants", "5",
            "--churn", "1", "--warmup", "0.1", "--settle", "60", "--no-abuse", "--out", str(out), "--json"]
    first = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = out / "soak_state.json"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # wait for the first churn sample
        if state.exists() and any(s["phase"] == "churn" for s in json.loads(state.read_text())["samples"]):
            break
        time.sleep(0.5)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err[-2000:]
    cut = json.loads(state.read_text())
    assert not cut["finished"] and 10 <= cut["timeline_s"] < 36, cut["timeline_s"]
    assert cut["segments"][0]["gateway_alive_at_end"] and "ended_utc" in cut["segments"][0]

    second = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming {state} at t={cut['timeline_s']:.0f} s" in second.stderr
    report = json.loads(second.stdout)
    s = report["summary"]
    assert s["finished"] and s["segments"] == 2 and s["timeline_s"] >= 36, s
    segs = report["segments"]
    assert segs[1]["t_start"] == cut["timeline_s"]
    times = [x["t"] for x in report["samples"]]
    assert times == sorted(times)  # one timeline across both gateways
    assert report["samples"][: len(cut["samples"])] == cut["samples"]  # the first segment's samples kept
    assert len(s["rss"]) == 2 and report["ok"], report["targets"]

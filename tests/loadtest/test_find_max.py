"""``loadtest find-max`` (issue #22 deliverable 4): steps of growing load, stopping at the first
that fails, reporting the largest that passed. The gateway here holds at most 2 calls, so the
third step (3 calls) cannot fully join: the answer must be 2 calls."""

from __future__ import annotations

import asyncio
import json

from callsgw.cli import main
from tests.loadtest.test_replay import real
from tests.signaling.gateway import running_gateway


async def _find_max(capsys, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["loadtest", "find-max", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_find_max_stops_at_the_first_failing_step(tmp_path, capsys):
    opus = real("opus_voice_10s.pcap")
    report_path = tmp_path / "find-max.json"
    async with running_gateway(tmp_path, joins_per_second_per_address=1000, max_calls=2) as app:
        app.datadir.api_secret()
        code, out, err = await _find_max(
            capsys, "--url", f"wss://127.0.0.1:{app.port}/ws", "--data-dir", str(tmp_path / "data"),
            "--participants-per-call", "2", "--capture", str(opus), "--start-calls", "1", "--max-calls", "4",
            "--step-duration", "2.5", "--pause", "0.5", "--ramp-up", "50", "--insecure", "--join-timeout", "2",
            "--max-loss", "5", "--json", str(report_path))
    print(out)
    assert code == 0, err
    result = json.loads(report_path.read_text())
    steps = result["steps"]
    assert [s["calls"] for s in steps] == [1, 2, 3]  # stopped at the first failing step, not 4
    assert [s["passed"] for s in steps] == [True, True, False]
    assert steps[2]["joined"] == 4 and "2 of 6 did not join" in steps[2]["reasons"]
    assert result["max"]["calls"] == 2 and result["max"]["participants"] == 4 and not result["top_reached"]
    for s in steps[:2]:
        assert s["figures"]["loss"] < 5 and s["figures"]["delay p95"] > 0
        assert [c["threshold"] for c in s["thresholds"]["checked"]] == ["--max-loss"]
    assert result["identity"]["settings"]["max_calls"] == 4 and "calls" not in result["identity"]["settings"]
    assert "the largest load that kept every threshold: 2 calls, 4 participants" in out
    assert "step 3: 3 calls, 6 participants: FAIL (2 of 6 did not join)" in out
    assert "find-max step 1 of at most 4" in err and "Traceback" not in err


async def test_find_max_first_step_failing_and_top_reached(tmp_path, capsys):
    opus = real("opus_voice_10s.pcap")
    async with running_gateway(tmp_path, joins_per_second_per_address=1000) as app:
        app.datadir.api_secret()
        base = ("--url", f"wss://127.0.0.1:{app.port}/ws", "--data-dir", str(tmp_path / "data"),
                "--participants-per-call", "2", "--capture", str(opus), "--step-duration", "2.5", "--pause", "0.2",
                "--ramp-up", "50", "--insecure")
        # a threshold no run can keep: the first step fails, exit 5
        code, out, err = await _find_max(capsys, *base, "--max-calls", "3", "--max-delay-p95", "0.0001")
        assert code == 5, err
        assert "step 1: 1 calls, 2 participants: FAIL (threshold --max-delay-p95)" in out
        assert "no step kept every threshold" in out and "step 2:" not in out
        # every step passes: the top was not reached
        code, out, err = await _find_max(capsys, *base, "--max-calls", "2")
        assert code == 0, err
        assert "every step passed up to --max-calls: at least 2 calls, 4 participants" in out


def test_find_max_bad_input(tmp_path, capsys):
    opus = str(real("opus_voice_10s.pcap"))
    (tmp_path / "s").write_bytes(bytes(32))
    base = ["loadtest", "find-max", "--url", "wss://127.0.0.1:9/ws", "--token-secret-file", str(tmp_path / "s"),
            "--participants-per-call", "5", "--capture", opus, "--step-duration", "3"]
    assert main([*base, "--max-calls", "2", "--start-calls", "3"]) == 2
    assert "--start-calls 3 is more than --max-calls 2" in capsys.readouterr().err
    # the largest step's ramp (20 participants at 5/s) must fit in --step-duration: refused before any step
    assert main([*base, "--max-calls", "4", "--ramp-up", "5"]) == 2
    err = capsys.readouterr().err
    assert "leaves less than 1 s of media" in err and "find-max step" not in err
    assert main([*base, "--max-calls", "1", "--json", str(tmp_path / "no" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err

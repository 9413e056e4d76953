"""``callsgw loadtest``: output, JSON fields and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from callsgw.cli import main
from loadtest.capture import UdpDatagram
from tests.loadtest import writers as w

REPO = Path(__file__).parents[2]
CAPTURES = REPO.parent / "shared" / "captures"


def real(name: str) -> Path:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"shared capture {path} is absent")
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["loadtest", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _rtp_capture(n: int = 10) -> bytes:
    ds = [UdpDatagram(5 + i * 0.02, ("10.0.0.1", 5000), ("10.0.0.2", 6000), w.rtp(i, i * 160, 42)) for i in range(n)]
    return w.write_pcap([(d.time, w.frame(1, d)) for d in ds], 1)


def test_list_table_and_json(capsys):
    path = str(real("vp8_screen_10s.pcap"))
    code, out, err = run(capsys, "--list", path)
    assert code == 0 and err == ""
    assert "127.0.0.1:57860" in out and "127.0.0.1:40002" in out and "0x925BE199" in out
    assert "VP8" in out and "1666" in out
    # 'list FILE' is the subcommand spelling of --list FILE (#22 item 9): the same output
    assert run(capsys, "list", path) == (code, out, err)
    code, out, _ = run(capsys, "--list", path, "--json")
    assert run(capsys, "list", path, "--json") == (code, out, "")
    (s,) = json.loads(out)["streams"]
    assert code == 0
    assert s["ssrc"] == 0x925BE199 and s["payload_type"] == 96 and s["packets"] == 1666
    assert s["codec"] == "VP8" and s["duration_s"] == pytest.approx(9.934813)
    assert s["packet_rate"] > 100 and s["bitrate_bps"] > 1e6


def test_analyze_json_fields(capsys):
    code, out, err = run(capsys, "analyze", str(real("pcmu_voice_10s.pcap")), "--json")
    assert code == 0 and err == ""
    (s,) = json.loads(out)["streams"]
    assert isinstance(s["ssrc"], int) and s["ssrc"] == 0x532A6251
    assert (s["payload_type"], s["packets"], s["lost"]) == (0, 500, 0)
    assert s["max_jitter_ms"] == pytest.approx(36.873, abs=1e-3)
    assert s["mean_jitter_ms"] == pytest.approx(32.632, abs=1e-3)
    assert s["jitter_ms"] > 0 and s["clock_rate"] == 8000 and s["sequence_errors"] == 0


def test_analyze_table_sdp_and_clock_rate(capsys):
    opus = str(real("opus_voice_10s.pcap"))
    code, out, _ = run(capsys, "analyze", opus, "--sdp", str(real("opus_voice_10s.sdp")))
    assert code == 0 and "opus" in out and "48000" in out and "501" in out
    # the table shows the RFC 3550 jitter the JSON has (jitter_ms), beside tshark's max/mean (#22 item 9)
    row = out.splitlines()[2].split()
    assert row[-3:] == ["0.000", "0.000", "2.400"] and "jitter ms" in out.splitlines()[0]
    code, out, _ = run(capsys, "analyze", opus, "--clock-rate", "16000", "--json")
    (s,) = json.loads(out)["streams"]
    assert code == 0 and s["clock_rate"] == 16000 and s["clock_rate_source"] == "option"


@pytest.mark.parametrize(
    "content,code,needle",
    [
        (b"", 2, "empty"),
        (b"GIF89a not a capture at all", 2, "not a capture file"),
        (w.write_pcap([(0.0, b"\x00" * 40)], 147), 2, "link type 147"),
        (_rtp_capture()[:30], 2, "truncated at byte 24"),
        (w.write_pcap([(0.0, w.frame(1, UdpDatagram(0.0, ("1.1.1.1", 53), ("2.2.2.2", 53), b"\x12\x34" * 10)))], 1), 1, "no RTP found"),
    ],
    ids=["empty", "garbage", "linktype", "truncated-header", "no-rtp"],
)
def test_bad_input_one_line_and_exit_code(tmp_path, capsys, content, code, needle):
    path = tmp_path / "input.pcap"
    path.write_bytes(content)
    for argv in (["analyze", str(path)], ["--list", str(path)], ["list", str(path)]):
        got, out, err = run(capsys, *argv)
        assert got == code and out == ""
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err
        assert f"error: {path}: " in err  # every capture problem names the file (#22 item 9)


def test_missing_file_and_missing_sdp(tmp_path, capsys):
    code, _, err = run(capsys, "analyze", str(tmp_path / "absent.pcap"))
    assert code == 2 and "absent.pcap: no such file" in err and err.count("\n") == 1
    good = tmp_path / "good.pcap"
    good.write_bytes(_rtp_capture())
    code, _, err = run(capsys, "analyze", str(good), "--sdp", str(tmp_path / "absent.sdp"))
    assert code == 2 and "absent.sdp" in err


def test_truncated_after_packets_warns_then_analyses_unless_strict(tmp_path, capsys):
    path = tmp_path / "crashed.pcap"
    path.write_bytes(_rtp_capture()[:-20])
    code, out, err = run(capsys, "analyze", str(path), "--json")
    assert code == 0 and "warning" in err and "9 packets read" in err and err.count("\n") == 1
    assert json.loads(out)["streams"][0]["packets"] == 9
    code, out, err = run(capsys, "analyze", str(path), "--strict")
    assert code == 2 and out == "" and "truncated at byte" in err and err.count("\n") == 1


def test_usage_errors(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "nothing to do" in err
    assert "'run --url" in err and "'list FILE'" in err and "'compare A.json B.json'" in err
    code, _, err = run(capsys, "--list", "a.pcap", "list", "b.pcap")
    assert code == 2 and "--list and 'list' are separate uses" in err
    code, _, err = run(capsys, "analyze", "x.pcap", "--clock-rate", "fast")
    assert code == 2 and "--clock-rate" in err
    assert run(capsys, "--help")[0] == 0
    code, out, _ = run(capsys, "analyze", "--help")
    assert code == 0 and "--clock-rate" in out and "--sdp" in out and "--json" in out


def test_subprocess_python_m_callsgw(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    ok = subprocess.run(
        [sys.executable, "-m", "callsgw", "loadtest", "analyze", str(real("pcmu_voice_10s.pcap")), "--json"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["streams"][0]["packets"] == 500
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a\xff\xff")
    fail = subprocess.run(
        [sys.executable, "-m", "callsgw", "loadtest", "analyze", str(bad)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert fail.returncode == 2 and fail.stdout == ""
    assert fail.stderr.startswith("callsgw loadtest: error:") and fail.stderr.count("\n") == 1

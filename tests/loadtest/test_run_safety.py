"""``loadtest run`` never loses results and never shows a traceback (issue #22 deliverable 3).

SIGINT and SIGTERM end a real run (a ``callsgw loadtest run`` process against a real
``callsgw serve``) early, and the summary, the JSON and the plots are written all the same, with
the documented exit status; output paths are checked before the run; captures of non-RTP UDP are
one line and a documented exit status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from callsgw.cli import main
from loadtest.capture import UdpDatagram
from tests.loadtest import writers as w
from tests.loadtest.test_gateway_probe import ROOT, _serve
from tests.loadtest.test_replay import real


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    data = tmp_path_factory.mktemp("gw") / "data"
    proc, port = _serve(data)
    try:
        yield data, port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_run_and_keeps_the_results(gateway, tmp_path, sig, code):
    data, port = gateway
    opus, vp8 = real("opus_voice_10s.pcap"), real("vp8_screen_10s.pcap")
    report_path, plots = tmp_path / "report.json", tmp_path / "plots"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "callsgw", "loadtest", "run", "--url", f"wss://127.0.0.1:{port}/ws",
         "--data-dir", str(data), "--calls", "1", "--participants-per-call", "3", "--capture", str(opus),
         "--capture", str(vp8), "--duration", "60", "--ramp-up", "30", "--insecure",
         "--json", str(report_path), "--plots", str(plots)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # wait for two progress lines (media flows), then signal
        seen = 0
        deadline = time.monotonic() + 20
        while seen < 2 and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, f"loadtest exited early ({proc.poll()})"
            seen += "connected 3/3" in line
        started = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
        ended = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert ended < 15  # drain, close and write (7 plots: seconds on a loaded 2-core host), not the 60 s of --duration
    assert "Traceback" not in err and sig.name in err
    assert "joined                           3/3" in out and f"INTERRUPTED: {sig.name}" in out
    report = json.loads(report_path.read_text())
    assert report["interrupted"] == sig.name and report["run_seconds"] < 20
    assert report["participants"]["joined"] == 3 and report["failures"] == []
    assert report["loss"]["expected"] > 100 and report["loss"]["loss_percent"] < 1.0
    for name in ("delay.png", "jitter.png", "loss.png", "handshake.png"):
        assert (plots / name).read_bytes().startswith(b"\x89PNG")


def _argv(tmp_path, *extra: str) -> list[str]:
    secret = tmp_path / "api_secret"
    secret.write_bytes(b"s" * 32)
    return ["loadtest", "run", "--url", "wss://127.0.0.1:9/ws", "--token-secret-file", str(secret),
            "--calls", "1", "--participants-per-call", "1", "--duration", "1", *extra]


def test_output_paths_are_checked_before_the_run(tmp_path, capsys):
    opus = str(real("opus_voice_10s.pcap"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--json", str(tmp_path / "no" / "such" / "r.json")], "does not exist"),
        (["--json", str(tmp_path)], "is a directory"),
        (["--plots", str(a_file)], "not a directory"),
        (["--plots", str(tmp_path / "no" / "plots")], "does not exist"),
    ]
    for extra, reason in cases:
        started = time.monotonic()
        assert main(_argv(tmp_path, "--capture", opus, *extra)) == 2  # the gateway at port 9 is never tried
        err = capsys.readouterr().err
        assert reason in err and extra[0] in err and len(err.strip().splitlines()) == 1, err
        assert time.monotonic() - started < 2


def _capture(tmp_path, name: str, payloads: list[bytes], port: int = 5353) -> str:
    ds = [UdpDatagram(1 + i * 0.02, ("10.0.0.1", 40000 + i), ("10.0.0.2", port), p) for i, p in enumerate(payloads)]
    path = tmp_path / name
    path.write_bytes(w.write_pcap([(d.time, w.frame(1, d)) for d in ds], 1))
    return str(path)


def test_non_rtp_udp_is_one_line_never_a_traceback(tmp_path, capsys):
    # version-2-looking datagrams whose CSRC list or header extension overruns them (DNS, syslog, noise)
    overruns = [bytes([0x8F, 0x00]) + bytes(20), bytes([0x90, 0x60]) + bytes(10) + b"\xbe\xde\x00\x40" + bytes(8)]
    # and datagrams that parse as RTP but each with another SSRC: one-packet "streams"
    strays = [w.rtp(i, i, 0x1000 + i, pt=12, payload=bytes(30)) for i in range(20)]
    for name, payloads in (("overrun.pcap", overruns * 10), ("strays.pcap", strays)):
        code = main(_argv(tmp_path, "--capture", _capture(tmp_path, name, payloads)))
        err = capsys.readouterr().err
        assert code == 1, err
        assert "no RTP found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_overrunning_packets_are_not_rtp_to_list_either(tmp_path, capsys):
    path = _capture(tmp_path, "overrun.pcap", [bytes([0x8F, 0x00]) + bytes(20)] * 5)
    assert main(["loadtest", "--list", path]) == 1
    assert "no RTP found" in capsys.readouterr().err

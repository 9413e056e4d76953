"""``loadtest run`` measures a gateway on the same host (issue #14 item 4): CPU, RSS, us per forwarded packet.

The probe reads /proc of a real process: first a small busy Python process listening on a TCP
port (found by port like ``--gateway-pid auto`` does), then a real ``python -m callsgw serve``
with a loadtest run against it, whose report must carry the gateway's CPU per forwarded packet.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callsgw.cli import main
from loadtest.gateway_probe import GatewayProbe, ProbeError, gateway_summary, listening_pid
from tests.loadtest.test_replay import real

ROOT = Path(__file__).resolve().parents[2]

BUSY = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
ballast = bytearray(64 << 20)  # resident once touched
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
end = time.monotonic() + 30
while time.monotonic() < end:
    sum(range(10000))
"""


@pytest.fixture
def busy_listener():
    proc = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield proc, port
    finally:
        proc.kill()
        proc.wait()


def test_the_listener_is_found_by_port_and_its_cpu_and_rss_are_read(busy_listener):
    proc, port = busy_listener
    assert listening_pid(port) == proc.pid
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))  # bound, not listening: nobody to find
        assert listening_pid(free.getsockname()[1]) is None
    probe = GatewayProbe(proc.pid)
    cpu0, rss0 = probe.read()
    start = time.monotonic()
    time.sleep(0.5)
    cpu1, rss1 = probe.read()
    while cpu1 - cpu0 < 0.2 and time.monotonic() - start < 10:  # a loaded host gives it less than a core
        time.sleep(0.2)
        cpu1, rss1 = probe.read()
    wall = time.monotonic() - start
    assert 0.2 <= cpu1 - cpu0 <= wall + 0.05  # it ran, and one thread cannot use more than one core
    assert rss1 >= 64 << 20  # the touched ballast is resident
    proc.kill()
    proc.wait()
    assert probe.read() is None  # gone: no more samples, no exception
    with pytest.raises(ProbeError):
        GatewayProbe(proc.pid)


def test_the_summary_counts_the_steady_phase_only():
    timeline = [
        {"t": 1.0, "connected": 2, "received_total": 0, "gateway_cpu_s": 1.0, "gateway_rss_mb": 90.0},
        {"t": 2.0, "connected": 4, "received_total": 1000, "gateway_cpu_s": 1.5, "gateway_rss_mb": 95.0},
        {"t": 3.0, "connected": 4, "received_total": 5000, "gateway_cpu_s": 1.6, "gateway_rss_mb": 96.0},
        {"t": 4.0, "connected": 4, "received_total": 9000, "gateway_cpu_s": 1.7, "gateway_rss_mb": 94.0},
    ]
    summary = gateway_summary(timeline, 42)
    assert summary["measured_from_s"] == 2.0 and summary["forwarded_packets"] == 8000
    assert summary["us_per_forwarded_packet"] == pytest.approx(0.2 / 8000 * 1e6, rel=1e-3)
    assert summary["cpu_percent"] == pytest.approx(10.0)
    assert summary["rss_mb"] == {"first": 90.0, "max": 96.0, "last": 94.0}
    assert gateway_summary(timeline[:1], 42)["us_per_forwarded_packet"] is None


def _serve(data: Path) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "callsgw", "serve", "--data-dir", str(data), "--listen", "127.0.0.1",
         "--port", "0", "--media-host", "127.0.0.1", "--media-port", "0", "--ice-host", "127.0.0.1",
         "--shutdown-grace", "0", "--joins-per-second", "1000"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            assert line, f"serve exited early ({proc.poll()})"
            found = re.search(r"callsgw is serving: open https://127\.0\.0\.1:(\d+)/", line)
            if found:
                return proc, int(found.group(1))
    proc.kill()
    raise AssertionError("serve did not start in 30 s")


def test_a_run_reports_the_local_gateways_cpu_per_forwarded_packet(tmp_path, capsys):
    opus = real("opus_voice_10s.pcap")
    data = tmp_path / "data"
    proc, port = _serve(data)
    try:
        report_path, plots = tmp_path / "report.json", tmp_path / "plots"
        code = main(["loadtest", "run", "--url", f"wss://127.0.0.1:{port}/ws", "--data-dir", str(data),
                     "--calls", "2", "--participants-per-call", "5", "--capture", str(opus), "--duration", "6",
                     "--ramp-up", "30", "--insecure", "--json", str(report_path), "--plots", str(plots)])
        out, err = capsys.readouterr()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    gateway = report["gateway"]
    print(json.dumps(gateway, indent=1))
    assert gateway["pid"] == proc.pid  # found by --gateway-pid auto (the default)
    assert gateway["forwarded_packets"] > 500 and 0 < gateway["us_per_forwarded_packet"] < 5000
    assert 0 < gateway["cpu_percent"] < 200 and gateway["rss_mb"]["max"] > 20
    points = [p for p in report["timeline"] if p.get("gateway_us_per_forwarded") is not None]
    # /proc counts CPU in 10 ms ticks, and the threaded engine forwards this load in a few ms of
    # CPU per second: single seconds may show none, the run as a whole does
    assert points and all(p["gateway_us_per_forwarded"] >= 0 for p in points)
    assert any(p["gateway_us_per_forwarded"] > 0 for p in points)
    assert "us per forwarded packet" in out and "gateway CPU" in err  # the summary and the live line
    assert (plots / "gateway.png").read_bytes().startswith(b"\x89PNG")


def test_gateway_pid_choices(tmp_path, capsys):
    opus = real("opus_voice_10s.pcap")
    argv = ["loadtest", "run", "--url", "wss://127.0.0.1:9/ws", "--token-secret-file", str(tmp_path / "s"),
            "--calls", "1", "--participants-per-call", "1", "--capture", str(opus), "--duration", "1"]
    (tmp_path / "s").write_bytes(bytes(range(32)))
    assert main([*argv, "--gateway-pid", "banana"]) == 2
    assert "--gateway-pid must be a process id" in capsys.readouterr().err
    assert main([*argv, "--gateway-pid", "999999999"]) == 2
    assert "no such process" in capsys.readouterr().err

"""``loadtest run --gateway-metrics``: the gateway's CPU and RSS through its ``/metrics`` (issue #22
deliverable 5), for a gateway the tester cannot see in ``/proc`` (another host)."""

from __future__ import annotations

import json

from tests.loadtest.test_replay import cli, real
from tests.signaling.gateway import running_gateway


async def test_gateway_cpu_per_forwarded_packet_from_its_metrics(tmp_path, capsys):
    report_path = tmp_path / "report.json"
    async with running_gateway(tmp_path, joins_per_second_per_address=1000) as app:
        app.datadir.api_secret()
        key_file = tmp_path / "admin.key"
        key_file.write_text(app.datadir.rotate_admin_key())
        metrics = f"https://127.0.0.1:{app.port}/metrics"
        code, out, err = await cli(
            capsys, "--url", f"wss://127.0.0.1:{app.port}/ws", "--data-dir", str(tmp_path / "data"),
            "--calls", "1", "--participants-per-call", "3", "--capture", str(real("opus_voice_10s.pcap")),
            "--duration", "4", "--ramp-up", "50", "--insecure", "--json", str(report_path),
            "--gateway-metrics", metrics, "--admin-key-file", str(key_file),
        )
    assert code == 0, err
    gateway = json.loads(report_path.read_text())["gateway"]
    assert gateway["source"] == metrics and gateway["pid"] is None
    assert gateway["samples"] >= 3 and gateway["cpu_seconds"] > 0 and gateway["us_per_forwarded_packet"] > 0
    assert gateway["rss_mb"]["max"] > 10
    assert "gateway CPU" in out


async def test_a_wrong_admin_key_is_one_line_at_the_start(tmp_path, capsys):
    async with running_gateway(tmp_path) as app:
        app.datadir.api_secret()
        key_file = tmp_path / "admin.key"
        key_file.write_text("not-the-key")
        code, out, err = await cli(
            capsys, "--url", f"wss://127.0.0.1:{app.port}/ws", "--data-dir", str(tmp_path / "data"),
            "--calls", "1", "--participants-per-call", "2", "--capture", str(real("opus_voice_10s.pcap")),
            "--duration", "3", "--insecure",
            "--gateway-metrics", f"https://127.0.0.1:{app.port}/metrics", "--admin-key-file", str(key_file),
        )
    assert code == 2 and "HTTP 401 (is the admin key right?)" in err and "Traceback" not in err

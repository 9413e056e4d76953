"""``callsgw loadtest run``: a small bounded run against a local gateway, and bad input.

The run (2 calls x 3 participants, Opus voice + VP8 screen share, about 4.5 s) is the CI smoke
version of the 200-participant benchmark in the README.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from callsgw.cli import main
from tests.loadtest import writers as w
from loadtest.capture import UdpDatagram
from tests.signaling.gateway import running_gateway

REPO = Path(__file__).parents[2]
CAPTURES = REPO.parent / "shared" / "captures"


def real(name: str) -> Path:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"shared capture {path} is absent")
    return path


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """The real CLI entry point, in a thread (it runs its own event loop) beside the test's gateway."""
    code = await asyncio.to_thread(main, ["loadtest", "run", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_small_run_against_local_gateway(tmp_path, capsys):
    opus, vp8 = real("opus_voice_10s.pcap"), real("vp8_screen_10s.pcap")
    report_path, plots = tmp_path / "report.json", tmp_path / "plots"
    async with running_gateway(tmp_path, joins_per_second_per_address=1000) as app:
        app.datadir.api_secret()  # make sure the file exists
        code, out, err = await cli(
            capsys, "--url", f"wss://127.0.0.1:{app.port}/ws", "--data-dir", str(tmp_path / "data"),
            "--calls", "2", "--participants-per-call", "3", "--capture", str(opus), "--capture", str(vp8),
            "--duration", "4.5", "--ramp-up", "50", "--insecure", "--json", str(report_path), "--plots", str(plots),
            "--csv", str(tmp_path / "timeline.csv"),
        )
    assert code == 0, err
    assert "joined" in out and "6/6" in out and "loss" in out
    assert "connected" in err  # the live progress lines
    report = json.loads(report_path.read_text())
    print(json.dumps({k: report[k] for k in ("participants", "totals", "tester", "run_seconds")}, indent=1))
    assert report["participants"] == {"planned": 6, "joined": 6, "failed": 0, "errors": {}, "join_retries": 0,
                                      "rate_limited_participants": 0}
    assert report["config"]["screen_sharers"] == 2
    # everybody got every stream it expected: 2 voices each, and the screen unless it shares it
    assert report["convergence"] == {"participants_checked": 6, "expected_streams": 16,
                                     "participants_with_missing_streams": 0, "missing_streams": 0,
                                     "unattributed_streams": 0}
    assert [row["missing_streams"] for row in report["per_participant"]] == [[]] * 6
    assert "streams missing" in out and "0 of 16 expected" in out
    assert report["shared_host"] is True
    # the gateway runs inside this test's process: --gateway-pid auto finds it and says it cannot measure it
    assert report["gateway"]["pid"] is None and "inside this process" in report["gateway"]["note"]
    assert report["run_seconds"] < 6.5
    totals = report["totals"]
    assert totals["packets_received"] > 0 and totals["expected"] > 0
    assert totals["loss_percent"] < 1.0
    assert totals["mean_jitter_ms"] is not None and totals["max_jitter_ms"] is not None
    assert totals["delay_ms"]["mean"] > 0 and totals["delay_ms"]["p95"] >= totals["delay_ms"]["p50"]
    hs = report["handshake_ms"]
    assert len(hs["values"]) == 6 and 0 < hs["min"] <= hs["max"]
    # per stream: every subscriber hears the 2 other voices of its call, and the screen unless it shares it
    streams = report["streams"]
    for s in streams:
        for key in ("subscriber", "publisher", "ssrc", "kind", "packets", "lost", "loss_percent",
                    "duplicates", "reordered", "jitter_ms", "delay_mean_ms"):
            assert key in s
    kinds = {(s["subscriber"], s["kind"]) for s in streams}
    assert sum(1 for s in streams if s["kind"] == "voice") == 12
    assert sum(1 for _, k in kinds if k == "screen") == 4
    assert {s["clock_rate"] for s in streams} == {48000, 90000}
    for key in ("cpu_seconds", "cpu_percent_of_one_core", "send_lag_ms", "bottleneck", "warnings"):
        assert key in report["tester"]
    assert report["timeline"] and {"t", "connected", "received_pps", "loss_percent", "mean_jitter_ms",
                                    "delay_mean_ms"} <= set(report["timeline"][0])
    for name in ("delay.png", "jitter.png", "loss.png", "throughput.png", "cpu.png", "handshake.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
    _check_identity_kinds_and_csv(report, out, tmp_path / "timeline.csv", opus, vp8)


def _check_identity_kinds_and_csv(report: dict, out: str, csv_path: Path, opus: Path, vp8: Path) -> None:
    """#22 deliverable 5: the run's identity, voice and screen apart, the timeline as CSV."""
    import csv
    import hashlib
    from datetime import datetime, timedelta

    import callsgw

    ident = report["identity"]
    assert list(report)[0] == "identity"
    started = datetime.fromisoformat(ident["started_at"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(ident["finished_at"].replace("Z", "+00:00"))
    assert started.utcoffset() == timedelta(0) and timedelta(0) < finished - started < timedelta(seconds=30)
    assert ident["callsgw_version"] == callsgw.__version__
    assert [c["sha256"] for c in ident["captures"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (opus, vp8)]
    assert [(s["kind"], s["codec"].lower(), s["capture"]) for s in ident["streams"]] == [
        ("voice", "opus", str(opus)), ("screen", "vp8", str(vp8))]
    assert ident["settings"]["calls"] == 2 and ident["settings"]["participants_per_call"] == 3
    assert ident["settings"]["duration"] == 4.5 and ident["settings"]["ramp_up"] == 50
    assert f"callsgw {callsgw.__version__}, {ident['started_at']}" in out and ident["captures"][0]["sha256"][:12] in out
    voice, screen = report["by_kind"]["voice"], report["by_kind"]["screen"]
    assert (voice["streams"], screen["streams"]) == (12, 4)
    for kind in (voice, screen):
        assert kind["loss"]["sent"] > 0 and kind["loss"]["loss_percent"] < 1.0
        assert kind["jitter_ms"]["p95"] is not None and kind["delay_ms"]["p95"] > 0
        # what arrived is what was sent: the received bitrate is the capture's, within 15%
        sent, got = kind["sent_kbps_per_stream"], kind["received_kbps_per_stream"]["mean"]
        assert abs(got - sent) < 0.15 * sent, (got, sent)
    assert 30 < voice["sent_kbps_per_stream"] < 80 and screen["sent_kbps_per_stream"] > 500
    assert voice["loss"]["sent"] + screen["loss"]["sent"] == report["totals"]["expected"]
    assert "voice (12 streams)" in out and "screen (4 streams)" in out and "kbit/s per stream" in out
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(report["timeline"])
    assert list(rows[0])[:4] == ["t", "connected", "sent_pps", "received_pps"]
    assert [float(r["t"]) for r in rows] == [p["t"] for p in report["timeline"]]
    assert [int(r["connected"]) for r in rows] == [p["connected"] for p in report["timeline"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_gateway(tmp_path, capsys):
    opus = real("opus_voice_10s.pcap")
    secret = tmp_path / "api_secret"
    secret.write_bytes(b"s" * 32)
    code, out, err = await cli(
        capsys, "--url", f"wss://127.0.0.1:{_free_port()}/ws", "--token-secret-file", str(secret),
        "--calls", "1", "--participants-per-call", "2", "--capture", str(opus), "--duration", "5", "--insecure",
    )
    assert code == 2
    assert "could not join" in err and "refused" in err
    # one error line; the other lines say which capture streams were used (#22)
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len([x for x in lines if "error:" in x]) == 1
    assert all(x.startswith("callsgw loadtest: voice stream:") for x in lines if "error:" not in x)


async def test_bad_token_secret_refused(tmp_path, capsys):
    opus = real("opus_voice_10s.pcap")
    wrong = tmp_path / "wrong_secret"
    wrong.write_bytes(b"x" * 32)
    async with running_gateway(tmp_path, joins_per_second_per_address=1000) as app:
        code, out, err = await cli(
            capsys, "--url", f"wss://127.0.0.1:{app.port}/ws", "--token-secret-file", str(wrong),
            "--calls", "1", "--participants-per-call", "2", "--capture", str(opus), "--duration", "5",
            "--insecure",
        )
    assert code == 2
    assert "join refused by the gateway" in err
    assert "Traceback" not in err


async def test_capture_without_rtp(tmp_path, capsys):
    not_rtp = [UdpDatagram(1 + i * 0.02, ("10.0.0.1", 53), ("10.0.0.2", 5353), b"\x00" * 40) for i in range(5)]
    path = tmp_path / "dns.pcap"
    path.write_bytes(w.write_pcap([(d.time, w.frame(1, d)) for d in not_rtp], 1))
    secret = tmp_path / "api_secret"
    secret.write_bytes(b"s" * 32)
    code, out, err = await cli(
        capsys, "--url", "wss://127.0.0.1:9/ws", "--token-secret-file", str(secret),
        "--calls", "1", "--participants-per-call", "1", "--capture", str(path), "--duration", "1",
    )
    assert code == 1
    assert "no RTP found" in err and "Traceback" not in err


async def test_bad_secret_file_and_url(tmp_path, capsys):
    opus = real("opus_voice_10s.pcap")
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    code, _, err = await cli(
        capsys, "--url", "wss://127.0.0.1:9/ws", "--token-secret-file", str(short),
        "--calls", "1", "--participants-per-call", "1", "--capture", str(opus), "--duration", "1",
    )
    assert code == 2 and "32-byte" in err
    code, _, err = await cli(
        capsys, "--url", "https://127.0.0.1:9/ws", "--data-dir", str(tmp_path),
        "--calls", "1", "--participants-per-call", "1", "--capture", str(opus), "--duration", "1",
    )
    assert code == 2 and "wss://" in err


# -- measurement and replay units -------------------------------------------------------


def _packet(seq: int, ts: int, ssrc: int = 7, pt: int = 111, payload: bytes = b"abc") -> bytes:
    import struct

    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def test_stream_stats_loss_duplicates_reordering_jitter():
    from loadtest.measure import Collector

    col = Collector()
    # seq 65534..65535, 0..3 (wrap), 2 missing, 1 arriving late, 3 duplicated; 20 ms Opus frames sent on time
    order = [65534, 65535, 0, 3, 1, 3, 4]
    for n, seq in enumerate(order):
        frame = (seq - 65534) & 0xFFFF
        col.on_packet(0, _packet(seq, 1000 + 960 * frame), 10.0 + 0.02 * frame)
    stats = col.streams[(0, 7)].as_dict()
    assert stats["packets"] == 7 and stats["duplicates"] == 1 and stats["reordered"] == 1
    assert stats["expected"] == 7 and stats["lost"] == 1  # 65534..4 is 7 numbers, 2 never came
    assert stats["clock_rate"] == 48000  # from the negotiated payload type, nothing in the send log
    assert stats["jitter_ms"] is not None and stats["jitter_ms"] < 1.0


def test_jitter_follows_rfc3550():
    from loadtest.measure import StreamStats

    s = StreamStats(0, 1)
    s.clock = 8000
    # packets every 20 ms (160 ticks) arriving alternately 0 and 5 ms late: |D| = 40 ticks each time
    j = 0.0
    for n in range(50):
        s.arrival(160 * n, 0.02 * n + (0.005 if n % 2 else 0.0))
        if n:
            j += (40 - j) / 16
    assert s.jitter == pytest.approx(j)


def test_delay_matched_through_send_log():
    from loadtest.measure import Collector, payload_key

    col = Collector()
    pkt = _packet(5, 123456, payload=b"voice-frame")
    col.send_log.record(payload_key(pkt), 3, "voice", 48000, 1.000)
    rewritten = pkt[:8] + (99).to_bytes(4, "big") + pkt[12:]  # the gateway's SSRC, same timestamp and payload
    col.on_packet(1, rewritten, 1.004)
    s = col.streams[(1, 99)].as_dict()
    assert s["publisher"] == 3 and s["kind"] == "voice"
    assert s["delay_mean_ms"] == pytest.approx(4.0, abs=1e-6)


async def test_sender_rewrites_seq_and_timestamp_continuously_across_loops():
    import struct

    from loadtest.replay import LoadRun, Participant, RunConfig, load_capture, pick_tracks

    streams, _ = load_capture(str(real("opus_voice_10s.pcap")))
    voice, _ = pick_tracks(streams)
    sent = []

    class FakeSession:
        def send_voice(self, packet):
            sent.append(packet)
            return True

    # speed 50: the 10 s capture loops about 3 times in 0.6 s
    run = LoadRun(RunConfig(url="wss://x/ws", secret=b"s" * 32, calls=1, participants_per_call=1,
                            voice=voice, video=None, duration=1, speed=50))
    run._loop = asyncio.get_running_loop()
    p = Participant(0, 0, 0, False, session=FakeSession())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.6):
            await run._send(p)
    assert len(sent) > 2 * voice.packets
    seqs = [struct.unpack("!H", x[2:4])[0] for x in sent]
    ts = [struct.unpack("!I", x[4:8])[0] for x in sent]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    steps = {(b - a) & 0xFFFFFFFF for a, b in zip(ts, ts[1:])}
    assert steps == {960}  # 20 ms Opus frames, also across the loop boundary
    assert {x[1] & 0x7F for x in sent} == {111}

"""Client-side impairment (issue #22 deliverable 7): ``--loss``, ``--jitter``, ``--rate-limit``.

The shaper is checked on loopback sockets against a sink standing in for the gateway; then a real
``python -m callsgw serve`` gets runs with and without each impairment, and the report's true loss,
jitter and received bitrate must show what was injected.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import time

import numpy as np

from callsgw.cli import main
from loadtest.impair import Impairment, ReceiveImpairment, UplinkShaper
from loadtest.measure import RECORD_DTYPE
from tests.loadtest.test_gateway_probe import _serve
from tests.loadtest.test_replay import real


def _sockets():
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sink.setblocking(False)
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return sink, media, src


def _drain(sink) -> list[tuple[bytes, float]]:
    got = []
    try:
        while True:
            got.append((sink.recv(4096), time.monotonic()))
    except BlockingIOError:
        return got


def test_shaper_loss_is_seeded_bernoulli_and_leaves_from_the_media_socket():
    sink, media, src = _sockets()
    runs = []
    for _ in range(2):
        shaper = UplinkShaper(Impairment(loss=10, seed=42), 3, media.fileno(), sink.getsockname(), time.time_ns())
        got = []
        for i in range(2000):
            src.sendto(i.to_bytes(4, "big") + bytes(100), (shaper.tap_host, shaper.tap_port))
            if i % 10 == 9:
                shaper.pump(time.time_ns())
                got += _drain(sink)
        time.sleep(0.01)
        shaper.pump(time.time_ns())
        got += _drain(sink)
        shaper.close()
        numbers = [int.from_bytes(d[:4], "big") for d, _ in got]
        assert numbers == sorted(numbers)  # no jitter: order kept
        c = shaper.counters()
        assert c["packets"] == 2000 and c["sent"] == len(got) == 2000 - c["dropped_loss"]
        # 2000 Bernoulli(0.1) trials: sd 0.67 %, 4 sd
        assert abs(c["dropped_loss"] / 2000 - 0.10) < 4 * math.sqrt(0.1 * 0.9 / 2000)
        runs.append(numbers)
    assert runs[0] == runs[1]  # the same seed and participant drop the same packets
    # the datagrams come from the participant's media socket (the address the gateway knows)
    probe = UplinkShaper(Impairment(jitter=1, seed=1), 0, media.fileno(), sink.getsockname(), time.time_ns())
    src.sendto(b"hello", (probe.tap_host, probe.tap_port))
    time.sleep(0.005)
    probe.pump(time.time_ns())
    probe.pump(time.time_ns() + 2_000_000)
    data, addr = None, None
    for _ in range(100):
        try:
            data, addr = sink.recvfrom(100)
            break
        except BlockingIOError:
            time.sleep(0.001)
    probe.close()
    assert data == b"hello" and addr == media.getsockname()


def test_shaper_jitter_holds_each_packet_uniformly_up_to_the_bound():
    """The hold is drawn per packet, uniform in 0..MS, and packets leave at their release time (the
    pump's clock is passed in, so the host's own stalls play no part here)."""
    sink, media, src = _sockets()
    t0 = time.time_ns()
    shaper = UplinkShaper(Impairment(jitter=40, seed=5), 0, media.fileno(), sink.getsockname(), t0)
    for i in range(400):
        src.sendto(i.to_bytes(4, "big"), (shaper.tap_host, shaper.tap_port))
    time.sleep(0.05)
    assert shaper.pump(t0) is True  # everything is held
    holds = np.array([(at - t0) / 1e6 for at, _, _ in shaper.held])
    assert len(holds) == 400 and holds.min() >= 0 and holds.max() < 40
    assert 17 < holds.mean() < 23 and 0.2 < np.mean(holds < 10) < 0.3  # uniform: mean 20, a quarter below 10
    assert shaper.pump(t0 + 20_000_000) is True  # about half have left
    time.sleep(0.05)
    first = _drain(sink)
    assert 150 < len(first) < 250
    assert shaper.pump(t0 + 40_000_000) is False
    time.sleep(0.05)
    got = first + _drain(sink)
    shaper.close()
    numbers = [int.from_bytes(d[:4], "big") for d, _ in got]
    assert sorted(numbers) == list(range(400))
    assert numbers != sorted(numbers)  # packets closer than 40 ms overtake each other
    late = shaper.counters()
    assert late["late_count"] == 400 and late["late_max_ns"] < 40_000_000


def test_shaper_rate_limit_caps_the_bytes_per_second_and_drops_at_the_queue_tail():
    sink, media, src = _sockets()
    start = time.time_ns()
    shaper = UplinkShaper(Impairment(rate_kbps=80, seed=1), 0, media.fileno(), sink.getsockname(), start)
    out_bytes = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:  # offer 200 B every 5 ms: 320 kbit/s, four times the rate
        src.sendto(bytes(200), (shaper.tap_host, shaper.tap_port))
        time.sleep(0.005)
        shaper.pump(time.time_ns())
        out_bytes += sum(len(d) for d, _ in _drain(sink))
    elapsed = time.monotonic() - t0
    shaper.close()
    c = shaper.counters()
    # 80 kbit/s = 10 kB/s, plus the bucket's first 2048 B
    assert out_bytes <= 10_000 * elapsed + 2048 + 400
    assert out_bytes >= 10_000 * elapsed * 0.6  # a stalled host only loses tokens past the bucket's depth
    assert c["dropped_rate_limit"] > c["packets"] / 2 and c["dropped_loss"] == 0


def test_receive_impairment_drops_and_delays_records():
    rec = np.zeros(10_000, dtype=RECORD_DTYPE)
    rec["arrival_ns"] = np.arange(10_000, dtype=np.int64) * 20_000_000
    rec["seq"] = np.arange(10_000) & 0xFFFF
    down = ReceiveImpairment(Impairment(loss=5, jitter=10, side="receive", seed=9), 4)
    out = down.apply(rec)
    assert abs(len(out) / 10_000 - 0.95) < 4 * math.sqrt(0.05 * 0.95 / 10_000)
    assert down.dropped == 10_000 - len(out)
    added = out["arrival_ns"] - out["seq"].astype(np.int64) * 20_000_000
    assert added.min() >= 0 and added.max() < 10_000_000 and 4e6 < added.mean() < 6e6
    assert (np.diff(out["arrival_ns"]) >= 0).all()
    assert Impairment(rate_kbps=10, side="receive").receive is False  # the rate limit is send side only


CALLS, IMPAIRED = 4, 2
RUN = ["--calls", str(CALLS), "--participants-per-call", "3", "--duration", "6", "--ramp-up", "50", "--insecure"]


def _run(port: int, data, tmp_path, capsys, name: str, *extra: str) -> tuple[int, dict, str]:
    report_path = tmp_path / f"{name}.json"
    code = main(["loadtest", "run", "--url", f"wss://127.0.0.1:{port}/ws", "--data-dir", str(data),
                 "--capture", str(real("opus_voice_10s.pcap")), *RUN, "--json", str(report_path), *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, json.loads(report_path.read_text()), out


def _groups(report: dict) -> dict[bool, dict]:
    """Loss, jitter and delay of the impaired calls (True) and of the control group (False) of one
    run: the same load, so the machine's own noise (2 shared cores) falls on both."""
    out = {g: {"sent": 0, "lost": 0, "jitter": [], "delay": []} for g in (True, False)}
    for row in report["loss"]["per_stream"]:
        g = out[row["subscriber"] % CALLS < IMPAIRED]
        g["sent"] += row["sent"]
        g["lost"] += row["lost"]
    for s in report["streams"]:
        g = out[s["subscriber"] % CALLS < IMPAIRED]
        g["jitter"].append(s["jitter_ms"])
        g["delay"].append(s["delay_mean_ms"])
    for g in out.values():
        g["loss_percent"] = 100 * g["lost"] / g["sent"]
        g["jitter_ms"] = float(np.mean(g["jitter"]))
        g["delay_ms"] = float(np.mean(g["delay"]))
    return out


def _within_binomial(measured_percent: float, p: float, trials: float) -> bool:
    return abs(measured_percent - 100 * p) < 4 * math.sqrt(p * (1 - p) / trials) * 100 + 0.3


def test_injected_impairment_shows_in_the_report(tmp_path, capsys):
    data = tmp_path / "data"
    proc, port = _serve(data)
    half = ["--impaired-calls", str(IMPAIRED)]
    try:
        code, base, out = _run(port, data, tmp_path, capsys, "base")
        assert code == 0, out
        code, lossy, lossy_out = _run(port, data, tmp_path, capsys, "loss", "--loss", "5", "--impair-seed", "7", *half)
        code_j, jittery, _ = _run(port, data, tmp_path, capsys, "jitter", "--jitter", "30", *half)
        code_r, limited, limited_out = _run(port, data, tmp_path, capsys, "rate", "--rate-limit", "30")
        code_d, downlink, _ = _run(port, data, tmp_path, capsys, "down", "--loss", "10", "--impair-side", "receive",
                                   *half)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    groups = {n: _groups(r) for n, r in (("loss", lossy), ("jitter", jittery), ("down", downlink))}
    print(json.dumps({n: {str(k): {x: v[x] for x in ("sent", "lost", "loss_percent", "jitter_ms", "delay_ms")}
                          for k, v in g.items()} for n, g in groups.items()}, indent=1))
    # without impairment: nothing applied, no loss, the native path untouched
    assert base["config"]["impairment"]["applied"] is False and "send" not in base["impairment"]
    assert base["totals"]["loss_percent"] < 0.5 and "impairment" not in out
    assert base["identity"]["settings"]["loss"] == 0.0

    # --loss 5 on the first 2 calls: each publisher's packet is dropped once for its 2 subscribers,
    # so the distinct trials are half the packets expected; the control calls lose nothing
    assert code in (0, 4)  # no threshold given
    imp = lossy["impairment"]
    assert imp["applied"] and imp["loss_percent"] == 5 and imp["side"] == "send" and imp["seed"] == 7
    assert imp["impaired_calls"] == IMPAIRED and lossy["config"]["impairment"]["loss_percent"] == 5
    hit, control = groups["loss"][True], groups["loss"][False]
    assert _within_binomial(hit["loss_percent"], 0.05, hit["sent"] / 2), hit
    assert control["loss_percent"] < 0.5, control
    assert abs(hit["loss_percent"] - imp["send"]["loss_applied_percent"]) < 1.5
    assert imp["send"]["publishers"] == IMPAIRED * 3 and imp["send"]["dropped_loss"] > 0
    assert imp["send"]["cost_us_per_packet"] > 0
    assert ("impairment (injected)            loss 5% per participant of the first 2 call(s) (the others: control "
            "group), send side, seed 7") in lossy_out

    # --jitter 30 (uniform 0..30 ms) against the control calls of the same run: RFC 3550 jitter
    # about 10 ms higher, one-way delay about 15 ms higher
    assert code_j == 0
    hit, control = groups["jitter"][True], groups["jitter"][False]
    assert hit["loss_percent"] < 0.5
    assert 5 < hit["jitter_ms"] - control["jitter_ms"] < 20, (hit["jitter_ms"], control["jitter_ms"])
    # held packets leave at the first pump tick after their release time; a busy event loop (the
    # joins' DTLS, a loaded host) adds to that, which the shaper measures and the report gives
    late = jittery["impairment"]["send"]["release_late_ms"]
    rise = hit["delay_ms"] - control["delay_ms"]
    assert 8 < rise and 8 < rise - late["mean"] < 25, (hit["delay_ms"], control["delay_ms"], late)

    # --rate-limit 30 on 49.7 kbit/s of voice, every call: no stream gets more than the cap; the rest
    # queues and is dropped at the queue's tail
    assert code_r in (0, 4)
    kbps = limited["by_kind"]["voice"]["received_kbps_per_stream"]
    assert kbps["max"] <= 30 * 1.1 and kbps["mean"] > 20, kbps
    assert limited["impairment"]["send"]["dropped_rate_limit"] > 0
    assert 25 < limited["totals"]["loss_percent"] < 50
    assert "rate limit 30 kbit/s per participant, send side" in limited_out

    # --impair-side receive: each subscriber drops its own 10 %, so every expected packet is a trial
    assert code_d in (0, 4)
    recv = downlink["impairment"]["receive"]
    assert "send" not in downlink["impairment"] and recv["subscribers"] == IMPAIRED * 3
    hit, control = groups["down"][True], groups["down"][False]
    assert _within_binomial(hit["loss_percent"], 0.10, hit["sent"]), hit
    assert control["loss_percent"] < 0.5, control

    # compare tells runs with different impairment apart
    main(["loadtest", "compare", str(tmp_path / "base.json"), str(tmp_path / "loss.json")])
    assert "WARNING: the runs differ in loss: 0.0 against 5.0" in capsys.readouterr().out


def test_impairment_options_are_checked(capsys):
    for bad in (["--loss", "100"], ["--loss", "-1"], ["--jitter", "nan"], ["--rate-limit", "0"],
                ["--impair-side", "up"], ["--impaired-calls", "x"]):
        code = main(["loadtest", "run", "--url", "wss://127.0.0.1:1/ws", "--token-secret-file", "x", "--calls", "1",
                     "--participants-per-call", "2", "--capture", "x", "--duration", "2", *bad])
        err = capsys.readouterr().err
        assert code == 2 and f"argument {bad[0]}" in err and "Traceback" not in err

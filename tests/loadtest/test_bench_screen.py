"""benchmarks/bench_screen.py's arithmetic and verdicts on synthetic getStats samples (no browser).

The benchmark's figures (bitrates, time to 1.5 Mbit/s, capped-window loss, stalls) and its #19
checks must say PASS for a run that meets the targets and FAIL for the BEFORE-like run, or
the AFTER figures mean nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bench_screen", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_screen.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def outbound(ts_ms, rid, sent, frames, width):
    return {"ts": ts_ms, "ssrc": hash(rid) & 0xFFFF, "rid": rid, "active": True, "bytesSent": sent,
            "packetsSent": 0, "retransmittedBytesSent": 0, "frameWidth": width, "frameHeight": width * 9 // 16,
            "framesPerSecond": 30, "framesEncoded": frames, "qualityLimitationReason": "none",
            "qualityLimitationDurations": {}, "targetBitrate": 2e6, "encoderImplementation": "libvpx",
            "nackCount": 0, "pliCount": 0, "firCount": 0, "keyFramesEncoded": 1, "hugeFramesSent": 0,
            "totalEncodeTime": frames * 0.02, "totalPacketSendDelay": 0}


def inbound(ts_ms, received, lost, frames, width, freezes=0, freeze_s=0.0):
    return {"ts": ts_ms, "kind": "video", "ssrc": 1, "mid": "2", "bytesReceived": received * 1000,
            "packetsReceived": received, "packetsLost": lost, "framesDecoded": frames, "framesDropped": 0,
            "freezeCount": freezes, "totalFreezesDuration": freeze_s, "frameWidth": width,
            "frameHeight": None, "framesPerSecond": None, "jitter": 0, "nackCount": 0, "pliCount": 0}


def test_sender_series_bitrates_and_time_to_target():
    sender = bench.SenderSeries()
    for t in range(20):  # h ramps 0.2 Mbit/s per second: 1.6 Mbit/s at t=8
        h = sum(0.2e6 * k / 8 for k in range(1, t + 1))
        sender.add(float(t), {"outbound": [outbound(t * 1000, "h", h, t * 30, 1920),
                                           outbound(t * 1000, "l", t * 150e3 / 8, t * 30, 480)], "pair": None})
    summary = bench.sender_summary(sender, 1.5e6)
    assert summary["measured_on"] == "rid h" and summary["encodings"] == ["h", "l"]
    assert summary["time_to_target_s"] == 8.0
    assert sender.samples[5]["encodings"]["l"]["bps"] == 150_000
    assert sender.samples[5]["encodings"]["h"]["encoded_fps"] == 30.0
    assert sender.samples[5]["encodings"]["h"]["encode_ms_per_frame"] == 20.0
    result = {"scenario": "uplink", "sender": summary}
    assert bench.checks(result)["uplink_1.5Mbit_within_15s_on_h"]["ok"]
    slow = bench.SenderSeries()
    for t in range(20):  # BEFORE: one stream near 0.9 Mbit/s
        slow.add(float(t), {"outbound": [outbound(t * 1000, None, t * 0.9e6 / 8, t, 1920)], "pair": None})
    assert not bench.checks({"scenario": "uplink", "sender": bench.sender_summary(slow, 1.5e6)})[
        "uplink_1.5Mbit_within_15s_on_h"]["ok"]


def shaped_run(shaped_width_capped, shaped_loss_per_s, stall_from=None, back_after=3):
    """40 s, cap lifted at 25 s; shaped on `shaped_width_capped` then 1920 `back_after` s after the lift."""
    shaped, plain = bench.ReceiverSeries("shaped"), bench.ReceiverSeries("unshaped")
    frames = 0
    for t in range(40):
        if stall_from is None or not (stall_from <= t < stall_from + 4):
            frames += 15
        width = 1920 if t >= 25 + back_after else shaped_width_capped
        shaped.add(float(t), {"inbound": [inbound(t * 1000, t * 100, t * shaped_loss_per_s, frames, width)]})
        plain.add(float(t), {"inbound": [inbound(t * 1000, t * 300, 0, t * 30, 1920)]})
    samples = {"shaped": shaped.samples, "unshaped": plain.samples}
    return {"scenario": "shaped", "lift_at_s": 25, "sender": {"encodings": ["h", "l"]}, "samples": samples,
            "receivers": {"shaped": bench.receiver_summary(shaped, 25), "unshaped": bench.receiver_summary(plain, 25)}}


def test_shaped_checks_pass_on_a_good_run_and_fail_on_a_bad_one():
    good = bench.checks(shaped_run(480, 1))  # 1 lost per 100 received: 1 %
    assert all(c["ok"] for c in good.values()), good
    assert good["shaped_back_on_h_within_10s"]["value"] == 3
    lossy = bench.checks(shaped_run(480, 5))
    assert not lossy["shaped_loss_under_2pct"]["ok"] and lossy["shaped_gets_l"]["ok"]
    frozen = bench.checks(shaped_run(480, 1, stall_from=10))
    assert not frozen["shaped_no_freeze_over_1s"]["ok"]
    assert frozen["shaped_no_freeze_over_1s"]["value"]["longest_without_new_frame_s"] == 5.0
    same = bench.checks(shaped_run(1920, 1))  # BEFORE: the shaped page gets h like everybody
    assert not same["shaped_gets_l"]["ok"] and not same["shaped_back_on_h_within_10s"]["ok"]
    stays_low = bench.checks(shaped_run(480, 1, back_after=99))  # l -> l is not "back on h"
    assert not stays_low["shaped_back_on_h_within_10s"]["ok"]


def test_voice_check_reads_every_received_stream():
    rec = bench.ReceiverSeries("shaped")
    for t in range(10):
        rec.add(float(t), {"inbound": [
            {**inbound(t * 1000, t * 50, 0, 0, None), "kind": "audio", "ssrc": 7},
            {**inbound(t * 1000, t * 50, t, 0, None), "kind": "audio", "ssrc": 8},  # 2 %
        ]})
    result = {"scenario": "voice", "receivers": {"shaped": bench.receiver_summary(rec, None)}}
    check = bench.checks(result)["voice_loss_under_1pct"]
    assert not check["ok"] and check["value"] == {"7": 0.0, "8": 1.96}


def test_the_decision_trace_records_layer_choices_and_undoes_its_wrapping(tmp_path):
    import json

    from callsgw.sfu.router import Router
    from tests.unit.test_router_layers import run, setup_call

    original = Router._select_route
    trace = bench.DecisionTrace(str(tmp_path / "trace.jsonl"))
    try:
        router, alice = setup_call(Router)
        trace.t0, trace.names = 1.0, {"bob": "the shaped one"}
        run(router, alice, 0.0, 3.0)
        router.set_downlink_estimate("bob", 300_000.0)  # h (about 800 kbit/s) does not fit: down to l
        run(router, alice, 3.0, 6.0)
    finally:
        trace.close()
    assert Router._select_route is original
    records = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    layers = [r for r in records if r["kind"] == "layer"]
    assert layers and all(r["name"] == "the shaped one" and r["sub"] == "bob" for r in layers)
    assert {r["after"] for r in layers} == {"h", "l"}
    down = next(r for r in layers if r["before"] == "h" and r["after"] == "l")
    assert down["estimate"] == 300_000.0 and down["t"] >= 2.0  # seconds since t0
    assert [rid for rid, _ in down["layers"]] == ["h", "l"]

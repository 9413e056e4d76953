"""``loadtest run`` loss is true loss (issue #22 deliverable 1): what each publisher sent against
what each subscriber received, with missing and stopped streams, dropped participants and a
gateway that went away reported as such, and a failing exit status.

The accounting (:func:`loadtest.measure.deliveries`) is checked on made-up send logs and
receipts; then a real ``python -m callsgw serve`` is killed in the middle of a run.
"""

from __future__ import annotations

import json
import signal
import threading

import numpy as np
import pytest

from callsgw.cli import main
from loadtest.measure import BIN_NS, BIN_S, Collector, SendLog, StreamStats, deliveries
from loadtest.report import summary_text
from tests.loadtest.test_gateway_probe import _serve
from tests.loadtest.test_replay import real

PER_BIN = 25  # 20 ms voice frames: 25 packets per 0.5 s bin


def _log(tracks: dict[tuple[int, str], int]) -> SendLog:
    """A send log whose tracks each sent PER_BIN packets in each of their bins 0..n-1."""
    log = SendLog(base_ns=0)
    for (publisher, kind), bins in tracks.items():
        t = log.register_track(publisher, kind, 48000)
        send_ns = np.repeat(np.arange(bins, dtype=np.int64) * BIN_NS, PER_BIN) + 1000
        keys = (np.arange(len(send_ns), dtype=np.uint64) + np.uint64(t << 40))
        data = np.zeros(len(send_ns), dtype=[("key", "<u8"), ("send_ns", "<i8")])
        data["key"], data["send_ns"] = keys, send_ns
        log.record_batch(t, data.tobytes())
    return log


def _received(log: SendLog, subscriber: int, publisher: int, kind: str, per_bin: dict[int, int]) -> StreamStats:
    stats = StreamStats(subscriber, 1000 + publisher)
    stats.track = log.track_ids[(publisher, kind)]
    stats.recv_bins = np.zeros(1 + max(per_bin), np.int64)
    for b, n in per_bin.items():
        stats.recv_bins[b] = n
    return stats


def test_whole_stream_received_is_no_loss_and_tail_loss_counts():
    log = _log({(0, "voice"): 20, (1, "voice"): 20})
    healthy = _received(log, 1, 0, "voice", {b: PER_BIN for b in range(3, 20)})  # joined at bin 3
    tail = _received(log, 0, 1, "voice", {**{b: PER_BIN for b in range(2, 19)}, 19: 5})  # the last bin short
    rows = deliveries(log, [healthy, tail], [(1, 0, "voice", 1.0, 20), (0, 1, "voice", 1.0, 20)])
    ok, short = rows
    # from the first whole bin after the first packet (4) to the end of sending (bin 19 included)
    assert (ok.state, ok.sent, ok.received, ok.lost) == ("ok", 16 * PER_BIN, 16 * PER_BIN, 0)
    assert ok.from_s == 4 * BIN_S and ok.to_s == 20 * BIN_S
    assert (short.state, short.sent, short.lost) == ("ok", 17 * PER_BIN, PER_BIN - 5)


def test_a_stream_that_stops_loses_everything_after():
    log = _log({(0, "voice"): 20})
    stats = _received(log, 1, 0, "voice", {b: PER_BIN for b in range(0, 8)})  # nothing from bin 8 on
    (row,) = deliveries(log, [stats], [(1, 0, "voice", 0.0, 20)])
    assert row.state == "stopped" and row.stopped_at_s == 8 * BIN_S
    assert row.sent == 19 * PER_BIN and row.lost == 12 * PER_BIN
    assert row.as_dict()["loss_percent"] == pytest.approx(100 * 12 / 19, abs=1e-3)


def test_a_stream_that_never_arrived_is_missing_and_lost_after_the_settle_time():
    log = _log({(0, "voice"): 20, (0, "screen"): 20})
    rows = deliveries(log, [], [(1, 0, "voice", 1.0, 20), (1, 0, "screen", 9.0, 20)])
    assert [r.state for r in rows] == ["missing", "missing"]
    # expected from 1.0 + 2.0 s settle (bin 6) on; the second one's window is empty (9 + 2 > 10 s)
    assert rows[0].sent == rows[0].lost == 14 * PER_BIN
    assert rows[1].sent == rows[1].lost == 0


def test_a_departure_ends_the_window():
    log = _log({(0, "voice"): 20})
    stats = _received(log, 1, 0, "voice", {b: PER_BIN for b in range(0, 8)})
    (row,) = deliveries(log, [stats], [(1, 0, "voice", 0.0, 8)])  # the subscriber left in bin 8
    assert (row.state, row.sent, row.lost) == ("ok", 7 * PER_BIN, 0)


def test_a_window_counts_only_its_bins_for_the_live_loss():
    log = _log({(0, "voice"): 20})
    stats = _received(log, 1, 0, "voice", {b: PER_BIN for b in range(0, 8)})  # nothing from bin 8 on
    expected = [(1, 0, "voice", 0.0, 20)]
    (before,) = deliveries(log, [stats], expected, window=(4, 6))
    (across,) = deliveries(log, [stats], expected, window=(6, 10))
    (after,) = deliveries(log, [stats], expected, window=(12, 14))
    assert (before.sent, before.lost) == (2 * PER_BIN, 0)
    assert (across.sent, across.lost) == (4 * PER_BIN, 2 * PER_BIN)
    assert (after.sent, after.lost) == (2 * PER_BIN, 2 * PER_BIN)
    # a window before the stream's first whole bin counts nothing
    late = _received(log, 1, 0, "voice", {b: PER_BIN for b in range(5, 20)})
    (early,) = deliveries(log, [late], expected, window=(0, 4))
    assert early.sent == early.lost == 0
    # the samples' windows add up to the whole
    parts = [deliveries(log, [stats], expected, window=(a, a + 2))[0] for a in range(0, 20, 2)]
    (whole,) = deliveries(log, [stats], expected)
    assert sum(p.sent for p in parts) == whole.sent and sum(p.lost for p in parts) == whole.lost


def test_the_collector_counts_distinct_matched_packets_per_send_bin():
    col = Collector(send_log=SendLog(base_ns=0))
    log = col.send_log
    t = log.register_track(3, "voice", 48000)
    sent = np.zeros(4, dtype=[("key", "<u8"), ("send_ns", "<i8")])
    sent["key"] = [(1000 + 960 * i) << 32 | 77 for i in range(4)]
    sent["send_ns"] = [0, 100, BIN_NS + 5, BIN_NS + 6]
    log.record_batch(t, sent.tobytes())
    rec = np.zeros(5, dtype=[("arrival_ns", "<i8"), ("ssrc", "<u4"), ("ts", "<u4"), ("hash", "<u4"),
                             ("seq", "<u2"), ("pt", "u1"), ("flags", "u1")])
    rec["arrival_ns"] = [10, 110, BIN_NS + 10, BIN_NS + 10, BIN_NS + 12]
    rec["ssrc"] = 9
    rec["ts"] = [1000, 1960, 2920, 2920, 4000]  # the 4th is a duplicate, the 5th sent by nobody
    rec["hash"] = [77, 77, 77, 77, 1]
    rec["seq"] = [1, 2, 3, 3, 5]
    rec["pt"] = 111
    col.on_records(1, rec.tobytes())
    stats = col.streams[(1, 9)]
    assert stats.track == t and stats.recv_bins[:2].tolist() == [2, 1]
    (row,) = deliveries(log, col.streams.values(), [(1, 3, "voice", 0.0, 2)])
    assert (row.sent, row.received, row.lost) == (2, 1, 1)  # bin 1: two sent, one distinct arrived


def test_killing_the_gateway_mid_run_is_loss_and_a_failure(tmp_path, capsys):
    opus = real("opus_voice_10s.pcap")
    data = tmp_path / "data"
    proc, port = _serve(data)
    killer = threading.Timer(3.0, proc.send_signal, (signal.SIGKILL,))
    try:
        report_path = tmp_path / "report.json"
        killer.start()
        code = main(["loadtest", "run", "--url", f"wss://127.0.0.1:{port}/ws", "--data-dir", str(data),
                     "--calls", "1", "--participants-per-call", "3", "--capture", str(opus), "--duration", "7",
                     "--ramp-up", "30", "--insecure", "--json", str(report_path), "--max-loss", "1"])
        out, err = capsys.readouterr()
    finally:
        killer.cancel()
        proc.kill()
        proc.wait(timeout=30)
    print(out)
    assert code == 4, err
    report = json.loads(report_path.read_text())
    assert report["participants"]["joined"] == 3
    loss = report["loss"]
    # killed at about 3 s of 7 (sending stops at 6.5): more than a third of what was sent is lost
    assert report["totals"]["loss_percent"] == loss["loss_percent"] > 30
    assert loss["streams"] == 6 and loss["streams_stopped"] == 6
    kinds = [f["kind"] for f in report["failures"]]
    assert "gateway_gone" in kinds and kinds.count("stream_stopped") == 6
    gone = next(f for f in report["failures"] if f["kind"] == "gateway_gone")
    assert 2.0 < gone["at_s"] < 5.0 and f"pid {proc.pid}" in gone["detail"]
    for row in loss["per_stream"]:
        assert row["state"] == "stopped" and 2.0 < row["stopped_at_s"] < 4.5 and row["lost"] > 50
    assert "FAILED: the gateway process" in out and "stopped receiving" in out
    # the live loss is true loss per second (#22 item 9): 0 while the gateway lived, 100 % once the
    # windows (send time, settled 1.5 s later) lie after the kill; the live line says so too
    windows = [(p["loss_window_s"], p["loss_percent"]) for p in report["timeline"] if "loss_window_s" in p]
    assert windows, report["timeline"]
    assert all(loss < 5 for (start, end), loss in windows if end <= 2.5 and loss is not None)
    dead = [loss for (start, end), loss in windows if start >= gone["at_s"] + 0.5]
    assert dead and all(loss == 100.0 for loss in dead), windows
    assert "loss 100.00%" in err
    # the failure (4) ranks over the breached threshold (5), which is reported all the same
    assert report["thresholds"]["failed"] == ["--max-loss"] and "THRESHOLD FAILED: --max-loss 1 %" in out
    assert "Traceback" not in err
    assert summary_text(report) in out

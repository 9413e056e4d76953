"""The batched media path of ``callsgw loadtest run``: udpio's Replayer and Recorder on loopback
sockets, and Collector.on_records against the per-packet Collector.on_packet."""

from __future__ import annotations

import random
import struct
import time

import numpy as np
import pytest

from loadtest.measure import DUP_WINDOW, RECORD_DTYPE, SEND_DTYPE, Collector, StreamStats, payload_key
from tests.udpio_support import session_pair as _pair, sockets  # noqa: F401 (a fixture)

udpio = pytest.importorskip("callsgw._native.udpio")


def _packet(seq: int, ts: int, ssrc: int = 77, pt: int = 111, payload: bytes = b"abc", b0: int = 0x80) -> bytes:
    return struct.pack("!BBHII", b0, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def test_record_layout_matches_the_extension():
    assert RECORD_DTYPE.itemsize == udpio.RECORD_SIZE
    assert SEND_DTYPE.itemsize == udpio.SEND_RECORD_SIZE
    assert RECORD_DTYPE == np.dtype(udpio.RECORD_DTYPE) and SEND_DTYPE == np.dtype(udpio.SEND_DTYPE)


def test_payload_hash_skips_csrcs_and_extension():
    payload = b"the same payload"
    plain = _packet(1, 1000, payload=payload)
    with_ext = struct.pack("!BBHII", 0x91, 111, 9, 1000, 5) + b"\x00\x00\x00\x01" + b"\xbe\xde\x00\x01" + b"\x10\xff\x00\x00" + payload
    assert udpio.payload_hash(plain) == udpio.payload_hash(with_ext)
    assert udpio.payload_hash(plain)[0] == 1000
    assert udpio.payload_hash(plain) != udpio.payload_hash(_packet(1, 1000, payload=b"another payload!"))
    with pytest.raises(ValueError):
        udpio.payload_hash(b"\x80" * 8)


def _lossy_arrivals(n: int, seed: int):
    """(sent, arrived): 20 ms frames from seq 65000 (wraps), 1% lost, 1% duplicated, some swapped."""
    rng = random.Random(seed)
    sent = [((65000 + i) & 0xFFFF, (123456 + 960 * i) & 0xFFFFFFFF, 10.0 + 0.02 * i + rng.random() * 0.003,
             bytes([i % 256, (i // 256) % 256]) * 20) for i in range(n)]
    arrived = []
    for p in sent:
        r = rng.random()
        if r < 0.01:
            continue
        arrived.append(p)
        if r < 0.02:
            arrived.append(p)
    for k in range(0, len(arrived) - 1, 97):
        arrived[k], arrived[k + 1] = arrived[k + 1], arrived[k]
    return sent, arrived


@pytest.mark.parametrize("chunks", [1, 7, 37, 400])
def test_on_records_equals_on_packet(chunks):
    sent, arrived = _lossy_arrivals(3000, seed=chunks)
    ref, nat = Collector(), Collector()
    track = nat.send_log.register_track(3, "voice", 48000)
    log = np.zeros(len(sent), dtype=SEND_DTYPE)
    for i, (seq, ts, t, payload) in enumerate(sent):
        pkt = _packet(seq, ts, payload=payload)
        ref.send_log.record(payload_key(pkt), 3, "voice", 48000, t - 0.004)
        rts, h = udpio.payload_hash(pkt)
        log[i] = ((rts << 32) | h, nat.send_log.base_ns + round((t - 0.004) * 1e9))
    nat.send_log.record_batch(track, log.tobytes())
    rec = np.zeros(len(arrived), dtype=RECORD_DTYPE)
    for i, (seq, ts, t, payload) in enumerate(arrived):
        pkt = _packet(seq, ts, payload=payload)
        ref.on_packet(0, pkt, t)
        rec[i] = (nat.send_log.base_ns + round(t * 1e9), 77, ts, udpio.payload_hash(pkt)[1], seq, 111, 2)
    for part in np.array_split(rec, chunks):
        nat.on_records(0, part.tobytes())
    a, b = ref.streams[(0, 77)].as_dict(), nat.streams[(0, 77)].as_dict()
    assert a["lost"] > 0 and a["duplicates"] > 0 and a["reordered"] > 0
    for key in a:
        if key.startswith("delay") or key.endswith("jitter_ms"):
            assert b[key] == pytest.approx(a[key], abs=1e-3), key  # float times vs integer ns
        else:
            assert b[key] == a[key], key
    assert nat.received == ref.received


def test_on_records_unmatched_stream_takes_clock_from_payload_type():
    col = Collector()
    rec = np.zeros(5, dtype=RECORD_DTYPE)
    for i in range(5):
        rec[i] = (col.send_log.base_ns + i * 33_000_000, 9, 3000 * i, 1, 100 + i, 96, 0)
    col.on_records(2, rec.tobytes())
    s = col.streams[(2, 9)].as_dict()
    assert s["clock_rate"] == 90000 and s["unmatched"] == 5 and s["publisher"] is None
    assert s["packets"] == 5 and s["lost"] == 0 and s["delay_samples"] == 0


def test_advance_prunes_seen_like_sequence():
    # a long in-order stream, then a duplicate just inside and one just outside the window
    ref, fast = StreamStats(0, 1), StreamStats(0, 1)
    seqs = list(range(3 * DUP_WINDOW + 123))
    for s in seqs:
        ref.sequence(s & 0xFFFF)
    fast.advance(seqs[:1])
    for i in range(1, len(seqs), 1000):
        fast.advance(seqs[i:i + 1000])
    assert fast.seen == ref.seen and fast.highest == ref.highest and fast.base == ref.base
    assert fast.packets == ref.packets


def test_replayer_to_recorder_on_loopback(sockets):
    a, b = sockets
    tx, rx = _pair()
    packets = [_packet(0, 0, ssrc=0, pt=0, payload=bytes([i]) * (40 + i), b0=0x80) for i in range(10)]
    packets[3] = bytes([0x80, 0x80]) + packets[3][2:]  # a marker bit
    offsets = [0.002 * i for i in range(10)]
    tpl = udpio.TrackTemplate(packets, offsets, [960 * i for i in range(10)], 0.02, 9600)
    start = udpio.realtime_ns()
    rep = udpio.Replayer(a.fileno(), "127.0.0.1", b.getsockname()[1], tx, tpl, 0xCAFE, 111, 65530, 0xFFFFF000, start)
    recorder = udpio.Recorder(b.fileno(), "127.0.0.1", a.getsockname()[1], rx)
    assert rep.send_due(start - 1) == (0, -1)  # nothing due yet
    sent, lag = rep.send_due(start + int(0.0291 * 1e9))  # 1.5 loops: 15 packets
    assert sent == 15 and lag >= 0 and rep.dropped == 0 and rep.protect_errors == 0
    assert rep.next_due_ns == start + int(0.03 * 1e9)
    a.sendto(b"\x00\x01\x00\x00stun-ish", b.getsockname())  # not RTP: handed back
    deadline, back = time.monotonic() + 2, []
    while recorder.pending < 15 and time.monotonic() < deadline:
        back += recorder.poll()
        time.sleep(0.001)
    back += recorder.poll()
    assert [d for d, _ in back] == [b"\x00\x01\x00\x00stun-ish"]
    rec = np.frombuffer(recorder.take(), dtype=RECORD_DTYPE)
    log = np.frombuffer(rep.take_log(), dtype=SEND_DTYPE)
    assert len(rec) == len(log) == 15 and rep.take_log() == b""
    assert (rec["ssrc"] == 0xCAFE).all() and (rec["pt"] == 111).all()
    assert rec["seq"].tolist() == [(65530 + i) & 0xFFFF for i in range(15)]
    ts = [(0xFFFFF000 + (i // 10) * 9600 + 960 * (i % 10)) & 0xFFFFFFFF for i in range(15)]
    assert rec["ts"].tolist() == ts
    assert (rec["flags"] & 1).tolist() == [1 if i % 10 == 3 else 0 for i in range(15)]
    keys = ((rec["ts"].astype(np.uint64) << np.uint64(32)) | rec["hash"]).tolist()
    assert keys == log["key"].tolist()
    assert [tpl.hash_at(i % 10) for i in range(15)] == rec["hash"].tolist()
    delay = rec["arrival_ns"] - log["send_ns"]
    assert (delay >= 0).all() and (delay < 1e9).all()
    assert recorder.rtp_total == 15 and recorder.unprotect_errors == 0


def test_template_and_replayer_refuse_bad_input(sockets):
    a, _ = sockets
    tx, _ = _pair()
    with pytest.raises(ValueError):
        udpio.TrackTemplate([], [], [], 1.0, 1)
    with pytest.raises(ValueError):
        udpio.TrackTemplate([b"\x80" * 8], [0.0], [0], 1.0, 1)  # shorter than a header
    with pytest.raises(ValueError):
        udpio.TrackTemplate([b"\x8f" + b"\x00" * 20], [0.0], [0], 1.0, 1)  # 15 CSRCs overrun
    tpl = udpio.TrackTemplate([_packet(0, 0)], [0.0], [0], 0.02, 960)
    with pytest.raises(ValueError):
        udpio.Replayer(a.fileno(), "127.0.0.1", 9, tx, tpl, 1, 72, 0, 0, 0)  # an RTCP-range payload type
    with pytest.raises(ValueError):
        udpio.Replayer(a.fileno(), "127.0.0.1", 9, tx, tpl, 1, 111, 0, 0, 0, speed=0)


def test_delay_samples_cover_the_whole_run_evenly():
    col = Collector(max_samples=1000)
    for k in range(10):
        col._store_delays(np.arange(k * 700, (k + 1) * 700, dtype=np.float64))
    stored = np.concatenate(col._delay_chunks)
    assert col._delay_stride == 8 and len(stored) <= 1000
    assert stored.tolist() == list(range(0, 7000, 8))  # every 8th of all 7000, in order


async def test_per_packet_fallback_still_runs(tmp_path):
    """RunConfig(native=False): the per-packet path through callsgw.client measures the same way."""
    from pathlib import Path

    from loadtest.replay import LoadRun, RunConfig, load_capture, pick_tracks
    from tests.signaling.gateway import running_gateway

    capture = Path(__file__).parents[2].parent / "shared" / "captures" / "opus_voice_10s.pcap"
    if not capture.exists():
        pytest.skip(f"shared capture {capture} is absent")
    voice, _ = pick_tracks(load_capture(str(capture))[0])
    async with running_gateway(tmp_path, joins_per_second_per_address=1000) as app:
        run = LoadRun(RunConfig(url=f"wss://127.0.0.1:{app.port}/ws", secret=app.datadir.api_secret(), calls=1,
                                participants_per_call=2, voice=voice, video=None, duration=2.5, ssl=False,
                                native=False))
        report = await run.run()
    assert report["participants"]["joined"] == 2
    assert report["tester"]["media_path"].startswith("per-packet")
    assert report["totals"]["packets_received"] > 0 and report["totals"]["loss_percent"] < 1.0
    assert report["totals"]["delay_ms"]["mean"] > 0

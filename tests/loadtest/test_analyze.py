"""loadtest.streams and loadtest.analyze, checked against tshark -q -z rtp,streams."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from loadtest.analyze import analyze_streams
from loadtest.capture import UdpDatagram, read_udp
from loadtest.streams import load_sdp, parse_rtp, split_streams
from tests.loadtest import writers as w

CAPTURES = Path(__file__).parents[2].parent / "shared" / "captures"
PORTS = {"opus_voice_10s.pcap": 40000, "vp8_screen_10s.pcap": 40002, "pcmu_voice_10s.pcap": 40030}


def real(name: str) -> Path:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"shared capture {path} is absent")
    return path


def tshark_streams(path: Path, port: int) -> list[dict]:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    out = subprocess.run(
        [tshark, "-n", "-r", str(path), "-d", f"udp.port=={port},rtp", "-q", "-z", "rtp,streams"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    rows = []
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 17 and f[6].startswith("0x"):
            rows.append({
                "src_port": int(f[3]), "dst_port": int(f[5]), "ssrc": int(f[6], 16), "packets": int(f[8]),
                "lost": int(f[9]), "min_jitter": float(f[14]), "mean_jitter": float(f[15]), "max_jitter": float(f[16]),
            })
    return rows


def ours(path: Path, **kw):
    return {s.ssrc: s for s in analyze_streams(split_streams(read_udp(path)), **kw)}


def assert_agrees(path: Path, port: int, *, jitter_expected: bool | None = None) -> list[dict]:
    theirs = tshark_streams(path, port)
    mine = ours(path)
    assert theirs and sorted(mine) == sorted(t["ssrc"] for t in theirs)
    for t in theirs:
        m = mine[t["ssrc"]]
        assert (m.packets, m.lost) == (t["packets"], t["lost"]), (m, t)
        if t["min_jitter"] != -1.0:  # tshark knew the clock rate
            assert m.max_jitter_ms == pytest.approx(t["max_jitter"], rel=0.10, abs=0.002)
            assert m.mean_jitter_ms == pytest.approx(t["mean_jitter"], rel=0.10, abs=0.002)
        if jitter_expected is not None:
            assert (t["min_jitter"] != -1.0) is jitter_expected
    return theirs


@pytest.mark.parametrize("name", sorted(PORTS))
def test_agrees_with_tshark_on_real_captures(name):
    theirs = assert_agrees(real(name), PORTS[name], jitter_expected=name.startswith("pcmu"))
    assert theirs[0]["packets"] == {"opus": 501, "vp8_": 1666, "pcmu": 500}[name[:4]]


def test_pcmu_jitter_figures():
    (stats,) = ours(real("pcmu_voice_10s.pcap")).values()
    assert stats.max_jitter_ms == pytest.approx(36.873, abs=0.001)
    assert stats.mean_jitter_ms == pytest.approx(32.632, abs=0.001)
    assert (stats.packets, stats.lost, stats.sequence_errors, stats.clock_rate) == (500, 0, 0, 8000)


def _editcap(src: Path, dst: Path, *ranges: str) -> None:
    editcap = shutil.which("editcap")
    if editcap is None:
        pytest.skip("editcap is not installed (it comes with tshark)")
    subprocess.run([editcap, "-r", str(src), str(dst), *ranges], check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("name", sorted(PORTS))
def test_lossy_copy_made_with_editcap(tmp_path, name):
    lossy = tmp_path / "lossy.pcap"
    _editcap(real(name), lossy, "1-100", "120-300", "302-450", "460-100000")
    assert_agrees(lossy, PORTS[name])
    (stats,) = ours(lossy).values()
    assert stats.lost == 19 + 1 + 9 and stats.sequence_errors == 3


def _rewrite(src: Path, order: list[int]) -> bytes:
    ds = list(read_udp(src))
    return w.write_pcap([(ds[i].time if k == i else ds[k].time, w.frame(1, ds[i])) for k, i in enumerate(order)], 1)


def test_reordered_and_duplicated_copy(tmp_path):
    src = real("pcmu_voice_10s.pcap")
    n = 500
    order = list(range(n))
    order[50], order[51] = order[51], order[50]  # swap
    order[200:203] = [202, 200, 201]  # late by two
    order.insert(300, 299)  # duplicate
    del order[0]  # the first packet lost: base follows later
    path = tmp_path / "reordered.pcap"
    path.write_bytes(_rewrite(src, order))
    assert_agrees(path, 40030)
    (stats,) = ours(path).values()
    assert stats.packets == 500 and stats.lost == -1 and stats.sequence_errors >= 3


SEQUENCE_CASES = {
    "late-at-end": [10, 11, 13, 12],
    "below-first": [11, 10, 12, 13],
    "wrap-then-late": [65534, 65535, 0, 1, 65533],
    "wrap-reordered": [65534, 0, 65535, 1],
    "stray-high": [5, 6, 65530, 7],
    "duplicate": [100, 101, 102, 101, 103],
    "jump": [1, 2, 40000, 3, 4],
    "wrap-with-loss": [65530, 65531, 65532, 65534, 65533, 0, 1, 2, 3, 4, 5],
    "zero-after-65535": [65535, 0, 1, 2],
    "lossy-long": [i for i in range(3000) if i % 97 and i % 1000 != 5],
}


@pytest.mark.parametrize("name", sorted(SEQUENCE_CASES))
def test_sequence_edge_cases_agree_with_tshark(tmp_path, name):
    seqs = [s & 0xFFFF for s in SEQUENCE_CASES[name]]
    payloads = [(100 + k * 0.02 + (0.004 if k % 3 == 0 else 0), w.rtp(s, k * 160, 0x1234)) for k, s in enumerate(seqs)]
    ds = w.datagrams(payloads, dst=("10.0.0.2", 40030))
    path = tmp_path / f"{name}.pcap"
    path.write_bytes(w.write_pcap([(d.time, w.frame(1, d)) for d in ds], 1))
    assert_agrees(path, 40030)


def test_two_ssrcs_and_non_rtp_on_one_five_tuple():
    a = [(i * 0.02, w.rtp(i, i * 160, 1)) for i in range(5)]
    b = [(i * 0.02 + 0.01, w.rtp(100 + i, i * 960, 2, pt=111, payload=b"\x78" + b"\x00" * 60)) for i in range(5)]
    junk = [
        (0.5, b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"\x00" * 12),  # STUN
        (0.5, b"\x16\xfe\xfd" + b"\x00" * 20),  # DTLS
        (0.5, b"\x80\xc8" + b"\x00" * 26),  # RTCP sender report (PT 200 -> 72)
        (0.5, b"\x80\x00\x00"),  # too short
        (0.5, b"\x40" + b"\x00" * 20),  # version 1
    ]
    streams = split_streams(w.datagrams(sorted(a + b + junk)))
    assert [(s.ssrc, len(s.packets), s.payload_type) for s in streams] == [(1, 5, 0), (2, 5, 111)]
    assert streams[0].codec.name == "PCMU" and streams[1].codec.name == "opus"
    assert streams[0].packet_rate == pytest.approx(50)


def test_parse_rtp_skips_csrcs_and_extension():
    pkt = bytes([0x92, 96]) + b"\x00\x01" + b"\x00" * 8 + b"\x00" * 8 + b"\xbe\xde\x00\x01" + b"\x00" * 4 + b"PAY"
    p = parse_rtp(pkt, 0.0)
    assert p is not None and p.payload == b"PAY" and p.payload_type == 96
    assert parse_rtp(bytes([0x80, 0xC8]) + b"\x00" * 10, 0.0) is None


def test_codec_guesses_on_real_captures():
    guesses = {name: split_streams(read_udp(real(name)))[0].codec for name in PORTS}
    assert (guesses["opus_voice_10s.pcap"].name, guesses["opus_voice_10s.pcap"].clock_rate) == ("opus", 48000)
    assert (guesses["vp8_screen_10s.pcap"].name, guesses["vp8_screen_10s.pcap"].clock_rate) == ("VP8", 90000)
    assert guesses["pcmu_voice_10s.pcap"].source == "static"
    sdp = load_sdp(real("vp8_screen_10s.sdp"))
    (s,) = split_streams(read_udp(real("vp8_screen_10s.pcap")), sdp)
    assert (s.codec.name, s.codec.clock_rate, s.codec.source) == ("VP8", 90000, "sdp")


def test_clock_rate_option_and_unknown_dynamic_pt():
    ds = w.datagrams([(i * 0.02 + (0.003 if i % 2 else 0), w.rtp(i, i * 320, 9, pt=100, payload=bytes([i % 256]) * 20)) for i in range(50)])
    (plain,) = analyze_streams(split_streams(ds))
    assert plain.codec == "unknown" and plain.max_jitter_ms is None and plain.clock_rate is None
    (rated,) = analyze_streams(split_streams(ds), clock_rate=16000)
    assert rated.clock_rate == 16000 and rated.clock_rate_source == "option"
    assert 0 < rated.mean_jitter_ms <= rated.max_jitter_ms < 3.0


def test_no_rtp_gives_no_streams():
    ds = [UdpDatagram(0.0, ("1.1.1.1", 53), ("2.2.2.2", 53), b"\x12\x34\x01\x00" + b"\x00" * 20)]
    assert split_streams(ds) == []

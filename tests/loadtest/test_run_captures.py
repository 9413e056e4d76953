"""``loadtest run`` handles captures safely (issue #22 deliverable 6): it says which streams it
uses, refuses what the gateway would not carry (non-Opus voice, non-VP8 screen), takes --stream,
--sdp and gzip captures, warns about (or with --strict refuses) snaplen-cut packets, and guesses
Opus from the TOC byte on short captures.

Every case stops before or at the first join; the gateway URL (port 9) refuses at once, so
"could not join" (exit 2) means the capture was accepted.
"""

from __future__ import annotations

import gzip
import struct

import pytest

from callsgw.cli import main
from loadtest.capture import CaptureReader, UdpDatagram
from loadtest.streams import _OPUS_FRAME, RtpPacket, _looks_opus, split_streams
from tests.loadtest import writers as w
from tests.loadtest.test_replay import real

OPUS_SSRC, VP8_SSRC = 0xA45E3D10, 0x925BE199


def _run(tmp_path, capsys, *extra: str) -> tuple[int, str]:
    secret = tmp_path / "api_secret"
    secret.write_bytes(b"s" * 32)
    code = main(["loadtest", "run", "--url", "wss://127.0.0.1:9/ws", "--token-secret-file", str(secret),
                 "--calls", "1", "--participants-per-call", "1", "--duration", "2", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _rewrite_pt(src, dst, pt: int) -> str:
    """A copy of a classic pcap whose RTP payload type is ``pt`` (Ethernet/NULL framing kept)."""
    data = bytearray(src.read_bytes())
    reader = CaptureReader(bytes(data))
    order = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    off = 24
    for d in reader:
        incl = struct.unpack_from(order + "I", data, off + 8)[0]
        start = off + 16
        frame = bytes(data[start : start + incl])
        at = frame.rfind(d.payload)
        data[start + at + 1] = (data[start + at + 1] & 0x80) | pt
        off = start + incl
    dst.write_bytes(bytes(data))
    return str(dst)


def test_the_streams_used_and_left_out_are_printed(tmp_path, capsys):
    opus, vp8 = str(real("opus_voice_10s.pcap")), str(real("vp8_screen_10s.pcap"))
    code, err = _run(tmp_path, capsys, "--capture", opus, "--capture", vp8)
    assert code == 2 and "could not join" in err
    assert f"voice stream: {opus} 127.0.0.1:" in err and f"SSRC 0x{OPUS_SSRC:08X} PT 97 opus (guessed), 501 packets" in err
    assert f"screen stream: {vp8}" in err and "VP8" in err
    code, err = _run(tmp_path, capsys, "--capture", opus, "--capture", vp8, "--stream", hex(OPUS_SSRC))
    assert code == 2 and "could not join" in err and "screen stream" not in err
    assert f"stream left out: {vp8}" in err and f"SSRC 0x{VP8_SSRC:08X}" in err
    code, err = _run(tmp_path, capsys, "--capture", opus, "--stream", "0x12345678")
    assert code == 2 and "--stream 0x12345678: no such stream" in err and "could not join" not in err


def test_non_opus_voice_is_refused(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, "--capture", str(real("pcmu_voice_10s.pcap")))
    assert code == 2 and "is PCMU" in err and "only Opus for voice" in err
    assert len(err.strip().splitlines()) == 1


def test_sdp_names_a_dynamic_payload_type(tmp_path, capsys):
    # PCMU bytes under a dynamic payload type: not recognised as Opus, so refused ...
    pcmu97 = _rewrite_pt(real("pcmu_voice_10s.pcap"), tmp_path / "pcmu97.pcap", 97)
    code, err = _run(tmp_path, capsys, "--capture", pcmu97)
    assert code == 2 and "could not be recognised" in err and "--sdp" in err
    # ... unless the SDP says PT 97 is Opus (the tester's word is taken)
    sdp = tmp_path / "opus.sdp"
    sdp.write_text("v=0\r\nm=audio 40000 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\n")
    code, err = _run(tmp_path, capsys, "--capture", pcmu97, "--sdp", str(sdp))
    assert code == 2 and "could not join" in err and "opus, 500 packets" in err
    code, err = _run(tmp_path, capsys, "--capture", pcmu97, "--sdp", str(tmp_path / "none.sdp"))
    assert code == 2 and "none.sdp" in err and len(err.strip().splitlines()) == 1


def test_gzip_captures_are_read(tmp_path, capsys):
    packed = tmp_path / "opus.pcap.gz"
    packed.write_bytes(gzip.compress(real("opus_voice_10s.pcap").read_bytes()))
    code, err = _run(tmp_path, capsys, "--capture", str(packed))
    assert code == 2 and "could not join" in err and "opus (guessed), 501 packets" in err
    assert main(["loadtest", "--list", str(packed)]) == 0
    assert "(pcap+gzip)" in capsys.readouterr().out
    broken = tmp_path / "broken.pcap.gz"
    broken.write_bytes(packed.read_bytes()[:40] + b"\x00" * 40)
    code, err = _run(tmp_path, capsys, "--capture", str(broken))
    assert code == 2 and "gzip" in err and len(err.strip().splitlines()) == 1


def test_snaplen_cut_packets_warn_or_are_refused(tmp_path, capsys):
    # Opus-like packets (20 ms, config 27) captured with a snap length that cut each by 10 bytes
    frames = []
    for i in range(50):
        d = UdpDatagram(1 + i * 0.02, ("10.0.0.1", 5000), ("10.0.0.2", 6000),
                        w.rtp(i, 960 * i, 7, pt=111, payload=bytes([27 << 3]) + bytes(60)))
        frames.append((d.time, w.frame(1, d)))
    data = bytearray(w.write_pcap(frames, 1))
    off = 24
    for _, frame in frames:  # orig_len = captured + 10
        struct.pack_into("<I", data, off + 12, len(frame) + 10)
        off += 16 + len(frame)
    path = tmp_path / "snapped.pcap"
    path.write_bytes(bytes(data))
    code, err = _run(tmp_path, capsys, "--capture", str(path))
    assert code == 2 and "could not join" in err
    assert "warning" in err and "50 of 50 packets were cut by the capture's snap length" in err
    code, err = _run(tmp_path, capsys, "--capture", str(path), "--strict")
    assert code == 2 and "--strict refuses them" in err and "could not join" not in err


def _opus_packets(configs: list[int], frames: int = 1) -> list[RtpPacket]:
    out, ts = [], 1000
    for i, config in enumerate(configs):
        code = 0 if frames == 1 else 3
        payload = bytes([config << 3 | code]) + (bytes([frames]) if code == 3 else b"") + bytes(40)
        out.append(RtpPacket(i * 0.02, i, ts, 5, 97, False, 12 + len(payload), payload))
        ts += _OPUS_FRAME[config] * frames
    return out


def test_opus_is_guessed_from_the_toc_byte_on_short_captures():
    opus = real("opus_voice_10s.pcap")
    datagrams = list(CaptureReader(opus))
    for n in (3, 10, 50, 150):  # the encoder switches SILK/hybrid/CELT configurations early on
        (stream,) = split_streams(datagrams[:n])
        assert stream.codec.name == "opus", n
    assert _looks_opus(_opus_packets([27, 15, 13, 27, 27]))  # 20 ms in three configurations
    assert _looks_opus(_opus_packets([25] * 6, frames=3))  # 3 x 5 ms CELT frames per packet (code 3)
    assert not _looks_opus(_opus_packets([27, 27]))  # too short to tell
    pcmu = [RtpPacket(i * 0.02, i, 160 * i, 5, 97, False, 172, bytes([0xFF - i]) * 160) for i in range(50)]
    assert not _looks_opus(pcmu)  # 160 ticks per packet: never an Opus duration

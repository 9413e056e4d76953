"""RFC 7983 section 7 first-byte demultiplexing, with RFC 5761 section 4 RTP/RTCP split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callsgw.wire.demux import PacketKind, classify

# (first byte range inclusive, kind) per RFC 7983 section 7; RTP bytes get a
# second byte that is plainly RTP (payload type 111, no marker).
RANGES = [
    (0, 3, PacketKind.STUN),
    (4, 15, PacketKind.UNKNOWN),
    (16, 19, PacketKind.UNKNOWN),  # ZRTP
    (20, 63, PacketKind.DTLS),
    (64, 79, PacketKind.UNKNOWN),  # TURN channel
    (80, 127, PacketKind.UNKNOWN),
    (128, 191, PacketKind.RTP),
    (192, 255, PacketKind.UNKNOWN),
]


def _expected(b0: int) -> PacketKind:
    for lo, hi, kind in RANGES:
        if lo <= b0 <= hi:
            return kind
    raise AssertionError(b0)


@pytest.mark.parametrize(("lo", "hi", "kind"), RANGES)
def test_range_boundaries(lo, hi, kind):
    for b0 in {lo, lo + 1, hi - 1, hi}:
        assert classify(bytes([b0, 111]) + bytes(10)) is kind


@pytest.mark.parametrize("b0", range(256))
def test_every_first_byte(b0):
    assert classify(bytes([b0, 0x6F, 0, 0])) is _expected(b0)


def test_empty_is_unknown():
    assert classify(b"") is PacketKind.UNKNOWN


@pytest.mark.parametrize("b0", [0, 3, 20, 63])
def test_single_byte_stun_and_dtls_are_classified_by_first_byte(b0):
    assert classify(bytes([b0])) is _expected(b0)


@pytest.mark.parametrize("b0", [128, 0x80 | 0x20, 191])
def test_single_byte_rtp_range_is_unknown(b0):
    # Without a second byte RTP and RTCP cannot be told apart.
    assert classify(bytes([b0])) is PacketKind.UNKNOWN


@pytest.mark.parametrize(
    ("b1", "kind"),
    [
        (0, PacketKind.RTP),
        (63, PacketKind.RTP),
        (64, PacketKind.RTCP),  # payload type 64 (forbidden on a muxed port)
        (95, PacketKind.RTCP),
        (96, PacketKind.RTP),
        (127, PacketKind.RTP),
        (128, PacketKind.RTP),  # marker + PT 0
        (191, PacketKind.RTP),  # marker + PT 63
        (192, PacketKind.RTCP),  # SR-range boundary: FIR (192)
        (200, PacketKind.RTCP),  # SR
        (201, PacketKind.RTCP),  # RR
        (205, PacketKind.RTCP),  # RTPFB
        (206, PacketKind.RTCP),  # PSFB
        (223, PacketKind.RTCP),
        (224, PacketKind.RTP),  # marker + PT 96
        (255, PacketKind.RTP),
    ],
)
def test_rtp_rtcp_split_on_second_byte(b1, kind):
    for b0 in (0x80, 0x81, 0xBF):
        assert classify(bytes([b0, b1])) is kind


def test_real_packets():
    stun_binding = bytes.fromhex("0001 0000 2112a442") + bytes(12)
    dtls_client_hello = bytes.fromhex("16 fefd 0000 0000 0000 0000 0030")
    rtp = bytes.fromhex("80 6f 0001 00000000 12345678")
    rtp_marker = bytes.fromhex("80 ef 0001 00000000 12345678")
    sr = bytes.fromhex("80 c8 0006 12345678")
    rr_with_reports = bytes.fromhex("81 c9 0007 12345678")
    assert classify(stun_binding) is PacketKind.STUN
    assert classify(dtls_client_hello) is PacketKind.DTLS
    assert classify(rtp) is PacketKind.RTP
    assert classify(rtp_marker) is PacketKind.RTP
    assert classify(sr) is PacketKind.RTCP
    assert classify(rr_with_reports) is PacketKind.RTCP


def test_accepts_bytes_likes():
    assert classify(bytearray(b"\x16\xfe\xfd")) is PacketKind.DTLS
    assert classify(memoryview(b"\x80\xc8\x00\x06")) is PacketKind.RTCP
    assert classify(memoryview(b"")) is PacketKind.UNKNOWN


@given(st.binary(max_size=64))
def test_garbage_never_raises_and_matches_the_table(data):
    kind = classify(data)
    assert isinstance(kind, PacketKind)
    if not data:
        assert kind is PacketKind.UNKNOWN
    elif 128 <= data[0] <= 191:
        if len(data) < 2:
            assert kind is PacketKind.UNKNOWN
        else:
            assert kind is (PacketKind.RTCP if 64 <= data[1] & 0x7F <= 95 else PacketKind.RTP)
    else:
        assert kind is _expected(data[0])

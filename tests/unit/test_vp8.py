"""callsgw.wire.vp8: the RFC 7741 payload descriptor and keyframe test, against hand-built and garbage input."""

from __future__ import annotations

import os
import random

import pytest

from callsgw.wire import vp8


def descriptor(*, start=True, partition=0, picture_id=None, long=True, tl0=None, tid=None):
    """An RFC 7741 section 4.2 descriptor built independently of the parser."""
    x = 0
    ext = b""
    if picture_id is not None:
        x |= 0x80
        ext += bytes([0x80 | (picture_id >> 8), picture_id & 0xFF]) if long else bytes([picture_id & 0x7F])
    if tl0 is not None:
        x |= 0x40
        ext += bytes([tl0])
    if tid is not None:
        x |= 0x20
        ext += bytes([(tid << 6) | 0x20])
    b0 = (0x80 if x else 0) | (0x10 if start else 0) | partition
    return bytes([b0]) + (bytes([x]) + ext if x else b"")


KEY_HEADER = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A])  # P=0, then the keyframe start code 9d 01 2a
DELTA_HEADER = bytes([0x31, 0x02, 0x00])  # P=1


def test_fields_and_offsets_of_a_full_descriptor():
    d = vp8.parse(descriptor(picture_id=0x1234, tl0=7, tid=1) + KEY_HEADER)
    assert (d.start, d.partition, d.picture_id, d.picture_id_bits, d.picture_id_at) == (True, 0, 0x1234, 15, 2)
    assert (d.tl0picidx, d.tl0picidx_at, d.size) == (7, 4, 6)
    short = vp8.parse(descriptor(picture_id=0x55, long=False, start=False, partition=2) + b"x")
    assert (short.start, short.partition, short.picture_id, short.picture_id_bits, short.size) == (False, 2, 0x55, 7, 3)
    bare = vp8.parse(b"\x10" + KEY_HEADER)
    assert (bare.picture_id, bare.picture_id_bits, bare.tl0picidx, bare.size) == (None, 0, None, 1)


@pytest.mark.parametrize("fields", [{}, {"picture_id": 300}, {"picture_id": 9, "long": False, "tl0": 3, "tid": 0}])
def test_a_keyframe_starts_with_s_pid_0_and_p_clear(fields):
    assert vp8.is_keyframe_start(descriptor(**fields) + KEY_HEADER)
    assert not vp8.is_keyframe_start(descriptor(**fields) + DELTA_HEADER)  # P=1: interframe
    assert not vp8.is_keyframe_start(descriptor(start=False, **fields) + KEY_HEADER)  # not a partition start
    assert not vp8.is_keyframe_start(descriptor(partition=1, **fields) + KEY_HEADER)  # not the first partition
    assert not vp8.is_keyframe_start(descriptor(**fields))  # no payload header after it


def test_rewrite_keeps_width_and_m_bit_and_wraps():
    payload = bytearray(descriptor(picture_id=0x7FFE, tl0=255) + KEY_HEADER)
    d = vp8.parse(payload)
    vp8.rewrite_ids(payload, d, 3, 2)
    again = vp8.parse(payload)
    assert (again.picture_id, again.picture_id_bits, again.tl0picidx) == (1, 15, 1)
    assert payload[d.size:] == KEY_HEADER and payload[2] & 0x80
    short = bytearray(b"HDR" + descriptor(picture_id=126, long=False) + DELTA_HEADER)
    d = vp8.parse(short[3:])
    vp8.rewrite_ids(short, d, 5, 0, base=3)
    assert short[:3] == b"HDR" and vp8.parse(short[3:]).picture_id == 3 and not short[5] & 0x80


@pytest.mark.parametrize("cut", range(0, 6))
def test_every_truncation_of_a_descriptor_is_refused(cut):
    full = descriptor(picture_id=0x1234, tl0=7, tid=1)  # 6 octets
    with pytest.raises(vp8.Vp8Error):
        vp8.parse(full[:cut])


def test_garbage_never_raises_anything_else_and_never_reads_past_the_end():
    rng = random.Random(7741)
    for _ in range(5000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 8)))
        try:
            d = vp8.parse(data)
            vp8.is_keyframe_start(data)
        except vp8.Vp8Error:
            continue
        assert d.size <= len(data)
        buf = bytearray(data)
        vp8.rewrite_ids(buf, d, 1000, 17)
        assert len(buf) == len(data)
    for _ in range(200):
        vp8.is_keyframe_start(os.urandom(64)) in (True, False)

"""The batch API: one buffer, offsets/lengths, status codes, GIL released."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from callsgw.srtp import Profile, Session, Status
from tests.packets import libsrtp_pair, rtcp_sr, rtp

PROFILES = list(Profile)
SLOT = 1500


def slots(packets, slot=SLOT):
    buf = np.zeros(len(packets) * slot, dtype=np.uint8)
    offsets = np.arange(len(packets), dtype=np.uint32) * slot
    lengths = np.array([len(p) for p in packets], dtype=np.uint32)
    for i, p in enumerate(packets):
        buf[i * slot : i * slot + len(p)] = np.frombuffer(p, dtype=np.uint8)
    return buf, offsets, lengths


def unpack(buf, offsets, lengths):
    return [bytes(buf[o : o + n]) for o, n in zip(offsets, lengths)]


def keys(profile):
    return os.urandom(profile.key_length), os.urandom(profile.salt_length)


@pytest.mark.parametrize("profile", PROFILES)
def test_batch_protect_equals_per_packet_and_libsrtp(profile):
    key, salt = keys(profile)
    packets = [rtp(seq, ssrc, os.urandom(seq % 1200)) for seq in range(200) for ssrc in (1, 2, 3)]
    buf, offsets, lengths = slots(packets)
    status = Session(profile, key, salt).protect_batch(buf, offsets, lengths, SLOT)
    assert (status == Status.OK).all()
    per_packet = Session(profile, key, salt)
    lib_tx, lib_rx = libsrtp_pair(profile, key, salt)
    out = unpack(buf, offsets, lengths)
    for pkt, got in zip(packets, out):
        assert got == per_packet.protect(pkt) == lib_tx.protect(pkt)
        assert lib_rx.unprotect(got) == pkt


@pytest.mark.parametrize("profile", PROFILES)
def test_batch_unprotect_roundtrip_with_bad_packets(profile):
    key, salt = keys(profile)
    lib_tx, _ = libsrtp_pair(profile, key, salt)
    plain = [rtp(seq, 9, bytes([seq]) * 100) for seq in range(50)]
    protected = [lib_tx.protect(p) for p in plain]
    tampered = bytearray(protected[5])
    tampered[-1] ^= 1
    batch = protected[:5] + [bytes(tampered)] + protected[6:] + [protected[7], b"\x80\x00", b"junk" * 5]
    buf, offsets, lengths = slots(batch)
    status = Session(profile, key, salt).unprotect_batch(buf, offsets, lengths)
    expected = [Status.OK] * 50
    expected[5] = Status.AUTH
    expected += [Status.REPLAY, Status.TOO_SHORT, Status.BAD_VERSION]
    assert [Status(s) for s in status] == expected
    out = unpack(buf, offsets, lengths)
    for i in range(50):
        if i != 5:
            assert out[i] == plain[i]


@pytest.mark.parametrize("profile", PROFILES)
def test_batch_rtcp_both_ways(profile):
    key, salt = keys(profile)
    lib_tx, lib_rx = libsrtp_pair(profile, key, salt)
    reports = [rtcp_sr(ssrc) for ssrc in range(1, 40)]
    buf, offsets, lengths = slots(reports)
    assert not Session(profile, key, salt).protect_rtcp_batch(buf, offsets, lengths, SLOT).any()
    for pkt, got in zip(reports, unpack(buf, offsets, lengths)):
        assert lib_rx.unprotect_rtcp(got) == pkt
    buf, offsets, lengths = slots([lib_tx.protect_rtcp(p) for p in reports])
    assert not Session(profile, key, salt).unprotect_rtcp_batch(buf, offsets, lengths).any()
    assert unpack(buf, offsets, lengths) == reports


def test_batch_bounds_are_checked():
    profile = Profile.AEAD_AES_128_GCM
    s = Session(profile, bytes(16), bytes(12))
    buf = np.zeros(4000, dtype=np.uint8)
    pkt = rtp(1, 1, bytes(100))
    buf[:len(pkt)] = np.frombuffer(pkt, np.uint8)
    offsets = np.array([0, 3990, 2**31, 1000], dtype=np.uint32)
    lengths = np.array([len(pkt), 100, 10, 5000], dtype=np.uint32)
    status = s.protect_batch(buf, offsets, lengths, 200)
    assert list(status) == [Status.OK, Status.BOUNDS, Status.BOUNDS, Status.BOUNDS]
    # slot capacity too small for the tag
    offsets = np.array([0], dtype=np.uint32)
    lengths = np.array([len(pkt)], dtype=np.uint32)
    buf2 = np.zeros(4000, dtype=np.uint8)
    buf2[:len(pkt)] = np.frombuffer(pkt, np.uint8)
    assert list(s.protect_batch(buf2, offsets, lengths, len(pkt) + 3)) == [Status.NO_SPACE]
    # unprotect never reads past offset + length
    assert list(s.unprotect_batch(buf, np.array([3999], np.uint32), np.array([2], np.uint32))) == [Status.BOUNDS]


def test_batch_argument_errors():
    s = Session(Profile.AEAD_AES_128_GCM, bytes(16), bytes(12))
    buf = np.zeros(100, dtype=np.uint8)
    with pytest.raises(ValueError):
        s.unprotect_batch(buf, np.zeros(2, np.uint32), np.zeros(3, np.uint32))
    with pytest.raises(ValueError):
        s.unprotect_batch(buf, np.zeros(2, np.int64), np.zeros(2, np.uint32))
    with pytest.raises(ValueError):
        s.unprotect_batch(buf, np.zeros(2, np.uint32), np.zeros(2, np.uint32), status=np.zeros(1, np.uint8))
    with pytest.raises((ValueError, TypeError, BufferError)):
        s.unprotect_batch(b"read-only bytes", np.zeros(1, np.uint32), np.zeros(1, np.uint32))


def test_batch_accepts_bytearray_and_caller_status():
    s = Session(Profile.AES128_CM_HMAC_SHA1_80, bytes(16), bytes(14))
    pkt = rtp(1, 1, b"x" * 10)
    buf = bytearray(pkt + bytes(100))
    status = np.full(1, 255, dtype=np.uint8)
    lengths = np.array([len(pkt)], np.uint32)
    out = s.protect_batch(buf, np.zeros(1, np.uint32), lengths, len(buf), status=status)
    assert out is status and status[0] == Status.OK and lengths[0] == len(pkt) + 10


def test_batch_releases_the_gil_and_guards_concurrent_use():
    """While a big batch runs, this thread keeps running (GIL released) and
    sees the session marked busy: concurrent use is refused, not corrupted."""
    profile = Profile.AES128_CM_HMAC_SHA1_80
    s = Session(profile, bytes(16), bytes(14), allow_repeat_tx=True)
    n = 200_000
    pkt = rtp(1, 1, bytes(160))
    buf = np.zeros(n * 200, dtype=np.uint8)
    template = np.frombuffer(pkt, np.uint8)
    buf.reshape(n, 200)[:, : len(pkt)] = template
    offsets = np.arange(n, dtype=np.uint32) * 200
    lengths = np.full(n, len(pkt), dtype=np.uint32)
    result = {}

    def worker():
        result["status"] = s.protect_batch(buf, offsets, lengths, 200)

    t = threading.Thread(target=worker)
    saw_busy = False
    t.start()
    while t.is_alive():
        try:
            s.protect(pkt)
        except RuntimeError as exc:
            assert "in use" in str(exc)
            saw_busy = True
            break
    t.join()
    assert saw_busy, "the batch never released the GIL while it ran"
    assert (result["status"] == 0).all()

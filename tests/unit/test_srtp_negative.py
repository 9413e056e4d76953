"""Negative cases: replay, tampering, truncation, garbage, wrong profile, limits."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.srtp import (
    AuthenticationError,
    MalformedPacketError,
    PolicyError,
    Profile,
    ReplayError,
    Session,
    SrtpError,
    Status,
    StreamLimitError,
)
from tests.packets import libsrtp_pair, rtcp_sr, rtp

PROFILES = list(Profile)


def pair(profile, **kw):
    key, salt = os.urandom(profile.key_length), os.urandom(profile.salt_length)
    return Session(profile, key, salt, **kw), Session(profile, key, salt, **kw)


@pytest.mark.parametrize("profile", PROFILES)
def test_replay_is_refused(profile):
    tx, rx = pair(profile)
    p = tx.protect(rtp(10, 1, b"hello"))
    assert rx.unprotect(p) == rtp(10, 1, b"hello")
    with pytest.raises(ReplayError) as exc:
        rx.unprotect(p)
    assert exc.value.status == Status.REPLAY


@pytest.mark.parametrize("profile", PROFILES)
def test_packet_older_than_window_is_refused(profile):
    tx, rx = pair(profile, replay_window=64)
    old = tx.protect(rtp(1, 1))
    for seq in range(2, 70):
        rx.unprotect(tx.protect(rtp(seq, 1)))
    with pytest.raises(ReplayError) as exc:
        rx.unprotect(old)
    assert exc.value.status == Status.REPLAY_OLD


@pytest.mark.parametrize("profile", PROFILES)
def test_reordering_inside_window_is_accepted_once(profile):
    tx, rx = pair(profile)
    packets = [tx.protect(rtp(seq, 5, bytes([seq]))) for seq in range(100)]
    order = list(range(100))
    order[10], order[50] = order[50], order[10]  # 40 apart, inside 128
    for i in order:
        assert rx.unprotect(packets[i]) == rtp(i, 5, bytes([i]))
    for i in (10, 50, 99):
        with pytest.raises(ReplayError):
            rx.unprotect(packets[i])


@pytest.mark.parametrize("profile", PROFILES)
def test_replay_window_not_advanced_by_forgeries(profile):
    """A forged packet far ahead must not move the window (RFC 3711 3.3.2)."""
    tx, rx = pair(profile)
    good = [tx.protect(rtp(seq, 9)) for seq in range(1, 4)]
    rx.unprotect(good[0])
    forged = bytearray(tx.protect(rtp(30000, 9)))
    forged[-1] ^= 1
    with pytest.raises(AuthenticationError):
        rx.unprotect(bytes(forged))
    assert rx.unprotect(good[1]) == rtp(2, 9)


@pytest.mark.parametrize("profile", PROFILES)
def test_bit_flips_tag_payload_header(profile):
    key, salt = os.urandom(profile.key_length), os.urandom(profile.salt_length)
    tx = Session(profile, key, salt)
    pkt = rtp(1000, 0xABCDEF01, b"p" * 40, csrcs=(1, 2), ext=(0xBEDE, b"\x10\xff\x00\x00"), padding=4)
    protected = tx.protect(pkt)
    kinds = {}
    for bit in range(len(protected) * 8):
        bad = bytearray(protected)
        bad[bit // 8] ^= 0x80 >> (bit % 8)
        rx = Session(profile, key, salt)
        with pytest.raises(SrtpError) as exc:
            rx.unprotect(bytes(bad))
        kinds[type(exc.value)] = kinds.get(type(exc.value), 0) + 1
        region = "header" if bit < 8 * 28 else "tag" if bit >= 8 * (len(protected) - profile.tag_length) else "payload"
        if region in ("tag", "payload"):
            assert isinstance(exc.value, AuthenticationError), (bit, region)
    # most header bits also give an authentication failure; version/length
    # bits may make the header malformed instead
    assert kinds[AuthenticationError] > len(protected) * 8 * 0.9
    assert set(kinds) <= {AuthenticationError, MalformedPacketError}
    assert Session(profile, key, salt).unprotect(protected) == pkt


@pytest.mark.parametrize("profile", PROFILES)
def test_srtcp_bit_flips_and_e_bit(profile):
    key, salt = os.urandom(profile.key_length), os.urandom(profile.salt_length)
    tx = Session(profile, key, salt)
    pkt = rtcp_sr(0x01020304, b"\x00" * 8)
    protected = tx.protect_rtcp(pkt)
    for bit in range(len(protected) * 8):
        bad = bytearray(protected)
        bad[bit // 8] ^= 0x80 >> (bit % 8)
        with pytest.raises(SrtpError):
            Session(profile, key, salt).unprotect_rtcp(bytes(bad))
    # Clearing the E bit (libsrtp once skipped decryption then) breaks the tag.
    e_pos = len(protected) - 4 if profile.aead else len(protected) - profile.tag_length - 4
    bad = bytearray(protected)
    bad[e_pos] &= 0x7F
    with pytest.raises(AuthenticationError):
        Session(profile, key, salt).unprotect_rtcp(bytes(bad))
    assert Session(profile, key, salt).unprotect_rtcp(protected) == pkt


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("op", ["unprotect", "unprotect_rtcp"])
def test_every_truncation_is_a_clean_error(profile, op):
    key, salt = os.urandom(profile.key_length), os.urandom(profile.salt_length)
    tx = Session(profile, key, salt)
    if op == "unprotect":
        protected = tx.protect(rtp(7, 7, b"z" * 30, csrcs=(5,), ext=(0xBEDE, b"\x00" * 8)))
    else:
        protected = tx.protect_rtcp(rtcp_sr(7))
    rx = Session(profile, key, salt)
    for n in range(len(protected)):
        with pytest.raises((MalformedPacketError, AuthenticationError)):
            getattr(rx, op)(protected[:n])
    assert getattr(rx, op)(protected)


@pytest.mark.parametrize("profile", PROFILES)
def test_malformed_rtp_messages(profile):
    tx, rx = pair(profile)
    with pytest.raises(MalformedPacketError, match="too short"):
        tx.protect(b"\x80\x00")
    with pytest.raises(MalformedPacketError, match="version"):
        tx.protect(b"\x40" + bytes(20))
    # extension header claims 100 words in a short packet
    bad_ext = b"\x90\x00\x00\x01" + bytes(8) + b"\xbe\xde\x00\x64"
    with pytest.raises(MalformedPacketError, match="overruns"):
        tx.protect(bad_ext)
    with pytest.raises(MalformedPacketError, match="65535"):
        tx.protect(rtp(1, 1, bytes(70000)))
    # 15 CSRCs declared, none present
    with pytest.raises(MalformedPacketError):
        rx.unprotect(b"\x8f" + bytes(40))


PACKET_OPS = ["protect", "unprotect", "protect_rtcp", "unprotect_rtcp"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PROFILES), st.sampled_from(PACKET_OPS), st.binary(max_size=200))
def test_garbage_never_crashes(profile, op, data):
    s = Session(profile, bytes(profile.key_length), bytes(profile.salt_length))
    try:
        out = getattr(s, op)(data)
    except SrtpError:
        return
    # only a protect of something RTP/RTCP-shaped may succeed
    assert op.startswith("protect")
    assert len(out) > len(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PROFILES), st.binary(min_size=12, max_size=300))
def test_garbage_with_rtp_shape_fails_authentication(profile, data):
    data = bytes([0x80 | (data[0] & 0x0F)]) + data[1:]
    s = Session(profile, os.urandom(16), os.urandom(profile.salt_length))
    with pytest.raises(SrtpError):
        s.unprotect(data)
    with pytest.raises(SrtpError):
        s.unprotect_rtcp(data)


def test_wrong_profile_is_an_authentication_error():
    key = os.urandom(16)
    salt = os.urandom(14)
    def cm():
        return Session(Profile.AES128_CM_HMAC_SHA1_80, key, salt)

    def gcm():
        return Session(Profile.AEAD_AES_128_GCM, key, salt[:12])

    with pytest.raises(AuthenticationError):
        gcm().unprotect(cm().protect(rtp(1, 1, b"a" * 50)))
    with pytest.raises(AuthenticationError):
        cm().unprotect(gcm().protect(rtp(1, 1, b"a" * 50)))
    with pytest.raises(AuthenticationError):
        gcm().unprotect_rtcp(cm().protect_rtcp(rtcp_sr(1)))
    with pytest.raises(AuthenticationError):
        cm().unprotect_rtcp(gcm().protect_rtcp(rtcp_sr(1)))


def test_wrong_key_is_an_authentication_error():
    for profile in PROFILES:
        tx = Session(profile, os.urandom(16), bytes(profile.salt_length))
        rx = Session(profile, os.urandom(16), bytes(profile.salt_length))
        with pytest.raises(AuthenticationError):
            rx.unprotect(tx.protect(rtp(1, 1)))


@pytest.mark.parametrize(
    "args, match",
    [
        ((2, bytes(16), bytes(14)), "unsupported SRTP profile"),
        ((8, bytes(32), bytes(12)), "unsupported SRTP profile"),
        ((Profile.AES128_CM_HMAC_SHA1_80, bytes(15), bytes(14)), "16-byte master key"),
        ((Profile.AES128_CM_HMAC_SHA1_80, bytes(16), bytes(12)), "14-byte master salt"),
        ((Profile.AEAD_AES_128_GCM, bytes(16), bytes(14)), "12-byte master salt"),
    ],
)
def test_bad_session_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        Session(*args)


def test_bad_window_and_stream_limits():
    with pytest.raises(ValueError, match="power of two"):
        Session(Profile.AEAD_AES_128_GCM, bytes(16), bytes(12), replay_window=100)
    with pytest.raises(ValueError, match="max_streams"):
        Session(Profile.AEAD_AES_128_GCM, bytes(16), bytes(12), max_streams=0)


@pytest.mark.parametrize("profile", PROFILES)
def test_stream_limit_bounds_new_ssrcs(profile):
    tx, rx = pair(profile, max_streams=3)
    for ssrc in (1, 2, 3):
        rx.unprotect(tx.protect(rtp(1, ssrc)))
    with pytest.raises(StreamLimitError):
        tx.protect(rtp(1, 4))
    # a receiver bounded at 3 refuses the 4th SSRC but keeps serving the others
    key, salt = os.urandom(16), os.urandom(profile.salt_length)
    t = Session(profile, key, salt)
    r = Session(profile, key, salt, max_streams=3)
    for ssrc in (1, 2, 3):
        r.unprotect(t.protect(rtp(1, ssrc)))
    with pytest.raises(StreamLimitError):
        r.unprotect(t.protect(rtp(1, 4)))
    assert r.unprotect(t.protect(rtp(2, 2))) == rtp(2, 2)
    assert r.ssrcs() == [1, 2, 3]


@pytest.mark.parametrize("profile", PROFILES)
def test_protect_refuses_index_reuse_unless_allowed(profile):
    key, salt = os.urandom(16), os.urandom(profile.salt_length)
    tx = Session(profile, key, salt)
    first = tx.protect(rtp(5, 1))
    with pytest.raises(ReplayError):
        tx.protect(rtp(5, 1))
    rtx = Session(profile, key, salt, allow_repeat_tx=True)
    assert rtx.protect(rtp(5, 1)) == first
    assert rtx.protect(rtp(5, 1)) == first


@pytest.mark.parametrize("profile", PROFILES)
def test_many_ssrcs_mid_call(profile):
    """Audio, video and RTX SSRCs appearing mid-call share one session."""
    key, salt = os.urandom(16), os.urandom(profile.salt_length)
    tx = Session(profile, key, salt)
    rx = Session(profile, key, salt)
    lib_tx, lib_rx = libsrtp_pair(profile, key, salt)
    ssrcs = [struct.unpack("!I", os.urandom(4))[0] for _ in range(300)]
    for round_ in range(3):
        for i, ssrc in enumerate(ssrcs[: 100 * (round_ + 1)]):
            pkt = rtp(round_ * 10 + 1, ssrc, bytes([i % 256]) * 10)
            protected = tx.protect(pkt)
            assert protected == lib_tx.protect(pkt)
            assert rx.unprotect(protected) == pkt
    assert rx.stream_count == 300
    assert sorted(ssrcs) == rx.ssrcs()


def test_stats_count_without_keys():
    profile = Profile.AEAD_AES_128_GCM
    tx, rx = pair(profile)
    p = tx.protect(rtp(1, 1, b"abc"))
    rx.unprotect(p)
    with pytest.raises(ReplayError):
        rx.unprotect(p)
    with pytest.raises(MalformedPacketError):
        rx.unprotect(b"")
    stats = rx.stats
    assert stats["unprotect_packets"] == 1
    assert stats["errors"] == {"replay": 1, "too_short": 1}
    assert "key" not in repr(rx).lower()


def test_sessions_cannot_be_pickled():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Session(Profile.AEAD_AES_128_GCM, bytes(16), bytes(12)))


def test_authentic_unencrypted_cm_srtcp_is_refused():
    """An E=0 SRTCP packet with a valid HMAC (made here with `cryptography`,
    RFC 3711 section 3.4) is authentic but still refused: confidentiality is
    mandatory in the contract."""
    from cryptography.hazmat.primitives import hashes, hmac

    auth_key = os.urandom(20)
    s = Session._from_session_keys(Profile.AES128_CM_HMAC_SHA1_80, os.urandom(16), os.urandom(14), auth_key)
    body = rtcp_sr(0x55667788) + struct.pack("!I", 3)  # E=0, index 3
    mac = hmac.HMAC(auth_key, hashes.SHA1())
    mac.update(body)
    packet = body + mac.finalize()[:10]
    with pytest.raises(PolicyError):
        s.unprotect_rtcp(packet)
    forged = bytearray(packet)
    forged[-1] ^= 1
    with pytest.raises(AuthenticationError):
        s.unprotect_rtcp(bytes(forged))


# -- regressions from the security review of the native core -----------------


def test_uninitialised_or_failed_sessions_raise_instead_of_crashing():
    code = """
import numpy as np
from callsgw.srtp import Session, SrtpError, Profile
s = Session.__new__(Session)
for call in (lambda: s.stats, lambda: s.stream_count, lambda: s.rtp_overhead, lambda: s.ssrcs(),
             lambda: s.rtp_index(1), lambda: s.protect(b"x" * 20),
             lambda: s.unprotect_batch(np.zeros(10, np.uint8), np.zeros(1, np.uint32), np.zeros(1, np.uint32))):
    try:
        call()
    except SrtpError:
        pass
f = Session.__new__(Session)
try:
    f.__init__(Profile.AEAD_AES_128_GCM, bytes(15), bytes(12))
except ValueError:
    pass
try:
    f.protect(b"\\x80" + bytes(30))
except SrtpError:
    print("ok")
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_introspection_during_a_batch_is_refused_not_racy():
    import threading

    import numpy as np

    s = Session(Profile.AEAD_AES_128_GCM, bytes(16), bytes(12), max_streams=1 << 20)
    n = 300_000
    slot = 64
    buf = np.zeros(n * slot, dtype=np.uint8)
    view = buf.reshape(n, slot)
    view[:, 0] = 0x80
    ssrcs = np.arange(n, dtype=">u4").view(np.uint8).reshape(n, 4)
    view[:, 8:12] = ssrcs  # a new SSRC per packet: the stream table keeps growing
    offsets = np.arange(n, dtype=np.uint32) * slot
    lengths = np.full(n, 20, dtype=np.uint32)
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("st", s.protect_batch(buf, offsets, lengths, slot)))
    t.start()
    refused = 0
    while t.is_alive():
        for call in (s.ssrcs, lambda: s.rtp_index(5), lambda: s.stats):
            try:
                call()
            except RuntimeError:
                refused += 1
    t.join()
    assert refused > 0
    assert (done["st"] == 0).all() and s.stream_count == n


@pytest.mark.parametrize("profile", PROFILES)
def test_largest_packets_round_trip(profile):
    tx, rx = pair(profile)
    biggest = rtp(1, 1, bytes(65535 - 12 - profile.tag_length))
    assert rx.unprotect(tx.protect(biggest)) == biggest
    with pytest.raises(MalformedPacketError, match="65535"):
        tx.protect(rtp(2, 1, bytes(65535 - 12 - profile.tag_length + 1)))
    big_rtcp = rtcp_sr(5, bytes((65535 - 28 - 4 - profile.tag_length - 4) // 4 * 4))
    assert rx.unprotect_rtcp(tx.protect_rtcp(big_rtcp)) == big_rtcp


def test_packet_argument_types():
    s = Session(Profile.AEAD_AES_128_GCM, bytearray(16), memoryview(bytes(12)))
    strided = memoryview(bytes(rtp(1, 1) * 2))[::2]
    with pytest.raises(MalformedPacketError, match="contiguous"):
        s.protect(strided)
    with pytest.raises(TypeError, match="bytes-like"):
        s.protect(12345)
    assert s.protect(bytearray(rtp(1, 1)))
    assert s.protect(memoryview(rtp(2, 1)))

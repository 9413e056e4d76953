"""Differential tests against libsrtp (pylibsrtp), in both directions.

Packets come from hypothesis: CSRCs, header extensions, padding, sequence
wrap with ROC > 0, reordering inside the replay window, many SSRCs in one
session, and SRTCP, for both profiles.
"""

from __future__ import annotations

import os

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callsgw.srtp import Profile, Session
from tests.packets import libsrtp_pair, rtcp_sr, rtp

PROFILES = st.sampled_from(list(Profile))

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def rtp_packets(draw, ssrc: int, seq: int):
    csrcs = tuple(draw(st.lists(st.integers(0, 2**32 - 1), max_size=15)))
    ext = None
    if draw(st.booleans()):
        words = draw(st.integers(0, 8))
        ext = (draw(st.sampled_from([0xBEDE, 0x1000, 0x0001])), draw(st.binary(min_size=4 * words, max_size=4 * words)))
    padding = draw(st.sampled_from([0, 0, 1, 4, 17]))
    payload = draw(st.binary(min_size=0, max_size=1300))
    return rtp(
        seq,
        ssrc,
        payload,
        pt=draw(st.integers(0, 127)),
        ts=draw(st.integers(0, 2**32 - 1)),
        marker=draw(st.booleans()),
        csrcs=csrcs,
        ext=ext,
        padding=padding,
    )


@st.composite
def scenarios(draw):
    """A call's worth of packets: several SSRCs, wrap, local reordering."""
    profile = draw(PROFILES)
    nssrc = draw(st.integers(1, 6))
    ssrcs = draw(st.lists(st.integers(0, 2**32 - 1), min_size=nssrc, max_size=nssrc, unique=True))
    packets = []
    for ssrc in ssrcs:
        start = draw(st.one_of(st.integers(65500, 65535), st.integers(0, 65535)))
        count = draw(st.integers(1, 40))
        seqs = [(start + i) & 0xFFFF for i in range(count)]
        # reorder inside the window: swap some neighbours
        for i in range(count - 1):
            if draw(st.integers(0, 4)) == 0:
                seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
        for seq in seqs:
            packets.append((ssrc, seq))
    order = draw(st.permutations(range(len(packets)))) if draw(st.booleans()) else None
    if order is not None:
        # interleave streams while keeping each stream's own order
        by_ssrc: dict[int, list] = {}
        for p in packets:
            by_ssrc.setdefault(p[0], []).append(p)
        merged = []
        cursors = {s: 0 for s in by_ssrc}
        for i in order:
            s = packets[i][0]
            merged.append(by_ssrc[s][cursors[s]])
            cursors[s] += 1
        packets = merged
    return profile, [draw(rtp_packets(ssrc, seq)) for ssrc, seq in packets]


def keys(profile: Profile):
    return os.urandom(profile.key_length), os.urandom(profile.salt_length)


@SETTINGS
@given(scenarios())
def test_ours_protect_matches_libsrtp_and_it_unprotects(scenario):
    profile, packets = scenario
    key, salt = keys(profile)
    ours = Session(profile, key, salt)
    lib_tx, lib_rx = libsrtp_pair(profile, key, salt)
    for pkt in packets:
        protected = ours.protect(pkt)
        # Same keys, same index state: byte-identical to libsrtp's output.
        assert protected == lib_tx.protect(pkt)
        assert lib_rx.unprotect(protected) == pkt


@SETTINGS
@given(scenarios())
def test_libsrtp_protect_ours_unprotects(scenario):
    profile, packets = scenario
    key, salt = keys(profile)
    ours = Session(profile, key, salt)
    lib_tx, _ = libsrtp_pair(profile, key, salt)
    for pkt in packets:
        assert ours.unprotect(lib_tx.protect(pkt)) == pkt


@SETTINGS
@given(PROFILES, st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=400)), min_size=1, max_size=30))
def test_srtcp_both_directions(profile, reports):
    key, salt = keys(profile)
    ours_tx = Session(profile, key, salt)
    ours_rx = Session(profile, key, salt)
    lib_tx, lib_rx = libsrtp_pair(profile, key, salt)
    for ssrc, extra in reports:
        pkt = rtcp_sr(ssrc, extra[: len(extra) // 4 * 4])
        assert lib_rx.unprotect_rtcp(ours_tx.protect_rtcp(pkt)) == pkt
        assert ours_rx.unprotect_rtcp(lib_tx.protect_rtcp(pkt)) == pkt


@pytest.mark.parametrize("profile", list(Profile))
def test_roc_two_wraps_sequential(profile):
    """RFC 3711 section 3.3.1: every packet across two SEQ wraps (ROC 0 -> 2),
    byte-identical to libsrtp, and each direction's receiver follows."""
    key, salt = keys(profile)
    ours_tx = Session(profile, key, salt)
    ours_rx = Session(profile, key, salt)
    lib_tx, lib_rx = libsrtp_pair(profile, key, salt)
    ssrc = 7
    start = 65000
    for n in range(2 * 65536 + 100 - (65536 - start)):
        seq = (start + n) & 0xFFFF
        pkt = rtp(seq, ssrc, b"")
        protected = ours_tx.protect(pkt)
        assert protected == lib_tx.protect(pkt)
        if n % 1000 == 0 or seq < 5 or seq > 65530:
            assert lib_rx.unprotect(protected) == pkt
            assert ours_rx.unprotect(protected) == pkt
    assert lib_rx.unprotect(protected) == pkt
    assert ours_rx.unprotect(protected) == pkt
    assert ours_tx.rtp_index(ssrc) >> 16 == 2
    assert ours_rx.rtp_index(ssrc) == ours_tx.rtp_index(ssrc)

"""Test helpers: build RTP/RTCP packets and reference (libsrtp) sessions.

Deliberately independent of callsgw's own code so that tests compare
callsgw against something it did not produce.
"""

from __future__ import annotations

import struct

import pylibsrtp

from callsgw.srtp import Profile

LIBSRTP_PROFILE = {
    Profile.AES128_CM_HMAC_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    Profile.AEAD_AES_128_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}


def rtp(
    seq: int,
    ssrc: int,
    payload: bytes = b"\x00" * 160,
    *,
    pt: int = 111,
    ts: int = 0,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    ext: tuple[int, bytes] | None = None,
    padding: int = 0,
) -> bytes:
    """An RTP packet per RFC 3550 section 5.1 (ext = (profile, 4n bytes))."""
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext else 0) | len(csrcs)
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext:
        profile, data = ext
        assert len(data) % 4 == 0
        out += struct.pack("!HH", profile, len(data) // 4) + data
    out += payload
    if padding:
        out += b"\x00" * (padding - 1) + bytes([padding])
    return out


def rtcp_sr(ssrc: int, extra: bytes = b"") -> bytes:
    """A sender report (RFC 3550 section 6.4.1) with no report blocks."""
    body = struct.pack("!IIIII", ssrc, 0x83AA7E80, 0, 1234, 0) + struct.pack("!I", 99) + extra
    length_words = (4 + len(body)) // 4 - 1
    return struct.pack("!BBH", 0x80, 200, length_words) + body


def libsrtp_pair(profile: Profile, key: bytes, salt: bytes, window: int = 128):
    """(outbound, inbound) libsrtp sessions with ssrc_any policies."""

    def make(ssrc_type):
        policy = pylibsrtp.Policy(key=key + salt, ssrc_type=ssrc_type, srtp_profile=LIBSRTP_PROFILE[profile])
        policy.window_size = window
        return pylibsrtp.Session(policy)

    return make(pylibsrtp.Policy.SSRC_ANY_OUTBOUND), make(pylibsrtp.Policy.SSRC_ANY_INBOUND)

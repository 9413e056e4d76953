"""callsgw._native.engine under hostile input, on a real loopback UDP socket.

A real :class:`~callsgw._native.engine.Engine` serves a gateway socket. A
publisher ``P`` (engine session with real SRTP keys and its socket's
address) publishes a video source (SSRC 1111: NACK, RTX, audio-level ID 1,
MID ID 4 rewritten to ID 5 with another value, so the block is rebuilt) and
an audio source (SSRC 2222). A subscriber ``S`` has one route per source.
Then:

* garbage datagrams of every size 0..2100 and every first byte, from P's
  registered address and from an unknown address;
* validly SRTP-protected RTP on SSRC 1111 with hostile contents: CSRC
  counts, extension headers and lengths, RFC 8285 one-byte/two-byte blocks
  with bad element lengths, padding counts, empty payloads, other payload
  types; every copy S receives must equal ``callsgw.wire.rtp.rewrite`` of
  the packet (the Python router's rewrite), and only packets the Python
  router would forward may be forwarded;
* SRTCP with bad inner lengths and truncated SRTCP;
* NACKs with arbitrary sequence numbers and arbitrary bytes given to
  ``Engine.forward``.

After every example a valid packet on SSRC 2222 must still reach S.
"""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callsgw._native.engine import (
    ROUTE_COUNTERS,
    SESSION_COUNTERS,
    STREAM_COUNTERS,
    UP_RAW,
    UP_RTCP,
    UP_RTP,
    UP_STARTED,
    Engine,
)
from callsgw.srtp import Profile, SrtpError
from callsgw.wire.rtp import RtpError, audio_level, rewrite, validate
from tests.native_router import Peer

PROFILE = Profile.AEAD_AES_128_GCM
SC = {name: i for i, name in enumerate(SESSION_COUNTERS)}
STC = {name: i for i, name in enumerate(STREAM_COUNTERS)}
RC = {name: i for i, name in enumerate(ROUTE_COUNTERS)}
SRTP_ERRORS = ("auth_failures", "replays", "malformed", "srtp_other")

VIDEO_SSRC, AUDIO_SSRC = 1111, 2222
VIDEO_OUT, AUDIO_OUT = 0xAAAA0001, 0xBBBB0002
VIDEO_PT_MAP = {96: 100}
VIDEO_EXT_MAP = {1: 2, 3: 3, 4: 5, 200: 201}
MID_ID, MID_VALUE = 5, b"mid-video"
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)


class Harness:
    def __init__(self):
        self.gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.gw.bind(("127.0.0.1", 0))
        self.gw.setblocking(False)
        self.engine = e = Engine(self.gw.fileno(), max_sessions=8, max_sources=8, max_streams=8, max_routes=8)
        addr = self.gw.getsockname()
        self.pub, self.sub = Peer(addr), Peer(addr)
        self.stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stranger.bind(("127.0.0.1", 0))
        self.sp, self.ss = e.session_open(), e.session_open()
        for slot, peer in ((self.sp, self.pub), (self.ss, self.sub)):
            e.session_keys(slot, peer.gw_rx, peer.gw_tx)
            e.session_address(slot, peer.addr)
        self.src_v, self.src_a = e.source_open(), e.source_open()
        e.source_configure(self.src_v, published=True, media_pts=(96,), rtx_pts=(97,), nack=True, level_id=1,
                           clock_rate=90000, video=True)
        e.source_configure(self.src_a, published=True, media_pts=(111,), level_id=1, clock_rate=48000)
        self.st_v = e.stream_add(self.sp, VIDEO_SSRC, self.src_v)
        self.st_a = e.stream_add(self.sp, AUDIO_SSRC, self.src_a)
        self.r_v = e.route_open(VIDEO_OUT, self.ss)
        e.route_configure(self.r_v, VIDEO_PT_MAP, VIDEO_EXT_MAP, MID_ID, MID_VALUE, 512, False)
        e.route_attach(self.r_v, self.src_v)
        self.r_a = e.route_open(AUDIO_OUT, self.ss)
        e.route_configure(self.r_a, {111: 111}, {1: 1}, 0, b"", 128, False)
        e.route_attach(self.r_a, self.src_a)
        self.video_seq = 1000
        self.audio_seq = 50000  # wraps during the run
        self.audio_out_last = None
        self.now = 1000.0

    def close(self):
        for s in (self.gw, self.pub.sock, self.sub.sock, self.stranger):
            s.close()

    # -- driving ----------------------------------------------------------------------

    def poll_until(self, datagrams: int, timeout: float = 2.0) -> list:
        """Poll until the engine has received ``datagrams`` more datagrams."""
        target = self.engine.totals["datagrams"] + datagrams
        items = []
        deadline = time.monotonic() + timeout
        while True:
            self.now += 0.001
            items += self.engine.poll(self.now)
            if self.engine.totals["datagrams"] >= target or time.monotonic() > deadline:
                break
        assert self.engine.totals["datagrams"] >= target, "engine did not see the datagrams"
        self.engine.flush()
        return items

    def audio_packet(self) -> bytes:
        self.audio_seq = (self.audio_seq + 1) & 0xFFFF
        ext = bytes([0x10, 0x85, 0, 0])  # one-byte ID 1, level 5
        head = struct.pack("!BBHII", 0x90, 111, self.audio_seq, self.audio_seq * 960 & 0xFFFFFFFF, AUDIO_SSRC)
        return head + struct.pack("!HH", 0xBEDE, 1) + ext + b"opus" * 10

    def counters(self):
        e = self.engine
        return (e.session_counters[self.sp].copy(), e.stream_counters[self.st_v].copy(),
                e.route_counters[self.r_v].copy(), dict(e.totals))

    def check_control(self, received: list[bytes]) -> list[bytes]:
        """The control stream's one packet is among ``received``; returns the rest."""
        audio = [p for p in received if struct.unpack_from("!I", p, 8)[0] == AUDIO_OUT]
        assert len(audio) == 1, f"the audio stream stopped flowing: {len(audio)} copies"
        seq = struct.unpack_from("!H", audio[0], 2)[0]
        if self.audio_out_last is not None:
            assert seq == (self.audio_out_last + 1) & 0xFFFF
        self.audio_out_last = seq
        assert audio[0][12:] == self.audio_packet_last[12:]
        return [p for p in received if p is not audio[0]]

    def round(self, hostile: bytes, *, sender=None) -> tuple[list, list[bytes]]:
        """Send ``hostile`` then one valid audio packet; returns (items handed up, other copies S got)."""
        (sender or self.pub.sock).sendto(hostile, self.pub.gateway_addr)
        self.audio_packet_last = self.audio_packet()
        self.pub.send(self.pub.tx.protect(self.audio_packet_last))
        items = self.poll_until(2)
        return items, self.check_control(self.sub.receive_all())


@pytest.fixture(scope="module")
def h():
    harness = Harness()
    yield harness
    harness.close()


def _delta(after, before, name, table=SC):
    return int(after[table[name]]) - int(before[table[name]])


# -- garbage ----------------------------------------------------------------------------------


def _garbage(size: int, first: int, seed: int) -> bytes:
    if size == 0:
        return b""
    return bytes([first]) + random.Random(seed).randbytes(size - 1)


def _check_garbage(h: Harness, data: bytes, from_publisher: bool):
    before = h.counters()
    items, others = h.round(data, sender=None if from_publisher else h.stranger)
    after = h.counters()
    assert others == [], "garbage produced a forwarded packet"
    ups = [i for i in items if not (i[0] == UP_STARTED)]
    if len(data) > 2048:
        assert ups == []
        assert after[3]["oversize"] == before[3]["oversize"] + 1
        return
    srtp_range = len(data) >= 2 and 128 <= data[0] <= 191
    if from_publisher and srtp_range:
        assert ups == [], f"garbage SRTP handed up: {ups[:1]}"
        errors = sum(_delta(after[0], before[0], name) for name in SRTP_ERRORS)
        assert errors == 1, "an SRTP failure must be counted exactly once"
    else:
        assert len(ups) == 1
        kind, slot, addr, payload = ups[0]
        assert kind == UP_RAW and payload == data
        assert slot == -1  # STUN, DTLS and the rest go up without a session lookup
        assert addr == (h.pub.addr if from_publisher else h.stranger.getsockname())


def test_garbage_boundaries(h):
    for size in (0, 1, 2, 11, 12, 13, 27, 28, 29, 2046, 2047, 2048, 2049, 2100):
        for first in (0x00, 0x16, 0x80, 0x90, 0xBF, 0xC0, 0xFF):
            for from_publisher in (True, False):
                _check_garbage(h, _garbage(size, first, size * 256 + first), from_publisher)


@settings(max_examples=250, **SETTINGS)
@given(size=st.integers(0, 2100), first=st.integers(0, 255), seed=st.integers(0, 2**32),
       from_publisher=st.booleans())
def test_garbage_datagrams(h, size, first, seed, from_publisher):
    _check_garbage(h, _garbage(size, first, seed), from_publisher)


# -- hostile SRTP-protected RTP on a routed stream ----------------------------------------------


@st.composite
def _element_block(draw):
    """(profile, block bytes): RFC 8285 blocks with valid and invalid elements, or arbitrary bytes."""
    form = draw(st.sampled_from(["one", "two", "raw"]))
    if form == "raw":
        profile = draw(st.sampled_from([0xBEDE, 0x1000, 0x100F, 0x1234, 0xFFFF]))
        data = draw(st.binary(max_size=64))
        return profile, data + b"\x00" * (-len(data) % 4)
    out = b""
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["known", "known", "known", "known", "any", "pad", "bad"]))
        if kind == "pad":
            out += b"\x00" * draw(st.integers(1, 3))
            continue
        ext_id = draw(st.sampled_from([1, 1, 4, 4, 4, 3, 7, 14, 15]) if kind == "known" or form == "one"
                      else st.integers(1, 255))
        if form == "one":
            ext_id = min(ext_id, 15)
            length = draw(st.sampled_from([1, 1, len(MID_VALUE), 2, 16]) if kind == "known" else st.integers(1, 16))
            out += bytes([(ext_id << 4) | (length - 1)]) + draw(st.binary(min_size=length, max_size=length))
        else:
            length = draw(st.sampled_from([0, 1, len(MID_VALUE), 2, 40]) if kind == "known" else st.integers(0, 255))
            out += bytes([ext_id, length]) + draw(st.binary(min_size=length, max_size=length))
        if kind == "bad":
            out = out[: max(0, len(out) - draw(st.integers(1, 20)))]  # an element past the block
    if draw(st.booleans()):
        out += b"\x00" * (-len(out) % 4)
    elif len(out) % 4:
        out = out[: len(out) - len(out) % 4]
    profile = 0xBEDE if form == "one" else draw(st.sampled_from([0x1000, 0x1003]))
    return profile, out


@st.composite
def _hostile_rtp(draw):
    pt = draw(st.sampled_from([96, 96, 96, 96, 97, 111, 0, 127]))
    cc = draw(st.sampled_from([0, 0, 1, 2, 15]))
    has_ext = draw(st.booleans())
    padding_bit = draw(st.booleans())
    marker = draw(st.booleans())
    csrcs = draw(st.binary(min_size=4 * cc, max_size=4 * cc))
    if draw(st.integers(0, 9)) == 0:
        csrcs = csrcs[: draw(st.integers(0, len(csrcs)))]  # CSRC list cut short
    ext = b""
    if has_ext:
        profile, block = draw(_element_block())
        words = len(block) // 4
        if draw(st.integers(0, 5)) == 0:
            words = draw(st.sampled_from([words + 1, words + 100, 0xFFFF, max(0, words - 1)]))
        ext = struct.pack("!HH", profile, words) + block
        if draw(st.integers(0, 9)) == 0:
            ext = ext[: draw(st.integers(0, 3))]  # extension header cut short
    payload = draw(st.binary(max_size=draw(st.sampled_from([0, 2, 40, 1900]))))
    tail = b""
    if padding_bit:
        count = draw(st.integers(0, 255))
        tail = b"\x00" * draw(st.integers(0, 8)) + bytes([count])
    b0 = 0x80 | (0x20 if padding_bit else 0) | (0x10 if has_ext else 0) | cc
    return pt, b0, marker, csrcs + ext + payload + tail


def _expected_copy(packet: bytes, out_seq: int) -> bytes | None:
    """What the Python router's rewrite makes of ``packet`` for the video route (None: RtpError)."""
    try:
        return rewrite(packet, ssrc=VIDEO_OUT, sequence=out_seq, payload_type=VIDEO_PT_MAP[96],
                       extension_ids=VIDEO_EXT_MAP, drop_extensions=frozenset(range(1, 256)) - frozenset(VIDEO_EXT_MAP),
                       extension_values={MID_ID: MID_VALUE})
    except RtpError:
        return None


@settings(max_examples=400, **SETTINGS)
@given(case=_hostile_rtp())
def test_hostile_rtp_on_routed_stream(h, case):
    pt, b0, marker, rest = case
    h.video_seq = (h.video_seq + 1) & 0xFFFF
    packet = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, h.video_seq, 90 * h.video_seq, VIDEO_SSRC) + rest
    try:
        data = h.pub.tx.protect(packet)
        protected = True
    except SrtpError:
        data, protected = packet, False  # SRTP cannot carry it: the bytes go raw, as an attacker's would
    if len(data) > 2048:
        data, protected = data[:2048], False
    before = h.counters()
    items, others = h.round(data)
    after = h.counters()
    sc0, sc1, st0, st1, rc0, rc1 = before[0], after[0], before[1], after[1], before[2], after[2]
    ups = [i for i in items if i[0] != UP_STARTED]
    try:
        validate(packet)
        valid = True
    except RtpError:
        valid = False
    if not protected:
        assert others == [] and ups == []
        assert sum(_delta(sc1, sc0, n) for n in SRTP_ERRORS) == 1
        return
    if 64 <= pt <= 95:
        return
    assert _delta(sc1, sc0, "rtp_in") == 2
    if not valid:
        assert others == [] and ups == [], "a packet the Python router refuses was forwarded or handed up"
        assert _delta(st1, st0, "malformed_rtp", STC) == 1
        return
    assert _delta(st1, st0, "packets_in", STC) == 1
    if pt == 97:
        assert others == []
        assert len(ups) == 1 and ups[0][0] == UP_RTP and ups[0][3] == packet
        assert _delta(st1, st0, "rtx_up", STC) == 1
        return
    if pt != 96:
        assert others == [] and ups == []
        assert _delta(st1, st0, "unknown_payload_type", STC) == 1
        return
    # forwarded once, byte for byte what the Python router's rewrite makes of it
    assert ups == []
    expected_level_bad = False
    try:
        audio_level(packet, 1)
    except RtpError:
        expected_level_bad = True
    assert _delta(st1, st0, "bad_audio_level", STC) == int(expected_level_bad)
    sent = _delta(rc1, rc0, "packets_out", RC)
    failed = _delta(rc1, rc0, "rewrite_failed", RC)
    assert sent + failed == 1, (sent, failed)
    assert len(others) == sent
    if sent:
        copy = others[0]
        expected = _expected_copy(packet, struct.unpack_from("!H", copy, 2)[0])
        assert expected is not None, "the engine forwarded a packet the Python rewrite refuses"
        assert copy == expected, "the engine's rewrite differs from callsgw.wire.rtp.rewrite"


# -- SRTCP ----------------------------------------------------------------------------------


def _only_feedback(p: bytes) -> bool:
    """Reference for what the engine drops: a well-formed compound of RTPFB/PSFB FMT 15 only."""
    pos = 0
    if len(p) < 4:
        return False
    while pos + 4 <= len(p):
        if p[pos] >> 6 != 2 or p[pos + 1] not in (205, 206) or p[pos] & 0x1F != 15:
            return False
        n = (struct.unpack_from("!H", p, pos + 2)[0] + 1) * 4
        if pos + n > len(p):
            return False
        pos += n
    return pos == len(p)


@st.composite
def _rtcp_compound(draw):
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        pt = draw(st.sampled_from([200, 201, 205, 205, 206, 206, 203, 192, 223]))
        fmt = draw(st.sampled_from([15, 15, 1, 0, 31]))
        body = draw(st.binary(min_size=0, max_size=48))
        body += b"\x00" * (-len(body) % 4) if draw(st.booleans()) else b""
        words = len(body) // 4
        if draw(st.integers(0, 3)) == 0:
            words = draw(st.integers(0, 0xFFFF))
        b0 = 0x80 | (0x20 if draw(st.integers(0, 7)) == 0 else 0) | fmt
        out += struct.pack("!BBH", b0, pt, words) + body
    return out


@settings(max_examples=150, **SETTINGS)
@given(compound=_rtcp_compound(), cut=st.one_of(st.none(), st.integers(0, 40)))
def test_srtcp_bad_lengths(h, compound, cut):
    plain = bytearray(compound)
    if len(plain) >= 8:
        struct.pack_into("!I", plain, 4, VIDEO_SSRC)
    plain = bytes(plain)
    try:
        data = h.pub.tx.protect_rtcp(plain)
    except SrtpError:
        data = plain
        cut = 0
    if cut is not None:
        data = data[: max(2, len(data) - cut - 1)] if cut else data
        truncated = cut != 0
    else:
        truncated = False
    if data is plain:
        truncated = True
    before = h.counters()
    items, others = h.round(data)
    after = h.counters()
    assert others == []
    ups = [i for i in items if i[0] != UP_STARTED]
    if truncated:
        assert ups == []
        assert sum(_delta(after[0], before[0], n) for n in SRTP_ERRORS) == 1
        return
    assert _delta(after[0], before[0], "rtcp_in") == 1
    if _only_feedback(plain):
        assert ups == []
        assert _delta(after[0], before[0], "rtcp_feedback_dropped") == 1
    else:
        assert len(ups) == 1 and ups[0][0] == UP_RTCP and ups[0][3] == plain and ups[0][1] == h.sp


# -- control-plane entry points with hostile arguments -------------------------------------------


@settings(max_examples=80, **SETTINGS)
@given(seqs=st.lists(st.integers(-(2**40), 2**40), max_size=300), data=st.binary(max_size=2100),
       recovered=st.booleans())
def test_nack_and_forward_arguments(h, seqs, data, recovered):
    before = h.engine.route_counters[h.r_v].copy()
    missing = h.engine.nack(h.r_v, seqs, h.now)
    assert all(0 <= m <= 0xFFFF for m in missing)
    assert len(missing) <= 256
    after = h.engine.route_counters[h.r_v]
    looked = min(len(seqs), 256)
    counted = sum(int(after[RC[n]]) - int(before[RC[n]]) for n in (
        "nack_out_of_range", "nack_misses", "retransmit_rate_limited", "retransmits", "retransmit_mismatch",
        "retransmit_too_old", "rewrite_failed", "not_connected"))
    assert counted <= looked
    started = h.engine.forward(h.st_v, data, h.now, recovered=recovered)
    assert started is None or isinstance(started, list)
    h.engine.flush()
    for copy in h.sub.receive_all():  # retransmissions are the copies sent before (Peer.receive_all checks)
        assert struct.unpack_from("!I", copy, 8)[0] in (VIDEO_OUT, AUDIO_OUT)
    # the audio route still flows
    h.audio_packet_last = h.audio_packet()
    h.pub.send(h.pub.tx.protect(h.audio_packet_last))
    h.poll_until(1)
    h.check_control(h.sub.receive_all())


def test_counters_moved(h):
    """The runs above went through every path (run after them)."""
    sc = h.engine.session_counters[h.sp]
    assert sc[SC["rtp_in"]] > 0 and sc[SC["rtcp_in"]] > 0 and sc[SC["auth_failures"]] + sc[SC["malformed"]] > 0
    assert h.engine.route_counters[h.r_v][RC["packets_out"]] > 0
    assert h.engine.stream_counters[h.st_v][STC["malformed_rtp"]] > 0
    assert h.engine.totals["oversize"] > 0


# -- table rules (regressions of the review) -----------------------------------------------------


def test_latest_session_owns_a_shared_address():
    """Two sessions with one address (NAT rebinding; UdpMux reassigns it): the latest installed gets its SRTP."""
    h = Harness()
    try:
        e = h.engine
        newer = Peer(h.gw.getsockname())
        slot = e.session_open()
        e.session_keys(slot, newer.gw_rx, newer.gw_tx)
        e.session_address(slot, h.pub.addr)
        h.pub.sock.sendto(newer.tx.protect(h.audio_packet()), h.gw.getsockname())
        items = h.poll_until(1)
        assert [(kind, s) for kind, s, _, _ in items] == [(UP_RTP, slot)]  # stream unknown in the new session
        assert e.session_counters[h.sp][SC["auth_failures"]] == 0
        e.session_close(slot)  # the older session owns the address again
        h.audio_packet_last = h.audio_packet()
        h.pub.send(h.pub.tx.protect(h.audio_packet_last))
        h.poll_until(1)
        h.check_control(h.sub.receive_all())
        newer.sock.close()
    finally:
        h.close()


def test_control_plane_arguments_are_bounded(h):
    with pytest.raises(ValueError):
        h.engine.route_session(h.r_v, 8)  # past the session table
    with pytest.raises(ValueError):
        h.engine.route_open(1, 1 << 20)
    with pytest.raises(ValueError):
        h.engine.history_has(h.st_v, -1)
    with pytest.raises((ValueError, BufferError)):
        h.engine.forward(h.st_v, memoryview(bytes(64))[::-1], h.now)  # &view[0] is the buffer's last byte
    assert h.engine.history_has(h.st_v, 0xFFFF) in (True, False)

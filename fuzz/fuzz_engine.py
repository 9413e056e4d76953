"""The native engine's classify -> unprotect -> route -> rewrite path, with real sessions on loopback.

One :class:`callsgw._native.engine.Engine` (built once per process, as in
``tests/unit/test_engine_fuzz.py``) serves a loopback UDP socket. A publisher P has a session with
real SRTP keys (AEAD_AES_128_GCM) and publishes a video source (SSRC 1111: NACK, RTX 97, audio
level ID 1, a MID rewritten to ID 5) and an audio source (SSRC 2222); a subscriber S has one route
per source, with payload-type and extension-ID maps, so forwarded packets are rewritten. A third
audio source (SSRC 3333) is the harness's control stream; the fuzzer's packets never use its SSRC.

Input: packets as 2-byte big-endian length + bytes (a short last packet takes what is left), at
most 8. A packet's first byte says how it is sent, the rest is the datagram: bit 0 from a
stranger's socket instead of P's, bit 1 protected as RTP by P's sender session first, bit 2
protected as RTCP first (bit 1 wins); otherwise the bytes go out as they are (garbage, replays of
the seeds' SRTP, STUN, DTLS). The engine is polled until it has read them all. The engine keeps
its state between inputs, so the harness adds an offset that grows by 8 per input to the sequence
numbers of the RTP it protects: an input run again is not a replay, and the sequence numbers
within one input keep their distances.

Checked: the engine neither raises nor stops forwarding: after every input a valid audio packet
from P on the control stream must reach S, rewritten to its route's SSRC. Every packet S receives decrypts under S's
keys (or repeats an index with identical bytes, the retransmission rule) and is RTP that
``callsgw.wire.rtp.validate`` accepts, on one of the routes' SSRCs; every copy on the video route
is byte for byte what ``callsgw.wire.rtp.rewrite`` (the Python router's rewrite, as in
``tests/unit/test_engine_fuzz.py``) makes of a video packet P sent from its own address.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections import deque

from callsgw.srtp import Profile, Session, SrtpError
from callsgw.wire.rtp import RtpError, rewrite, validate

PROFILE = Profile.AEAD_AES_128_GCM
VIDEO_SSRC, AUDIO_SSRC, CONTROL_SSRC = 1111, 2222, 3333
VIDEO_OUT, AUDIO_OUT, CONTROL_OUT = 0xAAAA0001, 0xBBBB0002, 0xCCCC0003
MAX_PACKETS = 8
FROM_STRANGER, PROTECT_RTP, PROTECT_RTCP = 1, 2, 4
# the seeds' SRTP is made under these keys (P -> gateway), so it authenticates unless mutated
UP_KEY, UP_SALT = bytes(range(0x20, 0x30)), bytes(range(0x60, 0x6C))
VIDEO_PT_MAP = {96: 100, 97: 101}
VIDEO_EXT_MAP = {1: 2, 3: 3, 4: 5, 200: 201}
MID_ID, MID_VALUE = 5, b"mid-video"
HISTORY = 2048  # video packets P sent that a copy may still be made of (NACK resends: 512 per route)


def expected_copy(packet: bytes, out_seq: int) -> bytes | None:
    """What the Python router's rewrite makes of ``packet`` for the video route (None: RtpError);
    the same rule as ``tests/unit/test_engine_fuzz.py``."""
    try:
        return rewrite(packet, ssrc=VIDEO_OUT, sequence=out_seq, payload_type=VIDEO_PT_MAP[96],
                       extension_ids=VIDEO_EXT_MAP, drop_extensions=frozenset(range(1, 256)) - frozenset(VIDEO_EXT_MAP),
                       extension_values={MID_ID: MID_VALUE})
    except RtpError:
        return None


class Peer:
    """A participant's socket and both directions of its SRTP association with the engine."""

    def __init__(self, gateway_addr, up=(None, None)):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()
        self.gateway_addr = gateway_addr
        up_key, up_salt = up[0] or os.urandom(16), up[1] or os.urandom(12)
        down_key, down_salt = os.urandom(16), os.urandom(12)
        self.tx = Session(PROFILE, up_key, up_salt, allow_repeat_tx=True)
        self.gw_rx = Session(PROFILE, up_key, up_salt, replay_window=512)
        self.gw_tx = Session(PROFILE, down_key, down_salt, replay_window=512, allow_repeat_tx=True)
        self.rx = Session(PROFILE, down_key, down_salt, replay_window=1024)
        self.seen: dict[bytes, bytes] = {}

    def receive_all(self) -> list[bytes]:
        """The RTP S received, decrypted; raises AssertionError on what does not decrypt."""
        out = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            if not 128 <= data[0] <= 191 or 192 <= data[1] <= 223:  # RTCP (RFC 5761): the gateway's reports
                continue
            try:
                plain = self.rx.unprotect(data)
            except SrtpError as exc:
                plain = self.seen.get(data)
                assert plain is not None, f"S received SRTP it cannot decrypt: {exc!r}"
            self.seen[data] = plain
            if len(self.seen) > 4096:
                self.seen.pop(next(iter(self.seen)))
            out.append(plain)


class Harness:
    def __init__(self):
        from callsgw._native.engine import Engine

        self.gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.gw.bind(("127.0.0.1", 0))
        self.gw.setblocking(False)
        self.engine = e = Engine(self.gw.fileno(), max_sessions=8, max_sources=8, max_streams=8, max_routes=8)
        addr = self.gw.getsockname()
        self.pub, self.sub = Peer(addr, (UP_KEY, UP_SALT)), Peer(addr)
        self.stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stranger.bind(("127.0.0.1", 0))
        self.sp, self.ss = e.session_open(), e.session_open()
        for slot, peer in ((self.sp, self.pub), (self.ss, self.sub)):
            e.session_keys(slot, peer.gw_rx, peer.gw_tx)
            e.session_address(slot, peer.addr)
        src_v, src_a = e.source_open(), e.source_open()
        e.source_configure(src_v, published=True, media_pts=(96,), rtx_pts=(97,), nack=True, level_id=1,
                           clock_rate=90000, video=True)
        e.source_configure(src_a, published=True, media_pts=(111,), level_id=1, clock_rate=48000)
        e.stream_add(self.sp, VIDEO_SSRC, src_v)
        e.stream_add(self.sp, AUDIO_SSRC, src_a)
        r_v = e.route_open(VIDEO_OUT, self.ss)
        e.route_configure(r_v, VIDEO_PT_MAP, VIDEO_EXT_MAP, MID_ID, MID_VALUE, 512, False)
        e.route_attach(r_v, src_v)
        r_a = e.route_open(AUDIO_OUT, self.ss)
        e.route_configure(r_a, {111: 111}, {1: 1}, 0, b"", 128, False)
        e.route_attach(r_a, src_a)
        src_c = e.source_open()  # the control stream: the fuzzer's packets never use its SSRC
        e.source_configure(src_c, published=True, media_pts=(111,), level_id=1, clock_rate=48000)
        e.stream_add(self.sp, CONTROL_SSRC, src_c)
        r_c = e.route_open(CONTROL_OUT, self.ss)
        e.route_configure(r_c, {111: 111}, {1: 1}, 0, b"", 128, False)
        e.route_attach(r_c, src_c)
        self.audio_seq = 0
        self.now = 1000.0
        self.video_sent: deque[bytes] = deque(maxlen=HISTORY)  # plaintexts of P's video, newest last
        self.seq_offset = 0  # added to the sequence numbers of the packets the harness protects

    def video_original(self, copy: bytes) -> bytes | None:
        """The packet P sent that ``copy`` (what S got on the video route) was rewritten from."""
        seq = struct.unpack_from("!H", copy, 2)[0]
        tail = copy[-8:]
        recent = reversed(self.video_sent)
        for packet in sorted(recent, key=lambda p: p[-8:] != tail):  # the likely ones first
            if expected_copy(packet, seq) == copy:
                return packet
        return None

    def poll_until(self, datagrams: int, timeout: float = 2.0) -> list:
        target = self.engine.totals["datagrams"] + datagrams
        items = []
        deadline = time.monotonic() + timeout
        while self.engine.totals["datagrams"] < target:
            assert time.monotonic() < deadline, "the engine did not read the datagrams"
            self.now += 0.001
            items += self.engine.poll(self.now)
        self.engine.flush()
        return items

    def audio_packet(self) -> bytes:
        self.audio_seq = (self.audio_seq + 1) & 0xFFFF
        head = struct.pack("!BBHII", 0x90, 111, self.audio_seq, self.audio_seq * 960 & 0xFFFFFFFF, CONTROL_SSRC)
        return head + struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, 0x85, 0, 0]) + b"opus" * 10


_harness: Harness | None = None


def harness() -> Harness:
    global _harness
    if _harness is None:
        _harness = Harness()
    return _harness


def packets_of(body: bytes) -> list[bytes]:
    out = []
    while body and len(out) < MAX_PACKETS:
        n = int.from_bytes(body[:2], "big")
        out.append(body[2 : 2 + n])
        body = body[2 + n :]
    return out


def encode(packets: list[tuple[int, bytes]]) -> bytes:
    """An input: (how, datagram) pairs (the corpus maker and the tests use it)."""
    return b"".join((len(p) + 1).to_bytes(2, "big") + bytes([how]) + p for how, p in packets)


def TestOneInput(data: bytes) -> None:
    h = harness()
    sent = 0
    h.seq_offset = (h.seq_offset + MAX_PACKETS) & 0xFFFF
    for packet in packets_of(data):
        if not packet:
            continue
        how, datagram = packet[0], packet[1:]
        plain = None
        if how & (PROTECT_RTP | PROTECT_RTCP):
            ssrc_at = 8 if how & PROTECT_RTP else 4
            if datagram[ssrc_at : ssrc_at + 4] == CONTROL_SSRC.to_bytes(4, "big"):
                continue  # the control stream's index state is the harness's own
            if how & PROTECT_RTP and len(datagram) >= 4:  # else every input but the first is a replay
                seq = (int.from_bytes(datagram[2:4], "big") + h.seq_offset) & 0xFFFF
                datagram = datagram[:2] + seq.to_bytes(2, "big") + datagram[4:]
            try:
                plain = datagram if how & PROTECT_RTP else None
                datagram = h.pub.tx.protect(datagram) if how & PROTECT_RTP else h.pub.tx.protect_rtcp(datagram)
            except SrtpError:
                continue
        elif len(datagram) >= 12 and 128 <= datagram[0] <= 191 and not 192 <= datagram[1] <= 223:
            try:  # sent as is: SRTP under P's keys (the seeds') is known once decrypted
                plain = Session(PROFILE, UP_KEY, UP_SALT).unprotect(datagram)
            except SrtpError:
                pass
        if plain is not None and not how & FROM_STRANGER and plain[8:12] == VIDEO_SSRC.to_bytes(4, "big"):
            h.video_sent.append(plain)
        (h.stranger if how & FROM_STRANGER else h.pub.sock).sendto(datagram, h.pub.gateway_addr)
        sent += 1
    control = h.audio_packet()
    h.pub.sock.sendto(h.pub.tx.protect(control), h.pub.gateway_addr)
    items = h.poll_until(sent + 1)
    for item in items:
        assert isinstance(item, tuple) and len(item) >= 2, f"odd item handed up: {item!r}"
    got = h.sub.receive_all()
    controls = []
    for plain in got:
        try:
            validate(plain)
        except RtpError as exc:
            raise AssertionError(f"the engine forwarded RTP that does not validate: {exc}") from None
        ssrc = struct.unpack_from("!I", plain, 8)[0]
        assert ssrc in (VIDEO_OUT, AUDIO_OUT, CONTROL_OUT), f"forwarded on an unknown SSRC {ssrc:#x}"
        if ssrc == CONTROL_OUT and plain.endswith(control[-40:]):
            controls.append(plain)
        if ssrc == VIDEO_OUT:
            assert h.video_original(plain) is not None, (
                "S got a video copy that is not callsgw.wire.rtp.rewrite of a packet P sent from its address")
    assert controls, "the control packet did not reach the subscriber: the engine stopped forwarding"

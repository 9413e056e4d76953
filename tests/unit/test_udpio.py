"""callsgw._native.udpio: the benchmark tester's batched SRTP over UDP, on loopback sockets."""

from __future__ import annotations

import os
import socket
import struct
import time

import numpy as np
import pytest

from callsgw.srtp import Profile
from tests.udpio_support import session_pair as pair, sockets  # noqa: F401 (a fixture)

udpio = pytest.importorskip("callsgw._native.udpio")


def drain(receiver, want, timeout=2.0):
    back = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        back += receiver.poll()
        if receiver.count >= want:
            break
        time.sleep(0.001)
    return back


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize("size", [160, 1200])
def test_packets_arrive_counted_and_timed(sockets, profile, size):
    a, b = sockets
    tx, rx = pair(profile)
    sender = udpio.Sender(a.fileno(), "127.0.0.1", b.getsockname()[1], tx, 0x1234, 111, 960, first_seq=65500)
    receiver = udpio.Receiver(b.fileno(), "127.0.0.1", a.getsockname()[1], rx)
    receiver.start_step(7)
    assert sender.send(100, size, 7) == 100  # crosses a sequence-number wrap
    assert sender.sent == 100 and sender.dropped == 0 and sender.protect_errors == 0
    back = drain(receiver, 100)
    assert back == []
    count, lat = receiver.take()
    assert count == 100
    lat = np.frombuffer(lat, dtype=np.int64)
    assert len(lat) == 100
    assert (lat >= 0).all() and (lat < 1_000_000_000).all()
    assert receiver.pts_seen() == {111}
    assert receiver.unprotect_errors == 0 and receiver.rtp_total == 100
    # a later step does not count packets of an earlier one
    receiver.start_step(8)
    sender.send(5, size, 7)
    drain(receiver, 1, timeout=0.3)
    assert receiver.count == 0 and receiver.other_step == 5


def test_stamp_layout_in_plaintext(sockets):
    a, b = sockets
    tx, rx = pair()
    sender = udpio.Sender(a.fileno(), "127.0.0.1", b.getsockname()[1], tx, 0xABCD, 96, 3000, first_seq=5, first_ts=10)
    before = udpio.realtime_ns()
    sender.send(1, 160, 42)
    time.sleep(0.05)
    plain = rx.unprotect(b.recv(2048))
    assert len(plain) == 12 + 160
    assert plain[0] == 0x80 and plain[1] == 96
    seq, ts, ssrc = struct.unpack_from("!HII", plain, 2)
    assert (seq, ts, ssrc) == (5, 10, 0xABCD)
    sent_ns, step, seq32 = struct.unpack_from("!QII", plain, 12)
    assert before <= sent_ns <= udpio.realtime_ns() and step == 42 and seq32 == 5
    assert sender.next_seq == 6


def test_non_rtp_and_garbage_are_handed_back(sockets):
    a, b = sockets
    tx, rx = pair()
    receiver = udpio.Receiver(b.fileno(), "127.0.0.1", a.getsockname()[1], rx, max_handback=100)
    receiver.start_step(1)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    target = b.getsockname()
    stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)
    rtcp = b"\x80\xc8\x00\x06" + os.urandom(24)
    dtls = b"\x16\xfe\xfd" + os.urandom(30)
    forged_rtp = b"\x80\x6f\x00\x01" + os.urandom(40)  # RTP-looking, bad tag
    datagrams = [stun, rtcp, dtls, b"", b"\x80", os.urandom(3), os.urandom(1500)]
    for d in datagrams:
        a.sendto(d, target)
    a.sendto(forged_rtp, target)
    stranger.sendto(forged_rtp, target)  # RTP from another address: Python decides
    time.sleep(0.05)
    back = receiver.poll()
    stranger_addr = stranger.getsockname()
    stranger.close()
    got = [d for d, _ in back]
    for d in datagrams:
        if not (len(d) >= 12 and 128 <= d[0] <= 191 and not 64 <= (d[1] & 0x7F) <= 95):
            assert d in got
    assert (forged_rtp, stranger_addr) in back
    assert all(addr in (a.getsockname(), stranger_addr) for _, addr in back)
    assert receiver.unprotect_errors >= 1  # the forged RTP from the gateway address
    assert receiver.count == 0
    # many random datagrams never crash, the hand-back list stays bounded
    for _ in range(300):
        a.sendto(os.urandom(int.from_bytes(os.urandom(1), "big") * 4 + 1), target)
    time.sleep(0.05)
    total = 0
    for _ in range(20):
        back = receiver.poll(max_rounds=2)
        assert len(back) <= 100
        total += len(back)
    assert total + receiver.unprotect_errors + receiver.handback_dropped + receiver.truncated >= 300


def test_bounds_and_arguments(sockets):
    a, b = sockets
    tx, rx = pair()
    with pytest.raises(ValueError):
        udpio.Sender(a.fileno(), "not-an-ip", 1, tx, 1, 111, 960)
    with pytest.raises(ValueError):
        udpio.Sender(a.fileno(), "127.0.0.1", 1, tx, 1, 72, 960)  # RTCP range
    sender = udpio.Sender(a.fileno(), "127.0.0.1", b.getsockname()[1], tx, 1, 111, 960)
    for bad in (udpio.MIN_PAYLOAD - 1, udpio.MAX_PAYLOAD + 1):
        with pytest.raises(ValueError):
            sender.send(1, bad, 0)
    with pytest.raises(ValueError):
        sender.send(-1, 160, 0)
    # latency samples stop at max_samples; the count goes on
    receiver = udpio.Receiver(b.fileno(), "127.0.0.1", a.getsockname()[1], rx, max_samples=10)
    receiver.start_step(3)
    sender.send(50, 160, 3)
    drain(receiver, 50)
    count, lat = receiver.take()
    assert count == 50 and len(lat) == 10 * 8 and receiver.samples_dropped == 40

"""The call's congestion control through the router, sans-I/O (issue #19 deliverables 1 and 2).

What the media shell hands the router every 50 ms (``Router.on_twcc``: the
transport-wide logs, times on the loop's clock) and what comes back: transport-cc
feedback for a publisher, parsed here by the independent codec and checked
against the arrivals; a subscriber's estimate from the gateway's own sends and
that subscriber's feedback, REMB and receiver reports, visible in
``Router.quality`` (what ``/api/v1`` and ``callsgw inspect`` show).
"""

from __future__ import annotations

import numpy as np
from aiortc import rtp as aio

from callsgw.sfu.router import Router
from callsgw.wire import rtcp, twcc
from tests.unit.test_router import exts, forwarded, opus, published, vp8

PUB_TWCC, SUB_TWCC = 5, 6


def call():
    router = Router()
    router.set_published("alice", "voice", published("0", "voice", [opus(111)], exts(twcc=PUB_TWCC), (1111,)))
    router.set_published("alice", "screen", published("1", "video", [vp8(96)], exts(twcc=PUB_TWCC), (2222,)))
    router.set_forwarded("bob", [
        forwarded("5", ("alice", "voice"), 0xA000, [opus(109)], exts(twcc=SUB_TWCC)),
        forwarded("6", ("alice", "screen"), 0xB000, [vp8(100)], exts(twcc=SUB_TWCC)),
    ])
    router.set_forwarded("carol", [forwarded("5", ("alice", "voice"), 0xA001, [opus(109)])])
    return router


def no_sends():
    return np.empty(0, np.uint16), np.empty(0, np.float64), np.empty(0, np.uint16)


def no_arrivals():
    return np.empty(0, np.uint16), np.empty(0, np.float64)


def test_negotiated_ids_say_what_each_transport_logs_stamps_and_hands_up():
    router = call()
    assert router.twcc_ids("alice") == (PUB_TWCC, 0, False)  # publishes only
    assert router.twcc_ids("bob") == (0, SUB_TWCC, True)
    assert router.twcc_ids("carol") == (0, 0, True)  # receives: its REMB/RR still count
    assert router.twcc_ids("nobody") == (0, 0, False)


def test_a_publishers_arrivals_come_back_as_transport_cc_feedback_it_can_read():
    router = call()
    seqs = np.array([65534, 65535, 0, 2, 3], np.uint16)  # 1 lost, across the wrap
    times = 100.0 + np.array([0.0, 0.004, 0.009, 0.030, 0.031])
    out = router.on_twcc("alice", (seqs, times), no_sends(), 100.05)
    assert [o.participant_id for o in out] == ["alice"] and out[0].is_rtcp
    compound = rtcp.parse(out[0].packet)
    assert isinstance(compound.items[0], rtcp.ReceiverReport)  # RFC 3550 6.1: a compound, RR first
    (fb,) = twcc.parse_compound(out[0].packet)
    assert fb.sender_ssrc == router.gateway_ssrc("alice")
    assert fb.base_seq == 65534 and fb.status_count == 6
    got = fb.received()
    assert [s for s, _ in got] == [65534, 65535, 0, 2, 3]
    deltas = [b - a for (_, a), (_, b) in zip(got, got[1:])]
    assert deltas == [4000, 5000, 21000, 1000]  # microseconds, as they arrived
    assert router.on_twcc("alice", no_arrivals(), no_sends(), 100.1) == []  # nothing new: nothing sent
    assert router.quality("alice")["feedback"]["feedback_packets"] == 1


def test_a_subscribers_sends_and_feedback_make_its_estimate_and_garbage_is_counted():
    router = call()
    now, seq = 10.0, 0
    for step in range(40):  # 2 s of 1200-byte packets at 1 Mbit/s, acknowledged as sent (+20 ms)
        seqs = np.arange(seq, seq + 5, dtype=np.uint16)
        sent_at = now + np.arange(5) * 0.0096
        router.on_twcc("bob", no_arrivals(), (seqs, sent_at, np.full(5, 1200, np.uint16)), now + 0.05)
        packets = [(int(s), int(round((t + 0.020) * 1e6))) for s, t in zip(seqs, sent_at)]
        for packet in twcc.build(packets, sender_ssrc=1, media_ssrc=0xB000, fb_count=step):
            router.on_rtcp("bob", packet, now + 0.06)
        seq += 5
        now += 0.05
    quality = router.quality("bob")
    assert quality["downlink"]["source"] == "transport-cc"
    assert quality["downlink_bps"] is not None and quality["downlink_bps"] > 500_000
    assert quality["congested"] is False
    # a malformed transport-cc (a status count with no chunks) is refused and counted
    bad = rtcp.TransportCc(1, 0xB000, b"\x00\x01\x00\x05\x00\x00\x00\x01")
    router.on_rtcp("bob", bytes(bad), now)
    assert router.stats()["congestion"]["counters"]["transport_cc_malformed"] == 1


def test_remb_and_receiver_reports_are_the_fallbacks_of_a_subscriber_without_transport_cc():
    router = call()
    out = router.on_rtp("alice", aio.RtpPacket(payload_type=111, sequence_number=1, timestamp=0,
                                                ssrc=1111, payload=b"opus").serialize(), 0.0)
    assert [o.participant_id for o in out] == ["bob", "carol"]
    rr = aio.RtcpRrPacket(ssrc=7, reports=[aio.RtcpReceiverInfo(
        ssrc=0xA001, fraction_lost=128, packets_lost=50, highest_sequence=1, jitter=0, lsr=0, dlsr=0)])
    router.on_rtcp("carol", bytes(rr), 1.0)
    quality = router.quality("carol")
    assert quality["downlink"]["source"] == "rr" and quality["downlink"]["loss_fraction"] == 0.5
    remb = bytes(aio.RtcpPsfbPacket(fmt=15, ssrc=7, media_ssrc=0, fci=aio.pack_remb_fci(150_000, [0xA001])))
    router.on_rtcp("carol", remb, 1.5)
    quality = router.quality("carol")
    assert quality["downlink"]["source"] == "remb" and quality["downlink_bps"] <= 150_000
    counters = router.stats()["congestion"]["counters"]
    assert counters["remb_used"] == 1 and counters["rr_loss_used"] == 1

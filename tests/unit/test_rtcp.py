"""callsgw.wire.rtcp: RFC 3550 / 4585 / 5104 RTCP, checked against aiortc's independent codec."""

from __future__ import annotations

import struct

import pytest
from aiortc import rtp as aio
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.wire import rtcp
from callsgw.wire.rtcp import RtcpError


def aio_block(**kw) -> aio.RtcpReceiverInfo:
    fields = dict(ssrc=0x01020304, fraction_lost=25, packets_lost=-3, highest_sequence=0x1FFFF, jitter=77,
                  lsr=0xAABBCCDD, dlsr=65536)
    fields.update(kw)
    return aio.RtcpReceiverInfo(**fields)


def our_block(b: aio.RtcpReceiverInfo) -> rtcp.ReportBlock:
    return rtcp.ReportBlock(b.ssrc, b.fraction_lost, b.packets_lost, b.highest_sequence, b.jitter, b.lsr, b.dlsr)


# Samples of each packet type, built by aiortc (or by hand where aiortc has no builder).
AIO_SR = bytes(aio.RtcpSrPacket(
    ssrc=1111,
    sender_info=aio.RtcpSenderInfo(ntp_timestamp=0xE8F0_1234_5678_9ABC, rtp_timestamp=48000, packet_count=50,
                                   octet_count=8000),
    reports=[aio_block(), aio_block(ssrc=5, packets_lost=1000)],
))
AIO_RR = bytes(aio.RtcpRrPacket(ssrc=2222, reports=[aio_block()]))
AIO_SDES = bytes(aio.RtcpSdesPacket(chunks=[aio.RtcpSourceInfo(ssrc=2222, items=[(1, b"cname@host")])]))
AIO_BYE = bytes(aio.RtcpByePacket(sources=[2222, 3333]))
AIO_NACK = bytes(aio.RtcpRtpfbPacket(fmt=1, ssrc=2222, media_ssrc=1111, lost=[10, 11, 13, 26, 27, 100]))
AIO_PLI = bytes(aio.RtcpPsfbPacket(fmt=1, ssrc=2222, media_ssrc=1111))
AIO_FIR = bytes(aio.RtcpPsfbPacket(fmt=4, ssrc=2222, media_ssrc=0,
                                   fci=struct.pack("!IB3x", 1111, 7) + struct.pack("!IB3x", 4444, 8)))
AIO_REMB = bytes(aio.RtcpPsfbPacket(fmt=15, ssrc=2222, media_ssrc=0, fci=aio.pack_remb_fci(1_500_000, [1111, 4444])))
TWCC = struct.pack("!BBH", 0x80 | 15, 205, 4) + struct.pack("!II", 2222, 1111) + bytes.fromhex("0001000200000100")
APP = struct.pack("!BBH", 0x80 | 3, 204, 3) + struct.pack("!I", 2222) + b"TEST" + b"data"
XR = struct.pack("!BBH", 0x80, 207, 2) + struct.pack("!I", 2222) + bytes(4)

SAMPLES = {
    "sr": AIO_SR,
    "rr": AIO_RR,
    "sdes": AIO_SDES,
    "bye": AIO_BYE,
    "nack": AIO_NACK,
    "pli": AIO_PLI,
    "fir": AIO_FIR,
    "remb": AIO_REMB,
    "twcc": TWCC,
    "app": APP,
    "xr": XR,
    "compound": AIO_SR + AIO_SDES + AIO_NACK + AIO_PLI,
}


# -- parsing what aiortc builds ---------------------------------------------------------


def test_sender_report():
    (sr,) = rtcp.parse(AIO_SR).items
    assert isinstance(sr, rtcp.SenderReport)
    assert (sr.ssrc, sr.ntp_timestamp, sr.rtp_timestamp, sr.packet_count, sr.octet_count) == (
        1111, 0xE8F0_1234_5678_9ABC, 48000, 50, 8000)
    assert sr.reports == (our_block(aio_block()), our_block(aio_block(ssrc=5, packets_lost=1000)))
    assert sr.reports[0].cumulative_lost == -3  # signed 24-bit (RFC 3550 section 6.4.1)
    assert bytes(sr) == AIO_SR


def test_receiver_report_sdes_bye():
    compound = rtcp.parse(AIO_RR + AIO_SDES + AIO_BYE)
    rr, sdes, bye = compound.items
    assert not compound.reduced_size
    assert rr == rtcp.ReceiverReport(2222, (our_block(aio_block()),))
    assert sdes.ssrcs == (2222,) and bytes(sdes) == AIO_SDES
    assert bye == rtcp.Bye((2222, 3333))
    assert bytes(compound) == AIO_RR + AIO_SDES + AIO_BYE


def test_bye_with_reason():
    packet = struct.pack("!BBH", 0x81, 203, 3) + struct.pack("!I", 9) + b"\x05leave\x00\x00"
    (bye,) = rtcp.parse(packet).items
    assert bye == rtcp.Bye((9,), b"leave")
    assert rtcp.parse(bytes(bye)).items == (bye,)
    assert aio.RtcpPacket.parse(bytes(bye))[0].sources == [9]


def test_nack():
    (nack,) = rtcp.parse(AIO_NACK).items
    assert isinstance(nack, rtcp.Nack) and (nack.sender_ssrc, nack.media_ssrc) == (2222, 1111)
    assert nack.sequences() == [10, 11, 13, 26, 27, 100]
    assert bytes(nack) == AIO_NACK


def test_pli_fir_remb_twcc():
    assert rtcp.parse(AIO_PLI).items == (rtcp.Pli(2222, 1111),)
    (fir,) = rtcp.parse(AIO_FIR).items
    assert fir == rtcp.Fir(2222, 0, ((1111, 7), (4444, 8)))
    assert bytes(fir) == AIO_FIR
    (remb,) = rtcp.parse(AIO_REMB).items
    assert isinstance(remb, rtcp.Remb) and remb.ssrcs == (1111, 4444)
    assert remb.bitrate == aio.unpack_remb_fci(aio.pack_remb_fci(1_500_000, []))[0]
    assert aio.unpack_remb_fci(bytes(remb)[12:]) == (remb.bitrate, [1111, 4444])
    (twcc,) = rtcp.parse(TWCC).items
    assert isinstance(twcc, rtcp.TransportCc) and bytes(twcc) == TWCC


def test_app_unknown_and_other_feedback_are_kept_raw():
    app, xr = rtcp.parse(APP + XR).items
    assert app.name == b"TEST" and app.subtype == 3 and bytes(app) == APP
    assert isinstance(xr, rtcp.Unknown) and xr.packet_type == 207 and bytes(xr) == XR
    sli = bytes(aio.RtcpPsfbPacket(fmt=2, ssrc=1, media_ssrc=2, fci=b"\x00\x00\x00\x01"))
    (item,) = rtcp.parse(sli).items
    assert item == rtcp.Feedback(206, 2, 1, 2, b"\x00\x00\x00\x01") and bytes(item) == sli


def test_reduced_size_compound_is_accepted_and_flagged():
    """RFC 5506: a compound may start with feedback; RFC 3550 section 6.1 would not allow it."""
    compound = rtcp.parse(AIO_PLI + AIO_NACK)
    assert compound.reduced_size
    assert not rtcp.parse(AIO_SR + AIO_PLI).reduced_size


def test_profile_specific_extension_is_kept():
    packet = bytearray(AIO_RR + b"EXT!")
    struct.pack_into("!H", packet, 2, len(packet) // 4 - 1)
    (rr,) = rtcp.parse(bytes(packet)).items
    assert rr.extension == b"EXT!" and bytes(rr) == bytes(packet)


def test_padding_on_the_last_packet():
    padded = bytearray(AIO_PLI + b"\x00\x00\x00\x04")
    padded[0] |= 0x20
    struct.pack_into("!H", padded, 2, 3)
    assert rtcp.parse(AIO_RR + bytes(padded)).items[1] == rtcp.Pli(2222, 1111)
    assert aio.RtcpPacket.parse(bytes(padded))[0].media_ssrc == 1111
    with pytest.raises(RtcpError, match="only the last"):
        rtcp.parse(bytes(padded) + AIO_RR)
    for bad in (0, 16):
        wrong = bytearray(padded)
        wrong[-1] = bad
        with pytest.raises(RtcpError, match="padding"):
            rtcp.parse(bytes(wrong))
    # a count that is not a multiple of 4 is accepted (libwebrtc pads transport-cc with 1-3 bytes)
    # but the bytes it leaves must still frame: here a PLI with one FCI byte
    wrong = bytearray(padded)
    wrong[-1] = 3
    with pytest.raises(RtcpError, match="PLI carries no FCI"):
        rtcp.parse(bytes(wrong))


# -- what we build, parsed by aiortc --------------------------------------------------------


def test_built_sr_and_rr_parse_in_aiortc():
    blocks = [our_block(aio_block()), rtcp.ReportBlock(9, 255, (1 << 23) - 1, 5, 6, 7, 8)]
    sr = rtcp.build_sr(1111, 0x0102030405060708, 90000, 10, 1200, blocks)
    (theirs,) = aio.RtcpPacket.parse(sr)
    assert isinstance(theirs, aio.RtcpSrPacket)
    info = theirs.sender_info
    assert (theirs.ssrc, info.ntp_timestamp, info.rtp_timestamp, info.packet_count, info.octet_count) == (
        1111, 0x0102030405060708, 90000, 10, 1200)
    assert [our_block(b) for b in theirs.reports] == blocks
    rr = rtcp.build_rr(2222, blocks)
    (theirs,) = aio.RtcpPacket.parse(rr)
    assert theirs.ssrc == 2222 and [our_block(b) for b in theirs.reports] == blocks
    assert rtcp.parse(rr).items == (rtcp.ReceiverReport(2222, tuple(blocks)),)


def test_cumulative_lost_is_clamped_to_24_bits():
    block = rtcp.ReportBlock(1, 0, -(1 << 30), 0, 0)
    (rr,) = rtcp.parse(rtcp.build_rr(2, [block])).items
    assert rr.reports[0].cumulative_lost == -(1 << 23)
    (theirs,) = aio.RtcpPacket.parse(rtcp.build_rr(2, [rtcp.ReportBlock(1, 0, 1 << 30, 0, 0)]))
    assert theirs.reports[0].packets_lost == (1 << 23) - 1


def test_built_feedback_parses_in_aiortc():
    (pli,) = aio.RtcpPacket.parse(rtcp.build_pli(5, 6))
    assert (pli.fmt, pli.ssrc, pli.media_ssrc, pli.fci) == (1, 5, 6, b"")
    (fir,) = aio.RtcpPacket.parse(rtcp.build_fir(5, [(6, 200), (7, 1)]))
    assert (fir.fmt, fir.ssrc, fir.media_ssrc) == (4, 5, 0)
    assert [struct.unpack_from("!IB", fir.fci, i) for i in (0, 8)] == [(6, 200), (7, 1)]
    lost = [65530, 65531, 65535, 0, 2, 40, 41, 56, 57]
    (nack,) = aio.RtcpPacket.parse(rtcp.build_nack(5, 6, rtcp.nack_entries(lost)))
    assert (nack.fmt, nack.ssrc, nack.media_ssrc) == (1, 5, 6)
    assert [s & 0xFFFF for s in nack.lost] == lost
    (ours,) = rtcp.parse(rtcp.build_nack(5, 6, rtcp.nack_entries(lost))).items
    assert ours.sequences() == lost


def test_sdes_cname_parses_in_aiortc():
    packet = rtcp.build_sdes_cname(77, "callsgw-alice")
    (sdes,) = aio.RtcpPacket.parse(packet)
    assert sdes.chunks[0].ssrc == 77 and sdes.chunks[0].items == [(1, b"callsgw-alice")]
    assert rtcp.parse(packet).items[0].ssrcs == (77,)


def test_builders_refuse_empty_feedback_and_too_many_blocks():
    with pytest.raises(RtcpError):
        rtcp.build_nack(1, 2, [])
    with pytest.raises(RtcpError):
        rtcp.build_fir(1, [])
    with pytest.raises(RtcpError):
        rtcp.build_rr(1, [rtcp.ReportBlock(i, 0, 0, 0, 0) for i in range(32)])


# -- malformed input ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(SAMPLES) - {"compound"}))
def test_every_truncation_raises(name):
    packet = SAMPLES[name]
    rtcp.parse(packet)
    for n in range(len(packet)):
        with pytest.raises(RtcpError):
            rtcp.parse(packet[:n])


def test_compound_truncations_raise_except_at_packet_boundaries():
    parts = [AIO_SR, AIO_SDES, AIO_NACK, AIO_PLI]
    packet = b"".join(parts)
    boundaries = {sum(len(p) for p in parts[:i]): i for i in range(1, len(parts))}
    full = rtcp.parse(packet).items
    for n in range(len(packet)):
        if n in boundaries:
            assert rtcp.parse(packet[:n]).items == full[: boundaries[n]]
        else:
            with pytest.raises(RtcpError):
                rtcp.parse(packet[:n])


def with_length(body: bytes, pt: int, count: int) -> bytes:
    return struct.pack("!BBH", 0x80 | count, pt, len(body) // 4) + body


@pytest.mark.parametrize(
    "packet, reason",
    [
        (b"\x40" + AIO_RR[1:], "version"),
        (struct.pack("!BBH", 0x80, 190, 0), "not RTCP"),
        (struct.pack("!BBH", 0x80, 224, 0), "not RTCP"),
        (AIO_RR[:2] + b"\x00\x09" + AIO_RR[4:], "runs past"),
        (AIO_RR + b"\x80", "runs past"),
        (with_length(AIO_SR[4:28], 200, 1), "SR with 1"),
        (with_length(AIO_RR[4:8], 201, 2), "RR with 2"),
        (with_length(b"\x00\x00\x00\x01\x01\x08abc\x00\x00\x00", 202, 1), "SDES item"),
        (with_length(b"\x00\x00\x00\x01\x01\x01a\x01", 202, 1), "null item|SDES item"),
        (with_length(b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x05", 202, 1), "after its chunks"),
        (with_length(b"\x00\x00\x00\x01", 203, 2), "BYE with 2"),
        (with_length(b"\x00\x00\x00\x01\x09abc", 203, 1), "reason"),
        (with_length(b"\x00\x00\x00\x01", 204, 0), "APP"),
        (with_length(b"\x00\x00\x00\x01", 205, 1), "two SSRCs"),
        (with_length(bytes(8), 205, 1), "NACK FCI"),
        (with_length(bytes(8) + bytes(4), 205, 15), "transport-cc"),
        (with_length(bytes(8) + bytes(4), 206, 1), "PLI carries no FCI"),
        (with_length(bytes(8) + bytes(4), 206, 4), "FIR FCI"),
        (with_length(bytes(8), 206, 4), "FIR FCI"),
        (with_length(bytes(8) + b"REMB" + bytes([2, 0, 0, 0]) + bytes(4), 206, 15), "REMB with 2"),
        (with_length(bytes(8) + b"REMB", 206, 15), "REMB FCI"),
        (b"", "empty"),
    ],
)
def test_malformed(packet, reason):
    with pytest.raises(RtcpError, match=reason):
        rtcp.parse(packet)


def test_bounds():
    assert len(rtcp.parse(AIO_PLI * 64).items) == 64
    with pytest.raises(RtcpError, match="more than 64"):
        rtcp.parse(AIO_PLI * 65)
    nack = lambda n: rtcp.build_nack(1, 2, [(i, 0) for i in range(n)])  # noqa: E731
    assert len(rtcp.parse(nack(300) + nack(212)).items) == 2
    with pytest.raises(RtcpError, match="NACK entries"):
        rtcp.parse(nack(300) + nack(213))


def test_error_is_a_value_error():
    assert issubclass(RtcpError, ValueError)


# -- properties ---------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
blocks = st.lists(
    st.builds(rtcp.ReportBlock, u32, st.integers(0, 255), st.integers(-(1 << 23), (1 << 23) - 1), u32, u32, u32, u32),
    max_size=31,
)


@settings(max_examples=200, deadline=None)
@given(u32, st.integers(0, 2**64 - 1), u32, u32, u32, blocks)
def test_sr_round_trip_and_aiortc(ssrc, ntp, ts, packets, octets, reports):
    packet = rtcp.build_sr(ssrc, ntp, ts, packets, octets, reports)
    assert rtcp.parse(packet).items == (rtcp.SenderReport(ssrc, ntp, ts, packets, octets, tuple(reports)),)
    (theirs,) = aio.RtcpPacket.parse(packet)
    assert theirs.sender_info.ntp_timestamp == ntp and [our_block(b) for b in theirs.reports] == reports


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=100))
def test_nack_entries_cover_exactly_the_sequences(sequences):
    entries = rtcp.nack_entries(sequences)
    (nack,) = rtcp.parse(rtcp.build_nack(1, 2, entries)).items
    assert set(nack.sequences()) == set(sequences)
    assert len(nack.sequences()) == len(set(nack.sequences()))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=120))
def test_garbage_raises_only_rtcp_error(data):
    try:
        rtcp.parse(data)
    except RtcpError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(sorted(SAMPLES)), min_size=1, max_size=4), st.data())
def test_mutated_compounds_raise_only_rtcp_error(names, data):
    packet = bytearray(b"".join(SAMPLES[n] for n in names))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(packet) - 1))
        packet[i] = data.draw(st.integers(0, 255))
    try:
        compound = rtcp.parse(bytes(packet))
    except RtcpError:
        return
    # whatever was accepted serialises to something that parses to the same items
    assert rtcp.parse(bytes(compound)) == compound


# -- callsgw.sfu.rtcp: receive statistics (RFC 3550 Appendix A) ---------------------------

from aiortc import rtcrtpreceiver  # noqa: E402

from callsgw.sfu.rtcp import ReceiveStats, ntp_middle  # noqa: E402


def test_probation_then_counting():
    """RFC 3550 A.1: a source is valid after MIN_SEQUENTIAL (2) packets in sequence."""
    stats = ReceiveStats(48000)
    assert stats.update(100, 0, 0.0) is False
    assert stats.report_block(1, 0.0) is None
    assert stats.update(101, 960, 0.02) is True
    block = stats.report_block(1, 0.02)
    assert (block.highest_seq, block.cumulative_lost, block.fraction_lost) == (101, 0, 0)
    # out of sequence during probation restarts it
    other = ReceiveStats(48000)
    other.update(5, 0, 0.0)
    assert other.update(9, 0, 0.0) is False and other.update(10, 0, 0.0) is True
    assert other.report_block(1, 0.0).highest_seq == 10


def test_loss_fraction_per_interval_and_cumulative():
    stats = ReceiveStats(48000)
    for seq in range(0, 101):
        if seq not in (50, 51, 52, 53, 54):
            stats.update(seq, seq * 960, seq * 0.02)
    first = stats.report_block(7, 2.0)
    assert first.ssrc == 7 and first.cumulative_lost == 5 and first.highest_seq == 100
    assert first.fraction_lost == (5 << 8) // 100
    for seq in range(101, 201):
        stats.update(seq, seq * 960, seq * 0.02)
    second = stats.report_block(7, 4.0)
    assert second.fraction_lost == 0 and second.cumulative_lost == 5


def test_sequence_wrap_counts_cycles():
    stats = ReceiveStats(90000)
    for seq in list(range(65530, 65536)) + list(range(0, 6)):
        stats.update(seq, 0, 0.0)
    block = stats.report_block(1, 0.0)
    assert block.highest_seq == 65536 + 5 and block.cumulative_lost == 0


def test_duplicates_make_the_loss_negative_and_reordering_is_counted():
    stats = ReceiveStats(90000)
    for seq in (1, 2, 3, 5, 4, 5, 5, 6):
        stats.update(seq, 0, 0.0)
    assert stats.report_block(1, 0.0).cumulative_lost == -2


def test_restart_after_a_big_jump():
    """RFC 3550 A.1: a jump is believed only when the next packet follows it."""
    stats = ReceiveStats(48000)
    for seq in range(10, 20):
        stats.update(seq, 0, 0.0)
    assert stats.update(40000, 0, 0.0) is False
    assert stats.update(40001, 0, 0.0) is True
    block = stats.report_block(1, 0.0)
    assert block.highest_seq == 40001 and block.cumulative_lost == 0


def test_lsr_and_dlsr():
    stats = ReceiveStats(48000)
    stats.update(1, 0, 0.0)
    stats.update(2, 960, 0.02)
    assert stats.report_block(1, 0.1).lsr == 0
    stats.sender_report(0x0123_4567_89AB_CDEF, 10.0)
    block = stats.report_block(1, 10.25)
    assert block.lsr == ntp_middle(0x0123_4567_89AB_CDEF) == 0x456789AB
    assert block.dlsr == 16384


def test_constant_transit_gives_zero_jitter():
    stats = ReceiveStats(90000)
    for seq in range(300):
        stats.update(seq, (seq // 3) * 3000, 123.456 + (seq // 3) / 30)
    assert stats.report_block(1, 200.0).jitter == 0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 0.05), min_size=300, max_size=300))
def test_jitter_agrees_with_aiortc(delays):
    """aiortc's StreamStatistics (Q4 integer arithmetic) is an independent A.8 implementation."""
    ours = ReceiveStats(48000)
    theirs = rtcrtpreceiver.StreamStatistics(48000)
    clock = {"now": 0.0}
    original = rtcrtpreceiver.time.time
    rtcrtpreceiver.time.time = lambda: clock["now"]
    try:
        for seq, delay in enumerate(delays):
            arrival = 1000.0 + seq * 0.02 + delay
            clock["now"] = arrival
            ours.update(seq, seq * 960, arrival)
            theirs.add(aio.RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960))
    finally:
        rtcrtpreceiver.time.time = original
    block = ours.report_block(1, 2000.0)
    assert abs(block.jitter - theirs.jitter) <= 3 + 0.02 * theirs.jitter


def test_clock_rate_must_be_positive():
    with pytest.raises(ValueError):
        ReceiveStats(0)

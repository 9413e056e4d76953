"""callsgw.wire.rtp: RFC 3550 RTP header and RFC 8285 extensions, checked against aiortc's parser."""

from __future__ import annotations

import struct

import pytest
from aiortc import rtp as aio
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.wire import rtp
from callsgw.wire.rtp import RtpError, RtpHeader
from tests.packets import rtp as make_rtp


def one_byte(*elements: tuple[int, bytes], trailer: bytes = b"") -> tuple[int, bytes]:
    """An RFC 8285 section 4.2 block, written by hand (independent of callsgw)."""
    data = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements) + trailer
    return 0xBEDE, data + b"\x00" * (-len(data) % 4)


def two_byte(*elements: tuple[int, bytes], appbits: int = 0) -> tuple[int, bytes]:
    """An RFC 8285 section 4.3 block."""
    data = b"".join(bytes([i, len(v)]) + v for i, v in elements)
    return 0x1000 | appbits, data + b"\x00" * (-len(data) % 4)


def aio_extensions(packet: bytes) -> list[tuple[int, bytes]]:
    """aiortc's independent reading of the extension elements."""
    if not packet[0] & 0x10:
        return []
    pos = 12 + 4 * (packet[0] & 0x0F)
    profile, words = struct.unpack_from("!HH", packet, pos)
    return aio.unpack_header_extensions(profile, packet[pos + 4 : pos + 4 + 4 * words])


def check_against_aiortc(packet: bytes) -> RtpHeader:
    ours = RtpHeader.parse(packet)
    theirs = aio.RtpPacket.parse(packet)
    assert ours.version == theirs.version == 2
    assert ours.marker == bool(theirs.marker)
    assert ours.payload_type == theirs.payload_type
    assert ours.sequence == theirs.sequence_number
    assert ours.timestamp == theirs.timestamp
    assert ours.ssrc == theirs.ssrc
    assert list(ours.csrcs) == theirs.csrc
    assert ours.padding_length == theirs.padding_size
    assert packet[ours.payload_offset : ours.payload_offset + ours.payload_length] == theirs.payload
    return ours


# -- parsing ------------------------------------------------------------------------------


def test_fixed_header_and_payload():
    packet = make_rtp(0xFFFF, 0xDEADBEEF, b"opus!", pt=111, ts=0xFFFFFFF0, marker=True)
    h = check_against_aiortc(packet)
    assert (h.sequence, h.ssrc, h.timestamp, h.marker) == (0xFFFF, 0xDEADBEEF, 0xFFFFFFF0, True)
    assert h.extension_profile is None and h.extensions == {}
    assert (h.header_length, h.payload_length, h.padding) == (12, 5, False)


def test_csrcs_one_byte_extension_and_padding():
    ext = one_byte((1, b"\x7f"), (3, b"0"), (5, b"\x01\x02\x03"))
    packet = make_rtp(7, 99, b"payload", csrcs=(1, 2, 3), ext=ext, padding=8)
    h = check_against_aiortc(packet)
    assert h.csrcs == (1, 2, 3)
    assert h.extension_profile == 0xBEDE
    assert h.extensions == {1: b"\x7f", 3: b"0", 5: b"\x01\x02\x03"}
    assert h.extensions == dict(aio_extensions(packet))
    assert h.header_length == 12 + 12 + 4 + len(ext[1])
    assert (h.padding_length, h.payload_length) == (8, 7)


def test_two_byte_extension_with_appbits_and_empty_value():
    ext = two_byte((1, b""), (200, b"x" * 20), (16, b"mid"), appbits=0x5)
    packet = make_rtp(1, 2, b"v", ext=ext)
    h = check_against_aiortc(packet)
    assert h.extension_profile == 0x1005
    assert h.extensions == {1: b"", 200: b"x" * 20, 16: b"mid"}


def test_padding_between_elements_and_unknown_profile():
    profile, data = 0xBEDE, bytes([0, 0, 0x10, 0xAA, 0, 0x21, 1, 2])
    assert RtpHeader.parse(make_rtp(1, 2, ext=(profile, data))).extensions == {1: b"\xaa", 2: b"\x01\x02"}
    opaque = RtpHeader.parse(make_rtp(1, 2, ext=(0x1234, b"abcd")))
    assert opaque.extension_profile == 0x1234 and opaque.extensions == {}


def test_one_byte_id_0_is_skipped_as_a_single_padding_byte():
    profile, data = 0xBEDE, bytes([0x03, 0x10, 0xAA, 0x0F])
    assert RtpHeader.parse(make_rtp(1, 2, ext=(profile, data))).extensions == {1: b"\xaa"}


def test_one_byte_id_15_stops_processing():
    """RFC 8285 section 4.2: elements after ID 15 are not considered."""
    profile, data = 0xBEDE, bytes([0x10, 0xAA, 0xF0, 0x20, 0x01, 0x02, 0, 0])
    assert RtpHeader.parse(make_rtp(1, 2, ext=(profile, data))).extensions == {1: b"\xaa"}


@pytest.mark.parametrize(
    "packet, reason",
    [
        (b"", "shorter"),
        (b"\x80" * 11, "shorter"),
        (b"\x40" + b"\x00" * 11, "version"),
        (bytes([0x82]) + b"\x00" * 15, "CSRC"),  # CC=2, only one CSRC present
        (bytes([0x90]) + b"\x00" * 13, "extension header"),
        (bytes([0x90]) + b"\x00" * 11 + b"\xbe\xde\x00\x02" + b"\x00" * 4, "extension runs"),
        (bytes([0xA0]) + b"\x00" * 11 + b"\x00", "padding"),  # padding count 0
        (bytes([0xA0]) + b"\x00" * 11 + b"\x05", "padding"),  # 5 > 1 byte after the header
        (make_rtp(1, 2, b"", ext=(0xBEDE, bytes([0x13, 1, 2, 0]))), "runs past"),  # L+1=4 > 3 left
        (make_rtp(1, 2, b"", ext=(0x1000, bytes([5, 9, 0, 0]))), "runs past"),
        (make_rtp(1, 2, b"", ext=(0x1000, bytes([0, 0, 0, 5]))), "runs past"),  # header cut
    ],
)
def test_malformed_packets_raise(packet, reason):
    with pytest.raises(RtpError, match=reason):
        RtpHeader.parse(packet)


def test_every_truncation_of_the_header_raises():
    ext = one_byte((1, b"\x7f"), (2, b"abcdef"))
    packet = make_rtp(7, 99, b"payload", csrcs=(5,), ext=ext, padding=4)
    header_length = RtpHeader.parse(packet).header_length
    for n in range(header_length):
        with pytest.raises(RtpError):
            RtpHeader.parse(packet[:n])


def test_error_is_a_value_error():
    assert issubclass(RtpError, ValueError)


# -- RFC 6464 audio level and RFC 8843 MID ----------------------------------------------


def test_audio_level():
    packet = make_rtp(1, 2, ext=one_byte((3, b"0"), (1, bytes([0x80 | 30]))))
    assert rtp.audio_level(packet, 1) == (True, 30)
    assert rtp.audio_level(make_rtp(1, 2, ext=one_byte((1, bytes([127])))), 1) == (False, 127)
    assert rtp.audio_level(packet, 4) is None
    assert rtp.audio_level(make_rtp(1, 2), 1) is None
    two = make_rtp(1, 2, ext=two_byte((1, bytes([0x85]))))
    assert rtp.audio_level(two, 1) == (True, 5)
    # aiortc agrees
    ids = aio.HeaderExtensionsMap()
    ids.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level")
    ]))
    assert aio.RtpPacket.parse(packet, ids).extensions.audio_level == (True, 30)


def test_audio_level_of_the_wrong_size_raises():
    with pytest.raises(RtpError, match="RFC 6464"):
        rtp.audio_level(make_rtp(1, 2, ext=one_byte((1, b"\x01\x02"))), 1)


def test_mid():
    packet = make_rtp(1, 2, ext=one_byte((1, b"\x10"), (9, b"screen")))
    assert rtp.mid(packet, 9) == "screen"
    assert rtp.mid(packet, 2) is None
    with pytest.raises(RtpError, match="UTF-8"):
        rtp.mid(make_rtp(1, 2, ext=one_byte((9, b"\xff\xfe"))), 9)
    with pytest.raises(RtpError):
        rtp.mid(b"\x90" + b"\x00" * 11, 9)


# -- rewriting ----------------------------------------------------------------------------


def test_rewrite_header_fields_keeps_marker_and_payload():
    packet = make_rtp(100, 1111, b"frame", pt=96, ts=5000, marker=True, csrcs=(9,), padding=4)
    out = rtp.rewrite(packet, ssrc=2222, sequence=0x1_0005, timestamp=7, payload_type=100)
    theirs = aio.RtpPacket.parse(out)
    assert (theirs.ssrc, theirs.sequence_number, theirs.timestamp, theirs.payload_type) == (2222, 5, 7, 100)
    assert theirs.marker == 1 and theirs.csrc == [9] and theirs.payload == b"frame" and theirs.padding_size == 4
    assert len(out) == len(packet)
    assert rtp.rewrite(packet) == packet


def test_rewrite_maps_and_drops_one_byte_elements_in_place():
    packet = make_rtp(1, 2, b"data", ext=one_byte((1, b"\x7f"), (2, b"0"), (3, b"\x01\x02\x03")))
    out = rtp.rewrite(packet, extension_ids={1: 5, 3: 1}, drop_extensions={2})
    assert len(out) == len(packet)
    assert aio_extensions(out) == [(5, b"\x7f"), (1, b"\x01\x02\x03")]
    assert aio.RtpPacket.parse(out).payload == b"data"


def test_rewrite_swaps_ids():
    packet = make_rtp(1, 2, ext=one_byte((1, b"a"), (2, b"b")))
    assert aio_extensions(rtp.rewrite(packet, extension_ids={1: 2, 2: 1})) == [(2, b"a"), (1, b"b")]


def test_rewrite_drops_ids_the_one_byte_form_cannot_carry():
    packet = make_rtp(1, 2, ext=one_byte((1, b"a"), (2, b"b")))
    assert aio_extensions(rtp.rewrite(packet, extension_ids={1: 15, 2: 0})) == []


def test_rewrite_two_byte_elements():
    packet = make_rtp(1, 2, b"p", ext=two_byte((1, b""), (200, b"x" * 20), (16, b"mid")))
    out = rtp.rewrite(packet, extension_ids={200: 3, 16: 250}, drop_extensions={1})
    assert aio_extensions(out) == [(3, b"x" * 20), (250, b"mid")]
    assert aio.RtpPacket.parse(out).payload == b"p"


def test_rewrite_clears_what_follows_id_15():
    profile, data = 0xBEDE, bytes([0x10, 0xAA, 0xF0, 0x20, 0x01, 0x02, 0, 0])
    out = rtp.rewrite(make_rtp(1, 2, ext=(profile, data)), extension_ids={1: 4})
    assert out[16:24] == bytes([0x40, 0xAA, 0, 0, 0, 0, 0, 0])


def test_rewrite_value_same_length_in_place():
    packet = make_rtp(1, 2, b"payload", ext=one_byte((3, b"0"), (1, b"\x50")))
    out = rtp.rewrite(packet, extension_ids={3: 4}, extension_values={4: b"7"})
    assert len(out) == len(packet)
    assert aio_extensions(out) == [(4, b"7"), (1, b"\x50")]


@pytest.mark.parametrize("padding", [0, 4])
def test_rewrite_value_of_another_length_rebuilds_the_block(padding):
    packet = make_rtp(1, 2, b"payload", csrcs=(3,), ext=one_byte((3, b"0"), (1, b"\x50")), padding=padding)
    out = rtp.rewrite(packet, ssrc=9, extension_values={3: b"screen-share"})
    theirs = aio.RtpPacket.parse(out)
    assert theirs.payload == b"payload" and theirs.ssrc == 9 and theirs.csrc == [3]
    assert theirs.padding_size == padding
    assert aio_extensions(out) == [(3, b"screen-share"), (1, b"\x50")]
    # a value longer than 16 bytes needs the two-byte form (RFC 8285 section 4.3)
    out = rtp.rewrite(packet, extension_values={3: b"m" * 17})
    assert RtpHeader.parse(out).extension_profile == 0x1000
    assert aio_extensions(out) == [(3, b"m" * 17), (1, b"\x50")]


def test_rebuild_to_an_empty_value_uses_the_two_byte_form():
    """RFC 8285 section 4.3: only the two-byte form carries zero-length values."""
    packet = make_rtp(1, 2, b"payload", ext=one_byte((3, b"0"), (1, b"\x50")))
    out = rtp.rewrite(packet, drop_extensions={1}, extension_values={3: b""})
    assert RtpHeader.parse(out).extension_profile == 0x1000
    assert aio_extensions(out) == [(3, b"")]
    assert aio.RtpPacket.parse(out).payload == b"payload"


def test_rewrite_leaves_other_profiles_alone():
    packet = make_rtp(1, 2, ext=(0x1234, b"\x10\x01\x00\x00"))
    assert rtp.rewrite(packet, extension_ids={1: 2}, drop_extensions={1}) == packet


def test_rewrite_into_edits_in_place_and_leaves_bad_packets_unchanged():
    buf = bytearray(make_rtp(1, 2, b"x", ext=one_byte((1, b"a"))))
    rtp.rewrite_into(buf, sequence=9, extension_ids={1: 2})
    assert RtpHeader.parse(buf).sequence == 9 and RtpHeader.parse(buf).extensions == {2: b"a"}
    bad = bytearray(make_rtp(1, 2, b"", ext=(0xBEDE, bytes([0x13, 1, 2, 0]))))
    before = bytes(bad)
    with pytest.raises(RtpError):
        rtp.rewrite_into(bad, ssrc=5, drop_extensions={1})
    assert bytes(bad) == before
    with pytest.raises(RtpError):
        rtp.rewrite(make_rtp(1, 2), payload_type=128)


# -- RTX (RFC 4588) -----------------------------------------------------------------------


def test_unwrap_rtx_matches_aiortc():
    original = aio.RtpPacket(payload_type=96, marker=1, sequence_number=4242, timestamp=90000, ssrc=1111,
                             payload=b"frame")
    wrapped = aio.wrap_rtx(original, payload_type=97, sequence_number=7, ssrc=2222).serialize()
    ours = rtp.unwrap_rtx(wrapped, payload_type=96, ssrc=1111)
    assert ours == original.serialize()
    theirs = aio.unwrap_rtx(aio.RtpPacket.parse(wrapped), payload_type=96, ssrc=1111)
    assert ours == theirs.serialize()


def test_unwrap_rtx_removes_padding_and_refuses_probes():
    rtx_packet = make_rtp(7, 2222, b"\x10\x92" + b"frame", pt=97, padding=8)
    out = rtp.unwrap_rtx(rtx_packet, payload_type=96, ssrc=1111)
    assert aio.RtpPacket.parse(out).payload == b"frame" and RtpHeader.parse(out).sequence == 0x1092
    assert not RtpHeader.parse(out).padding
    with pytest.raises(RtpError, match="padding only"):
        rtp.unwrap_rtx(make_rtp(7, 2222, b"", pt=97, padding=200), payload_type=96, ssrc=1111)


# -- properties ---------------------------------------------------------------------------

elements_one = st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=6)
elements_two = st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=40)), max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    elements=st.one_of(elements_one.map(lambda e: ("one", e)), elements_two.map(lambda e: ("two", e))),
    csrcs=st.lists(st.integers(0, 2**32 - 1), max_size=15),
    payload=st.binary(max_size=64),
    padding=st.integers(0, 12),
    mapping=st.dictionaries(st.integers(1, 255), st.integers(0, 255), max_size=8),
    drop=st.sets(st.integers(1, 255), max_size=4),
)
def test_parse_and_rewrite_agree_with_aiortc(elements, csrcs, payload, padding, mapping, drop):
    form, elems = elements
    ext = (one_byte if form == "one" else two_byte)(*elems) if elems else None
    packet = make_rtp(3, 4, payload, csrcs=tuple(csrcs), ext=ext, padding=padding)
    ours = check_against_aiortc(packet)
    first: dict[int, bytes] = {}
    for i, v in aio_extensions(packet):
        first.setdefault(i, v)
    assert ours.extensions == first
    out = rtp.rewrite(packet, ssrc=77, sequence=8, extension_ids=mapping, drop_extensions=drop)
    assert len(out) == len(packet)
    theirs = aio.RtpPacket.parse(out)
    assert (theirs.ssrc, theirs.sequence_number, theirs.payload) == (77, 8, payload)
    limit = 14 if form == "one" else 255
    expected = []
    for i, v in aio_extensions(packet):
        if i in drop:
            continue
        new = mapping.get(i, i)
        if 1 <= new <= limit:
            expected.append((new, v))
    assert aio_extensions(out) == expected


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 255))
def test_garbage_raises_only_rtp_error(data, ext_id):
    for call in (
        lambda: RtpHeader.parse(data),
        lambda: rtp.rewrite(data, ssrc=1, sequence=2, extension_ids={ext_id: 3}, drop_extensions={4},
                            extension_values={3: b"long value"}),
        lambda: rtp.audio_level(data, ext_id),
        lambda: rtp.mid(data, ext_id),
        lambda: rtp.unwrap_rtx(data, payload_type=96, ssrc=1),
    ):
        try:
            call()
        except RtpError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=80))
def test_garbage_with_a_valid_first_byte_parses_like_aiortc_or_raises(data):
    data = bytes([0x80 | (data[0] & 0x3F)]) + data[1:]
    try:
        ours = RtpHeader.parse(data)
    except RtpError:
        return
    theirs = aio.RtpPacket.parse(data)  # aiortc accepts whatever we accept
    assert theirs.ssrc == ours.ssrc and list(ours.csrcs) == theirs.csrc


def test_validate_walks_the_extension_elements():
    good = make_rtp(1, 2, b"x", ext=one_byte((1, b"a")))
    assert rtp.validate(good) == rtp.layout(good)
    bad = make_rtp(1, 2, b"", ext=(0xBEDE, bytes([0x13, 1, 2, 0])))
    rtp.layout(bad)  # the framing alone is fine
    with pytest.raises(RtpError, match="runs past"):
        rtp.validate(bad)

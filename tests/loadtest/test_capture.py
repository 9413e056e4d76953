"""loadtest.capture: pcap/pcapng reading, link types, IP variants and damaged files."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.capture import (
    CaptureError,
    CaptureReader,
    CorruptCaptureError,
    EmptyCaptureError,
    NotACaptureError,
    TruncatedCaptureError,
    UdpDatagram,
    UnknownLinkTypeError,
    read_udp,
)
from tests.loadtest import writers as w

CAPTURES = Path(__file__).parents[2].parent / "shared" / "captures"
REAL = {"opus_voice_10s.pcap": 501, "vp8_screen_10s.pcap": 1666, "pcmu_voice_10s.pcap": 500}


def real(name: str) -> Path:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"shared capture {path} is absent")
    return path


@pytest.mark.parametrize("name,count", sorted(REAL.items()))
def test_real_captures(name, count):
    reader = CaptureReader(real(name))
    got = list(reader)
    assert len(got) == count and reader.packets == count
    assert reader.problem is None and reader.format == "pcap" and reader.linktypes == {1}
    assert all(d.src[0] == "127.0.0.1" and d.dst[0] == "127.0.0.1" for d in got)
    assert all(d.payload[0] >> 6 == 2 for d in got)
    assert all(a.time <= b.time for a, b in zip(got, got[1:]))


@pytest.fixture(scope="module")
def opus() -> list[UdpDatagram]:
    return list(read_udp(real("opus_voice_10s.pcap")))


def _same(a: list[UdpDatagram], b: list[UdpDatagram], tol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.src, x.dst, x.payload) == (y.src, y.dst, y.payload)
        assert abs(x.time - y.time) <= tol


def _as_v6(ds: list[UdpDatagram]) -> list[UdpDatagram]:
    return [UdpDatagram(d.time, ("2001:db8::1", d.src[1]), ("2001:db8::2", d.dst[1]), d.payload) for d in ds]


LINKTYPES = [0, 1, 101, 108, 113, 228, 276]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("linktype", LINKTYPES)
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize(
    "fmt", ["pcap-us", "pcap-ns", "pcapng", "pcapng-ns", "pcapng-pow2"]
)
def test_rewritten_formats_give_identical_datagrams(opus, fmt, linktype, v6, order):
    src = _as_v6(opus) if v6 else opus
    if linktype == 228 and v6:
        linktype = 229
    frames = [(d.time, w.frame(linktype, d, null_order=order)) for d in src]
    if fmt == "pcap-us":
        data = w.write_pcap(frames, linktype, order=order)
    elif fmt == "pcap-ns":
        data = w.write_pcap(frames, linktype, nano=True, order=order)
    elif fmt == "pcapng":
        data = w.write_pcapng(frames, linktype, order=order)
    elif fmt == "pcapng-ns":
        data = w.write_pcapng(frames, linktype, order=order, tsresol=9)
    else:
        data = w.write_pcapng(frames, linktype, order=order, tsresol=0x80 | 20)
    reader = CaptureReader(data)
    _same(list(reader), src)
    assert reader.packets == len(src) and reader.problem is None


def test_pcapng_simple_packet_blocks(opus):
    frames = [(d.time, w.frame(1, d)) for d in opus[:20]]
    got = list(read_udp(w.write_pcapng(frames, 1, simple=True)))
    assert [(d.src, d.dst, d.payload) for d in got] == [(d.src, d.dst, d.payload) for d in opus[:20]]


def test_pcapng_two_sections_of_different_byte_order(opus):
    a = [(d.time, w.frame(1, d)) for d in opus[:5]]
    b = [(d.time, w.frame(113, d)) for d in opus[5:10]]
    data = w.write_pcapng(a, 1, order="<") + w.write_pcapng(b, 113, order=">", tsresol=9)
    _same(list(read_udp(data)), opus[:10])


def test_ethernet_vlan_padding_and_ip_options():
    d = UdpDatagram(1.5, ("10.1.2.3", 1234), ("10.3.2.1", 4321), b"\x80\x00" + b"x" * 20)
    frames = [
        (1.5, w.frame(1, d, vlan=1)),
        (1.5, w.frame(1, d, vlan=2, pad=30)),
        (1.5, b"\x02" * 12 + b"\x08\x00" + w.ipv4_packet(d, options=b"\x01\x01\x01\x00")),
    ]
    got = list(read_udp(w.write_pcap(frames, 1)))
    assert got == [d, d, d]


def test_fragments_non_udp_and_ipv6_extension_headers():
    d4 = UdpDatagram(2.0, ("10.0.0.1", 1), ("10.0.0.2", 2), b"payload")
    d6 = UdpDatagram(2.0, ("::1", 1), ("::2", 2), b"payload")
    raw = [
        w.ipv4_packet(d4, frag=0x2000),  # first fragment (MF set, offset 0): kept
        w.ipv4_packet(d4, frag=0x0010),  # later fragment: skipped
        w.ipv4_packet(d4, proto=6),  # TCP: skipped
        w.ipv6_packet(d6, ext=[(0, b"\x01\x04\x00\x00\x00\x00"), (60, b"\x00" * 14)]),  # hop-by-hop, dest opts
        w.ipv6_packet(d6, ext=[(43, b"\x00" * 6)]),  # routing header
        w.ipv6_packet(d6, ext=[(44, b"\x00" * 6)]),  # fragment: skipped
        b"\x45\x00",  # too short
        b"",
    ]
    got = list(read_udp(w.write_pcap([(2.0, r) for r in raw], 101)))
    assert got == [d4, d6, d6]


def test_unknown_link_type_names_the_number():
    with pytest.raises(UnknownLinkTypeError, match=r"\b147\b") as info:
        CaptureReader(w.write_pcap([(0.0, b"abc")], 147))
    assert info.value.linktype == 147
    with pytest.raises(UnknownLinkTypeError, match=r"\b195\b"):
        list(read_udp(w.write_pcapng([(0.0, b"abc")], 195)))


def test_empty_and_not_a_capture(tmp_path):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(EmptyCaptureError, match="empty"):
        CaptureReader(empty)
    text = tmp_path / "notes.pcap"
    text.write_text("hello, this is not a capture\n")
    with pytest.raises(NotACaptureError, match="not a capture file"):
        CaptureReader(text)
    # A pcap-looking name does not matter; a .txt name holding pcap data reads fine.
    real_data = w.write_pcap([(0.0, w.frame(101, UdpDatagram(0.0, ("1.2.3.4", 1), ("5.6.7.8", 2), b"x")))], 101)
    odd = tmp_path / "capture.txt"
    odd.write_bytes(real_data)
    assert len(list(read_udp(odd))) == 1


def _small_captures() -> dict[str, bytes]:
    ds = [UdpDatagram(10 + i * 0.02, ("10.0.0.1", 5000), ("10.0.0.2", 6000), w.rtp(i, i * 160, 7)) for i in range(6)]
    frames = [(d.time, w.frame(1, d)) for d in ds]
    return {
        "pcap": w.write_pcap(frames, 1),
        "pcap-be-ns": w.write_pcap(frames, 1, nano=True, order=">"),
        "pcapng": w.write_pcapng(frames, 1),
        "pcapng-be": w.write_pcapng(frames, 1, order=">", tsresol=9),
    }


@pytest.mark.parametrize("kind", sorted(_small_captures()))
def test_every_truncation_point(kind):
    data = _small_captures()[kind]
    full = list(read_udp(data))
    assert len(full) == 6
    for cut in range(len(data)):
        try:
            reader = CaptureReader(data[:cut])
            got = list(reader)
        except CaptureError as exc:
            assert str(exc) and "\n" not in str(exc)
            continue
        # A clean partial read: a prefix of the packets, and the damage reported unless the cut
        # fell exactly between records.
        assert got == full[: len(got)]
        assert reader.packets <= 6
        if reader.problem is not None:
            assert isinstance(reader.problem, TruncatedCaptureError)
            assert reader.problem.packets_read == reader.packets
            assert f"byte {reader.problem.offset}" in str(reader.problem)
            with pytest.raises(TruncatedCaptureError):
                list(CaptureReader(data[:cut], strict=True))


def test_truncated_record_reports_offset_and_count():
    data = _small_captures()["pcap"]
    cut = len(data) - 10
    reader = CaptureReader(data[:cut])
    assert len(list(reader)) == 5
    assert reader.problem is not None and reader.problem.packets_read == 5
    assert "truncated at byte" in str(reader.problem) and "5 packets read" in str(reader.problem)
    with pytest.raises(TruncatedCaptureError) as info:
        list(CaptureReader(data[:cut], strict=True))
    assert info.value.offset == reader.problem.offset


def test_corrupt_record_length():
    data = bytearray(_small_captures()["pcap"])
    struct.pack_into("<I", data, 24 + 8, 0x7FFFFFFF)  # first record claims 2 GiB
    with pytest.raises(CorruptCaptureError, match="corrupt at byte 24"):
        CaptureReader(bytes(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_garbage_only_raises_capture_error(blob):
    for prefix in (b"", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a", b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x4d\x3c\x2b\x1a"):
        try:
            list(read_udp(prefix + blob))
        except CaptureError:
            pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_small_captures())), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
def test_mutated_captures_only_raise_capture_error(kind, edits):
    data = bytearray(_small_captures()[kind])
    for pos, value in edits:
        data[pos % len(data)] = value
    try:
        reader = CaptureReader(bytes(data))
        for d in reader:
            assert isinstance(d.payload, bytes)
    except CaptureError:
        pass


def test_directory_is_a_capture_error(tmp_path):
    with pytest.raises(CaptureError, match="directory"):
        CaptureReader(tmp_path)


def test_missing_file_is_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        CaptureReader(os.path.join(tmp_path, "nope.pcap"))


def test_interface_option_past_its_block_is_corrupt():
    data = w.write_pcapng([], 1, tsresol=9, extra_blocks=False)
    i = data.index(b"\x09\x00\x01\x00")  # if_tsresol, length 1
    bad = data[:i] + b"\x09\x00\xc8\x00" + data[i + 4 :]
    with pytest.raises(CorruptCaptureError, match="option runs past"):
        CaptureReader(bad)

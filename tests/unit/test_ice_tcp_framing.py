"""RFC 4571 framing and the shared TCP port's first-bytes rule (callsgw/transport/tcp.py, issue #18).

The samples come from independent implementations: a STUN binding request built by aioice (as an
ICE-TCP peer's first frame, RFC 6544 section 7.1) and a TLS ClientHello written by Python's ssl
module. Truncated and garbage inputs must give NEED_MORE/OTHER or a FramingError, never an
exception of another kind.
"""

from __future__ import annotations

import ssl

import pytest
from aioice import stun as aiostun
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.transport.tcp import (
    MAX_FIRST_FRAME, MAX_FRAME, FrameDecoder, FramingError, Start, classify_start, frame,
)


def binding_request(username: str = "gwufrag1:peer") -> bytes:
    msg = aiostun.Message(message_method=aiostun.Method.BINDING, message_class=aiostun.Class.REQUEST)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 1845501695
    msg.attributes["ICE-CONTROLLING"] = 12345
    msg.add_message_integrity(b"p" * 24)
    msg.add_fingerprint()
    return bytes(msg)


def client_hello() -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="gw.example")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_ice_tcp_start_is_an_rfc4571_frame_holding_a_binding_request():
    data = frame(binding_request()) + frame(b"\x16\xfe\xfd" + b"\x00" * 20)
    assert classify_start(data) is Start.ICE
    assert classify_start(data[:10]) is Start.ICE


def test_tls_client_hello_is_tls_from_its_first_byte():
    hello = client_hello()
    assert hello[0] == 0x16
    assert classify_start(hello) is Start.TLS
    assert classify_start(hello[:1]) is Start.TLS


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0", b"\xff" * 16, b"\x03" * 10])
def test_plain_http_and_garbage_are_other(data):
    assert classify_start(data) is Start.OTHER


def test_every_truncation_of_an_ice_start_waits_for_more():
    data = frame(binding_request())
    assert classify_start(b"") is Start.NEED_MORE
    for n in range(1, 10):
        assert classify_start(data[:n]) is Start.NEED_MORE, n


@pytest.mark.parametrize("mutate", [
    lambda d: d[:2] + b"\x01\x01" + d[4:],  # a binding success response, not a request
    lambda d: d[:2] + b"\x00\x03" + d[4:],  # an allocate request (TURN), not a binding request
    lambda d: d[:6] + b"\x21\x12\xa4\x43" + d[10:],  # wrong magic cookie (RFC 5389 section 6)
    lambda d: b"\x00\x10" + d[2:],  # frame shorter than the STUN message it holds
    lambda d: bytes([d[0], d[1] + 4]) + d[2:],  # frame longer than the STUN message
    lambda d: (MAX_FIRST_FRAME + 4).to_bytes(2, "big") + d[2:4] + (MAX_FIRST_FRAME - 16).to_bytes(2, "big") + d[6:],
    lambda d: bytes([d[0], d[1] + 1]) + d[2:4] + bytes([d[4], d[5] + 1]) + d[6:],  # not a multiple of 4
])
def test_a_first_frame_that_is_not_a_binding_request_is_not_ice(mutate):
    assert classify_start(mutate(frame(binding_request()))) is Start.OTHER


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=32))
def test_garbage_is_classified_without_error(data):
    assert classify_start(data) in set(Start)


def test_decoder_cuts_frames_fed_byte_by_byte():
    packets = [binding_request(), b"\x80" * 172, b"\x17\xfe\xfd" + b"x" * 60]
    stream = b"".join(frame(p) for p in packets)
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i:i + 1]))
        assert decoder.buffered <= MAX_FRAME + 2
    assert out == packets and decoder.buffered == 0 and decoder.frames == 3


def test_decoder_holds_a_truncated_frame_until_the_rest_arrives():
    packet = b"\x80" * 300
    data = frame(packet)
    decoder = FrameDecoder()
    assert decoder.feed(data[:1]) == [] and decoder.feed(data[1:150]) == []
    assert decoder.buffered == 148
    assert decoder.feed(data[150:] + data[:1]) == [packet]
    assert decoder.buffered == 1  # the next frame's first length byte
    assert decoder.feed(data[1:]) == [packet] and decoder.buffered == 0


def test_zero_length_frames_are_skipped_and_counted():
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00" + frame(b"ab") + b"\x00\x00") == [b"ab"]
    assert decoder.empty == 2


def test_a_frame_longer_than_the_media_port_accepts_fails_the_stream():
    decoder = FrameDecoder()
    with pytest.raises(FramingError, match="longer than"):
        decoder.feed((MAX_FRAME + 1).to_bytes(2, "big") + b"x" * 10)
    with pytest.raises(FramingError):
        decoder.feed(frame(b"ok"))  # no resynchronisation after a lost frame boundary
    assert decoder.buffered == 0


def test_a_tls_record_read_as_framing_is_refused_without_buffering():
    decoder = FrameDecoder()
    with pytest.raises(FramingError):
        decoder.feed(client_hello())  # 0x16 0x03 = 5635 bytes claimed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=64))
def test_garbage_streams_give_frames_or_framing_error_with_a_bounded_buffer(data, step):
    decoder = FrameDecoder()
    try:
        for i in range(0, len(data), step):
            for packet in decoder.feed(data[i:i + step]):
                assert 1 <= len(packet) <= MAX_FRAME
            assert decoder.buffered <= MAX_FRAME + 2
    except FramingError:
        assert decoder.failed


def test_frame_refuses_what_a_16_bit_length_cannot_say():
    assert frame(b"") == b"\x00\x00"
    with pytest.raises(FramingError):
        frame(b"x" * 65536)

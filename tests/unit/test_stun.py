"""callsgw.wire.stun: strict STUN over aioice, checked against RFC 5769 and aioice's encoder."""

from __future__ import annotations

import hmac
import struct
import types
import zlib

import aioice
import pytest
from aioice import stun as aioice_stun
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.wire import stun
from callsgw.wire.stun import FingerprintError, StunError, Verdict

# RFC 5769 section 2: sample messages, short-term password "VOkJxbRl1RmTxUk/WvJxBt".
RFC5769_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
# RFC 5769 section 2.1: request with SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME
# "evtj:h6vY" (padded with spaces), MESSAGE-INTEGRITY, FINGERPRINT.
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e20746573742063" "6c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
# RFC 5769 section 2.2: IPv4 response, XOR-MAPPED-ADDRESS 192.0.2.1:32853.
RFC5769_RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
# RFC 5769 section 2.3: IPv6 response, XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853.
RFC5769_RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)

PWD = "gwPassword0123456789abcdef"
USERNAME = "gwUfrag01:peerA"


def aioice_request(
    username: str | None = USERNAME,
    key: str | None = PWD,
    *,
    fingerprint: bool = True,
    **extra,
) -> bytes:
    """A Binding request encoded by aioice (independent of callsgw)."""
    attrs = {}
    if username is not None:
        attrs["USERNAME"] = username
    attrs["PRIORITY"] = 0x6E0001FF
    attrs["ICE-CONTROLLING"] = 0x0102030405060708
    attrs.update(extra)
    msg = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST, attributes=attrs)
    if key is not None:
        msg.add_message_integrity(key.encode())  # also adds FINGERPRINT
        if not fingerprint:
            del msg.attributes["FINGERPRINT"]
    elif fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


def refingerprint(data: bytes) -> bytes:
    """Recompute a trailing FINGERPRINT with zlib (RFC 8489 section 14.7)."""
    body = data[:2] + struct.pack("!H", len(data) - 20) + data[4:-8]
    crc = zlib.crc32(body) ^ 0x5354554E
    return body + struct.pack("!HHI", 0x8028, 4, crc)


# -- RFC 5769 vectors --------------------------------------------------------


def test_rfc5769_request():
    msg = stun.parse(RFC5769_REQUEST)
    assert msg.message_method == stun.Method.BINDING
    assert msg.message_class == stun.Class.REQUEST
    assert msg.transaction_id == RFC5769_TID
    assert msg.attributes["USERNAME"] == "evtj:h6vY"
    assert msg.attributes["SOFTWARE"] == "STUN test client"
    assert msg.attributes["ICE-CONTROLLED"] == 0x932FF9B151263B36
    assert stun.verify(RFC5769_REQUEST, msg, RFC5769_PASSWORD)
    assert stun.verify(RFC5769_REQUEST, msg, RFC5769_PASSWORD.encode())
    assert not stun.verify(RFC5769_REQUEST, msg, RFC5769_PASSWORD + "x")
    assert stun.username_of(RFC5769_REQUEST) == "evtj:h6vY"
    assert stun.ufrags(msg) == ("evtj", "h6vY")
    assert stun.ufrags(RFC5769_REQUEST) == ("evtj", "h6vY")  # raw datagram, for routing


@pytest.mark.parametrize(
    ("data", "mapped"),
    [
        (RFC5769_RESPONSE_V4, ("192.0.2.1", 32853)),
        (RFC5769_RESPONSE_V6, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_responses(data, mapped):
    msg = stun.parse(data)
    assert msg.message_class == stun.Class.RESPONSE
    assert msg.transaction_id == RFC5769_TID
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == mapped
    assert stun.authenticate(data, RFC5769_PASSWORD) is Verdict.OK
    assert stun.username_of(data) is None


# -- our builders, read back by aioice and by our verifier --------------------


@pytest.mark.parametrize(
    ("addr", "mapped"),
    [
        (("192.0.2.1", 32853), ("192.0.2.1", 32853)),
        (("203.0.113.7", 1), ("203.0.113.7", 1)),
        (("2001:db8::1", 65535), ("2001:db8::1", 65535)),
        (("::ffff:198.51.100.4", 5000), ("198.51.100.4", 5000)),  # dual-stack socket
    ],
)
def test_binding_success_round_trip(addr, mapped):
    request_bytes = aioice_request()
    request = stun.parse(request_bytes)
    response_bytes = stun.binding_success(request, addr, PWD)

    # aioice reads it and checks the HMAC with its own code.
    theirs = aioice_stun.parse_message(response_bytes)
    assert theirs.message_method == aioice_stun.Method.BINDING
    assert theirs.message_class == aioice_stun.Class.RESPONSE
    assert theirs.transaction_id == request.transaction_id
    assert theirs.attributes["XOR-MAPPED-ADDRESS"] == mapped
    assert theirs.check_message_integrity(PWD.encode())
    assert not theirs.check_message_integrity(b"another password")
    assert list(theirs.attributes)[-2:] == ["MESSAGE-INTEGRITY", "FINGERPRINT"]
    assert "SOFTWARE" not in theirs.attributes

    # And so does our own parser and verifier (hmac/zlib, not aioice).
    ours = stun.parse(response_bytes)
    assert stun.verify(response_bytes, ours, PWD)
    assert ours.attributes["XOR-MAPPED-ADDRESS"] == mapped


@pytest.mark.parametrize(
    ("addr", "vector"),
    [
        (("192.0.2.1", 32853), RFC5769_RESPONSE_V4),
        (("2001:db8:1234:5678:11:2233:4455:6677", 32853), RFC5769_RESPONSE_V6),
    ],
)
def test_xor_mapped_address_matches_rfc5769(addr, vector):
    # RFC 8489 section 14.2: port XOR 0x2112, address XOR the magic cookie
    # (and the transaction ID for IPv6). Same transaction ID as the vectors.
    request = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST, RFC5769_TID)
    ours = stun.binding_success(request, addr, RFC5769_PASSWORD)
    attr = vector[36 : vector.index(bytes.fromhex("00080014"))]  # after the 16-byte SOFTWARE attribute
    assert attr[:2] == b"\x00\x20"
    assert ours[20 : 20 + len(attr)] == attr


def test_binding_error_round_trip():
    request = stun.parse(aioice_request())
    data = stun.binding_error(request, 487, "Role Conflict", PWD)
    theirs = aioice_stun.parse_message(data)
    assert theirs.message_class == aioice_stun.Class.ERROR
    assert theirs.transaction_id == request.transaction_id
    assert theirs.error_code == 487
    assert theirs.attributes["ERROR-CODE"] == (487, "Role Conflict")
    assert theirs.check_message_integrity(PWD.encode())
    assert stun.authenticate(data, PWD) is Verdict.OK


def test_builders_refuse_what_is_not_a_request():
    response = stun.parse(RFC5769_RESPONSE_V4)
    with pytest.raises(ValueError):
        stun.binding_success(response, ("192.0.2.1", 1), PWD)
    with pytest.raises(ValueError):
        stun.binding_error(response, 487, "Role Conflict", PWD)
    allocate = aioice_stun.Message(aioice_stun.Method.ALLOCATE, aioice_stun.Class.REQUEST)
    with pytest.raises(ValueError):
        stun.binding_success(allocate, ("192.0.2.1", 1), PWD)
    with pytest.raises(ValueError):
        stun.binding_error(stun.parse(aioice_request()), 200, "OK", PWD)
    with pytest.raises(ValueError):
        stun.binding_success(stun.parse(aioice_request()), ("not-an-ip", 1), PWD)


# -- a request exactly as aioice's ICE agent (and so aiortc) sends it ----------


def test_aioice_connectivity_check_parses_and_verifies():
    peer = aioice.Connection(ice_controlling=True)
    peer.remote_username = "gwUfrag01"
    peer.remote_password = PWD
    request = peer.build_request(types.SimpleNamespace(component=1), nominate=True)
    # What StunProtocol.request() does before sending (aioice/ice.py).
    request.add_message_integrity(peer.remote_password.encode("utf8"))
    data = bytes(request)

    msg = stun.parse(data)
    assert msg.transaction_id == request.transaction_id
    assert stun.ufrags(msg) == ("gwUfrag01", peer.local_username)
    assert stun.username_of(data) == f"gwUfrag01:{peer.local_username}"
    assert "USE-CANDIDATE" in msg.attributes
    assert stun.verify(data, msg, PWD)
    assert stun.authenticate(data, peer.local_password) is Verdict.BAD_INTEGRITY


# -- verification failures -----------------------------------------------------


def test_wrong_key_is_bad_integrity():
    data = aioice_request(key="someone elses password!!")
    msg = stun.parse(data)
    assert not stun.verify(data, msg, PWD)
    assert stun.authenticate(data, PWD) is Verdict.BAD_INTEGRITY


def test_missing_integrity_and_fingerprint():
    no_mi = aioice_request(key=None)
    assert stun.authenticate(no_mi, PWD) is Verdict.NO_INTEGRITY
    assert not stun.verify(no_mi, stun.parse(no_mi), PWD)
    no_fp = aioice_request(fingerprint=False)
    assert stun.authenticate(no_fp, PWD) is Verdict.NO_FINGERPRINT
    assert not stun.verify(no_fp, stun.parse(no_fp), PWD)
    neither = aioice_request(key=None, fingerprint=False)
    assert stun.authenticate(neither, PWD) is Verdict.NO_INTEGRITY


def test_bad_fingerprint():
    data = bytearray(aioice_request())
    data[-1] ^= 0x01
    with pytest.raises(FingerprintError):
        stun.parse(bytes(data))
    assert stun.authenticate(bytes(data), PWD) is Verdict.BAD_FINGERPRINT


def test_tampered_body_with_recomputed_fingerprint_is_bad_integrity():
    # An attacker can fix up the CRC but not the HMAC.
    data = bytearray(aioice_request(username="gwUfrag01:peerA"))
    i = bytes(data).index(b"peerA")
    data[i] ^= 0x20  # "PeerA"
    forged = refingerprint(bytes(data))
    msg = stun.parse(forged)
    assert msg.attributes["USERNAME"] == "gwUfrag01:PeerA"
    assert stun.authenticate(forged, PWD) is Verdict.BAD_INTEGRITY
    assert not stun.verify(forged, msg, PWD)


def test_verify_refuses_a_message_from_another_datagram():
    a, b = aioice_request(), aioice_request()
    assert not stun.verify(a, stun.parse(b), PWD)


def test_attributes_between_integrity_and_fingerprint_are_ignored():
    # RFC 8489 section 14.5: not covered by the HMAC, so ignored (aioice drops them).
    msg = aioice_stun.Message(
        aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST, attributes={"USERNAME": USERNAME}
    )
    msg.add_message_integrity(PWD.encode())
    del msg.attributes["FINGERPRINT"]
    msg.attributes["PRIORITY"] = 7
    data = refingerprint(bytes(msg) + bytes(8))
    parsed = stun.parse(data)
    assert "PRIORITY" not in parsed.attributes
    assert stun.verify(data, parsed, PWD)


def test_truncation_at_every_length():
    data = aioice_request()
    for n in range(len(data)):
        with pytest.raises(StunError):
            stun.parse(data[:n])
        assert stun.authenticate(data[:n], PWD) is Verdict.MALFORMED
        assert stun.username_of(data[:n]) is None


def test_truncation_with_a_fixed_up_length_field():
    # The header length is rewritten to match, so only the attribute walk can tell.
    data = aioice_request()
    for n in range(20, len(data)):
        cut = data[:2] + struct.pack("!H", n - 20) + data[4:n]
        try:
            msg = stun.parse(cut)
        except StunError:
            continue
        assert not stun.verify(cut, msg, PWD)


def test_every_single_bit_flip_is_caught():
    data = aioice_request()
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        flipped = bytes(flipped)
        try:
            msg = stun.parse(flipped)
        except StunError:
            continue
        assert not stun.verify(flipped, msg, PWD), f"bit {bit} survived"


# -- framing that aioice accepts but RFC 8489 does not ------------------------


def _header(msg_type: int, length: int, cookie: int = 0x2112A442, tid: bytes = b"T" * 12) -> bytes:
    return struct.pack("!HHI12s", msg_type, length, cookie, tid)


def _attr(attr_type: int, value: bytes, declared: int | None = None) -> bytes:
    length = len(value) if declared is None else declared
    return struct.pack("!HH", attr_type, length) + value + bytes(-len(value) % 4)


def _message(*attrs: bytes, msg_type: int = 0x0001) -> bytes:
    body = b"".join(attrs)
    return _header(msg_type, len(body)) + body


FRAMING_ERRORS = [
    ("empty", b""),
    ("short header", _header(0x0001, 0)[:19]),
    ("top bits set", _header(0xC001, 0)),
    ("no magic cookie (RFC 3489)", _header(0x0001, 0, cookie=0)),
    ("length not a multiple of 4", _header(0x0001, 2) + b"\x00\x00"),
    ("length longer than datagram", _header(0x0001, 8) + _attr(0x0024, b"\x00\x00\x00\x01")[:4]),
    ("length shorter than datagram", _header(0x0001, 0) + _attr(0x0024, b"\x00\x00\x00\x01")),
    ("attribute overruns", _message(_attr(0x0006, b"abcd:efgh", declared=200))),
    ("padding overruns", _header(0x0001, 8) + struct.pack("!HH", 0x0006, 5) + b"abcd"),
    ("repeated USERNAME", _message(_attr(0x0006, b"aaaa:bbbb"), _attr(0x0006, b"cccc:dddd"))),
    ("repeated unknown attribute", _message(_attr(0xC057, b"\x00\x01\x00\x02"), _attr(0xC057, b"\0" * 4))),
    ("attribute after FINGERPRINT", _message(_attr(0x8028, b"\0" * 4), _attr(0x0024, b"\0" * 4))),
    ("MESSAGE-INTEGRITY of 16 bytes", _message(_attr(0x0008, b"\0" * 16))),
    ("FINGERPRINT of 8 bytes", _message(_attr(0x8028, b"\0" * 8))),
    ("oversize", _message(_attr(0xC000, b"\0" * 1500))),
]
# Well framed, but an attribute value or the method is wrong: aioice's decoders raise.
CONTENT_ERRORS = [
    ("PRIORITY of 2 bytes (struct.error in aioice)", _message(_attr(0x0024, b"\0\0"))),
    ("USERNAME not UTF-8 (UnicodeDecodeError in aioice)", _message(_attr(0x0006, b"\xff\xfe:abc"))),
    ("XOR-MAPPED-ADDRESS of unknown family", _message(_attr(0x0020, b"\x00\x03\x00\x01abcd"))),
    ("unknown method", _message(msg_type=0x0005)),
]


@pytest.mark.parametrize(("name", "data"), FRAMING_ERRORS)
def test_bad_framing_is_stun_error(name, data):
    with pytest.raises(StunError):
        stun.parse(data)
    assert stun.authenticate(data, PWD) is Verdict.MALFORMED
    assert stun.username_of(data) is None


@pytest.mark.parametrize(("name", "data"), CONTENT_ERRORS)
def test_bad_content_is_stun_error(name, data):
    with pytest.raises(StunError) as exc:
        stun.parse(data)
    assert exc.value.__cause__ is not None  # aioice's own exception, wrapped


def test_aioice_alone_accepts_what_we_refuse():
    # Documents why the framing is checked before aioice sees the bytes.
    overrun = _message(_attr(0x0006, b"abcd:efgh", declared=200))
    # It reads past the attribute (here into the padding) instead of refusing.
    assert aioice_stun.parse_message(overrun).attributes["USERNAME"] == "abcd:efgh\x00\x00\x00"
    assert aioice_stun.parse_message(_header(0x0001, 0, cookie=0)).message_method == aioice_stun.Method.BINDING
    repeated = _message(_attr(0x0006, b"aaaa:bbbb"), _attr(0x0006, b"cccc:dddd"))
    assert aioice_stun.parse_message(repeated).attributes["USERNAME"] == "cccc:dddd"  # last wins
    with pytest.raises(struct.error):  # not a ValueError
        aioice_stun.parse_message(_message(_attr(0x0024, b"\0\0")))


def test_max_size_boundary():
    padding = stun.MAX_STUN_SIZE - 20 - 4
    at_limit = _message(_attr(0xC000, b"\0" * padding))
    assert len(at_limit) == stun.MAX_STUN_SIZE
    stun.parse(at_limit)
    with pytest.raises(StunError):
        stun.parse(_message(_attr(0xC000, b"\0" * (padding + 4))))


def test_unknown_attributes_are_ignored():
    # 0xC057 is Chrome's GOOG-NETWORK-INFO (comprehension-optional).
    msg = stun.parse(_message(_attr(0xC057, b"\x00\x01\x00\x0a"), _attr(0x0006, USERNAME.encode())))
    assert msg.attributes == {"USERNAME": USERNAME}


def test_accepts_bytes_likes():
    data = aioice_request()
    assert stun.parse(bytearray(data)).attributes["USERNAME"] == USERNAME
    assert stun.authenticate(memoryview(data), PWD) is Verdict.OK
    assert stun.username_of(bytearray(data)) == USERNAME


# -- USERNAME helpers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("abcd:efgh", ("abcd", "efgh")),
        ("abcd:ef:gh", ("abcd", "ef:gh")),
        ("abcd", None),
        (":efgh", None),
        ("abcd:", None),
        ("", None),
        (None, None),
    ],
)
def test_split_username(username, expected):
    assert stun.split_username(username) == expected


def test_username_of_without_username_or_with_bad_utf8():
    assert stun.username_of(aioice_request(username=None)) is None
    assert stun.username_of(_message(_attr(0x0006, b"\xff:abcd"))) is None
    assert stun.username_of(b"\x16\xfe\xfd" + bytes(30)) is None
    assert stun.ufrags(stun.parse(aioice_request(username=None))) is None
    assert stun.ufrags(aioice_request(username=None)) is None
    assert stun.ufrags(b"garbage") is None
    assert stun.ufrags(bytearray(aioice_request())) == ("gwUfrag01", "peerA")


def test_username_of_is_the_only_username():
    # A router reading username_of() and a verifier reading parse() never disagree:
    # a second USERNAME makes both refuse.
    data = _message(_attr(0x0006, b"aaaa:bbbb"), _attr(0x0006, b"cccc:dddd"))
    assert stun.username_of(data) is None


def test_integrity_check_matches_a_hand_computed_hmac():
    # RFC 8489 section 14.5, computed here with hmac directly.
    data = aioice_request()
    mi = data.index(struct.pack("!HH", 0x0008, 20))
    covered = data[:2] + struct.pack("!H", mi - 20 + 24) + data[4:mi]
    assert hmac.new(PWD.encode(), covered, "sha1").digest() == data[mi + 4 : mi + 24]
    assert stun.authenticate(data, PWD) is Verdict.OK


# -- fuzz -------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=2000))
def test_garbage_raises_only_stun_error(data):
    try:
        stun.parse(data)
    except StunError:
        pass
    assert isinstance(stun.authenticate(data, PWD), Verdict)
    username = stun.username_of(data)
    assert username is None or isinstance(username, str)
    names = stun.ufrags(data)
    assert names is None or all(isinstance(n, str) and n for n in names)


_ATTR_TYPES = st.sampled_from(
    [0x0001, 0x0006, 0x0008, 0x0009, 0x000C, 0x0012, 0x0014, 0x0020, 0x0024, 0x0025, 0x8022, 0x8028, 0x8029,
     0x802A, 0x802B, 0xC057]
)


@settings(max_examples=500)
@given(
    st.sampled_from([0x0001, 0x0011, 0x0101, 0x0111, 0x0003, 0x0002, 0x3EEF]),
    st.lists(st.tuples(_ATTR_TYPES, st.binary(max_size=40)), max_size=6),
)
def test_structured_garbage_raises_only_stun_error(msg_type, attrs):
    # Well-framed messages with arbitrary attribute values reach aioice's decoders.
    data = _message(*(_attr(t, v) for t, v in attrs), msg_type=msg_type)
    try:
        msg = stun.parse(data)
    except StunError:
        return
    assert not stun.verify(data, msg, PWD) or stun.authenticate(data, PWD) is Verdict.OK

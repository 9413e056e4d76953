"""STUN (RFC 8489) for the gateway's ICE-lite side: a strict, thin layer over aioice.

aioice's codec (:mod:`aioice.stun`) decodes the attributes. This module adds
what a server facing the open Internet needs around it:

* :func:`parse` raises only :class:`StunError`, whatever the input. aioice's
  ``parse_message`` raises ``ValueError``, ``struct.error`` or
  ``UnicodeDecodeError`` depending on where the bytes are wrong, and it
  accepts a lot that RFC 8489 rejects, so the framing is checked here first:
  the size bound (:data:`MAX_STUN_SIZE`), the two zero bits and the magic
  cookie (section 5), a length that is a multiple of 4 and matches the
  datagram (section 5), every attribute inside the message (section 14),
  no repeated attribute type, MESSAGE-INTEGRITY exactly 20 bytes (section
  14.5) and FINGERPRINT exactly 4 bytes and last (section 14.7).
* :func:`authenticate` / :func:`verify` check MESSAGE-INTEGRITY (HMAC-SHA1
  over the message up to the attribute, with the length field adjusted,
  section 14.5; compared in constant time) and FINGERPRINT (CRC-32 XOR
  0x5354554e, section 14.7) straight from the datagram, with :mod:`hmac`
  and :mod:`zlib`. They do not depend on aioice, so tests that build
  requests with aioice check two independent implementations against each
  other.
* :func:`username_of` finds USERNAME without decoding the rest, so that a
  demultiplexer can route a request by its local ufrag before the owner
  verifies it.
* :func:`binding_success` and :func:`binding_error` build signed responses
  (RFC 8489 section 6.3.1.1) directly with :mod:`hmac` and :mod:`zlib`:
  aioice's ``Message`` serialises a message three times to sign it, which was
  most of the cost of answering a check. aioice decodes them in the tests.

Repeated attributes are refused outright. RFC 8489 section 14 only says that
the first occurrence is processed, but aioice keeps the last one, and a
message in which a router and a verifier could read different USERNAMEs has
no legitimate use.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import zlib
from typing import Final

from aioice import stun as _aioice

Message = _aioice.Message
Class = _aioice.Class
Method = _aioice.Method

__all__ = [
    "MAX_STUN_SIZE",
    "Class",
    "FingerprintError",
    "Message",
    "Method",
    "StunError",
    "Verdict",
    "authenticate",
    "binding_error",
    "binding_success",
    "parse",
    "split_username",
    "ufrags",
    "username_of",
    "verify",
]

#: Largest datagram accepted as STUN. ICE connectivity checks are 100 to 200
#: bytes; anything above an Ethernet MTU is not a check.
MAX_STUN_SIZE: Final = 1500

HEADER_LENGTH: Final = 20
MAGIC_COOKIE: Final = b"\x21\x12\xa4\x42"  # RFC 8489 section 5
FINGERPRINT_XOR: Final = 0x5354554E  # RFC 8489 section 14.7

ATTR_USERNAME: Final = 0x0006
ATTR_MESSAGE_INTEGRITY: Final = 0x0008
ATTR_FINGERPRINT: Final = 0x8028
ATTR_ERROR_CODE: Final = 0x0009
ATTR_XOR_MAPPED_ADDRESS: Final = 0x0020

INTEGRITY_LENGTH: Final = 20  # HMAC-SHA1 output
FINGERPRINT_LENGTH: Final = 4
#: The longest ICE USERNAME: two 256-character ufrags and a colon (RFC 8445
#: section 5.3). RFC 8489 section 14.3 bounds USERNAME to roughly this size.
MAX_USERNAME_LENGTH: Final = 513


class StunError(ValueError):
    """A datagram is not a well-formed STUN message (RFC 8489)."""


class FingerprintError(StunError):
    """The FINGERPRINT attribute does not match the message (RFC 8489 section 14.7)."""


class Verdict(enum.Enum):
    """Outcome of :func:`authenticate`, one value per reason for refusal."""

    OK = "ok"
    MALFORMED = "malformed"
    NO_INTEGRITY = "no_integrity"
    NO_FINGERPRINT = "no_fingerprint"
    BAD_FINGERPRINT = "bad_fingerprint"
    BAD_INTEGRITY = "bad_integrity"


class _Layout:
    """Where the attributes the gateway cares about sit in a datagram."""

    __slots__ = ("username", "integrity", "fingerprint")

    def __init__(self) -> None:
        self.username: tuple[int, int] | None = None  # value start, end
        self.integrity: int | None = None  # offset of the attribute header
        self.fingerprint: int | None = None  # offset of the attribute header


def _walk(data: bytes) -> _Layout:
    """Check the framing of a STUN message and locate its key attributes.

    RFC 8489 section 5 (header) and section 14 (attribute TLVs, padded to 4
    bytes). Raises :class:`StunError`.
    """
    n = len(data)
    if n > MAX_STUN_SIZE:
        raise StunError(f"datagram of {n} bytes exceeds {MAX_STUN_SIZE}")
    if n < HEADER_LENGTH:
        raise StunError(f"message of {n} bytes is shorter than the 20-byte header")
    if data[0] & 0xC0:
        raise StunError("the two most significant bits are not zero")
    length = (data[2] << 8) | data[3]
    if length & 3:
        raise StunError(f"message length {length} is not a multiple of 4")
    if length != n - HEADER_LENGTH:
        raise StunError(f"message length {length} does not match the {n - HEADER_LENGTH} bytes received")
    if data[4:8] != MAGIC_COOKIE:
        raise StunError("no magic cookie (RFC 3489 messages are not accepted)")

    layout = _Layout()
    seen: set[int] = set()
    pos = HEADER_LENGTH
    while pos < n:
        if layout.fingerprint is not None:
            raise StunError("attribute after FINGERPRINT")
        attr_type = (data[pos] << 8) | data[pos + 1]
        attr_len = (data[pos + 2] << 8) | data[pos + 3]
        end = pos + 4 + attr_len
        padded_end = end + (-attr_len & 3)
        if padded_end > n:
            raise StunError(f"attribute 0x{attr_type:04x} of {attr_len} bytes overruns the message")
        if attr_type in seen:
            raise StunError(f"attribute 0x{attr_type:04x} is repeated")
        seen.add(attr_type)
        if attr_type == ATTR_USERNAME:
            if attr_len > MAX_USERNAME_LENGTH:
                raise StunError(f"USERNAME of {attr_len} bytes is too long")
            layout.username = (pos + 4, end)
        elif attr_type == ATTR_MESSAGE_INTEGRITY:
            if attr_len != INTEGRITY_LENGTH:
                raise StunError(f"MESSAGE-INTEGRITY of {attr_len} bytes, not 20")
            layout.integrity = pos
        elif attr_type == ATTR_FINGERPRINT:
            if attr_len != FINGERPRINT_LENGTH:
                raise StunError(f"FINGERPRINT of {attr_len} bytes, not 4")
            layout.fingerprint = pos
        pos = padded_end
    return layout


def _with_length(data: bytes, end: int, length: int) -> bytes:
    """``data[:end]`` with the header's length field replaced by ``length``."""
    return data[0:2] + length.to_bytes(2, "big") + data[4:end]


def _fingerprint_matches(data: bytes, offset: int) -> bool:
    # RFC 8489 section 14.7: CRC-32 of the message up to (excluding) the
    # FINGERPRINT attribute, with the length field covering FINGERPRINT, XOR
    # 0x5354554e. FINGERPRINT is last, so that length is the real one.
    expected = zlib.crc32(data[0:offset]) ^ FINGERPRINT_XOR
    return int.from_bytes(data[offset + 4 : offset + 8], "big") == expected


def _integrity_matches(data: bytes, offset: int, key: bytes) -> bool:
    # RFC 8489 section 14.5: HMAC-SHA1 over the message up to (excluding)
    # MESSAGE-INTEGRITY, with the length field set as if MESSAGE-INTEGRITY
    # were the last attribute.
    covered = _with_length(data, offset, offset - HEADER_LENGTH + 4 + INTEGRITY_LENGTH)
    expected = hmac.new(key, covered, "sha1").digest()
    return hmac.compare_digest(expected, data[offset + 4 : offset + 4 + INTEGRITY_LENGTH])


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    return data if type(data) is bytes else bytes(data)


def _as_key(key: bytes | str) -> bytes:
    # Short-term credentials (RFC 8489 section 9.1.1): the key is the
    # OpaqueString-prepared password; ICE passwords are ASCII ice-chars
    # (RFC 8445 section 5.3), for which that preparation is the identity.
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def parse(data: bytes | bytearray | memoryview) -> Message:
    """Parse one STUN datagram into an aioice :class:`Message`.

    Checks the framing strictly (see the module docstring) and FINGERPRINT if
    present (raising :class:`FingerprintError`), then decodes the attributes
    with aioice. MESSAGE-INTEGRITY is not checked here: use :func:`verify`.

    Raises :class:`StunError` and nothing else, for any input. aioice's own
    exceptions (``ValueError``, ``struct.error``, ``UnicodeDecodeError``, and
    whatever a later aioice version raises) become :class:`StunError`.
    """
    data = _as_bytes(data)
    layout = _walk(data)
    if layout.fingerprint is not None and not _fingerprint_matches(data, layout.fingerprint):
        raise FingerprintError("FINGERPRINT does not match")
    try:
        return _aioice.parse_message(data)
    except Exception as exc:  # the contract is: StunError only, whatever aioice does
        raise StunError(f"malformed STUN message: {exc}") from exc


def authenticate(data: bytes | bytearray | memoryview, key: bytes | str) -> Verdict:
    """Check MESSAGE-INTEGRITY and FINGERPRINT of a datagram, both required.

    RFC 8489 section 14.5 (HMAC-SHA1 with the short-term key, compared with
    :func:`hmac.compare_digest`) and section 14.7 (CRC-32 XOR 0x5354554e).
    ICE requires both on every connectivity check (RFC 8445 section 7).
    Attributes between MESSAGE-INTEGRITY and FINGERPRINT are not covered by
    the HMAC and are ignored, as section 14.5 says (aioice drops them too).
    Never raises.
    """
    data = _as_bytes(data)
    try:
        layout = _walk(data)
    except StunError:
        return Verdict.MALFORMED
    if layout.integrity is None:
        return Verdict.NO_INTEGRITY
    if layout.fingerprint is None:
        return Verdict.NO_FINGERPRINT
    if not _fingerprint_matches(data, layout.fingerprint):
        return Verdict.BAD_FINGERPRINT
    if not _integrity_matches(data, layout.integrity, _as_key(key)):
        return Verdict.BAD_INTEGRITY
    return Verdict.OK


def verify(data: bytes | bytearray | memoryview, msg: Message, key: bytes | str) -> bool:
    """True if ``data`` carries a valid MESSAGE-INTEGRITY for ``key`` and a valid FINGERPRINT.

    ``msg`` must be :func:`parse` of ``data``; a message whose transaction ID
    is not the datagram's fails. See :func:`authenticate` for the reason of a
    failure.
    """
    data = _as_bytes(data)
    if msg.transaction_id != data[8:HEADER_LENGTH]:
        return False
    return authenticate(data, key) is Verdict.OK


def split_username(username: str | None) -> tuple[str, str] | None:
    """Split a connectivity check's USERNAME "<receiver ufrag>:<sender ufrag>".

    RFC 8445 section 7.2.2. Seen from the gateway receiving the check that is
    ``(local_ufrag, remote_ufrag)``. ice-chars contain no colon, so the first
    colon splits; ``None`` if there is none or either side is empty.
    """
    if not username:
        return None
    local, sep, remote = username.partition(":")
    if not sep or not local or not remote:
        return None
    return local, remote


def ufrags(msg: Message | bytes | bytearray | memoryview) -> tuple[str, str] | None:
    """``(local_ufrag, remote_ufrag)`` from a check's USERNAME, or ``None``.

    ``msg`` is a parsed :class:`Message`, or the raw datagram, in which case
    this is ``split_username(username_of(msg))``: the cheap path for routing
    by local ufrag. Never raises.
    """
    if isinstance(msg, (bytes, bytearray, memoryview)):
        return split_username(username_of(msg))
    username = msg.attributes.get("USERNAME")
    return split_username(username) if isinstance(username, str) else None


def username_of(data: bytes | bytearray | memoryview) -> str | None:
    """USERNAME of a STUN datagram, without decoding the other attributes.

    For routing a check to its agent by local ufrag before the agent verifies
    it. Checks the framing like :func:`parse` (so a router and a verifier
    never read different USERNAMEs) but not FINGERPRINT or MESSAGE-INTEGRITY.
    ``None`` if the datagram is not well-formed STUN, has no USERNAME, or the
    USERNAME is not UTF-8. Never raises.
    """
    data = _as_bytes(data)
    try:
        layout = _walk(data)
    except StunError:
        return None
    if layout.username is None:
        return None
    start, end = layout.username
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _xor_mapped_address(addr: tuple, transaction_id: bytes) -> bytes:
    """The XOR-MAPPED-ADDRESS attribute for ``addr`` (RFC 8489 section 14.2)."""
    ip = ipaddress.ip_address(addr[0])
    port = int(addr[1])
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is out of range")
    # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d; the peer
    # sent from a.b.c.d and must learn that address.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    family = 0x01 if ip.version == 4 else 0x02
    raw = port.to_bytes(2, "big") + ip.packed
    # X-Port = port XOR the cookie's top 16 bits; X-Address = address XOR the
    # cookie (IPv4) or the cookie followed by the transaction ID (IPv6).
    pad = MAGIC_COOKIE[0:2] + MAGIC_COOKIE + transaction_id
    xored = (int.from_bytes(raw, "big") ^ int.from_bytes(pad[0 : len(raw)], "big")).to_bytes(len(raw), "big")
    value = bytes((0, family)) + xored
    return ATTR_XOR_MAPPED_ADDRESS.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


def _signed(message_type: int, transaction_id: bytes, attributes: bytes, key: bytes) -> bytes:
    """Header + ``attributes`` + MESSAGE-INTEGRITY + FINGERPRINT (RFC 8489 sections 14.5, 14.7)."""
    tail = MAGIC_COOKIE + transaction_id
    covered = message_type.to_bytes(2, "big") + (len(attributes) + 4 + INTEGRITY_LENGTH).to_bytes(2, "big")
    mac = hmac.new(key, covered + tail + attributes, "sha1").digest()
    body = attributes + b"\x00\x08\x00\x14" + mac
    header = message_type.to_bytes(2, "big") + (len(body) + 8).to_bytes(2, "big") + tail
    crc = zlib.crc32(header + body) ^ FINGERPRINT_XOR
    return header + body + b"\x80\x28\x00\x04" + crc.to_bytes(4, "big")


def _check_request(request: Message) -> None:
    if request.message_class != Class.REQUEST:
        raise ValueError(f"cannot answer a {request.message_class.name} message")
    if len(request.transaction_id) != 12:
        raise ValueError("transaction ID is not 12 bytes")


def binding_success(request: Message, addr: tuple[str, int], key: bytes | str) -> bytes:
    """A signed Binding success response to ``request`` (RFC 8489 section 6.3.1.1).

    Same transaction ID, XOR-MAPPED-ADDRESS = ``addr`` (section 14.2; an
    IPv4-mapped IPv6 address is reported as IPv4), then MESSAGE-INTEGRITY
    with ``key`` and FINGERPRINT (sections 14.5, 14.7). No SOFTWARE attribute.
    Raises ``ValueError`` if ``request`` is not a Binding request or ``addr``
    is not an IP address and port.

    Encoded here rather than with aioice's ``Message``, which serialises the
    message three times to sign it; aioice decodes these responses in the tests.
    """
    _check_request(request)
    if request.message_method != Method.BINDING:
        raise ValueError(f"cannot answer a {request.message_method.name} request")
    tid = request.transaction_id
    return _signed(Method.BINDING | Class.RESPONSE, tid, _xor_mapped_address(addr, tid), _as_key(key))


def binding_error(request: Message, code: int, reason: str, key: bytes | str) -> bytes:
    """A signed error response to ``request`` (RFC 8489 section 6.3.1.1).

    ERROR-CODE (section 14.8; ``code`` in 300..699, ``reason`` at most 127
    characters), MESSAGE-INTEGRITY with ``key`` and FINGERPRINT. Only for
    requests that authenticated with ``key``.
    """
    _check_request(request)
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} is outside 300..699")
    phrase = reason.encode("utf-8")
    if len(reason) > 127 or len(phrase) > 763:
        raise ValueError("reason phrase is too long")
    value = bytes((0, 0, code // 100, code % 100)) + phrase
    attribute = ATTR_ERROR_CODE.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value + bytes(-len(value) & 3)
    return _signed(request.message_method | Class.ERROR, request.transaction_id, attribute, _as_key(key))

"""The signaling protocol's client frames (callsgw.signaling.protocol.parse_client_message).

Documented: every bad frame (bytes or text) is a ``ProtocolError`` with a code from
docs/PROTOCOL.md, never another exception.
"""

from __future__ import annotations

from callsgw.signaling import protocol
from callsgw.signaling.protocol import ProtocolError

CODES = {"bad_json", "bad_message", "unknown_type"}


def TestOneInput(data: bytes) -> None:
    for frame in (data, data.decode("utf-8", "replace")):
        try:
            protocol.parse_client_message(frame)
        except ProtocolError as exc:
            assert exc.code in CODES, exc.code
            exc.to_message()

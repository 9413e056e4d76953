"""RTCP compound packets (RFC 3550, 4585, 5104) and every feedback type: callsgw.wire.rtcp.parse.

Documented: raises only ``RtcpError``. What parses must serialize (each item's ``bytes()``), and
the serialization must parse again to the same items.
"""

from __future__ import annotations

from callsgw.wire import rtcp
from callsgw.wire.rtcp import RtcpError


def TestOneInput(data: bytes) -> None:
    try:
        compound = rtcp.parse(data)
    except RtcpError:
        return
    assert 1 <= len(compound.items) <= rtcp.MAX_ITEMS
    for item in compound.items:
        if isinstance(item, rtcp.Nack):
            item.sequences()
    again = rtcp.parse(bytes(compound))
    assert again.items == compound.items, "an RTCP compound does not survive bytes() and parse()"

"""A minimal classic-pcap RTP reader for tests (the loadtest reader comes later).

Supports the link types tcpdump wrote for ../shared/captures: NULL (BSD
loopback) and Ethernet, IPv4/UDP only.
"""

from __future__ import annotations

import struct
from pathlib import Path

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "captures"


def rtp_packets(path: Path) -> list[bytes]:
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    link_len = {0: 4, 1: 14}[linktype]
    out, pos = [], 24
    while pos + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[pos + 8 : pos + 12])[0]
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        ip = frame[link_len:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        payload = ip[ihl + 8 :]
        if len(payload) >= 12 and payload[0] >> 6 == 2:
            out.append(payload)
    return out

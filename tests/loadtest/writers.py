"""Small capture writers for the loadtest tests: frames for each link type, pcap and pcapng files."""

from __future__ import annotations

import socket
import struct

from loadtest.capture import UdpDatagram

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD


def _checksum_free_udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4_packet(d: UdpDatagram, *, options: bytes = b"", frag: int = 0, proto: int = 17) -> bytes:
    udp = _checksum_free_udp(d.src[1], d.dst[1], d.payload)
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(udp), 0x1234, frag, 64, proto, 0,
        socket.inet_aton(d.src[0]), socket.inet_aton(d.dst[0]),
    )
    return header + options + udp


def ipv6_packet(d: UdpDatagram, *, ext: list[tuple[int, bytes]] = ()) -> bytes:
    """IPv6 with extension headers ``ext`` as (header type, 6+8k bytes of body) before UDP."""
    udp = _checksum_free_udp(d.src[1], d.dst[1], d.payload)
    chain = b""
    types = [t for t, _ in ext] + [17]
    for (_t, body), nxt in zip(ext, types[1:]):
        assert (len(body) + 2) % 8 == 0
        chain += bytes([nxt, (len(body) + 2) // 8 - 1]) + body
    header = struct.pack("!IHBB16s16s", 0x60000000, len(chain) + len(udp), types[0], 64,
                         socket.inet_pton(socket.AF_INET6, d.src[0]), socket.inet_pton(socket.AF_INET6, d.dst[0]))
    return header + chain + udp


def ip_packet(d: UdpDatagram) -> bytes:
    return ipv6_packet(d) if ":" in d.src[0] else ipv4_packet(d)


def frame(linktype: int, d: UdpDatagram, *, vlan: int = 0, null_order: str = "<", pad: int = 0) -> bytes:
    ip = ip_packet(d)
    v6 = ":" in d.src[0]
    etype = ETH_IPV6 if v6 else ETH_IPV4
    if linktype == 1:
        tags = b"".join(struct.pack("!HH", 0x8100, 100 + i) for i in range(vlan))
        return b"\x02" * 6 + b"\x04" * 6 + tags + struct.pack("!H", etype) + ip + b"\x00" * pad
    if linktype in (101, 228, 229):
        return ip
    if linktype == 113:
        return struct.pack("!HHH8sH", 0, 772, 6, b"\x00" * 8, etype) + ip
    if linktype == 276:
        return struct.pack("!HHIHBB8s", etype, 0, 1, 772, 0, 6, b"\x00" * 8) + ip
    if linktype == 0:
        return struct.pack(null_order + "I", 30 if v6 else 2) + ip
    if linktype == 108:
        return struct.pack("!I", 24 if v6 else 2) + ip
    raise ValueError(linktype)


def write_pcap(frames: list[tuple[float, bytes]], linktype: int, *, nano: bool = False, order: str = "<") -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for t, data in frames:
        sec = int(t)
        frac = round((t - sec) * (1e9 if nano else 1e6))
        out.append(struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data)
    return b"".join(out)


def _block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def _option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def write_pcapng(
    frames: list[tuple[float, bytes]],
    linktype: int,
    *,
    order: str = "<",
    tsresol: int | None = None,
    simple: bool = False,
    extra_blocks: bool = True,
) -> bytes:
    """pcapng: SHB, an IDB (optionally with if_tsresol), then EPBs (or SPBs when ``simple``)."""
    shb = _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(order, 0, b""))
    opts = b""
    if tsresol is not None:
        opts = _option(order, 2, b"eth0") + _option(order, 9, bytes([tsresol])) + _option(order, 0, b"")
    idb = _block(order, 1, struct.pack(order + "HHI", linktype, 0, 0) + opts)
    if tsresol is None:
        scale = 1e6
    elif tsresol & 0x80:
        scale = float(2 ** (tsresol & 0x7F))
    else:
        scale = 10.0**tsresol
    out = [shb, idb]
    if extra_blocks:
        out.append(_block(order, 5, b"\x00" * 16))  # interface statistics: skipped
        out.append(_block(order, 0x0BAD, b"custom"))  # unknown: skipped
    for t, data in frames:
        if simple:
            out.append(_block(order, 3, struct.pack(order + "I", len(data)) + data))
        else:
            ts = round(t * scale)
            out.append(_block(order, 6, struct.pack(order + "IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data))
    return b"".join(out)


def rtp(seq: int, ts: int, ssrc: int, pt: int = 0, payload: bytes = b"\xff" * 160, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def datagrams(payloads: list[tuple[float, bytes]], src=("10.0.0.1", 5000), dst=("10.0.0.2", 6000)) -> list[UdpDatagram]:
    return [UdpDatagram(t, src, dst, p) for t, p in payloads]

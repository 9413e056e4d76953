"""Time the struct-loop capture reader against a numpy-gather variant (see loadtest.capture).

    python -m loadtest.bench_reader [FILE]

The numpy variant handles only what the measurement needs: classic pcap, Ethernet, IPv4 with a
20-byte header, UDP. It exists to justify the choice of reader, not to be used.
"""

from __future__ import annotations

import struct
import sys
import timeit
from pathlib import Path

import numpy as np

from loadtest.capture import _PCAP_MAGIC, read_udp


def numpy_reader(data: bytes) -> list[tuple[float, tuple[str, int], tuple[str, int], bytes]]:
    order, scale = _PCAP_MAGIC[data[:4]]
    end = len(data)
    offsets = []
    off = 24
    unpack = struct.Struct(order + "I").unpack_from
    while off + 16 <= end:
        incl = unpack(data, off + 8)[0]
        if off + 16 + incl > end:
            break
        offsets.append(off)
        off += 16 + incl
    buf = np.frombuffer(data, np.uint8)
    rec = np.asarray(offsets, np.int64)
    dt = np.dtype(order + "u4")
    idx = rec[:, None] + np.arange(16)[None, :]
    h = buf[idx].copy().view(dt).reshape(len(rec), 4)
    times = h[:, 0] + h[:, 1] * scale
    pkt = rec + 16
    ip = pkt + 14
    b = lambda o: buf[ip + o].astype(np.int64)
    sport = (b(20) << 8) | b(21)
    dport = (b(22) << 8) | b(23)
    ulen = (b(24) << 8) | b(25)
    src = buf[ip[:, None] + np.arange(12, 16)]
    dst = buf[ip[:, None] + np.arange(16, 20)]
    ok = (buf[ip] == 0x45) & (buf[ip + 9] == 17)
    out = []
    starts = (ip + 28).tolist()
    stops = (ip + 20 + ulen).tolist()
    srcs = [".".join(map(str, r)) for r in src.tolist()]
    dsts = [".".join(map(str, r)) for r in dst.tolist()]
    for i, good in enumerate(ok.tolist()):
        if good:
            out.append((float(times[i]), (srcs[i], int(sport[i])), (dsts[i], int(dport[i])), data[starts[i] : stops[i]]))
    return out


def main(argv: list[str]) -> None:
    path = Path(argv[0] if argv else Path(__file__).resolve().parents[2] / "shared" / "captures" / "vp8_screen_10s.pcap")
    data = path.read_bytes()
    a = list(read_udp(data))
    b = numpy_reader(data)
    assert [(d.src, d.dst, d.payload) for d in a] == [(s, d, p) for _t, s, d, p in b]
    for name, fn in (("struct loop", lambda: list(read_udp(data))), ("numpy gather", lambda: numpy_reader(data))):
        best = min(timeit.repeat(fn, number=1, repeat=20))
        print(f"{name:13s} {best * 1e3:7.2f} ms  {best / len(a) * 1e6:6.2f} us/packet  ({len(a)} packets, {len(data)} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])

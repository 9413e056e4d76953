#!/usr/bin/env python3
"""What a packet costs on ICE-TCP's fallback path next to UDP (issue #18 deliverable 1).

ICE-TCP reaches the media port through a per-connection loopback UDP bridge
(``callsgw/server/tcp.py``): each packet crosses Python once more and makes one more loopback
UDP hop than on UDP. This benchmark isolates that extra work. A stand-in for the media port
(an asyncio UDP echo, ``--media``) runs in one event loop with the real
:class:`callsgw.server.tcp.IceTcpConnection`; a client process sends ``--count`` packets of
``--size`` bytes and reads them back, ``--window`` in flight:

* ``udp``: client -> media port -> client, datagrams;
* ``tcp``: client -> RFC 4571 frames over TCP -> IceTcpConnection -> bridge -> media port ->
  bridge -> IceTcpConnection -> frames -> client.

Printed: packets/s round trip, and the CPU time of the event loop's thread (the gateway's side:
echo, and for ``tcp`` the bridge) per packet received and sent back, and the difference. The
gateway pays that difference per packet in and out on top of whatever its engine costs;
the native engine's own UDP path serves about 250k datagrams/s on one core (docs/GUIDE), so
compare that with the bridge's figure to see how many ICE-TCP participants a core carries.

    python benchmarks/bench_ice_tcp.py
    python benchmarks/bench_ice_tcp.py --count 50000 --size 1200 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import multiprocessing
import time
from collections import Counter

from callsgw.server.tcp import IceTcpConnection
from callsgw.transport.tcp import FrameDecoder, frame


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class _Front:
    """What IceTcpConnection asks of its TcpFront, for a bench: every bridge counts as validated."""

    def __init__(self, media_address):
        self._media = media_address
        self.stats: Counter = Counter()
        self.ice_timeout = 3600.0
        self.idle_timeout = 3600.0

    def media_address(self):
        return self._media

    def is_validated(self, addr):
        return True

    def _forget(self, connection):
        pass


def _run_udp(media, count, size, window) -> float:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(media)
    sock.settimeout(5)
    payload = b"\x80" * size
    start = time.perf_counter()
    sent = received = 0
    while received < count:
        while sent < count and sent - received < window:
            sock.send(payload)
            sent += 1
        sock.recv(4096)
        received += 1
    elapsed = time.perf_counter() - start
    sock.close()
    return elapsed


def _run_tcp(port, count, size, window) -> float:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(5)
    payload = frame(b"\x80" * size)
    decoder = FrameDecoder()
    start = time.perf_counter()
    sent = received = 0
    while received < count:
        burst = min(count - sent, window - (sent - received))
        if burst > 0:
            sock.sendall(payload * burst)
            sent += burst
        received += len(decoder.feed(sock.recv(65536)))
    elapsed = time.perf_counter() - start
    sock.close()
    return elapsed


def _client(pipe, run, target, count, size, window) -> None:
    """The client, in a process of its own (a thread would share the loop's GIL)."""
    pipe.send(run(target, count, size, window))


async def _main(args) -> dict:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    media = echo.get_extra_info("sockname")[:2]
    front = _Front(media)
    server = await loop.create_server(lambda: IceTcpConnection(front, ("127.0.0.1", 0)), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = {}
    for name, run, target in (("udp", _run_udp, media), ("tcp", _run_tcp, port)):
        best = cpu_best = None
        for _ in range(args.repeat):
            mine, theirs = multiprocessing.Pipe()
            client = multiprocessing.get_context("fork").Process(
                target=_client, args=(theirs, run, target, args.count, args.size, args.window))
            cpu = time.thread_time()  # the event loop's thread: the gateway side's work
            client.start()
            while client.is_alive() and not mine.poll():
                await asyncio.sleep(0.01)
            cpu = time.thread_time() - cpu
            elapsed = mine.recv()
            client.join()
            best = elapsed if best is None else min(best, elapsed)
            cpu_best = cpu if cpu_best is None else min(cpu_best, cpu)
        out[name] = {"packets_per_s": args.count / best, "wall_us_per_packet": best / args.count * 1e6,
                     "server_cpu_us_per_packet": cpu_best / args.count * 1e6}
    server.close()
    echo.close()
    udp, tcp = out["udp"]["server_cpu_us_per_packet"], out["tcp"]["server_cpu_us_per_packet"]
    out["server_cpu_tcp_over_udp"] = tcp / udp
    out["bridge_cpu_us_per_packet"] = tcp - udp
    out["parameters"] = {"count": args.count, "size": args.size, "window": args.window, "repeat": args.repeat}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="packets per run (each sent and echoed)")
    parser.add_argument("--size", type=int, default=200, help="packet size in bytes (voice: about 200)")
    parser.add_argument("--window", type=int, default=32, help="packets in flight")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path; the fastest counts")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    out = asyncio.run(_main(args))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name in ("udp", "tcp"):
            print(f"{name}: {out[name]['packets_per_s']:9.0f} packets/s round trip, server side "
                  f"{out[name]['server_cpu_us_per_packet']:6.1f} us CPU per packet (in and out)")
        print(f"ICE-TCP bridge: {out['server_cpu_tcp_over_udp']:.2f}x the UDP echo's CPU, "
              f"+{out['bridge_cpu_us_per_packet']:.1f} us per packet in and out")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A user-space NAT for the connectivity tests: a UDP and TCP relay that rewrites the port.

``PortNat(public_port, gateway_udp, gateway_tcp, inside=...)`` listens on ``127.0.0.1:public_port``
(UDP and TCP) and forwards to the gateway, as a port-mapping NAT or a Kubernetes NodePort would:

* UDP: each outside source address gets a socket of its own on the inside (bound to ``inside``),
  so the gateway sees a distinct, rewritten source per peer; replies go back out from the public
  port to that peer;
* TCP: each accepted connection is spliced to a new connection from ``inside`` to the gateway.

The gateway never sees the public port, and peers never see the gateway's bound ports: a call
connects only if the gateway's candidates announce the public port (``ice_port_override``).
"""

from __future__ import annotations

import asyncio
from collections import Counter


class _Inside(asyncio.DatagramProtocol):
    def __init__(self, nat: "PortNat", peer):
        self.nat = nat
        self.peer = peer
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.nat.stats["udp_out"] += 1
        self.nat.public.sendto(data, self.peer)


class _Outside(asyncio.DatagramProtocol):
    def __init__(self, nat: "PortNat"):
        self.nat = nat

    def datagram_received(self, data, addr):
        self.nat.stats["udp_in"] += 1
        asyncio.get_running_loop().create_task(self.nat._forward(data, (addr[0], addr[1])))


class PortNat:
    def __init__(self, public_port: int, gateway_udp, gateway_tcp, *, inside: str = "127.0.0.3"):
        self.public_port = public_port
        self.gateway_udp = gateway_udp
        self.gateway_tcp = gateway_tcp
        self.inside = inside
        self.public = None
        self.tcp_server = None
        self._mappings: dict = {}
        self._tasks: set = set()
        self.stats: Counter = Counter()

    async def start(self) -> "PortNat":
        loop = asyncio.get_running_loop()
        self.public, _ = await loop.create_datagram_endpoint(lambda: _Outside(self),
                                                            local_addr=("127.0.0.1", self.public_port))
        self.public_port = self.public.get_extra_info("sockname")[1]
        self.tcp_server = await asyncio.start_server(self._splice, "127.0.0.1", self.public_port)
        return self

    async def _forward(self, data: bytes, peer) -> None:
        mapping = self._mappings.get(peer)
        if mapping is None:
            loop = asyncio.get_running_loop()
            mapping, _ = await loop.create_datagram_endpoint(lambda: _Inside(self, peer), local_addr=(self.inside, 0),
                                                             remote_addr=self.gateway_udp)
            self._mappings[peer] = mapping
        mapping.sendto(data)

    async def _splice(self, reader, writer) -> None:
        self.stats["tcp"] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.gateway_tcp, local_addr=(self.inside, 0))
        except OSError:
            writer.close()
            return

        async def pipe(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        task = asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._tasks.add(task)
        try:
            await task
        finally:
            self._tasks.discard(task)

    def close(self) -> None:
        for mapping in self._mappings.values():
            mapping.close()
        if self.public is not None:
            self.public.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
        for task in self._tasks:
            task.cancel()

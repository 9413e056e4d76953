"""A media-transport gateway on a real loopback UDP socket, for tests.

Real signaling arrives with `callsgw serve`; until then tests exchange SDP
through :meth:`TestGateway.answer` directly (aiortc) or through a test-only
HTTP endpoint (Chromium).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from callsgw.dtls.certificate import DtlsCertificate
from callsgw.dtls.profiles import DtlsPolicy
from callsgw.sdp import LocalTransport, build_answer, parse_offer
from callsgw.server.udp import UdpMediaServer, start_udp_server
from callsgw.transport.media import (
    MediaTransport,
    RtpReceived,
    TransportConnected,
    TransportFailed,
)
from callsgw.transport.mux import UdpMux


class TestGateway:
    __test__ = False  # not a pytest test class

    def __init__(self, policy: DtlsPolicy | None = None, echo: bool = False):
        self.policy = policy or DtlsPolicy()
        self.certificate = DtlsCertificate.generate()
        self.mux = UdpMux()
        self.server: UdpMediaServer | None = None
        self.events: dict[MediaTransport, list] = defaultdict(list)
        self.transports: list[MediaTransport] = []
        self.echo = echo
        self.connected = asyncio.Event()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "TestGateway":
        self.server = await start_udp_server(self.mux, host, port, on_event=self._on_event)
        return self

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.local_address

    def answer(self, offer_sdp: str) -> str:
        remote = parse_offer(offer_sdp)
        loop = asyncio.get_running_loop()
        transport = MediaTransport(
            certificate=self.certificate,
            remote=remote,
            local_address=self.address,
            policy=self.policy,
            now=loop.time(),
        )
        self.server.add(transport)
        self.transports.append(transport)
        host, port = self.address
        return build_answer(
            remote,
            LocalTransport(transport.local_ufrag, transport.local_pwd, self.certificate.fingerprint, (host,), port),
        )

    def _on_event(self, transport: MediaTransport, event) -> None:
        self.events[transport].append(event)
        if isinstance(event, TransportConnected):
            self.connected.set()
        if self.echo and isinstance(event, RtpReceived):
            # send the media back under another SSRC, so the peer's receiver
            # has to decrypt it with the gateway's keys
            packet = bytearray(event.packet)
            packet[8:12] = (int.from_bytes(packet[8:12], "big") ^ 0x5A5A5A5A).to_bytes(4, "big")
            self.server.send_rtp(transport, bytes(packet))

    def received_rtp(self, transport: MediaTransport) -> int:
        return sum(isinstance(e, RtpReceived) for e in self.events[transport])

    def failures(self, transport: MediaTransport) -> list[TransportFailed]:
        return [e for e in self.events[transport] if isinstance(e, TransportFailed)]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

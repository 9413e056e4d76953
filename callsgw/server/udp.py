"""The asyncio shell around the UDP mux for ``media_engine = "python"``, and what both media shells share.

:class:`UdpMediaServer` feeds each datagram to
:class:`callsgw.transport.mux.UdpMux` with the event loop's monotonic clock as
``now``, sends what the cores queued (per-packet SRTP in Python), hands
transport events to a callback, and keeps one timer armed at the earliest core
deadline (the aioquic ``asyncio/protocol.py`` pattern). The native engine's
shell, :class:`callsgw.server.native.NativeMediaServer`, owns its socket in the
same way; both build on :class:`MediaShell` and both are a
:class:`callsgw.server.media.MediaServer`.
"""

from __future__ import annotations

import asyncio
import logging

from callsgw.server.media import EventHandler
from callsgw.transport.media import MediaTransport
from callsgw.transport.mux import UdpMux

log = logging.getLogger(__name__)


class MediaShell:
    """What both media shells share: serving a transport, and one timer at the mux's deadline.

    The timer is the aioquic shell pattern. A subclass sets the attributes
    annotated here (``_closed`` true stops re-arming) and implements
    :meth:`flush`; with its own ``add``, ``remove``, ``sync_counters``,
    ``close`` and ``local_address`` it is a :class:`callsgw.server.media.MediaServer`.
    """

    mux: UdpMux
    on_event: EventHandler | None
    _loop: asyncio.AbstractEventLoop
    _timer: asyncio.TimerHandle | None = None
    _timer_at: float | None = None
    _closed = False

    def flush(self, media: MediaTransport) -> None:
        """Send what ``media`` queued on this server's socket."""
        raise NotImplementedError

    def _service(self, media: MediaTransport) -> None:
        """Send what the transport queued, hand its events on, send what they caused."""
        self.flush(media)
        while (event := media.next_event()) is not None:
            if self.on_event is not None:
                self._guard(self.on_event, media, event)
        self.flush(media)

    def refresh(self, media: MediaTransport) -> None:
        """The transport restarted ICE: route STUN by its new ufrag as well (:meth:`UdpMux.refresh`)."""
        try:
            self.mux.refresh(media)
        except ValueError:  # a ufrag collision (2^-72): the restart's checks go unanswered
            log.warning("ICE restart: the new ufrag is already in use on the media port")

    @staticmethod
    def _guard(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:  # a handler bug must not take the media port down
            log.exception("media event handler failed")

    def _arm(self, when: float | None) -> None:
        if when is None or self._closed:
            return
        if self._timer_at is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._loop.time()
        self.mux.handle_timer(now)
        for media in self.mux.transports():
            self._service(media)
        self._arm(self.mux.get_timer())


class UdpMediaServer(MediaShell, asyncio.DatagramProtocol):
    """Serves a :class:`UdpMux` on one UDP socket."""

    def __init__(self, mux: UdpMux, on_event: EventHandler | None = None):
        self.mux = mux
        self.on_event = on_event
        self.transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_event_loop()

    # -- asyncio.DatagramProtocol -----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr) -> None:
        addr = (addr[0], addr[1])
        media = self.mux.receive(data, addr, self._loop.time())
        if media is not None:
            self._service(media)
            self._arm(media.get_timer())

    def error_received(self, exc: Exception) -> None:  # ICMP errors and the like
        log.debug("UDP error on media port: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    # -- API ---------------------------------------------------------------------

    @property
    def local_address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def add(self, media: MediaTransport) -> None:
        self.mux.add(media)
        self._arm(media.get_timer())

    def remove(self, media: MediaTransport) -> None:
        self.mux.remove(media)

    def send_rtp(self, media: MediaTransport, rtp: bytes) -> bool:
        ok = media.send_rtp(rtp)
        self.flush(media)
        return ok

    def send_rtcp(self, media: MediaTransport, rtcp: bytes) -> bool:
        ok = media.send_rtcp(rtcp)
        self.flush(media)
        return ok

    def sync_counters(self, media: MediaTransport | None = None) -> None:
        """Nothing to fold: the Python path counts in the transports themselves."""

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()

    # -- internals ---------------------------------------------------------------

    def flush(self, media: MediaTransport) -> None:
        if self.transport is None:
            return
        for data, addr in media.datagrams_to_send():
            self.transport.sendto(data, addr)


async def start_udp_server(
    mux: UdpMux, host: str = "0.0.0.0", port: int = 8443, on_event: EventHandler | None = None
) -> UdpMediaServer:
    """Bind the media port and serve `mux` on it."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: UdpMediaServer(mux, on_event), local_addr=(host, port)
    )
    return protocol

"""What the gateway shell asks of a media server, whichever engine carries the media.

:class:`callsgw.server.app.GatewayApp` runs one media server as ``app.media``:
:class:`callsgw.server.udp.UdpMediaServer` (``media_engine = "python"``) or
:class:`callsgw.server.native.NativeMediaServer` (``"native-thread"``, the default, and ``"native"``).
Both serve a :class:`~callsgw.transport.mux.UdpMux` on the media port and
satisfy :class:`MediaServer`; the shell, the admin API and ``/metrics``
(:mod:`callsgw.server.views`) use nothing else of them. What is particular to
one engine (the native server's ``engine`` and ``datapath``) is read only where
that engine was chosen, or with ``getattr``.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from callsgw.sfu.call import MediaPort
from callsgw.transport.media import MediaTransport
from callsgw.transport.mux import UdpMux

__all__ = ["EventHandler", "MediaServer"]

#: Called with a transport and each event it produced (connected, failed, RTP, ...).
EventHandler = Callable[[MediaTransport, object], None]


@runtime_checkable
class MediaServer(Protocol):
    """A running media port: the transports on it, their datagrams, their counters."""

    #: every participant's transport on this port, routed by ICE ufrag and then address
    mux: UdpMux
    #: where the transports' events go (the shell hands them to the signaling core)
    on_event: EventHandler | None

    @property
    def local_address(self) -> tuple[str, int]:
        """The bound media socket's (host, port)."""
        ...

    def add(self, media: MediaTransport, port: MediaPort | None = None) -> None:
        """Serve a new participant's transport (and arm its timer); its RTP and RTCP go to ``port``
        (its call's media plane, ``AddTransport.port``), its other events to ``on_event``."""
        ...

    def remove(self, media: MediaTransport) -> None:
        """Stop serving a transport (its counts stay in the mux's ``retired_drops``)."""
        ...

    def refresh(self, media: MediaTransport) -> None:
        """Route STUN by the transport's ufrags again: an ICE restart began (``RestartIce``)."""
        ...

    def flush(self, media: MediaTransport) -> None:
        """Send what the transport queued (DTLS, STUN answers, protected RTP/RTCP)."""
        ...

    def sync_counters(self, media: MediaTransport | None = None) -> None:
        """Bring the transports' counters up to date (the native engine counts on its own)."""
        ...

    def close(self) -> None:
        """Stop timers and close the media socket."""
        ...

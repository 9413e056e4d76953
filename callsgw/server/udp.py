"""The asyncio shell around the UDP mux for ``media_engine = "python"``, and what both media shells share.

:class:`UdpMediaServer` feeds each datagram to
:class:`callsgw.transport.mux.UdpMux` with the event loop's monotonic clock as
``now``, sends what the cores queued (per-packet SRTP in Python), hands
transport events to a callback, and keeps one timer armed at the earliest core
deadline (the aioquic ``asyncio/protocol.py`` pattern). The native engine's
shell, :class:`callsgw.server.native.NativeMediaServer`, owns its socket in the
same way; both build on :class:`MediaShell` and both are a
:class:`callsgw.server.media.MediaServer`.

Media goes straight from here to the call: a transport's decrypted RTP and
RTCP go to the :class:`~callsgw.sfu.call.MediaPort` the signaling core gave
with it (``AddTransport.port``), the copies and feedback its router makes are
sent on the receivers' transports at once, and only speaker changes go back
to the core (``on_speaker``); its other events (connected, failed, closed)
go to ``on_event``. The calls' timers (receiver reports, the speaker
evaluation) run here too, on a timer of their own.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time

from typing import Callable

from callsgw.server.media import EventHandler
from callsgw.sfu.call import CallMedia, MediaPort
from callsgw.sfu.router import SpeakerChanged
from callsgw.transport.media import MediaTransport, RtcpReceived, RtpReceived
from callsgw.transport.mux import UdpMux
from callsgw.transport.twcc import TwccLog

log = logging.getLogger(__name__)

SpeakerHandler = Callable[[str, SpeakerChanged], None]  # (call id, event): to the signaling core

# how often the transport-wide congestion control logs are drained into the calls (issue #19):
# arrivals become transport-cc feedback to publishers, sends and feedback the subscribers' estimates
TWCC_TICK = 0.05
TWCC_OFF = (0, 0, False)


class MediaShell(abc.ABC):
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
    on_speaker: SpeakerHandler | None = None
    _ports: dict | None = None  # transport -> MediaPort (its call's media plane)
    _calls: dict | None = None  # CallMedia -> how many of its transports are served here
    _media_timer: asyncio.TimerHandle | None = None
    _media_timer_at: float | None = None
    _twcc_timer: asyncio.TimerHandle | None = None
    _twcc: dict | None = None  # transport -> its transport-wide CC settings (in ID, out ID, feedback up)

    @abc.abstractmethod
    def flush(self, media: MediaTransport) -> None:
        """Send what ``media`` queued on this server's socket (each media server its own way)."""

    def _service(self, media: MediaTransport) -> None:
        """Send what the transport queued, hand its events on, send what they caused.

        RTP and RTCP go to the transport's call (its media port), not to ``on_event``
        (a transport served without a port, as by test harnesses, still hands them there).
        """
        self.flush(media)
        port = self._ports.get(media) if self._ports else None
        now = None
        while (event := media.next_event()) is not None:
            if port is not None and isinstance(event, RtpReceived):
                self._guard(port.rtp, event.packet, now if now is not None else (now := self._loop.time()))
            elif port is not None and isinstance(event, RtcpReceived):
                now = now if now is not None else self._loop.time()
                if self._twcc and self._twcc.get(media, TWCC_OFF)[1]:
                    # its feedback may be about packets sent since the last tick: their sends first
                    self._twcc_deliver(media, port, now)
                self._guard(port.rtcp, event.packet, now)
            elif self.on_event is not None:
                self._guard(self.on_event, media, event)
        if now is not None:
            self._call_done(port.call)
        if port is not None and media not in (self._twcc or ()) and media.tx is not None:
            # keys are in: stamp from the first copy (later changes follow on the tick)
            self._twcc_follow(media, port)
        self.flush(media)

    # -- the calls' media planes ----------------------------------------------------

    def _bind(self, media: MediaTransport, port: MediaPort | None) -> None:
        """Serve ``media``'s RTP and RTCP to ``port`` (``AddTransport.port``)."""
        if port is None:
            return
        if self._ports is None:
            self._ports, self._calls = {}, {}
        self._ports[media] = port
        self._calls[port.call] = self._calls.get(port.call, 0) + 1
        self._arm_twcc()

    def _unbind(self, media: MediaTransport) -> None:
        if self._twcc:
            self._twcc.pop(media, None)
        port = self._ports.pop(media, None) if self._ports else None
        if port is not None:
            left = self._calls[port.call] - 1
            if left:
                self._calls[port.call] = left
            else:
                del self._calls[port.call]

    def _call_done(self, call: CallMedia) -> None:
        """Send what the call's router queued, give its speaker changes to the core, arm its timer."""
        for transport in call.take_touched():
            self.flush(transport)
        for event in call.take_events():
            if self.on_speaker is not None:
                self._guard(self.on_speaker, call.call_id, event)
        self._arm_calls(call.get_timer())

    def _arm_calls(self, when: float | None) -> None:
        if when is None or self._closed:
            return
        if self._media_timer_at is not None and self._media_timer_at <= when:
            return
        if self._media_timer is not None:
            self._media_timer.cancel()
        self._media_timer_at = when
        self._media_timer = self._loop.call_at(when, self._on_calls_timer)

    def _on_calls_timer(self) -> None:
        """Receiver reports (RFC 3550 section 6.4.2) and speaker evaluations that are due."""
        self._media_timer = None
        self._media_timer_at = None
        now = self._loop.time()
        for call in list(self._calls or ()):
            self._guard(call.handle_timer, now)
            self._call_done(call)

    # -- transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01) --

    def _twcc_apply(self, media: MediaTransport, ids: tuple) -> None:
        """Give the transport's logger (the engine's session, or a TwccLog) its settings."""

    def _twcc_take(self, media: MediaTransport):
        """Drain the transport's logs: ``(arrivals, sent)`` as ``Engine.take_twcc`` returns them."""
        return None

    def _twcc_follow(self, media: MediaTransport, port: MediaPort) -> tuple:
        """Give the transport's logger the IDs its negotiation has now; the IDs (TWCC_OFF on failure)."""
        if self._twcc is None:
            self._twcc = {}
        try:
            ids = port.call.twcc_ids(port.participant_id)
            if self._twcc.get(media) != ids:
                self._twcc_apply(media, ids)
                self._twcc[media] = ids
            return ids
        except Exception:  # a transport closing under us, a bug: never stop the media path
            log.exception("transport-wide congestion control settings failed for one transport")
            return TWCC_OFF

    def _twcc_deliver(self, media: MediaTransport, port: MediaPort, now: float) -> bool:
        """Drain the transport's logs into its call (times onto the loop's clock); True when there were any."""
        try:
            logs = self._twcc_take(media)
        except Exception:  # a transport closing under us: nothing to hand on
            log.exception("draining a transport's transport-wide logs failed")
            return False
        if logs is None or not (len(logs[0][0]) or len(logs[1][0])):
            return False
        shift = time.time() - now  # the logs' CLOCK_REALTIME ns onto the loop's clock, in seconds
        (seq, ns), (sent_seq, sent_ns, sizes) = logs
        self._guard(port.twcc, (seq, ns * 1e-9 - shift), (sent_seq, sent_ns * 1e-9 - shift, sizes), now)
        return True

    def _arm_twcc(self) -> None:
        if self._twcc_timer is None and not self._closed and self._ports:
            self._twcc_timer = self._loop.call_later(TWCC_TICK, self._on_twcc_tick)

    def _on_twcc_tick(self) -> None:
        """Every TWCC_TICK: follow each transport's negotiated IDs, hand its logs to its call.

        One drain per transport per tick (the native engine's logs are crossed
        once per batch, never per packet); the call answers with transport-cc
        feedback for publishers and updates its subscribers' estimates.
        """
        self._twcc_timer = None
        if self._closed or not self._ports:
            return
        now = self._loop.time()
        calls: dict = {}
        for media, port in list(self._ports.items()):
            if self._twcc_follow(media, port) != TWCC_OFF and self._twcc_deliver(media, port, now):
                calls[port.call] = None
        for call in calls:
            self._call_done(call)
        self._arm_twcc()

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._media_timer, self._twcc_timer):
            if timer is not None:
                timer.cancel()

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

    def __init__(self, mux: UdpMux, on_event: EventHandler | None = None, on_speaker: SpeakerHandler | None = None):
        self.mux = mux
        self.on_event = on_event
        self.on_speaker = on_speaker
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
        self._cancel_timers()

    # -- API ---------------------------------------------------------------------

    @property
    def local_address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def add(self, media: MediaTransport, port: MediaPort | None = None) -> None:
        self.mux.add(media)
        self._bind(media, port)
        self._arm(media.get_timer())

    def remove(self, media: MediaTransport) -> None:
        self._unbind(media)
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
        """The Python path counts in the transports themselves; only TwccLog overflows are folded."""
        targets = [media] if media is not None else list(self._ports or ())
        for transport in targets:
            twcc = getattr(transport, "twcc", None)
            if twcc is not None and twcc.overflow:
                transport.counters.drops["twcc_log_overflow"] += twcc.overflow
                twcc.overflow = 0

    def _twcc_apply(self, media: MediaTransport, ids: tuple) -> None:
        if media.twcc is None:
            media.twcc = TwccLog()  # the datapath stamps through it, the transport logs arrivals in it
        media.twcc.configure(*ids)

    def _twcc_take(self, media: MediaTransport):
        return media.twcc.take() if media.twcc is not None else None

    def close(self) -> None:
        self._cancel_timers()
        if self.transport is not None:
            self.transport.close()

    # -- internals ---------------------------------------------------------------

    def flush(self, media: MediaTransport) -> None:
        if self.transport is None:
            return
        for data, addr in media.datagrams_to_send():
            self.transport.sendto(data, addr)


async def start_udp_server(
    mux: UdpMux, host: str = "0.0.0.0", port: int = 8443, on_event: EventHandler | None = None,
    on_speaker: SpeakerHandler | None = None,
) -> UdpMediaServer:
    """Bind the media port and serve `mux` on it."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: UdpMediaServer(mux, on_event, on_speaker), local_addr=(host, port)
    )
    return protocol

"""The asyncio shell around the native forwarding engine (``media_engine = "native"``).

The same job as :class:`callsgw.server.udp.UdpMediaServer`, with the media
socket's receive and send path in ``callsgw._native.engine``:

* the socket is non-blocking and registered with ``loop.add_reader``; each
  time it is readable, one :meth:`Engine.poll` serves up to a few hundred
  datagrams with the GIL released (one event-loop callback per batch);
* what the engine hands up goes where the Python path sends it: STUN, DTLS
  and datagrams from unknown addresses to :class:`~callsgw.transport.mux.UdpMux`,
  decrypted RTP and RTCP to the participant's
  :class:`~callsgw.transport.media.MediaTransport` (as the same events, which
  :class:`~callsgw.server.udp.MediaShell` hands to the call's media plane), and
  "a video route started" to the call that owns the route
  (:meth:`SharedEngine.route_owner`; its router asks for a keyframe);
* after every service of a transport the engine's session table follows the
  transport: SRTP contexts once DTLS completed (RFC 5764 section 4.2), the
  ICE-selected address as the only address SRTP is accepted from and sent
  to, and nothing once the transport failed or closed;
* the engine's per-session counters are folded into each transport's
  :class:`~callsgw.transport.media.TransportCounters` (records, metrics).

Packets Python sends (DTLS, STUN answers, router RTCP) go out with
``sock.sendto`` on the same socket; the router's retransmissions and
slow-path forwards are queued in the engine and sent by :meth:`Engine.flush`.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from callsgw._native.engine import SESSION_COUNTERS, UP_RAW, UP_RTP, UP_STARTED, Engine
from callsgw.sfu.native import SharedEngine
from callsgw.transport.media import MediaTransport, TransportState
from callsgw.server.media import EventHandler
from callsgw.server.udp import MediaShell, SpeakerHandler
from callsgw.sfu.call import MediaPort
from callsgw.transport.mux import UdpMux
from callsgw.wire.demux import PacketKind

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 << 20  # bytes asked for SO_RCVBUF/SO_SNDBUF (the kernel may cap it)
_COLUMN = {name: i for i, name in enumerate(SESSION_COUNTERS)}
# engine session counter -> (TransportCounters attribute or srtp_errors key)
_FOLD = (
    ("rtp_out", "rtp_out"),
    ("bytes_in", "bytes_in"),
    ("bytes_out", "bytes_out"),
)
_FOLD_ERRORS = (("auth_failures", "auth"), ("replays", "replay"), ("malformed", "malformed"),
                ("srtp_other", "other"), ("protect_failed", "send_error"))
_FOLD_DROPS = (("send_failed", "send_failed"),)  # engine session counter -> TransportCounters.drops key


class NativeMediaServer(MediaShell):
    """Serves a :class:`UdpMux` and the native engine on one UDP socket."""

    def __init__(self, mux: UdpMux, sock: socket.socket, on_event: EventHandler | None = None,
                 on_speaker: SpeakerHandler | None = None, *, max_sessions: int = 4096):
        self.mux = mux
        self.sock = sock
        self.on_event = on_event
        self.on_speaker = on_speaker
        # Table sizes follow the session count: two tracks per publisher, up to 8 SSRCs per
        # track (RTX, restarts), and a route per other participant's track in calls of 50.
        self.engine = Engine(sock.fileno(), max_sessions=max_sessions, max_sources=2 * max_sessions,
                             max_streams=8 * max_sessions, max_routes=32 * max_sessions)
        self.datapath = SharedEngine(self.engine)  # every call's NativeDatapath comes from it
        self._loop = asyncio.get_running_loop()
        self._by_slot: dict[int, MediaTransport] = {}
        self._installed: dict[MediaTransport, tuple] = {}  # transport -> (rx, tx, address)
        self._folded: dict[MediaTransport, list[int]] = {}  # engine counters already added
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def local_address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    # -- the socket ----------------------------------------------------------------

    def _on_readable(self) -> None:
        now = self._loop.time()
        try:
            items = self.engine.poll(now)
        except Exception:  # never take the media port down
            log.exception("native engine poll failed")
            return
        touched: list[MediaTransport] = []
        for kind, slot, addr, data in items:
            if kind == UP_STARTED:
                owner = self.datapath.route_owner(slot)
                call = owner.owner if owner is not None else None
                if call is not None:
                    self._guard(call.route_started, slot, now)
                    self._call_done(call)
                continue
            if kind == UP_RAW:
                media = self.mux.receive(data, addr, now)
            else:
                media = self._by_slot.get(slot)
                if media is None:
                    continue
                media.receive_decrypted(PacketKind.RTP if kind == UP_RTP else PacketKind.RTCP, data, addr)
            if media is not None and media not in touched:
                touched.append(media)
        for media in touched:
            self._service(media)
            self._arm(media.get_timer())
        self.engine.flush()

    # -- API (as UdpMediaServer) ------------------------------------------------------

    def add(self, media: MediaTransport, port: MediaPort | None = None) -> None:
        self.mux.add(media)
        self._bind(media, port)
        try:
            slot = self.datapath.session_slot(media)
        except RuntimeError:
            log.warning("native engine session table full: a participant gets no media")
        else:
            self._by_slot[slot] = media
        self._arm(media.get_timer())

    def remove(self, media: MediaTransport) -> None:
        self._unbind(media)
        self.sync_counters(media)
        self.mux.remove(media)
        slot = self.datapath.known_slot(media)
        if slot is not None:
            self._by_slot.pop(slot, None)
        self.datapath.release_session(media)
        self._installed.pop(media, None)
        self._folded.pop(media, None)

    def flush(self, media: MediaTransport) -> None:
        if self._closed:
            return
        for data, addr in media.datagrams_to_send():
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                media.counters.drops["send_buffer_full"] += 1
            except OSError as exc:
                log.debug("media send to %s failed: %s", addr, exc)
        self.engine.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timers()
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def sync_counters(self, media: MediaTransport | None = None) -> None:
        """Fold the engine's per-session counters into the transports' counters.

        One numpy read for all sessions; per transport only the differences
        since the last fold are added (Python's own counts stay in place).
        """
        targets = [media] if media is not None else list(self._by_slot.values())
        slots = [self.datapath.known_slot(t) for t in targets]
        pairs = [(t, s) for t, s in zip(targets, slots) if s is not None]
        if not pairs:
            return
        rows = self.engine.session_counters[[s for _, s in pairs]].tolist()
        col = _COLUMN
        for (transport, _), row in zip(pairs, rows):
            last = self._folded.get(transport)
            self._folded[transport] = row
            delta = [a - b for a, b in zip(row, last)] if last is not None else row
            if not any(delta):
                continue
            counters = transport.counters
            rtcp_up = delta[col["rtcp_in"]] - delta[col["rtcp_feedback_dropped"]]
            # what went up was counted by the transport itself (receive_decrypted)
            counters.rtp_in += delta[col["rtp_in"]] - (delta[col["up"]] - rtcp_up)
            counters.rtcp_in += delta[col["rtcp_feedback_dropped"]]
            for column, attribute in _FOLD:
                setattr(counters, attribute, getattr(counters, attribute) + delta[col[column]])
            for column, key in _FOLD_ERRORS:
                if delta[col[column]]:
                    counters.srtp_errors[key] += delta[col[column]]
            for column, key in _FOLD_DROPS:
                if delta[col[column]]:
                    counters.drops[key] += delta[col[column]]

    # -- transports ---------------------------------------------------------------

    def _service(self, media: MediaTransport) -> None:
        super()._service(media)
        self._sync_session(media)

    def _sync_session(self, media: MediaTransport) -> None:
        """Keep the engine's session entry equal to what the transport allows now."""
        slot = self.datapath.known_slot(media)
        if slot is None:
            return
        if media.state is TransportState.CONNECTED and media.rx is not None and media.tx is not None:
            wanted = (media.rx, media.tx, media.selected_address)
        else:
            wanted = (None, None, None)
        current = self._installed.get(media, (None, None, None))
        if wanted == current:
            return
        if wanted[0] is None:
            self.engine.session_clear_keys(slot)
        elif wanted[0] is not current[0] or wanted[1] is not current[1]:
            self.engine.session_keys(slot, wanted[0], wanted[1])
        if wanted[2] != current[2]:
            self.engine.session_address(slot, wanted[2])
        self._installed[media] = wanted


def media_socket(host: str, port: int) -> socket.socket:
    """A bound, non-blocking UDP socket with large buffers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def start_native_server(mux: UdpMux, host: str, port: int, on_event: EventHandler | None = None,
                              on_speaker: SpeakerHandler | None = None,
                              max_sessions: int = 4096) -> NativeMediaServer:
    """Bind the media port and serve ``mux`` with the native engine on it."""
    return NativeMediaServer(mux, media_socket(host, port), on_event, on_speaker, max_sessions=max_sessions)

"""The asyncio shell around the native forwarding engine (``media_engine = "native"`` and ``"native-thread"``).

The same job as :class:`callsgw.server.udp.UdpMediaServer`, with the media
socket's receive and send path in ``callsgw._native.engine``:

* ``"native"``: the socket is non-blocking and registered with
  ``loop.add_reader``; each time it is readable, one :meth:`Engine.poll`
  serves up to a few hundred datagrams with the GIL released (one event-loop
  callback per batch);
* ``"native-thread"`` (``threaded=True``): the engine serves the socket from a
  native thread of its own (:meth:`Engine.start`) that never takes the GIL, so
  nothing the event loop does (handshakes, JSON, GC) delays forwarded media.
  What Python must see comes up through the engine's bounded ring; its eventfd
  (:attr:`Engine.up_fd`) is registered with ``loop.add_reader`` and read in
  batches (:meth:`Engine.take`). Python changes the engine's tables through
  its methods, each under the engine's control lock; while the engine holds a
  transport's SRTP contexts, the transport's own SRTP calls (the router's
  RTCP, SRTP Python decrypts itself) go through :meth:`Engine.srtp`, under the
  same lock (:class:`EngineSrtp`), so one context never runs on two threads;
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

TAKE_BATCH = 1024  # ring items handled per event-loop callback (threaded mode)

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
_FOLD_DROPS = (("send_failed", "send_failed"), ("twcc_log_overflow", "twcc_log_overflow"))  # engine session counter -> TransportCounters.drops key


class EngineSrtp:
    """A transport's SRTP session while the engine thread holds its context.

    Stands in for the :class:`callsgw.srtp.Session` in ``transport.rx``/``tx``:
    each operation runs through :meth:`Engine.srtp` under the engine's control
    lock, so the engine thread and Python never use one context at once.
    """

    __slots__ = ("engine", "session")

    def __init__(self, engine: Engine, session):
        self.engine = engine
        self.session = session

    def protect(self, packet):
        return self.engine.srtp(0, self.session, packet)

    def unprotect(self, packet):
        return self.engine.srtp(1, self.session, packet)

    def protect_rtcp(self, packet):
        return self.engine.srtp(2, self.session, packet)

    def unprotect_rtcp(self, packet):
        return self.engine.srtp(3, self.session, packet)

    def __getattr__(self, name):  # profile, stats and the like: the session's own
        return getattr(self.session, name)


def _session_of(value):
    return value.session if isinstance(value, EngineSrtp) else value


class NativeMediaServer(MediaShell):
    """Serves a :class:`UdpMux` and the native engine on one UDP socket.

    ``threaded``: the engine serves the socket from its own native thread
    (``media_engine = "native-thread"``; see the module docstring).
    """

    def __init__(self, mux: UdpMux, sock: socket.socket, on_event: EventHandler | None = None,
                 on_speaker: SpeakerHandler | None = None, *, max_sessions: int = 4096, threaded: bool = False):
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
        self.threaded = threaded
        self._errors_logged = 0
        self._take_scheduled = False
        if threaded:
            self.engine.start()
            self._loop.add_reader(self.engine.up_fd, self._on_up)
        else:
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
        self._deliver(items, now)

    def _on_up(self) -> None:
        """The engine thread handed something up (its eventfd is readable): take a batch."""
        self._take_scheduled = False
        if self._closed:
            return
        try:
            items = self.engine.take(TAKE_BATCH)
            self._deliver(items, self._loop.time())
        except Exception:  # the engine thread forwards on whatever happens here
            log.exception("handling what the native engine thread handed up failed")
        self._check_engine()
        if self.engine.up_pending and not self._take_scheduled:
            self._take_scheduled = True  # the rest after other callbacks: a flood never starves the loop
            self._loop.call_soon(self._on_up)

    def _check_engine(self) -> None:
        """Log the engine thread's socket errors once (they are counted in ``totals``), and its end."""
        totals = self.engine.totals
        if totals["errors"] and not self._errors_logged:
            self._errors_logged = 1
            log.error("native engine thread: socket error (errno %d); counted in engine totals, logged once",
                      totals["last_errno"])
        if not self._closed and not self.engine.running and self._errors_logged < 2:
            self._errors_logged = 2
            log.error("native engine thread stopped (errno %d): media is no longer forwarded",
                      totals["last_errno"])

    def _deliver(self, items, now: float) -> None:
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
        if self.threaded:
            self._loop.remove_reader(self.engine.up_fd)
            self.engine.stop()  # joins the thread: nothing uses the socket after this
        else:
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

    def _twcc_apply(self, media: MediaTransport, ids: tuple) -> None:
        slot = self.datapath.known_slot(media)
        if slot is not None:
            self.engine.session_twcc(slot, *ids)

    def _twcc_take(self, media: MediaTransport):
        slot = self.datapath.known_slot(media)
        return self.engine.take_twcc(slot) if slot is not None else None

    def _service(self, media: MediaTransport) -> None:
        super()._service(media)
        self._sync_session(media)

    def _sync_session(self, media: MediaTransport) -> None:
        """Keep the engine's session entry equal to what the transport allows now."""
        slot = self.datapath.known_slot(media)
        if slot is None:
            return
        rx, tx = _session_of(media.rx), _session_of(media.tx)
        if media.state is TransportState.CONNECTED and rx is not None and tx is not None:
            wanted = (rx, tx, media.selected_address)
        else:
            wanted = (None, None, None)
        current = self._installed.get(media, (None, None, None))
        if wanted == current:
            return
        if wanted[0] is None:
            self.engine.session_clear_keys(slot)
        elif wanted[0] is not current[0] or wanted[1] is not current[1]:
            self.engine.session_keys(slot, wanted[0], wanted[1])
            if self.threaded:  # from now on the engine thread uses these contexts too
                media.rx, media.tx = EngineSrtp(self.engine, rx), EngineSrtp(self.engine, tx)
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
                              max_sessions: int = 4096, threaded: bool = False) -> NativeMediaServer:
    """Bind the media port and serve ``mux`` with the native engine on it (``threaded``: on its own thread)."""
    sock = media_socket(host, port)
    try:
        return NativeMediaServer(mux, sock, on_event, on_speaker, max_sessions=max_sessions, threaded=threaded)
    except BaseException:
        sock.close()
        raise

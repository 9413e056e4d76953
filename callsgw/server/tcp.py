"""ICE-TCP on the gateway's TCP port: the first-bytes front and the passive connections (asyncio shell).

:class:`TcpFront` owns a listening TCP socket. It accepts each connection itself, peeks at the
first bytes without reading them (``MSG_PEEK``) and asks :func:`callsgw.transport.tcp.classify_start`
what they are:

* a TLS handshake record (or, behind a TLS-terminating proxy, plain HTTP) is handed, socket and
  unread bytes untouched, to the websockets server's own connection factory with
  ``loop.connect_accepted_socket``: HTTPS, WSS and the admin API behave exactly as when
  websockets accepted the connection itself;
* an RFC 4571 frame holding a STUN binding request (RFC 6544 section 7.1) becomes an
  :class:`IceTcpConnection`.

An :class:`IceTcpConnection` reaches the media port through a *bridge*: a UDP socket of its own
on the loopback interface, ``connect()``-ed to the media socket (the kernel drops anything else
sent to it). Every frame from the peer is sent as one datagram from the bridge; every datagram
the media port sends to the bridge goes back to the peer as one frame (RFC 4571 section 2). The
media port, whichever engine runs it, therefore sees each TCP connection as one more peer
address, the bridge's, and applies to it exactly what it applies to a UDP peer: STUN is routed by
ufrag, DTLS and SRTP only from an address that passed an ICE check for that participant's
transport (:class:`callsgw.transport.mux.UdpMux`), with the same suites and profiles. This is
the "clearly measured fallback path" of the native engine: each packet crosses Python and a
loopback UDP hop once more than on UDP (``benchmarks/bench_ice_tcp.py`` measures it).

Bounds: at most ``max_per_address`` ICE-TCP connections per source IP and ``max_ice`` in all;
at most ``max_pending`` connections whose first bytes are not in yet, ``max_pending_per_address``
of them from one source IP (so that one address holding silent connections cannot shut the port
to everyone else), each for at most ``first_bytes_timeout`` s; a
connection whose bridge address has not passed an ICE check ``ice_timeout`` s after it opened is
closed, and so is one that has been silent for ``idle_timeout`` s (consent checks, RFC 7675,
arrive every few seconds); the frame decoder holds at most one frame, and the peer's unread
output is capped at ``MAX_WRITE_BUFFER`` bytes (frames beyond it are dropped and counted).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from typing import Callable

from callsgw.transport.tcp import FrameDecoder, FramingError, MAX_FRAME, Start, START_BYTES, classify_start, frame

log = logging.getLogger(__name__)

Address = tuple[str, int]

#: Where bridge sockets bind, by address family of the media socket.
BRIDGE_HOSTS = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
MAX_WRITE_BUFFER = 256 * 1024  # bytes queued towards one peer before frames are dropped
BRIDGE_READS = 64  # datagrams read from a bridge per readiness callback
PEEK_RETRY = 0.02  # seconds between peeks while a connection's first bytes are incomplete


def media_target(local: Address) -> Address:
    """The address a bridge sends to: the media socket's, with a wildcard replaced by loopback."""
    host, port = local[0], local[1]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


class IceTcpConnection(asyncio.Protocol):
    """One passive ICE-TCP connection (RFC 6544), bridged to the media port (see the module docstring)."""

    def __init__(self, front: "TcpFront", peer: Address):
        self.front = front
        self.peer = peer
        self.decoder = FrameDecoder(MAX_FRAME)
        self.transport: asyncio.Transport | None = None
        self.bridge: socket.socket | None = None
        self.bridge_address: Address | None = None
        self.validated = False
        self.stats: Counter = Counter()
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._last_in = self._loop.time()
        self._closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        target = media_target(self.front.media_address())
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((BRIDGE_HOSTS[family], 0))
                sock.connect(target)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            log.warning("ICE-TCP: no bridge to the media port (%s); closing the connection", exc)
            self.front.stats["bridge_failed"] += 1
            transport.abort()
            return
        self.bridge = sock
        self.bridge_address = sock.getsockname()[:2]
        self._loop.add_reader(sock.fileno(), self._on_bridge_readable)
        self._timer = self._loop.call_later(self.front.ice_timeout, self._check)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            packets = self.decoder.feed(data)
        except FramingError:
            self.front.stats["framing_error"] += 1
            self.close("framing")
            return
        if packets:
            self._last_in = self._loop.time()
        for packet in packets:
            try:
                self.bridge.send(packet)
                self.stats["in"] += 1
            except (BlockingIOError, InterruptedError):
                self.stats["in_dropped"] += 1
                self.front.stats["frames_dropped_in"] += 1
            except OSError as exc:  # the media port is gone (shutdown)
                log.debug("ICE-TCP bridge send failed: %s", exc)
                self.stats["in_dropped"] += 1
                self.front.stats["frames_dropped_in"] += 1

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()

    # -- the bridge ---------------------------------------------------------------------

    def _on_bridge_readable(self) -> None:
        sock, transport = self.bridge, self.transport
        if sock is None or transport is None:
            return
        for _ in range(BRIDGE_READS):
            try:
                data = sock.recv(MAX_FRAME + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNREFUSED from an earlier send to a closed media port
                continue
            if transport.is_closing():
                return
            if transport.get_write_buffer_size() + len(data) + 2 > MAX_WRITE_BUFFER:
                self.stats["out_dropped"] += 1  # the peer reads too slowly: TCP media is late media
                self.front.stats["frames_dropped_out"] += 1
                continue
            transport.write(frame(data))
            self.stats["out"] += 1

    # -- time ---------------------------------------------------------------------------

    def _check(self) -> None:
        """ICE deadline, then the idle check, on one timer."""
        self._timer = None
        if self._closed:
            return
        now = self._loop.time()
        if not self.validated:
            if not self.front.is_validated(self.bridge_address):
                self.front.stats["ice_timeout"] += 1
                self.close("no ICE check passed in time")
                return
            self.validated = True
        if now - self._last_in >= self.front.idle_timeout:
            self.front.stats["idle_timeout"] += 1
            self.close("idle")
            return
        self._timer = self._loop.call_at(self._last_in + self.front.idle_timeout, self._check)

    # -- closing ------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        log.debug("ICE-TCP connection from %s closed: %s", self.peer[0], reason)
        self._release()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.bridge is not None:
            self._loop.remove_reader(self.bridge.fileno())
            self.bridge.close()
            self.bridge = None
        self.front._forget(self)


#: The ``event`` label values of ``callsgw_tcp_port_events_total`` (TcpFront.stats keys), in order.
FRONT_EVENTS = (
    "tls", "other", "ice", "not_ice", "first_bytes_timeout", "refused_pending", "refused_per_address",
    "refused_total", "ice_timeout", "idle_timeout", "framing_error", "bridge_failed",
    "frames_dropped_in", "frames_dropped_out",
)


class TcpFront:
    """A listening TCP socket whose connections are either ICE-TCP or the HTTP/WebSocket server's.

    ``ws_factory`` is the websockets server's protocol factory (``None`` on a port of ICE-TCP's
    own: anything but ICE-TCP is closed there), ``ssl`` its TLS context; ``media_address()``
    gives the media socket's (host, port) and ``is_validated(addr)`` says whether a bridge
    address passed an ICE check on the media port.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        media_address: Callable[[], Address],
        is_validated: Callable[[Address], bool],
        ws_factory: Callable[[], asyncio.Protocol] | None = None,
        ssl=None,
        ssl_handshake_timeout: float = 10.0,
        ssl_shutdown_timeout: float = 5.0,
        max_per_address: int = 16,
        max_ice: int = 4096,
        max_pending: int = 4096,
        max_pending_per_address: int = 64,
        first_bytes_timeout: float = 10.0,
        ice_timeout: float = 10.0,
        idle_timeout: float = 30.0,
    ):
        self.sock = sock
        self.media_address = media_address
        self.is_validated = is_validated
        self.ws_factory = ws_factory
        self.ssl = ssl
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.ssl_shutdown_timeout = ssl_shutdown_timeout
        self.max_per_address = max_per_address
        self.max_ice = max_ice
        self.max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        self.first_bytes_timeout = first_bytes_timeout
        self.ice_timeout = ice_timeout
        self.idle_timeout = idle_timeout
        self.stats: Counter = Counter()
        self.connections: set[IceTcpConnection] = set()
        self._per_address: Counter = Counter()
        self._pending: set[asyncio.Task] = set()
        self._pending_per_address: Counter = Counter()
        self._loop = asyncio.get_running_loop()
        self.closed = False
        sock.setblocking(False)
        self._accepting = self._loop.create_task(self._accept_loop())

    @property
    def local_address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return host, port

    async def _accept_loop(self) -> None:
        while not self.closed:
            try:
                conn, addr = await self._loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if self.closed:
                    return
                log.warning("TCP accept failed: %s", exc)  # EMFILE and the like: back off a little
                await asyncio.sleep(0.1)
                continue
            ip = addr[0]
            if len(self._pending) >= self.max_pending or self._pending_per_address[ip] >= self.max_pending_per_address:
                self.stats["refused_pending"] += 1
                conn.close()
                continue
            task = self._loop.create_task(self._dispatch(conn, (ip, addr[1])))
            self._pending.add(task)
            self._pending_per_address[ip] += 1
            task.add_done_callback(lambda t, ip=ip: self._done_pending(t, ip))

    def _done_pending(self, task: asyncio.Task, ip: str) -> None:
        self._pending.discard(task)
        self._pending_per_address[ip] -= 1
        if self._pending_per_address[ip] <= 0:
            del self._pending_per_address[ip]

    async def _dispatch(self, conn: socket.socket, peer: Address) -> None:
        """Peek at the first bytes, then hand the socket on (see the module docstring)."""
        conn.setblocking(False)
        try:
            kind = await asyncio.wait_for(self._peek(conn), self.first_bytes_timeout)
        except (asyncio.TimeoutError, OSError):
            self.stats["first_bytes_timeout"] += 1
            conn.close()
            return
        except BaseException:
            conn.close()
            raise
        if kind is None:  # closed before sending anything
            conn.close()
            return
        try:
            if kind is Start.ICE:
                if self._per_address[peer[0]] >= self.max_per_address:
                    self.stats["refused_per_address"] += 1
                    conn.close()
                    return
                if len(self.connections) >= self.max_ice:
                    self.stats["refused_total"] += 1
                    conn.close()
                    return
                self.stats["ice"] += 1
                await self._loop.connect_accepted_socket(lambda: self._ice_connection(peer), conn)
            elif self.ws_factory is not None:
                self.stats["tls" if kind is Start.TLS else "other"] += 1
                options = {}
                if self.ssl is not None:
                    options = {"ssl": self.ssl, "ssl_handshake_timeout": self.ssl_handshake_timeout,
                               "ssl_shutdown_timeout": self.ssl_shutdown_timeout}
                await self._loop.connect_accepted_socket(self.ws_factory, conn, **options)
            else:
                self.stats["not_ice"] += 1
                conn.close()
        except OSError as exc:  # the peer left during the hand-over; a failed TLS handshake
            log.debug("TCP connection from %s ended during hand-over: %s", peer[0], exc)
            conn.close()
        except Exception:  # ssl errors and the like must not reach the loop's exception handler
            log.debug("TCP connection from %s ended during hand-over", peer[0], exc_info=True)
            conn.close()

    async def _peek(self, conn: socket.socket) -> Start | None:
        while True:
            await self._readable(conn)
            data = conn.recv(START_BYTES, socket.MSG_PEEK)
            if not data:
                return None
            kind = classify_start(data)
            if kind is not Start.NEED_MORE:
                return kind
            await asyncio.sleep(PEEK_RETRY)  # the bytes stay readable: do not spin on them

    async def _readable(self, conn: socket.socket) -> None:
        fut = self._loop.create_future()
        fd = conn.fileno()
        self._loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            self._loop.remove_reader(fd)

    def _ice_connection(self, peer: Address) -> IceTcpConnection:
        connection = IceTcpConnection(self, peer)
        self.connections.add(connection)
        self._per_address[peer[0]] += 1
        return connection

    def _forget(self, connection: IceTcpConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self._per_address[connection.peer[0]] -= 1
            if self._per_address[connection.peer[0]] <= 0:
                del self._per_address[connection.peer[0]]

    def close(self) -> None:
        """Stop accepting and close every ICE-TCP connection (the websockets server closes its own)."""
        if self.closed:
            return
        self.closed = True
        self._accepting.cancel()
        for task in list(self._pending):
            task.cancel()
        for connection in list(self.connections):
            connection.close("shutdown")
        try:
            self.sock.close()
        except OSError:
            pass


def listening_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (SO_REUSEADDR, as asyncio's servers set)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def websockets_factory(ws_server) -> Callable[[], asyncio.Protocol]:
    """The protocol factory of a started ``websockets.asyncio.server.serve``.

    websockets builds a fresh ``ServerConnection`` (its sans-I/O protocol, process_request and
    all) per connection in a factory it hands to ``loop.create_server``; that asyncio server keeps
    it. The front gives it the connections that are not ICE-TCP.
    """
    factory = getattr(getattr(ws_server, "server", None), "_protocol_factory", None)
    if not callable(factory):
        raise RuntimeError("cannot share the TCP port with ICE-TCP: this websockets/asyncio version "
                           "does not expose the server's connection factory; set ice_tcp_port")
    return factory


async def serve_tcp_port(config, handler, *, media, **ws_options):
    """Start the gateway's TCP side: the websockets server and, with ``config.ice_tcp``, ICE-TCP.

    Returns ``(ws_server, front)``. With ``ice_tcp_port = -1`` the front owns the one listening
    socket of ``listen_host:port`` and hands websockets the connections that are not ICE-TCP;
    with a port of its own, websockets listens as usual and the front takes only ICE-TCP;
    without ICE-TCP ``front`` is None. ``media()`` is the running media server (its socket's
    address is where bridges send; its mux says which bridge addresses passed an ICE check).
    """
    from websockets.asyncio.server import serve as ws_serve

    def media_address() -> Address:
        return media().local_address

    def is_validated(addr: Address) -> bool:
        return media().mux.transport_for(addr) is not None

    timeouts = {
        "ice_timeout": config.ice_tcp_timeout,
        "first_bytes_timeout": config.ice_tcp_timeout,
        "max_per_address": config.ice_tcp_per_address,
        "max_ice": config.max_connections,  # a participant with media over TCP has a signaling connection too
    }
    if not config.ice_tcp or config.ice_tcp_port >= 0:
        ws_server = await ws_serve(handler, config.listen_host, config.port, **ws_options)
        if not config.ice_tcp:
            return ws_server, None
        try:
            sock = listening_socket(_bind_host(config.listen_host), config.ice_tcp_port)
        except BaseException:
            ws_server.close()
            raise
        return ws_server, TcpFront(sock, media_address=media_address, is_validated=is_validated, **timeouts)
    sock = listening_socket(_bind_host(config.listen_host), config.port)
    try:
        ws_server = await ws_serve(handler, sock=sock, start_serving=False, **ws_options)
        front = TcpFront(
            sock, media_address=media_address, is_validated=is_validated, ws_factory=websockets_factory(ws_server),
            ssl=ws_options.get("ssl"), ssl_handshake_timeout=ws_options.get("open_timeout", 10.0),
            ssl_shutdown_timeout=ws_options.get("close_timeout", 5.0), **timeouts,
        )
    except BaseException:
        sock.close()
        raise
    # websockets answers 503 to a handshake while its server "is not serving"; its asyncio server
    # never accepts here (the front does), so serving means: neither it nor the front was closed
    ws_server.is_serving = lambda: ws_server.close_task is None and not front.closed
    return ws_server, front


def _bind_host(host: str) -> str:
    """An IP address to bind for ``host`` (a name resolves to its first address; "" is every IPv4 one)."""
    if not host:
        return "0.0.0.0"
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return host
    except OSError:
        info = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        return info[0][4][0]

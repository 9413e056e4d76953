"""`callsgw serve`: the I/O shell that runs the whole gateway.

One TCP port (default 8443) serves HTTPS for the web page, WSS signaling at
``/ws`` and the admin API under ``/api/``; one UDP port (default
8443) carries every participant's media. The protocol cores are sans-I/O;
this module owns the sockets, TLS, the clock and asyncio:

* websockets connections feed :class:`callsgw.signaling.core.GatewayCore`,
  whose actions are carried out here (send, close, add/remove transports);
* the media port runs in ``self.media``, a :class:`callsgw.server.media.MediaServer`
  (the native engine's or the Python path's), whose transport events go back
  to the core;
* shutdown stops joins, says ``bye``, lets calls drain for
  ``shutdown_grace`` seconds, then closes everything.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import mimetypes
import signal
import time
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from callsgw.apisecrets import ApiSecrets
from callsgw.config import Config
from callsgw.datadir import DataDir
from callsgw.dtls.certificate import DtlsCertificate
from callsgw.sdp import gateway_addresses
from callsgw.server import admin, headers
from callsgw.server.proxy import client_view
from callsgw.server.media import MediaServer
from callsgw.server.relay import ClusterUnavailable
from callsgw.server.tcp import serve_tcp_port
from callsgw.turn import TurnConfig
from callsgw.server.udp import start_udp_server
from callsgw.signaling import protocol as P
from callsgw.signaling import tokens
from callsgw.security.db import open_store
from callsgw.security.writer import RecordWriter
from callsgw.signaling.core import (
    AddTransport, Close, GatewayCore, Limits, RemoveTransport, RestartIce, Send, StoreRecord,
)
from callsgw.tls import (
    check_certificate, describe, ensure_default_certificate, give_memory_back, server_ssl_context,
    shrink_tls_read_buffers,
)
from callsgw.transport.mux import UdpMux

log = logging.getLogger("callsgw")

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
OUTBOX_LIMIT = 512  # queued messages per connection before it is cut off as too slow
REVOCATION_POLL = 2.0  # seconds between reads of the deny-list (revocations by `callsgw token revoke`)
TICK = 0.25  # longest wait between core timer checks
TRIM_INTERVAL = 10.0  # seconds between looks at whether to give memory back
TRIM_AFTER = 100  # connections ended since the last trim that make it worth one
MIN_TICK = 0.01  # shortest (a deadline already due still waits this long)


class _Outbox:
    """Per-connection ordered writer: messages, then possibly a close.

    ``ws`` is the client's WebSocket, or anything with the same ``send(text)``
    and ``close(code, reason)`` (a relayed session's link to its origin node,
    :mod:`callsgw.server.relay`). A queued ``str`` is sent as is (a frame the
    call's host node already encoded); a ``dict`` is encoded here.
    """

    def __init__(self, ws):
        self.ws = ws
        self.queue: asyncio.Queue = asyncio.Queue(OUTBOX_LIMIT)
        self.task = asyncio.get_running_loop().create_task(self._run())

    def put(self, item) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            return False

    async def _run(self) -> None:
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, Close):
                    await self.ws.close(item.code, item.reason)
                    return
                await self.ws.send(item if isinstance(item, str) else P.encode(item))
        except ConnectionClosed:
            pass


class GatewayApp:
    """The running gateway: TCP (HTTPS/WSS) and UDP servers around the cores."""

    def __init__(self, config: Config):
        self.config = config
        self.datadir = DataDir(config.data_dir)
        self.core: GatewayCore | None = None
        self.media: MediaServer | None = None  # the media port, either engine
        self.ws_server = None
        self.ice_tcp = None  # callsgw.server.tcp.TcpFront: ICE-TCP (issue #18), None when off
        self._outboxes: dict[int, _Outbox] = {}
        self._ids = itertools.count(1)
        self._ticker: asyncio.Task | None = None
        self._revocations: asyncio.Task | None = None
        self.secrets: ApiSecrets | None = None  # the keys that sign and check tokens
        self._loop = asyncio.get_running_loop()
        self.url: str | None = None
        self.tls_info = None
        self.store = None  # callsgw.security.db.RecordStore
        self.revoked_tokens: dict[str, float] = {}  # jti -> until: the deny-list as the core has it
        self.records: RecordWriter | None = None  # security records, off the loop, buffered through outages
        self._pruner: asyncio.Task | None = None
        self.cluster = None  # callsgw.cluster.node.ClusterNode in cluster mode (issue #15)
        self.whip = None  # callsgw.server.whip.WhipServer when whip_port is set (docs/WHIP.md)
        self.relay = None  # callsgw.server.relay.RelayShell in cluster mode: relayed joins
        self._handled = 0  # WebSocket connections ended since start
        self._trimmer: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        ssl_ctx = None
        if not cfg.plain_ws:
            if cfg.tls_cert and cfg.tls_key:
                cert, key = Path(cfg.tls_cert), Path(cfg.tls_key)
            else:
                cert, key = ensure_default_certificate(self.datadir)
            self.tls_info = check_certificate(cert, key)
            ssl_ctx = server_ssl_context(cert, key)
            shrink_tls_read_buffers()  # 32 KiB per connection, not asyncio's 256 KiB (callsgw/tls.py)
        self.store = open_store(cfg.database, Path(cfg.data_dir))
        if cfg.cluster:  # issue #15: the key and the API secret come from the shared Systems table
            cluster_keyring = await self._cluster_secrets()
        else:
            self.secrets = ApiSecrets(self.datadir)
        self.store.prune(cfg.record_retention_days * 86400)
        self.records = RecordWriter(self.store)
        self.records.start()
        self._pruner = self._loop.create_task(self._prune_records())
        mux = UdpMux()
        datapath = None
        if cfg.media_engine in ("native", "native-thread"):
            from callsgw.server.native import start_native_server

            native = await start_native_server(
                mux, cfg.media_host, cfg.media_port, on_event=self._on_media_event, on_speaker=self._on_speaker,
                max_sessions=max(256, cfg.max_connections),  # a participant needs a connection
                threaded=cfg.media_engine == "native-thread",
            )
            self.media, datapath = native, native.datapath
        else:
            self.media = await start_udp_server(mux, cfg.media_host, cfg.media_port, on_event=self._on_media_event,
                                                on_speaker=self._on_speaker)
        media_port = self.media.local_address[1]
        announce = gateway_addresses(cfg.ice_host)
        self.core = GatewayCore(
            api_secret=self.secrets,
            certificate=DtlsCertificate.generate(),
            media_address=(announce[0], cfg.ice_port_override or media_port),  # the advertised port (#18)
            announce=announce,
            policy=cfg.dtls_policy(),
            cert_info=self.tls_info,
            wall_offset=time.time() - self._loop.time(),
            datapath=datapath,
            whep_audio_slots=cfg.whep_audio_slots,
            limits=Limits(
                max_participants_per_call=cfg.max_participants_per_call,
                max_calls=cfg.max_calls,
                joins_per_second_per_address=cfg.joins_per_second_per_address,
                messages_per_second=cfg.messages_per_second,
                join_timeout=cfg.join_timeout,
                max_connections=cfg.max_connections,
                max_token_ttl=cfg.max_token_ttl,
                resume_grace=cfg.resume_grace,
            ),
        )
        # the TCP port: HTTPS/WSS, and ICE-TCP told apart by its first bytes (server/tcp.py, issue #18)
        self.ws_server, self.ice_tcp = await serve_tcp_port(
            cfg,
            self._handle,
            media=lambda: self.media,
            ssl=ssl_ctx,
            subprotocols=[P.SUBPROTOCOL],
            max_size=cfg.max_message_size,
            max_queue=16,
            open_timeout=10,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
            process_request=self._http,
            process_response=self._secure,
            server_header="callsgw",
        )
        port = self.ws_server.sockets[0].getsockname()[1]
        if self.ice_tcp is not None:
            self.core.ice_tcp_port = cfg.ice_port_override or self.ice_tcp.local_address[1]
        if cfg.turn_url:  # joined.turn: TURN REST API credentials (callsgw/turn.py, issue #18)
            self.core.turn = TurnConfig(cfg.turn_url, cfg.turn_secret.encode(), cfg.turn_ttl)
        host = cfg.listen_host if cfg.listen_host not in ("0.0.0.0", "::", "") else announce[0]
        scheme = "http" if cfg.plain_ws else "https"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{port}/"
        self._ticker = self._loop.create_task(self._tick())
        self._trimmer = self._loop.create_task(self._trim_memory())
        if cfg.whip_port is not None:  # WHIP/WHEP on a port of their own, same TLS (docs/WHIP.md)
            from callsgw.server.whip import start_whip_server

            self.whip = await start_whip_server(self, cfg.listen_host, cfg.whip_port, ssl_ctx)
        self._sync_revoked(self.store.revoked())
        self._revocations = self._loop.create_task(self._follow_revocations())
        if cfg.cluster:
            await self._join_cluster(cluster_keyring)
        # Everything loaded so far (modules, certificates, the cores) lives as long as the
        # process: keep it out of the collector's full passes, which would otherwise scan it
        # all and stall media for tens of milliseconds (measured: 30 ms per gen-2 pass).
        gc.freeze()

    async def _cluster_secrets(self):
        """The cluster keyring and the shared API secret (insert-if-absent); a bad key row stops the start."""
        from callsgw.apisecrets import SystemsApiSecrets
        from callsgw.cluster import keys as cluster_keys

        try:
            keyring = await asyncio.to_thread(cluster_keys.ensure_keyring, self.store)
            self.secrets = await asyncio.to_thread(SystemsApiSecrets, self.store)
        except BaseException:
            self.store.close()
            raise
        return keyring

    async def _join_cluster(self, keyring) -> None:
        from callsgw.cluster.node import start_cluster_node
        from callsgw.server.relay import start_relay

        try:
            self.cluster = await start_cluster_node(self, keyring)
            self.relay = await start_relay(self, self.cluster)
        except BaseException:  # Redis unreachable: undo the start, the caller reports it
            if self.cluster is not None:
                await self.cluster.stop()
                self.cluster = None
            for task in (self._ticker, self._revocations, self._pruner, self._trimmer):
                task.cancel()
            await self.records.stop(timeout=0)
            self.ws_server.close()
            await self.ws_server.wait_closed()  # before the ICE-TCP front closes the listening socket they share
            if self.ice_tcp is not None:
                self.ice_tcp.close()
            if self.whip is not None:
                self.whip.close()
            self.media.close()
            self.store.close()
            raise

    @property
    def port(self) -> int:
        return self.ws_server.sockets[0].getsockname()[1]

    @property
    def media_port(self) -> int:
        return self.media.local_address[1]

    async def stop(self) -> None:
        """Graceful shutdown: no new joins, `bye`, drain, then close."""
        core = self.core
        if self.cluster is not None:
            await self.cluster.drain()  # no new calls for this node
        now = self._loop.time()
        core.shutdown(now)
        self._flush()
        deadline = now + self.config.shutdown_grace
        while core.participant_count and self._loop.time() < deadline:
            await asyncio.sleep(0.1)
        core.close_all(self._loop.time())
        self._flush()
        if self.relay is not None:  # clients relayed from here to other nodes resume elsewhere
            self.relay.release_origins()
        tasks = [o.task for o in self._outboxes.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._ticker is not None:
            self._ticker.cancel()
        if self._trimmer is not None:
            self._trimmer.cancel()
        if self._revocations is not None:
            self._revocations.cancel()
        if self.relay is not None:
            await self.relay.stop()
        if self.cluster is not None:
            await self.cluster.stop()  # leaves the registry at once
        self._pruner.cancel()
        await self.records.stop(timeout=5)  # what the database takes in 5 s is written; the rest is logged
        await asyncio.to_thread(self.store.close)
        if self.whip is not None:
            self.whip.close()
        self.ws_server.close()
        try:
            # idle keep-alive connections (a browser's spare socket) would
            # otherwise hold the shutdown for the whole open timeout
            await asyncio.wait_for(self.ws_server.wait_closed(), timeout=2)
        except asyncio.TimeoutError:
            log.info("closing idle connections at shutdown")
        if self.ice_tcp is not None:
            self.ice_tcp.close()
        self.media.close()

    # -- HTTP (same port) --------------------------------------------------------

    async def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None  # continue with the WebSocket handshake
        if path.startswith("/api/") or path == "/metrics":
            return await admin.handle_async(self, request)  # records-database reads in a worker thread
        if path == "/healthz":
            return self._response(HTTPStatus.OK, b"ok\n", "text/plain")
        if path.startswith(("/whip/", "/whep/")):  # a WHIP/WHEP client pointed at the signaling port
            from callsgw.signaling.whip import PROBLEM_TYPE, Problem

            where = f"port {self.whip.port}" if self.whip is not None else "no port: whip_port is unset"
            problem = Problem(HTTPStatus.METHOD_NOT_ALLOWED, f"WHIP and WHEP are served on {where}", "wrong_port")
            return self._response(problem.status, problem.body(), PROBLEM_TYPE)
        if path == "/demo/token" and self.config.demo:
            return self._demo_token(request)
        if path == "/":
            path = "/index.html"
        file = (WEB_ROOT / path.lstrip("/")).resolve()
        if WEB_ROOT in file.parents and file.is_file():
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            return self._response(HTTPStatus.OK, file.read_bytes(), ctype)
        return self._response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _demo_token(self, request: Request) -> Response:
        from urllib.parse import parse_qs

        query = parse_qs(request.path.partition("?")[2])
        call = (query.get("call") or ["demo"])[0]
        name = (query.get("name") or ["guest"])[0]
        try:
            token = tokens.mint(self.secrets.current(), call=call, name=name, ttl=self.config.token_ttl)
        except (tokens.TokenError, ValueError) as exc:
            return self._response(HTTPStatus.BAD_REQUEST, f"{exc}\n".encode(), "text/plain")
        return self._response(HTTPStatus.OK, token.encode(), "text/plain")

    @staticmethod
    def _response(status: HTTPStatus, body: bytes, ctype: str) -> Response:
        return headers.response(status, body, ctype)

    def _secure(self, connection: ServerConnection, request: Request, response: Response) -> Response:
        """websockets' process_response: every answer gets the security headers (server/headers.py)."""
        return headers.apply_security_headers(response, tls=not self.config.plain_ws)

    # -- WebSocket signaling ---------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            await self._handle_connection(ws)
        finally:
            self._handled += 1  # connections over, for the memory trimmer (_trim_memory)

    async def _handle_connection(self, ws: ServerConnection) -> None:
        core = self.core
        conn_id = next(self._ids)
        ssl_object = ws.transport.get_extra_info("ssl_object")
        tls = describe(ssl_object) if ssl_object is not None else None
        peer = ws.remote_address[:2] if ws.remote_address else ("unknown", 0)
        peer = (peer[0], peer[1])
        # behind a trusted TLS-terminating proxy: its headers give the client's TLS and address (issue #16)
        tls, peer = client_view(self.config.trusted_proxies, peer, getattr(ws.request, "headers", None), tls)
        first = None
        if self.relay is not None:  # cluster mode: the first frame says where the call lives
            first = await self._first_frame(ws)
            if first is None:
                return
            try:
                host = await self.relay.route(first)
            except ClusterUnavailable:
                try:
                    await ws.send(P.encode(P.error("cluster_unavailable", "this node cannot reach the cluster "
                                                   "to find the call's node; try again")))
                    await ws.close(P.Close.CLUSTER_UNAVAILABLE, "the cluster is unavailable; try again")
                except ConnectionClosed:
                    pass
                return
            if host is not None:
                outbox = _Outbox(ws)
                try:
                    await self.relay.carry(ws, first, host, peer, tls, outbox)
                finally:
                    await asyncio.wait([outbox.task], timeout=5)
                    outbox.task.cancel()
                return
        self._outboxes[conn_id] = _Outbox(ws)
        core.connect(conn_id, peer, tls, self._loop.time())
        self._flush()
        try:
            if first is not None:
                core.receive(conn_id, first, self._loop.time())
                self._flush()
            async for message in ws:
                core.receive(conn_id, message, self._loop.time())
                self._flush()
        except ConnectionClosed:
            pass
        finally:
            self.media.sync_counters()  # the leave record carries the engine's counts
            # a close frame with 1000/1001 is a client leaving on purpose; anything else (a dropped
            # connection, 1006) keeps the participant for resume_grace seconds (docs/PROTOCOL.md "Resuming")
            core.disconnect(conn_id, self._loop.time(), clean=ws.close_code in (1000, 1001))
            self._flush()
            outbox = self._outboxes.pop(conn_id, None)
            if outbox is not None:
                outbox.task.cancel()

    async def _first_frame(self, ws: ServerConnection) -> str | bytes | None:
        """A cluster node's first read: the client's first frame, or None (closed, or no join in time)."""
        try:
            return await asyncio.wait_for(ws.recv(), timeout=self.config.join_timeout)
        except asyncio.TimeoutError:
            await ws.close(P.Close.JOIN_TIMEOUT, "no join in time")
        except ConnectionClosed:
            pass
        return None

    # what the relay shell (server/relay.py) uses to run a hosted session like a local one

    def new_conn_id(self) -> int:
        return next(self._ids)

    def add_outbox(self, conn_id: int, sink) -> None:
        self._outboxes[conn_id] = _Outbox(sink)

    @property
    def outboxes(self) -> dict:
        return self._outboxes

    def loop_time(self) -> float:
        return self._loop.time()

    def flush(self) -> None:
        self._flush()

    def _flush(self) -> None:
        for action in self.core.actions():
            if isinstance(action, Send):
                outbox = self._outboxes.get(action.conn_id)
                if outbox is not None and not outbox.put(action.message):
                    log.warning("connection %d reads too slowly; closing it", action.conn_id)
                    outbox.queue = asyncio.Queue(1)
                    outbox.put(Close(action.conn_id, P.Close.RATE_LIMITED, "too slow reading messages"))
            elif isinstance(action, Close):
                outbox = self._outboxes.get(action.conn_id)
                if outbox is not None:
                    outbox.put(action)
            elif isinstance(action, StoreRecord):
                self.records.submit(action.record)  # bounded; a refusal is counted and logged there
            elif isinstance(action, RestartIce):
                self.media.refresh(action.transport)
            elif isinstance(action, AddTransport):
                self.media.add(action.transport, action.port)  # its RTP/RTCP go straight to the call
            elif isinstance(action, RemoveTransport):
                self.media.flush(action.transport)  # close_notify goes out before removal
                self.media.remove(action.transport)

    async def _prune_records(self) -> None:
        """Every hour, drop records older than the retention (off the event loop; the store blocks)."""
        retention = self.config.record_retention_days * 86400
        while True:
            await asyncio.sleep(3600)
            try:
                await asyncio.to_thread(self.store.prune, retention)
            except Exception as exc:  # an outage: the next hour tries again
                log.warning("could not prune old security records (%s)", type(exc).__name__)

    def _on_speaker(self, call_id: str, event) -> None:
        """A call's media plane changed its active speaker (the core tells the participants)."""
        self.core.speaker_changed(call_id, event)
        self._flush()

    def _on_media_event(self, transport, event) -> None:
        self.core.transport_event(transport, event, self._loop.time())
        self._flush()

    def _sync_revoked(self, denied: dict[str, float]) -> None:
        """Hand new deny-list entries to the core (it ends the sessions that use them)."""
        known = self.revoked_tokens
        now = self._loop.time()
        for jti, until in denied.items():
            if known.get(jti) != until:
                known[jti] = until
                ended = self.core.revoke(jti, until, now)
                if ended:
                    log.info("a revoked token ended %d session(s)", ended)
        for jti in [j for j in known if j not in denied]:
            del known[jti]  # expired: the store no longer lists it
        self._flush()

    async def _follow_revocations(self) -> None:
        """Pick up API secret rotations and revocations made by other processes (the CLI).

        The secret files are checked every second (a stat each); the deny-list in the
        records database every REVOCATION_POLL seconds, off the event loop.
        """
        last_poll = self._loop.time()
        while True:
            await asyncio.sleep(1.0)
            try:
                changed = (await asyncio.to_thread(self.secrets.refresh) if self.cluster is not None
                           else self.secrets.refresh())  # the cluster's secret is a database read
                if changed:
                    log.info("the API secret changed (rotation); tokens are checked with the new keys")
            except Exception:  # a broken file must not stop the gateway: keep the keys we have
                log.exception("could not reload the API secrets; keeping the current ones")
            if self._loop.time() - last_poll >= REVOCATION_POLL:
                last_poll = self._loop.time()
                try:
                    self._sync_revoked(await asyncio.to_thread(self.store.revoked))
                except Exception:
                    log.exception("could not read the revoked tokens from the records database")

    async def _trim_memory(self) -> None:
        """After every TRIM_AFTER connections that ended, give freed heap memory back to the kernel (issue #20 item 5).

        A flood of TLS connections leaves RSS at its peak after they close (glibc keeps the
        freed chunks); ``malloc_trim`` in a worker thread returns the free pages.
        """
        trimmed_at = self._handled
        while True:
            await asyncio.sleep(TRIM_INTERVAL)
            if self._handled - trimmed_at >= TRIM_AFTER:
                trimmed_at = self._handled
                gc.collect()  # closed connections are reference cycles (websockets, asyncio, ssl)
                try:
                    await asyncio.to_thread(give_memory_back)
                except Exception:  # an allocator without malloc_trim: nothing to give back this way
                    return

    async def _tick(self) -> None:
        """Run the core's timers: at its next deadline (speaker checks every 0.1 s), at least every TICK."""
        while True:
            deadline = self.core.get_timer()
            delay = TICK if deadline is None else min(TICK, max(MIN_TICK, deadline - self._loop.time()))
            await asyncio.sleep(delay)
            self.media.sync_counters()
            self.core.handle_timer(self._loop.time())
            self._flush()


async def serve(config: Config) -> None:
    """Run the gateway until SIGINT/SIGTERM, then shut down gracefully."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # websockets logs every HTTP request at INFO; keep that for --log-level debug
        logging.getLogger("websockets").setLevel(logging.WARNING)
    app = GatewayApp(config)
    await app.start()
    print(f"callsgw is serving: open {app.url}", flush=True)
    if config.demo:
        print(f"demo call page: {app.url}?demo=1 (open it in two browser tabs)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await stop.wait()
    print("callsgw: shutting down (no new joins; calls drain)", flush=True)
    await app.stop()

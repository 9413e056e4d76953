"""The WHIP (RFC 9725) and WHEP endpoints: a small, bounded HTTP/1.1 server on ``whip_port``.

Why a port of its own: the signaling port's server (websockets) reads no
request body (its ``Request.parse`` refuses any ``Content-Length`` but 0), and
a WHIP offer is a POST body. Sharing the port would need a demultiplexer in
front of TLS and websockets; until then WHIP/WHEP are served here, with the
same certificate (or plain HTTP behind a TLS proxy, like ``plain_ws``).

Each session is a *virtual connection* of the signaling core: the POST feeds
:meth:`GatewayCore.connect` (role ``whip``/``whep``) and a ``join`` with the
bearer token and the offer, then runs the shell's ``_flush``; the core
answers synchronously (``joined`` with the answer, or a refusal). A stand-in
for the WebSocket outbox (:class:`_VirtualOutbox`) catches what the core sends
that connection: the join's outcome, and later the close that ends the
session (transport failure, revocation, shutdown), which forgets the
resource. ``DELETE`` on the resource feeds ``leave``. Everything else the
core says to it (participants joining, speakers) is dropped: a WHIP/WHEP
client has no channel to hear it.

Bounds: the request head (line and headers) at most :data:`MAX_HEAD` bytes
and ``MAX_HEADERS`` fields (:func:`callsgw.signaling.whip.parse_head`), the body at most the join's SDP limit
(64 KiB, 413 beyond), :data:`REQUEST_TIMEOUT` seconds per request, one
request per connection (``Connection: close``), at most :data:`MAX_OPEN`
requests at once (503 beyond). Decisions are
:mod:`callsgw.signaling.whip`'s; every refusal is a problem-details body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus

from callsgw.server import headers as security
from callsgw.signaling import protocol as P
from callsgw.signaling import whip as W
from callsgw.signaling.core import Close
from callsgw.tls import describe

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # request line and headers (and W.MAX_HEADERS fields)
REQUEST_TIMEOUT = 10.0  # seconds to send the whole request
MAX_OPEN = 256  # requests served at once; more get 503 at once (each holds a socket for REQUEST_TIMEOUT at most)


@dataclass
class _Session:
    target: W.Target
    conn_id: int | None  # the local virtual connection, or None for a session relayed to another node
    etag: str
    relayed: str | None = None  # the relay session id (cluster mode, the call on another node)


class _VirtualOutbox:
    """Stands in for a WebSocket's outbox in the shell's ``_flush`` (the same ``put``/``task``)."""

    def __init__(self, server: "WhipServer", conn_id: int):
        self.server = server
        self.conn_id = conn_id
        self.outcome: dict | Close | None = None  # joined, error or close: the first answer to the join
        self.task = asyncio.get_running_loop().create_future()  # the shell's stop() waits for it
        self.task.set_result(None)

    def put(self, item) -> bool:
        if isinstance(item, Close):
            if self.outcome is None:
                self.outcome = item
            else:  # the session ended: forget it once the shell is done flushing
                asyncio.get_running_loop().call_soon(self.server.end, self.conn_id)
        elif self.outcome is None and item.get("type") in ("joined", "error"):
            self.outcome = item
        return True  # never "too slow": nothing is queued


class _RelayedOutbox(_VirtualOutbox):
    """The outbox of a session relayed to the call's node: the host's frames arrive as JSON text."""

    def __init__(self, server: "WhipServer"):
        super().__init__(server, conn_id=0)
        self.answered = asyncio.Event()
        self.relay_session: str | None = None

    def put(self, item) -> bool:
        if isinstance(item, str):
            try:
                item = json.loads(item)
            except ValueError:
                return True
            if not isinstance(item, dict):
                return True
        if isinstance(item, Close) and self.outcome is not None:
            if self.relay_session is not None:  # the session ended on the host
                asyncio.get_running_loop().call_soon(self.server.end_relayed, self.relay_session)
            return True
        if isinstance(item, (dict, Close)):
            super().put(item)
        if self.outcome is not None:
            self.answered.set()
        return True


class WhipServer:
    """The endpoints of one gateway (``app``: its :class:`~callsgw.server.app.GatewayApp`)."""

    def __init__(self, app, *, tls: bool):
        self.app = app
        self.tls = tls
        self.server: asyncio.Server | None = None
        self._sessions: dict[bytes, _Session] = {}  # SHA-256 of the resource id -> session
        self._by_conn: dict[int, bytes] = {}
        self._by_relay: dict[str, bytes] = {}  # relay session id -> resource key (cluster mode)
        self._open = 0
        self.stats = {"whip": 0, "whep": 0, "refused": 0}

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def start(self, host: str, port: int, ssl) -> None:
        self.server = await asyncio.start_server(self._serve, host, port, ssl=ssl, limit=MAX_HEAD)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    # -- one request per TCP connection ----------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_OPEN:
            self.stats["refused"] += 1
            busy = W.Problem(HTTPStatus.SERVICE_UNAVAILABLE, "too many requests at once", "busy", [("Retry-After", "1")])
            try:
                self._write(writer, busy.status, busy.headers, busy.body(), W.PROBLEM_TYPE)
            finally:
                writer.close()
            return
        self._open += 1
        try:
            await self._serve_one(reader, writer)
        finally:
            self._open -= 1

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                try:
                    status, extra, body, ctype = await self._request(reader, writer)
                except W.Problem as problem:
                    self.stats["refused"] += 1
                    status, extra, body, ctype = problem.status, problem.headers, problem.body(), W.PROBLEM_TYPE
                self._write(writer, status, extra, body, ctype)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError, ConnectionError):
            pass  # a broken or too slow request: the connection just closes
        except Exception:  # never a traceback to the peer; the gateway goes on
            log.exception("WHIP/WHEP request failed")
            try:
                problem = W.Problem(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error", "internal")
                self._write(writer, problem.status, [], problem.body(), W.PROBLEM_TYPE)
            except Exception:
                pass
        finally:
            writer.close()

    async def _request(self, reader, writer):
        head = W.parse_head((await reader.readuntil(b"\r\n\r\n"))[:-4])
        method, path, fields = head.method, head.path, head.fields
        target = W.route(method, path)
        if method == "OPTIONS":
            allow = W.ENDPOINT_METHODS if target.resource is None else W.RESOURCE_METHODS
            extra = [("Allow", allow)] + ([("Accept-Post", W.SDP_TYPE)] if target.resource is None else [])
            return HTTPStatus.NO_CONTENT, extra, b"", None
        if method == "POST":
            length = W.content_length(fields)
            body = await reader.readexactly(length)
            ssl_object = writer.get_extra_info("ssl_object")
            peer = writer.get_extra_info("peername") or ("unknown", 0)
            peer, tls = (str(peer[0]), int(peer[1])), describe(ssl_object) if ssl_object is not None else None
            if self.app.relay is not None:  # cluster mode: the call may live on another node
                relayed = await self._create_relayed(target, fields, body, peer, tls)
                if relayed is not None:
                    return relayed
            return self._create(target, fields, body, peer, tls)
        session = self._find(target)
        if method == "PATCH":
            # RFC 9725 section 4.3.1: a session supporting neither trickle ICE nor ICE restarts
            # answers every PATCH with 405. The gateway is ICE-lite: it learns the client's
            # address from its checks, so trickled candidates would change nothing.
            raise W.Problem(HTTPStatus.METHOD_NOT_ALLOWED, "trickle ICE and ICE restarts are not supported "
                            "(the gateway is ICE-lite and needs no candidates)", "method_not_allowed",
                            [("Allow", W.RESOURCE_METHODS)])
        return self._delete(session)

    # -- the sessions ----------------------------------------------------------------------------

    def _create(self, target: W.Target, fields: dict, body: bytes, peer, tls):
        sdp = W.offer_text(fields, body)
        token = W.bearer_token(fields)
        app, core = self.app, self.app.core
        conn_id = next(app._ids)
        outbox = _VirtualOutbox(self, conn_id)
        app._outboxes[conn_id] = outbox
        now = app._loop.time()
        if core.connect(conn_id, peer, tls, now, role=target.role):
            core.receive(conn_id, W.join_message(token, sdp, target.call), now)
        app._flush()
        outcome = outbox.outcome
        if not isinstance(outcome, dict) or outcome.get("type") != "joined":
            self._forget(conn_id)
            if isinstance(outcome, Close):
                raise W.refusal(outcome.code, outcome.reason)
            if isinstance(outcome, dict):
                raise W.error_refusal(outcome)
            raise W.Problem(HTTPStatus.SERVICE_UNAVAILABLE, "the join was not answered", "unavailable")
        resource = W.new_resource()
        key = hashlib.sha256(resource.encode()).digest()
        session = _Session(target, conn_id, W.new_etag())
        self._sessions[key] = session
        self._by_conn[conn_id] = key
        self.stats[target.endpoint] += 1
        conn = core.connections.get(conn_id)
        participant = conn.participant if conn is not None else None
        if (participant is not None and target.role == W.WHIP
                and W.SCREEN in participant.negotiation.published_tracks()):
            # a WHIP publisher's video is its screen share: the call sees it shared (busy: it still flows)
            core.receive(conn_id, P.encode({"type": "screen", "sharing": True}), now)
            app._flush()
        location = f"/{target.endpoint}/{target.call}/{resource}"
        extra = [("Location", location), ("ETag", session.etag), *W.ice_server_links(outcome.get("turn"))]
        return HTTPStatus.CREATED, extra, outcome["sdp"].encode(), W.SDP_TYPE

    async def _create_relayed(self, target: W.Target, fields: dict, body: bytes, peer, tls):
        """In cluster mode: relay the session to the node that hosts the call; None if it is this node."""
        from callsgw.server.relay import ClusterUnavailable

        sdp = W.offer_text(fields, body)
        token = W.bearer_token(fields)
        first = W.join_message(token, sdp, target.call)
        try:
            host = await self.app.relay.route(first)
        except ClusterUnavailable:
            raise W.Problem(HTTPStatus.SERVICE_UNAVAILABLE, "this node cannot reach the cluster to find the "
                            "call's node; try again", "cluster_unavailable", [("Retry-After", "1")]) from None
        if host is None:
            return None
        outbox = _RelayedOutbox(self)
        relay = self.app.relay
        session_id = relay.open_virtual(host, peer, tls, target.role, first, outbox)
        if session_id is None:
            raise W.Problem(HTTPStatus.SERVICE_UNAVAILABLE, "the cluster relay is overloaded", "busy",
                            [("Retry-After", "1")])
        outbox.relay_session = session_id
        try:
            await asyncio.wait_for(outbox.answered.wait(), timeout=REQUEST_TIMEOUT - 1)
        except asyncio.TimeoutError:
            relay.close_virtual(session_id, clean=True)
            raise W.Problem(HTTPStatus.SERVICE_UNAVAILABLE, "the call's node did not answer", "unavailable") from None
        outcome = outbox.outcome
        if not isinstance(outcome, dict) or outcome.get("type") != "joined":
            relay.close_virtual(session_id, clean=True)
            if isinstance(outcome, Close):
                raise W.refusal(outcome.code, outcome.reason)
            raise W.error_refusal(outcome)
        resource = W.new_resource()
        session = _Session(target, None, W.new_etag(), relayed=session_id)
        self._sessions[hashlib.sha256(resource.encode()).digest()] = session
        self._by_relay[session_id] = hashlib.sha256(resource.encode()).digest()
        self.stats[target.endpoint] += 1
        answer = outcome["sdp"]
        if target.role == W.WHIP and _sends_video(sdp):
            # a WHIP publisher's video is its screen share, as on the hosting node's own WHIP port
            relay.send_virtual(session_id, P.encode({"type": "screen", "sharing": True}))
        location = f"/{target.endpoint}/{target.call}/{resource}"
        extra = [("Location", location), ("ETag", session.etag), *W.ice_server_links(outcome.get("turn"))]
        return HTTPStatus.CREATED, extra, answer.encode(), W.SDP_TYPE

    def end_relayed(self, session_id: str) -> None:
        """A relayed session ended on its host (or the host was lost): forget the resource."""
        key = self._by_relay.pop(session_id, None)
        if key is not None:
            self._sessions.pop(key, None)
        self.app.relay.close_virtual(session_id, clean=False)

    def _find(self, target: W.Target) -> _Session:
        session = self._sessions.get(hashlib.sha256(target.resource.encode()).digest())
        if session is None or (session.target.endpoint, session.target.call) != (target.endpoint, target.call):
            raise W.Problem(HTTPStatus.NOT_FOUND, "no such session (it ended, or never existed)", "not_found")
        return session

    def _delete(self, session: _Session):
        """RFC 9725 section 4.2: DELETE ends the session (``leave``; the participant is gone before the 200)."""
        app = self.app
        if session.relayed is not None:  # the host is told to leave; its answer is not waited for
            app.relay.send_virtual(session.relayed, P.encode({"type": "leave"}))
            app.relay.close_virtual(session.relayed, clean=True)
            key = self._by_relay.pop(session.relayed, None)
            if key is not None:
                self._sessions.pop(key, None)
            return HTTPStatus.OK, [], b"", None
        app.media.sync_counters()  # the leave record carries the engine's counts
        app.core.receive(session.conn_id, P.encode({"type": "leave"}), app._loop.time())
        app._flush()
        self.end(session.conn_id)
        return HTTPStatus.OK, [], b"", None

    def end(self, conn_id: int) -> None:
        """The session's virtual connection closed (leave, transport failure, revocation, shutdown)."""
        key = self._by_conn.pop(conn_id, None)
        if key is not None:
            self._sessions.pop(key, None)
        self._forget(conn_id)

    def _forget(self, conn_id: int) -> None:
        app = self.app
        if app._outboxes.pop(conn_id, None) is None:
            return
        app.core.disconnect(conn_id, app._loop.time(), clean=True)
        app._flush()

    # -- writing ---------------------------------------------------------------------------------

    def _write(self, writer, status: HTTPStatus, extra, body: bytes, ctype: str | None) -> None:
        lines = [f"HTTP/1.1 {status.value} {status.phrase}", "Server: callsgw", "Connection: close",
                 f"Content-Length: {len(body)}"]
        if ctype is not None:
            lines.append(f"Content-Type: {ctype}")
        lines += [f"{name}: {value}" for name, value in extra]
        lines += [f"{name}: {value}" for name, value in security.security_headers(tls=self.tls)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


async def start_whip_server(app, host: str, port: int, ssl) -> WhipServer:
    """Serve ``/whip/{call}`` and ``/whep/{call}`` for ``app`` on ``host:port`` (``ssl``: the gateway's context)."""
    server = WhipServer(app, tls=ssl is not None)
    await server.start(host, port, ssl)
    return server


def _sends_video(offer: str) -> bool:
    """Whether a WHIP offer has a live video section that the client sends (its screen share)."""
    video = False
    for line in offer.splitlines():
        if line.startswith("m="):
            video = line.startswith("m=video ") and not line.startswith("m=video 0 ")
        elif video and line.strip() in ("a=sendonly", "a=sendrecv"):
            return True
    return False

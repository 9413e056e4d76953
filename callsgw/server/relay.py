"""Relayed joins in the gateway's shell (issue #15 item 4): any node accepts any client.

In cluster mode, :meth:`GatewayApp._handle` reads a connection's first frame
and asks :meth:`RelayShell.route` where its call lives:

* the call is hosted here (it is in this node's core, or the placement says
  so): the session runs locally, as in single-node mode;
* it is placed on another node: :meth:`RelayShell.carry` keeps the client's
  WebSocket on this node (the *origin*) and forwards its frames to the *host*
  over the relay bus (:mod:`callsgw.cluster.bus`, every frame sealed); the host
  runs the session in its core on a *hosted* connection whose writer publishes
  back (:class:`_RelayLink`);
* the cluster cannot tell (Redis does not answer): the client is closed with
  4012 ``cluster unavailable`` (docs/PROTOCOL.md), unless the call is here.

Node loss: after every heartbeat the node hands the live node ids to
:meth:`prune`. Origin sessions whose host is gone get ``bye`` ``node_lost``
(``reconnect: true``) and close 1012, so the client joins again and the call
is placed anew; hosted sessions whose origin is gone are disconnected as a
dropped socket (the participant stays for the resume grace). A frame for a
session the receiver does not know is answered with a close, so neither end
waits on a session the other has forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed

from callsgw.cluster.relay import RelayFrame, close_frame, msg_frame, open_frame
from callsgw.signaling import protocol as P
from callsgw.signaling import tokens
from callsgw.signaling.core import Close

log = logging.getLogger("callsgw.cluster")

SERVICE_RESTART = 1012  # RFC 6455 section 7.4.1 (IANA registry): the server restarts; reconnect


class ClusterUnavailable(Exception):
    """Where a call lives cannot be known now (the cluster's Redis does not answer)."""


@dataclass
class _Origin:
    host: str
    outbox: object  # server.app._Outbox writing to the client's WebSocket


class _RelayLink:
    """The writer of a hosted connection: what the core says goes back to the origin node."""

    def __init__(self, shell: "RelayShell", origin: str, session: str, conn_id: int):
        self.shell, self.origin, self.session, self.conn_id = shell, origin, session, conn_id

    async def send(self, text: str) -> None:
        if not self.shell.bus.send(self.origin, msg_frame(self.session, text)):
            self.shell.hosted_ended(self.conn_id, clean=False)
            raise ConnectionClosed(None, None)

    async def close(self, code: int, reason: str) -> None:
        self.shell.bus.send(self.origin, close_frame(self.session, code=code, reason=reason))
        self.shell.hosted_ended(self.conn_id, clean=code in (P.Close.NORMAL, P.Close.GOING_AWAY))


class RelayShell:
    """Both ends of relayed sessions on one node: origin sessions (client here) and hosted ones (call here)."""

    def __init__(self, app, node, bus):
        self.app = app
        self.node = node  # callsgw.cluster.node.ClusterNode
        self.bus = bus  # callsgw.cluster.bus.RelayBus
        self.origin: dict[str, _Origin] = {}
        self.hosted: dict[tuple[str, str], int] = {}  # (origin node, session) -> conn id
        self._hosted_by_conn: dict[int, tuple[str, str]] = {}
        self.counts: Counter[str] = Counter(relayed_out=0, relayed_in=0, node_lost=0, unknown_session=0,
                                            refused_full=0)

    # -- origin side ------------------------------------------------------------------------------

    async def route(self, text: str | bytes) -> str | None:
        """The node to relay a connection to, from its first frame; None: run it here.

        Only ``join`` (the call its valid token admits) and ``resume`` (its
        ``call``) name a call; anything else, and a token this node refuses,
        runs here, where the core answers it as usual.
        """
        try:
            message = P.parse_client_message(text)
        except P.ProtocolError:
            return None
        if isinstance(message, P.Join):
            now = time.time()
            try:
                call = tokens.verify(self.app.secrets.verification_keys(now), message.token, call=message.call,
                                     now=now, max_ttl=self.app.config.max_token_ttl).call
            except (tokens.TokenError, ValueError):
                return None
        elif isinstance(message, P.Resume):
            call = message.call
        else:
            return None
        if call in self.app.core.calls:
            return None
        alive = {e.node_id: e for e in self.node.view} or None
        try:
            host = await self.node.place(call, alive=alive)
        except Exception as exc:  # redis-py errors, OSError, timeouts
            log.warning("cannot place a call: the cluster's Redis does not answer (%s)", type(exc).__name__)
            raise ClusterUnavailable from None
        if host is None or host == self.node.node_id:
            return None
        return host

    async def carry(self, ws, first: str | bytes, host: str, peer: tuple[str, int], tls: dict | None, outbox) -> None:
        """Forward one client's WebSocket to ``host`` until either side ends it.

        The sessions carried from here are bounded like this node's own connections
        (``max_connections``): a client beyond that is closed with 4006 at once.
        """
        if len(self.origin) >= self.app.config.max_connections:
            self.counts["refused_full"] += 1
            outbox.put(Close(0, P.Close.RATE_LIMITED, "too many connections"))
            return
        session = secrets.token_hex(12)
        self.origin[session] = _Origin(host, outbox)
        self.counts["relayed_out"] += 1
        clean = False
        try:
            if not self.bus.send(host, open_frame(session, peer, tls, _text(first))):
                outbox.put(Close(0, P.Close.RATE_LIMITED, "the cluster relay is overloaded"))
                return
            async for message in ws:
                if not self.bus.send(host, msg_frame(session, _text(message))):
                    outbox.put(Close(0, P.Close.RATE_LIMITED, "the cluster relay is overloaded"))
                    break
        except ConnectionClosed:
            pass
        finally:
            clean = ws.close_code in (P.Close.NORMAL, P.Close.GOING_AWAY)
            if self.origin.pop(session, None) is not None:
                self.bus.send(host, close_frame(session, clean=clean))

    # -- origin side, for sessions that are not WebSockets (WHIP and WHEP, callsgw/server/whip.py) --

    def open_virtual(self, host: str, peer: tuple[str, int], tls: dict | None, role: str, first: str,
                     outbox) -> str | None:
        """Start a relayed session whose client is an HTTP resource, not a socket; its session id, or None.

        ``outbox`` receives what the host says, as :meth:`carry`'s WebSocket outbox would (``str``
        frames, then a :class:`Close`); the caller sends with :meth:`send_virtual` and ends it with
        :meth:`close_virtual`.
        """
        session = secrets.token_hex(12)
        if not self.bus.send(host, open_frame(session, peer, tls, first, role=role)):
            return None
        self.origin[session] = _Origin(host, outbox)
        self.counts["relayed_out"] += 1
        return session

    def send_virtual(self, session: str, text: str) -> bool:
        origin = self.origin.get(session)
        return origin is not None and self.bus.send(origin.host, msg_frame(session, text))

    def close_virtual(self, session: str, *, clean: bool = True) -> None:
        origin = self.origin.pop(session, None)
        if origin is not None:
            self.bus.send(origin.host, close_frame(session, clean=clean))

    # -- frames from the bus ----------------------------------------------------------------------

    def on_frame(self, sender: str, frame: RelayFrame) -> None:
        key = (sender, frame.session)
        if frame.kind == "open":
            self._open_hosted(sender, frame)
            return
        conn_id = self.hosted.get(key)
        if conn_id is not None:  # a frame from the origin of a session hosted here
            core, now = self.app.core, self.app.loop_time()
            if frame.kind == "msg":
                core.receive(conn_id, frame.text, now)
                self.app.flush()
            else:
                _cancel(self.hosted_ended(conn_id, clean=frame.clean))
            return
        origin = self.origin.get(frame.session)
        if origin is not None and origin.host == sender:  # the host answers a client connected here
            if frame.kind == "msg":
                if not origin.outbox.put(frame.text):
                    origin.outbox.queue = asyncio.Queue(1)
                    origin.outbox.put(Close(0, P.Close.RATE_LIMITED, "too slow reading messages"))
            else:
                self.origin.pop(frame.session, None)
                origin.outbox.put(Close(0, frame.code or SERVICE_RESTART, frame.reason))
            return
        self.counts["unknown_session"] += 1
        if frame.kind == "msg":  # the other end forgot it: tell it, so its client is not left waiting
            self.bus.send(sender, close_frame(frame.session, code=SERVICE_RESTART, reason="relay session lost"))

    def _open_hosted(self, origin: str, frame: RelayFrame) -> None:
        app = self.app
        key = (origin, frame.session)
        if key in self.hosted:
            return
        conn_id = app.new_conn_id()
        self.hosted[key] = conn_id
        self._hosted_by_conn[conn_id] = key
        self.counts["relayed_in"] += 1
        app.add_outbox(conn_id, _RelayLink(self, origin, frame.session, conn_id))
        now = app.loop_time()
        roles = {"role": frame.role} if frame.role is not None else {}  # a WHIP/WHEP session (server/whip.py)
        if app.core.connect(conn_id, frame.peer, frame.tls, now, **roles):
            app.core.receive(conn_id, frame.text, now)
        app.flush()

    def hosted_ended(self, conn_id: int, *, clean: bool):
        """A hosted session is over (its core closed it, or its origin said so): the core forgets it.

        Returns the session's writer (the caller cancels it unless it runs in it), or None.
        """
        key = self._hosted_by_conn.pop(conn_id, None)
        if key is None:
            return None
        self.hosted.pop(key, None)
        self.app.media.sync_counters()  # the leave record carries the engine's counts
        self.app.core.disconnect(conn_id, self.app.loop_time(), clean=clean)
        self.app.flush()
        return self.app.outboxes.pop(conn_id, None)

    # -- node loss --------------------------------------------------------------------------------

    def prune(self, alive: set[str]) -> None:
        """End the sessions relayed to or from nodes that left the registry."""
        for session, origin in list(self.origin.items()):
            if origin.host not in alive:
                self.origin.pop(session, None)
                self.counts["node_lost"] += 1
                origin.outbox.put({"type": "bye", "reason": "node_lost", "reconnect": True})
                origin.outbox.put(Close(0, SERVICE_RESTART, "the call's node was lost; join again"))
        for (node, session), conn_id in list(self.hosted.items()):
            if node not in alive:
                _cancel(self.hosted_ended(conn_id, clean=False))

    def release_origins(self) -> None:
        """This node shuts down: its relayed clients are told to reconnect (to another node), and
        their hosts keep the sessions for the resume grace (an unclean end)."""
        for session, origin in list(self.origin.items()):
            self.origin.pop(session, None)
            self.bus.send(origin.host, close_frame(session, clean=False))
            origin.outbox.put({"type": "bye", "reason": "shutdown", "reconnect": True})
            origin.outbox.put(Close(0, SERVICE_RESTART, "this node is shutting down; reconnect"))

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.bus.drain(), timeout=2)
        except asyncio.TimeoutError:
            log.warning("relay frames still queued at shutdown were not published")
        await self.bus.stop()

    def stats(self) -> dict:
        return {"origin_sessions": len(self.origin), "hosted_sessions": len(self.hosted), **self.counts,
                **{f"bus_{k}": v for k, v in self.bus.counts.items()}}


def _cancel(outbox) -> None:
    if outbox is not None:
        outbox.task.cancel()


def _text(message: str | bytes) -> str:
    """A WebSocket frame as text (a binary frame that is not UTF-8 becomes text the core refuses as bad JSON)."""
    if isinstance(message, str):
        return message
    return bytes(message).decode("utf-8", errors="replace")


async def start_relay(app, node) -> RelayShell:
    """Subscribe this node's inbox and hand the registry's live nodes to the relay after each heartbeat."""
    from callsgw.cluster.bus import RelayBus

    shell = RelayShell(app, node, None)
    shell.bus = RelayBus(app.config.cluster, node.seal, shell.on_frame)
    await shell.bus.start()
    node.on_view = lambda alive: shell.prune(alive)
    return shell

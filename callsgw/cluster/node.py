"""The asyncio shell of a cluster node (``callsgw serve --cluster``, issue #15).

:class:`ClusterNode` owns the node's Redis connection (redis-py's asyncio
client) and runs:

* the heartbeat: every :data:`~callsgw.cluster.registry.HEARTBEAT` seconds the
  node's entry (URL, media addresses, load, state) is sealed and written with
  ``SET name value PX 6000`` plus its name in a sorted-set index scored by
  expiry, so a node that stops is gone within 6 s; readers take the index's
  live names and ``MGET`` them;
* the placement of the calls it hosts (``place(call, prefer_self=True)`` every
  heartbeat: ``SET NX PX`` claims a call, a renewal re-seals it under the
  current key);
* the keyring refresh: the Systems rows are read every second (in a worker
  thread; the store blocks), so a ``cluster-key rotate`` reaches every node.

Redis sees only sealed values and HMAC-derived names
(:class:`callsgw.cluster.seal.Names`). Replies from Redis are bounded: at most
:data:`MAX_NODES` index entries are read, and a value longer than the seal's
bound is dropped unopened.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from callsgw.cluster import ClusterError, cancel_and_wait, keys
from callsgw.cluster.registry import (
    ENTRY_TTL, HEARTBEAT, PLACEMENT_TTL, EntryError, Load, NodeEntry, least_loaded, placement_body,
    placement_node,
)
from callsgw.cluster.seal import Seal
from callsgw.cluster.services import redis_options, redis_url_problem, tls_failure

log = logging.getLogger("callsgw.cluster")

MAX_NODES = 256
"""Registry entries read at most (the index is cut there)."""

_DEL_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def redis_where(url: str) -> str:
    """The Redis URL without credentials, for messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
    except ValueError:
        return "the configured Redis URL"


async def connect_redis(url: str):
    """A redis-py asyncio client that answered PING, or :class:`ClusterError`."""
    try:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError
    except ImportError as exc:  # pragma: no cover - a dependency
        raise ClusterError("cluster mode needs redis-py: pip install 'redis>=5'") from exc
    problem = redis_url_problem(url)
    if problem is not None:
        raise ClusterError(f"the cluster's Redis URL {redis_where(url)} is refused: {problem}")
    client = aioredis.from_url(url, **redis_options(url))  # rediss://: verified TLS 1.2+ (cluster/services.py)
    try:
        await client.ping()
    except (RedisError, OSError, ValueError) as exc:
        await client.aclose()
        why = tls_failure(exc) or type(exc).__name__
        raise ClusterError(f"cannot reach the cluster's Redis at {redis_where(url)}: {why}") from None
    return client


@dataclass(frozen=True)
class LocalState:
    """What the gateway tells the heartbeat: its calls, participants and forwarded packets so far."""

    call_ids: tuple[str, ...] = ()
    participants: int = 0
    forwarded_total: int = 0


class ClusterNode:
    """One node's registry entry, placements and keyring refresh."""

    def __init__(self, *, redis, store, keyring: keys.Keyring, cluster: str, node_id: str, url: str,
                 media: tuple[str, ...], local: Callable[[], LocalState], clock: Callable[[], float] = time.time):
        self.redis = redis
        self.store = store
        self.node_id = node_id
        self.cluster = cluster
        self.seal = Seal(cluster, node_id, keyring, max_age=30.0)
        self._clock = clock
        self._local = local
        self.entry = NodeEntry(node_id=node_id, url=url, media=tuple(media), state="active", started_at=clock())
        self.view: list[NodeEntry] = []  # every live node as of the last heartbeat
        self.unreadable = 0
        self._tasks: list[asyncio.Task] = []
        self._cpu_mark = (time.monotonic(), sum(os.times()[:2]))
        self._forwarded_mark: tuple[float, int] | None = None
        self._del_if_equal = redis.register_script(_DEL_IF_EQUAL)
        self._registry_ok = True
        self.placement_conflicts = 0
        self._drain_requested = False  # by `callsgw cluster drain` (SIGTERM drains for good)
        self._stopping = False
        self.on_view: Callable[[set[str]], None] | None = None  # the live node ids after each heartbeat

    # -- names ----------------------------------------------------------------------------------

    @property
    def _index(self) -> str:
        return self.seal.names.fixed("nodes")

    def _entry_name(self, node_id: str) -> str:
        return self.seal.names.name("node", node_id)

    def _call_name(self, call_id: str) -> str:
        return self.seal.names.name("call", call_id)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.heartbeat()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._beat()), loop.create_task(self._follow_keyring())]

    async def drain(self) -> None:
        """No new calls for this node from now on (its calls stay)."""
        self._stopping = True
        if self.entry.state != "draining":
            self.entry = replace(self.entry, state="draining")
            log.info("cluster node %s is draining: no new calls are placed on it", self.node_id)
            try:
                await self.heartbeat()
            except Exception:
                log.warning("could not announce draining to the cluster's Redis")

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        try:
            name = self._entry_name(self.node_id)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(name)
                pipe.zrem(self._index, name)
                await pipe.execute()
        except Exception:
            log.warning("could not remove this node's registry entry (it expires within %g s)", ENTRY_TTL)
        await self.redis.aclose()

    # -- heartbeat ------------------------------------------------------------------------------

    def _load(self) -> tuple[Load, tuple[str, ...]]:
        local = self._local()
        now_mono = time.monotonic()
        cpu_total = sum(os.times()[:2])
        then, cpu_then = self._cpu_mark
        cpu = (cpu_total - cpu_then) / (now_mono - then) if now_mono > then else 0.0
        self._cpu_mark = (now_mono, cpu_total)
        pps = 0.0
        if self._forwarded_mark is not None:
            t0, n0 = self._forwarded_mark
            if now_mono > t0 and local.forwarded_total >= n0:
                pps = (local.forwarded_total - n0) / (now_mono - t0)
        self._forwarded_mark = (now_mono, local.forwarded_total)
        load = Load(calls=len(local.call_ids), participants=local.participants, forwarded_pps=round(pps, 1),
                    cpu=round(max(0.0, cpu), 3))
        return load, local.call_ids

    async def heartbeat(self) -> None:
        """Write this node's entry, read everyone's, renew the placements of this node's calls."""
        load, call_ids = self._load()
        self.entry = replace(self.entry, load=load)
        await self._check_drain_request()
        now = self._clock()
        name = self._entry_name(self.node_id)
        sealed = self.seal.seal(name, self.entry.to_bytes(), now)
        expiry_ms = int((now + ENTRY_TTL) * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(name, sealed, px=int(ENTRY_TTL * 1000))
            pipe.zadd(self._index, {name: expiry_ms})
            pipe.zremrangebyscore(self._index, "-inf", int(now * 1000))
            await pipe.execute()
        self.view, self.unreadable = await self.nodes()
        alive = {e.node_id: e for e in self.view}
        if self.on_view is not None:
            self.on_view(set(alive))
        for call_id in call_ids:
            owner = await self.place(call_id, prefer_self=True, alive=alive)
            if owner is not None and owner != self.node_id:
                self.placement_conflicts += 1
                log.warning("a call hosted here is placed on node %s; new joins of it are relayed there, "
                            "the participants already here stay", owner)

    async def _check_drain_request(self) -> None:
        """Follow ``callsgw cluster drain NODE [--undo]`` (a sealed request stored under an HMAC name)."""
        name = drain_name(self.seal, self.node_id)
        raw = await self.redis.get(name)
        wanted = raw is not None and self.seal.open_state(name, raw, self._clock(), DRAIN_MAX_AGE) is not None
        if wanted and self.entry.state == "active":
            self._drain_requested = True
            self.entry = replace(self.entry, state="draining")
            log.info("cluster node %s is draining on request: no new calls are placed on it", self.node_id)
        elif not wanted and self._drain_requested and not self._stopping:
            self._drain_requested = False
            self.entry = replace(self.entry, state="active")
            log.info("cluster node %s is active again (drain request withdrawn)", self.node_id)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self.heartbeat()
                if not self._registry_ok:
                    log.info("the cluster's Redis answers again; this node is registered")
                self._registry_ok = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._registry_ok:
                    log.warning("cluster heartbeat failed (%s); retrying every %g s", type(exc).__name__, HEARTBEAT)
                self._registry_ok = False

    async def _follow_keyring(self) -> None:
        while True:
            await asyncio.sleep(keys.REFRESH_INTERVAL)
            try:
                ring = await asyncio.to_thread(keys.read_keyring, self.store)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("could not read the cluster keyring (%s); keeping the keys loaded", type(exc).__name__)
                continue
            if ring is not None and (ring.primary != self.seal.keyring.primary
                                     or ring.previous != self.seal.keyring.previous
                                     or ring.activate_at != self.seal.keyring.activate_at):
                self.seal.set_keyring(ring)
                log.info("cluster key changed: primary %s %s", ring.primary.algorithm, ring.primary.fingerprint)

    # -- reading the registry -----------------------------------------------------------------------

    async def nodes(self) -> tuple[list[NodeEntry], int]:
        """Every live node's entry (sorted by id), and how many entries could not be opened."""
        return await read_nodes(self.redis, self.seal, self._clock())

    # -- placement ----------------------------------------------------------------------------------

    async def place(self, call_id: str, *, prefer_self: bool = False,
                    alive: dict[str, NodeEntry] | None = None) -> str | None:
        """The node that hosts ``call_id``, placing it if it has no live node (None: no active node).

        One ``SET NX`` decides between racing nodes. A placement whose node
        is gone (or that does not open) is removed only if it is still the
        same value (a script), then placed again. ``prefer_self`` claims the
        call for this node (it hosts it already) instead of the least-loaded one.
        ``alive`` (a cached view of the registry) is trusted to place, never to
        declare an owner gone: an owner missing from it is looked up afresh.
        """
        name = self._call_name(call_id)
        fresh = alive is None
        if alive is None:
            entries, _ = await self.nodes()
            alive = {e.node_id: e for e in entries}
        for _ in range(3):
            now = self._clock()
            raw = await self.redis.get(name)
            if raw is not None:
                owner = None
                opened = self.seal.open_state(name, raw, now, PLACEMENT_TTL)
                if opened is not None:
                    try:
                        owner = placement_node(opened.body)
                    except EntryError:
                        owner = None
                if owner is not None and owner not in alive and not fresh:
                    # a view from the last heartbeat may not know a node that started since:
                    # only the registry itself can say the owner is gone
                    entries, _ = await self.nodes()
                    alive, fresh = {e.node_id: e for e in entries}, True
                if owner is not None and owner in alive:
                    if owner == self.node_id:  # renew: fresh seal (current key), fresh TTL
                        fresh = self.seal.seal(name, placement_body(owner), now)
                        await self.redis.set(name, fresh, xx=True, px=int(PLACEMENT_TTL * 1000))
                    return owner
                await self._del_if_equal(keys=[name], args=[raw])
            if prefer_self:
                target = self.node_id
            else:
                chosen = least_loaded(list(alive.values()))
                if chosen is None:
                    return None
                target = chosen.node_id
            sealed = self.seal.seal(name, placement_body(target), now)
            if await self.redis.set(name, sealed, nx=True, px=int(PLACEMENT_TTL * 1000)):
                return target
        return None

    # -- what operators see ---------------------------------------------------------------------------

    def status(self) -> dict:
        """``/api/v1/cluster``: this node, every live node as of the last heartbeat, the key (no I/O)."""
        return status_document(self.cluster, self.seal, self.view, self.unreadable, self._clock(),
                               node_id=self.node_id)


async def read_nodes(redis, seal: Seal, now: float) -> tuple[list[NodeEntry], int]:
    index = seal.names.fixed("nodes")
    names = await redis.zrangebyscore(index, int(now * 1000), "+inf", start=0, num=MAX_NODES)
    if not names:
        return [], 0
    values = await redis.mget(names)
    entries, unreadable = [], 0
    for name, value in zip(names, values):
        if value is None:
            continue  # expired between the two reads
        channel = name.decode() if isinstance(name, bytes) else name
        opened = seal.open_state(channel, value, now, ENTRY_TTL)
        entry = None
        if opened is not None:
            try:
                entry = NodeEntry.from_bytes(opened.body)
            except EntryError:
                entry = None
        # the entry must be the one its name was derived from (no entry copied under another name)
        if entry is None or entry.node_id != opened.sender or seal.names.name("node", entry.node_id) != channel:
            unreadable += 1
            continue
        entries.append(entry)
    entries.sort(key=lambda e: e.node_id)
    return entries, unreadable


def status_document(cluster: str, seal: Seal, entries: list[NodeEntry], unreadable: int, now: float,
                    node_id: str | None = None) -> dict:
    doc = {
        "cluster": cluster,
        "key": seal.keyring.describe(now),
        "nodes": [e.public() for e in entries],
        "unreadable": unreadable,
        "drops": dict(seal.drops),
    }
    if node_id is not None:
        doc["node_id"] = node_id
    return doc


DRAIN_MAX_AGE = 30 * 86400.0
"""A drain request opens for 30 days (then it is stale and the node takes new calls again)."""


def drain_name(seal: Seal, node_id: str) -> str:
    return seal.names.name("drain", node_id)


async def request_drain(config, keyring: keys.Keyring, node_id: str, *, undo: bool = False) -> None:
    """``callsgw cluster drain NODE``: a sealed request the node reads at its next heartbeat."""
    redis = await connect_redis(config.cluster)
    try:
        seal = Seal(config.cluster_name, "operator", keyring)
        name = drain_name(seal, node_id)
        if undo:
            await redis.delete(name)
        else:
            await redis.set(name, seal.seal(name, b"drain", time.time()), px=int(DRAIN_MAX_AGE * 1000))
    finally:
        await redis.aclose()


async def read_cluster_status(config, keyring: keys.Keyring) -> dict:
    """``callsgw cluster status``: the registry as an outside reader (it seals nothing)."""
    redis = await connect_redis(config.cluster)
    try:
        seal = Seal(config.cluster_name, "status-reader", keyring)
        now = time.time()
        entries, unreadable = await read_nodes(redis, seal, now)
        return status_document(config.cluster_name, seal, entries, unreadable, now)
    finally:
        await redis.aclose()


async def start_cluster_node(app, keyring: keys.Keyring) -> ClusterNode:
    """Join the cluster the gateway's settings name; :class:`ClusterKeyError` or :class:`ClusterError` stops it."""
    cfg = app.config
    redis = await connect_redis(cfg.cluster)
    node_id = cfg.node_id or app.datadir.node_id()
    media = tuple(f"{host}:{app.media_port}" for host in app.core.announce)
    if cfg.advertise_url:
        url = cfg.advertise_url
    else:
        base = app.url.rstrip("/")
        url = ("wss" if base.startswith("https") else "ws") + base[base.index(":"):] + "/ws"

    def local() -> LocalState:
        core = app.core
        calls = tuple(core.calls) if core is not None else ()
        forwarded = 0
        participants = 0
        if core is not None:
            for call in core.calls.values():
                for p in call.participants.values():
                    participants += 1
                    counters = getattr(getattr(p, "transport", None), "counters", None)
                    forwarded += int(getattr(counters, "rtp_out", 0) or 0)
        return LocalState(call_ids=calls, participants=participants, forwarded_total=forwarded)

    node = ClusterNode(redis=redis, store=app.store, keyring=keyring, cluster=cfg.cluster_name, node_id=node_id,
                       url=url, media=media, local=local)
    try:
        await node.start()
    except Exception as exc:
        await redis.aclose()
        raise ClusterError(f"cannot register in the cluster's Redis at {redis_where(cfg.cluster)}: "
                           f"{type(exc).__name__}") from None
    log.info("cluster %s: node %s registered (key %s %s)", cfg.cluster_name, node_id,
             keyring.primary.algorithm, keyring.primary.fingerprint)
    return node

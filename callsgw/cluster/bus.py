"""The relay bus: sealed frames between cluster nodes over Redis pub/sub (issue #15 item 4).

Each node subscribes to its own *inbox* channel
(:func:`callsgw.cluster.relay.inbox_channel`, an HMAC-derived name) and
publishes to the inboxes of the nodes it relays to. Every frame is sealed
(:class:`callsgw.cluster.seal.Seal`) on the destination's channel, so Redis
carries only ciphertext, a frame moved to another channel does not open, and
a replayed or stale one is dropped (counted by reason in the seal's
``drops``). Frames that open but do not parse are counted in
:attr:`RelayBus.bad_frames`.

Order: one writer task publishes in the order :meth:`RelayBus.send` was
called (Redis delivers a connection's publishes to a subscriber in order),
batching whatever is queued into one pipeline round trip; one reader task hands
frames to ``on_frame`` in the order they arrive. The send queue is bounded
(:data:`QUEUE_LIMIT`): :meth:`send` returns False when it is full, and the
caller ends that session. When Redis goes away, the reader reconnects with
backoff and subscribes again; frames published meanwhile are lost (pub/sub
keeps nothing), and the sessions they belonged to end (issue #16 owns
keeping calls through a Redis outage).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from callsgw.cluster import cancel_and_wait
from callsgw.cluster.relay import RelayError, RelayFrame, inbox_channel, parse_frame
from callsgw.cluster.seal import Seal
from callsgw.cluster.services import redis_options

log = logging.getLogger("callsgw.cluster")

QUEUE_LIMIT = 8192
"""Frames waiting to be published, at most (then :meth:`RelayBus.send` refuses)."""
BATCH = 64
"""Frames published in one pipeline round trip, at most."""
RECONNECT_MAX = 4.0


class RelayBus:
    """One node's inbox subscription and ordered, sealed publishing."""

    def __init__(self, redis_url: str, seal: Seal, on_frame: Callable[[str, RelayFrame], None], *,
                 clock: Callable[[], float] = time.time):
        self.url = redis_url
        self.seal = seal
        self.on_frame = on_frame
        self._clock = clock
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_LIMIT)
        self._publisher = None
        self._tasks: list[asyncio.Task] = []
        self._subscribed = asyncio.Event()
        self._writing = False
        self.counts: Counter[str] = Counter(published=0, received=0, bad_frames=0, queue_full=0, lost=0)

    @property
    def inbox(self) -> str:
        return inbox_channel(self.seal, self.seal.node_id)

    async def start(self) -> None:
        """Connect, subscribe to this node's inbox, start the reader and writer (waits for the subscription)."""
        import redis.asyncio as aioredis

        self._publisher = aioredis.from_url(self.url, **redis_options(self.url))  # rediss://: verified TLS
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._write())]
        await asyncio.wait_for(self._subscribed.wait(), timeout=10)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._publisher is not None:
            await self._publisher.aclose()

    async def drain(self) -> None:
        """Wait until every queued frame was handed to Redis."""
        while not self._queue.empty() or self._writing:
            await asyncio.sleep(0.01)

    # -- sending ----------------------------------------------------------------------------------

    def send(self, node_id: str, body: bytes) -> bool:
        """Queue ``body`` for ``node_id``'s inbox (sealed when published); False if the queue is full."""
        try:
            self._queue.put_nowait((node_id, body))
            return True
        except asyncio.QueueFull:
            self.counts["queue_full"] += 1
            return False

    async def _write(self) -> None:
        from redis.exceptions import RedisError

        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            now = self._clock()
            self._writing = True
            try:
                async with self._publisher.pipeline(transaction=False) as pipe:
                    for node_id, body in batch:
                        channel = inbox_channel(self.seal, node_id)
                        pipe.publish(channel, self.seal.seal(channel, body, now))
                    await pipe.execute()
                self.counts["published"] += len(batch)
            except (RedisError, OSError) as exc:
                self.counts["lost"] += len(batch)
                log.warning("could not publish %d relay frame(s) to the cluster's Redis (%s)",
                            len(batch), type(exc).__name__)
            finally:
                self._writing = False

    # -- receiving --------------------------------------------------------------------------------

    async def _read(self) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        delay = 0.25
        while True:
            client = aioredis.from_url(self.url, **redis_options(self.url, read_timeout=None))
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                channel = self.inbox
                await pubsub.subscribe(channel)
                self._subscribed.set()
                delay = 0.25
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    self._deliver(channel, message.get("data"))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("the relay bus lost the cluster's Redis (%s); resubscribing in %.2g s",
                            type(exc).__name__, delay)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:
                    pass
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    def _deliver(self, channel: str, data) -> None:
        opened = self.seal.open(channel, data, self._clock())
        if opened is None:
            return  # counted by reason in seal.drops
        try:
            frame = parse_frame(opened.body)
        except RelayError:
            self.counts["bad_frames"] += 1
            return
        self.counts["received"] += 1
        try:
            self.on_frame(opened.sender, frame)
        except Exception:  # one session's trouble must not stop the bus
            log.exception("a relay frame could not be handled")

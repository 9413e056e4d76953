"""Security records written off the event loop, through database outages (issue #20 item 3).

The core emits a :class:`~callsgw.signaling.core.StoreRecord` when a session
joins and when it ends (and on other changes); :class:`RecordWriter` takes
each one (:meth:`RecordWriter.submit`, on the event loop, never blocking) and a
task writes them in a worker thread (the store blocks).

* **Coalesced per session.** Only the newest version of a session's record is
  pending: a join and its leave that both wait during an outage are one write.
  Every write is an upsert (:meth:`RecordStore.upsert_many`), so it does not
  matter whether the join's insert had landed.
* **Buffered, bounded, counted.** While the database refuses writes (server
  down, disk full, file system read-only), records wait in memory, at most
  ``limit`` sessions. A new session beyond that is dropped and counted
  (``dropped``); versions of sessions already waiting still replace theirs.
  The outage is logged once when it starts and once when it ends, with the
  number of records written then; retries back off from 0.5 s to 10 s.
* **Durable, acknowledged.** A record version is *durable* once the
  transaction holding it committed: then it is counted in ``written`` and
  :attr:`durable_sessions` (the most recent :data:`DURABLE_MEMORY` session ids).
  With SQLite that commit is in WAL mode with ``synchronous = FULL``, so it
  survives a crash of the process (and of the machine); with PostgreSQL it is
  the server's commit. A record still pending when the process dies is lost:
  at most what the outage buffered, or the last batch in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque

from callsgw.security.records import SessionRecord

log = logging.getLogger("callsgw.security")

DEFAULT_LIMIT = 10_000
"""Sessions whose newest record may wait for the database at once."""
BATCH = 200
"""Records per transaction, at most."""
RETRY_FIRST, RETRY_MAX = 0.5, 10.0
DURABLE_MEMORY = 4096


class RecordWriter:
    """The one writer of security records (an asyncio task around a blocking store)."""

    def __init__(self, store, *, limit: int = DEFAULT_LIMIT, retry_max: float = RETRY_MAX):
        self.store = store
        self.limit = limit
        self.retry_max = retry_max
        self.pending: OrderedDict[str, SessionRecord] = OrderedDict()
        self.written = 0  # record versions committed
        self.dropped = 0  # sessions refused while the buffer was full
        self.failures = 0  # write attempts the database refused
        self.outage_started: float | None = None  # loop time of the first refusal of the current outage
        self.durable_sessions: deque[str] = deque(maxlen=DURABLE_MEMORY)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self._full_logged = False

    # -- the event loop's side ----------------------------------------------------------------

    def submit(self, record: SessionRecord) -> bool:
        """Queue the newest version of a session's record; False if it was dropped (buffer full)."""
        sid = record.session_id
        if sid not in self.pending and len(self.pending) >= self.limit:
            self.dropped += 1
            if not self._full_logged:
                self._full_logged = True
                log.error("security record buffer full (%d sessions waiting for the database): new sessions' "
                          "records are dropped and counted until it drains", self.limit)
            return False
        self.pending[sid] = record  # a newer version replaces the waiting one, in its place
        self._idle.clear()
        self._wake.set()
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="callsgw-record-writer")

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending (True), or ``timeout`` seconds (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what is pending (up to ``timeout`` seconds), then stop; say what was not written."""
        if not await self.drain(timeout) and self.pending:
            log.error("%d security record(s) could not be written before shutdown", len(self.pending))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def stats(self) -> dict:
        return {"pending": len(self.pending), "written": self.written, "dropped": self.dropped,
                "failures": self.failures, "outage": self.outage_started is not None}

    # -- the writer task ------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RETRY_FIRST
        while True:
            if not self.pending:
                self._idle.set()
                self._full_logged = False
                await self._wake.wait()
                self._wake.clear()
                continue
            batch = list(self.pending.items())[:BATCH]
            try:
                await asyncio.to_thread(self.store.upsert_many, [record for _, record in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database refused: keep everything, retry later
                self.failures += 1
                if self.outage_started is None:
                    self.outage_started = loop.time()
                    log.error("the records database refuses writes (%s: %s); security records are buffered "
                              "(at most %d sessions) and retried", type(exc).__name__, _short(exc), self.limit)
                await asyncio.sleep(delay)
                delay = min(self.retry_max, delay * 2)
                continue
            delay = RETRY_FIRST
            for sid, record in batch:
                if self.pending.get(sid) is record:  # not replaced by a newer version meanwhile
                    del self.pending[sid]
                self.durable_sessions.append(sid)
            self.written += len(batch)
            if self.outage_started is not None:
                log.warning("the records database takes writes again after %.1f s; buffered records written",
                            loop.time() - self.outage_started)
                self.outage_started = None


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]

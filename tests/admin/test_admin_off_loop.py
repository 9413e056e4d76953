"""The admin API's records-database reads leave the event loop (issue #20 item 4).

The real SQLite store is slowed down (each read sleeps 2 s in the thread that makes it) or made to
fail; meanwhile a participant's signaling round trips stay fast, and the API answers what it can.
"""

from __future__ import annotations

import asyncio
import json
import time

from callsgw.client import connect
from callsgw.signaling import tokens
from tests.admin.test_admin_api import get
from tests.signaling.gateway import running_gateway


class SlowReads:
    """The gateway's own store, with every admin read taking ``delay`` seconds (or failing)."""

    def __init__(self, store, delay: float = 2.0, fail: bool = False):
        self._store, self.delay, self.fail = store, delay, fail
        self.reads = 0

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if name not in ("list", "get", "summary", "record_totals"):
            return attr

        def slow(*args, **kwargs):
            self.reads += 1
            time.sleep(self.delay)
            if self.fail:
                raise OSError("the records database went away")
            return attr(*args, **kwargs)

        return slow


async def test_a_slow_records_database_never_delays_signaling(tmp_path):
    async with running_gateway(tmp_path) as app:
        key = app.datadir.rotate_admin_key()
        ann = await connect(f"wss://127.0.0.1:{app.port}/ws", tokens.mint(app.datadir.api_secret(), call="slow",
                                                                         name="ann"), ssl=False)
        try:
            await ann.wait_connected(timeout=20)
            slow = SlowReads(app.store)
            app.store = slow
            requests = [asyncio.create_task(get(app.port, path, key))
                        for path in ("/api/v1/sessions", "/metrics", "/api/v1/security/summary")]
            await asyncio.sleep(0.3)  # the three reads are sleeping in worker threads now
            worst = 0.0
            for _ in range(10):
                began = time.monotonic()
                await ann.ping()
                worst = max(worst, time.monotonic() - began)
            assert worst < 0.5, worst  # on the loop, each read would hold every ping for 2 s
            status = [(await r)[0] for r in requests]
            assert status == [200, 200, 200] and slow.reads == 3
            sessions = json.loads((await requests[0])[2])["sessions"]
            assert [s["participant_name"] for s in sessions] == ["ann"]
        finally:
            await ann.close()


async def test_an_unreachable_records_database_gets_503_and_metrics_show_live_sessions(tmp_path):
    async with running_gateway(tmp_path) as app:
        key = app.datadir.rotate_admin_key()
        ann = await connect(f"wss://127.0.0.1:{app.port}/ws", tokens.mint(app.datadir.api_secret(), call="gone",
                                                                         name="ann"), ssl=False)
        try:
            await ann.wait_connected(timeout=20)
            app.store = SlowReads(app.store, delay=0.0, fail=True)
            status, _, body = await get(app.port, "/api/v1/sessions", key)
            assert status == 503 and b"records database is unavailable" in body
            status, _, body = await get(app.port, "/metrics", key)
            assert status == 200 and b"callsgw_sessions_live 1.0" in body
            status, _, _ = await get(app.port, "/api/v1/calls", key)  # live state needs no database
            assert status == 200
        finally:
            await ann.close()

"""Outages of the shared services (issue #16 items 2 and 3), with the real redis-server and PostgreSQL.

* Redis goes away: a call whose participants are all on its hosting node keeps its media and its
  signaling; a join that needs the cluster (a call this node does not host) fails with
  ``cluster_unavailable`` (close 4012); when Redis is back, every node registers again, renews
  its placements, and relayed joins work again.
* PostgreSQL goes away: placement, secrets and keys are in memory, so media and signaling go on
  and joins are still admitted; records that cannot be written are logged (buffering them is
  issue #20's).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from callsgw.client import connect
from callsgw.client.session import JoinError
from callsgw.cluster.node import connect_redis, read_nodes
from callsgw.cluster.seal import Seal
from tests.cluster.test_nodes import ws_url
from tests.cluster.test_relay import hears, mint, two_nodes
from tests.security.conftest import _PgCluster


async def registered(redis_url: str, seal: Seal, want: set[str], timeout: float) -> None:
    redis = await connect_redis(redis_url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                entries, _ = await read_nodes(redis, seal, time.time())
                if {e.node_id for e in entries} == want:
                    return
                await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


async def test_redis_outage_local_calls_go_on_cluster_joins_get_4012_and_nodes_come_back(tmp_path, redis_server,
                                                                                         pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url) as (a, b):
        await a.cluster.place("local", prefer_self=True)
        ann = await connect(ws_url(a), mint(a, "local", "ann"), ssl=False)
        ben = await connect(ws_url(a), mint(a, "local", "ben"), ssl=False)
        try:
            await asyncio.wait_for(asyncio.gather(ann.wait_connected(), ben.wait_connected()), 20)
            redis_server.stop()
            await asyncio.sleep(2.5)  # a heartbeat fails; nothing of the call may notice
            await hears(ann, ben)
            await hears(ben, ann)
            await ann.ping()
            assert a.core.participant_count == 2
            with pytest.raises(JoinError) as refused:  # B does not host "local": it needs Redis to know
                await connect(ws_url(b), mint(b, "local", "cid"), ssl=False)
            assert refused.value.code == 4012 and refused.value.error["code"] == "cluster_unavailable"
            # a participant of A's own call joins A without Redis
            dee = await connect(ws_url(a), mint(a, "local", "dee"), ssl=False)
            await dee.wait_connected(timeout=20)
            await dee.close()

            redis_server.start()  # empty, on the same port
            await registered(redis_server.url, a.cluster.seal, {"node-a", "node-b"}, timeout=15)
            async with asyncio.timeout(15):  # A claims its call again at its next heartbeat
                while await b.cluster.place("local", alive={e.node_id: e for e in b.cluster.view}) != "node-a":
                    await asyncio.sleep(0.2)
            async with asyncio.timeout(20):  # the relay bus subscribed again: a relayed join works
                while True:
                    try:
                        eve = await connect(ws_url(b), mint(b, "local", "eve"), ssl=False)
                        break
                    except JoinError:
                        await asyncio.sleep(0.5)
            try:
                await eve.wait_connected(timeout=20)
                assert b.relay.stats()["origin_sessions"] == 1 and a.core.participant_count == 3
                await hears(eve, ann)
            finally:
                await eve.close()
            await hears(ann, ben)  # and the call went on through all of it
        finally:
            await ann.close()
            await ben.close()


class StoppablePg(_PgCluster):
    def halt(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.tmp / "server.log"), "-w", "-t", "60",
                  "-o", f"-k {self.socket_dir} -p {self.port} -c listen_addresses='' -c fsync=off", "start")


async def test_a_database_outage_leaves_media_signaling_and_joins_working(tmp_path, redis_server):
    pg = StoppablePg()
    if pg.skip_reason:
        pytest.skip(pg.skip_reason)
    try:
        async with two_nodes(tmp_path, redis_server, pg.new_database()) as (a, b):
            await a.cluster.place("db-down", prefer_self=True)
            ann = await connect(ws_url(a), mint(a, "db-down", "ann"), ssl=False)
            ben = await connect(ws_url(b), mint(b, "db-down", "ben"), ssl=False)  # relayed to A
            try:
                await asyncio.wait_for(asyncio.gather(ann.wait_connected(), ben.wait_connected()), 20)
                await asyncio.to_thread(pg.halt)
                await asyncio.sleep(2.5)  # keyring and secret refreshes fail (logged), heartbeats go on
                await hears(ann, ben)
                await hears(ben, ann)
                await ben.ping()
                cid = await connect(ws_url(b), mint(b, "db-down", "cid"), ssl=False)  # tokens checked from memory
                await cid.wait_connected(timeout=20)
                await hears(cid, ann)
                await cid.close()
                assert a.core.participant_count == 2
                await asyncio.to_thread(pg.resume)
                await asyncio.sleep(1.5)
                await hears(ann, ben)
            finally:
                await ann.close()
                await ben.close()
    finally:
        pg.stop()

"""High availability (issue #15): a cluster of gateways on Redis and PostgreSQL.

* :mod:`callsgw.cluster.keys`: the ``ClusterEncryptionKey`` keyring kept in the
  shared database's ``Systems`` table;
* :mod:`callsgw.cluster.seal`: memberlist's encrypted packet format, sans-I/O,
  with sender/sequence/time inside, replay and staleness checks, drop counts,
  and HMAC-derived Redis key names;
* :mod:`callsgw.cluster.registry`: the node entry (URL, media addresses, load,
  state) and how nodes register and list each other in Redis;
* :mod:`callsgw.cluster.node`: the asyncio shell a ``serve --cluster`` gateway runs;
* :mod:`callsgw.cluster.relay` and :mod:`callsgw.cluster.bus`: relayed signaling
  between nodes, sealed, over Redis pub/sub.
"""

from __future__ import annotations

import asyncio


async def cancel_and_wait(tasks) -> None:
    """Cancel background tasks and wait for each to end (whatever it raised on the way out)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass


class ClusterError(Exception):
    """The cluster cannot be used as configured (Redis unreachable, no PostgreSQL, ...)."""

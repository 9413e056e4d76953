"""Failover with real processes (issue #16 item 1): SIGKILL of a call's node, the call restored.

See :mod:`tests.cluster.failover` for the scenario; ``benchmarks/bench_failover.py`` runs it five
times and reports the median time from SIGKILL to restored media.
"""

from __future__ import annotations

from tests.cluster.failover import failover_once


async def test_a_call_survives_the_sigkill_of_its_node(tmp_path, redis_server, pg_url):
    result = await failover_once(tmp_path, redis_server.url, pg_url)
    # the relayed participant heard about the loss from the node carrying its WebSocket
    assert "node_lost" in result.bye_reasons, result
    assert result.rejoins == 2, result  # both joined again (their sessions died with the node)
    # the registry forgets a node within 6 s, its relays learn it at their next 2 s heartbeat
    assert result.restored_after < 20, result

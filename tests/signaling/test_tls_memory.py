"""Memory per held WSS connection, and RSS given back after a flood (issue #20 item 5).

``callsgw serve`` as a process: 300 WSS connections held (TLS and WebSocket upgrade, no join),
then closed. Before the fix each one cost about 287 KiB (asyncio's 256 KiB TLS read buffer
per connection) and RSS stayed at the flood's peak after they closed; now the read buffer is
32 KiB and the gateway collects the closed connections' cycles and trims the heap after every
100 closed connections (``benchmarks/bench_tls_memory.py`` measures it at any size).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_tls_memory.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_tls_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def enough_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"needs 2048 open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_held_wss_connection_costs_under_150_kib_and_a_flood_is_given_back(enough_descriptors):
    bench = _bench()
    result = await bench.run(connections=300, rounds=2, settle=13.0)  # the trimmer looks every 10 s
    for row in result["rounds"]:
        assert row["per_connection_kib"] < 150, result  # 287 KiB before
    last = result["rounds"][-1]
    assert last["after_kib"] - result["rss_start_kib"] < 20 * 1024, result  # no growth round after round
    assert last["given_back_percent"] > 50, result  # 0% before: RSS stayed at the peak

"""The engine's added-latency histogram (kernel receive -> sendmmsg) and its percentile helper."""

from __future__ import annotations

import numpy as np

from callsgw._native.engine import LATENCY_EDGES_US, latency_percentile
from tests.native_router import NativeRouter
from tests.unit.test_router import exts, forwarded, opus, published, voice_packet


def test_percentile_reads_bucket_edges():
    counts = np.zeros(len(LATENCY_EDGES_US) + 1)
    counts[3], counts[8] = 98, 2
    assert latency_percentile(counts, 0.5) == LATENCY_EDGES_US[3] / 1e6
    assert latency_percentile(counts, 0.98) == LATENCY_EDGES_US[3] / 1e6
    assert latency_percentile(counts, 0.99) == LATENCY_EDGES_US[8] / 1e6
    counts[-1] = 1000  # beyond the last edge
    assert latency_percentile(counts, 0.99) == float("inf")
    assert latency_percentile(np.zeros(4), 0.5) is None


def test_forwarded_copies_are_timed_and_slow_path_copies_are_not():
    router = NativeRouter()
    try:
        router.set_published("alice", "voice", published("0", "voice", [opus()], exts(level=1), (1111,)))
        for n, who in enumerate(("bob", "carol")):
            router.set_forwarded(who, [forwarded("5", ("alice", "voice"), 0xA000 + n, [opus()])])
        router.on_rtp("alice", voice_packet(0), 0.0)  # first packet: the router's slow path, untimed
        assert router.engine.latency_histogram.sum() == 0
        for seq in range(1, 21):
            assert len(router.on_rtp("alice", voice_packet(seq), seq * 0.02)) == 2
        histogram = router.engine.latency_histogram
        assert histogram.sum() == 40  # every fast-path copy, once
        assert latency_percentile(histogram, 0.5) <= 0.1  # loopback, one packet at a time
    finally:
        router.close()

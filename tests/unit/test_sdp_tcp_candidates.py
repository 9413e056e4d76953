"""The gateway's answer carries a ``tcptype passive`` ICE-TCP candidate next to each UDP one
(RFC 6544 sections 4.2 and 4.5; issue #18), ranked below every UDP candidate."""

from __future__ import annotations

from aiortc import sdp as aiosdp

from callsgw.sdp import LocalTransport, host_candidates

FP = ":".join(["AB"] * 32)


def test_tcp_passive_candidates_follow_the_udp_ones_and_rank_below_them():
    local = LocalTransport("gwufrag12345", "g" * 24, FP, ("203.0.113.7", "10.0.0.5"), 8443, tcp_port=443)
    candidates = host_candidates(local)
    udp = [c for c in candidates if c.protocol == "udp"]
    tcp = [c for c in candidates if c.protocol == "tcp"]
    assert [(c.ip, c.port) for c in udp] == [("203.0.113.7", 8443), ("10.0.0.5", 8443)]
    assert [(c.ip, c.port, c.tcpType) for c in tcp] == [("203.0.113.7", 443, "passive"), ("10.0.0.5", 443, "passive")]
    assert max(c.priority for c in tcp) < min(c.priority for c in udp)
    assert len({c.foundation for c in candidates}) == 4  # distinct base and protocol: distinct foundations
    lines = [aiosdp.candidate_to_sdp(c) for c in tcp]
    assert lines[0].endswith("203.0.113.7 443 typ host tcptype passive")


def test_without_a_tcp_port_only_udp_candidates():
    local = LocalTransport("gwufrag12345", "g" * 24, FP, ("203.0.113.7",), 8443)
    assert [c.protocol for c in host_candidates(local)] == ["udp"]

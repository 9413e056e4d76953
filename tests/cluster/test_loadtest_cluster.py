"""``loadtest run --cluster-database``: a load test against a cluster signs its tokens with the
shared ``Systems`` row ``ApiSecret`` (issue #15 item 2), and its participants, joining through
either node, meet in one call on one node.
"""

from __future__ import annotations

import json

from tests.cluster.test_relay import two_nodes
from tests.loadtest.test_replay import cli, real


async def test_loadtest_reads_the_cluster_secret_from_the_database_and_joins_through_any_node(
        tmp_path, capsys, redis_server, pg_url):
    report_path = tmp_path / "report.json"
    async with two_nodes(tmp_path, redis_server, pg_url, joins_per_second_per_address=1000) as (a, b):
        code, out, err = await cli(
            capsys, "--url", f"wss://127.0.0.1:{a.port}/ws", "--cluster-database", pg_url,
            "--calls", "1", "--participants-per-call", "3", "--capture", str(real("opus_voice_10s.pcap")),
            "--duration", "3", "--ramp-up", "50", "--insecure", "--json", str(report_path), "--min-joined", "100%",
        )
        relayed = a.relay.stats()["relayed_out"] + b.relay.stats()["relayed_out"]
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["participants"]["joined"] == 3 and report["failures"] == []
    # the call was placed on the least-loaded node; whichever it was, it got everyone
    assert relayed in (0, 3)


async def test_loadtest_says_so_when_the_cluster_database_cannot_be_read(tmp_path, capsys):
    code, out, err = await cli(
        capsys, "--url", "wss://127.0.0.1:9/ws", "--cluster-database", "sqlite:///nope",
        "--calls", "1", "--participants-per-call", "2", "--capture", str(real("opus_voice_10s.pcap")),
        "--duration", "2",
    )
    assert code == 2 and "--cluster-database must be the cluster's postgresql:// URL" in err
    assert "Traceback" not in err

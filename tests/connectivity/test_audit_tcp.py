"""`callsgw audit` probes the ICE-TCP candidate too (issue #18 deliverable 4): the same 14 DTLS/SRTP
probes over an RFC 4571-framed TCP connection to the gateway's ``tcptype passive`` candidate,
judged like the UDP ones (area ``dtls-tcp``)."""

from __future__ import annotations

import asyncio
import json

import pytest

from callsgw.cli import main
from callsgw.security import audit
from callsgw.security.audit import EXIT_FAIL, EXIT_OK, ProbeResult, judge
from callsgw.signaling import tokens
from tests.audit.test_audit import EXPECTED_DTLS_ACCEPT
from tests.signaling.gateway import running_gateway


def run_audit_cli(tmp_path, capsys, *extra, **gateway):
    async def scenario():
        async with running_gateway(tmp_path, joins_per_second_per_address=50.0, **gateway) as app:
            token = tokens.mint(app.datadir.api_secret(), call="audit-call", name="Auditor", sub="auditor")
            argv = ["audit", f"wss://127.0.0.1:{app.port}/ws", "--token", token, "--insecure", "--json",
                    "--join-interval", "0.05", "--data-dir", str(app.datadir.path), *extra]
            code = await asyncio.to_thread(main, argv)
            return code, app.ice_tcp.stats.copy() if app.ice_tcp else None

    code, stats = asyncio.run(scenario())
    out = capsys.readouterr()
    return code, json.loads(out.out), stats, out


@pytest.mark.parametrize("engine", ["native-thread", "python"])
def test_audit_probes_the_ice_tcp_candidate_and_judges_it_like_udp(tmp_path, capsys, engine):
    code, report, stats, out = run_audit_cli(tmp_path, capsys, media_engine=engine)
    assert code == EXIT_OK, out.out + out.err
    assert report["ice_tcp_probed"] is True
    tcp = {p["probe"]: p for p in report["probes"] if p["area"] == "dtls-tcp"}
    assert len(tcp) == len(audit.dtls_probes()) == 14
    for name, p in tcp.items():
        assert p["verdict"] == "pass", p
        if name in EXPECTED_DTLS_ACCEPT:
            assert p["observed"] == "accepted", p
        else:
            assert p["observed"] == "refused" and p["proof"] is True, p
    assert stats["ice"] >= 14  # every TCP probe really came over ICE-TCP


def test_audit_without_tcp_probes(tmp_path, capsys):
    code, report, _, out = run_audit_cli(tmp_path, capsys, "--no-ice-tcp")
    assert code == EXIT_OK, out.err
    assert report["ice_tcp_probed"] is False and not [p for p in report["probes"] if p["area"] == "dtls-tcp"]


def test_a_gateway_without_ice_tcp_is_audited_over_udp_only(tmp_path, capsys):
    code, report, stats, out = run_audit_cli(tmp_path, capsys, ice_tcp=False)
    assert code == EXIT_OK, out.err
    assert stats is None and report["ice_tcp_probed"] is False


def test_an_accepted_forbidden_offer_over_tcp_fails_the_audit():
    results = [ProbeResult("dtls-tcp", "profile SRTP_AEAD_AES_256_GCM", "refuse", observed="accepted", proof=True)]
    code, _ = judge(results, {"cipher": audit.TLS13_EXPECTED}, {"type": "RSA", "bits": 2048})
    assert code == EXIT_FAIL and results[0].verdict == "FAIL"

"""`callsgw audit --whip URL` (#23 deliverable 5): the DTLS/SRTP probes through the WHIP endpoint, same verdicts."""

from __future__ import annotations

import asyncio
import json

from callsgw.cli import main
from callsgw.security import audit
from callsgw.security.audit import EXIT_OK
from callsgw.signaling import tokens
from tests.audit.test_audit import EXPECTED_DTLS_ACCEPT
from tests.signaling.gateway import running_gateway


def test_audit_through_whip_passes(tmp_path, capsys):
    async def scenario():
        async with running_gateway(tmp_path, whip_port=0, joins_per_second_per_address=50.0) as app:
            token = tokens.mint(app.datadir.api_secret(), call="audit-call", name="Auditor", sub="auditor")
            argv = ["audit", f"wss://127.0.0.1:{app.port}/ws", "--token", token, "--insecure", "--json",
                    "--join-interval", "0.05", "--data-dir", str(app.datadir.path),
                    "--whip", f"https://127.0.0.1:{app.whip.port}/whip/audit-call"]
            code = await asyncio.to_thread(main, argv)
            return code, dict(app.whip.stats), app.whip.sessions, dict(app.core.calls)

    code, stats, sessions, calls = asyncio.run(scenario())
    out = capsys.readouterr()
    assert code == EXIT_OK, out.out + out.err
    report = json.loads(out.out)
    assert report["passed"] and report["whip"].endswith("/whip/audit-call")
    dtls = {p["probe"]: p for p in report["probes"] if p["area"] == "dtls"}
    assert len(dtls) == len(audit.dtls_probes())
    for name, p in dtls.items():
        assert p["verdict"] == "pass", p
        assert p["observed"] == ("accepted" if name in EXPECTED_DTLS_ACCEPT else "refused"), p
    # every probe joined through WHIP and left by DELETE
    assert stats["whip"] == len(dtls) and sessions == 0 and calls == {}


def test_audit_whip_refused_offer_is_a_usage_error(tmp_path, capsys):
    async def scenario():
        async with running_gateway(tmp_path, whip_port=0) as app:
            forged = tokens.mint(b"z" * 32, call="audit-call", name="Auditor")
            argv = ["audit", f"wss://127.0.0.1:{app.port}/ws", "--token", forged, "--insecure",
                    "--whip", f"https://127.0.0.1:{app.whip.port}/whip/audit-call"]
            return await asyncio.to_thread(main, argv)

    assert asyncio.run(scenario()) == audit.EXIT_USAGE
    assert "401" in capsys.readouterr().err

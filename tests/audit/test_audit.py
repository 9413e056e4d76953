"""`callsgw audit` against a real gateway, and its judgement on synthetic observations."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from callsgw.cli import main
from callsgw.security import audit
from callsgw.security.audit import EXIT_FAIL, EXIT_OK, ProbeResult, judge
from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway

EXPECTED_DTLS_ACCEPT = {
    "suite ECDHE-ECDSA-AES128-GCM-SHA256",
    "suite ECDHE-ECDSA-AES256-SHA",
    "profile SRTP_AEAD_AES_128_GCM",
    "profile SRTP_AES128_CM_SHA1_80",
}


def _run_cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr()


@pytest.mark.parametrize("mode", ["one-token", "data-dir"])
def test_audit_of_a_real_gateway_passes(tmp_path, capsys, mode):
    async def scenario():
        async with running_gateway(tmp_path, joins_per_second_per_address=50.0) as app:
            token = tokens.mint(app.datadir.api_secret(), call="audit-call", name="Auditor", sub="auditor")
            argv = ["audit", f"wss://127.0.0.1:{app.port}/ws", "--token", token, "--insecure", "--json",
                    "--join-interval", "0.05"]
            if mode == "data-dir":
                argv += ["--data-dir", str(app.datadir.path)]
            started = time.monotonic()
            code, out = await asyncio.to_thread(_run_cli, argv, capsys)
            return code, out, time.monotonic() - started

    code, out, elapsed = asyncio.run(scenario())
    report = json.loads(out.out)
    assert code == EXIT_OK, out.out + out.err
    assert report["passed"] and report["tls"]["judgement"]["passed"]
    assert report["tls"]["default_client"]["cipher"] == "TLS_AES_256_GCM_SHA384"
    assert report["tls"]["certificate"]["type"] == "RSA" and report["tls"]["certificate"]["bits"] >= 2048
    web = report["web"]
    assert web["passed"] and web["answers"]["page"]["status"] == 200 and web["answers"]["api"]["status"] == 401
    for answer in web["answers"].values():
        assert answer["checks"]["hsts"] and answer["checks"]["csp_frame_ancestors_none"], answer
    probes = {(p["area"], p["probe"]): p for p in report["probes"]}
    dtls = {name: p for (area, name), p in probes.items() if area == "dtls"}
    assert len(dtls) == len(audit.dtls_probes()) == 14
    for name, p in dtls.items():
        assert p["verdict"] == "pass", p
        if name in EXPECTED_DTLS_ACCEPT:
            assert p["expected"] == "accept" and p["observed"] == "accepted", p
        else:
            assert p["expected"] == "refuse" and p["observed"] == "refused", p
            assert p["proof"] is True and p["proof_detail"], p  # the local peer completed the same offer
    tls = {name: p for (area, name), p in probes.items() if area == "tls"}
    for name in ("TLSv1", "TLSv1.1"):
        assert tls[name]["observed"] == "refused" and tls[name]["proof"] is True, tls[name]
    assert tls["TLSv1.2"]["observed"] == tls["TLSv1.3"]["observed"] == "accepted"
    assert tls["TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384"]["observed"] == "accepted"
    for name, p in tls.items():
        assert p["verdict"] == "pass", p
        if name.startswith("TLSv1.2 ") and name.split()[-1] not in audit.TLS_MANDATED:
            assert p["observed"] == "refused" and p["proof"] is True, p
    assert elapsed < 20


def test_table_output_and_usage_errors(tmp_path, capsys):
    async def scenario():
        async with running_gateway(tmp_path, joins_per_second_per_address=50.0) as app:
            token = tokens.mint(app.datadir.api_secret(), call="c", name="A", sub="a")
            table = await asyncio.to_thread(
                _run_cli, ["audit", f"wss://127.0.0.1:{app.port}/ws", "--token", token, "--insecure",
                           "--join-interval", "0.05"], capsys)
            bad_token = await asyncio.to_thread(
                _run_cli, ["audit", f"wss://127.0.0.1:{app.port}/ws", "--token", token + "x", "--insecure"], capsys)
            return table, bad_token

    (code, out), (bad_code, bad_out) = asyncio.run(scenario())
    assert code == EXIT_OK, out.out + out.err
    assert "audit PASSED" in out.out and "probe" in out.out.splitlines()[0]
    assert "web judgement: pass" in out.out and "web page (GET / -> 200): ok" in out.out
    assert bad_code == 2 and "4001" in bad_out.err and "Traceback" not in bad_out.err
    assert len(bad_out.err.strip().splitlines()) == 1
    code, out = _run_cli(["audit", "https://127.0.0.1:1/ws", "--token", "t"], capsys)
    assert code == 2 and "wss://" in out.err
    code, out = _run_cli(["audit", "wss://127.0.0.1:1/ws", "--token", "t", "--insecure"], capsys)
    assert code == 2 and "cannot reach" in out.err and len(out.err.strip().splitlines()) == 1


# -- the judgement on synthetic observations --------------------------------------


def _clean_observations():
    results = [
        ProbeResult("tls", "TLSv1", "refuse", "refused", proof=True),
        ProbeResult("tls", "TLSv1.1", "refuse", "refused", proof=True),
        ProbeResult("tls", "TLSv1.2", "either", "accepted", proof=True),
        ProbeResult("tls", "TLSv1.3", "either", "accepted", proof=True),
        ProbeResult("tls", "TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384", "either", "accepted", proof=True),
        ProbeResult("tls", "TLSv1.2 AES128-SHA", "refuse", "refused", proof=True),
    ]
    for probe in audit.dtls_probes():
        observed = "accepted" if probe.expected == "accept" else "refused"
        results.append(ProbeResult("dtls", probe.name, probe.expected, observed, proof=True))
    return results


GOOD_TLS13 = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
GOOD_CERT = {"type": "RSA", "bits": 2048}


def _set(results, name, **changes):
    for r in results:
        if r.probe == name:
            for k, v in changes.items():
                setattr(r, k, v)
            return results
    raise KeyError(name)


def test_judgement_passes_clean_observations():
    results = _clean_observations()
    code, tls = judge(results, GOOD_TLS13, GOOD_CERT)
    assert code == EXIT_OK and tls["passed"]
    assert {r.verdict for r in results} == {"pass"}


@pytest.mark.parametrize(
    "name",
    ["suite ECDHE-ECDSA-CHACHA20-POLY1305", "DTLS 1.0 only", "profile SRTP_AES128_CM_SHA1_32",
     "wrong fingerprint", "suite ECDHE-RSA-AES128-GCM-SHA256"],
)
def test_an_accepted_forbidden_dtls_offer_fails_the_audit(name):
    results = _set(_clean_observations(), name, observed="accepted")
    code, _ = judge(results, GOOD_TLS13, GOOD_CERT)
    assert code == EXIT_FAIL
    assert [r.verdict for r in results if r.probe == name] == ["FAIL"]


def test_an_unprovable_refusal_fails_the_audit():
    results = _set(_clean_observations(), "suite ECDHE-ECDSA-CHACHA20-POLY1305", proof=False)
    code, _ = judge(results, GOOD_TLS13, GOOD_CERT)
    assert code == EXIT_FAIL
    assert [r.verdict for r in results if r.probe == "suite ECDHE-ECDSA-CHACHA20-POLY1305"] == ["unprovable"]
    results = _set(_clean_observations(), "TLSv1", proof=False)
    assert judge(results, GOOD_TLS13, GOOD_CERT)[0] == EXIT_FAIL


def test_a_refused_mandated_offer_fails_the_audit():
    results = _set(_clean_observations(), "profile SRTP_AEAD_AES_128_GCM", observed="refused")
    assert judge(results, GOOD_TLS13, GOOD_CERT)[0] == EXIT_FAIL


@pytest.mark.parametrize(
    "change",
    [
        ("results", "TLSv1", "accepted"),
        ("results", "TLSv1.2 AES128-SHA", "accepted"),
        ("tls13", {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256"}, None),
        ("cert", {"type": "RSA", "bits": 1024}, None),
        ("cert", {"type": "ECDSA", "bits": 224}, None),
    ],
)
def test_tls_judgement_failures(change):
    results, tls13, cert = _clean_observations(), GOOD_TLS13, GOOD_CERT
    kind, value, observed = change
    if kind == "results":
        _set(results, value, observed=observed)
    elif kind == "tls13":
        tls13 = value
    else:
        cert = value
    code, tls = judge(results, tls13, cert)
    assert code == EXIT_FAIL and not tls["passed"]


def test_judgement_passes_ecdsa_p256_certificate():
    assert judge(_clean_observations(), GOOD_TLS13, {"type": "ECDSA", "bits": 256})[0] == EXIT_OK


@pytest.mark.parametrize("probe", audit.dtls_probes(), ids=lambda p: p.name)
def test_every_probe_completes_against_the_permissive_local_peer(probe):
    cert = audit.RsaCertificate() if probe.rsa else audit.DtlsCertificate.generate()
    ok, detail = audit.local_dtls_proof(probe, cert)
    assert ok, detail


# -- the web headers ---------------------------------------------------------------

GOOD_HEADERS = {
    "content-security-policy": "default-src 'self'; connect-src 'self'; media-src 'self' blob:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "strict-transport-security": "max-age=31536000",
}


def test_web_judgement_on_synthetic_headers():
    assert all(audit.judge_web(GOOD_HEADERS).values())
    assert "hsts" not in audit.judge_web(GOOD_HEADERS, tls=False)
    csp = GOOD_HEADERS["content-security-policy"]
    broken = {
        "csp_frame_ancestors_none": {"content-security-policy": csp.replace("frame-ancestors 'none'", "")},
        "csp_base_uri_none": {"content-security-policy": csp.replace("base-uri 'none'", "base-uri 'self'")},
        "csp_form_action_self": {"content-security-policy": csp.replace("form-action 'self'", "form-action *")},
        "csp_connect_src_same_origin": {"content-security-policy": csp.replace("connect-src 'self'",
                                                                               "connect-src 'self' wss: ws:")},
        "csp_default_src_same_origin": {"content-security-policy": csp.replace("default-src 'self'", "default-src *")},
        "x_frame_options_deny": {"x-frame-options": "SAMEORIGIN"},
        "x_content_type_options_nosniff": {"x-content-type-options": ""},
        "hsts": {"strict-transport-security": "max-age=300"},
    }
    for check, change in broken.items():
        checks = audit.judge_web({**GOOD_HEADERS, **change})
        assert [name for name, ok in checks.items() if not ok] == [check], (check, checks)
    assert not any(audit.judge_web({}).values())


def test_audit_fails_a_gateway_without_the_web_headers(tmp_path, capsys, monkeypatch):
    """The same real gateway with the pre-#21 headers: the web section and the whole audit fail."""
    from callsgw.server import headers

    def weak(*, tls):
        return [("Content-Security-Policy", "default-src 'self'; connect-src 'self' wss: ws:; media-src 'self' blob:"),
                ("X-Content-Type-Options", "nosniff")]

    monkeypatch.setattr(headers, "security_headers", weak)

    async def scenario():
        async with running_gateway(tmp_path, joins_per_second_per_address=50.0) as app:
            web = await asyncio.to_thread(audit.probe_web, "127.0.0.1", app.port, audit._client_context())
            token = tokens.mint(app.datadir.api_secret(), call="c", name="A", sub="a")
            result = await asyncio.to_thread(
                _run_cli, ["audit", f"wss://127.0.0.1:{app.port}/ws", "--token", token, "--insecure", "--json",
                           "--join-interval", "0.05"], capsys)
            return web, result

    web, (code, out) = asyncio.run(scenario())
    assert not web["passed"]
    for answer in web["answers"].values():
        failed = {name for name, ok in answer["checks"].items() if not ok}
        assert failed == {"csp_connect_src_same_origin", "csp_frame_ancestors_none", "csp_base_uri_none",
                          "csp_form_action_self", "x_frame_options_deny", "hsts"}, failed
    report = json.loads(out.out)
    assert code == EXIT_FAIL and not report["passed"] and not report["web"]["passed"]
    assert report["tls"]["judgement"]["passed"]  # only the web section failed

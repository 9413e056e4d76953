"""Admin API, /metrics, `callsgw inspect` and `callsgw admin-key` against a real gateway."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import urllib.error
import urllib.request

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from callsgw import cli
from callsgw.client import connect
from callsgw.datadir import DataDir
from callsgw.dtls import connection as dtls_connection
from callsgw.server import admin
from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway

MANDATED = {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"}


def _get(port: int, path: str, key: str | None):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def get(port, path, key):
    return await asyncio.to_thread(_get, port, path, key)


async def wait_for(predicate, timeout: float = 15.0):
    async with asyncio.timeout(timeout):
        while not (result := await predicate()):
            await asyncio.sleep(0.05)
        return result


async def two_party_call(app, call="adm"):
    secret = app.datadir.api_secret()
    url = f"wss://127.0.0.1:{app.port}/ws"
    toks = [tokens.mint(secret, call=call, name=n) for n in ("alice", "bob")]
    a = await connect(url, toks[0], ssl=False)
    await a.wait_connected(timeout=20)
    b = await connect(url, toks[1], ssl=False)
    await b.wait_connected(timeout=20)

    async def both_recorded():
        rows = await asyncio.to_thread(app.store.list, call_id=call)
        return rows if len(rows) == 2 and all(r.dtls.cipher_suite for r in rows) else None

    await wait_for(both_recorded)
    return a, b, toks


async def _routed(app, call_id: str):
    call = app.core.calls.get(call_id)
    if call is None:
        return None
    ready = [p for p in call.participants.values()
             if p.negotiation.forwarded_sources() and p.negotiation.pending_offer is None]
    return ready if len(ready) == len(call.participants) else None


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


async def test_endpoints_metrics_and_inspect(tmp_path, capsys):
    async with running_gateway(tmp_path) as app:
        key = app.datadir.admin_key(announce=False)
        assert key
        a, b, _ = await two_party_call(app)
        port = app.port

        status, headers, body = await get(port, "/api/v1/calls", key)
        assert status == 200 and headers["Content-Type"] == "application/json"
        (call,) = json.loads(body)["calls"]
        assert call["id"] == "adm" and call["created_at"] > 1e9
        names = {p["name"] for p in call["participants"]}
        assert names == {"alice", "bob"}
        for p in call["participants"]:
            assert set(p) >= {"id", "name", "muted", "sharing", "session_id"}

        status, _, body = await get(port, "/api/v1/calls/adm", key)
        assert status == 200 and json.loads(body)["id"] == "adm"
        assert (await get(port, "/api/v1/calls/nope", key))[0] == 404
        assert (await get(port, "/api/v1/sessions/nope", key))[0] == 404
        assert (await get(port, "/api/v1/unknown", key))[0] == 404

        sid = call["participants"][0]["session_id"]
        status, _, body = await get(port, f"/api/v1/sessions/{sid}", key)
        record = json.loads(body)
        assert status == 200 and record["session_id"] == sid
        assert record["dtls"]["cipher_suite"] in MANDATED
        assert record["dtls"]["version"] == "DTLS 1.2"
        assert record["dtls"]["fingerprint_matched"] is True
        assert record["srtp_profile"] == "AEAD_AES_128_GCM"
        assert record["signaling"]["tls_cipher"] == "TLS_AES_256_GCM_SHA384"

        status, _, body = await get(port, "/api/v1/security/summary", key)
        summary = json.loads(body)
        assert status == 200
        assert summary["live_calls"] == 1 and summary["live_sessions"] == 2
        assert summary["sessions"] == 2 and summary["failed"] == 0
        assert sum(summary["by_cipher_suite"].values()) == 2
        assert summary["by_srtp_profile"] == {"AEAD_AES_128_GCM": 2}

        # media a -> b through the (default) native engine, seen in the counters and metrics
        import struct

        await wait_for(lambda: _routed(app, "adm"))  # both subscribed to each other
        for seq in range(20):
            a.send_voice(struct.pack("!BBHII", 0x80, 111, seq, seq * 960, 0) + bytes(100))
        async with asyncio.timeout(10):
            for _ in range(20):
                await b.rtp.get()

        status, headers, body = await get(port, "/metrics", key)
        text = body.decode()
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert metric_value(text, "callsgw_engine_forwarded") >= 20
        assert metric_value(text, 'callsgw_packets_total{direction="in"}') >= 20
        assert metric_value(text, 'callsgw_packets_total{direction="out"}') >= 20
        assert metric_value(text, "callsgw_engine_datagrams_total") > 20
        assert metric_value(text, 'callsgw_engine_drops{reason="auth_failures"}') == 0
        assert metric_value(text, "callsgw_calls_live") == 1
        assert metric_value(text, "callsgw_sessions_live") == 2
        assert metric_value(text, 'callsgw_handshakes_total{outcome="completed"}') == 2
        assert metric_value(text, 'callsgw_handshakes_total{outcome="failed"}') == 0
        assert metric_value(text, 'callsgw_srtp_profile_total{profile="AEAD_AES_128_GCM"}') == 2
        assert metric_value(text, "callsgw_handshake_duration_seconds_count") == 2
        assert metric_value(text, "callsgw_srtp_auth_failures_total") == 0
        assert metric_value(text, "callsgw_srtp_replays_total") == 0
        assert 'callsgw_packets_total{direction="out"}' in text
        assert 'callsgw_bytes_total{direction="in"}' in text
        suites = [l for l in text.splitlines() if l.startswith("callsgw_handshakes_by_suite_total{")]
        assert sum(float(l.split()[-1]) for l in suites) == 2

        # inspect --json and the table, through the real API (blocking CLI in a thread)
        args = ["inspect", "--url", f"https://127.0.0.1:{port}", "--admin-key", key, "--insecure"]
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, [*args, "--json"])
        out = capsys.readouterr().out
        assert code == 0
        sessions = json.loads(out)["sessions"]
        assert {s["participant_name"] for s in sessions} == {"alice", "bob"}
        assert all(s["dtls"]["cipher_suite"] in MANDATED for s in sessions)
        code = await asyncio.to_thread(cli.main, [*args, "--call", "adm"])
        out = capsys.readouterr().out
        assert code == 0 and "DTLS SUITE" in out and "AEAD_AES_128_GCM" in out and "alice" in out
        assert "yes" in out and "live" in out

        # the recent (left) session is still listed
        await a.leave()

        async def left():
            recs = await asyncio.to_thread(app.store.list, call_id="adm")
            return all(r.left_at is not None for r in recs if r.participant_name == "alice")

        await wait_for(left)
        status, _, body = await get(port, "/api/v1/sessions", key)
        listed = json.loads(body)["sessions"]
        assert {s["participant_name"] for s in listed} == {"alice", "bob"}
        await b.leave()


async def test_rejections_and_rotation(tmp_path, capsys):
    async with running_gateway(tmp_path) as app:
        key = app.datadir.admin_key(announce=False)
        port = app.port
        answers = []
        for path in ("/api/v1/calls", "/metrics", "/api/v1/security/summary"):
            for presented in (None, "wrong", key + "x", ""):
                status, headers, body = await get(port, path, presented)
                assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
                answers.append(body)
        assert len(set(answers)) == 1 and answers[0] == admin.UNAUTHORIZED_BODY
        assert (await get(port, "/api/v1/calls", key))[0] == 200

        # only GET (websockets' HTTP parser refuses other methods before us; check handle() directly)
        for method in ("POST", "DELETE", "PUT"):
            req = Request("/api/v1/calls", Headers([("Authorization", f"Bearer {key}")]))
            object.__setattr__(req, "method", method) if hasattr(req, "__dataclass_fields__") else None
            req.method = method
            resp = admin.handle(app, req)
            assert resp.status_code == 405 and resp.headers["Allow"] == "GET"

        # inspect: wrong key, refused connection, untrusted certificate: exit 2, one line
        base = ["inspect", "--url", f"https://127.0.0.1:{port}"]
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, [*base, "--admin-key", "wrong", "--insecure"])
        err = capsys.readouterr().err
        assert code == 2 and "401" in err and err.count("\n") == 1 and "Traceback" not in err
        code = await asyncio.to_thread(cli.main, [*base, "--admin-key", key])
        err = capsys.readouterr().err
        assert code == 2 and "certificate" in err and err.count("\n") == 1

        # rotation: the old key stops working at once, the new one works
        capsys.readouterr()
        code = cli.main(["admin-key", "--data-dir", str(app.datadir.path), "--rotate"])
        new = capsys.readouterr().out.strip()
        assert code == 0 and new and new != key
        assert (await get(port, "/api/v1/calls", key))[0] == 401
        assert (await get(port, "/api/v1/calls", new))[0] == 200

    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    free = s.getsockname()[1]
    s.close()
    code = cli.main(["inspect", "--url", f"https://127.0.0.1:{free}", "--admin-key", "k"])
    err = capsys.readouterr().err
    assert code == 2 and "refused" in err and err.count("\n") == 1


def test_admin_key_is_stored_hashed(tmp_path, capsys):
    path = tmp_path / "d"
    code = cli.main(["admin-key", "--data-dir", str(path)])
    captured = capsys.readouterr()
    key = captured.out.strip()
    assert code == 0 and len(key) >= 43
    datadir = DataDir(path)
    assert datadir.check_admin_key(key) and not datadir.check_admin_key(key[:-1]) and not datadir.check_admin_key("")
    assert oct(os.stat(path / "admin_key.sha256").st_mode & 0o777) == "0o600"
    for name in os.listdir(path):
        assert key.encode() not in (path / name).read_bytes()
    # asked again: cannot be shown, explains
    code = cli.main(["admin-key", "--data-dir", str(path)])
    captured = capsys.readouterr()
    assert code == 0 and captured.out == "" and "--rotate" in captured.err and key not in captured.err
    assert datadir.admin_key() is None
    # a plain key file from an older version is migrated to its hash
    legacy = tmp_path / "old"
    old = DataDir(legacy)
    old.write_private_file("admin_key", b"A" * 43 + b"\n")
    assert old.admin_key() is None and old.check_admin_key("A" * 43)
    assert sorted(os.listdir(legacy)) == ["admin_key.sha256"]


WEBSOCKETS_FRAME_LEAK = (
    "websockets' own DEBUG loggers (websockets.client / websockets.server) log frame contents, "
    "including the join message's token; needs a fix in server/app.py and client/ (a logger "
    "filter or an INFO floor for those loggers), outside tests/admin"
)


@pytest.mark.parametrize(
    "with_websockets_frames",
    [False, True],
)
async def test_no_secret_reaches_logs_metrics_or_api(tmp_path, caplog, monkeypatch, with_websockets_frames):
    srtp_keys = []
    original = dtls_connection.SrtpKeys.sessions

    def spy(self, **options):
        srtp_keys.extend([self.local_key, self.local_salt, self.remote_key, self.remote_salt])
        return original(self, **options)

    monkeypatch.setattr(dtls_connection.SrtpKeys, "sessions", spy)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    try:
        async with running_gateway(tmp_path) as app:
            key = app.datadir.admin_key(announce=False)
            a, b, toks = await two_party_call(app, call="sec")
            answers = []
            status, _, body = await get(app.port, "/api/v1/calls", key)
            answers.append(body)
            call = json.loads(body)["calls"][0]
            for path in ["/api/v1/calls/sec", "/api/v1/security/summary", "/api/v1/sessions", "/metrics",
                         *[f"/api/v1/sessions/{p['session_id']}" for p in call["participants"]]]:
                status, _, body = await get(app.port, path, key)
                assert status == 200, path
                answers.append(body)
            await a.leave()
            await b.leave()
            await asyncio.sleep(0.3)
            secret = app.datadir.api_secret()
            stored = json.dumps([r.as_dict() for r in app.store.list(limit=100)])
    finally:
        root.removeHandler(handler)

    assert len(srtp_keys) >= 8, "both participants' and the gateway's SRTP keys were captured"
    texts = [b.decode("utf-8", "replace") for b in answers]
    texts.append(stored)
    if with_websockets_frames:
        texts.append(caplog.text)
    else:
        records = [r for r in records if not r.name.startswith("websockets.")]
    for r in records:
        texts.append(r.getMessage())
        texts.append(repr(r.args))
    haystack = "\n".join(texts)
    assert len(records) > 0
    needles = [*toks, key, secret.hex(), secret.decode("latin-1"), repr(secret)]
    for material in srtp_keys:
        needles += [material.hex(), repr(material), material.decode("latin-1")]
    import base64

    needles += [base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode().rstrip("=")]
    for needle in needles:
        leaks = sorted({f"{r.name}:{r.levelname}" for r in records if needle in r.getMessage() + repr(r.args)})
        assert needle and needle not in haystack, leaks
    raw = b"\n".join(answers)
    for material in [secret, *srtp_keys]:
        assert material not in raw

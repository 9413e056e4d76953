"""Every HTTP answer of a real gateway carries the security headers, built by one function.

The page and its files, the admin API (authorised or not), ``/metrics``,
``/healthz``, the demo token and its refusal, a 404, and websockets' own
refusal of a plain GET on ``/ws``: each must carry exactly one of each header
of :func:`callsgw.server.headers.security_headers`, with HSTS only when the
gateway serves TLS itself (not with ``--plain-ws``).
"""

from __future__ import annotations

import asyncio
import http.client
import ssl

import pytest

from callsgw.server import headers
from tests.signaling.gateway import running_gateway

PATHS = [
    ("/", None, 200),
    ("/index.html", None, 200),
    ("/app.js", None, 200),
    ("/style.css", None, 200),
    ("/nope", None, 404),
    ("/../../etc/passwd", None, 404),
    ("/healthz", None, 200),
    ("/api/v1/calls", None, 401),
    ("/api/v1/calls", "key", 200),
    ("/api/v1/nope", "key", 404),
    ("/api/v1/sessions?limit=x", "key", 400),
    ("/metrics", None, 401),
    ("/metrics", "key", 200),
    ("/demo/token?call=demo&name=a", None, 200),
    ("/demo/token?call=bad%20id!", None, 400),
    ("/ws", None, 426),  # websockets' own refusal: not a WebSocket upgrade
]

FRAMING = {"frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'", "connect-src 'self'",
           "default-src 'self'", "media-src 'self' blob:"}


def _fetch(port: int, path: str, key: str | None, tls: bool) -> tuple[int, list[tuple[str, str]]]:
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        r = conn.getresponse()
        r.read()
        return r.status, r.getheaders()
    finally:
        conn.close()


def _check(answer_headers: list[tuple[str, str]], *, tls: bool, where: str) -> None:
    names = [name.lower() for name, _ in answer_headers]
    got = {name.lower(): value for name, value in answer_headers}
    for name, value in headers.security_headers(tls=tls):
        assert names.count(name.lower()) == 1, (where, name, answer_headers)
        assert got[name.lower()] == value, (where, name, got[name.lower()])
    csp = {d.strip() for d in got["content-security-policy"].split(";")}
    assert FRAMING <= csp, (where, csp)
    assert not any(" ws:" in d or " wss:" in d for d in csp), "connect-src allows any host"
    assert got["x-frame-options"] == "DENY"
    if tls:
        assert int(got["strict-transport-security"].removeprefix("max-age=")) >= 31_536_000
    else:
        assert "strict-transport-security" not in got, where


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain-ws"])
async def test_every_answer_carries_the_security_headers(tmp_path, tls):
    async with running_gateway(tmp_path, demo=True, plain_ws=not tls) as app:
        key = app.datadir.admin_key(announce=False)
        for path, auth, status in PATHS:
            got, answer = await asyncio.to_thread(_fetch, app.port, path, key if auth else None, tls)
            assert got == status, (path, got)
            _check(answer, tls=tls, where=path)


def test_one_function_builds_them():
    assert ("Strict-Transport-Security", "max-age=31536000") in headers.security_headers(tls=True)
    assert all(name != "Strict-Transport-Security" for name, _ in headers.security_headers(tls=False))
    answer = headers.response(__import__("http").HTTPStatus.OK, b"x", "text/plain",
                              [("X-Frame-Options", "SAMEORIGIN")])
    headers.apply_security_headers(answer, tls=False)
    assert answer.headers.get_all("X-Frame-Options") == ["DENY"]  # replaced, never doubled

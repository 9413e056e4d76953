"""No secret sent in a URL reaches the gateway's log, at DEBUG, whatever websockets' format strings.

Each case sends a fresh random secret in a request target (the query string,
a fragment, a malformed request line, a Referer header) to a real gateway
whose loggers are all at DEBUG, then formats every captured record (message
and traceback, as a log handler would write them) and greps the whole text
for the secret. A positive control shows the request was logged at all, with
its path and the query cut off, so a test that sees nothing cannot pass.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect as ws_connect

from callsgw import logsafety
from tests.signaling.gateway import running_gateway


class _Formatted(logging.Handler):
    """Every record formatted as a file handler would write it (message, then traceback)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _http_get(port: int, target: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(f"https://127.0.0.1:{port}{target}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=_tls(), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with _tls().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(request)
            chunks = []
            try:
                while chunk := tls.recv(65536):
                    chunks.append(chunk)
            except (ssl.SSLError, ConnectionError, socket.timeout):
                pass
            return b"".join(chunks)


async def _page(port, secret):
    assert await asyncio.to_thread(_http_get, port, f"/?call=standup&name=alice&token={secret}") == 200
    return "GET /?[redacted] HTTP/1.1"


async def _ws_path_plain_get(port, secret):
    # a browser-style GET of /ws without the upgrade: websockets refuses it itself
    assert await asyncio.to_thread(_http_get, port, f"/ws?token={secret}") == 426
    return "GET /ws?[redacted] HTTP/1.1"


async def _api_key_in_query(port, secret):
    assert await asyncio.to_thread(_http_get, port, f"/api/v1/calls?key={secret}") == 401
    return "GET /api/v1/calls?[redacted] HTTP/1.1"


async def _metrics_key_in_query(port, secret):
    assert await asyncio.to_thread(_http_get, port, f"/metrics?key={secret}") == 401
    return "GET /metrics?[redacted] HTTP/1.1"


async def _websocket_handshake(port, secret):
    async with ws_connect(f"wss://127.0.0.1:{port}/ws?token={secret}", ssl=_tls(),
                          subprotocols=["callsgw.v1"]) as ws:
        await ws.send('{"type": "ping", "id": 1}')  # before join: answered with an error, then we leave
        await ws.recv()
    return "GET /ws?[redacted] HTTP/1.1"


async def _fragment(port, secret):
    reply = await asyncio.to_thread(_raw, port, f"GET /?call=x#token={secret} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200")
    return "GET /?[redacted] HTTP/1.1"


async def _unsupported_protocol(port, secret):
    # websockets quotes the whole request line in the exception it logs with a traceback
    await asyncio.to_thread(_raw, port, f"GET /?token={secret} HTTP/2.0\r\nHost: gw\r\n\r\n".encode())
    return "GET /?[redacted] HTTP/2.0"


async def _space_in_target(port, secret):
    await asyncio.to_thread(_raw, port, f"GET /?call=x token={secret} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    return "GET /?[redacted]"


async def _referer(port, secret):
    status = await asyncio.to_thread(_http_get, port, "/healthz",
                                     {"Referer": f"https://calls.example/?call=x&token={secret}"})
    assert status == 200
    return "Referer: https://calls.example/?[redacted]"


CASES = {
    "page join link": _page,
    "/ws without upgrade": _ws_path_plain_get,
    "api key in query": _api_key_in_query,
    "metrics key in query": _metrics_key_in_query,
    "websocket handshake": _websocket_handshake,
    "fragment": _fragment,
    "HTTP/2.0 request line": _unsupported_protocol,
    "space in target": _space_in_target,
    "referer header": _referer,
}


@pytest.mark.parametrize("case", list(CASES))
async def test_no_secret_from_a_url_reaches_the_debug_log(tmp_path, caplog, case):
    secret = "S3CRET" + secrets.token_hex(16)
    handler = _Formatted()
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="websockets")  # serve() raises it to WARNING below DEBUG
    try:
        async with running_gateway(tmp_path) as app:
            control = await CASES[case](app.port, secret)
            await asyncio.sleep(0.2)  # the server side finishes logging the exchange
    finally:
        root.removeHandler(handler)
    whole = "\n".join(handler.lines) + "\n" + caplog.text
    assert secret not in whole, [line for line in whole.splitlines() if secret in line]
    assert control in whole, "the request was not logged at DEBUG: the test would see no leak"


def test_redaction_is_by_meaning():
    cut = logsafety.redact_targets
    assert cut("< GET /?token=abc HTTP/1.1") == "< GET /?[redacted] HTTP/1.1"
    assert cut("GET /ws?a=1#b HTTP/1.0 and more") == "GET /ws?[redacted] HTTP/1.0 and more"
    assert cut("< Referer: https://h/p?k=v") == "< Referer: https://h/p?[redacted]"
    assert cut("line /a?x\nnext /b#y HTTP/1.1") == "line /a?[redacted]\nnext /b#[redacted] HTTP/1.1"
    assert cut("no query here") == "no query here"
    # an older websockets' format string and ours, one filter
    for fmt, args in (("< GET %s HTTP/1.1", ("/?token=t1",)), ("< %s %s %s", ("GET", "/?token=t1", "HTTP/1.1")),
                      ("> GET %s HTTP/1.1", ("/ws?token=t1",))):
        record = logging.LogRecord("websockets.server", logging.DEBUG, __file__, 1, fmt, args, None)
        assert logsafety.RedactWebsocketsTraces().filter(record)
        assert "t1" not in record.getMessage() and "?[redacted]" in record.getMessage()
    header = logging.LogRecord("websockets.server", logging.DEBUG, __file__, 1, "> %s: %s",
                               ("Authorization", "Bearer k"), None)
    assert not logsafety.RedactWebsocketsTraces().filter(header)

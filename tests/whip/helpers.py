"""A minimal HTTP/1.1 client for the WHIP/WHEP tests (the request exactly as written, over TLS)."""

from __future__ import annotations

import asyncio
import ssl as _ssl


def insecure_context() -> _ssl.SSLContext:
    """The test gateway's certificate is self-signed."""
    ctx = _ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = _ssl.CERT_NONE
    return ctx


async def http(port: int, method: str, path: str, body: bytes | str = b"", headers: dict | None = None,
               *, content_length: bool = True, raw: bytes | None = None) -> tuple[int, dict, bytes]:
    """Send one request to 127.0.0.1:port over TLS; (status, lower-cased headers, body)."""
    if isinstance(body, str):
        body = body.encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=insecure_context())
    try:
        if raw is None:
            lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            if content_length and method in ("POST", "PATCH"):
                lines.append(f"Content-Length: {len(body)}")
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(20):
            data = await reader.read()
    finally:
        writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), fields, rest

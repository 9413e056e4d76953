"""The HTTP headers of every answer on the gateway's TCP port, built in one place.

:func:`security_headers` is the one function that says which security
headers an answer carries; :meth:`callsgw.server.app.GatewayApp` applies it
(:func:`apply_security_headers`) as websockets' ``process_response`` hook,
so the page, its files, the admin API, ``/metrics``, ``/healthz``, the demo
token, every error and 404, and websockets' own refusals of a bad handshake
all carry the same set. :func:`response` builds the content headers of the
answers callsgw makes itself.

* ``Content-Security-Policy`` (CSP Level 3): the page loads only its own
  files (``default-src 'self'``), connects only to its own origin
  (``connect-src 'self'``, which covers the same-origin ``wss:`` signaling
  URL), plays remote media from ``blob:``/its own origin, may not be framed
  (``frame-ancestors 'none'``: no clickjacking of a microphone permission),
  and cannot have its base URL or form targets redirected
  (``base-uri 'none'; form-action 'self'``).
* ``X-Frame-Options: DENY`` for browsers that predate ``frame-ancestors``
  (RFC 7034).
* ``Strict-Transport-Security: max-age=31536000`` (RFC 6797) only when the
  gateway serves TLS itself; behind a TLS-terminating proxy (``--plain-ws``)
  the proxy sets it.
* ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` (a
  join link never leaks through a Referer) and ``Cache-Control: no-store``.

Requests websockets cannot parse at all (an overlong request line or too
many headers) are refused by websockets before any hook runs; those bare
414/431 answers carry none of these headers.
"""

from __future__ import annotations

from http import HTTPStatus

from websockets.datastructures import Headers
from websockets.http11 import Response

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; media-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HSTS_MAX_AGE = 31_536_000  # one year (RFC 6797 section 6.1.1)


def security_headers(*, tls: bool) -> list[tuple[str, str]]:
    """The security headers of every answer; HSTS only when the gateway itself serves TLS."""
    headers = [
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-store"),
    ]
    if tls:
        headers.append(("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE}"))
    return headers


def apply_security_headers(response: Response, *, tls: bool) -> Response:
    """Set :func:`security_headers` on ``response``, replacing any value already there."""
    for name, value in security_headers(tls=tls):
        if name in response.headers:
            del response.headers[name]
        response.headers[name] = value
    return response


def response(status: HTTPStatus, body: bytes, content_type: str,
             extra: list[tuple[str, str]] | None = None) -> Response:
    """An answer with its content headers (the security headers are added on the way out)."""
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), *(extra or [])])
    return Response(status.value, status.phrase, headers, body)

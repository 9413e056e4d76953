"""The admin API (``/api/v1/...``) and ``/metrics``, on the gateway's HTTPS port.

:func:`handle` is called from :meth:`callsgw.server.app.GatewayApp._http`
(websockets' ``process_request``) for every path under ``/api/`` and for
``/metrics``. Both are authenticated with the admin key, presented as
``Authorization: Bearer <key>``; the data directory keeps only the key's
SHA-256 and :meth:`callsgw.datadir.DataDir.check_admin_key` compares SHA-256
digests with :func:`hmac.compare_digest`. A missing, malformed or wrong key
gets the same 401 (same body, ``WWW-Authenticate: Bearer``), whatever was
wrong. ``/metrics`` needs the key too: the issue does not say it may be
public, and the counts it shows describe the gateway's traffic (a Prometheus
scrape job sets ``authorization: {credentials: <key>}``).

Endpoints (GET only; anything else is 405 with ``Allow: GET``):

``GET /api/v1/calls``
    ``{"calls": [call...]}``: the live calls.
``GET /api/v1/calls/{id}``
    one live call: ``id``, ``created_at`` (Unix time) and ``participants``
    (``id``, ``name``, ``muted``, ``sharing``, ``joined_at``, ``session_id``,
    and ``security``: the participant's current security record); 404 unknown.
    Every time is a Unix time, live or stored (``joined_at``, ``left_at``,
    the DTLS handshake times).
``GET /api/v1/sessions/{id}``
    the security record (:meth:`callsgw.security.records.SessionRecord.as_dict`)
    of a live participant (current values) or else from the record store;
    404 unknown.
``GET /api/v1/sessions``
    ``{"sessions": [record...]}``: live and recent sessions, most recent
    first (``?call=ID`` filters, ``?limit=N`` up to 1000, default 100).
``GET /api/v1/security/summary``
    the store's summary (sessions, live, failed; counts by DTLS cipher suite,
    DTLS version and SRTP profile; failures by reason) plus ``live_calls``
    and ``live_sessions`` from the running core.
``GET /api/v1/tokens/revoked``
    ``{"revoked": [{"jti", "until"}...]}``: the token ids the gateway refuses, and
    until when (Unix time: the token's own expiry). Revoking is ``callsgw token
    revoke``, which writes the records database; the gateway reads it every 2 s.
    (websockets' HTTP server passes only GET requests, so the API is read-only.)
``GET /api/v1/cluster``
    cluster mode only (404 on a single node): ``cluster``, ``node_id`` (this
    node), ``key`` (AES size and fingerprints, never a key), ``nodes`` (each
    live node's id, state, URL, media addresses, load: calls, participants,
    forwarded_pps, cpu), ``unreadable`` (entries that did not open) and
    ``drops`` (sealed messages dropped by reason), as of the last heartbeat,
    and ``relay``: this node's relayed sessions (``origin_sessions``: clients
    connected here whose call is on another node; ``hosted_sessions``: the
    reverse) and counters (sessions relayed each way, ``node_lost``, frames
    for unknown sessions, the bus's published, received, bad, lost and
    queue-full frames); ``callsgw cluster status --json`` prints the same
    document without ``relay`` (it reads Redis, not a node).
``GET /api/v1/media/drops``
    ``{"drops": {reason: count}}``: every datagram the media port refused
    since start, by reason (:data:`callsgw.server.views.MEDIA_DROP_REASONS`;
    the same numbers as ``callsgw_media_drops_total``).

Live answers come from :mod:`callsgw.server.views`, which ``/metrics`` reads too.
Answers are JSON built from :class:`SessionRecord` values, which hold no key
material, and from the calls' public participant fields; tokens, the API
secret and the admin key never appear.

The record store is blocking, and a slow or unreachable database must never
delay signaling or media (issue #20 item 4): :func:`handle_async`, which the
gateway calls, first reads what the request needs from the store in a worker
thread (:class:`StoreSnapshot`), then answers on the event loop from that
snapshot and the live state. While the database does not answer, the
record-only endpoints say 503 and ``/metrics`` counts the live sessions only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote

from websockets.http11 import Request, Response

from callsgw.security.totals import RecordTotals
from callsgw.server import headers, metrics, views

API_PREFIX = "/api/v1/"
MAX_LIST = 1000
UNAUTHORIZED_BODY = b'{"error":"unauthorized"}\n'


def _json_response(status: HTTPStatus, payload: Any, extra: list[tuple[str, str]] | None = None) -> Response:
    body = (json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n").encode()
    return _response(status, body, "application/json", extra)


def _response(status: HTTPStatus, body: bytes, ctype: str, extra: list[tuple[str, str]] | None = None) -> Response:
    return headers.response(status, body, ctype, extra)


def _error(status: HTTPStatus, message: str, extra=None) -> Response:
    return _json_response(status, {"error": message}, extra)


def _unauthorized() -> Response:
    return _response(
        HTTPStatus.UNAUTHORIZED, UNAUTHORIZED_BODY, "application/json",
        [("WWW-Authenticate", 'Bearer realm="callsgw-admin"')],
    )


def authorized(app, request: Request) -> bool:
    """Whether the request carries the admin key (constant-time digest compare)."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    presented = credentials.strip() if scheme.lower() == "bearer" else ""
    # check_admin_key does the same digest + compare_digest work for an empty key
    return app.datadir.check_admin_key(presented)


log = logging.getLogger("callsgw.admin")


class StoreSnapshot:
    """What one request reads from the records database, read beforehand in a worker thread.

    It answers the same calls as the store (``list``, ``get``, ``summary``, ``record_totals``) with
    the results read for exactly those arguments; any other read is a bug.
    """

    def __init__(self, store, reads: list[tuple[str, tuple, tuple]]):
        self._results = {(name, args, kwargs): getattr(store, name)(*args, **dict(kwargs))
                         for name, args, kwargs in reads}

    def _get(self, name: str, *args, **kwargs):
        return self._results[(name, args, tuple(sorted(kwargs.items())))]

    def list(self, **kwargs):
        return self._get("list", **kwargs)

    def get(self, session_id):
        return self._get("get", session_id)

    def summary(self):
        return self._get("summary")

    def record_totals(self, **kwargs):
        return self._get("record_totals", **kwargs)


def _reads(path: str, params: dict, live: dict | None = None) -> list[tuple[str, tuple, tuple]] | None:
    """The store reads :func:`handle` makes for this request (None: a request that needs none);
    ``live``: for ``/metrics``, the live records it counts from memory (the read leaves them out)."""
    if path == "/metrics":
        return [("record_totals", (), tuple(sorted(metrics.totals_read(live or {}).items())))]
    parts = [unquote(p) for p in path[len(API_PREFIX):].split("/")] if path.startswith(API_PREFIX) else []
    if parts == ["sessions"]:
        limit = _limit(params)
        if limit is None:
            return None  # a 400 follows, without the store
        call_id = (params.get("call") or [None])[0]
        return [("list", (), tuple(sorted({"call_id": call_id, "limit": limit}.items())))]
    if len(parts) == 2 and parts[0] == "sessions" and parts[1]:
        return [("get", (parts[1],), ())]
    if parts == ["security", "summary"]:
        return [("summary", (), ())]
    return None


async def handle_async(app, request: Request) -> Response:
    """:func:`handle`, with every records-database read done first in a worker thread."""
    path, _, query = request.path.partition("?")
    try:
        if not authorized(app, request):
            return _unauthorized()
    except Exception:
        return _unauthorized()
    # /metrics counts the live sessions from memory, read here on the loop, and the stored ones in
    # the database, in the thread, leaving out exactly these (each session counted once)
    live = metrics.live_records(app) if path == "/metrics" and app.store is not None else None
    reads = _reads(path, parse_qs(query), live) if app.store is not None else None
    if not reads:
        return handle(app, request)
    try:
        snapshot = await asyncio.to_thread(StoreSnapshot, app.store, reads)
    except Exception as exc:  # the database is away: live answers only
        log.warning("the records database did not answer an admin request (%s)", type(exc).__name__)
        if path == "/metrics":
            return handle(app, request, store=_NO_RECORDS, live=live)
        return _error(HTTPStatus.SERVICE_UNAVAILABLE, "the records database is unavailable; try again")
    return handle(app, request, store=snapshot, live=live)


class _EmptyStore:
    """No stored records (the database is away): ``/metrics`` shows the live sessions."""

    def list(self, **kwargs):
        return []

    def record_totals(self, *, buckets=(), **kwargs):
        return RecordTotals(buckets=tuple(buckets))


_NO_RECORDS = _EmptyStore()


def _limit(params: dict) -> int | None:
    try:
        limit = int((params.get("limit") or ["100"])[0])
    except ValueError:
        return None
    return limit if 1 <= limit <= MAX_LIST else None


def handle(app, request: Request, store=None, live: dict | None = None) -> Response:
    """Answer one request for ``/api/...`` or ``/metrics`` (``store``: what to read records from, if
    not ``app.store``; :func:`handle_async` passes a :class:`StoreSnapshot`; ``live``: for
    ``/metrics``, the live records that snapshot left out)."""
    path, _, query = request.path.partition("?")
    try:
        if not authorized(app, request):
            return _unauthorized()
    except Exception:  # an unreadable key file: refuse, without detail
        return _unauthorized()
    method = getattr(request, "method", "GET")  # websockets only passes GET requests here
    if method != "GET":
        return _error(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed", [("Allow", "GET")])
    if path == "/metrics":
        body, ctype = metrics.render(app, store=store, live=live)
        return _response(HTTPStatus.OK, body, ctype)
    if not path.startswith(API_PREFIX):
        return _error(HTTPStatus.NOT_FOUND, "not found")
    parts = [unquote(p) for p in path[len(API_PREFIX):].split("/")]
    params = parse_qs(query)
    if parts == ["calls"]:
        return _json_response(HTTPStatus.OK, {"calls": [_call(app, c) for c in views.calls(app)]})
    if len(parts) == 2 and parts[0] == "calls" and parts[1]:
        call = (app.core.calls if app.core else {}).get(parts[1])
        if call is None:
            return _error(HTTPStatus.NOT_FOUND, "no such call")
        return _json_response(HTTPStatus.OK, _call(app, call))
    if parts == ["sessions"]:
        return _sessions(app, params, store)
    if len(parts) == 2 and parts[0] == "sessions" and parts[1]:
        record = views.session_record(app, parts[1], store=store)
        if record is None:
            return _error(HTTPStatus.NOT_FOUND, "no such session")
        return _json_response(HTTPStatus.OK, record)
    if parts == ["security", "summary"]:
        return _json_response(HTTPStatus.OK, summary(app, store))
    if parts == ["cluster"]:
        status = views.cluster_status(app)
        if status is None:
            return _error(HTTPStatus.NOT_FOUND, "this gateway is a single node (no cluster setting)")
        return _json_response(HTTPStatus.OK, status)
    if parts == ["media", "drops"]:
        return _json_response(HTTPStatus.OK, {"drops": views.media_drops(app)})
    if parts == ["tokens", "revoked"]:
        denied = getattr(app, "revoked_tokens", {})
        return _json_response(HTTPStatus.OK, {"revoked": [{"jti": j, "until": t} for j, t in sorted(denied.items())]})
    return _error(HTTPStatus.NOT_FOUND, "not found")


# -- answers ---------------------------------------------------------------------


def _participant(app, p) -> dict:
    record = views.live_record(app, p)
    return {
        **p.public(),
        "joined_at": (record or {}).get("joined_at"),
        "session_id": record["session_id"] if record else None,
        "security": record,
    }


def _call(app, call) -> dict:
    return {
        "id": call.id,
        "created_at": views.unix_time(app, call.created_at),
        "participants": [_participant(app, p) for p in call.participants.values()],
    }


def _sessions(app, params, store=None) -> Response:
    call_id = (params.get("call") or [None])[0]
    try:
        limit = int((params.get("limit") or ["100"])[0])
    except ValueError:
        return _error(HTTPStatus.BAD_REQUEST, "limit must be an integer")
    if not 1 <= limit <= MAX_LIST:
        return _error(HTTPStatus.BAD_REQUEST, f"limit must be between 1 and {MAX_LIST}")
    return _json_response(HTTPStatus.OK, {"sessions": views.records(app, call_id=call_id, limit=limit, store=store)})


def summary(app, store=None) -> dict:
    store = store if store is not None else app.store
    data = dict(store.summary()) if store is not None else {}
    calls = views.calls(app)
    data["live_calls"] = len(calls)
    data["live_sessions"] = sum(len(c.participants) for c in calls)
    return data

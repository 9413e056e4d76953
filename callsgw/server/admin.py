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
    Record times (``joined_at``, ``left_at``, handshake times) are the core's
    clock as stored in the records.
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

Answers are JSON built from :class:`SessionRecord` values, which hold no key
material, and from the calls' public participant fields; tokens, the API
secret and the admin key never appear. The record store is blocking; the
handler calls it directly on the event loop, which is acceptable because the
queries are small indexed reads of short JSON rows (a slow PostgreSQL would
stall the loop for that time: move these to a thread if that ever matters).
"""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

API_PREFIX = "/api/v1/"
MAX_LIST = 1000
UNAUTHORIZED_BODY = b'{"error":"unauthorized"}\n'


def _json_response(status: HTTPStatus, payload: Any, extra: list[tuple[str, str]] | None = None) -> Response:
    body = (json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n").encode()
    return _response(status, body, "application/json", extra)


def _response(status: HTTPStatus, body: bytes, ctype: str, extra: list[tuple[str, str]] | None = None) -> Response:
    headers = Headers(
        [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Content-Security-Policy", "default-src 'none'"),
            *(extra or []),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


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


def handle(app, request: Request) -> Response:
    """Answer one request for ``/api/...`` or ``/metrics``."""
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
        from callsgw.server import metrics

        body, ctype = metrics.render(app)
        return _response(HTTPStatus.OK, body, ctype)
    if not path.startswith(API_PREFIX):
        return _error(HTTPStatus.NOT_FOUND, "not found")
    parts = [unquote(p) for p in path[len(API_PREFIX):].split("/")]
    params = parse_qs(query)
    if parts == ["calls"]:
        return _json_response(HTTPStatus.OK, {"calls": [_call(app, c) for c in _calls(app)]})
    if len(parts) == 2 and parts[0] == "calls" and parts[1]:
        call = (app.core.calls if app.core else {}).get(parts[1])
        if call is None:
            return _error(HTTPStatus.NOT_FOUND, "no such call")
        return _json_response(HTTPStatus.OK, _call(app, call))
    if parts == ["sessions"]:
        return _sessions(app, params)
    if len(parts) == 2 and parts[0] == "sessions" and parts[1]:
        record = session_record(app, parts[1])
        if record is None:
            return _error(HTTPStatus.NOT_FOUND, "no such session")
        return _json_response(HTTPStatus.OK, record)
    if parts == ["security", "summary"]:
        return _json_response(HTTPStatus.OK, summary(app))
    return _error(HTTPStatus.NOT_FOUND, "not found")


# -- answers ---------------------------------------------------------------------


def _calls(app) -> list:
    if app.core is None:
        return []
    return sorted(app.core.calls.values(), key=lambda c: (c.created_at, c.id))


def _wall(app, loop_time: float | None) -> float | None:
    """Core times are event-loop times; report them as Unix times."""
    if loop_time is None:
        return None
    return time.time() - (app._loop.time() - loop_time)


def live_record(participant) -> dict | None:
    """The participant's current security record with live counters, as a dict."""
    record = participant.record
    if record is None:
        return None
    from callsgw.security.records import SessionRecord

    t = participant.transport
    try:
        fresh = SessionRecord.from_transport(
            t.record.as_dict(), call_id=record.call_id, participant_id=record.participant_id,
            participant_name=record.participant_name, joined_at=record.joined_at, counters=t.counters,
            session_id=record.session_id,
        )
        import dataclasses

        record = dataclasses.replace(record, dtls=fresh.dtls, srtp_profile=fresh.srtp_profile,
                                     ice_selected_pair=fresh.ice_selected_pair, counters=fresh.counters,
                                     failure=record.failure or fresh.failure,
                                     failure_detail=record.failure_detail or fresh.failure_detail)
    except Exception:  # the stored record is still a true answer
        pass
    return record.as_dict()


def _participant(p) -> dict:
    record = live_record(p)
    return {
        **p.public(),
        "joined_at": (record or {}).get("joined_at"),
        "session_id": record["session_id"] if record else None,
        "security": record,
    }


def _call(app, call) -> dict:
    return {
        "id": call.id,
        "created_at": _wall(app, call.created_at),
        "participants": [_participant(p) for p in call.participants.values()],
    }


def live_participants(app):
    udp = getattr(app, "udp", None)
    if udp is not None:
        udp.sync_counters()  # the native engine's counts into the transports
    for call in _calls(app):
        yield from call.participants.values()


def session_record(app, session_id: str) -> dict | None:
    for p in live_participants(app):
        if p.record is not None and p.record.session_id == session_id:
            return live_record(p)
    if app.store is None:
        return None
    record = app.store.get(session_id)
    return record.as_dict() if record else None


def _sessions(app, params) -> Response:
    call_id = (params.get("call") or [None])[0]
    try:
        limit = int((params.get("limit") or ["100"])[0])
    except ValueError:
        return _error(HTTPStatus.BAD_REQUEST, "limit must be an integer")
    if not 1 <= limit <= MAX_LIST:
        return _error(HTTPStatus.BAD_REQUEST, f"limit must be between 1 and {MAX_LIST}")
    live = {p.record.session_id: live_record(p) for p in live_participants(app)
            if p.record is not None and (call_id is None or p.call_id == call_id)}
    stored = app.store.list(call_id=call_id, limit=limit) if app.store else []
    rows = list(live.values()) + [r.as_dict() for r in stored if r.session_id not in live]
    rows.sort(key=lambda r: (r["joined_at"], r["session_id"]), reverse=True)
    return _json_response(HTTPStatus.OK, {"sessions": rows[:limit]})


def summary(app) -> dict:
    data = dict(app.store.summary()) if app.store else {}
    calls = _calls(app)
    data["live_calls"] = len(calls)
    data["live_sessions"] = sum(len(c.participants) for c in calls)
    return data

"""Live views of a running gateway, read alike by the admin API and by ``/metrics``.

:mod:`callsgw.server.admin` answers ``/api/v1/...`` and :mod:`callsgw.server.metrics`
renders ``/metrics``; both read the running core, the record store and the
media port through this module, so the two always tell the same story and
neither imports the other's internals.

Times: the core's clock is the event loop's monotonic ``now``; a record is
stored with Unix times (``now + core.wall_offset``). Every live view here
converts with the same offset, so a live record and the record stored for the
same session agree to the microsecond.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

from callsgw.security.records import SessionRecord, transport_times_as_unix

# -- calls and participants ------------------------------------------------------------


def calls(app) -> list:
    """The live calls, oldest first."""
    if app.core is None:
        return []
    return sorted(app.core.calls.values(), key=lambda c: (c.created_at, c.id))


def wall_offset(app) -> float:
    """Seconds to add to a core time to get a Unix time."""
    core = getattr(app, "core", None)
    if core is not None:
        return core.wall_offset
    return time.time() - app._loop.time()


def unix_time(app, loop_time: float | None) -> float | None:
    """A core (event-loop) time as a Unix time."""
    return None if loop_time is None else loop_time + wall_offset(app)


def live_participants(app) -> Iterator:
    """Every participant of every live call, with the native engine's counts folded in first."""
    udp = getattr(app, "udp", None)
    if udp is not None:
        udp.sync_counters()  # the native engine's counts into the transports
    for call in calls(app):
        yield from call.participants.values()


def live_record(app, participant) -> dict | None:
    """The participant's security record with its transport's current state, as a dict.

    The stored record is refreshed from the transport (DTLS, SRTP profile, ICE
    pair, counters with their bytes, failure), with transport times in Unix
    time, as :meth:`callsgw.signaling.core.GatewayCore` stores them.
    """
    record = participant.record
    if record is None:
        return None
    t = participant.transport
    try:
        fresh = SessionRecord.from_transport(
            transport_times_as_unix(t.record.as_dict(), wall_offset(app)), call_id=record.call_id,
            participant_id=record.participant_id, participant_name=record.participant_name,
            joined_at=record.joined_at, counters=t.counters, session_id=record.session_id,
        )
        record = dataclasses.replace(record, dtls=fresh.dtls, srtp_profile=fresh.srtp_profile,
                                     ice_selected_pair=fresh.ice_selected_pair, counters=fresh.counters,
                                     failure=record.failure or fresh.failure,
                                     failure_detail=record.failure_detail or fresh.failure_detail)
    except Exception:  # the stored record is still a true answer
        pass
    return record.as_dict()


def session_record(app, session_id: str) -> dict | None:
    """A live session's current record, else the stored one, else ``None``."""
    for p in live_participants(app):
        if p.record is not None and p.record.session_id == session_id:
            return live_record(app, p)
    if app.store is None:
        return None
    record = app.store.get(session_id)
    return record.as_dict() if record else None


def records(app, *, call_id: str | None = None, limit: int = 100) -> list[dict]:
    """Live records (current values) and stored ones not live, most recent first, at most ``limit``."""
    live = {p.record.session_id: live_record(app, p) for p in live_participants(app)
            if p.record is not None and (call_id is None or p.call_id == call_id)}
    stored = app.store.list(call_id=call_id, limit=limit) if app.store is not None else []
    rows = list(live.values()) + [r.as_dict() for r in stored if r.session_id not in live]
    rows.sort(key=lambda r: (r["joined_at"], r["session_id"]), reverse=True)
    return rows[:limit]

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
import os
from collections import Counter
from collections.abc import Iterator

from callsgw.security.records import SessionRecord, transport_times_as_unix

# -- the cluster (issue #15) --------------------------------------------------------------


def cluster_status(app) -> dict | None:
    """The cluster as this node saw it at its last heartbeat, and its relayed sessions (None: a single node)."""
    node = getattr(app, "cluster", None)
    if node is None:
        return None
    doc = node.status()
    relay = getattr(app, "relay", None)
    if relay is not None:
        doc["relay"] = relay.stats()
    return doc


def cluster_drops(app) -> dict[str, int] | None:
    """Sealed cluster messages this node dropped, by reason (None: a single node)."""
    node = getattr(app, "cluster", None)
    return dict(node.seal.drops) if node is not None else None


# -- calls and participants ------------------------------------------------------------


def calls(app) -> list:
    """The live calls, oldest first."""
    if app.core is None:
        return []
    return sorted(app.core.calls.values(), key=lambda c: (c.created_at, c.id))


def wall_offset(app) -> float:
    """Seconds to add to a core time to get a Unix time: the running core's own offset.

    Every core time these views convert belongs to something live in
    ``app.core`` (a call, a participant's transport), so a core is there.
    """
    return app.core.wall_offset


def unix_time(app, loop_time: float | None) -> float | None:
    """A core (event-loop) time as a Unix time."""
    return None if loop_time is None else loop_time + wall_offset(app)


def live_participants(app) -> Iterator:
    """Every participant of every live call, with the native engine's counts folded in first."""
    media = getattr(app, "media", None)
    if media is not None:
        media.sync_counters()  # the native engine's counts into the transports
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
    answer = record.as_dict()
    answer["media"] = media_quality(app, participant)  # live sessions only: congestion control's view
    return answer


def media_quality(app, participant) -> dict | None:
    """A live participant's congestion control view (issue #19): downlink estimate, screen layers."""
    call = app.core.calls.get(participant.call_id) if app.core is not None else None
    if call is None:
        return None
    try:
        return call.router.quality(participant.id)
    except Exception:  # a view must never fail the admin answer
        return None


def session_record(app, session_id: str, *, store=None) -> dict | None:
    """A live session's current record, else the stored one, else ``None`` (``store``: read from it
    instead of ``app.store``, e.g. a snapshot read off the event loop)."""
    for p in live_participants(app):
        if p.record is not None and p.record.session_id == session_id:
            return live_record(app, p)
    store = store if store is not None else app.store
    if store is None:
        return None
    record = store.get(session_id)
    return record.as_dict() if record else None


def records(app, *, call_id: str | None = None, limit: int = 100, store=None) -> list[dict]:
    """Live records (current values) and stored ones not live, most recent first, at most ``limit``."""
    live = {p.record.session_id: live_record(app, p) for p in live_participants(app)
            if p.record is not None and (call_id is None or p.call_id == call_id)}
    store = store if store is not None else app.store
    stored = store.list(call_id=call_id, limit=limit) if store is not None else []
    rows = list(live.values()) + [r.as_dict() for r in stored if r.session_id not in live]
    rows.sort(key=lambda r: (r["joined_at"], r["session_id"]), reverse=True)
    return rows[:limit]


# -- the media port's drops ----------------------------------------------------------------

#: The ``reason`` label values of ``callsgw_media_drops_total``, in the order the
#: datagram meets them, with what each means. Every value is always exported
#: (zero until it happens); a reason the code produces but this list lacks is
#: counted as ``other`` (a test keeps the list complete).
MEDIA_DROP_REASONS: dict[str, str] = {
    # the UDP mux (callsgw.transport.mux.UdpMux.drops), before any participant
    "oversize": "datagram above the mux's 2048 bytes",
    "unclassified": "first byte is not STUN, DTLS, RTP or RTCP (RFC 7983 section 7)",
    "stun_without_username": "STUN without a readable USERNAME",
    "stun_unknown_ufrag": "STUN whose USERNAME names no participant's ICE ufrag",
    "dtls_from_unknown_address": "DTLS from an address no participant validated with ICE",
    "rtp_from_unknown_address": "SRTP from an address no participant validated with ICE",
    "rtcp_from_unknown_address": "SRTCP from an address no participant validated with ICE",
    "address_reassigned": "a validated address moved to another participant (the datagram was used)",
    # the participant's ICE-lite agent (callsgw.ice.lite.IceLiteAgent.stats), no answer sent
    "ice_oversize": "STUN above the agent's size limit",
    "ice_malformed": "not well-formed STUN",
    "ice_bad_fingerprint": "STUN FINGERPRINT present and wrong",
    "ice_not_request": "a STUN indication or response, not a request",
    "ice_not_binding": "a STUN request of another method than Binding",
    "ice_no_username": "Binding request without USERNAME",
    "ice_unknown_ufrag": "USERNAME is not <our ufrag>:<the participant's ufrag>",
    "ice_no_integrity": "Binding request without MESSAGE-INTEGRITY",
    "ice_no_fingerprint": "Binding request without FINGERPRINT",
    "ice_bad_integrity": "MESSAGE-INTEGRITY does not verify with the participant's ICE password",
    "ice_replayed": "a recent transaction ID seen again from another address",
    "ice_closed": "STUN for a participant whose ICE agent failed or closed",
    # the participant's transport (callsgw.transport.media.MediaTransport.counters)
    "transport_closed": "datagram for a participant whose transport failed or closed",
    "dtls_from_unvalidated_address": "DTLS reached a transport from an address its ICE agent did not validate",
    "rtp_from_unvalidated_address": "SRTP reached a transport from an address its ICE agent did not validate",
    "rtcp_from_unvalidated_address": "SRTCP reached a transport from an address its ICE agent did not validate",
    "srtp_before_keys": "SRTP/SRTCP before the DTLS handshake gave keys (RFC 5764 section 4.2)",
    "srtp_auth": "SRTP/SRTCP failing authentication (RFC 3711 section 3.3, RFC 7714)",
    "srtp_replay": "SRTP/SRTCP replayed or older than the replay window (RFC 3711 section 3.3.2)",
    "srtp_malformed": "SRTP/SRTCP too short, of a wrong version or with a broken header",
    "srtp_unencrypted": "authentic SRTCP with the E bit clear, which the contract forbids",
    "srtp_other": "SRTP/SRTCP refused for another reason (stream limit, exhausted index)",
    "srtp_protect_failed": "an outgoing packet the gateway could not protect",
    "send_before_connected": "an outgoing packet before the transport was connected",
    "send_queue_full": "an outgoing datagram beyond the transport's queue",
    "send_buffer_full": "an outgoing datagram the socket's send buffer refused",
    "send_failed": "an outgoing datagram the native engine's sendmmsg did not send",
    "event_queue_full": "a received packet beyond the transport's event queue",
    # the native engine (callsgw._native.engine), media_engine = "native" only
    "engine_oversize": "datagram above the native engine's slot size",
    "engine_up_queue_full": "datagram beyond the engine's hand-up queue in one poll",
    # the kernel, before any of the above read the datagram
    "kernel_receive_queue": "dropped by the kernel: the media socket's receive queue was full "
                            "(the socket's drops in /proc/net/udp, what SO_RXQ_OVFL reports)",
    "other": "a reason this list does not name yet",
}

def media_socket(media):
    """The media port's UDP socket (either media server), or None."""
    sock = getattr(media, "sock", None)  # the native engine's server
    if sock is None:
        transport = getattr(media, "transport", None)  # the Python path's asyncio transport
        sock = transport.get_extra_info("socket") if transport is not None else None
    return sock


def kernel_socket_drops(sock) -> int:
    """Datagrams the kernel dropped for this UDP socket since it was made (its receive queue was full).

    The ``drops`` column of ``/proc/net/udp`` (and ``udp6``) for the socket's inode: the
    counter SO_RXQ_OVFL would hand over per datagram, read without touching the hot path.
    0 where it cannot be read.
    """
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except (AttributeError, OSError, ValueError):
        return 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == inode:
                        return int(fields[12])
        except (OSError, ValueError):
            continue
    return 0


def media_drops(app) -> dict[str, int]:
    """Every datagram the media port refused, by :data:`MEDIA_DROP_REASONS` label; monotonic.

    :meth:`callsgw.transport.mux.UdpMux.drop_counts` gives the mux's own drops
    and those of every transport it serves or served; the native engine adds
    its port-wide totals. The engine's per-session SRTP
    failures are folded into the transports first (``sync_counters``).
    """
    counts: Counter = Counter()
    media = getattr(app, "media", None)
    if media is not None:
        media.sync_counters()
        counts.update(media.mux.drop_counts())
        engine = getattr(media, "engine", None)  # the native engine only
        if engine is not None:
            totals = engine.totals
            counts["engine_oversize"] += int(totals["oversize"])
            counts["engine_up_queue_full"] += int(totals["up_overflow"])
        counts["kernel_receive_queue"] += kernel_socket_drops(media_socket(media))
    out = dict.fromkeys(MEDIA_DROP_REASONS, 0)
    for key, n in counts.items():
        out[key if key in out else "other"] += int(n)
    return out

"""The native datapath: :class:`~callsgw.sfu.datapath.Datapath` on the Cython engine (``callsgw._native.engine``).

With ``media_engine = "native-thread"`` (the default) or ``"native"`` every RTP packet of a known
stream is received, unprotected, accounted, rewritten, protected and sent by
the engine (``native/engine.pyx``) without Python; the router keeps its maps
and decisions and talks to the engine only through :class:`NativeDatapath`:

* a source is an engine *source* slot (payload types, NACK, audio level ID,
  clock rate), a stream an engine *stream* keyed by (the publisher's session
  slot, SSRC): RFC 3550 statistics (:class:`ReceiveStatsView` reads them),
  history and audio levels; a route an engine *route*: the rewrite, the
  subscriber's session slot, sequence and sent-window state;
* ids are the engine's slot numbers; nothing outside this module and the
  media shell (``callsgw.server.native``) reads them.

:class:`SharedEngine` is shared by every call of one gateway (one engine, one
media socket): transports' session slots (the shell keys them after DTLS and
gives them the ICE-selected address), and which call's datapath owns a route
slot, so that the engine's "a video route started" reaches the right router.
:meth:`SharedEngine.for_call` gives each router its :class:`NativeDatapath`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

from callsgw.sfu.datapath import DatapathFull, RouteState, StreamCounts
from callsgw.sfu.rtcp import ReceiveStats

__all__ = ["NativeDatapath", "ReceiveStatsView", "SharedEngine"]


class SharedEngine:
    """One engine for every call: transport -> session slot, route slot -> owning call datapath."""

    def __init__(self, engine):
        self.engine = engine
        self._session_slots: dict[object, int] = {}  # transport -> engine session slot
        self._route_owners: dict[int, NativeDatapath] = {}  # route slot -> the call's datapath

    def session_slot(self, transport) -> int:
        """The engine session slot of a transport (opened on first use)."""
        slot = self._session_slots.get(transport)
        if slot is None:
            slot = self._session_slots[transport] = self.engine.session_open()
        return slot

    def known_slot(self, transport) -> int | None:
        return self._session_slots.get(transport)

    def release_session(self, transport) -> None:
        slot = self._session_slots.pop(transport, None)
        if slot is not None:
            self.engine.session_close(slot)

    def for_call(self, transport_of: Callable[[str], object | None]) -> "NativeDatapath":
        """A call's datapath; ``transport_of(participant_id)`` finds a participant's transport."""
        return NativeDatapath(self, transport_of)

    def route_owner(self, route: int) -> "NativeDatapath | None":
        """The call datapath that opened engine route ``route`` (for the engine's "route started")."""
        return self._route_owners.get(route)


def _slot(make, what: str) -> int:
    try:
        return make()
    except RuntimeError as exc:  # the engine's tables have fixed sizes (from max_connections)
        raise DatapathFull(f"engine {what} table is full") from exc


class NativeDatapath:
    """:class:`~callsgw.sfu.datapath.Datapath` of one call on the shared engine.

    ``owner``: whatever the media shell should tell when one of this call's
    video routes sends its first packet (:meth:`SharedEngine.route_owner`);
    set by :class:`callsgw.sfu.call.CallMedia`.
    """

    def __init__(self, shared: SharedEngine, transport_of: Callable[[str], object | None]):
        self.shared = shared
        self.engine = shared.engine
        self._transport_of = transport_of
        self.owner = None
        self._rtx_pts: dict[int, frozenset[int]] = {}  # source slot -> RTX payload types
        self._stream_source: dict[int, int] = {}  # stream slot -> source slot
        self._levels_seen: dict[int, int] = {}  # stream slot -> engine level count already taken
        self._stats: dict[int, ReceiveStatsView] = {}  # stream slot -> view
        self._route_subscriber: dict[int, str] = {}  # route slot -> subscriber id

    def _session_of(self, participant_id: str) -> int:
        """The participant's engine session slot; -1 without a transport or a free slot."""
        transport = self._transport_of(participant_id)
        if transport is None:
            return -1
        try:
            return self.shared.session_slot(transport)
        except RuntimeError:  # the session table is full (sized from max_connections)
            return -1

    def session_twcc(self, participant_id: str, in_id: int, out_id: int, feedback_up: bool) -> None:
        """The participant's transport-wide CC settings (``Engine.session_twcc``; see the Datapath)."""
        session = self._session_of(participant_id)
        if session >= 0:
            self.engine.session_twcc(session, in_id, out_id, feedback_up)

    # -- sources

    def source_open(self) -> int:
        slot = _slot(self.engine.source_open, "source")
        self._rtx_pts[slot] = frozenset()
        return slot

    def source_configure(self, source, *, published: bool, media_pts=(), rtx_pts=(), nack: bool = False,
                         level_id: int = 0, clock_rate: int = 48000, video: bool = False) -> None:
        self.engine.source_configure(source, published=published, media_pts=tuple(media_pts),
                                     rtx_pts=tuple(rtx_pts), nack=nack, level_id=level_id, clock_rate=clock_rate,
                                     video=video)
        self._rtx_pts[source] = frozenset(rtx_pts)

    def source_close(self, source) -> None:
        self.engine.source_close(source)
        self._rtx_pts.pop(source, None)

    def source_media_ssrc(self, source) -> int | None:
        return self.engine.source_media_ssrc(source)

    # -- streams

    def stream_add(self, source, publisher_id: str, ssrc: int) -> int | None:
        session = self._session_of(publisher_id)
        if session < 0:
            return None
        slot = _slot(lambda: self.engine.stream_add(session, ssrc, source), "stream")
        self._stream_source[slot] = source
        self._levels_seen[slot] = 0
        self._stats[slot] = ReceiveStatsView(self.engine.stats, slot)
        return slot

    def stream_remove(self, stream) -> None:
        self.engine.stream_remove(stream)
        self._stream_source.pop(stream, None)
        self._levels_seen.pop(stream, None)
        self._stats.pop(stream, None)

    def stream_stats(self, stream) -> ReceiveStats | None:
        return self._stats.get(stream)

    def stream_counts(self, stream) -> StreamCounts:
        from callsgw._native.engine import STREAM_COUNTERS

        counts = dict(zip(STREAM_COUNTERS, (int(v) for v in self.engine.stream_counters[stream])))
        return StreamCounts(counts["packets_in"], counts["bytes_in"], counts["packets_in"], counts["malformed_rtp"],
                            counts["unknown_payload_type"], counts["bad_audio_level"])

    def stream_levels(self, stream) -> list[tuple[float, int]]:
        self._levels_seen[stream], levels = self.engine.stream_levels(stream, self._levels_seen.get(stream, 0))
        return levels

    def history_has(self, stream, seq: int) -> bool:
        return self.engine.history_has(stream, seq)

    # -- routes

    def route_open(self, subscriber_id: str, out_ssrc: int) -> int:
        slot = _slot(lambda: self.engine.route_open(out_ssrc, self._session_of(subscriber_id)), "route")
        self._route_subscriber[slot] = subscriber_id
        self.shared._route_owners[slot] = self
        return slot

    def route_attach(self, route, source) -> None:
        # the subscriber may have a session slot now that it had none at route_open
        self.engine.route_session(route, self._session_of(self._route_subscriber[route]))
        self.engine.route_attach(route, source)

    def route_detach(self, route) -> None:
        self.engine.route_detach(route)

    def route_close(self, route) -> None:
        self.engine.route_close(route)
        self._route_subscriber.pop(route, None)
        if self.shared._route_owners.get(route) is self:
            del self.shared._route_owners[route]

    def route_configure(self, route, *, pt_map: dict[int, int], ext_ids: dict[int, int], mid_id: int,
                        mid_value: bytes, window: int, block: bool) -> None:
        self.engine.route_configure(route, pt_map, ext_ids, mid_id, mid_value, window, block)

    def route_select(self, route, stream) -> None:
        """Simulcast: :meth:`callsgw.sfu.datapath.LayeredDatapath.route_select`, done in the engine."""
        self.engine.route_select(route, -1 if stream is None else stream)

    def route_padding(self, route, count: int, size: int, out: list) -> int:
        """Probe padding (:meth:`callsgw.sfu.datapath.PythonDatapath.route_padding`), queued in the engine."""
        return self.engine.route_padding(route, count, size)

    def route_state(self, route) -> RouteState:
        from callsgw._native.engine import ROUTE_COUNTERS

        active_ssrc, highest, offset, segment_start, started, window, ts_offset = self.engine.route_state(route)
        counters = [int(v) for v in self.engine.route_counters[route]]
        drops = Counter({name: v for name, v in zip(ROUTE_COUNTERS[5:], counters[5:]) if v})
        return RouteState(active_ssrc, highest, offset, segment_start, started, window, *counters[:5], drops,
                          ts_offset)

    # -- packets (the slow path: what the engine handed up; its copies wait for Engine.flush)

    def receive(self, stream, packet: bytes, now: float, out: list) -> list | None:
        if packet[1] & 0x7F in self._rtx_pts.get(self._stream_source.get(stream), ()):
            return None  # counted by the engine when it handed the packet up
        return self.engine.forward(stream, packet, now) or []

    def recover(self, stream, packet: bytes, now: float, out: list) -> list:
        return self.engine.forward(stream, packet, now, recovered=True) or []

    def nack(self, route, sequences: list[int], now: float, out: list) -> list[int]:
        return self.engine.nack(route, sequences, now)


def _int_field(name: str):
    def get(self):
        return int(self._rec[name])

    def set_(self, value):
        self._rec[name] = value

    return property(get, set_)


class ReceiveStatsView(ReceiveStats):
    """:class:`ReceiveStats` whose fields are one row of the engine's ``stats`` array.

    The engine updates the row per packet (RFC 3550 A.1, A.8); the router
    reads it and moves the interval marks through the same code as in Python
    mode (``report_block``, ``sender_report``).
    """

    __slots__ = ("_rec",)

    def __init__(self, stats_array, slot: int):  # noqa: D107 - the parent's __init__ is not used
        self._rec = stats_array[slot]

    for _name in ("base_seq", "max_seq", "bad_seq", "cycles", "received", "received_prior",
                  "expected_prior", "probation", "last_sr", "clock_rate"):
        locals()[_name] = _int_field(_name)
    del _name

    @property
    def started(self):
        return bool(self._rec["started"])

    @property
    def transit(self):
        return int(self._rec["transit"]) if self._rec["has_transit"] else None

    @property
    def jitter(self):
        return float(self._rec["jitter"])

    @property
    def last_sr_at(self):
        value = float(self._rec["last_sr_at"])
        return None if math.isnan(value) else value

    @last_sr_at.setter
    def last_sr_at(self, value):
        self._rec["last_sr_at"] = math.nan if value is None else value

    @property
    def last_arrival(self):
        value = float(self._rec["last_arrival"])
        return None if math.isnan(value) else value

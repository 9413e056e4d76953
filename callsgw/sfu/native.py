"""The router's binding to the native forwarding engine (``callsgw._native.engine``).

With the native engine (``media_engine = "native"``, the default) each
:class:`~callsgw.sfu.router.Router` keeps its maps and all its decisions in
Python, but the per-packet state of its routes and published streams lives
in the engine's tables, and every RTP packet is forwarded by the engine:

* a published track is an engine *source* (its payload types, NACK, audio
  level ID, clock rate), allocated per ``(publisher, track)`` and kept while
  the track is published or routes point at it;
* an SSRC the router identified is an engine *stream* of that source, keyed
  by (the publisher's session slot, SSRC): its RFC 3550 statistics
  (:class:`ReceiveStatsView` reads them), history and audio levels;
* a route is an engine *route*: the rewrite the router computed
  (``Router._configure``), the subscriber's session slot, and the sequence
  and sent-window state that ``Router._forward`` keeps in Python mode.

:class:`NativeDatapath` is shared by every call of one gateway (one engine,
one media socket); :meth:`NativeDatapath.for_call` gives a router its
:class:`CallDatapath`, which also knows how to find a participant's
transport. Session slots belong to transports: the shell registers keys and
the ICE-selected address on the same slot (``callsgw.server.udp``).
"""

from __future__ import annotations

import math
from typing import Callable

from callsgw.sfu.rtcp import ReceiveStats

__all__ = ["CallDatapath", "NativeDatapath", "ReceiveStatsView"]


class NativeDatapath:
    """Slot bookkeeping between the routers, the shell and one engine."""

    def __init__(self, engine):
        self.engine = engine
        self._session_slots: dict[object, int] = {}  # transport -> engine session slot
        self.route_owners: dict[int, tuple[object, object]] = {}  # route slot -> (Router, _Route)

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

    def for_call(self, transport_of: Callable[[str], object | None]) -> "CallDatapath":
        return CallDatapath(self, transport_of)


class CallDatapath:
    """What one call's router needs: the engine, and participant -> session slot."""

    def __init__(self, shared: NativeDatapath, transport_of: Callable[[str], object | None]):
        self.shared = shared
        self.engine = shared.engine
        self._transport_of = transport_of

    def session_of(self, participant_id: str) -> int:
        """The participant's engine session slot; -1 without a transport or a free slot."""
        transport = self._transport_of(participant_id)
        if transport is None:
            return -1
        try:
            return self.shared.session_slot(transport)
        except RuntimeError:  # the session table is full (sized from max_connections)
            return -1

    def own_route(self, slot: int, router, route) -> None:
        self.shared.route_owners[slot] = (router, route)

    def disown_route(self, slot: int) -> None:
        self.shared.route_owners.pop(slot, None)


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

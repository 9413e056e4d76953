"""The packet work of a call's SFU behind one interface, :class:`Datapath`, with its Python implementation.

The :class:`~callsgw.sfu.router.Router` holds the maps and makes the
decisions (mediasoup's ``Router.cpp`` shape): who publishes what, who
receives what, each route's rewrite, RTCP policy, the active speaker. A
datapath does what happens to every packet, addressed by opaque ids the
router keeps and never looks into:

* a **source** is a published track: its payload types (media and RTX),
  whether it keeps a NACK history, its RFC 6464 audio level element, its
  clock rate, and the SSRC of its latest media packet;
* a **stream** is one SSRC the router identified on a source: RFC 3550
  receive statistics (Appendix A.1, A.3, A.8), the retransmission history
  (:data:`HISTORY_SIZE` decrypted originals, RFC 4585 section 6.2.1) and the
  audio levels it carried;
* a **route** is what one subscriber gets of one source: the rewrite the
  router computed (payload types, RFC 8285 extension IDs, the RFC 8843 MID
  value, the SSRC), the sequence continuity and the window of indexes
  already sent (SRTP index safety, see :mod:`callsgw.sfu.router`), the
  retransmission budget and the per-route counters. When a route's input SSRC changes (the
  publisher restarted its stream, or a switched route such as a WHEP slot got another
  publisher), the new stream continues the route's sequence numbers and timestamps.
* a **layered** route (simulcast, RFC 8853): the streams of one source are its layers
  (one per RID, :mod:`callsgw.sfu.layers`), and :meth:`Datapath.route_select` says which
  one the route forwards; the switch waits for the target's next VP8 keyframe and
  rewrites PictureID/TL0PICIDX (:mod:`callsgw.wire.vp8`) as well as sequence numbers and
  timestamps, so the subscriber sees one stream. One source per track keeps the interface
  to this one call.

Two implementations, one contract (``tests/unit/test_datapath.py`` runs it
on both, and ``tests/unit/test_router.py`` runs the whole router suite on
both):

* :class:`PythonDatapath` (this module): the per-packet work in Python; its
  copies come back to the caller as :class:`Outgoing` (decrypted; the
  subscriber's transport protects each one). ``media_engine = "python"``.
* :class:`callsgw.sfu.native.NativeDatapath`: the tables of the Cython
  engine (``native/engine.pyx``), which protects and sends its copies
  itself; ``out`` stays empty. ``media_engine = "native-thread"`` (the default) or ``"native"``.

Ids are whatever the implementation hands out (ints in both); callers only
store them and hand them back. A full table raises :class:`DatapathFull`:
that piece gets no media, everything else goes on.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import NamedTuple, Protocol

from callsgw.ratelimit import TokenBucket
from callsgw.sfu.rtcp import ReceiveStats
from callsgw.wire import vp8
from callsgw.wire.rtp import RtpError, audio_level, layout, rewrite, validate

__all__ = [
    "Datapath",
    "DatapathFull",
    "LayeredDatapath",
    "HISTORY_SIZE",
    "Outgoing",
    "PythonDatapath",
    "RouteState",
    "StreamCounts",
]

HISTORY_SIZE = 512  # decrypted originals kept per stream for NACKs (and the largest per-route sent window)
MAX_SEEN_SSRCS = 8  # input SSRCs a route remembers (= router.MAX_SSRCS_PER_TRACK)
MAX_NACK_SEQUENCES = 256  # sequence numbers looked at per NACK packet
RETRANSMIT_RATE = 300.0  # retransmissions per second per route (token bucket, same burst)
SWITCH_IDLE = 1.0  # s a route's stream must be quiet before an older SSRC may take over again
MAX_LEVELS = 64  # audio levels kept per stream until the router takes them


class Outgoing(NamedTuple):
    """A decrypted packet for one participant's transport."""

    participant_id: str
    packet: bytes

    @property
    def is_rtcp(self) -> bool:
        """RFC 5761 section 4 split, as :func:`callsgw.wire.demux.classify` does it.

        The router never emits RTP with a payload type in 64..95, so this is exact.
        """
        return 64 <= (self.packet[1] & 0x7F) <= 95


class DatapathFull(RuntimeError):
    """A datapath table has no free entry (the native engine's tables have fixed sizes)."""


class RouteState(NamedTuple):
    """A route's per-packet state and counters, as the router reads them for RTCP and stats."""

    active_ssrc: int | None  # the input SSRC the route forwards now
    highest: int | None  # the largest extended sequence number sent
    offset: int  # subscriber sequence number - publisher sequence number (mod 2^16)
    segment_start: int | None  # the first extended number sent for the current input stream
    started: bool  # a packet was forwarded on the route
    window: int  # indexes remembered as sent
    packets_out: int
    bytes_out: int
    octets_out: int  # payload octets, for translated SRs (RFC 3550 section 6.4.1)
    retransmits: int
    nack_misses: int
    drops: Counter  # reason -> count (the router's names)
    ts_offset: int = 0  # subscriber timestamp - publisher timestamp (mod 2^32) for the current input stream


class StreamCounts(NamedTuple):
    """A stream's counters."""

    packets_in: int
    bytes_in: int
    report_packets: int  # packets that count toward receiver reports (a new one since the last: report)
    malformed_rtp: int
    unknown_payload_type: int
    bad_audio_level: int


class Datapath(Protocol):
    """What the router asks of a datapath (see the module docstring for sources, streams and routes).

    ``out`` arguments collect copies the caller must send (the Python
    datapath's); a datapath that sends for itself leaves them empty.
    """

    # -- published tracks
    def source_open(self) -> object:
        """A new source, unpublished (routes may point at it). Raises :class:`DatapathFull`."""

    def source_configure(self, source, *, published: bool, media_pts=(), rtx_pts=(), nack: bool = False,
                         level_id: int = 0, clock_rate: int = 48000, video: bool = False) -> None:
        """The track's receive rules; ``published=False`` forgets its latest media SSRC."""

    def source_close(self, source) -> None: ...

    def source_media_ssrc(self, source) -> int | None:
        """The SSRC of the source's latest media (not RTX) packet."""

    # -- published SSRCs
    def stream_add(self, source, publisher_id: str, ssrc: int) -> object | None:
        """A stream of ``source``; None when the publisher cannot be reached. Raises :class:`DatapathFull`."""

    def stream_remove(self, stream) -> None: ...

    def stream_stats(self, stream) -> ReceiveStats | None:
        """The stream's RFC 3550 receive statistics (None before there are any)."""

    def stream_counts(self, stream) -> StreamCounts: ...

    def stream_levels(self, stream) -> list[tuple[float, int]]:
        """RFC 6464 levels ``(time, -dBov)`` recorded since the last call."""

    def history_has(self, stream, seq: int) -> bool:
        """Whether the retransmission history holds sequence number ``seq``."""

    # -- routes
    def route_open(self, subscriber_id: str, out_ssrc: int) -> object:
        """A route to a subscriber's section (SSRC ``out_ssrc``). Raises :class:`DatapathFull`."""

    def route_attach(self, route, source) -> None:
        """The route receives the source's packets, after the routes attached before it."""

    def route_detach(self, route) -> None: ...

    def route_close(self, route) -> None: ...

    def route_configure(self, route, *, pt_map: dict[int, int], ext_ids: dict[int, int], mid_id: int,
                        mid_value: bytes, window: int, block: bool) -> None:
        """The rewrite: payload types ``{in: out}`` (others are not forwarded), extension IDs
        ``{in: out}`` (others are dropped), the MID element ``mid_id`` (0: none) set to
        ``mid_value``, a sent window of ``window`` indexes. ``block``: packets sent so far
        were rewritten differently, so none of their indexes may be sent again."""

    def route_state(self, route) -> RouteState: ...

    # -- packets
    def receive(self, stream, packet: bytes, now: float, out: list) -> list | None:
        """A decrypted RTP packet of ``stream``: statistics, history, levels, a copy per route.

        Returns the video routes that just sent their first packet (the
        router asks for a keyframe), or None for an RTX payload type: RFC 4588
        recovery is the router's, which then calls :meth:`recover`.
        """

    def recover(self, stream, packet: bytes, now: float, out: list) -> list:
        """An original the router unwrapped from RTX: kept in the history and forwarded, no statistics."""

    def nack(self, route, sequences: list[int], now: float, out: list) -> list[int]:
        """Answer a generic NACK (RFC 4585 section 6.2.1) from the history of the route's stream.

        ``sequences`` are the subscriber's numbers; resends are budgeted
        (:data:`RETRANSMIT_RATE`). Returns the publisher's numbers the history
        lacks (the router may ask the publisher for them).
        """


class LayeredDatapath(Datapath, Protocol):
    """A :class:`Datapath` that can switch a route between the layers of a simulcast source.

    :class:`PythonDatapath` is one; the router uses :meth:`route_select` only
    when its datapath has it (:func:`callsgw.sfu.layers.layer_switch_supported`),
    and the signaling accepts simulcast only then.
    """

    def route_select(self, route, stream) -> None:
        """Make ``route`` a layered route forwarding ``stream`` (a stream of the route's source;
        None: forward nothing, the screen is paused). The exact rules:

        * From the first call on, the route forwards only its *current* stream; it has none
          until a switch happens. Packets (originals, RTX-recovered originals, NACK answers)
          of any other stream of the source are not sent and are counted, not errors:
          ``other_layer`` (while the route has a current or pending stream) or
          ``layer_paused`` (selected None).
        * ``stream`` equal to the current one: a pending switch is cancelled. Otherwise it
          becomes *pending* (replacing an earlier pending one); the current stream keeps
          being forwarded until a packet of the pending stream that starts a VP8 keyframe
          arrives in :meth:`receive` (RFC 7741: descriptor S=1 and PID=0, payload header
          P=0; :func:`callsgw.wire.vp8.is_keyframe_start`) -- a recovered packet never
          switches. That packet is the switch: it becomes the current stream, it is
          forwarded, and from it on the old stream's packets are ``other_layer``. A switch
          is counted in ``layer_switches`` (``drops``, although it is not a drop). Selecting
          the current stream again after None (a resume) is a switch too.
        * ``None``: at once, nothing is forwarded (no current, no pending stream).
        * On the switch packet: the sequence number continues the route's (the highest
          sent + 1, so the new segment starts there and NACKs for the old segment's numbers
          are out of range); the timestamp continues the outgoing timeline (the last one
          sent plus the wall time since, in the clock rate, as any input change); the VP8
          PictureID offset is set so that the switch packet's PictureID is the last one
          sent + 1 (modulo its 7 or 15 bits, the M bit kept) and the TL0PICIDX offset so
          that its TL0PICIDX is the last one sent + 1 (modulo 256); both offsets (0 before
          any switch) are applied to every packet of the segment, retransmissions included
          (they are then byte-identical to the first copy: SRTP index safety holds).
        * On a layered route, every forwarded VP8 packet's descriptor is parsed; a
          truncated one is not sent (``bad_vp8``).
        * The stream being removed (:meth:`stream_remove`) clears it from current/pending.
        """


# -- the Python datapath -----------------------------------------------------------------

_BLOCKED = object()  # sent under an earlier rewrite: never sent again
_SEQ_TS = struct.Struct("!HI")
_TS = struct.Struct("!I")


def _extend(highest: int | None, seq: int) -> int:
    """The extended sequence number of ``seq`` nearest ``highest`` (RFC 3550 A.1 style)."""
    if highest is None:
        return seq + 0x10000
    delta = (seq - highest) & 0xFFFF
    if delta >= 0x8000:
        delta -= 0x10000
    return highest + delta


class _Source:
    __slots__ = ("published", "media_pts", "rtx_pts", "nack", "level_id", "clock_rate", "video", "media_ssrc",
                 "routes", "streams")

    def __init__(self):
        self.published = False
        self.media_pts: frozenset[int] = frozenset()
        self.rtx_pts: frozenset[int] = frozenset()
        self.nack = False
        self.level_id: int | None = None
        self.clock_rate = 48000
        self.video = False
        self.media_ssrc: int | None = None
        self.routes: dict[int, _Route] = {}  # route id -> route, in attach order
        self.streams: dict[int, _Stream] = {}  # SSRC -> stream


class _Stream:
    __slots__ = ("ssrc", "source", "packets", "bytes", "report_packets", "malformed", "unknown_pt", "bad_level",
                 "stats", "history", "levels")

    def __init__(self, ssrc: int, source: _Source):
        self.ssrc = ssrc
        self.source = source
        self.packets = 0
        self.bytes = 0
        self.report_packets = 0
        self.malformed = 0
        self.unknown_pt = 0
        self.bad_level = 0
        self.stats: ReceiveStats | None = None
        self.history: list | None = None  # HISTORY_SIZE entries of (seq, packet) or None
        self.levels: list[tuple[float, int]] = []  # at most MAX_LEVELS until the router takes them

    def stored(self, seq: int) -> bytes | None:
        if self.history is None:
            return None
        entry = self.history[seq % HISTORY_SIZE]
        return entry[1] if entry is not None and entry[0] == seq else None


class _Route:
    __slots__ = ("subscriber_id", "out_ssrc", "source", "configured", "pt_map", "ext_ids", "drop", "values",
                 "window", "sent_ext", "sent_ref", "sent_twcc", "sent_off", "pad_end", "last_pt", "last_marker", "active_ssrc", "seen", "offset", "ts_offset", "last_ts",
                 "highest", "segment_start",
                 "bad_seq", "last_in_at", "started", "packets_out", "bytes_out", "octets_out", "retransmits",
                 "nack_misses", "budget", "drops", "layered", "current", "pending", "pid_offset", "tl0_offset",
                 "last_pid", "last_tl0", "pid_resync")

    def __init__(self, subscriber_id: str, out_ssrc: int):
        self.subscriber_id = subscriber_id
        self.out_ssrc = out_ssrc
        self.source: _Source | None = None
        self.configured = False
        self.pt_map: dict[int, int] = {}
        self.ext_ids: dict[int, int] | None = None  # None: the IDs stay as they are
        self.drop: frozenset[int] = frozenset()
        self.values: dict[int, bytes] | None = None
        self.window = 0
        self.sent_ext: list[int] = []  # per window slot: the extended number sent there (-1: none)
        self.sent_ref: list = []  # per window slot: the original packet object it was made from
        self.sent_twcc: list[int] = []  # per window slot: the transport-wide number it carried (-1: none)
        # per window slot: the sequence offset it was sent under (padding moves the offset on, and a NACK
        # for a packet sent before the padding must find its original under the offset of its time)
        self.sent_off: list[int | None] = []  # None: padding
        self.pad_end: int | None = None  # the first number after the latest padding of this segment
        self.last_pt: int | None = None  # the payload type of the last packet forwarded (for padding)
        self.last_marker = False  # the newest packet forwarded ended a frame (RTP M bit): padding may follow
        self.active_ssrc: int | None = None
        self.seen: dict[int, None] = {}
        self.offset = 0
        self.ts_offset = 0
        self.last_ts = 0
        self.highest: int | None = None
        self.segment_start: int | None = None
        self.bad_seq: int | None = None
        self.last_in_at = 0.0
        self.started = False
        self.packets_out = 0
        self.bytes_out = 0
        self.octets_out = 0
        self.retransmits = 0
        self.nack_misses = 0
        self.budget = TokenBucket(RETRANSMIT_RATE, RETRANSMIT_RATE)
        self.drops: Counter = Counter()
        # layered routes (route_select): the stream forwarded, the one waited for, VP8 id offsets
        self.layered = False
        self.current: _Stream | None = None
        self.pending: _Stream | None = None
        self.pid_offset = 0
        self.tl0_offset = 0
        self.last_pid: int | None = None  # the last PictureID sent (as rewritten)
        self.last_tl0: int | None = None
        self.pid_resync = False


class PythonDatapath:
    """:class:`Datapath` in Python: per-packet work for ``media_engine = "python"`` and the sans-I/O tests."""

    def __init__(self):
        self._ids = 0
        self._sources: dict[int, _Source] = {}
        self._streams: dict[int, _Stream] = {}
        self._routes: dict[int, _Route] = {}
        # subscriber id -> its transport's callsgw.transport.twcc.TwccLog (or None): the copies carry
        # that transport's own transport-wide numbers (set by the call; None: copies keep the publisher's)
        self.twcc_of = None

    def _new_id(self) -> int:
        self._ids += 1
        return self._ids

    # -- sources

    def source_open(self) -> int:
        sid = self._new_id()
        self._sources[sid] = _Source()
        return sid

    def source_configure(self, source, *, published: bool, media_pts=(), rtx_pts=(), nack: bool = False,
                         level_id: int = 0, clock_rate: int = 48000, video: bool = False) -> None:
        s = self._sources[source]
        s.published = published
        s.media_pts = frozenset(media_pts)
        s.rtx_pts = frozenset(rtx_pts)
        s.nack = nack
        s.level_id = level_id or None
        s.clock_rate = clock_rate if clock_rate > 0 else 48000
        s.video = video
        if not published:
            s.media_ssrc = None

    def source_close(self, source) -> None:
        s = self._sources.pop(source)
        for route in s.routes.values():
            route.source = None

    def source_media_ssrc(self, source) -> int | None:
        return self._sources[source].media_ssrc

    # -- streams

    def stream_add(self, source, publisher_id: str, ssrc: int) -> int:
        s = self._sources[source]
        stream = _Stream(ssrc, s)
        s.streams[ssrc] = stream
        sid = self._new_id()
        self._streams[sid] = stream
        return sid

    def stream_remove(self, stream) -> None:
        st = self._streams.pop(stream)
        if st.source.streams.get(st.ssrc) is st:
            del st.source.streams[st.ssrc]
        for route in st.source.routes.values():
            if route.current is st:
                route.current = None
            if route.pending is st:
                route.pending = None

    def stream_stats(self, stream) -> ReceiveStats | None:
        return self._streams[stream].stats

    def stream_counts(self, stream) -> StreamCounts:
        st = self._streams[stream]
        return StreamCounts(st.packets, st.bytes, st.report_packets, st.malformed, st.unknown_pt, st.bad_level)

    def stream_levels(self, stream) -> list[tuple[float, int]]:
        st = self._streams[stream]
        taken = st.levels
        if taken:
            st.levels = []
        return taken

    def history_has(self, stream, seq: int) -> bool:
        return self._streams[stream].stored(seq) is not None

    # -- routes

    def route_open(self, subscriber_id: str, out_ssrc: int) -> int:
        rid = self._new_id()
        self._routes[rid] = _Route(subscriber_id, out_ssrc)
        return rid

    def route_attach(self, route, source) -> None:
        r, s = self._routes[route], self._sources[source]
        if r.source is s:
            return
        self.route_detach(route)
        s.routes[route] = r
        r.source = s

    def route_detach(self, route) -> None:
        r = self._routes[route]
        if r.source is not None:
            r.source.routes.pop(route, None)
            r.source = None

    def route_close(self, route) -> None:
        self.route_detach(route)
        del self._routes[route]

    def route_configure(self, route, *, pt_map: dict[int, int], ext_ids: dict[int, int], mid_id: int,
                        mid_value: bytes, window: int, block: bool) -> None:
        r = self._routes[route]
        if block:
            r.sent_ref = [_BLOCKED] * len(r.sent_ref)
        if window != r.window:
            old = list(zip(r.sent_ext, r.sent_ref))
            r.sent_ext = [-1] * window
            r.sent_ref = [None] * window
            r.sent_twcc = [-1] * window  # the kept indexes are blocked: never sent again
            r.sent_off = [0] * window
            for ext, _ in old:
                if ext >= 0 and (r.highest is None or ext > r.highest - window):
                    r.sent_ext[ext % window] = ext
                    r.sent_ref[ext % window] = _BLOCKED
            r.window = window
        r.pt_map = dict(pt_map)
        r.ext_ids = None if all(k == v for k, v in ext_ids.items()) else dict(ext_ids)
        r.drop = frozenset(range(1, 256)) - frozenset(ext_ids)
        r.values = {mid_id: mid_value} if mid_id else None
        r.configured = True

    def route_select(self, route, stream) -> None:
        r = self._routes[route]
        st = self._streams[stream] if stream is not None else None
        if st is not None and (r.source is None or st.source is not r.source):
            raise ValueError("route_select: the stream is not one of the route's source")
        r.layered = True
        if st is None:
            r.current = r.pending = None
        elif st is r.current:
            r.pending = None
        else:
            r.pending = st

    def route_state(self, route) -> RouteState:
        r = self._routes[route]
        return RouteState(r.active_ssrc, r.highest, r.offset, r.segment_start, r.started, r.window, r.packets_out,
                          r.bytes_out, r.octets_out, r.retransmits, r.nack_misses, Counter(r.drops), r.ts_offset)

    # -- packets

    def receive(self, stream, packet: bytes, now: float, out: list) -> list | None:
        st = self._streams[stream]
        try:
            _, _, _, header_length, padding = validate(packet)
        except RtpError:
            st.malformed += 1
            return []
        st.packets += 1
        st.bytes += len(packet)
        src = st.source
        pt = packet[1] & 0x7F
        if pt in src.rtx_pts:
            return None
        if pt not in src.media_pts or 64 <= pt <= 95:
            st.unknown_pt += 1
            return []
        seq, timestamp = _SEQ_TS.unpack_from(packet, 2)
        src.media_ssrc = st.ssrc
        if st.stats is None:
            st.stats = ReceiveStats(src.clock_rate)
        st.stats.update(seq, timestamp, now)
        st.report_packets += 1
        if src.nack:
            if st.history is None:
                st.history = [None] * HISTORY_SIZE
            index = seq % HISTORY_SIZE
            entry = st.history[index]
            if entry is None or entry[0] != seq:
                st.history[index] = (seq, packet)  # a duplicate never replaces the original
        if src.level_id is not None:
            try:
                level = audio_level(packet, src.level_id)
            except RtpError:
                st.bad_level += 1
            else:
                if level is not None:
                    if len(st.levels) >= MAX_LEVELS:
                        del st.levels[0]
                    st.levels.append((now, level[1]))
        return self._fan_out(src, packet, pt, seq, st, header_length, padding, now, out)

    def recover(self, stream, packet: bytes, now: float, out: list) -> list:
        st = self._streams[stream]
        try:
            _, _, _, header_length, padding = validate(packet)
        except RtpError:
            st.malformed += 1
            return []
        seq = (packet[2] << 8) | packet[3]
        if st.history is None:
            st.history = [None] * HISTORY_SIZE
        st.history[seq % HISTORY_SIZE] = (seq, packet)
        return self._fan_out(st.source, packet, packet[1] & 0x7F, seq, st, header_length, padding, now, out,
                             recovered=True)

    def _fan_out(self, src: _Source, packet: bytes, pt: int, seq: int, st: _Stream, header_length: int,
                 padding: int, now: float, out: list, *, recovered: bool = False) -> list:
        started = []
        ssrc = st.ssrc
        payload = len(packet) - header_length - padding
        keyframe = None  # computed once, when a route waits for this stream
        for rid, route in src.routes.items():
            switch = False
            if route.layered and st is not route.current:
                if st is not route.pending or recovered:
                    route.drops["other_layer" if route.current or route.pending else "layer_paused"] += 1
                    continue
                if keyframe is None:
                    try:
                        keyframe = vp8.is_keyframe_start(memoryview(packet)[header_length:len(packet) - padding])
                    except vp8.Vp8Error:
                        keyframe = False
                if not keyframe:
                    route.drops["other_layer"] += 1
                    continue
                switch = True
            data = self._forward(route, packet, pt, seq, ssrc, src.nack, now, retransmit=False, switch=switch)
            if switch and route.active_ssrc == ssrc:
                route.current, route.pending = st, None
                route.drops["layer_switches"] += 1
            if data is None:
                continue
            route.packets_out += 1
            route.bytes_out += len(data)
            route.octets_out += payload
            out.append(Outgoing(route.subscriber_id, data))
            if not route.started:
                route.started = True
                if src.video:
                    started.append(rid)
        return started

    def nack(self, route, sequences: list[int], now: float, out: list) -> list[int]:
        r = self._routes[route]
        if len(sequences) > MAX_NACK_SEQUENCES:
            r.drops["nack_truncated"] += len(sequences) - MAX_NACK_SEQUENCES
            sequences = sequences[:MAX_NACK_SEQUENCES]
        src = r.source
        if (src is None or not src.published or r.active_ssrc is None or r.highest is None
                or r.segment_start is None):
            r.nack_misses += len(sequences)
            return []
        stream = src.streams.get(r.active_ssrc)
        missing: list[int] = []
        for out_seq in sequences:
            ext = _extend(r.highest, out_seq)
            if ext > r.highest or ext < r.segment_start or ext <= r.highest - r.window:
                r.drops["nack_out_of_range"] += 1
                continue
            slot = ext % r.window
            if r.sent_ext[slot] == ext:  # sent: under the offset of its time (padding may have come since)
                offset = r.sent_off[slot]
                if offset is None:  # padding: never resent
                    r.drops["nack_out_of_range"] += 1
                    continue
            elif r.pad_end is not None and ext < r.pad_end:  # never sent, before padding: its offset is unknown
                r.drops["nack_out_of_range"] += 1
                continue
            else:
                offset = r.offset
            in_seq = (out_seq - offset) & 0xFFFF
            original = stream.stored(in_seq) if stream is not None else None
            if original is None:
                r.nack_misses += 1
                missing.append(in_seq)
                continue
            if not r.budget.take(now):
                r.drops["retransmit_rate_limited"] += 1
                continue
            data = self._forward(r, original, original[1] & 0x7F, in_seq, r.active_ssrc, src.nack, now,
                                 retransmit=True, offset=offset)
            if data is not None:
                r.retransmits += 1
                out.append(Outgoing(r.subscriber_id, data))
        return missing

    def _forward(self, route: _Route, packet: bytes, pt: int, seq: int, in_ssrc: int, nack: bool, now: float, *,
                 retransmit: bool, switch: bool = False, offset: int | None = None) -> bytes | None:
        """Rewrite ``packet`` for ``route``, or None (counted) if it must not be sent (native: engine _forward).

        ``switch``: a layered route's selected switch (route_select), never refused as a stale SSRC.
        ``offset``: a retransmission's sequence offset (the one it was first sent under), if not the route's."""
        new_pt = route.pt_map.get(pt) if route.configured else None
        if new_pt is None:
            route.drops["payload_type_unmapped"] += 1
            return None
        if in_ssrc != route.active_ssrc or switch:  # a switch resyncs even back onto the same SSRC
            if retransmit:
                return None
            if (not switch and route.active_ssrc is not None and in_ssrc in route.seen
                    and now - route.last_in_at < SWITCH_IDLE):
                route.drops["stale_ssrc"] += 1
                return None
            if route.active_ssrc is not None and route.started and route.source is not None:
                # a new input stream (another SSRC: the publisher's, or another publisher's on a switched
                # route) continues the route's timestamps: the last one sent plus the time since, in the
                # clock rate (RFC 3550 section 5.1: one SSRC, one timeline)
                gap = max(1, round((now - route.last_in_at) * route.source.clock_rate))
                route.ts_offset = (route.last_ts + gap - _TS.unpack_from(packet, 4)[0]) & 0xFFFFFFFF
            self._resync(route, seq)
            route.active_ssrc = in_ssrc
            route.pid_resync = True
            route.seen[in_ssrc] = None
            while len(route.seen) > MAX_SEEN_SSRCS:
                del route.seen[next(iter(route.seen))]
        out_seq = (seq + (route.offset if offset is None else offset)) & 0xFFFF
        ext = _extend(route.highest, out_seq)
        if route.highest is not None and ext <= route.highest - route.window:
            if retransmit:
                route.drops["retransmit_too_old"] += 1
                return None
            if seq != route.bad_seq:
                # RFC 3550 A.1 style: a big jump is believed when the next packet follows it
                route.bad_seq = (seq + 1) & 0xFFFF
                route.drops["too_old"] += 1
                return None
            self._resync(route, seq)
            out_seq = (seq + route.offset) & 0xFFFF
            ext = _extend(route.highest, out_seq)
        slot = ext % route.window
        if route.sent_ext[slot] == ext:
            if route.sent_ref[slot] is not packet:
                route.drops["retransmit_mismatch" if retransmit else "duplicate_sequence"] += 1
                return None
            if not retransmit:
                route.drops["duplicate"] += 1
                return None
        out_ts = (_TS.unpack_from(packet, 4)[0] + route.ts_offset) & 0xFFFFFFFF
        body = packet
        descriptor = None
        if route.layered and route.source is not None and route.source.video:
            try:
                _, _, _, header_length, padding = layout(packet)
                descriptor = vp8.parse(memoryview(packet)[header_length:len(packet) - padding])
            except (RtpError, vp8.Vp8Error):
                route.drops["bad_vp8"] += 1
                return None
            if route.pid_resync and not retransmit:
                # a new segment (RFC 7741 4.2): its first PictureID/TL0PICIDX follows the last one sent
                route.pid_resync = False
                route.pid_offset = 0 if descriptor.picture_id is None or route.last_pid is None else (
                    route.last_pid + 1 - descriptor.picture_id) & 0x7FFF
                route.tl0_offset = 0 if descriptor.tl0picidx is None or route.last_tl0 is None else (
                    route.last_tl0 + 1 - descriptor.tl0picidx) & 0xFF
            if route.pid_offset or route.tl0_offset:
                buffer = bytearray(packet)
                vp8.rewrite_ids(buffer, descriptor, route.pid_offset, route.tl0_offset, header_length)
                body = bytes(buffer)
        try:
            data = rewrite(
                body,
                ssrc=route.out_ssrc,
                sequence=out_seq,
                timestamp=out_ts,
                payload_type=new_pt if new_pt != pt else None,
                extension_ids=route.ext_ids,
                drop_extensions=route.drop,
                extension_values=route.values,
            )
        except RtpError:
            route.drops["rewrite_failed"] += 1
            return None
        data, twcc = self._stamp(route, slot, data, route.sent_ext[slot] == ext)
        if data is None:
            route.drops["retransmit_mismatch"] += 1
            return None
        if route.sent_ext[slot] != ext:
            route.sent_ext[slot] = ext
            route.sent_ref[slot] = packet if nack else _BLOCKED
            route.sent_twcc[slot] = twcc
            route.sent_off[slot] = route.offset
        if route.highest is None or ext > route.highest:
            route.highest = ext
        if route.segment_start is None or ext < route.segment_start:
            route.segment_start = ext
        if not retransmit:
            route.last_in_at = now
            route.last_ts = out_ts
            route.last_pt = new_pt
            if ext == route.highest:
                route.last_marker = bool(packet[1] & 0x80)
            if descriptor is not None and ext == route.highest:  # the newest packet's ids are "the last sent"
                if descriptor.picture_id is not None:
                    mask = 0x7FFF if descriptor.picture_id_bits == 15 else 0x7F
                    route.last_pid = (descriptor.picture_id + route.pid_offset) & mask
                if descriptor.tl0picidx is not None:
                    route.last_tl0 = (descriptor.tl0picidx + route.tl0_offset) & 0xFF
        return data

    def session_twcc(self, participant_id: str, in_id: int, out_id: int, feedback_up: bool) -> None:
        """The participant transport's transport-wide CC settings, given by the router as soon as its
        negotiation changes them, so no copy goes out before its transport stamps (the transport's
        TwccLog; the native engine's session_twcc)."""
        twcc = self.twcc_of(participant_id) if self.twcc_of is not None else None
        if twcc is not None:
            twcc.configure(in_id, out_id, feedback_up)

    def route_padding(self, route, count: int, size: int, out: list) -> int:
        """``count`` RTP padding-only packets of ``size`` padding octets on a route (issue #19 probes).

        The engine's ``route_padding``: RFC 3550 section 5.1 padding packets
        with the route's SSRC, last payload type and timestamp, the next
        sequence numbers (later media continues after them: the offset moves on;
        a NACK for a packet sent before them finds it under the offset it was
        sent with, one for the padding itself is out of range), and the subscriber transport's
        next transport-wide numbers (logged as sends). Never retransmitted.
        Only between frames: while the newest packet forwarded did not end a
        frame (its RTP marker bit clear, RFC 3550 section 5.1, RFC 7741
        section 4.1), nothing is sent, as a padding number inside a frame
        leaves a hole the receiver cannot assemble the frame across (libwebrtc
        waits 3 s for a keyframe); a paused layered route is not inside one.
        Returns how many were made: none on a route that has sent nothing, or
        whose subscriber's transport does not stamp, or mid-frame.
        """
        if not 0 <= count <= 1024 or not 1 <= size <= 255:
            raise ValueError("padding: 0..1024 packets of 1..255 octets")
        r = self._routes[route]
        twcc = self.twcc_of(r.subscriber_id) if self.twcc_of is not None else None
        if r.highest is None or r.last_pt is None or twcc is None or not twcc.out_id:
            return 0
        if not r.last_marker and not (r.layered and r.current is None and r.pending is None):
            return 0  # inside a frame: a number between its packets would keep the receiver from assembling it
        ext_id = twcc.out_id
        if ext_id <= 14:  # RFC 8285 4.2 one-byte form: ID, L=1, two bytes, a byte of padding
            block = struct.pack("!HHB", 0xBEDE, 1, (ext_id << 4) | 1) + b"\x00\x00\x00"
        else:  # 4.3 two-byte form
            block = struct.pack("!HHBB", 0x1000, 1, ext_id, 2) + b"\x00\x00"
        tail = bytes(size - 1) + bytes([size])
        for _ in range(count):
            ext = r.highest + 1
            packet = struct.pack("!BBHII", 0x80 | 0x20 | 0x10, r.last_pt & 0x7F, ext & 0xFFFF, r.last_ts,
                                 r.out_ssrc) + block + tail
            packet, seq = twcc.stamp(packet)
            slot = ext % r.window
            r.sent_ext[slot] = ext
            r.sent_ref[slot] = _BLOCKED
            r.sent_twcc[slot] = seq if seq is not None else -1
            r.sent_off[slot] = None  # padding
            r.highest = ext
            r.offset = (r.offset + 1) & 0xFFFF  # media continues after the padding
            out.append(Outgoing(r.subscriber_id, packet))
        if count:
            r.pad_end = r.highest + 1  # NACKs for the padding, or for numbers before it never sent: out of range
            r.drops["padding_sent"] += count
        return count

    def _stamp(self, route: _Route, slot: int, data: bytes, again: bool) -> tuple[bytes | None, int]:
        """The subscriber's transport-wide number in a rewritten copy (issue #19; engine ``_twcc_stamp``).

        A first send gets the subscriber transport's next number (logged there
        with its size, for the downlink estimate). ``again``: this index was
        sent before, and only a retransmission gets here; it is the same SRTP
        index, which must be byte-identical under AES-GCM, so it carries the
        number of its first send, and is refused (``None``) when it cannot.
        Copies without the element, or to a transport that does not stamp,
        keep the publisher's value. Returns ``(data, number or -1)``.
        """
        twcc = self.twcc_of(route.subscriber_id) if self.twcc_of is not None else None
        if again:
            first = route.sent_twcc[slot]
            if first < 0:
                return data, -1  # sent unstamped: the same bytes again
            stamped, seq = twcc.stamp(data, first) if twcc is not None else (data, None)
            return (stamped, first) if seq is not None else (None, -1)
        if twcc is None:
            return data, -1
        stamped, seq = twcc.stamp(data)
        return stamped, seq if seq is not None else -1

    @staticmethod
    def _resync(route: _Route, seq: int) -> None:
        """A new input stream on the route: continue the subscriber's sequence numbers."""
        if route.highest is None:
            route.offset = 0
        else:
            route.offset = ((route.highest + 1) - seq) & 0xFFFF
        route.segment_start = None
        route.pad_end = None
        route.bad_seq = None

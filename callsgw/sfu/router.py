"""The SFU router of one call: producer -> consumer maps and decisions; packet work is its datapath's.

Sans-I/O: every entry point takes ``now`` (seconds on the shell's monotonic
clock) and returns the packets to send as :class:`Outgoing` pairs
``(participant_id, packet)``; :attr:`Outgoing.is_rtcp` tells the shell to use
``MediaTransport.send_rtcp`` or ``send_rtp``. Packets in and out are the
*decrypted* RTP/RTCP (``RtpReceived.packet``/``RtcpReceived.packet``); the
transports encrypt each copy with its subscriber's keys. One ``Router`` per
call: participant IDs are only unique within a call, and so is the active
speaker.

The shape of mediasoup's ``Router.cpp``: the router keeps publishers,
subscriptions, each route's rewrite, the RTCP policy and the speaker
decision; everything done to every packet (statistics, history, sequence
continuity, the sent window, rewriting, audio levels) is its
:class:`~callsgw.sfu.datapath.Datapath`'s, addressed by opaque source, stream
and route ids: :class:`~callsgw.sfu.datapath.PythonDatapath` (the default) or
:class:`~callsgw.sfu.native.NativeDatapath` (the Cython engine, which sees
most packets without the router). The router never looks into either.

Maps
----

* ``_publishers[participant_id]`` -> :class:`_Publisher`, which owns its
  published tracks (:class:`_Track`, at most one ``voice`` and one
  ``screen``), and each track owns its identified SSRCs
  (:class:`_PublishedStream`, with the datapath's stream id).
* ``_subscribers[participant_id]`` -> :class:`_Subscriber`, which owns its
  routes (:class:`_Route`, one per forwarded m-section): the section, the
  rewrite computed for it, and the datapath's route id.
* ``_consumers[(publisher_id, track)]`` -> ``{subscriber_id: _Route}``: the
  producer -> consumer index; each entry is a route attached to the
  datapath source of ``(publisher_id, track)`` (``_sources``), in the same
  order. A route whose source is not published (yet, or any more) simply
  receives nothing.

Per RTP packet from a publisher (:meth:`Router.on_rtp`)
--------------------------------------------------------

1. The track is found by SSRC: one learned earlier, else (after a framing
   check, :func:`callsgw.wire.rtp.validate`: RFC 3550 header, RFC 8285
   elements; a bad packet is dropped and counted against that publisher
   only) one the publisher signalled in a section (``remote_ssrcs``), else
   the RFC 8843 MID header extension matching a section's ``mid``, else a
   payload type that only one track has (RTX types belong to their track);
   the SSRC is then learned (at most :data:`MAX_SSRCS_PER_TRACK` per track)
   and becomes a datapath stream.
2. The datapath checks the framing, updates the RFC 3550 receive statistics,
   keeps the decrypted original for NACKs (:data:`HISTORY_SIZE` per SSRC,
   for tracks that negotiated ``nack``) and the RFC 6464 audio level, and
   sends a copy on each route of the track: the payload type mapped to the
   subscriber's for the same codec name and clock rate (none: not
   forwarded, counted), RFC 8285 extension IDs mapped by URI (extensions the
   subscriber did not negotiate are dropped, the MID value becomes the
   subscriber section's ``mid``), the SSRC the section's ``ssrc``, and the
   sequence number offset per route: zero at first, and when the
   publisher's stream changes (a new SSRC, or a sequence restart) chosen so
   the subscriber sees the next number after the last it got. Timestamps
   are unchanged within an input stream; when the route's input SSRC
   changes after it has sent, they are moved to continue the route's (the
   last one sent plus the time since, in the clock rate), so that one
   outgoing SSRC keeps one timeline across a switch of publisher (a WHEP
   slot, docs/WHIP.md). The router computes each rewrite (:meth:`Router._configure`)
   when a section or a published track changes.
3. RTX packets (RFC 4588) are the router's: unwrapped into the original
   stream (OSN, ``apt`` payload type, the track's media SSRC) and handed
   back to the datapath as late originals when the gateway had missed them;
   padding-only RTX probes are dropped.
4. For voice with the RFC 6464 audio level, the levels feed the active
   speaker detection.
5. The first packet forwarded on a new video route asks the publisher for a
   keyframe (PLI, within the keyframe rate limit), so a late joiner does not
   wait for its own PLI: ``on_rtp`` may return RTCP for the publisher too.
   (With the native engine, which forwards without the router, the shell
   reports the start: :meth:`Router.route_started`.)

SRTP index safety
-----------------

Answering a NACK resends a packet with the same (SSRC, sequence number), so
the subscriber's SRTP session encrypts that index again. With AES-GCM that
is only safe when the plaintext is byte-identical. Each route remembers, for
the last ``window`` extended sequence numbers it sent, which original packet
produced it (under which rewrite); an index is sent again only for that
same original under the same rewrite (a retransmission), never for
different bytes (a publisher's duplicate or a conflicting packet is dropped
and counted). New streams on a route continue after the highest number sent,
a route whose SSRC comes back after removal is revived with its state, and
two sections of one subscriber may not share an SSRC. The router decides
the window and when a rewrite change blocks the indexes already sent; the
datapath keeps the window. The shell's transmit sessions therefore need
``allow_repeat_tx=True`` (for NACK answers) and a replay window of at least
:data:`HISTORY_SIZE` (older indexes are refused by the datapath anyway).

RTCP (:meth:`Router.on_rtcp`)
-----------------------------

Parsed with :mod:`callsgw.wire.rtcp`; a malformed compound is dropped and
counted, nothing in it is used. Per item:

* PLI/FIR for a stream the participant receives: a keyframe request to that
  stream's publisher, about the publisher's own SSRC, at most one per
  :data:`KEYFRAME_INTERVAL` per published track (the first goes out at once);
  FIR is sent as FIR when the publisher negotiated ``ccm fir``, else PLI.
* NACK: answered by the datapath from its history (the stored original,
  rewritten for that subscriber exactly as before); sequence numbers the
  gateway never got are forwarded to the publisher as a NACK (when it
  negotiated ``nack``), once per :data:`NACK_FORWARD_HOLDOFF` per number.
  Retransmissions are budgeted per route (:data:`RETRANSMIT_RATE`).
* SR from a publisher: kept for LSR/DLSR, and translated for each route of
  that stream (SSRC rewritten to the route's; the NTP timestamp kept, the RTP
  timestamp moved by the route's timestamp offset;
  packet and octet counts are the route's own) so that receivers keep
  lip-sync (RFC 3550 section 6.4.1); report blocks in SRs and RRs about
  streams the gateway sends are recorded on the route.
* transport-cc and REMB feedback go to the call's congestion control
  (:class:`callsgw.sfu.congestion.Congestion`, issue #19), counted by what
  it did with them; SDES, BYE, APP and other types are ignored.

Every RTCP packet the router builds is an RFC 3550 section 6.1 compound: an
SR or RR first, then an SDES CNAME, then any feedback.

Receiver reports (:meth:`Router.handle_timer`)
----------------------------------------------

Every :data:`RR_INTERVAL` seconds, each publisher gets one RR from the
gateway's SSRC for that publisher, with a block per media SSRC heard since
the last report (RFC 3550 Appendix A.3 loss, A.8 jitter, LSR/DLSR). RFC 3550
section 6.2 computes a randomised interval from the session bandwidth, with
a 5 s minimum that RFC 4585 section 3.4 lets AVPF sessions go below; a fixed
1 s period with no randomisation is this simplification (one sender, few
reports, and browsers report at the same pace).

Active speaker (RFC 6464)
-------------------------

Each voice publisher's level (0 = loudest, 127 = silence, in -dBov) is
averaged over the last :data:`SPEAKER_WINDOW`; no packets means silence.
Every :data:`SPEAKER_TICK` the loudest publisher at or above
:data:`SPEAKER_THRESHOLD` (-50 dBov) is the candidate; it becomes the
speaker when it has stayed the candidate for :data:`SPEAKER_HOLD`, and
:class:`SpeakerChanged` is queued (``participant_id`` None when everybody has
been quiet that long). The levels are recorded by the datapath and taken by
:meth:`Router.speaker_tick` (after a packet that reaches the router, and
from :meth:`Router.handle_timer`). Read events with :meth:`Router.next_event`.
"""

from __future__ import annotations

import math
import secrets
import struct
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable

from callsgw.sfu.congestion import TWCC_URI, Congestion
from callsgw.sfu.datapath import (
    HISTORY_SIZE,
    MAX_NACK_SEQUENCES,
    RETRANSMIT_RATE,
    SWITCH_IDLE,
    Datapath,
    DatapathFull,
    Outgoing,
    PythonDatapath,
    RouteState,
)
from callsgw.wire import rtcp as R
from callsgw.sfu.layers import RATE_WINDOW, LayerSelector
from callsgw.sfu.layers import TICK as LAYER_TICK
from callsgw.sfu.layers import RESUME_HOLD as LAYER_RESUME_HOLD
from callsgw.sfu.layers import UP_MARGIN as LAYER_UP_MARGIN
from callsgw.wire.rtp import RtpError, extension_value, layout, unwrap_rtx, validate

__all__ = [
    "HISTORY_SIZE",
    "KEYFRAME_INTERVAL",
    "Outgoing",
    "RR_INTERVAL",
    "Router",
    "SpeakerChanged",
]

VOICE = "voice"
SCREEN = "screen"
TRACKS = (VOICE, SCREEN)
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
PROBE_TICK = 0.05  # s between probe padding bursts (the media shell's transport-wide tick)
PROBE_MAX_PACKETS = 64  # padding packets per burst (255 octets of padding each at most)
PROBE_KEYFRAME_QUIET = 1.0  # s after a keyframe request for a screen track in which no probe starts on it
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"  # RFC 8852
RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
LAYER_IDLE = 2.0  # s without packets after which a simulcast layer is not live (the publisher paused it)
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"

AUDIO_SENT_WINDOW = 128  # per-route sent window for tracks without NACK (HISTORY_SIZE with NACK)
MAX_SSRCS_PER_TRACK = 8
MAX_ROUTES_PER_SUBSCRIBER = 256
MAX_RETIRED_ROUTES = 32  # removed routes remembered per subscriber (see set_forwarded)
MAX_NACK_FORWARD_MEMORY = 512
NACK_FORWARD_HOLDOFF = 0.2  # s between forwards of a NACK for the same number
KEYFRAME_INTERVAL = 1.0  # s between keyframe requests per published track
RR_INTERVAL = 1.0  # s between receiver reports
MAX_EVENTS = 256
SPEAKER_WINDOW = 0.3  # s of audio levels averaged
SPEAKER_HOLD = 0.5  # s a change must last
SPEAKER_THRESHOLD = 50  # -dBov: quieter than -50 dBov is not speaking
SPEAKER_TICK = 0.1  # s between evaluations
GATEWAY_CNAME = "callsgw"
# the datapath's, named here too: HISTORY_SIZE, MAX_NACK_SEQUENCES, RETRANSMIT_RATE, SWITCH_IDLE
assert (HISTORY_SIZE, MAX_NACK_SEQUENCES, RETRANSMIT_RATE, SWITCH_IDLE) == (512, 256, 300.0, 1.0)

_SEQ = struct.Struct("!H")
_SSRC = struct.Struct("!I")
_NO_ROUTE = RouteState(None, None, 0, None, False, 0, 0, 0, 0, 0, 0, Counter())  # a route without a datapath route


def cname_for(publisher_id: str) -> str:
    """The CNAME of a publisher's forwarded streams; must match the a=ssrc cname of the gateway's offers."""
    return f"callsgw-{publisher_id}"


# -- public types -------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeakerChanged:
    """The active speaker changed (None: nobody is speaking)."""

    participant_id: str | None
    previous: str | None = None


# -- owned state --------------------------------------------------------------------------


class _PublishedStream:
    """One SSRC a publisher sends on a track. Owned by its :class:`_Track`; its packets are the datapath's."""

    __slots__ = ("ssrc", "id", "reported", "rid", "repairs", "samples", "packets", "heard_at", "rate")

    def __init__(self, ssrc: int):
        self.ssrc = ssrc
        self.id = None  # the datapath's stream id (None: the datapath could not take it)
        self.reported = 0  # the datapath's report_packets at the last receiver report
        self.rid: str | None = None  # RFC 8852 RtpStreamId: the simulcast layer this media SSRC carries
        self.repairs: str | None = None  # RepairedRtpStreamId: the layer this RTX SSRC repairs
        self.samples: deque = deque()  # (time, bytes_in) on the layer tick, RATE_WINDOW of them
        self.packets = 0  # packets_in at the last layer tick
        self.heard_at = 0.0  # when packets last arrived (to the layer tick's precision)
        self.rate = 0.0  # bit/s over RATE_WINDOW


class _Track:
    """A published track of one publisher. Owned by its :class:`_Publisher`."""

    def __init__(self, publisher_id: str, track: str):
        self.publisher_id = publisher_id
        self.track = track
        self.section = None
        self.kind = "audio"
        self.clock_rate = 48000
        self.media_pts: dict[int, tuple[str, int]] = {}  # PT -> (codec name, clock rate)
        self.rtx_apt: dict[int, int] = {}  # RTX PT -> original PT (RFC 4588 apt)
        self.mid_id: int | None = None
        self.level_id: int | None = None
        self.ext_uris: dict[int, str] = {}
        self.nack = False
        self.pli = False
        self.fir = False
        self.streams: dict[int, _PublishedStream] = {}
        self.media_ssrc: int | None = None  # the SSRC of the latest media (non-RTX) packet, from the datapath
        self.last_keyframe_request: float | None = None
        # simulcast (RFC 8853): the section's RIDs, best first; layered when the datapath can switch
        self.rids: tuple[str, ...] = ()
        self.layered = False
        self.rid_id: int | None = None
        self.rrid_id: int | None = None
        self.layers: dict[str, _PublishedStream] = {}  # RID -> its media stream
        self.keyframe_at: dict[int, float] = {}  # layer SSRC -> last keyframe request for it
        self.fir_seq = 0
        self.keyframe_requests = 0
        self.nack_forwarded: dict[int, float] = {}  # original seq -> when a NACK for it was forwarded
        self.drops: Counter = Counter()

    def configure(self, section) -> None:
        self.section = section
        self.kind = section.kind
        codecs = [c for c in section.codecs if c.name.lower() != "rtx"]
        self.media_pts = {c.payloadType: (c.name.lower(), c.clockRate) for c in codecs}
        self.clock_rate = codecs[0].clockRate if codecs and codecs[0].clockRate else (
            48000 if section.kind == "audio" else 90000
        )
        self.rtx_apt = {}
        for c in section.codecs:
            apt = c.parameters.get("apt") if c.name.lower() == "rtx" else None
            try:
                apt = int(apt) if apt is not None else None
            except (TypeError, ValueError):
                apt = None
            if apt in self.media_pts:
                self.rtx_apt[c.payloadType] = apt
        self.ext_uris = {e.id: e.uri for e in section.extensions}
        by_uri = {e.uri: e.id for e in section.extensions}
        self.mid_id = by_uri.get(MID_URI)
        self.level_id = by_uri.get(AUDIO_LEVEL_URI) if section.kind == "audio" else None
        self.rids = tuple(getattr(section, "rids", ()) or ()) if section.kind == "video" else ()
        self.rid_id = by_uri.get(RID_URI)
        self.rrid_id = by_uri.get(RRID_URI)
        feedback = {
            (fb.type, fb.parameter or None) for c in codecs for fb in (c.rtcpFeedback or [])
        }
        self.nack = ("nack", None) in feedback
        self.pli = ("nack", "pli") in feedback
        self.fir = ("ccm", "fir") in feedback

    @property
    def payload_types(self) -> set[int]:
        return set(self.media_pts) | set(self.rtx_apt)


class _Publisher:
    """A participant as a sender. Owned by the :class:`Router`."""

    def __init__(self, participant_id: str, gateway_ssrc: int):
        self.id = participant_id
        self.gateway_ssrc = gateway_ssrc  # the gateway's SSRC in RTCP to this participant
        self.tracks: dict[str, _Track] = {}
        self.by_ssrc: dict[int, tuple[_Track, _PublishedStream]] = {}
        self.signalled: dict[int, _Track] = {}  # remote_ssrcs of the sections
        self.drops: Counter = Counter()
        self.levels: deque = deque(maxlen=64)  # (time, level) from RFC 6464
        # SSRC -> (rid, repairs) learned from RFC 8852 elements: a browser stops sending them once its
        # SSRC is acknowledged, and sends the same SSRCs again when a stopped screen share restarts
        self.ssrc_rids: dict[int, tuple[str | None, str | None]] = {}

    def resignal(self) -> None:
        self.signalled = {}
        for track in self.tracks.values():
            for ssrc in track.section.remote_ssrcs:
                self.signalled.setdefault(ssrc, track)


class _Route:
    """What one subscriber gets of one published track. Owned by its :class:`_Subscriber`."""

    def __init__(self, subscriber_id: str, source: tuple[str, str], section):
        self.subscriber_id = subscriber_id
        self.source = source
        self.section = section
        self.out_ssrc = section.ssrc
        self.id = None  # the datapath's route id (None: the datapath could not take it)
        self.config: tuple | None = None  # the rewrite last given to the datapath
        self.window = 0  # its sent window
        self.last_report: dict | None = None
        self.drops: Counter = Counter()  # the router's own (the datapath counts its drops)
        # simulcast: the route's selector, and what was last given to the datapath's route_select
        self.selector: LayerSelector | None = None
        self.layered = False  # route_select was called: the datapath route forwards one stream
        self.layer: str | None = None  # the RID selected (None: paused, or a track without layers)
        self.layer_stream = None  # the datapath stream id selected
        self.samples: deque = deque()  # (time, bytes_out) of voice routes on the layer tick
        self.rate = 0.0  # bit/s of a voice route over RATE_WINDOW


class _Subscriber:
    """A participant as a receiver. Owned by the :class:`Router`."""

    def __init__(self, participant_id: str):
        self.id = participant_id
        self.routes: dict[tuple[str, str], _Route] = {}
        self.by_ssrc: dict[int, _Route] = {}
        # routes taken away, by SSRC: revived if their SSRC comes back, so that an
        # (SSRC, sequence number) is never sent twice with different bytes
        self.retired: dict[int, _Route] = {}
        self.padded_at: float | None = None  # when probe padding was last sent to it (None: no probe running)


# -- the router ---------------------------------------------------------------------------


class Router:
    """Producer -> consumer maps and media decisions of one call's SFU (see the module docstring)."""

    def __init__(self, *, ssrc_generator: Callable[[], int] | None = None, datapath: Datapath | None = None):
        """``datapath``: where packets are worked on (a :class:`~callsgw.sfu.native.NativeDatapath` for
        the native engine); a new :class:`~callsgw.sfu.datapath.PythonDatapath` by default."""
        self._new_ssrc = ssrc_generator or (lambda: secrets.randbits(32) or 1)
        self._datapath: Datapath = datapath if datapath is not None else PythonDatapath()
        self._sources: dict[tuple[str, str], object] = {}  # (publisher, track) -> datapath source id
        self._routes_by_id: dict[object, _Route] = {}  # datapath route id -> route
        self._publishers: dict[str, _Publisher] = {}
        self._subscribers: dict[str, _Subscriber] = {}
        self._consumers: dict[tuple[str, str], dict[str, _Route]] = {}
        self._layers_ok = callable(getattr(self._datapath, "route_select", None))  # simulcast switching
        # subscriber -> (downlink bit/s, congested, lossy)
        self._estimates: dict[str, tuple[float | None, bool, bool]] = {}
        self._clock = 0.0  # the latest ``now`` seen: selections made from the signaling side use it
        self._next_layer_eval: float | None = None
        self._events: deque = deque()
        self._next_rr: float | None = None
        self._speaker: str | None = None
        self._candidate: str | None = None  # the loudest publisher, not yet the speaker for SPEAKER_HOLD
        self._candidate_since = 0.0
        self._next_speaker_eval: float | None = None
        self.counters: Counter = Counter()
        self.congestion = Congestion()  # transport-cc feedback and downlink estimates (issue #19)
        self._twcc_given: dict[str, tuple] = {}  # participant -> the twcc_ids last given to the datapath

    @property
    def datapath(self) -> Datapath:
        return self._datapath

    # -- signaling-side API --------------------------------------------------------

    def set_published(self, participant_id: str, track: str, section) -> None:
        """The participant publishes ``track`` ("voice" or "screen") on ``section`` (a published Section)."""
        if track not in TRACKS:
            raise ValueError(f"unknown track {track!r}")
        if section is None or section.stopped:
            self.remove_published(participant_id, track)
            return
        publisher = self._publishers.get(participant_id)
        if publisher is None:
            publisher = self._publishers[participant_id] = _Publisher(participant_id, self._new_ssrc())
        state = publisher.tracks.get(track)
        if state is None:
            state = publisher.tracks[track] = _Track(participant_id, track)
        state.configure(section)
        state.layered = bool(state.rids) and self._layers_ok
        publisher.resignal()
        self._twcc_follow(participant_id)
        self._publish_source(participant_id, state)
        for route in self._consumers.get((participant_id, track), {}).values():
            self._configure(route, state)
        self._select_track(state, self._clock, [], ask=False)

    def remove_published(self, participant_id: str, track: str) -> None:
        """The participant stopped publishing ``track``; its routes stay and receive nothing."""
        publisher = self._publishers.get(participant_id)
        if publisher is None:
            return
        state = publisher.tracks.pop(track, None)
        if state is None:
            return
        for ssrc in [s for s, (t, _) in publisher.by_ssrc.items() if t is state]:
            del publisher.by_ssrc[ssrc]
        if track == VOICE:
            publisher.levels.clear()
        publisher.resignal()
        self._twcc_follow(participant_id)
        self._unpublish_source(participant_id, state)

    def remove_participant(self, participant_id: str) -> None:
        """Forget everything the participant published and received (no event is emitted)."""
        self._estimates.pop(participant_id, None)
        publisher = self._publishers.pop(participant_id, None)
        if publisher is not None:
            for state in publisher.tracks.values():
                self._unpublish_source(participant_id, state)
        subscriber = self._subscribers.pop(participant_id, None)
        if subscriber is not None:
            for source in subscriber.routes:
                self._unindex(source, participant_id)
            for route in list(subscriber.routes.values()) + list(subscriber.retired.values()):
                self._close_route(route)
        self.congestion.forget(participant_id)
        self._twcc_given.pop(participant_id, None)
        if self._speaker == participant_id:
            self._speaker = None
        if self._candidate == participant_id:
            self._candidate = None

    def set_forwarded(self, subscriber_id: str, sections) -> None:
        """The subscriber's forwarded sections now; those with a ``source`` and not stopped forward.

        A route keeps its state (sequence offset, sent window) while its
        section keeps the same source and SSRC; a new SSRC is a new route. A
        removed route is remembered by SSRC (the last
        :data:`MAX_RETIRED_ROUTES`) and revived if that SSRC comes back, so its
        sequence numbers continue instead of repeating. A second section with
        an SSRC already in the list is refused. At most
        :data:`MAX_ROUTES_PER_SUBSCRIBER` routes.
        """
        subscriber = self._subscribers.get(subscriber_id)
        if subscriber is None:
            subscriber = self._subscribers[subscriber_id] = _Subscriber(subscriber_id)
        wanted: dict[tuple[str, str], object] = {}
        ssrcs: set[int] = set()
        for section in sections:
            if section.source is None or section.stopped or section.ssrc is None:
                continue
            if section.ssrc in ssrcs:
                # two streams on one SSRC would share SRTP indexes: refuse the second
                self.counters["route_ssrc_conflict"] += 1
                continue
            if len(wanted) >= MAX_ROUTES_PER_SUBSCRIBER:
                self.counters["routes_over_limit"] += 1
                continue
            wanted[tuple(section.source)] = section
            ssrcs.add(section.ssrc)
        for source, route in list(subscriber.routes.items()):
            section = wanted.get(source)
            if section is None or section.ssrc != route.out_ssrc:
                del subscriber.routes[source]
                subscriber.by_ssrc.pop(route.out_ssrc, None)
                self._unindex(source, subscriber_id)
                subscriber.retired[route.out_ssrc] = route
                while len(subscriber.retired) > MAX_RETIRED_ROUTES:
                    self._close_route(subscriber.retired.pop(next(iter(subscriber.retired))))
        for source, section in wanted.items():
            route = subscriber.routes.get(source)
            if route is None:
                route = subscriber.retired.pop(section.ssrc, None)
                if route is None:
                    route = _Route(subscriber_id, source, section)
                else:
                    route.source, route.section = source, section
                subscriber.routes[source] = route
                subscriber.by_ssrc[route.out_ssrc] = route
                self._consumers.setdefault(source, {})[subscriber_id] = route
                self._attach(route, subscriber_id, source)
            elif route.section is not section:
                route.section = section
                self._reconfigure(route, source)
        self._twcc_follow(subscriber_id)

    # -- the datapath's sources, streams and routes -----------------------------------

    def _datapath_id(self, make):
        """A new datapath id, or None (counted) when that datapath table is full."""
        try:
            return make()
        except DatapathFull:  # this piece gets no media; everything else goes on
            self.counters["engine_table_full"] += 1
            return None

    def _publish_source(self, publisher_id: str, track: _Track) -> None:
        """Create or update the datapath source of a published track."""
        key = (publisher_id, track.track)
        source = self._sources.get(key)
        if source is None:
            source = self._datapath_id(self._datapath.source_open)
            if source is None:
                return
            self._sources[key] = source
        self._datapath.source_configure(
            source, published=True, media_pts=tuple(track.media_pts), rtx_pts=tuple(track.rtx_apt),
            nack=track.nack, level_id=track.level_id or 0, clock_rate=track.clock_rate,
            video=track.kind == "video",
        )

    def _unpublish_source(self, publisher_id: str, track: _Track) -> None:
        for stream in track.streams.values():
            if stream.id is not None:
                self._datapath.stream_remove(stream.id)
                stream.id = None
        key = (publisher_id, track.track)
        source = self._sources.get(key)
        if source is not None:
            self._datapath.source_configure(source, published=False)
            self._release_source(key)

    def _release_source(self, key: tuple[str, str]) -> None:
        """Close a source nobody publishes and no route points at."""
        if key in self._consumers:
            return
        publisher = self._publishers.get(key[0])
        if publisher is not None and key[1] in publisher.tracks:
            return
        source = self._sources.pop(key, None)
        if source is not None:
            self._datapath.source_close(source)

    def _attach(self, route: _Route, subscriber_id: str, source: tuple[str, str]) -> None:
        """Give a (new or revived) route its datapath route, attached to the source's."""
        if route.id is None:
            route.id = self._datapath_id(lambda: self._datapath.route_open(subscriber_id, route.out_ssrc))
            if route.id is None:
                return
            self._routes_by_id[route.id] = route
        source_id = self._sources.get(source)
        if source_id is None:
            source_id = self._datapath_id(self._datapath.source_open)
            if source_id is None:
                return
            self._sources[source] = source_id
            self._datapath.source_configure(source_id, published=False)
        self._datapath.route_attach(route.id, source_id)
        self._reconfigure(route, source)
        publisher = self._publishers.get(source[0])
        track = publisher.tracks.get(source[1]) if publisher is not None else None
        if track is not None:
            self._select_route(route, track, self._clock, [], ask=False)

    def _reconfigure(self, route: _Route, source: tuple[str, str]) -> None:
        publisher = self._publishers.get(source[0])
        track = publisher.tracks.get(source[1]) if publisher is not None else None
        if track is not None:
            self._configure(route, track)

    def _unindex(self, source: tuple[str, str], subscriber_id: str) -> None:
        consumers = self._consumers.get(source)
        if consumers is not None:
            route = consumers.pop(subscriber_id, None)
            if route is not None and route.id is not None:
                self._datapath.route_detach(route.id)
            if not consumers:
                del self._consumers[source]
                self._release_source(source)

    def _close_route(self, route: _Route) -> None:
        if route.id is not None:
            self._datapath.route_close(route.id)
            self._routes_by_id.pop(route.id, None)
            route.id = None

    def _configure(self, route: _Route, track: _Track) -> None:
        """(Re)compute a route's rewrite from the publisher's and the subscriber's sections."""
        section = route.section
        sub_codecs = [c for c in section.codecs if c.name.lower() != "rtx" and not 64 <= c.payloadType <= 95]
        pt_map: dict[int, int] = {}
        for pt, (name, clock) in track.media_pts.items():
            matches = [c.payloadType for c in sub_codecs if c.name.lower() == name and c.clockRate == clock]
            if matches:
                pt_map[pt] = pt if pt in matches else matches[0]
        sub_ids = {e.uri: e.id for e in section.extensions}
        ids = {i: sub_ids[uri] for i, uri in track.ext_uris.items() if uri in sub_ids}
        mid_id = sub_ids.get(MID_URI)
        values = {mid_id: section.mid.encode()} if mid_id is not None and MID_URI in track.ext_uris.values() else None
        config = (tuple(sorted(pt_map.items())), tuple(sorted(ids.items())), tuple(sorted((values or {}).items())))
        window = HISTORY_SIZE if track.nack else AUDIO_SENT_WINDOW
        # earlier packets rewritten differently: never send their indexes again
        changed = route.config is not None and (config != route.config or window != route.window)
        route.config, route.window = config, window
        if route.id is not None:
            self._datapath.route_configure(
                route.id, pt_map=pt_map, ext_ids=ids, mid_id=mid_id if values else 0,
                mid_value=values[mid_id] if values else b"", window=window, block=changed,
            )

    def _route_state(self, route: _Route) -> RouteState:
        return self._datapath.route_state(route.id) if route.id is not None else _NO_ROUTE

    def _refresh_media_ssrc(self, track: _Track) -> None:
        """The datapath knows the SSRC of the track's latest media packet."""
        source = self._sources.get((track.publisher_id, track.track))
        if source is not None:
            ssrc = self._datapath.source_media_ssrc(source)
            if ssrc is not None:
                track.media_ssrc = ssrc

    # -- media ---------------------------------------------------------------------

    def on_rtp(self, publisher_id: str, packet: bytes, now: float) -> list[Outgoing]:
        """A decrypted RTP packet from ``publisher_id``: the copies to send (and maybe a keyframe request).

        With the native datapath only what the engine hands up arrives here (a
        new stream's first packets, RTX), and its copies leave through the engine.
        """
        if not isinstance(packet, bytes):
            packet = bytes(packet)
        self._clock = now
        publisher = self._publishers.get(publisher_id)
        if publisher is None:
            self.counters["rtp_unknown_publisher"] += 1
            return []
        if len(packet) < 12 or packet[0] >> 6 != 2:
            publisher.drops["malformed_rtp"] += 1
            return []
        ssrc = _SSRC.unpack_from(packet, 8)[0]
        found = publisher.by_ssrc.get(ssrc)
        if found is None:
            try:
                validate(packet)  # a known stream's packets are checked by the datapath
            except RtpError:
                publisher.drops["malformed_rtp"] += 1
                return []
            found = self._identify(publisher, packet, ssrc, packet[1] & 0x7F)
            if found is None:
                return []
            new = True
        else:
            new = False
        track, stream = found
        if stream.id is None:
            publisher.drops["not_installed"] += 1
            return []
        out: list[Outgoing] = []
        if new and (stream.rid is not None or (not track.layered and packet[1] & 0x7F in track.media_pts)):
            # a new layer (or a new stream for routes that were layered): select before it is forwarded
            stream.heard_at = now
            if track.layered and self._next_layer_eval is None:
                self._next_layer_eval = now + LAYER_TICK
            self._select_track(track, now, out, newest=stream)
        started = self._datapath.receive(stream.id, packet, now, out)
        if started is None:
            started = self._recover(track, packet, now, out, stream)
        elif packet[1] & 0x7F in track.media_pts:
            if self._next_rr is None:
                self._next_rr = now + RR_INTERVAL
            if track.level_id is not None:
                self._take_stream_levels(publisher, stream, now)
        for route_id in started:
            self.route_started(route_id, now, out)
        return out

    def _recover(self, track: _Track, packet: bytes, now: float, out: list, rtx: _PublishedStream | None = None
                 ) -> list:
        """RFC 4588 retransmission: recover the original and forward it if the gateway missed it.

        On a simulcast track the RTX SSRC repairs the layer its RepairedRtpStreamId named."""
        apt = track.rtx_apt.get(packet[1] & 0x7F)
        self._refresh_media_ssrc(track)
        if rtx is not None and rtx.repairs is not None:
            media = track.layers.get(rtx.repairs)
        else:
            media = track.streams.get(track.media_ssrc) if track.media_ssrc is not None else None
        if apt is None or media is None or media.id is None:
            track.drops["rtx_without_media"] += 1
            return []
        try:
            original = unwrap_rtx(packet, payload_type=apt, ssrc=media.ssrc)
            layout(original)
        except RtpError:
            track.drops["rtx_padding"] += 1
            return []
        seq = _SEQ.unpack_from(original, 2)[0]
        if not track.nack or self._datapath.history_has(media.id, seq):
            track.drops["rtx_not_needed"] += 1
            return []
        return self._datapath.recover(media.id, original, now, out)

    def _identify(self, publisher: _Publisher, packet: bytes, ssrc: int, pt: int):
        track = publisher.signalled.get(ssrc)
        if track is None:
            for candidate in publisher.tracks.values():
                if candidate.mid_id is None:
                    continue
                try:
                    value = extension_value(packet, candidate.mid_id)
                except RtpError:
                    value = None
                if value is not None and value == candidate.section.mid.encode():
                    track = candidate
                    break
        if track is None:
            matches = [t for t in publisher.tracks.values() if pt in t.payload_types]
            if len(matches) == 1:
                track = matches[0]
            else:
                publisher.drops["unidentified_ssrc" if not matches else "ambiguous_ssrc"] += 1
                return None
        rid = repairs = None
        if track.layered:
            rid, repairs = self._rid_of(track, packet, pt)
            if rid is None and repairs is None:
                rid, repairs = publisher.ssrc_rids.get(ssrc, (None, None))
                if (rid or repairs) not in track.rids:
                    rid = repairs = None
            else:
                publisher.ssrc_rids.pop(ssrc, None)
                publisher.ssrc_rids[ssrc] = (rid, repairs)
                while len(publisher.ssrc_rids) > 4 * MAX_SSRCS_PER_TRACK:
                    del publisher.ssrc_rids[next(iter(publisher.ssrc_rids))]
            if rid is None and repairs is None:
                track.drops["unidentified_layer"] += 1
                return None
        if len(track.streams) >= MAX_SSRCS_PER_TRACK:
            track.drops["ssrc_limit"] += 1
            return None
        stream = track.streams[ssrc] = _PublishedStream(ssrc)
        stream.rid, stream.repairs = rid, repairs
        if rid is not None:
            track.layers[rid] = stream  # a layer's new SSRC replaces its old one
        publisher.by_ssrc[ssrc] = (track, stream)
        source = self._sources.get((publisher.id, track.track))
        if source is not None:
            stream.id = self._datapath_id(lambda: self._datapath.stream_add(source, publisher.id, ssrc))
        return track, stream

    @staticmethod
    def _rid_of(track: _Track, packet: bytes, pt: int) -> tuple[str | None, str | None]:
        """``(rid, repairs)`` of a new SSRC on a simulcast track from its RFC 8852 elements (RTX: the
        RepairedRtpStreamId, else its RtpStreamId); an RID the section did not list is none."""

        def value(ext_id):
            if not ext_id:
                return None
            try:
                raw = extension_value(packet, ext_id)
            except RtpError:
                return None
            try:
                return raw.decode("ascii") if raw else None
            except UnicodeDecodeError:
                return None

        if pt in track.rtx_apt:
            rid = value(track.rrid_id) or value(track.rid_id)
            return (None, rid) if rid in track.rids else (None, None)
        rid = value(track.rid_id)
        return (rid, None) if rid in track.rids else (None, None)

    # -- simulcast layers (RFC 8853): one layer per subscriber route ---------------------

    def set_downlink_estimate(self, subscriber_id: str, estimate_bps: float | None, *, congested: bool = False,
                              lossy: bool = False) -> None:
        """The subscriber's downlink estimate in bit/s (None: none), whether it is congested and whether
        it is losing packets (``lossy``), for its layer selection (:mod:`callsgw.sfu.layers`); used from
        the next layer tick on."""
        if estimate_bps is None and not congested:
            self._estimates.pop(subscriber_id, None)
        elif subscriber_id in self._subscribers or estimate_bps is not None:
            self._estimates[subscriber_id] = (estimate_bps, congested, lossy)

    def force_layer(self, subscriber_id: str, source: tuple[str, str], *args, now: float | None = None
                    ) -> list[Outgoing]:
        """Force the layer ``rid`` (one argument: an RID, or None to pause) on the subscriber's route of
        ``source``; no argument: automatic again. A test and operator hook. Returns the keyframe request
        for the target layer (also repeated by the layer tick until the switch happens)."""
        out: list[Outgoing] = []
        subscriber = self._subscribers.get(subscriber_id)
        route = subscriber.routes.get(tuple(source)) if subscriber is not None else None
        publisher = self._publishers.get(source[0])
        track = publisher.tracks.get(source[1]) if publisher is not None else None
        if route is None or track is None or not track.layered:
            raise KeyError(f"no simulcast route of {source!r} to {subscriber_id!r}")
        if route.selector is None:
            route.selector = LayerSelector()
        route.selector.force(*args)
        now = self._clock if now is None else now
        if self._next_layer_eval is None:
            self._next_layer_eval = now + LAYER_TICK
        self._select_route(route, track, now, out)
        return out

    def _live_layers(self, track: _Track, now: float) -> list[tuple[str, float]]:
        """The track's layers with packets in the last LAYER_IDLE, best first, with their bit/s."""
        live = []
        for rid in track.rids:
            stream = track.layers.get(rid)
            if stream is not None and stream.id is not None and now - stream.heard_at <= LAYER_IDLE:
                live.append((rid, stream.rate))
        return live

    def _voice_bps(self, subscriber_id: str) -> float:
        subscriber = self._subscribers.get(subscriber_id)
        if subscriber is None:
            return 0.0
        return sum(route.rate for (_, name), route in subscriber.routes.items() if name == VOICE)

    def _select_track(self, track: _Track, now: float, out: list, *, newest: _PublishedStream | None = None,
                      ask: bool = True) -> None:
        for route in self._consumers.get((track.publisher_id, track.track), {}).values():
            self._select_route(route, track, now, out, newest=newest, ask=ask)

    def _select_route(self, route: _Route, track: _Track, now: float, out: list, *,
                      newest: _PublishedStream | None = None, ask: bool = True) -> None:
        """Give the datapath route the layer its selector chooses, and ask for that layer's keyframe.

        ``ask=False`` (a selection from the signaling side, whose ``out`` goes nowhere): the keyframe
        request is left to the next layer tick, so that it is neither lost nor held back by the limit.

        A route that was layered stays layered in the datapath (route_select cannot be undone): on a
        track without layers it follows the newest media stream."""
        if route.id is None or track.kind != "video":
            return
        if track.layered:
            if route.selector is None:
                route.selector = LayerSelector()
            estimate, congested, lossy = self._estimates.get(route.subscriber_id, (None, False, False))
            rid = route.selector.update(now, self._live_layers(track, now), estimate_bps=estimate,
                                        congested=congested, lossy=lossy,
                                        voice_bps=self._voice_bps(route.subscriber_id))
            stream = track.layers.get(rid) if rid is not None else None
        elif route.layered:
            rid = None
            stream = newest
            if stream is None:
                self._refresh_media_ssrc(track)
                stream = track.streams.get(track.media_ssrc) if track.media_ssrc is not None else None
            if stream is None:
                return
        else:
            return
        stream_id = stream.id if stream is not None else None
        if route.layered and stream_id == route.layer_stream and rid == route.layer:
            return
        try:
            self._datapath.route_select(route.id, stream_id)
        except ValueError:  # the route is not on the source (its table was full): nothing to switch
            route.drops["layer_select_failed"] += 1
            return
        route.layered, route.layer, route.layer_stream = True, rid, stream_id
        publisher = self._publishers.get(track.publisher_id)
        if stream is not None and publisher is not None and ask:
            self._request_keyframe(publisher, track, now, out, fir=False, ssrc=stream.ssrc)

    def _layer_tick(self, now: float, out: list) -> None:
        """Every LAYER_TICK: measure the layers and voice, choose each route's layer, and ask again
        for the keyframe of a switch still waiting for one (within the keyframe rate limit)."""
        tracks = [t for p in self._publishers.values() for t in p.tracks.values() if t.layered]
        self._next_layer_eval = now + LAYER_TICK if tracks else None
        if not tracks:
            return
        for subscriber in self._subscribers.values():
            for (_, name), route in subscriber.routes.items():
                if name == VOICE and route.id is not None:
                    route.rate = self._measure(route.samples, self._route_state(route).bytes_out, now)
        for track in tracks:
            for stream in track.layers.values():
                if stream.id is None:
                    continue
                counts = self._datapath.stream_counts(stream.id)
                if counts.packets_in != stream.packets:
                    stream.packets, stream.heard_at = counts.packets_in, now
                stream.rate = self._measure(stream.samples, counts.bytes_in, now)
            self._select_track(track, now, out)
            publisher = self._publishers.get(track.publisher_id)
            for route in self._consumers.get((track.publisher_id, track.track), {}).values():
                target = track.layers.get(route.layer) if route.layered and route.layer is not None else None
                if target is not None and publisher is not None and self._route_state(route).active_ssrc != target.ssrc:
                    self._request_keyframe(publisher, track, now, out, fir=False, ssrc=target.ssrc)

    @staticmethod
    def _measure(samples: deque, total: int, now: float) -> float:
        """Bit/s of a byte counter over the last RATE_WINDOW (0 until two samples)."""
        samples.append((now, total))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        then, before = samples[0]
        return (total - before) * 8 / (now - then) if now > then else 0.0

    def route_started(self, route_id, now: float, out: list | None = None) -> list[Outgoing]:
        """A video route sent its first packet: ask its publisher for a keyframe (RFC 4585 section 6.3.1).

        The datapath reports it: in the return value of a packet the router
        handed it, or (the native engine, which forwards on its own) through
        the media shell.
        """
        out = [] if out is None else out
        route = self._routes_by_id.get(route_id)
        if route is None:
            return out
        publisher = self._publishers.get(route.source[0])
        track = publisher.tracks.get(route.source[1]) if publisher is not None else None
        if track is not None and track.kind == "video":
            layer = track.layers.get(route.layer) if track.layered and route.layer is not None else None
            self._request_keyframe(publisher, track, now, out, fir=False,
                                   ssrc=layer.ssrc if layer is not None else None)
        return out

    def speaker_tick(self, now: float) -> None:
        """Take the audio levels the datapath recorded and evaluate the speaker when due.

        Called by :meth:`handle_timer` (at least every :data:`RR_INTERVAL` while
        streams exist): with the native engine most packets never reach the
        router (a voice packet that does brings its own levels at once).
        """
        if self._next_speaker_eval is None:
            self._take_levels()
            if any(p.levels for p in self._publishers.values()):
                self._next_speaker_eval = now + SPEAKER_TICK
        elif now >= self._next_speaker_eval:
            self._evaluate_speaker(now)

    def _take_stream_levels(self, publisher: _Publisher, stream: _PublishedStream, now: float) -> None:
        """The levels a packet just brought: schedule the speaker evaluation, or run it when due."""
        levels = self._datapath.stream_levels(stream.id)
        if not levels:
            return
        publisher.levels.extend(levels)
        if self._next_speaker_eval is None:
            self._next_speaker_eval = now + SPEAKER_TICK
        elif now >= self._next_speaker_eval:
            self._evaluate_speaker(now)

    def _take_levels(self) -> None:
        """Move the datapath's RFC 6464 levels into the publishers' windows."""
        for publisher in self._publishers.values():
            track = publisher.tracks.get(VOICE)
            if track is None or track.level_id is None:
                continue
            for stream in track.streams.values():
                if stream.id is not None:
                    publisher.levels.extend(self._datapath.stream_levels(stream.id))

    # -- RTCP ------------------------------------------------------------------------

    def on_rtcp(self, participant_id: str, packet: bytes, now: float) -> list[Outgoing]:
        """A decrypted compound RTCP packet from a participant: what to send in response."""
        try:
            compound = R.parse(packet)
        except R.RtcpError:
            self.counters["rtcp_malformed"] += 1
            publisher = self._publishers.get(participant_id)
            if publisher is not None:
                publisher.drops["malformed_rtcp"] += 1
            return []
        if compound.reduced_size:
            self.counters["rtcp_reduced_size"] += 1
        out: list[Outgoing] = []
        translated: list[Outgoing] = []
        subscriber = self._subscribers.get(participant_id)
        publisher = self._publishers.get(participant_id)
        for item in compound.items:
            if isinstance(item, R.SenderReport):
                self._record_blocks(subscriber, item.reports, now)
                self._sender_report(publisher, item, now, translated)
            elif isinstance(item, R.ReceiverReport):
                self._record_blocks(subscriber, item.reports, now)
            elif isinstance(item, R.Pli):
                self._keyframe_for(subscriber, (item.media_ssrc,), now, out, fir=False)
            elif isinstance(item, R.Fir):
                self._keyframe_for(subscriber, tuple(s for s, _ in item.entries), now, out, fir=True)
            elif isinstance(item, R.Nack):
                self._nack(subscriber, item, now, out)
            elif isinstance(item, (R.Remb, R.TransportCc)):
                if self.congestion.feedback(participant_id, item, now):
                    self._follow_estimate(participant_id, now)
            else:
                self.counters[f"rtcp_ignored_{type(item).__name__.lower()}"] += 1
        return out + translated

    def _record_blocks(self, subscriber: _Subscriber | None, blocks, now: float) -> None:
        for block in blocks:
            route = subscriber.by_ssrc.get(block.ssrc) if subscriber is not None else None
            if route is None:
                self.counters["report_block_unknown_ssrc"] += 1
                continue
            route.last_report = {
                "at": now,
                "fraction_lost": block.fraction_lost,
                "cumulative_lost": block.cumulative_lost,
                "highest_seq": block.highest_seq,
                "jitter": block.jitter,
            }
            self.congestion.receiver_report(subscriber.id, block.fraction_lost, now)
            self._follow_estimate(subscriber.id, now)

    def _sender_report(self, publisher: _Publisher | None, sr: R.SenderReport, now: float, out: list) -> None:
        found = publisher.by_ssrc.get(sr.ssrc) if publisher is not None else None
        if found is None:
            self.counters["sr_unknown_ssrc"] += 1
            return
        track, stream = found
        stats = self._datapath.stream_stats(stream.id) if stream.id is not None else None
        if stats is not None:
            stats.sender_report(sr.ntp_timestamp, now)
        for route in self._consumers.get((publisher.id, track.track), {}).values():
            state = self._route_state(route)
            if state.active_ssrc != sr.ssrc or not state.started:
                continue
            rtp_timestamp = (sr.rtp_timestamp + state.ts_offset) & 0xFFFFFFFF
            report = R.build_sr(route.out_ssrc, sr.ntp_timestamp, rtp_timestamp, state.packets_out, state.octets_out)
            sdes = R.build_sdes_cname(route.out_ssrc, cname_for(publisher.id))
            out.append(Outgoing(route.subscriber_id, report + sdes))
            self.counters["sr_translated"] += 1

    def _source_of(self, subscriber: _Subscriber | None, ssrc: int):
        route = subscriber.by_ssrc.get(ssrc) if subscriber is not None else None
        if route is None:
            return None, None, None
        publisher = self._publishers.get(route.source[0])
        track = publisher.tracks.get(route.source[1]) if publisher is not None else None
        return route, publisher, track

    def _keyframe_for(self, subscriber, ssrcs, now: float, out: list, *, fir: bool) -> None:
        for ssrc in ssrcs:
            route, publisher, track = self._source_of(subscriber, ssrc)
            if track is not None:
                self._refresh_media_ssrc(track)
            if route is None:
                self.counters["keyframe_request_unknown_ssrc"] += 1
            elif track is None or track.kind != "video" or track.media_ssrc is None:
                route.drops["keyframe_request_no_source"] += 1
            elif track.layered:
                # the layer the subscriber decodes now (a pending switch asks for its own on the tick)
                active = self._route_state(route).active_ssrc
                if active is None:
                    route.drops["keyframe_request_no_source"] += 1
                else:
                    self._request_keyframe(publisher, track, now, out, fir=fir, ssrc=active)
            else:
                self._request_keyframe(publisher, track, now, out, fir=fir)

    def _request_keyframe(self, publisher: _Publisher, track: _Track, now: float, out: list, *, fir: bool,
                          ssrc: int | None = None) -> None:
        """PLI or FIR to the publisher, at most one per KEYFRAME_INTERVAL per track (RFC 4585 6.3.1, RFC 5104 4.3.1).

        ``ssrc``: a simulcast layer's SSRC (the limit is then per layer); else the track's latest media SSRC.
        """
        self._refresh_media_ssrc(track)
        media_ssrc = track.media_ssrc if ssrc is None else ssrc
        if media_ssrc is None:
            return
        last = track.last_keyframe_request if ssrc is None else track.keyframe_at.get(ssrc)
        if last is not None and now - last < KEYFRAME_INTERVAL:
            track.drops["keyframe_request_rate_limited"] += 1
            return
        if ssrc is None:
            track.last_keyframe_request = now
        else:
            if len(track.keyframe_at) >= MAX_SSRCS_PER_TRACK and ssrc not in track.keyframe_at:
                track.keyframe_at.clear()
            track.keyframe_at[ssrc] = now
        track.keyframe_requests += 1
        if (fir and track.fir) or (track.fir and not track.pli):
            track.fir_seq = (track.fir_seq + 1) & 0xFF
            feedback = R.build_fir(publisher.gateway_ssrc, [(media_ssrc, track.fir_seq)])
        else:
            feedback = R.build_pli(publisher.gateway_ssrc, media_ssrc)
        out.append(Outgoing(publisher.id, self._compound(publisher, feedback)))

    @staticmethod
    def _compound(publisher: _Publisher, *packets: bytes) -> bytes:
        """RFC 3550 section 6.1: RR first, SDES CNAME, then the rest."""
        ssrc = publisher.gateway_ssrc
        return R.build_rr(ssrc) + R.build_sdes_cname(ssrc, GATEWAY_CNAME) + b"".join(packets)

    def _nack(self, subscriber: _Subscriber | None, nack: R.Nack, now: float, out: list) -> None:
        """Answer a generic NACK (RFC 4585 section 6.2.1): the datapath resends from its history."""
        route, publisher, track = self._source_of(subscriber, nack.media_ssrc)
        if route is None:
            self.counters["nack_unknown_ssrc"] += 1
            return
        if route.id is None:
            return
        missing = self._datapath.nack(route.id, nack.sequences(), now, out)
        if missing and track is not None and track.nack and publisher is not None:
            ssrc = self._datapath.route_state(route.id).active_ssrc
            self._forward_nack(publisher, track, ssrc, missing, now, out)

    def _forward_nack(
        self, publisher: _Publisher, track: _Track, ssrc: int, sequences: list[int], now: float, out: list
    ) -> None:
        """Ask the publisher for packets the gateway never got (once per NACK_FORWARD_HOLDOFF each)."""
        memory = track.nack_forwarded
        wanted = []
        for seq in sequences:
            last = memory.get(seq)
            if last is not None and now - last < NACK_FORWARD_HOLDOFF:
                continue
            memory.pop(seq, None)
            memory[seq] = now
            wanted.append(seq)
        while len(memory) > MAX_NACK_FORWARD_MEMORY:
            del memory[next(iter(memory))]
        if not wanted:
            track.drops["nack_forward_suppressed"] += 1
            return
        track.drops["nack_forwarded"] += len(wanted)
        feedback = R.build_nack(publisher.gateway_ssrc, ssrc, R.nack_entries(wanted))
        out.append(Outgoing(publisher.id, self._compound(publisher, feedback)))

    # -- transport-wide congestion control (issue #19) ---------------------------------

    def twcc_ids(self, participant_id: str) -> tuple[int, int, bool]:
        """What the participant's transport does with transport-wide sequence numbers.

        ``(in_id, out_id, feedback_up)``: the RFC 8285 ID of the extension in
        the participant's published sections (its arrivals are logged for the
        feedback it gets), the ID in its forwarded sections (the copies carry
        the gateway's own numbers), and whether its transport-cc and REMB
        reach the router (it receives something). 0: not negotiated.
        """
        in_id = out_id = 0
        publisher = self._publishers.get(participant_id)
        if publisher is not None:
            for track in publisher.tracks.values():
                for ext_id, uri in track.ext_uris.items():
                    if uri == TWCC_URI:
                        in_id = ext_id
        subscriber = self._subscribers.get(participant_id)
        receives = False
        if subscriber is not None:
            for route in subscriber.routes.values():
                receives = True
                for ext in route.section.extensions:
                    if ext.uri == TWCC_URI:
                        out_id = ext.id
        return in_id, out_id, receives

    def on_twcc(self, participant_id: str, arrivals, sent, now: float) -> list[Outgoing]:
        """The participant transport's drained logs (``Engine.take_twcc`` form, times in seconds
        on ``now``'s clock): transport-cc feedback for it as a publisher, sends for its estimate."""
        out: list[Outgoing] = []
        publisher = self._publishers.get(participant_id)
        if publisher is not None and len(arrivals[0]):
            media_ssrc = next(iter(publisher.by_ssrc), 0)
            packets = self.congestion.arrivals(participant_id, arrivals[0], arrivals[1], now,
                                               sender_ssrc=publisher.gateway_ssrc, media_ssrc=media_ssrc)
            if packets:
                out.append(Outgoing(participant_id, self._compound(publisher, *packets)))
        if len(sent[0]):
            self.congestion.sent(participant_id, sent[0], sent[1], sent[2], now)
            subscriber = self._subscribers.get(participant_id)
            if subscriber is not None:
                self._probe(subscriber, now, out)
        return out

    def _probe(self, subscriber: _Subscriber, now: float, out: list) -> None:
        """Probe the subscriber's downlink with padding while a screen route gets less than its best layer.

        The estimate only grows from what is delivered (:mod:`callsgw.sfu.bwe`), so a subscriber moved
        down would stay down; the estimator decides when and how much to probe
        (``DownlinkEstimator.probe``), the datapath sends the padding on the route (``route_padding``).

        No probe starts within :data:`PROBE_KEYFRAME_QUIET` of a keyframe request for the track (any
        layer: a simulcast encoder answers with keyframes on all of them): the keyframe's burst is
        coming, and a probe on top of it is what overflows a slow link's queue. Nor within the layer
        selector's first resume hold after it paused the screen for voice: that link just showed it is
        full, and a probe would cost voice again.
        """
        voice = self._voice_bps(subscriber.id)
        target = media = 0.0
        for (publisher_id, name), route in subscriber.routes.items():
            if not route.layered:
                continue
            publisher = self._publishers.get(publisher_id)
            track = publisher.tracks.get(name) if publisher is not None else None
            layers = self._live_layers(track, now) if track is not None else []
            rids = [rid for rid, _ in layers]
            at = rids.index(route.layer) if route.layer in rids else len(rids)
            asked = [t for t in (*track.keyframe_at.values(), track.last_keyframe_request) if t is not None] \
                if track is not None else []
            if asked and now - max(asked) < PROBE_KEYFRAME_QUIET:
                self.congestion.counters["probe_held_for_keyframe"] += 1
                break
            paused_at = route.selector.paused_at if route.selector is not None else None
            if paused_at is not None and now - paused_at < LAYER_RESUME_HOLD:
                break  # paused for voice: the link just showed it is full; no probe on it at once
            if at > 0 and layers:
                target = voice + layers[at - 1][1] * LAYER_UP_MARGIN
                media = voice + (layers[at][1] if at < len(layers) else 0.0)
                break
        padding_bps = self.congestion.probe(subscriber.id, now, target, media)
        if padding_bps <= 0:
            subscriber.padded_at = None
            return
        # the padding due since the last burst: the shell drains (and calls this) every PROBE_TICK, and
        # again before each RTCP of the subscriber, so a fixed amount per call would send several times
        # the rate the estimator asked for
        last = subscriber.padded_at
        octets = padding_bps * (PROBE_TICK if last is None else min(max(now - last, 0.0), 2 * PROBE_TICK)) / 8
        if octets < 255:
            return  # too soon after the last burst: it accumulates
        # on the screen route only (never voice: an empty Opus packet is not padding to every receiver);
        # the datapath sends nothing inside a frame, and then what is due waits for the next call
        for route in subscriber.routes.values():
            if not route.layered or route.id is None or self._route_state(route).highest is None:
                continue
            count = min(PROBE_MAX_PACKETS, max(1, math.ceil(octets / 255)))
            size = max(1, min(255, int(octets / count)))
            if self._datapath.route_padding(route.id, count, size, out):
                subscriber.padded_at = now
                self.congestion.counters["probe_padding_packets"] += count
                return
        self.congestion.counters["probe_padding_deferred"] += 1

    def quality(self, participant_id: str) -> dict:
        """What congestion control knows of a participant, as plain data (``/api/v1``, ``callsgw inspect``).

        ``downlink_bps`` (None before any feedback) and ``congested``: its
        downlink estimate; ``downlink``: the estimator's state, source, loss
        and counters; ``screen_layers``: the simulcast layer each layered
        route forwards (None: paused); ``feedback``: the transport-cc the
        gateway sent it as a publisher.
        """
        now = self._clock
        estimate, congested = self.congestion.estimate(participant_id, now)
        subscriber = self._subscribers.get(participant_id)
        layers = {
            f"{source[0]}/{source[1]}": route.layer
            for source, route in (subscriber.routes.items() if subscriber is not None else ())
            if getattr(route, "layered", False)
        }
        return {
            "downlink_bps": estimate,
            "congested": congested,
            "downlink": self.congestion.downlink(participant_id, now),
            "screen_layers": layers,
            "feedback": self.congestion.generator_counters(participant_id),
        }

    def _twcc_follow(self, participant_id: str) -> None:
        """Give the datapath the participant's transport-wide settings as soon as its sections change
        them, before any copy under the new sections goes out (the media shell's tick re-checks)."""
        ids = self.twcc_ids(participant_id)
        if self._twcc_given.get(participant_id) != ids and hasattr(self._datapath, "session_twcc"):
            self._twcc_given[participant_id] = ids
            self._datapath.session_twcc(participant_id, *ids)

    def _follow_estimate(self, subscriber_id: str, now: float) -> None:
        """The subscriber's downlink estimate moved: its layer selection uses it from the next tick."""
        estimate, congested = self.congestion.estimate(subscriber_id, now)
        self.set_downlink_estimate(subscriber_id, estimate, congested=congested,
                                   lossy=self.congestion.lossy(subscriber_id, now))

    # -- timers: receiver reports and the active speaker ---------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should run next (None: nothing scheduled)."""
        due = [t for t in (self._next_rr, self._next_speaker_eval, self._next_layer_eval) if t is not None]
        return min(due) if due else None

    def handle_timer(self, now: float) -> list[Outgoing]:
        """Receiver reports due (RFC 3550 section 6.4.2) and the speaker evaluation."""
        out: list[Outgoing] = []
        self._clock = now
        if self._next_layer_eval is not None and now >= self._next_layer_eval:
            self._layer_tick(now, out)
        if self._next_rr is not None and now >= self._next_rr:
            self._next_rr = now + RR_INTERVAL
            any_stats = False
            for publisher in self._publishers.values():
                blocks = []
                for track in publisher.tracks.values():
                    for stream in track.streams.values():
                        stats = self._datapath.stream_stats(stream.id) if stream.id is not None else None
                        if stats is None:
                            continue
                        any_stats = True
                        packets = self._datapath.stream_counts(stream.id).report_packets
                        since, stream.reported = packets - stream.reported, packets
                        if since == 0:
                            continue
                        block = stats.report_block(stream.ssrc, now)
                        if block is not None:
                            blocks.append(block)
                if blocks:
                    rr = R.build_rr(publisher.gateway_ssrc, blocks[: R.MAX_REPORT_BLOCKS])
                    out.append(Outgoing(publisher.id, rr + R.build_sdes_cname(publisher.gateway_ssrc, GATEWAY_CNAME)))
                    self.counters["rr_sent"] += 1
            if not any_stats:
                self._next_rr = None
        if self._next_speaker_eval is not None and now >= self._next_speaker_eval:
            self._evaluate_speaker(now)
        elif self._next_speaker_eval is None:
            self.speaker_tick(now)
        return out

    def _smoothed(self, publisher: _Publisher, now: float) -> float:
        levels = publisher.levels
        while levels and levels[0][0] <= now - SPEAKER_WINDOW:
            levels.popleft()
        if not levels:
            return 127.0
        return sum(level for _, level in levels) / len(levels)

    def _evaluate_speaker(self, now: float) -> None:
        self._take_levels()
        best, best_level = None, None
        current_level = None
        for publisher in self._publishers.values():
            if VOICE not in publisher.tracks:
                continue
            level = self._smoothed(publisher, now)
            if level > SPEAKER_THRESHOLD:
                continue
            if publisher.id == self._speaker:
                current_level = level
            if best_level is None or level < best_level:
                best, best_level = publisher.id, level
        if current_level is not None and current_level <= best_level:
            best = self._speaker  # a tie keeps the current speaker
        if best == self._speaker:
            self._candidate = None
        elif best != self._candidate:
            self._candidate = best
            self._candidate_since = now
        elif now - self._candidate_since >= SPEAKER_HOLD:
            previous, self._speaker, self._candidate = self._speaker, best, None
            if len(self._events) < MAX_EVENTS:
                self._events.append(SpeakerChanged(best, previous))
            else:
                self.counters["events_dropped"] += 1
        active = self._speaker is not None or self._candidate is not None or any(
            p.levels for p in self._publishers.values()
        )
        self._next_speaker_eval = now + SPEAKER_TICK if active else None

    @property
    def active_speaker(self) -> str | None:
        return self._speaker

    def next_event(self) -> SpeakerChanged | None:
        """The next queued event, or None."""
        return self._events.popleft() if self._events else None

    # -- introspection ----------------------------------------------------------------

    def gateway_ssrc(self, participant_id: str) -> int | None:
        """The SSRC the gateway reports from in RTCP to this publisher."""
        publisher = self._publishers.get(participant_id)
        return publisher.gateway_ssrc if publisher is not None else None

    def stats(self) -> dict:
        """Counters per published stream and per route, as plain data."""
        publishers = {}
        for publisher in self._publishers.values():
            tracks = {}
            publisher_drops = Counter(publisher.drops)
            for name, track in publisher.tracks.items():
                streams = {}
                track_drops = Counter(track.drops)
                self._refresh_media_ssrc(track)
                for ssrc, stream in track.streams.items():
                    entry = {"packets_in": 0, "bytes_in": 0}
                    stats = None
                    if stream.id is not None:
                        counts = self._datapath.stream_counts(stream.id)
                        entry.update(packets_in=counts.packets_in, bytes_in=counts.bytes_in)
                        for reason in ("unknown_payload_type", "bad_audio_level"):
                            track_drops[reason] += getattr(counts, reason)
                        publisher_drops["malformed_rtp"] += counts.malformed_rtp
                        stats = self._datapath.stream_stats(stream.id)
                    if stats is not None and stats.valid:
                        entry.update(
                            expected=stats.expected,
                            received=stats.received,
                            lost=stats.cumulative_lost,
                            jitter=int(stats.jitter),
                        )
                    if stream.rid is not None or stream.repairs is not None:
                        entry.update(rid=stream.rid, repairs=stream.repairs)
                    streams[ssrc] = entry
                tracks[name] = {
                    "mid": track.section.mid,
                    "media_ssrc": track.media_ssrc,
                    "streams": streams,
                    "keyframe_requests": track.keyframe_requests,
                    "drops": {k: v for k, v in track_drops.items() if v},
                }
                if track.rids:
                    tracks[name]["layers"] = {
                        rid: {"ssrc": stream.ssrc, "bitrate": round(stream.rate),
                              "packets_in": streams.get(stream.ssrc, {}).get("packets_in", 0)}
                        for rid, stream in track.layers.items()
                    }
            publishers[publisher.id] = {
                "gateway_ssrc": publisher.gateway_ssrc,
                "tracks": tracks,
                "drops": {k: v for k, v in publisher_drops.items() if v},
            }
        subscribers = {}
        for subscriber in self._subscribers.values():
            routes = {}
            for (source_id, source_track), route in subscriber.routes.items():
                state = self._route_state(route)
                drops = Counter(route.drops)
                drops.update(state.drops)  # adds
                switches = drops.pop("layer_switches", 0)
                if route.layered:
                    layer = {"layer": route.layer, "layer_switches": switches,
                             "layer_forced": route.selector is not None and route.selector.forced}
                else:
                    layer = {}
                routes[f"{source_id}/{source_track}"] = {
                    **layer,
                    "ssrc": route.out_ssrc,
                    "mid": route.section.mid,
                    "active_ssrc": state.active_ssrc,
                    "packets_out": state.packets_out,
                    "bytes_out": state.bytes_out,
                    "retransmits": state.retransmits,
                    "nack_misses": state.nack_misses,
                    "last_report": route.last_report,
                    "drops": {k: v for k, v in drops.items() if v},
                }
            subscribers[subscriber.id] = {"routes": routes}
        return {
            "publishers": publishers,
            "subscribers": subscribers,
            "active_speaker": self._speaker,
            "counters": dict(self.counters),
            "congestion": self.congestion.stats(),
        }

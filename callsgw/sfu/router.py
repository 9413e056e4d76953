"""The SFU router of one call: producer -> consumer maps, RTP rewriting, RTCP feedback.

Sans-I/O: every entry point takes ``now`` (seconds on the shell's monotonic
clock) and returns the packets to send as :class:`Outgoing` pairs
``(participant_id, packet)``; :attr:`Outgoing.is_rtcp` tells the shell to use
``MediaTransport.send_rtcp`` or ``send_rtp``. Packets in and out are the
*decrypted* RTP/RTCP (``RtpReceived.packet``/``RtcpReceived.packet``); the
transports encrypt each copy with its subscriber's keys. One ``Router`` per
call: participant IDs are only unique within a call, and so is the active
speaker.

Maps (the shape of mediasoup's ``Router`` and aiortc's ``RtpRouter``)
---------------------------------------------------------------------

* ``_publishers[participant_id]`` -> :class:`_Publisher`, which owns its
  published tracks (:class:`_Track`, at most one ``voice`` and one
  ``screen``), and each track owns its inbound SSRC streams
  (:class:`_Inbound`: receive statistics and the retransmission buffer).
* ``_subscribers[participant_id]`` -> :class:`_Subscriber`, which owns its
  routes (:class:`_Route`, one per forwarded m-section): the rewrite for that
  subscriber (SSRC, payload types, extension IDs, sequence offset) and what
  was already sent on it.
* ``_consumers[(publisher_id, track)]`` -> ``{subscriber_id: _Route}``: the
  producer -> consumer index that forwarding loops over. It refers to routes
  owned by subscribers; a route whose source is not published (yet, or any
  more) simply receives nothing.

Per RTP packet from a publisher (:meth:`Router.on_rtp`)
--------------------------------------------------------

1. The framing is checked (:func:`callsgw.wire.rtp.validate`: RFC 3550
   header, RFC 8285 elements); a bad packet is dropped and counted against
   that publisher only.
2. The track is found by SSRC: one learned earlier, else one the publisher
   signalled in a section (``remote_ssrcs``), else the RFC 8843 MID header
   extension matching a section's ``mid``, else a payload type that only one
   track has (RTX types belong to their track); the SSRC is then learned (at
   most :data:`MAX_SSRCS_PER_TRACK` per track).
3. Media packets update the RFC 3550 receive statistics and the
   retransmission buffer (the decrypted original, :data:`HISTORY_SIZE` per
   SSRC, for tracks that negotiated ``nack``). RTX packets (RFC 4588) are
   unwrapped into the original stream (OSN, ``apt`` payload type, the
   track's media SSRC) and forwarded as late originals when the gateway had
   missed them; padding-only RTX probes are dropped.
4. For voice with the RFC 6464 audio level, the level feeds the active
   speaker detection.
5. For each route of the track: the payload type is mapped to the
   subscriber's for the same codec name and clock rate (none: not forwarded,
   counted), RFC 8285 extension IDs are mapped by URI (extensions the
   subscriber did not negotiate are dropped, the MID value becomes the
   subscriber section's ``mid``), the SSRC becomes the section's ``ssrc``,
   and the sequence number gets a per-route offset: zero at first, and when
   the publisher's stream changes (a new SSRC, or a sequence restart) the
   offset is chosen so the subscriber sees the next number after the last it
   got. Timestamps are unchanged.
6. The first packet forwarded on a new video route asks the publisher for a
   keyframe (PLI, within the keyframe rate limit), so a late joiner does not
   wait for its own PLI: ``on_rtp`` may return RTCP for the publisher too.

SRTP index safety
-----------------

Answering a NACK resends a packet with the same (SSRC, sequence number), so
the subscriber's SRTP session encrypts that index again. With AES-GCM that
is only safe when the plaintext is byte-identical. Each route remembers, for
the last ``window`` extended sequence numbers it sent, which original packet
object produced it (under which rewrite); an index is sent again only for
that same original under the same rewrite (a retransmission), never for
different bytes (a publisher's duplicate or a conflicting packet is dropped
and counted). New streams on a route continue after the highest number sent,
a route whose SSRC comes back after removal is revived with its state, and
two sections of one subscriber may not share an SSRC. The shell's transmit
sessions therefore need ``allow_repeat_tx=True`` (for NACK answers) and a
replay window of at least :data:`HISTORY_SIZE` (older indexes are refused by
the router anyway).

RTCP (:meth:`Router.on_rtcp`)
-----------------------------

Parsed with :mod:`callsgw.wire.rtcp`; a malformed compound is dropped and
counted, nothing in it is used. Per item:

* PLI/FIR for a stream the participant receives: a keyframe request to that
  stream's publisher, about the publisher's own SSRC, at most one per
  :data:`KEYFRAME_INTERVAL` per published track (the first goes out at once);
  FIR is sent as FIR when the publisher negotiated ``ccm fir``, else PLI.
* NACK: answered from the retransmission buffer (the stored original,
  rewritten for that subscriber exactly as before); sequence numbers the
  gateway never got are forwarded to the publisher as a NACK (when it
  negotiated ``nack``), once per :data:`NACK_FORWARD_HOLDOFF` per number.
  Retransmissions are budgeted per route (:data:`RETRANSMIT_RATE`).
* SR from a publisher: kept for LSR/DLSR, and translated for each route of
  that stream (SSRC rewritten to the route's; NTP and RTP timestamps kept;
  packet and octet counts are the route's own) so that receivers keep
  lip-sync (RFC 3550 section 6.4.1); report blocks in SRs and RRs about
  streams the gateway sends are recorded on the route.
* REMB and transport-cc feedback are dropped and counted (no bandwidth
  estimation in this version); SDES, BYE, APP and other types are ignored.

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
been quiet that long). Read events with :meth:`Router.next_event`.
"""

from __future__ import annotations

import secrets
import struct
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, NamedTuple

from callsgw.sfu.rtcp import ReceiveStats
from callsgw.wire import rtcp as R
from callsgw.wire.rtp import RtpError, audio_level, extension_value, layout, rewrite, unwrap_rtx, validate

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
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"

HISTORY_SIZE = 512  # packets kept per published SSRC for NACKs (and the per-route sent window)
AUDIO_SENT_WINDOW = 128  # per-route sent window for tracks without NACK
MAX_SSRCS_PER_TRACK = 8
MAX_ROUTES_PER_SUBSCRIBER = 256
MAX_RETIRED_ROUTES = 32  # removed routes remembered per subscriber (see set_forwarded)
MAX_NACK_SEQUENCES = 256  # sequence numbers looked at per NACK packet
MAX_NACK_FORWARD_MEMORY = 512
NACK_FORWARD_HOLDOFF = 0.2  # s between forwards of a NACK for the same number
RETRANSMIT_RATE = 300.0  # retransmissions per second per route (token bucket, same burst)
KEYFRAME_INTERVAL = 1.0  # s between keyframe requests per published track
RR_INTERVAL = 1.0  # s between receiver reports
SWITCH_IDLE = 1.0  # s a route's stream must be quiet before an older SSRC may take over again
MAX_EVENTS = 256
SPEAKER_WINDOW = 0.3  # s of audio levels averaged
SPEAKER_HOLD = 0.5  # s a change must last
SPEAKER_THRESHOLD = 50  # -dBov: quieter than -50 dBov is not speaking
SPEAKER_TICK = 0.1  # s between evaluations
GATEWAY_CNAME = "callsgw"

_SEQ = struct.Struct("!H")
_TS_SSRC = struct.Struct("!II")


def cname_for(publisher_id: str) -> str:
    """The CNAME of a publisher's forwarded streams; must match the a=ssrc cname of the gateway's offers."""
    return f"callsgw-{publisher_id}"


# -- public types -------------------------------------------------------------------------


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


@dataclass(frozen=True)
class SpeakerChanged:
    """The active speaker changed (None: nobody is speaking)."""

    participant_id: str | None
    previous: str | None = None


# -- owned state --------------------------------------------------------------------------


class _Inbound:
    """One SSRC a publisher sends on a track. Owned by its :class:`_Track`."""

    __slots__ = ("ssrc", "packets", "bytes", "since_report", "stats", "history", "slot", "reported", "levels_seen")

    def __init__(self, ssrc: int):
        self.ssrc = ssrc
        self.slot: int | None = None  # the engine's stream slot (native engine)
        self.reported = 0  # engine packet count at the last receiver report (native engine)
        self.levels_seen = 0  # engine audio-level count already read (native engine)
        self.packets = 0
        self.bytes = 0
        self.since_report = 0
        self.stats: ReceiveStats | None = None
        self.history: list | None = None  # HISTORY_SIZE slots of (seq, packet) or None

    def stored(self, seq: int) -> bytes | None:
        if self.history is None:
            return None
        entry = self.history[seq % len(self.history)]
        return entry[1] if entry is not None and entry[0] == seq else None


class _Track:
    """A published track of one publisher. Owned by its :class:`_Publisher`."""

    def __init__(self, publisher_id: str, track: str):
        self.publisher_id = publisher_id
        self.track = track
        self.section = None
        self.generation = 0
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
        self.streams: dict[int, _Inbound] = {}
        self.media_ssrc: int | None = None  # the SSRC of the latest media (non-RTX) packet
        self.last_keyframe_request: float | None = None
        self.fir_seq = 0
        self.keyframe_requests = 0
        self.nack_forwarded: dict[int, float] = {}  # original seq -> when a NACK for it was forwarded
        self.drops: Counter = Counter()

    def configure(self, section, generation: int) -> None:
        self.section = section
        self.generation = generation
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
        self.by_ssrc: dict[int, tuple[_Track, _Inbound]] = {}
        self.signalled: dict[int, _Track] = {}  # remote_ssrcs of the sections
        self.drops: Counter = Counter()
        self.levels: deque = deque(maxlen=64)  # (time, level) from RFC 6464

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
        self.generation = -1  # the track generation the rewrite was computed for
        self.config: tuple | None = None
        self.pt_map: dict[int, int] = {}
        self.ext_ids: dict[int, int] | None = None
        self.drop: frozenset[int] = frozenset()
        self.values: dict[int, bytes] | None = None
        self.active_ssrc: int | None = None
        self.seen: dict[int, None] = {}
        self.offset = 0
        self.highest: int | None = None  # extended sequence number last sent (largest)
        self.segment_start: int | None = None
        self.bad_seq: int | None = None
        self.last_in_at = 0.0
        self.window = 0
        self.sent_ext: list[int] = []
        self.sent_ref: list = []
        self.started = False
        self.packets_out = 0
        self.bytes_out = 0
        self.octets_out = 0  # payload octets, for translated SRs
        self.retransmits = 0
        self.nack_misses = 0
        self.tokens = RETRANSMIT_RATE
        self.token_stamp: float | None = None
        self.last_report: dict | None = None
        self.drops: Counter = Counter()
        self.slot: int | None = None  # the engine's route slot (native engine)

    def take_token(self, now: float) -> bool:
        if self.token_stamp is not None:
            self.tokens = min(RETRANSMIT_RATE, self.tokens + (now - self.token_stamp) * RETRANSMIT_RATE)
        self.token_stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Subscriber:
    """A participant as a receiver. Owned by the :class:`Router`."""

    def __init__(self, participant_id: str):
        self.id = participant_id
        self.routes: dict[tuple[str, str], _Route] = {}
        self.by_ssrc: dict[int, _Route] = {}
        # routes taken away, by SSRC: revived if their SSRC comes back, so that an
        # (SSRC, sequence number) is never sent twice with different bytes
        self.retired: dict[int, _Route] = {}


_BLOCKED = object()  # sent under an earlier rewrite: never sent again


def _extend(highest: int | None, seq: int) -> int:
    if highest is None:
        return seq + 0x10000
    delta = (seq - highest) & 0xFFFF
    if delta >= 0x8000:
        delta -= 0x10000
    return highest + delta


# -- the router ---------------------------------------------------------------------------


class Router:
    """Producer -> consumer maps and per-packet work of one call's SFU (see the module docstring)."""

    def __init__(self, *, ssrc_generator: Callable[[], int] | None = None, datapath=None):
        """``datapath``: a :class:`callsgw.sfu.native.CallDatapath` to forward on the native engine."""
        self._new_ssrc = ssrc_generator or (lambda: secrets.randbits(32) or 1)
        self._dp = datapath
        self._sources: dict[tuple[str, str], int] = {}  # (publisher, track) -> engine source slot
        self._publishers: dict[str, _Publisher] = {}
        self._subscribers: dict[str, _Subscriber] = {}
        self._consumers: dict[tuple[str, str], dict[str, _Route]] = {}
        self._generation = 0
        self._events: deque = deque()
        self._next_rr: float | None = None
        self._speaker: str | None = None
        self._pending: str | None = None
        self._pending_since = 0.0
        self._next_speaker_eval: float | None = None
        self.counters: Counter = Counter()

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
        self._generation += 1
        state.configure(section, self._generation)
        publisher.resignal()
        if self._dp is not None:
            self._native_source(participant_id, state)
            for route in self._consumers.get((participant_id, track), {}).values():
                self._configure(route, state)

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
        if self._dp is not None:
            self._native_unpublish(participant_id, state)

    def remove_participant(self, participant_id: str) -> None:
        """Forget everything the participant published and received (no event is emitted)."""
        publisher = self._publishers.pop(participant_id, None)
        if publisher is not None and self._dp is not None:
            for state in publisher.tracks.values():
                self._native_unpublish(participant_id, state)
        subscriber = self._subscribers.pop(participant_id, None)
        if subscriber is not None:
            for source in subscriber.routes:
                self._unindex(source, participant_id)
            if self._dp is not None:
                for route in list(subscriber.routes.values()) + list(subscriber.retired.values()):
                    self._native_close_route(route)
        if self._speaker == participant_id:
            self._speaker = None
        if self._pending == participant_id:
            self._pending = None

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
                    evicted = subscriber.retired.pop(next(iter(subscriber.retired)))
                    if self._dp is not None:
                        self._native_close_route(evicted)
        for source, section in wanted.items():
            route = subscriber.routes.get(source)
            if route is None:
                route = subscriber.retired.pop(section.ssrc, None)
                if route is None:
                    route = _Route(subscriber_id, source, section)
                else:
                    route.source, route.section, route.generation = source, section, -1
                subscriber.routes[source] = route
                subscriber.by_ssrc[route.out_ssrc] = route
                self._consumers.setdefault(source, {})[subscriber_id] = route
                if self._dp is not None:
                    self._native_attach(route, subscriber_id, source)
            elif route.section is not section:
                route.section = section
                route.generation = -1  # recompute the rewrite on the next packet
                if self._dp is not None:
                    self._native_refresh(route, source)

    def _unindex(self, source: tuple[str, str], subscriber_id: str) -> None:
        consumers = self._consumers.get(source)
        if consumers is not None:
            route = consumers.pop(subscriber_id, None)
            if route is not None and route.slot is not None:
                self._dp.engine.route_detach(route.slot)
            if not consumers:
                del self._consumers[source]
                self._native_release_source(source)

    # -- media ---------------------------------------------------------------------

    def on_rtp(self, publisher_id: str, packet: bytes, now: float) -> list[Outgoing]:
        """A decrypted RTP packet from ``publisher_id``: the copies to send (and maybe a keyframe request)."""
        if not isinstance(packet, bytes):
            packet = bytes(packet)
        publisher = self._publishers.get(publisher_id)
        if publisher is None:
            self.counters["rtp_unknown_publisher"] += 1
            return []
        try:
            _, _, _, header_length, padding = validate(packet)
        except RtpError:
            publisher.drops["malformed_rtp"] += 1
            return []
        pt = packet[1] & 0x7F
        seq = _SEQ.unpack_from(packet, 2)[0]
        timestamp, ssrc = _TS_SSRC.unpack_from(packet, 4)
        found = publisher.by_ssrc.get(ssrc)
        if found is None:
            found = self._identify(publisher, packet, ssrc, pt)
            if found is None:
                return []
        track, stream = found
        if self._dp is not None:
            return self._native_rtp(publisher, track, stream, packet, pt, now)
        stream.packets += 1
        stream.bytes += len(packet)
        out: list[Outgoing] = []
        apt = track.rtx_apt.get(pt)
        if apt is not None:
            # RFC 4588 retransmission: recover the original and forward it if it was missed
            media = track.streams.get(track.media_ssrc) if track.media_ssrc is not None else None
            if media is None:
                track.drops["rtx_without_media"] += 1
                return []
            try:
                packet = unwrap_rtx(packet, payload_type=apt, ssrc=media.ssrc)
                _, _, _, header_length, padding = layout(packet)
            except RtpError:
                track.drops["rtx_padding"] += 1
                return []
            pt, seq, stream = apt, _SEQ.unpack_from(packet, 2)[0], media
            if stream.history is None or stream.stored(seq) is not None:
                track.drops["rtx_not_needed"] += 1
                return []
            stream.history[seq % len(stream.history)] = (seq, packet)
        else:
            if pt not in track.media_pts or 64 <= pt <= 95:
                track.drops["unknown_payload_type"] += 1
                return []
            track.media_ssrc = ssrc
            if stream.stats is None:
                stream.stats = ReceiveStats(track.clock_rate)
                if self._next_rr is None:
                    self._next_rr = now + RR_INTERVAL
            stream.stats.update(seq, timestamp, now)
            stream.since_report += 1
            if track.nack:
                if stream.history is None:
                    stream.history = [None] * HISTORY_SIZE
                slot = seq % HISTORY_SIZE
                entry = stream.history[slot]
                if entry is None or entry[0] != seq:
                    stream.history[slot] = (seq, packet)  # a duplicate never replaces the original
            if track.level_id is not None:
                self._audio_level(publisher, track, packet, now)
        payload = len(packet) - header_length - padding
        consumers = self._consumers.get((publisher_id, track.track))
        if consumers:
            for route in consumers.values():
                data = self._forward(route, track, packet, pt, seq, stream.ssrc, now, retransmit=False)
                if data is None:
                    continue
                route.packets_out += 1
                route.bytes_out += len(data)
                route.octets_out += payload
                out.append(Outgoing(route.subscriber_id, data))
                if not route.started:
                    route.started = True
                    if track.kind == "video":
                        self._request_keyframe(publisher, track, now, out, fir=False)
        return out

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
        if len(track.streams) >= MAX_SSRCS_PER_TRACK:
            track.drops["ssrc_limit"] += 1
            return None
        stream = track.streams[ssrc] = _Inbound(ssrc)
        publisher.by_ssrc[ssrc] = (track, stream)
        if self._dp is not None:
            self._native_stream(publisher, track, stream)
        return track, stream

    def _configure(self, route: _Route, track: _Track) -> None:
        """(Re)compute a route's rewrite from the publisher's and the subscriber's sections."""
        route.generation = track.generation
        section = route.section
        sub_codecs = [c for c in section.codecs if c.name.lower() != "rtx" and not 64 <= c.payloadType <= 95]
        pt_map: dict[int, int] = {}
        for pt, (name, clock) in track.media_pts.items():
            matches = [c.payloadType for c in sub_codecs if c.name.lower() == name and c.clockRate == clock]
            if matches:
                pt_map[pt] = pt if pt in matches else matches[0]
        sub_ids = {e.uri: e.id for e in section.extensions}
        ids = {i: sub_ids[uri] for i, uri in track.ext_uris.items() if uri in sub_ids}
        drop = frozenset(range(1, 256)) - frozenset(ids)
        mid_id = sub_ids.get(MID_URI)
        values = {mid_id: section.mid.encode()} if mid_id is not None and MID_URI in track.ext_uris.values() else None
        config = (tuple(sorted(pt_map.items())), tuple(sorted(ids.items())), tuple(sorted((values or {}).items())))
        window = HISTORY_SIZE if track.nack else AUDIO_SENT_WINDOW
        changed = route.config is not None and (config != route.config or window != route.window)
        if changed:
            # earlier packets were rewritten differently: never send their indexes again
            route.sent_ref = [_BLOCKED] * len(route.sent_ref)
        if window != route.window:
            route.window = window
            old = list(zip(route.sent_ext, route.sent_ref))
            route.sent_ext = [-1] * window
            route.sent_ref = [None] * window
            for ext, _ in old:
                if ext >= 0 and (route.highest is None or ext > route.highest - window):
                    route.sent_ext[ext % window] = ext
                    route.sent_ref[ext % window] = _BLOCKED
        if route.slot is not None:
            self._dp.engine.route_configure(
                route.slot, pt_map, ids, mid_id if values else 0, values[mid_id] if values else b"", window, changed
            )
        route.config = config
        route.pt_map = pt_map
        route.ext_ids = None if all(k == v for k, v in ids.items()) else ids
        route.drop = drop
        route.values = values

    def _forward(
        self,
        route: _Route,
        track: _Track,
        packet: bytes,
        pt: int,
        seq: int,
        in_ssrc: int,
        now: float,
        *,
        retransmit: bool,
    ) -> bytes | None:
        """Rewrite ``packet`` for ``route``, or None (counted) if it must not be sent."""
        if route.generation != track.generation:
            self._configure(route, track)
        new_pt = route.pt_map.get(pt)
        if new_pt is None:
            route.drops["payload_type_unmapped"] += 1
            return None
        if in_ssrc != route.active_ssrc:
            if retransmit:
                return None
            if route.active_ssrc is not None and in_ssrc in route.seen and now - route.last_in_at < SWITCH_IDLE:
                route.drops["stale_ssrc"] += 1
                return None
            self._resync(route, seq)
            route.active_ssrc = in_ssrc
            route.seen[in_ssrc] = None
            while len(route.seen) > MAX_SSRCS_PER_TRACK:
                del route.seen[next(iter(route.seen))]
        out_seq = (seq + route.offset) & 0xFFFF
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
        try:
            data = rewrite(
                packet,
                ssrc=route.out_ssrc,
                sequence=out_seq,
                payload_type=new_pt if new_pt != pt else None,
                extension_ids=route.ext_ids,
                drop_extensions=route.drop,
                extension_values=route.values,
            )
        except RtpError:
            route.drops["rewrite_failed"] += 1
            return None
        if route.sent_ext[slot] != ext:
            route.sent_ext[slot] = ext
            route.sent_ref[slot] = packet if track.nack else _BLOCKED
        if route.highest is None or ext > route.highest:
            route.highest = ext
        if route.segment_start is None or ext < route.segment_start:
            route.segment_start = ext
        if not retransmit:
            route.last_in_at = now
        return data

    # -- native engine (callsgw.sfu.native): the same maps, state in the engine -------

    def _engine_slot(self, make) -> int | None:
        """A new engine slot, or None (counted) when that engine table is full."""
        try:
            return make()
        except RuntimeError:  # full: this piece gets no media; everything else goes on
            self.counters["engine_table_full"] += 1
            return None

    def _native_source(self, publisher_id: str, track: _Track) -> int | None:
        """Create or update the engine source of a published track."""
        engine = self._dp.engine
        key = (publisher_id, track.track)
        slot = self._sources.get(key)
        if slot is None:
            slot = self._engine_slot(engine.source_open)
            if slot is None:
                return None
            self._sources[key] = slot
        engine.source_configure(
            slot, published=True, media_pts=tuple(track.media_pts), rtx_pts=tuple(track.rtx_apt),
            nack=track.nack, level_id=track.level_id or 0, clock_rate=track.clock_rate,
            video=track.kind == "video",
        )
        return slot

    def _native_unpublish(self, publisher_id: str, track: _Track) -> None:
        engine = self._dp.engine
        for stream in track.streams.values():
            if stream.slot is not None:
                engine.stream_remove(stream.slot)
                stream.slot = None
        key = (publisher_id, track.track)
        slot = self._sources.get(key)
        if slot is not None:
            engine.source_configure(slot, published=False)
            self._native_release_source(key)

    def _native_release_source(self, key: tuple[str, str]) -> None:
        """Close a source nobody publishes and no route points at."""
        if self._dp is None or key in self._consumers:
            return
        publisher = self._publishers.get(key[0])
        if publisher is not None and key[1] in publisher.tracks:
            return
        slot = self._sources.pop(key, None)
        if slot is not None:
            self._dp.engine.source_close(slot)

    def _native_stream(self, publisher: _Publisher, track: _Track, stream: _Inbound) -> None:
        from callsgw.sfu.native import ReceiveStatsView

        engine = self._dp.engine
        session = self._dp.session_of(publisher.id)
        source = self._sources.get((publisher.id, track.track))
        if session < 0 or source is None:
            return
        stream.slot = self._engine_slot(lambda: engine.stream_add(session, stream.ssrc, source))
        if stream.slot is not None:
            stream.stats = ReceiveStatsView(engine.stats, stream.slot)

    def _native_attach(self, route: _Route, subscriber_id: str, source: tuple[str, str]) -> None:
        engine = self._dp.engine
        if route.slot is None:
            route.slot = self._engine_slot(lambda: engine.route_open(route.out_ssrc, self._dp.session_of(subscriber_id)))
            if route.slot is None:
                return
            self._dp.own_route(route.slot, self, route)
        else:
            engine.route_session(route.slot, self._dp.session_of(subscriber_id))
        slot = self._sources.get(source)
        if slot is None:
            slot = self._engine_slot(engine.source_open)
            if slot is None:
                return
            self._sources[source] = slot
            engine.source_configure(slot, published=False)
        engine.route_attach(route.slot, slot)
        self._native_refresh(route, source)

    def _native_refresh(self, route: _Route, source: tuple[str, str]) -> None:
        publisher = self._publishers.get(source[0])
        track = publisher.tracks.get(source[1]) if publisher is not None else None
        if track is not None:
            self._configure(route, track)

    def _native_close_route(self, route: _Route) -> None:
        if route.slot is not None:
            self._dp.engine.route_close(route.slot)
            self._dp.disown_route(route.slot)
            route.slot = None

    def _native_rtp(self, publisher: _Publisher, track: _Track, stream: _Inbound, packet: bytes,
                    pt: int, now: float) -> list[Outgoing]:
        """Python's share of a packet the engine handed up: a new stream's first, or RTX."""
        engine = self._dp.engine
        out: list[Outgoing] = []
        if stream.slot is None:
            publisher.drops["not_installed"] += 1
            return out
        apt = track.rtx_apt.get(pt)
        if apt is not None:
            self._native_media_ssrc(track)
            media = track.streams.get(track.media_ssrc) if track.media_ssrc is not None else None
            if media is None or media.slot is None:
                track.drops["rtx_without_media"] += 1
                return out
            try:
                original = unwrap_rtx(packet, payload_type=apt, ssrc=media.ssrc)
                layout(original)
            except RtpError:
                track.drops["rtx_padding"] += 1
                return out
            seq = _SEQ.unpack_from(original, 2)[0]
            if not track.nack or engine.history_has(media.slot, seq):
                track.drops["rtx_not_needed"] += 1
                return out
            started = engine.forward(media.slot, original, now, recovered=True)
        else:
            started = engine.forward(stream.slot, packet, now)
            if pt in track.media_pts:
                track.media_ssrc = stream.ssrc
                if self._next_rr is None:
                    self._next_rr = now + RR_INTERVAL
                if track.level_id is not None:
                    self.speaker_tick(now)
        for slot in started or ():
            self.route_started(slot, now, out)
        return out

    def route_started(self, slot: int, now: float, out: list | None = None) -> list[Outgoing]:
        """The engine sent the first packet of a video route: ask its publisher for a keyframe."""
        out = [] if out is None else out
        owner = self._dp.shared.route_owners.get(slot) if self._dp is not None else None
        if owner is None or owner[0] is not self:
            return out
        route = owner[1]
        route.started = True
        publisher = self._publishers.get(route.source[0])
        track = publisher.tracks.get(route.source[1]) if publisher is not None else None
        if track is not None and track.kind == "video":
            self._request_keyframe(publisher, track, now, out, fir=False)
        return out

    def _native_route_drops(self, route: _Route) -> Counter:
        """The engine's drop counters of a route, by the router's reason names."""
        from callsgw._native.engine import ROUTE_COUNTERS

        counters = self._dp.engine.route_counters[route.slot]
        return Counter({name: int(v) for name, v in zip(ROUTE_COUNTERS[5:], counters[5:]) if v})

    def _native_stream_counts(self, stream: _Inbound, track_drops: Counter, publisher_drops: Counter) -> None:
        """Copy a stream's engine counts into it and add its drops where the Python path counts them."""
        from callsgw._native.engine import STREAM_COUNTERS

        counts = dict(zip(STREAM_COUNTERS, (int(v) for v in self._dp.engine.stream_counters[stream.slot])))
        stream.packets, stream.bytes = counts["packets_in"], counts["bytes_in"]
        track_drops.update({k: counts[k] for k in ("unknown_payload_type", "bad_audio_level") if counts[k]})
        publisher_drops["malformed_rtp"] += counts["malformed_rtp"]

    def speaker_tick(self, now: float) -> None:
        """Native engine: take the audio levels it recorded and evaluate the speaker when due.

        The Python path does this per packet (``_audio_level``); with the
        engine the levels arrive in its tables, so the shell's timer
        (``handle_timer``, at least every :data:`RR_INTERVAL` while streams
        exist) and the slow path call this instead.
        """
        if self._dp is None:
            return
        if self._next_speaker_eval is None:
            self._native_levels()
            if any(p.levels for p in self._publishers.values()):
                self._next_speaker_eval = now + SPEAKER_TICK
        elif now >= self._next_speaker_eval:
            self._evaluate_speaker(now)

    def _native_media_ssrc(self, track: _Track) -> None:
        """The engine knows the SSRC of the track's latest media packet."""
        slot = self._sources.get((track.publisher_id, track.track))
        if slot is not None:
            ssrc = self._dp.engine.source_media_ssrc(slot)
            if ssrc is not None:
                track.media_ssrc = ssrc

    def _native_sync(self, route: _Route) -> None:
        """Copy a route's engine state into the Python object (RTCP paths read it)."""
        if route.slot is None:
            return
        state = self._dp.engine.route_state(route.slot)
        route.active_ssrc, route.highest, route.offset, route.segment_start, started, route.window = state
        route.started = route.started or started
        counters = self._dp.engine.route_counters[route.slot]
        route.packets_out, route.bytes_out, route.octets_out, route.retransmits, route.nack_misses = (
            int(v) for v in counters[:5]
        )

    def _native_levels(self) -> None:
        """Move the engine's RFC 6464 levels into the publishers' windows."""
        engine = self._dp.engine
        for publisher in self._publishers.values():
            track = publisher.tracks.get(VOICE)
            if track is None or track.level_id is None:
                continue
            for stream in track.streams.values():
                if stream.slot is None:
                    continue
                stream.levels_seen, levels = engine.stream_levels(stream.slot, stream.levels_seen)
                publisher.levels.extend(levels)

    @staticmethod
    def _resync(route: _Route, seq: int) -> None:
        """A new input stream on the route: continue the subscriber's sequence numbers."""
        if route.highest is None:
            route.offset = 0
        else:
            route.offset = ((route.highest + 1) - seq) & 0xFFFF
        route.segment_start = None
        route.bad_seq = None

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
            elif isinstance(item, R.Remb):
                self.counters["remb_dropped"] += 1
            elif isinstance(item, R.TransportCc):
                self.counters["transport_cc_dropped"] += 1
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

    def _sender_report(self, publisher: _Publisher | None, sr: R.SenderReport, now: float, out: list) -> None:
        found = publisher.by_ssrc.get(sr.ssrc) if publisher is not None else None
        if found is None:
            self.counters["sr_unknown_ssrc"] += 1
            return
        track, stream = found
        if stream.stats is not None:
            stream.stats.sender_report(sr.ntp_timestamp, now)
        for route in self._consumers.get((publisher.id, track.track), {}).values():
            if route.slot is not None:
                self._native_sync(route)
            if route.active_ssrc != sr.ssrc or not route.started:
                continue
            report = R.build_sr(route.out_ssrc, sr.ntp_timestamp, sr.rtp_timestamp, route.packets_out, route.octets_out)
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
            if track is not None and self._dp is not None:
                self._native_media_ssrc(track)
            if route is None:
                self.counters["keyframe_request_unknown_ssrc"] += 1
            elif track is None or track.kind != "video" or track.media_ssrc is None:
                route.drops["keyframe_request_no_source"] += 1
            else:
                self._request_keyframe(publisher, track, now, out, fir=fir)

    def _request_keyframe(self, publisher: _Publisher, track: _Track, now: float, out: list, *, fir: bool) -> None:
        """PLI or FIR to the publisher, at most one per KEYFRAME_INTERVAL per track (RFC 4585 6.3.1, RFC 5104 4.3.1)."""
        if self._dp is not None:
            self._native_media_ssrc(track)
        if track.media_ssrc is None:
            return
        last = track.last_keyframe_request
        if last is not None and now - last < KEYFRAME_INTERVAL:
            track.drops["keyframe_request_rate_limited"] += 1
            return
        track.last_keyframe_request = now
        track.keyframe_requests += 1
        if (fir and track.fir) or (track.fir and not track.pli):
            track.fir_seq = (track.fir_seq + 1) & 0xFF
            feedback = R.build_fir(publisher.gateway_ssrc, [(track.media_ssrc, track.fir_seq)])
        else:
            feedback = R.build_pli(publisher.gateway_ssrc, track.media_ssrc)
        out.append(Outgoing(publisher.id, self._compound(publisher, feedback)))

    @staticmethod
    def _compound(publisher: _Publisher, *packets: bytes) -> bytes:
        """RFC 3550 section 6.1: RR first, SDES CNAME, then the rest."""
        ssrc = publisher.gateway_ssrc
        return R.build_rr(ssrc) + R.build_sdes_cname(ssrc, GATEWAY_CNAME) + b"".join(packets)

    def _nack(self, subscriber: _Subscriber | None, nack: R.Nack, now: float, out: list) -> None:
        """Answer a generic NACK (RFC 4585 section 6.2.1) from the retransmission buffer."""
        route, publisher, track = self._source_of(subscriber, nack.media_ssrc)
        if route is None:
            self.counters["nack_unknown_ssrc"] += 1
            return
        if route.slot is not None:
            missing = self._dp.engine.nack(route.slot, nack.sequences(), now)
            if missing and track is not None and track.nack and publisher is not None:
                self._native_sync(route)
                self._forward_nack(publisher, track, route.active_ssrc, missing, now, out)
            return
        sequences = nack.sequences()
        if len(sequences) > MAX_NACK_SEQUENCES:
            route.drops["nack_truncated"] += len(sequences) - MAX_NACK_SEQUENCES
            sequences = sequences[:MAX_NACK_SEQUENCES]
        if track is None or route.active_ssrc is None or route.highest is None or route.segment_start is None:
            route.nack_misses += len(sequences)
            return
        stream = track.streams.get(route.active_ssrc)
        missing: list[int] = []
        for out_seq in sequences:
            ext = _extend(route.highest, out_seq)
            if ext > route.highest or ext < route.segment_start or ext <= route.highest - route.window:
                route.drops["nack_out_of_range"] += 1
                continue
            in_seq = (out_seq - route.offset) & 0xFFFF
            original = stream.stored(in_seq) if stream is not None else None
            if original is None:
                route.nack_misses += 1
                missing.append(in_seq)
                continue
            if not route.take_token(now):
                route.drops["retransmit_rate_limited"] += 1
                continue
            pt = original[1] & 0x7F
            data = self._forward(route, track, original, pt, in_seq, route.active_ssrc, now, retransmit=True)
            if data is not None:
                route.retransmits += 1
                out.append(Outgoing(route.subscriber_id, data))
        if missing and track.nack and publisher is not None:
            self._forward_nack(publisher, track, route.active_ssrc, missing, now, out)

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

    # -- timers: receiver reports and the active speaker ---------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should run next (None: nothing scheduled)."""
        times = [t for t in (self._next_rr, self._next_speaker_eval) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Outgoing]:
        """Receiver reports due (RFC 3550 section 6.4.2) and the speaker evaluation."""
        out: list[Outgoing] = []
        if self._next_rr is not None and now >= self._next_rr:
            self._next_rr = now + RR_INTERVAL
            any_stats = False
            for publisher in self._publishers.values():
                blocks = []
                for track in publisher.tracks.values():
                    for stream in track.streams.values():
                        if stream.stats is None:
                            continue
                        any_stats = True
                        if stream.slot is not None:
                            packets = int(self._dp.engine.stream_counters[stream.slot][0])
                            stream.since_report, stream.reported = packets - stream.reported, packets
                        if stream.since_report == 0:
                            continue
                        block = stream.stats.report_block(stream.ssrc, now)
                        stream.since_report = 0
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
        elif self._dp is not None and self._next_speaker_eval is None:
            self.speaker_tick(now)
        return out

    def _audio_level(self, publisher: _Publisher, track: _Track, packet: bytes, now: float) -> None:
        try:
            level = audio_level(packet, track.level_id)
        except RtpError:
            track.drops["bad_audio_level"] += 1
            return
        if level is None:
            return
        publisher.levels.append((now, level[1]))
        if self._next_speaker_eval is None:
            self._next_speaker_eval = now + SPEAKER_TICK
        elif now >= self._next_speaker_eval:
            self._evaluate_speaker(now)

    def _smoothed(self, publisher: _Publisher, now: float) -> float:
        levels = publisher.levels
        while levels and levels[0][0] <= now - SPEAKER_WINDOW:
            levels.popleft()
        if not levels:
            return 127.0
        return sum(level for _, level in levels) / len(levels)

    def _evaluate_speaker(self, now: float) -> None:
        if self._dp is not None:
            self._native_levels()
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
            self._pending = None
        elif best != self._pending:
            self._pending = best
            self._pending_since = now
        elif now - self._pending_since >= SPEAKER_HOLD:
            previous, self._speaker, self._pending = self._speaker, best, None
            if len(self._events) < MAX_EVENTS:
                self._events.append(SpeakerChanged(best, previous))
            else:
                self.counters["events_dropped"] += 1
        active = self._speaker is not None or self._pending is not None or any(
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
                if self._dp is not None:
                    self._native_media_ssrc(track)
                for ssrc, stream in track.streams.items():
                    if stream.slot is not None:
                        self._native_stream_counts(stream, track_drops, publisher_drops)
                    entry = {"packets_in": stream.packets, "bytes_in": stream.bytes}
                    if stream.stats is not None and stream.stats.valid:
                        entry.update(
                            expected=stream.stats.expected,
                            received=stream.stats.received,
                            lost=stream.stats.cumulative_lost,
                            jitter=int(stream.stats.jitter),
                        )
                    streams[ssrc] = entry
                tracks[name] = {
                    "mid": track.section.mid,
                    "media_ssrc": track.media_ssrc,
                    "streams": streams,
                    "keyframe_requests": track.keyframe_requests,
                    "drops": {k: v for k, v in track_drops.items() if v},
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
                drops = Counter(route.drops)
                if route.slot is not None:
                    self._native_sync(route)
                    drops.update(self._native_route_drops(route))  # adds
                routes[f"{source_id}/{source_track}"] = {
                    "ssrc": route.out_ssrc,
                    "mid": route.section.mid,
                    "active_ssrc": route.active_ssrc,
                    "packets_out": route.packets_out,
                    "bytes_out": route.bytes_out,
                    "retransmits": route.retransmits,
                    "nack_misses": route.nack_misses,
                    "last_report": route.last_report,
                    "drops": dict(drops),
                }
            subscribers[subscriber.id] = {"routes": routes}
        return {
            "publishers": publishers,
            "subscribers": subscribers,
            "active_speaker": self._speaker,
            "counters": dict(self.counters),
        }

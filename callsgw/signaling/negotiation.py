"""Offer/answer for one participant's single, bundled RTCPeerConnection.

The gateway keeps the list of m-sections it has negotiated with a
participant (RFC 3264 section 8: sections are never removed, only reused or
stopped with port 0). Two kinds of section exist:

* **published**: the participant sends (voice or screen); created by the
  participant's offers; the gateway's direction is ``recvonly``.
* **forwarded**: the gateway sends another participant's track; created by
  the gateway's own offers; the gateway's direction is ``sendonly``.

The gateway answers as ``a=setup:passive`` and offers as ``a=setup:actpass``
(RFC 5763 section 5); the participant must stay the DTLS client. The DTLS
fingerprint may not change. A participant offer with new ICE credentials is
an ICE restart (RFC 8445 section 9, RFC 8839 section 4.4): the answer carries
new gateway credentials too (:attr:`Negotiation.ice_restarts` counts them,
the caller restarts the media transport's agent).
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field

from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from aiortc import sdp as aiosdp

from callsgw.ice.credentials import generate_credentials
from callsgw.sdp import LocalTransport, RemoteTransport, SdpError, media_section, parse_offer, session_text
from callsgw.wire.simulcast import insert_answer_lines, offered_simulcast

VOICE = "voice"
SCREEN = "screen"

# Who is on the other side (docs/WHIP.md): a callsgw.v1 client offers and answers
# gateway offers; a WHIP publisher and a WHEP subscriber make one offer and never
# get one (RFC 9725 has no server-initiated offer), so the gateway never offers to
# them: a WHIP publisher gets no forwarded section at all, a WHEP subscriber's
# sections are slots set up by its one offer (callsgw.signaling.whip).
PARTICIPANT = "callsgw.v1"
WHIP = "whip"
WHEP = "whep"
ROLES = (PARTICIPANT, WHIP, WHEP)

# Header extensions the gateway keeps (RFC 8843 mid, RFC 6464 audio level,
# abs-send-time, transport-wide-cc); others are not answered.
SUPPORTED_EXTENSIONS = (
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
)
# RFC 8852 RtpStreamId and RepairedRtpStreamId: negotiated only on a published video section
# that sends simulcast (the router tells the layers apart by them), never offered to subscribers
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
PUBLISH_ONLY_EXTENSIONS = (RID_URI, RRID_URI)
MAX_SIMULCAST_LAYERS = 3  # callsgw.sfu.layers.MAX_LAYERS
VIDEO_CODEC_PREFERENCE = ("VP8", "H264", "VP9", "AV1")
VIDEO_FEEDBACK = {"nack", "nack pli", "ccm fir", "goog-remb", "transport-cc"}


class NegotiationError(SdpError):
    """The description is valid SDP but breaks the negotiation rules."""

    def __init__(self, message: str, code: str = "bad_sdp"):
        super().__init__(message)
        self.code = code


@dataclass
class Section:
    mid: str
    kind: str  # "audio" | "video"
    direction: str  # the gateway's direction: recvonly | sendonly | inactive
    codecs: list[RTCRtpCodecParameters] = field(default_factory=list)
    extensions: list[RTCRtpHeaderExtensionParameters] = field(default_factory=list)
    track: str | None = None  # VOICE or SCREEN for published sections
    source: tuple[str, str] | None = None  # (publisher id, track) for forwarded sections
    ssrc: int | None = None  # the gateway's SSRC on a forwarded section
    remote_ssrcs: tuple[int, ...] = ()  # the participant's SSRCs on a published section
    stopped: bool = False
    by_gateway: bool = False  # created by a gateway offer (only those are reused)
    slot: str | None = None  # VOICE or SCREEN on a WHEP subscriber's slot (its source is switched)
    rids: tuple[str, ...] = ()  # RFC 8853 simulcast layers the participant sends on a published section

    @property
    def published(self) -> bool:
        return self.track is not None and not self.stopped

    @property
    def forwarded(self) -> bool:
        return self.source is not None and not self.stopped


def _choose_codecs(media: aiosdp.MediaDescription) -> list[RTCRtpCodecParameters]:
    """Opus for voice; VP8, else H.264, VP9 or AV1 for screen share; plus RTX."""
    codecs = media.rtp.codecs
    if media.kind == "audio":
        chosen = [c for c in codecs if c.name.lower() == "opus"][:1]
    else:
        chosen = []
        for name in VIDEO_CODEC_PREFERENCE:
            chosen = [c for c in codecs if c.name.upper() == name][:1]
            if chosen:
                break
        if chosen:
            rtx = [
                c for c in codecs
                if c.name.lower() == "rtx" and c.parameters.get("apt") == chosen[0].payloadType
            ][:1]
            chosen[0].rtcpFeedback = [
                fb for fb in chosen[0].rtcpFeedback
                if (fb.type + (" " + fb.parameter if fb.parameter else "")) in VIDEO_FEEDBACK
            ]
            chosen += rtx
    return chosen


def _choose_extensions(media: aiosdp.MediaDescription, *, simulcast: bool = False) -> list[RTCRtpHeaderExtensionParameters]:
    """The supported extensions offered; with ``simulcast``, RID and repaired RID too (RFC 8852)."""
    uris = SUPPORTED_EXTENSIONS + (PUBLISH_ONLY_EXTENSIONS if simulcast else ())
    return [e for e in media.rtp.headerExtensions if e.uri in uris]


def _ssrcs(media: aiosdp.MediaDescription) -> tuple[int, ...]:
    return tuple(dict.fromkeys(s.ssrc for s in media.ssrc))


def _codec_key(codec: RTCRtpCodecParameters) -> tuple:
    return (codec.name.lower(), codec.clockRate, codec.channels or 1)


def _bundle_codecs(sections: list[Section], codecs: list[RTCRtpCodecParameters]) -> list[RTCRtpCodecParameters]:
    """A publisher's codecs renumbered for a subscriber's bundle.

    Within one BUNDLE group a payload type must mean one codec in every
    m-section (RFC 8843 section 9.1), so a forwarded section reuses the
    subscriber's payload type for the same codec, else keeps the publisher's
    when it is free, else takes a free dynamic one. The router maps payload
    types by codec, so the renumbering is invisible to media.
    """
    live = [s for s in sections if not s.stopped]
    by_key = {}
    used = set()
    for section in live:
        for c in section.codecs:
            used.add(c.payloadType)
            if c.name.lower() != "rtx":
                by_key.setdefault(_codec_key(c), c.payloadType)
    renumbered: dict[int, int] = {}
    out = []
    for c in sorted(codecs, key=lambda c: c.name.lower() == "rtx"):
        copy = RTCRtpCodecParameters(**{**vars(c), "parameters": dict(c.parameters),
                                        "rtcpFeedback": list(c.rtcpFeedback)})
        if c.name.lower() == "rtx":
            apt = renumbered.get(c.parameters.get("apt"))
            if apt is None:
                continue
            copy.parameters["apt"] = apt
            pt = c.payloadType if c.payloadType not in used else None
        else:
            pt = by_key.get(_codec_key(c))
            if pt is None and c.payloadType not in used:
                pt = c.payloadType
        if pt is None:
            pt = next((n for n in range(96, 128) if n not in used), None)
            if pt is None:
                continue
        used.add(pt)
        renumbered[c.payloadType] = pt
        copy.payloadType = pt
        out.append(copy)
    return out


def _bundle_extensions(sections: list[Section], extensions) -> list[RTCRtpHeaderExtensionParameters]:
    """A publisher's header extensions renumbered for a subscriber's bundle.

    One ID means one URI across the bundle (RFC 8285 section 6, RFC 8843):
    reuse the subscriber's ID for the URI, else a free one-byte ID (1-14).
    """
    by_uri = {}
    used = set()
    for section in sections:
        if section.stopped:
            continue
        for e in section.extensions:
            used.add(e.id)
            by_uri.setdefault(e.uri, e.id)
    out = []
    for e in extensions:
        ext_id = by_uri.get(e.uri)
        if ext_id is None:
            ext_id = next((n for n in range(1, 15) if n not in used), None)
            if ext_id is None:
                continue
            used.add(ext_id)
            by_uri[e.uri] = ext_id
        out.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=e.uri))
    return out


def bundle_only_mids(text: str) -> set[str]:
    """Mids of m-sections offered with port 0 and ``a=bundle-only``: bundled, not rejected (RFC 8843
    section 6; webrtcbin offers every section but the first this way)."""
    out: set[str] = set()
    mid, port0, flagged = None, False, False
    for line in text.splitlines() + ["m="]:
        if line.startswith("m="):
            if port0 and flagged and mid is not None:
                out.add(mid)
            fields = line.split()
            mid, port0, flagged = None, len(fields) > 1 and fields[1] == "0", False
        elif line.strip() == "a=bundle-only":
            flagged = True
        elif line.startswith("a=mid:"):
            mid = line[6:].strip()
    return out


def _client_sends(direction: str | None) -> bool:
    return (direction or "sendrecv") in ("sendrecv", "sendonly")


class Negotiation:
    """The m-sections of one participant and the offer/answer state."""

    def __init__(self, local: LocalTransport, remote: RemoteTransport, *, may_publish: frozenset[str],
                 role: str = PARTICIPANT, audio_slots: int = 3, simulcast: bool = True):
        """``role``: :data:`PARTICIPANT`, :data:`WHIP` (publish only) or :data:`WHEP` (slots only,
        at most ``audio_slots`` voice slots). ``simulcast``: a published VP8 screen section may send
        RFC 8853 simulcast layers (the datapath can switch them:
        :func:`callsgw.sfu.layers.layer_switch_supported`); without it ``a=simulcast`` is not answered
        and the publisher sends one stream."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        self.local = local
        self.remote = remote
        self.may_publish = may_publish
        self.role = role
        self.audio_slots = audio_slots
        self.simulcast = simulcast
        self.slots = None  # callsgw.signaling.whip.SlotState of a WHEP subscriber
        self.sections: list[Section] = []
        self.pending_offer: tuple[int, list[Section]] | None = None
        self.pending_offer_sdp: str | None = None  # the outstanding offer's text, to send again on resume
        self.last_answer: tuple[int, str] | None = None  # (offer id, answer text) of the latest client offer
        self.ice_restarts = 0  # participant offers that restarted ICE
        self._next_offer_id = 1

    # -- participant offers --------------------------------------------------

    def answer(self, offer_text: str) -> str:
        """Apply a participant's offer (join or renegotiation); return the answer.

        Raises :class:`NegotiationError` (code ``bad_sdp`` or ``forbidden``)
        and leaves the state unchanged on refusal.
        """
        remote = parse_offer(offer_text)
        if self.role != PARTICIPANT and self.sections:
            raise NegotiationError(f"a {self.role.upper()} session is set up by one offer and not renegotiated")
        bundled = bundle_only_mids(offer_text) & set(remote.bundle_mids)
        if self.role == WHEP:
            from callsgw.signaling import whip  # the slot rule lives there (it imports this module)

            self.sections = whip.subscriber_sections(remote.description.media, self.audio_slots, bundled)
            self.slots = whip.SlotState()
            self.remote = remote
            return self._describe(self.sections, setup="passive")
        restart = False
        if self.sections:
            if remote.fingerprint != self.remote.fingerprint:
                raise NegotiationError("the DTLS fingerprint may not change within a session")
            restart = (remote.ice_ufrag, remote.ice_pwd) != (self.remote.ice_ufrag, self.remote.ice_pwd)
        offered = [m for m in remote.description.media]
        known = {s.mid: s for s in self.sections}
        if [m.rtp.muxId for m in offered[: len(self.sections)]] != [s.mid for s in self.sections]:
            raise NegotiationError("an offer must keep every negotiated m-section, in order (RFC 3264 section 8)")
        try:
            simulcast = offered_simulcast(offer_text, max_layers=MAX_SIMULCAST_LAYERS)
        except SdpError as exc:
            raise NegotiationError(str(exc)) from None
        new_sections: list[Section] = []
        published: dict[str, str] = {}
        for media in offered:
            mid = media.rtp.muxId
            if mid is None:
                raise NegotiationError("every m-section needs a=mid")
            existing = known.get(mid)
            if media.kind not in ("audio", "video"):
                new_sections.append(Section(mid=mid, kind=media.kind, direction="inactive", stopped=True))
                continue
            if existing is not None and existing.source is not None:
                # a forwarded section, re-listed by the participant: keep it
                new_sections.append(existing)
                continue
            if media.port == 0 and mid not in bundled:
                new_sections.append(Section(mid=mid, kind=media.kind, direction="inactive", stopped=True))
                continue
            if not _client_sends(media.direction):
                # a receive-only section: kept inactive, so that the bundle has a home
                codecs = _choose_codecs(media)
                # a paused simulcast sender (the page stopped sharing) still offers its layers: they are
                # answered as if it sent, or Chromium takes simulcast as refused and drops all but the
                # first encoding of the transceiver, which the next share reuses
                paused = self._layers(simulcast.get(mid), media, codecs)
                new_sections.append(
                    Section(mid=mid, kind=media.kind, direction="inactive", codecs=codecs, stopped=not codecs,
                            extensions=_choose_extensions(media, simulcast=True)
                            if mid in simulcast and media.kind == "video" else [], rids=paused)
                )
                continue
            track = VOICE if media.kind == "audio" else SCREEN
            permission = "publish_voice" if track == VOICE else "publish_screen"
            if permission not in self.may_publish:
                raise NegotiationError(f"the token does not allow {permission}", code="forbidden")
            if track in published:
                raise NegotiationError(f"only one {track} track may be published (m-sections {published[track]} and {mid})")
            codecs = _choose_codecs(media)
            if not codecs:
                raise NegotiationError(
                    f"m-section {mid}: no supported codec (voice needs Opus; screen needs VP8, H.264, VP9 or AV1)"
                )
            published[track] = mid
            offered_layers = simulcast.get(mid)
            rids = self._layers(offered_layers, media, codecs)
            new_sections.append(
                Section(
                    mid=mid,
                    kind=media.kind,
                    direction="recvonly",
                    codecs=codecs,
                    # the RID extensions whenever simulcast is offered, answered or not: Chromium keeps
                    # its encodings and re-offers a=simulcast, and refuses its own offer when the RID
                    # extension was not negotiated ("negotiates simulcast but does not negotiate the RID")
                    extensions=_choose_extensions(media, simulcast=offered_layers is not None and media.kind == "video"),
                    track=track,
                    remote_ssrcs=_ssrcs(media),
                    rids=rids,
                )
            )
        if self.role == WHIP and not published:
            raise NegotiationError("a WHIP offer must send voice (Opus) or screen (video): it publishes nothing")
        self.sections = new_sections
        self.remote = remote
        if restart:
            # RFC 8839 section 4.4: the answer to a restart carries new credentials too
            ufrag, pwd = generate_credentials()
            self.local = dataclasses.replace(self.local, ice_ufrag=ufrag, ice_pwd=pwd)
            self.ice_restarts += 1
        return self._describe(self.sections, setup="passive")

    def _layers(self, offered, media: aiosdp.MediaDescription, codecs) -> tuple[str, ...]:
        """The simulcast RIDs answered on a screen section: only for VP8 (the layer switch rewrites
        VP8 picture ids), and only where the datapath can switch layers."""
        if (not self.simulcast or offered is None or media.kind != "video" or not codecs
                or codecs[0].name.upper() != "VP8"):
            return ()
        return offered.rids

    # -- gateway offers --------------------------------------------------------

    def forwarded_sources(self) -> list[tuple[str, str]]:
        return [s.source for s in self.sections if s.forwarded]

    def published_tracks(self) -> dict[str, Section]:
        return {s.track: s for s in self.sections if s.published}

    def create_offer(self, wanted: dict[tuple[str, str], Section]) -> tuple[int, str] | None:
        """Offer the forwarded sections in `wanted` (source -> publisher's section).

        New sources reuse a stopped section of the same kind or get a new
        m-section; sources no longer wanted are stopped. Returns None when
        nothing changes; always None for a WHIP or WHEP session (:data:`ROLES`).
        """
        if self.role != PARTICIPANT:
            return None
        proposal = [Section(**vars(s)) for s in self.sections]
        current = {s.source: s for s in proposal if s.forwarded}
        changed = False
        for source, section in current.items():
            if source not in wanted:
                section.stopped = True
                section.direction = "inactive"
                changed = True
        mids = {s.mid for s in proposal}
        for source, publisher_section in wanted.items():
            if source in current:
                continue
            changed = True
            new = Section(
                mid=self._fresh_mid(mids),
                kind=publisher_section.kind,
                direction="sendonly",
                codecs=_bundle_codecs(proposal, publisher_section.codecs),
                extensions=_bundle_extensions(proposal, [
                    e for e in publisher_section.extensions if e.uri not in PUBLISH_ONLY_EXTENSIONS
                ]),
                source=source,
                ssrc=secrets.randbits(32) or 1,
                by_gateway=True,
            )
            # reuse a section stopped in an earlier negotiation (RFC 3264
            # section 8.1), so that joins and leaves do not grow the SDP
            committed_stopped = {s.mid for s in self.sections if s.stopped}
            slot = next((i for i, s in enumerate(proposal) if s.stopped and s.by_gateway
                         and s.kind == new.kind and s.mid in committed_stopped), None)
            if slot is not None:
                new.mid = proposal[slot].mid
                proposal[slot] = new
            else:
                mids.add(new.mid)
                proposal.append(new)
        if not changed:
            return None
        offer_id = self._next_offer_id
        self._next_offer_id += 1
        self.pending_offer = (offer_id, proposal)
        self.pending_offer_sdp = self._describe(proposal, setup="actpass")
        return offer_id, self.pending_offer_sdp

    def apply_answer(self, offer_id: int, answer_text: str) -> None:
        if self.pending_offer is None or self.pending_offer[0] != offer_id:
            raise NegotiationError(f"no outstanding offer with id {offer_id}", code="unexpected_answer")
        remote = parse_offer(answer_text)  # same transport checks; setup must be active
        if remote.setup != "active":
            raise NegotiationError("the answer must say a=setup:active: the participant stays DTLS client")
        if remote.fingerprint != self.remote.fingerprint:
            raise NegotiationError("the DTLS fingerprint may not change within a session")
        _, proposal = self.pending_offer
        answered = remote.description.media
        if [m.rtp.muxId for m in answered] != [s.mid for s in proposal]:
            raise NegotiationError("the answer must list the offer's m-sections, in order")
        for section, media in zip(proposal, answered):
            if section.forwarded and media.port == 0:
                section.stopped = True
                section.direction = "inactive"
            elif section.forwarded:
                accepted = {c.payloadType for c in media.rtp.codecs}
                section.codecs = [c for c in section.codecs if c.payloadType in accepted] or section.codecs
        self.sections = proposal
        self.pending_offer = None

    def assume_offer_applied(self) -> None:
        """The participant answered our offer, but the answer was refused.

        A client sends an answer only after applying the offer (JSEP: the
        remote offer, then the local answer), so its m-sections are now the
        offer's, whatever its answer said. Keep them (RFC 3264 section 8:
        sections are never taken back); the next offer builds on them.
        """
        if self.pending_offer is not None:
            self.sections = self.pending_offer[1]
            self.pending_offer = None

    # -- internals -----------------------------------------------------------

    @staticmethod
    def _fresh_mid(taken: set[str]) -> str:
        n = len(taken)
        while str(n) in taken:
            n += 1
        return str(n)

    def _describe(self, sections: list[Section], *, setup: str) -> str:
        out = []
        for s in sections:
            m = media_section(
                self.local,
                kind=s.kind,
                mid=s.mid,
                direction=s.direction,
                codecs=None if s.stopped else s.codecs,
                extensions=s.extensions,
                setup=setup,
                rejected_fmt=[c.payloadType for c in s.codecs[:1]] or None,
            )
            if s.slot is not None and s.ssrc is not None and not s.stopped:
                # a WHEP slot: named after the slot, not the publisher feeding it now
                m.msid = f"callsgw-whep whep-{s.slot}-{s.mid}"
                m.ssrc = [aiosdp.SsrcDescription(ssrc=s.ssrc, cname="callsgw-whep", msid=m.msid)]
            elif s.forwarded and s.ssrc is not None:
                stream = f"{s.source[0]}"
                track = f"{s.source[0]}-{s.source[1]}"
                m.msid = f"{stream} {track}"
                m.ssrc = [aiosdp.SsrcDescription(ssrc=s.ssrc, cname=f"callsgw-{s.source[0]}", msid=f"{stream} {track}")]
            out.append(m)
        bundle = [s.mid for s in sections if not s.stopped] or [s.mid for s in sections]
        layered = {s.mid: s.rids for s in sections if s.rids and not s.stopped and s.source is None}
        return insert_answer_lines(session_text(out, bundle), layered)

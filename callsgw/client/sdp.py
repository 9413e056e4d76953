"""The client's session descriptions: offers, answers to gateway offers, and parsing.

Parsing and writing go through aiortc's maintained ``aiortc.sdp`` module; this
file holds the client's choices and the checks on what the gateway sends.

What the client writes (one RTCPeerConnection, JSEP-style, RFC 8829):

* **One transport.** Every m-section carries the same ICE credentials
  (RFC 8839 section 5.4), the sha-256 ``a=fingerprint`` of the session's DTLS
  certificate (RFC 8122 section 5), ``a=rtcp-mux`` (RFC 5761 section 5.1.3),
  and the session lists the live mids in ``a=group:BUNDLE`` (RFC 9143).
* **DTLS role.** Offers say ``a=setup:actpass``; answers to the gateway's
  offers say ``a=setup:active`` (RFC 5763 section 5, RFC 8842 section 5): the
  client is always the DTLS client and the gateway the server.
* **Voice**: ``m=audio`` with Opus 48000/2 as payload type 111 (RFC 7587),
  ``a=extmap`` for the RFC 6464 audio level and the BUNDLE ``sdes:mid``
  (RFC 9143) header extensions. **Screen**: ``m=video`` with VP8 90000 as payload type 96
  (RFC 7741) with ``a=rtcp-fb`` ``nack``, ``nack pli`` (RFC 4585) and
  ``ccm fir`` (RFC 5104), and the ``sdes:mid`` extension. An extension has
  the same ID in every bundled section (RFC 9143), and IDs are in 1..14 for
  one-byte headers (RFC 8285).
* Sections the client sends on carry ``a=msid`` (RFC 8830) and ``a=ssrc``
  lines with ``cname`` and ``msid`` (RFC 5576) for the SSRC it will send.
* **Answers** (RFC 3264 section 6) keep every offered m-section with its mid,
  in order; a rejected offered section (port 0) stays rejected. In each
  section the first supported codec is accepted (Opus for audio; VP8, VP9,
  H.264 or AV1 for video, since the client only relays RTP) together with
  its RTX (RFC 4588) if offered; supported header extensions keep the
  offered IDs. The direction mirrors the offer's: what the gateway only sends
  we only receive; we send only on sections we publish. A section without a
  supported codec is rejected with port 0.
* Stopping a track sets its section to port 0 (RFC 3264 section 8.2); it is
  never removed (RFC 3264 section 8: the number of m-sections never shrinks).

What the client accepts from the gateway (:func:`parse_answer`,
:func:`parse_offer`): at most :data:`MAX_SDP_BYTES`, at most
:data:`MAX_MEDIA_SECTIONS` sections, exactly one ICE ufrag/password pair of
valid ice-chars, exactly one sha-256 fingerprint, BUNDLE, rtcp-mux and a
mid on every live audio/video section, and a DTLS role that leaves the client
the DTLS client: ``passive`` in an answer, ``actpass`` or ``passive`` in an
offer. Everything else is a :class:`SdpError` (a ``ValueError``) saying why.
"""

from __future__ import annotations

import ipaddress
import secrets
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from aiortc import sdp as aiosdp
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
)

from callsgw.dtls.certificate import parse_fingerprint
from callsgw.ice.credentials import ICE_CHARS as _ICE_CHARS
from callsgw.wire import sdp as wire_sdp
from callsgw.wire.sdp import MAX_SDP_BYTES, SdpError

__all__ = [
    "AUDIO_LEVEL_URI",
    "Codec",
    "MID_URI",
    "MediaSection",
    "OPUS",
    "RemoteDescription",
    "RemoteMedia",
    "SdpError",
    "VP8",
    "answer_sections",
    "applied_answer",
    "build_answer",
    "build_offer",
    "check_same_transport",
    "describe",
    "parse_answer",
    "parse_offer",
    "random_cname",
    "random_ssrc",
]

MAX_MEDIA_SECTIONS = 64
MAX_CANDIDATES = 64

AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"  # RFC 6464
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"  # RFC 9143
#: Header extension IDs the client offers; one ID per URI across the bundle.
DEFAULT_EXTENSION_IDS = {AUDIO_LEVEL_URI: 1, MID_URI: 4}
SUPPORTED_EXTENSIONS = {"audio": (AUDIO_LEVEL_URI, MID_URI), "video": (MID_URI,)}
#: Codecs accepted in answers, by kind, by (case-insensitive) name.
SUPPORTED_CODECS = {"audio": ("opus",), "video": ("vp8", "vp9", "h264", "av1")}
VIDEO_FEEDBACK = ("nack", "nack pli", "ccm fir")

_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_PROFILE = "UDP/TLS/RTP/SAVPF"  # RFC 5764 section 8


@dataclass(frozen=True)
class Codec:
    """One RTP payload format of an m-section (``a=rtpmap``, ``a=fmtp``, ``a=rtcp-fb``)."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int | None = None
    parameters: tuple[tuple[str, object], ...] = ()
    feedback: tuple[str, ...] = ()  # "nack", "nack pli", "ccm fir", ...

    def _aiortc(self, kind: str) -> RTCRtpCodecParameters:
        feedback = []
        for item in self.feedback:
            kind_, _, parameter = item.partition(" ")
            feedback.append(RTCRtcpFeedback(type=kind_, parameter=parameter or None))
        return RTCRtpCodecParameters(
            mimeType=f"{kind}/{self.name}",
            clockRate=self.clock_rate,
            channels=self.channels,
            payloadType=self.payload_type,
            rtcpFeedback=feedback,
            parameters=dict(self.parameters),
        )

    @classmethod
    def _from_aiortc(cls, codec: RTCRtpCodecParameters) -> "Codec":
        feedback = tuple(f.type + (f" {f.parameter}" if f.parameter else "") for f in codec.rtcpFeedback)
        return cls(
            payload_type=int(codec.payloadType),
            name=codec.name,
            clock_rate=int(codec.clockRate),
            channels=codec.channels,
            parameters=tuple(codec.parameters.items()),
            feedback=feedback,
        )


#: Opus (RFC 7587): 48 kHz, two channels in the rtpmap, in-band FEC.
OPUS = Codec(111, "opus", 48000, 2, (("minptime", 10), ("useinbandfec", 1)))
#: VP8 (RFC 7741) with NACK, PLI (RFC 4585) and FIR (RFC 5104) feedback.
VP8 = Codec(96, "VP8", 90000, None, (), VIDEO_FEEDBACK)


@dataclass(frozen=True)
class MediaSection:
    """One m-section as the client describes it: ``direction`` is the client's own.

    ``codecs`` (empty) and ``extensions`` (``(id, uri)`` pairs; ``None``)
    default to the client's choice for the kind. ``ssrc`` is the SSRC the
    client sends with (announced when the direction sends). ``stopped``
    writes the section with port 0.
    """

    mid: str
    kind: str  # "audio" | "video"
    direction: str = "sendonly"
    ssrc: int | None = None
    codecs: tuple[Codec, ...] = ()
    extensions: tuple[tuple[int, str], ...] | None = None
    stopped: bool = False
    stream_id: str | None = None
    track_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("audio", "video"):
            raise ValueError(f"m-section kind must be 'audio' or 'video', not {self.kind!r}")
        if self.direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(_DIRECTIONS)}, not {self.direction!r}")
        if not isinstance(self.mid, str) or not self.mid or any(c.isspace() for c in self.mid):
            raise ValueError(f"mid must be a non-empty token, not {self.mid!r}")
        if self.ssrc is not None and not 0 < self.ssrc < 2**32:
            raise ValueError("ssrc must be a non-zero 32-bit value")

    @classmethod
    def voice(cls, mid: str = "0", ssrc: int | None = None, direction: str = "sendonly") -> "MediaSection":
        """The voice track: Opus audio; a random SSRC unless given."""
        return cls(mid, "audio", direction, ssrc if ssrc is not None else random_ssrc(), track_id="voice")

    @classmethod
    def screen(cls, mid: str = "1", ssrc: int | None = None, direction: str = "sendonly") -> "MediaSection":
        """The screen-share track: VP8 video; a random SSRC unless given."""
        return cls(mid, "video", direction, ssrc if ssrc is not None else random_ssrc(), track_id="screen")

    @property
    def sends(self) -> bool:
        return not self.stopped and self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        return not self.stopped and self.direction in ("sendrecv", "recvonly")

    @property
    def effective_codecs(self) -> tuple[Codec, ...]:
        return self.codecs or ((OPUS,) if self.kind == "audio" else (VP8,))

    @property
    def effective_extensions(self) -> tuple[tuple[int, str], ...]:
        if self.extensions is not None:
            return self.extensions
        return tuple((DEFAULT_EXTENSION_IDS[uri], uri) for uri in SUPPORTED_EXTENSIONS[self.kind])


@dataclass(frozen=True)
class RemoteMedia:
    """One m-section of a gateway description; ``direction`` is the gateway's."""

    mid: str | None
    kind: str
    port: int
    direction: str
    codecs: tuple[Codec, ...]
    ssrcs: tuple[int, ...]
    extensions: tuple[tuple[int, str], ...]
    msid: str | None = None

    @property
    def rejected(self) -> bool:
        """Port 0: rejected or stopped (RFC 3264 sections 6 and 8.2)."""
        return self.port == 0

    @property
    def payload_types(self) -> tuple[int, ...]:
        return tuple(c.payload_type for c in self.codecs)

    @property
    def extmap(self) -> dict[str, int]:
        """``{uri: id}`` of the header extensions."""
        return {uri: ext_id for ext_id, uri in self.extensions}


@dataclass(frozen=True)
class RemoteDescription:
    """What the client needs from a gateway answer or offer."""

    ice_ufrag: str
    ice_pwd: str = field(repr=False)
    ice_lite: bool
    fingerprint: str  # canonical "AB:CD:..." sha-256
    setup: str  # "passive" or "actpass"
    candidates: tuple[tuple[str, int], ...]  # UDP (ip, port), highest priority first
    bundle_mids: tuple[str, ...]
    media: tuple[RemoteMedia, ...]
    #: ICE-TCP passive candidates (RFC 6544) (ip, port), highest priority first; this client's ICE
    #: uses UDP, ``callsgw audit`` probes these too
    tcp_candidates: tuple[tuple[str, int], ...] = ()

    def media_by_mid(self, mid: str) -> RemoteMedia | None:
        return next((m for m in self.media if m.mid == mid), None)


def random_ssrc() -> int:
    """A random non-zero SSRC (RFC 3550 section 8.1)."""
    return secrets.randbelow(2**32 - 1) + 1


def random_cname() -> str:
    """A random RTCP CNAME, 16 characters: short-term persistent and unlinkable (RFC 7022)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(16))


# -- writing ---------------------------------------------------------------------


def _check_ice(ufrag: str, pwd: str) -> None:
    for what, value, minimum in (("ice ufrag", ufrag, 4), ("ice password", pwd, 22)):
        if not isinstance(value, str) or not minimum <= len(value) <= 256 or not _ICE_CHARS.issuperset(value):
            raise SdpError(f"{what} must be {minimum}-256 ice-chars (RFC 8839 section 5.4)")


def describe(
    sections: Sequence[MediaSection],
    *,
    ice_ufrag: str,
    ice_pwd: str,
    fingerprint: str,
    setup: str,
    cname: str | None = None,
    session_id: int | None = None,
    session_version: int = 1,
    candidates: Iterable[tuple[str, int]] = (),
) -> str:
    """Write a session description of ``sections`` on the client's one transport.

    ``setup`` is ``"actpass"`` (offers) or ``"active"`` (answers);
    ``fingerprint`` is the bare ``"AB:CD:..."`` or the whole ``"sha-256 ..."``
    value. ``candidates`` are optional host candidates ``(ip, port)``; the
    ICE-lite gateway needs none, since it learns the client's address from
    its checks. Raises :class:`SdpError` for unusable parameters.
    """
    if setup not in ("actpass", "active"):
        raise SdpError("the client's setup must be 'actpass' (offer) or 'active' (answer)")
    _check_ice(ice_ufrag, ice_pwd)
    try:
        value = fingerprint.strip()
        fp = parse_fingerprint(value if " " in value else f"sha-256 {value}")
    except (ValueError, AttributeError) as exc:
        raise SdpError(f"bad DTLS fingerprint: {exc}") from None
    if not sections:
        raise SdpError("a session description needs at least one m-section")
    mids = [s.mid for s in sections]
    if len(set(mids)) != len(mids):
        raise SdpError(f"mids must be unique, got {mids}")
    cname = cname or random_cname()
    host_candidates = []
    for n, (ip, port) in enumerate(candidates):
        host_candidates.append(
            aiosdp.RTCIceCandidate(
                component=1,
                foundation=str(n + 1),
                ip=str(ipaddress.ip_address(ip)),
                port=int(port),
                priority=(126 << 24) | ((65535 - n) << 8) | 255,  # RFC 8445 section 5.1.2.1
                protocol="udp",
                type="host",
            )
        )

    desc = aiosdp.SessionDescription()
    sid = session_id if session_id is not None else secrets.randbelow(2**62)
    desc.origin = f"- {sid} {session_version} IN IP4 0.0.0.0"
    desc.name = "-"
    desc.host = None
    live = [s.mid for s in sections if not s.stopped]
    desc.group = [aiosdp.GroupDescription(semantic="BUNDLE", items=live)] if live else []
    desc.msid_semantic = [aiosdp.GroupDescription(semantic="WMS", items=["*"])]
    for section in sections:
        codecs = section.effective_codecs
        m = aiosdp.MediaDescription(
            kind=section.kind,
            port=0 if section.stopped else 9,
            profile=_PROFILE,
            fmt=[c.payload_type for c in codecs],
        )
        m.host = "0.0.0.0"
        m.direction = "inactive" if section.stopped else section.direction
        m.rtp.muxId = section.mid
        m.rtcp_port = 9
        m.rtcp_host = "0.0.0.0"
        m.rtcp_mux = True
        m.rtp.codecs = [c._aiortc(section.kind) for c in codecs]
        if not section.stopped:
            m.rtp.headerExtensions = [
                RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri) for ext_id, uri in section.effective_extensions
            ]
            if section.sends and section.ssrc is not None:
                stream = section.stream_id or f"callsgw-{cname}"
                track = section.track_id or f"{section.kind}-{section.mid}"
                m.msid = f"{stream} {track}"
                m.ssrc = [aiosdp.SsrcDescription(ssrc=section.ssrc, cname=cname, msid=f"{stream} {track}")]
            m.ice_candidates = list(host_candidates)
            m.ice_candidates_complete = True
        m.ice = aiosdp.RTCIceParameters(usernameFragment=ice_ufrag, password=ice_pwd)
        m.dtls = aiosdp.RTCDtlsParameters(
            fingerprints=[aiosdp.RTCDtlsFingerprint(algorithm="sha-256", value=fp)],
            role="auto" if setup == "actpass" else "client",
        )
        desc.media.append(m)
    return str(desc)


def build_offer(
    ice_ufrag: str,
    ice_pwd: str,
    fingerprint: str,
    tracks: Sequence[MediaSection | str],
    *,
    cname: str | None = None,
    session_id: int | None = None,
    session_version: int = 1,
    candidates: Iterable[tuple[str, int]] = (),
) -> str:
    """The client's offer (``a=setup:actpass``) with one m-section per track, in order.

    ``tracks`` are :class:`MediaSection` s, or the shorthands ``"voice"`` and
    ``"screen"`` (sendonly, mids by position, random SSRCs). A renegotiation
    offer must list every section negotiated so far, in order (RFC 3264
    section 8), including those the gateway added.
    """
    sections: list[MediaSection] = []
    for n, track in enumerate(tracks):
        if track == "voice":
            track = MediaSection.voice(str(n))
        elif track == "screen":
            track = MediaSection.screen(str(n))
        elif not isinstance(track, MediaSection):
            raise SdpError(f"a track must be a MediaSection, 'voice' or 'screen', not {track!r}")
        sections.append(track)
    return describe(
        sections,
        ice_ufrag=ice_ufrag,
        ice_pwd=ice_pwd,
        fingerprint=fingerprint,
        setup="actpass",
        cname=cname,
        session_id=session_id,
        session_version=session_version,
        candidates=candidates,
    )


def _answer_direction(offered: str, publish: bool) -> str:
    """RFC 3264 section 6.1: our direction, given the offer's and whether we publish here."""
    we_may_send = offered in ("sendrecv", "recvonly")
    we_may_receive = offered in ("sendrecv", "sendonly")
    send = publish and we_may_send
    if send and we_may_receive:
        return "sendrecv"
    if send:
        return "sendonly"
    if we_may_receive:
        return "recvonly"
    return "inactive"


def _choose_codecs(media: RemoteMedia) -> tuple[Codec, ...]:
    """The first supported codec, plus its RTX (RFC 4588 ``apt``) if offered."""
    supported = SUPPORTED_CODECS.get(media.kind, ())
    chosen = next((c for c in media.codecs if c.name.lower() in supported), None)
    if chosen is None:
        return ()
    if media.kind == "video":
        chosen = replace(chosen, feedback=tuple(f for f in chosen.feedback if f in VIDEO_FEEDBACK))
    apt = (chosen.payload_type, str(chosen.payload_type))
    rtx = next((c for c in media.codecs if c.name.lower() == "rtx" and dict(c.parameters).get("apt") in apt), None)
    return (chosen, rtx) if rtx is not None else (chosen,)


def answer_sections(offer: RemoteDescription, tracks: Iterable[MediaSection] = ()) -> list[MediaSection]:
    """Decide the answer to a gateway offer, one :class:`MediaSection` per offered section.

    ``tracks`` are the sections the client publishes, matched by mid: on
    those the answer sends (if the offer lets it) with the track's SSRC.
    Mids and order are the offer's; see the module docstring for the rules.
    """
    publishing = {t.mid: t for t in tracks if t.sends}
    out: list[MediaSection] = []
    for media in offer.media:
        if media.mid is None:
            raise SdpError(f"offered {media.kind} m-section has no a=mid")
        kind = media.kind
        if kind not in ("audio", "video"):
            raise SdpError(f"offered m-section {media.mid} is {kind!r}: the client handles only audio and video")
        codecs = _choose_codecs(media) if not media.rejected else ()
        if not codecs:
            # rejected by the offer, or no codec we support: port 0 (RFC 3264 section 6)
            fallback = media.codecs[:1] or ((OPUS,) if kind == "audio" else (VP8,))
            out.append(MediaSection(media.mid, kind, "inactive", None, fallback, (), stopped=True))
            continue
        track = publishing.get(media.mid)
        if track is not None and track.kind != kind:
            raise SdpError(f"m-section {media.mid} changed kind from {track.kind} to {kind}")
        direction = _answer_direction(media.direction, track is not None)
        extensions = tuple((i, u) for i, u in media.extensions if u in SUPPORTED_EXTENSIONS[kind])
        out.append(
            MediaSection(
                media.mid,
                kind,
                direction,
                ssrc=track.ssrc if track is not None else None,
                codecs=codecs,
                extensions=extensions,
                stream_id=track.stream_id if track is not None else None,
                track_id=track.track_id if track is not None else None,
            )
        )
    return out


def build_answer(
    offer_text: str,
    ice_ufrag: str,
    ice_pwd: str,
    fingerprint: str,
    tracks: Iterable[MediaSection] = (),
    *,
    cname: str | None = None,
    session_id: int | None = None,
    session_version: int = 1,
) -> str:
    """Answer a gateway renegotiation offer (``a=setup:active``, same ICE credentials and fingerprint).

    See :func:`answer_sections` for the choices. Raises :class:`SdpError` if
    the offer is malformed or unacceptable.
    """
    offer = parse_offer(offer_text)
    sections = answer_sections(offer, tracks)
    return describe(
        sections,
        ice_ufrag=ice_ufrag,
        ice_pwd=ice_pwd,
        fingerprint=fingerprint,
        setup="active",
        cname=cname,
        session_id=session_id,
        session_version=session_version,
    )


# -- parsing ---------------------------------------------------------------------


def _parse(text: str, *, what: str, setups: frozenset[str]) -> RemoteDescription:
    if not isinstance(text, str):
        raise SdpError(f"the {what} SDP must be text, not {type(text).__name__}")
    if len(text.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        raise SdpError(f"the {what} SDP is larger than {MAX_SDP_BYTES} bytes")
    if not text.lstrip().startswith("v=0"):
        raise SdpError(f"the {what} is not an SDP session description (must start with v=0)")
    raw_setups = wire_sdp.raw_setups(text)
    unknown = raw_setups - {"actpass", "active", "passive", "holdconn"}
    if unknown:
        raise SdpError(f"the {what} has an invalid a=setup value {sorted(unknown)[0]!r} (RFC 4145 section 4)")
    try:
        desc = aiosdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser asserts, indexes and converts freely
        raise SdpError(f"unparsable {what} SDP: {type(exc).__name__}: {exc}") from None
    if not desc.media:
        raise SdpError(f"the {what} has no m-sections")
    if len(desc.media) > MAX_MEDIA_SECTIONS:
        raise SdpError(f"the {what} has more than {MAX_MEDIA_SECTIONS} m-sections")
    bundle_mids = wire_sdp.bundle_mids(desc)

    ufrags: set[str] = set()
    pwds: set[str] = set()
    fingerprints: set[str] = set()
    candidates: list[tuple[int, tuple[str, int]]] = []
    tcp_candidates: list[tuple[int, tuple[str, int]]] = []
    media_out: list[RemoteMedia] = []
    live = 0
    for n, media in enumerate(desc.media):
        mid = media.rtp.muxId or None  # aiortc says "" when there is no a=mid
        if mid is not None and any(c.isspace() for c in mid):
            # a=mid is a token (RFC 5888 section 4); a rejected section's too, as the answer keeps it
            raise SdpError(f"m-section #{n} of the {what} has a mid that is not a token: {mid[:40]!r}")
        if mid is not None and any(m.mid == mid for m in media_out):
            raise SdpError(f"the {what} repeats the mid {mid[:40]!r} (RFC 5888 section 4: mids are unique)")
        direction = media.direction or "sendrecv"  # RFC 8866 section 6.7
        codecs = tuple(Codec._from_aiortc(c) for c in media.rtp.codecs)
        ssrcs = tuple(dict.fromkeys(s.ssrc for s in media.ssrc))
        extensions = tuple((e.id, e.uri) for e in media.rtp.headerExtensions)
        media_out.append(RemoteMedia(mid, media.kind, media.port, direction, codecs, ssrcs, extensions, media.msid))
        if media.port == 0:
            continue
        live += 1
        label = mid or f"#{n}"
        if mid is None:
            raise SdpError(f"{media.kind} m-section {label} of the {what} has no a=mid (needed for BUNDLE)")
        if mid not in bundle_mids:
            raise SdpError(f"m-section {label} of the {what} is not in the a=group:BUNDLE (RFC 9143)")
        if media.kind in ("audio", "video") and not media.rtcp_mux:
            raise SdpError(f"m-section {label} of the {what} lacks a=rtcp-mux (RFC 5761)")
        if media.ice is not None:
            if media.ice.usernameFragment:
                ufrags.add(media.ice.usernameFragment)
            if media.ice.password:
                pwds.add(media.ice.password)
        if media.dtls is not None:
            try:
                fingerprints |= wire_sdp.sha256_fingerprints(media.dtls.fingerprints)
            except ValueError as exc:
                raise SdpError(f"bad a=fingerprint in the {what}: {exc}") from None
        for cand in media.ice_candidates:
            if cand.protocol.lower() == "tcp" and cand.component == 1 and (cand.tcpType or "").lower() == "passive":
                _add_candidate(tcp_candidates, cand, what)
                continue
            if cand.protocol.lower() != "udp" or cand.component != 1:
                continue
            try:
                ip = str(ipaddress.ip_address(cand.ip))
            except ValueError:
                continue  # a hostname (mDNS) candidate: not usable without a resolver
            if not 1 <= cand.port <= 0xFFFF:
                raise SdpError(f"candidate {cand.ip} has an invalid port {cand.port}")
            entry = (cand.priority, (ip, cand.port))
            if entry[1] not in [c[1] for c in candidates]:
                if len(candidates) >= MAX_CANDIDATES:
                    raise SdpError(f"the {what} has more than {MAX_CANDIDATES} candidates")
                candidates.append(entry)
    if live == 0:
        raise SdpError(f"every m-section of the {what} is rejected (port 0)")
    if not bundle_mids:
        raise SdpError(f"the {what} must use BUNDLE (a=group:BUNDLE, RFC 9143)")
    if len(ufrags) != 1 or len(pwds) != 1:
        raise SdpError(f"the {what} must carry exactly one a=ice-ufrag and one a=ice-pwd for the bundle")
    ufrag, pwd = ufrags.pop(), pwds.pop()
    try:
        _check_ice(ufrag, pwd)
    except SdpError as exc:
        raise SdpError(f"{exc} (in the {what})") from None
    if not raw_setups:
        raise SdpError(f"the {what} has no a=setup attribute (RFC 5763 section 5)")
    if raw_setups - setups:
        raise SdpError(
            f"the {what} says a=setup:{sorted(raw_setups - setups)[0]}; it must say "
            f"{' or '.join('a=setup:' + s for s in sorted(setups))}: the client stays the DTLS client"
        )
    if not fingerprints:
        raise SdpError(f"the {what} has no sha-256 a=fingerprint (RFC 8122 section 5)")
    if len(fingerprints) != 1:
        raise SdpError(f"the {what} has conflicting sha-256 fingerprints")
    ice_lite = any(m.ice is not None and m.ice.iceLite for m in desc.media)
    candidates.sort(key=lambda c: -c[0])  # stable: equal priorities keep their order
    return RemoteDescription(
        ice_ufrag=ufrag,
        ice_pwd=pwd,
        ice_lite=ice_lite,
        fingerprint=fingerprints.pop(),
        setup="passive" if raw_setups == {"passive"} else "actpass",
        candidates=tuple(addr for _, addr in candidates),
        bundle_mids=bundle_mids,
        media=tuple(media_out),
        tcp_candidates=tuple(addr for _, addr in sorted(tcp_candidates, key=lambda c: -c[0])),
    )


def _add_candidate(out: list, cand, what: str) -> None:
    """Keep an ICE-TCP passive candidate (an IP address and a valid port, at most MAX_CANDIDATES)."""
    try:
        ip = str(ipaddress.ip_address(cand.ip))
    except ValueError:
        return  # a hostname (mDNS) candidate
    if not 1 <= cand.port <= 0xFFFF:
        raise SdpError(f"candidate {cand.ip} has an invalid port {cand.port}")
    if (ip, cand.port) not in [c[1] for c in out]:
        if len(out) >= MAX_CANDIDATES:
            raise SdpError(f"the {what} has more than {MAX_CANDIDATES} candidates")
        out.append((cand.priority, (ip, cand.port)))


def parse_answer(text: str) -> RemoteDescription:
    """Parse and check the gateway's answer to a client offer.

    It must say ``a=setup:passive`` (RFC 5763 section 5: the gateway is the
    DTLS server). Raises :class:`SdpError` with the reason.
    """
    return _parse(text, what="answer", setups=frozenset({"passive"}))


def parse_offer(text: str) -> RemoteDescription:
    """Parse and check a gateway renegotiation offer.

    It must say ``a=setup:actpass`` (or ``passive``), so that the client can
    answer ``active`` and stay the DTLS client. Raises :class:`SdpError`.
    """
    return _parse(text, what="offer", setups=frozenset({"actpass", "passive"}))


def check_same_transport(previous: RemoteDescription, new: RemoteDescription, *, ice_restart: bool = False) -> None:
    """Refuse a renegotiation that changes the gateway's fingerprint, or its ICE credentials unasked.

    The gateway's ICE credentials change only in its answer to our ICE
    restart (RFC 8445 section 9; RFC 8839 section 4.4), and then they must;
    a changed fingerprint would need a new DTLS association (RFC 8842
    section 5).
    """
    changed = (new.ice_ufrag, new.ice_pwd) != (previous.ice_ufrag, previous.ice_pwd)
    if changed and not ice_restart:
        raise SdpError("the gateway changed its ICE credentials without an ICE restart")
    if ice_restart and (new.ice_ufrag == previous.ice_ufrag or new.ice_pwd == previous.ice_pwd):
        raise SdpError("the answer to an ICE restart must carry new ICE credentials")
    if new.fingerprint != previous.fingerprint:
        raise SdpError("the gateway changed its DTLS fingerprint within the session")


def applied_answer(proposal: Sequence[MediaSection], answer: RemoteDescription) -> list[MediaSection]:
    """The sections negotiated by ``proposal`` (our offer) and the gateway's ``answer``.

    The answer must list the offer's mids in order (RFC 3264 section 6). A
    section the answer rejects (port 0) becomes stopped; otherwise the codecs
    are narrowed to the answered payload types and the direction to what the
    answer allows (RFC 3264 section 6.1: we send only where the answerer
    receives). Raises :class:`SdpError`.
    """
    mids = [m.mid for m in answer.media]
    if mids != [s.mid for s in proposal]:
        raise SdpError(f"the answer lists m-sections {mids}, the offer {[s.mid for s in proposal]}")
    out = []
    for section, media in zip(proposal, answer.media):
        if media.kind != section.kind:
            raise SdpError(f"the answer changed m-section {section.mid} from {section.kind} to {media.kind}")
        if section.stopped or media.rejected:
            out.append(replace(section, stopped=True, direction="inactive"))
            continue
        answered = set(media.payload_types)
        codecs = tuple(c for c in section.effective_codecs if c.payload_type in answered)
        if not codecs:
            raise SdpError(f"the answer accepts no offered codec in m-section {section.mid}")
        send = section.direction in ("sendrecv", "sendonly") and media.direction in ("sendrecv", "recvonly")
        receive = section.direction in ("sendrecv", "recvonly") and media.direction in ("sendrecv", "sendonly")
        direction = {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly"}.get(
            (send, receive), "inactive"
        )
        out.append(replace(section, codecs=codecs, direction=direction))
    return out

"""SDP for the media transport: what ICE-lite + DTLS-SRTP on one port need.

Parsing and writing use aiortc's maintained ``aiortc.sdp`` module; this file
adds the checks and choices that belong to callsgw:

* an offer must carry ICE credentials (RFC 8839 section 5.4), a sha-256
  ``a=fingerprint`` (RFC 8122 section 5) and a usable ``a=setup``
  (``actpass`` or ``active``: the gateway is always the DTLS server,
  RFC 5763 section 5), with BUNDLE (RFC 9143) and ``a=rtcp-mux``
  (RFC 5761 section 5.1.3) on every media section, since everything rides on
  one UDP port;
* the answer says ``a=ice-lite`` (RFC 8445 section 2.5), ``a=setup:passive``,
  the gateway's sha-256 fingerprint, and host candidates for the one media
  port: every non-link-local address of the host (127.0.0.1 only when it is
  the only one), or the operator's ICE host override.

The call protocol (codecs, tracks, renegotiation) builds on this in the
signaling layer.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field

from aiortc import sdp as aiosdp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from callsgw.wire.sdp import MAX_SDP_BYTES, SdpError, bundle_mids, raw_setups, sha256_fingerprints

MAX_MEDIA_SECTIONS = 256  # 50 participants need about 2 per participant
MAX_CANDIDATES = 64
HOST_TYPE_PREFERENCE = 126  # RFC 8445 section 5.1.2.2
TCP_HOST_TYPE_PREFERENCE = 90  # below every UDP type preference of a host or srflx candidate (RFC 6544 section 4.2)


@dataclass(frozen=True)
class RemoteTransport:
    """The transport parameters of a peer's offer."""

    ice_ufrag: str
    ice_pwd: str
    fingerprint: str  # canonical "AB:CD:..." sha-256
    setup: str  # "actpass" or "active"
    bundle_mids: tuple[str, ...]
    candidates: tuple[tuple[str, int], ...]  # (ip, port) of UDP candidates, may be empty
    description: aiosdp.SessionDescription = field(repr=False, compare=False)


@dataclass(frozen=True)
class LocalTransport:
    """The gateway's side: ICE-lite credentials, DTLS fingerprint, one UDP port."""

    ice_ufrag: str
    ice_pwd: str
    fingerprint: str
    addresses: tuple[str, ...]
    port: int
    #: the ICE-TCP port (RFC 6544 passive candidates next to the UDP ones), or None: UDP only
    tcp_port: int | None = None

    def __repr__(self) -> str:  # the ICE password is a credential: keep it out of logs
        return (f"LocalTransport(ice_ufrag={self.ice_ufrag!r}, fingerprint={self.fingerprint!r}, "
                f"addresses={self.addresses!r}, port={self.port}, tcp_port={self.tcp_port})")


def parse_offer(text: str) -> RemoteTransport:
    """Parse and check an offer; raises :class:`SdpError` with the reason."""
    if not isinstance(text, str):
        raise SdpError("SDP must be text")
    if len(text.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        raise SdpError(f"SDP larger than {MAX_SDP_BYTES} bytes")
    if not text.lstrip().startswith("v=0"):
        raise SdpError("not an SDP session description (must start with v=0)")
    try:
        desc = aiosdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser asserts, indexes and converts freely
        raise SdpError(f"unparsable SDP: {type(exc).__name__}: {exc}") from None
    if not desc.media:
        raise SdpError("SDP has no media sections")
    if len(desc.media) > MAX_MEDIA_SECTIONS:
        raise SdpError(f"SDP has more than {MAX_MEDIA_SECTIONS} media sections")

    bundle = bundle_mids(desc)
    if not bundle:
        raise SdpError("offer must use BUNDLE (a=group:BUNDLE): all media share one transport")

    mids = [media.rtp.muxId for media in desc.media if media.rtp.muxId is not None]
    if len(mids) != len(set(mids)):
        # RFC 5888 section 4 / RFC 9143: a mid names one m-section (stopped ones included)
        raise SdpError("every m-section needs its own a=mid: a mid is repeated")
    ufrags, pwds, fingerprints = set(), set(), set()
    candidates: list[tuple[str, int]] = []
    for media in desc.media:
        if media.port == 0:
            continue  # rejected / stopped section
        mid = media.rtp.muxId
        if mid not in bundle:
            raise SdpError(f"media section {mid or media.kind!r} is not in the BUNDLE group")
        if media.kind in ("audio", "video") and not media.rtcp_mux:
            raise SdpError(f"media section {mid!r} lacks a=rtcp-mux")
        if media.ice.usernameFragment:
            ufrags.add(media.ice.usernameFragment)
        if media.ice.password:
            pwds.add(media.ice.password)
        if not media.dtls or not media.dtls.fingerprints:
            raise SdpError(f"media section {mid!r} has no DTLS fingerprint (a=fingerprint)")
        try:
            fingerprints |= sha256_fingerprints(media.dtls.fingerprints)
        except ValueError as exc:
            raise SdpError(f"bad a=fingerprint: {exc}") from None
        for cand in media.ice_candidates:
            if cand.protocol.lower() == "udp" and len(candidates) < MAX_CANDIDATES:
                candidates.append((cand.ip, cand.port))

    if len(ufrags) != 1 or len(pwds) != 1:
        raise SdpError("offer must carry exactly one a=ice-ufrag and a=ice-pwd for the bundle")
    ufrag, pwd = ufrags.pop(), pwds.pop()
    if not 4 <= len(ufrag) <= 256 or not 22 <= len(pwd) <= 256:
        raise SdpError("ice-ufrag must be 4-256 and ice-pwd 22-256 characters (RFC 8839 section 5.4)")
    if not fingerprints:
        raise SdpError("offer has no sha-256 a=fingerprint; the gateway verifies only sha-256")
    if len(fingerprints) != 1:
        raise SdpError("offer has conflicting sha-256 fingerprints")
    # from the text: aiortc maps both "actpass" and "active" to the client role
    offered = raw_setups(text)
    if offered - {"actpass", "active"}:
        raise SdpError("offer must say a=setup:actpass or a=setup:active: the gateway is the DTLS server")
    return RemoteTransport(
        ice_ufrag=ufrag,
        ice_pwd=pwd,
        fingerprint=fingerprints.pop(),
        setup="active" if offered == {"active"} else "actpass",
        bundle_mids=bundle,
        candidates=tuple(candidates),
        description=desc,
    )


def host_candidates(local: LocalTransport) -> list[aiosdp.RTCIceCandidate]:
    """Host candidates for the gateway's one UDP port (RFC 8445 section 5.1.1.1), then, with a
    ``tcp_port``, one ``tcptype passive`` candidate per address for ICE-TCP (RFC 6544 section 4.5).

    TCP candidates rank below every UDP one: a lower type preference (RFC 6544 section 4.2 asks
    that TCP be preferred less than UDP when both work) and a local preference whose direction
    part is the passive one, ``2^13 * 4`` (RFC 6544 section 4.2, host candidates).
    """
    out = []
    for n, ip in enumerate(local.addresses):
        local_pref = 65535 - n
        priority = (HOST_TYPE_PREFERENCE << 24) | (local_pref << 8) | (256 - 1)
        out.append(
            aiosdp.RTCIceCandidate(
                component=1,
                foundation=str(n + 1),
                ip=ip,
                port=local.port,
                priority=priority,
                protocol="udp",
                type="host",
            )
        )
    if local.tcp_port is not None:
        for n, ip in enumerate(local.addresses):
            local_pref = (4 << 13) | (8191 - n)
            priority = (TCP_HOST_TYPE_PREFERENCE << 24) | (local_pref << 8) | (256 - 1)
            out.append(
                aiosdp.RTCIceCandidate(
                    component=1,
                    foundation=str(len(local.addresses) + n + 1),
                    ip=ip,
                    port=local.tcp_port,
                    priority=priority,
                    protocol="tcp",
                    type="host",
                    tcpType="passive",
                )
            )
    return out


def media_section(
    local: LocalTransport,
    *,
    kind: str,
    mid: str,
    profile: str = "UDP/TLS/RTP/SAVPF",
    direction: str | None = None,
    codecs: list[RTCRtpCodecParameters] | None = None,
    extensions: list | None = None,
    setup: str = "passive",
    rejected_fmt: list | None = None,
) -> aiosdp.MediaDescription:
    """One bundled m-section on the gateway's transport.

    ``setup`` is "passive" in answers and "actpass" in the gateway's own
    offers (RFC 5763 section 5); either way the gateway stays DTLS server.
    Without codecs the section is rejected (port 0, RFC 3264 section 6).
    """
    m = aiosdp.MediaDescription(kind=kind, port=9, profile=profile, fmt=[])
    m.host = "0.0.0.0"
    m.rtp.muxId = mid
    m.rtcp_port = 9
    m.rtcp_host = "0.0.0.0"
    m.rtcp_mux = True
    m.ice = aiosdp.RTCIceParameters(iceLite=True, usernameFragment=local.ice_ufrag, password=local.ice_pwd)
    m.ice_candidates = host_candidates(local)
    m.ice_candidates_complete = True
    m.dtls = aiosdp.RTCDtlsParameters(
        fingerprints=[aiosdp.RTCDtlsFingerprint(algorithm="sha-256", value=local.fingerprint)],
        role="server" if setup == "passive" else "auto",
    )
    if codecs:
        m.rtp.codecs = list(codecs)
        m.fmt = [c.payloadType for c in codecs]
        m.rtp.headerExtensions = list(extensions or [])
        m.direction = direction
    else:
        m.port = 0
        m.fmt = list(rejected_fmt or [0])
        m.direction = "inactive"
    return m


def session_text(sections: list[aiosdp.MediaDescription], bundle_mids: list[str]) -> str:
    """A whole session description around bundled m-sections."""
    desc = aiosdp.SessionDescription()
    desc.origin = f"callsgw {secrets.randbelow(2**62)} 1 IN IP4 0.0.0.0"
    desc.name = "callsgw"
    desc.host = None
    desc.group = [aiosdp.GroupDescription(semantic="BUNDLE", items=list(bundle_mids))]
    desc.msid_semantic = [aiosdp.GroupDescription(semantic="WMS", items=["*"])]
    desc.media = list(sections)
    return str(desc)


def build_answer(
    remote: RemoteTransport,
    local: LocalTransport,
    codecs_for=None,
) -> str:
    """Answer `remote`'s offer as the ICE-lite, DTLS-passive gateway.

    ``codecs_for(media) -> list[RTCRtpCodecParameters]`` chooses the codecs
    answered per media section (the call layer decides); by default the first
    offered codec is kept. Sections without a codec are rejected (port 0).
    """
    sections = []
    for media in remote.description.media:
        codecs = None
        if media.kind in ("audio", "video") and media.port != 0:
            codecs = codecs_for(media) if codecs_for else media.rtp.codecs[:1]
        sections.append(
            media_section(
                local,
                kind=media.kind,
                mid=media.rtp.muxId,
                profile=media.profile,
                direction=_answer_direction(media.direction),
                codecs=codecs,
                rejected_fmt=media.fmt[:1],
            )
        )
    return session_text(sections, list(remote.bundle_mids))


def _answer_direction(offered: str | None) -> str:
    """RFC 3264 section 6.1: the answer's direction mirrors the offer's."""
    return {
        "sendonly": "recvonly",
        "recvonly": "sendonly",
        "inactive": "inactive",
    }.get(offered or "sendrecv", "sendrecv")


def gateway_addresses(override: str | None = None, *, ipv6: bool = False) -> tuple[str, ...]:
    """Addresses the gateway announces in its candidates.

    Without an override, every non-link-local, non-loopback address of the
    host, or 127.0.0.1 when the host has no other. An ICE host override
    (``ext``, ``ext/int`` pairs, several comma-separated: callsgw/ice/hosts.py)
    of plain addresses only announces just those; pairs replace the host's
    internal addresses by their external ones.
    """
    if override:
        from callsgw.ice.hosts import announced_addresses, parse_ice_hosts

        try:
            hosts = parse_ice_hosts(override)
        except ValueError as exc:
            raise ValueError(f"ICE host override {override!r}: {exc}") from None
        if not hosts.pairs:
            return hosts.plain
        return announced_addresses(hosts, gateway_addresses(None, ipv6=ipv6))
    import ifaddr  # installed with aioice

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            try:
                addr = ipaddress.ip_address(raw)
            except ValueError:
                continue
            if addr.is_link_local or addr.is_loopback or addr.is_unspecified or addr.is_multicast:
                continue
            if addr.version == 6 and not ipv6:
                continue
            if str(addr) not in found:
                found.append(str(addr))
    return tuple(found) or ("127.0.0.1",)

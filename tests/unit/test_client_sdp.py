"""callsgw.client.sdp: the client's offers and answers, and its parsing of the gateway's SDP.

Offers are read back with two parsers the client does not own: aiortc's
``SessionDescription.parse`` and the gateway's ``callsgw.sdp.parse_offer``.
Gateway-style offers are written here line by line (not with the client's
writer), the way the gateway's renegotiation offers look: ICE-lite,
``a=setup:actpass``, the participant's published sections ``recvonly``,
forwarded sections ``sendonly`` with ``a=ssrc``, stopped sections with port 0.
"""

from __future__ import annotations

import pytest
from aiortc.sdp import SessionDescription
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw import sdp as gateway_sdp
from callsgw.client.sdp import (
    AUDIO_LEVEL_URI,
    MID_URI,
    OPUS,
    VP8,
    MediaSection,
    SdpError,
    answer_sections,
    applied_answer,
    build_answer,
    build_offer,
    check_same_transport,
    parse_answer,
    parse_offer,
)
from callsgw.dtls.certificate import DtlsCertificate

CLIENT_UFRAG, CLIENT_PWD = "cliUfrag", "c" * 24
GW_UFRAG, GW_PWD = "gwUfrag1", "g" * 24
CLIENT_FP = ":".join(["0A"] * 32)
GW_FP = ":".join(["B7"] * 32)
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def client_offer(*tracks: MediaSection) -> str:
    return build_offer(CLIENT_UFRAG, CLIENT_PWD, CLIENT_FP, list(tracks) or [MediaSection.voice("0", 1111)])


def gateway_answer(offer_text: str, addresses=("127.0.0.1",), port=3478) -> str:
    remote = gateway_sdp.parse_offer(offer_text)
    return gateway_sdp.build_answer(remote, gateway_sdp.LocalTransport(GW_UFRAG, GW_PWD, GW_FP, addresses, port))


def gateway_offer_text(sections, *, setup="actpass", ufrag=GW_UFRAG, pwd=GW_PWD, fp=GW_FP, port=3478) -> str:
    """A gateway-style renegotiation offer, written line by line.

    ``sections`` are dicts: mid, kind, direction, optional pt/codec/ssrc/
    extensions/stopped/feedback/extra_codecs.
    """
    live = [s["mid"] for s in sections if not s.get("stopped")]
    lines = [
        "v=0",
        "o=callsgw 42 2 IN IP4 0.0.0.0",
        "s=callsgw",
        "t=0 0",
        "a=ice-lite",
        f"a=group:BUNDLE {' '.join(live)}",
        "a=msid-semantic:WMS *",
    ]
    for s in sections:
        kind = s["kind"]
        pt = s.get("pt", 111 if kind == "audio" else 96)
        codec = s.get("codec", "opus/48000/2" if kind == "audio" else "VP8/90000")
        extra = s.get("extra_codecs", [])
        fmt = " ".join(str(p) for p in [pt] + [e[0] for e in extra])
        stopped = s.get("stopped", False)
        lines += [f"m={kind} {0 if stopped else 9} UDP/TLS/RTP/SAVPF {fmt}", "c=IN IP4 0.0.0.0"]
        lines.append(f"a={'inactive' if stopped else s['direction']}")
        if not stopped:
            for ext_id, uri in s.get("extensions", []):
                lines.append(f"a=extmap:{ext_id} {uri}")
        lines += [f"a=mid:{s['mid']}", "a=rtcp:9 IN IP4 0.0.0.0", "a=rtcp-mux"]
        if s.get("ssrc") and not stopped:
            lines += [f"a=msid:peer-{s['mid']} track-{s['mid']}", f"a=ssrc:{s['ssrc']} cname:gw-{s['mid']}"]
        if not stopped:
            lines.append(f"a=rtpmap:{pt} {codec}")
            for fb in s.get("feedback", []):
                lines.append(f"a=rtcp-fb:{pt} {fb}")
            for extra_pt, extra_codec, fmtp in extra:
                lines.append(f"a=rtpmap:{extra_pt} {extra_codec}")
                if fmtp:
                    lines.append(f"a=fmtp:{extra_pt} {fmtp}")
            lines += [f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host", "a=end-of-candidates"]
        lines += [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", f"a=fingerprint:sha-256 {fp}", f"a=setup:{setup}"]
    return "\r\n".join(lines) + "\r\n"


# -- offers -------------------------------------------------------------------------


def test_offer_parses_with_aiortc_as_voice_and_screen():
    text = client_offer(MediaSection.voice("0", 1111), MediaSection.screen("1", 2222))
    desc = SessionDescription.parse(text)
    assert [g.semantic for g in desc.group] == ["BUNDLE"] and desc.group[0].items == ["0", "1"]
    audio, video = desc.media
    # voice: Opus 48000/2 as PT 111, audio level and mid extensions
    assert (audio.kind, audio.rtp.muxId, audio.direction, audio.fmt) == ("audio", "0", "sendonly", [111])
    (opus,) = audio.rtp.codecs
    assert (opus.mimeType, opus.clockRate, opus.channels, opus.payloadType) == ("audio/opus", 48000, 2, 111)
    assert {(e.id, e.uri) for e in audio.rtp.headerExtensions} == {(1, AUDIO_LEVEL_URI), (4, MID_URI)}
    # screen: VP8 90000 as PT 96 with nack, nack pli, ccm fir and the mid extension
    assert (video.kind, video.rtp.muxId, video.direction, video.fmt) == ("video", "1", "sendonly", [96])
    (vp8,) = video.rtp.codecs
    assert (vp8.mimeType, vp8.clockRate) == ("video/VP8", 90000)
    assert {(f.type, f.parameter) for f in vp8.rtcpFeedback} == {("nack", None), ("nack", "pli"), ("ccm", "fir")}
    assert [(e.id, e.uri) for e in video.rtp.headerExtensions] == [(4, MID_URI)]
    for media, ssrc in ((audio, 1111), (video, 2222)):
        assert media.rtcp_mux
        assert media.ice.usernameFragment == CLIENT_UFRAG and media.ice.password == CLIENT_PWD
        assert [(f.algorithm, f.value) for f in media.dtls.fingerprints] == [("sha-256", CLIENT_FP)]
        assert media.dtls.role == "auto"  # a=setup:actpass
        assert [s.ssrc for s in media.ssrc] == [ssrc]
        assert media.ssrc[0].cname and media.ssrc[0].msid == media.msid
    assert audio.ssrc[0].cname == video.ssrc[0].cname  # one CNAME per session (RFC 7022)
    assert text.count("a=setup:actpass") == 2


def test_offer_passes_the_gateway_transport_checks():
    text = client_offer(MediaSection.voice("0", 1111), MediaSection.screen("1", 2222))
    remote = gateway_sdp.parse_offer(text)
    assert remote.setup == "actpass"
    assert remote.bundle_mids == ("0", "1")
    assert (remote.ice_ufrag, remote.ice_pwd, remote.fingerprint) == (CLIENT_UFRAG, CLIENT_PWD, CLIENT_FP)


def test_offer_shorthands_and_receive_only_voice():
    text = build_offer(CLIENT_UFRAG, CLIENT_PWD, CLIENT_FP, ["voice", "screen"])
    desc = SessionDescription.parse(text)
    assert [(m.kind, m.rtp.muxId, m.direction) for m in desc.media] == [
        ("audio", "0", "sendonly"),
        ("video", "1", "sendonly"),
    ]
    assert all(m.ssrc and 0 < m.ssrc[0].ssrc < 2**32 for m in desc.media)
    listen = SessionDescription.parse(client_offer(MediaSection.voice("0", direction="recvonly")))
    (audio,) = listen.media
    assert audio.direction == "recvonly" and audio.ssrc == [] and audio.msid is None


def test_stopped_section_has_port_zero_and_leaves_the_bundle():
    text = client_offer(MediaSection.voice("0", 1111), MediaSection("1", "video", "inactive", stopped=True))
    desc = SessionDescription.parse(text)
    assert desc.media[1].port == 0 and desc.media[1].direction == "inactive"
    assert desc.group[0].items == ["0"]
    assert gateway_sdp.parse_offer(text).bundle_mids == ("0",)


def test_fingerprint_of_a_real_certificate_and_session_origin():
    cert = DtlsCertificate.generate()
    text = build_offer(CLIENT_UFRAG, CLIENT_PWD, cert.sdp_fingerprint, ["voice"], session_id=77, session_version=5)
    assert f"a=fingerprint:sha-256 {cert.fingerprint}" in text
    assert "o=- 77 5 IN IP4 0.0.0.0" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ice_ufrag="ab"), "ice ufrag"),
        (dict(ice_pwd="short"), "ice password"),
        (dict(ice_pwd="p" * 23 + ":"), "ice password"),
        (dict(fingerprint="sha-1 " + ":".join(["AB"] * 20)), "fingerprint"),
        (dict(fingerprint="nothex"), "fingerprint"),
        (dict(tracks=[]), "at least one m-section"),
        (dict(tracks=[MediaSection.voice("0"), MediaSection.screen("0")]), "unique"),
        (dict(tracks=["video"]), "MediaSection"),
    ],
)
def test_bad_offer_parameters_are_clean_errors(kwargs, message):
    args = dict(ice_ufrag=CLIENT_UFRAG, ice_pwd=CLIENT_PWD, fingerprint=CLIENT_FP, tracks=["voice"])
    args.update(kwargs)
    with pytest.raises(SdpError, match=message):
        build_offer(**args)


def test_media_section_rejects_nonsense():
    with pytest.raises(ValueError, match="kind"):
        MediaSection("0", "application")
    with pytest.raises(ValueError, match="direction"):
        MediaSection("0", "audio", "both")
    with pytest.raises(ValueError, match="mid"):
        MediaSection("a b", "audio")
    with pytest.raises(ValueError, match="ssrc"):
        MediaSection("0", "audio", ssrc=0)


# -- the gateway's answer --------------------------------------------------------------


def test_parse_gateway_answer():
    text = gateway_answer(client_offer(MediaSection.voice("0", 1111), MediaSection.screen("1", 2222)),
                          addresses=("192.0.2.7", "127.0.0.1"))
    answer = parse_answer(text)
    assert answer.ice_lite
    assert (answer.ice_ufrag, answer.ice_pwd, answer.fingerprint) == (GW_UFRAG, GW_PWD, GW_FP)
    assert answer.setup == "passive"
    assert answer.candidates == (("192.0.2.7", 3478), ("127.0.0.1", 3478))  # by priority
    assert answer.bundle_mids == ("0", "1")
    audio, video = answer.media
    assert (audio.mid, audio.kind, audio.direction, audio.payload_types) == ("0", "audio", "recvonly", (111,))
    assert (video.mid, video.kind, video.direction, video.payload_types) == ("1", "video", "recvonly", (96,))
    assert "g" * 24 not in repr(answer)  # the ICE password stays out of logs


def test_applied_answer_keeps_codecs_and_stops_rejected_sections():
    proposal = [MediaSection.voice("0", 1111), MediaSection.screen("1", 2222)]
    answer = parse_answer(gateway_answer(client_offer(*proposal)))
    negotiated = applied_answer(proposal, answer)
    assert [(s.mid, s.stopped, s.codecs) for s in negotiated] == [("0", False, (OPUS,)), ("1", False, (VP8,))]
    # the gateway rejects the video section (port 0)
    text = gateway_answer(client_offer(*proposal)).replace("m=video 9", "m=video 0")
    rejected = applied_answer(proposal, parse_answer(text))
    assert rejected[1].stopped and not rejected[1].sends and rejected[0].sends
    # an answer that says inactive stops us sending there (RFC 3264 section 6.1)
    text = gateway_answer(client_offer(*proposal)).replace("a=recvonly", "a=inactive", 1)
    assert [s.direction for s in applied_answer(proposal, parse_answer(text))] == ["inactive", "sendonly"]
    # an answer that reorders or drops sections is refused
    with pytest.raises(SdpError, match="lists m-sections"):
        applied_answer(list(reversed(proposal)), answer)


def test_answer_that_would_make_the_client_dtls_server_is_refused():
    text = gateway_answer(client_offer())
    with pytest.raises(SdpError, match="setup:passive"):
        parse_answer(text.replace("a=setup:passive", "a=setup:active"))
    with pytest.raises(SdpError, match="setup"):
        parse_answer(text.replace("a=setup:passive", "a=setup:actpass"))


def test_transport_change_is_refused():
    first = parse_answer(gateway_answer(client_offer()))
    restart = parse_offer(gateway_offer_text([dict(mid="0", kind="audio", direction="recvonly")], ufrag="otherUfr"))
    with pytest.raises(SdpError, match="ICE restart"):
        check_same_transport(first, restart)
    new_fp = parse_offer(gateway_offer_text([dict(mid="0", kind="audio", direction="recvonly")],
                                            fp=":".join(["CC"] * 32)))
    with pytest.raises(SdpError, match="fingerprint"):
        check_same_transport(first, new_fp)
    restart_new_fp = parse_offer(gateway_offer_text([dict(mid="0", kind="audio", direction="recvonly")],
                                                    ufrag="otherUfr", pwd="q" * 24, fp=":".join(["CC"] * 32)))
    with pytest.raises(SdpError, match="fingerprint"):
        check_same_transport(first, restart_new_fp, ice_restart=True)


def test_ice_restart_answers_must_change_the_credentials():
    first = parse_answer(gateway_answer(client_offer()))
    sections = [dict(mid="0", kind="audio", direction="recvonly")]
    restart = parse_offer(gateway_offer_text(sections, ufrag="otherUfr", pwd="q" * 24))
    check_same_transport(first, restart, ice_restart=True)  # new ufrag and password: fine
    with pytest.raises(SdpError, match="new ICE credentials"):
        check_same_transport(first, first, ice_restart=True)
    with pytest.raises(SdpError, match="new ICE credentials"):  # half a restart
        check_same_transport(first, parse_offer(gateway_offer_text(sections, ufrag="otherUfr")), ice_restart=True)


# -- answers to gateway offers -----------------------------------------------------


GATEWAY_OFFER = [
    # our published voice: the gateway receives it
    dict(mid="0", kind="audio", direction="recvonly", extensions=[(1, AUDIO_LEVEL_URI), (4, MID_URI)]),
    # our stopped screen section
    dict(mid="1", kind="video", direction="inactive", stopped=True),
    # another participant's voice, forwarded by the gateway
    dict(mid="2", kind="audio", direction="sendonly", ssrc=5555,
         extensions=[(1, AUDIO_LEVEL_URI), (4, MID_URI), (3, ABS_SEND_TIME)]),
    # another participant's screen in VP9 with RTX: the first supported codec and its RTX
    dict(mid="3", kind="video", direction="sendonly", ssrc=6666, pt=98, codec="VP9/90000",
         feedback=["nack", "nack pli", "goog-remb"], extra_codecs=[(99, "rtx/90000", "apt=98")],
         extensions=[(4, MID_URI)]),
    # a section with no codec the client supports
    dict(mid="4", kind="audio", direction="sendonly", ssrc=7777, pt=0, codec="PCMU/8000"),
]


def test_answer_to_gateway_offer_mirrors_directions_and_keeps_mids():
    offer = gateway_offer_text(GATEWAY_OFFER)
    voice = MediaSection.voice("0", 1111)
    text = build_answer(offer, CLIENT_UFRAG, CLIENT_PWD, CLIENT_FP, [voice])
    desc = SessionDescription.parse(text)
    assert [m.rtp.muxId for m in desc.media] == ["0", "1", "2", "3", "4"]
    assert [m.kind for m in desc.media] == ["audio", "video", "audio", "video", "audio"]
    assert [m.port for m in desc.media] == [9, 0, 9, 9, 0]
    assert [m.direction for m in desc.media] == ["sendonly", "inactive", "recvonly", "recvonly", "inactive"]
    assert desc.group[0].items == ["0", "2", "3"]
    # we announce our SSRC only where we send
    assert [s.ssrc for s in desc.media[0].ssrc] == [1111]
    assert desc.media[2].ssrc == [] and desc.media[3].ssrc == []
    # first supported codec, offered payload types and extension IDs kept;
    # unsupported extensions and feedback dropped
    assert [c.payloadType for c in desc.media[2].rtp.codecs] == [111]
    assert {(e.id, e.uri) for e in desc.media[2].rtp.headerExtensions} == {(1, AUDIO_LEVEL_URI), (4, MID_URI)}
    vp9, rtx = desc.media[3].rtp.codecs
    assert (vp9.mimeType, vp9.payloadType, rtx.mimeType, rtx.payloadType) == ("video/VP9", 98, "video/rtx", 99)
    assert {(f.type, f.parameter) for f in vp9.rtcpFeedback} == {("nack", None), ("nack", "pli")}
    # the client stays the DTLS client, on the same transport
    assert text.count("a=setup:active") == 5 and "a=setup:actpass" not in text
    assert all(m.ice.usernameFragment == CLIENT_UFRAG for m in desc.media)
    # and the gateway's own checks accept it as an answer from the active side
    remote = gateway_sdp.parse_offer(text)
    assert remote.setup == "active" and remote.fingerprint == CLIENT_FP
    assert remote.bundle_mids == ("0", "2", "3")


def test_answer_sections_direction_rules():
    offer = parse_offer(gateway_offer_text([
        dict(mid="0", kind="audio", direction="sendrecv"),
        dict(mid="1", kind="audio", direction="sendrecv"),
        dict(mid="2", kind="audio", direction="recvonly"),
        dict(mid="3", kind="video", direction="inactive"),
    ]))
    sections = answer_sections(offer, [MediaSection.voice("0", 1), MediaSection.voice("2", 2),
                                       MediaSection.screen("3", 3)])
    assert [s.direction for s in sections] == ["sendrecv", "recvonly", "sendonly", "inactive"]
    assert [s.ssrc for s in sections] == [1, None, 2, 3]
    with pytest.raises(SdpError, match="changed kind"):
        answer_sections(offer, [MediaSection.screen("0", 1)])


def test_gateway_offer_must_leave_the_client_dtls_client():
    text = gateway_offer_text([dict(mid="0", kind="audio", direction="recvonly")], setup="active")
    with pytest.raises(SdpError, match="DTLS client"):
        parse_offer(text)
    with pytest.raises(SdpError, match="DTLS client"):
        build_answer(text, CLIENT_UFRAG, CLIENT_PWD, CLIENT_FP)
    passive = gateway_offer_text([dict(mid="0", kind="audio", direction="recvonly")], setup="passive")
    assert parse_offer(passive).setup == "passive"


# -- malformed input ---------------------------------------------------------------


VALID = None


def valid_answer() -> str:
    global VALID
    if VALID is None:
        VALID = gateway_answer(client_offer(MediaSection.voice("0", 1111), MediaSection.screen("1", 2222)))
    return VALID


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda t: 42, "must be text"),
        (lambda t: "", "must start with v=0"),
        (lambda t: "hello", "must start with v=0"),
        (lambda t: t + "a=x:" + "y" * 70000 + "\r\n", "larger than"),
        (lambda t: t.split("m=audio")[0], "no m-sections"),
        (lambda t: t.replace("a=group:BUNDLE 0 1\r\n", ""), "BUNDLE"),
        (lambda t: t.replace("a=rtcp-mux\r\n", ""), "rtcp-mux"),
        (lambda t: t.replace("a=mid:1\r\n", ""), "a=mid"),
        (lambda t: t.replace("a=fingerprint:sha-256", "a=fingerprint:sha-1"), "no sha-256"),
        (lambda t: t.replace(GW_FP, "ZZ:" + GW_FP[3:], 1), "fingerprint"),
        (lambda t: t.replace("a=ice-ufrag:gwUfrag1", "a=ice-ufrag:other123", 1), "exactly one"),
        (lambda t: t.replace("a=ice-pwd:" + GW_PWD + "\r\n", ""), "exactly one"),
        (lambda t: t.replace(GW_PWD, "short"), "ice password"),
        (lambda t: t.replace("a=setup:passive", "a=setup:sideways"), "invalid a=setup"),
        (lambda t: t.replace("a=setup:passive\r\n", ""), "no a=setup"),
        (lambda t: t.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=audio nine RTP 111"), "unparsable"),
        (lambda t: t.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=audio 9 UDP/TLS/RTP/SAVPF abc"), "unparsable"),
        (lambda t: t.replace("a=candidate:1 1 udp 2130706431", "a=candidate:1 1 udp", 1), "unparsable"),
        (lambda t: t.replace("m=audio 9", "m=audio 0").replace("m=video 9", "m=video 0"), "rejected"),
    ],
)
def test_malformed_answers_are_clean_errors(mangle, message):
    with pytest.raises(SdpError, match=message):
        parse_answer(mangle(valid_answer()))


def test_hostname_candidates_are_skipped():
    text = valid_answer().replace("127.0.0.1 3478 typ host", "host.local 3478 typ host", 1)
    assert parse_answer(text).candidates == (("127.0.0.1", 3478),)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_answers_parse_or_raise_sdp_error(data):
    lines = valid_answer().split("\r\n")
    ops = data.draw(st.lists(st.tuples(st.integers(0, len(lines) - 1), st.sampled_from(["drop", "dup", "cut", "junk"]),
                                       st.text(max_size=12)), max_size=4))
    for index, op, junk in ops:
        index %= len(lines)
        if op == "drop":
            del lines[index]
        elif op == "dup":
            lines.insert(index, lines[index])
        elif op == "cut":
            lines[index] = lines[index][: len(lines[index]) // 2]
        else:
            lines[index] = lines[index] + junk
        if not lines:
            lines = [""]
    try:
        parse_answer("\r\n".join(lines))
    except SdpError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_raises_sdp_error(text):
    for parse in (parse_answer, parse_offer):
        try:
            parse("v=0\r\n" + text)
        except SdpError:
            pass

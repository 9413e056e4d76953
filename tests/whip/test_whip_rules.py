"""The sans-I/O decisions of callsgw/signaling/whip.py: the slot rule, the WHEP answer, the request checks."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from callsgw.signaling import protocol as P
from callsgw.signaling import whip as W
from callsgw.signaling.negotiation import SCREEN, VOICE, Section, bundle_only_mids


def slots(n: int, screen: bool = True) -> list[Section]:
    out = [Section(mid=str(i), kind="audio", direction="sendonly", ssrc=100 + i, slot=VOICE) for i in range(n)]
    if screen:
        out.append(Section(mid="v", kind="video", direction="sendonly", ssrc=200, slot=SCREEN))
    return out


def fed(sections) -> list[str | None]:
    return [s.source[0] if s.source else None for s in sections]


def test_voice_slots_fill_in_join_order_then_follow_speakers():
    state, sections = W.SlotState(), slots(3)
    assert state.assign(sections, ["a", "b", "c", "d"], []) is True
    assert fed(sections) == ["a", "b", "c", None]
    assert state.assign(sections, ["a", "b", "c", "d"], []) is False  # nothing changed
    state.heard("d")  # d takes the slot of the one heard least recently (nobody yet: the last in join order)
    assert state.assign(sections, ["a", "b", "c", "d"], []) is True
    assert fed(sections)[:3] == ["a", "b", "d"]
    for speaker in ("a", "c"):  # c comes back: b (never heard) gives way; a and d keep their slots
        state.heard(speaker)
    state.assign(sections, ["a", "b", "c", "d"], [])
    assert fed(sections)[:3] == ["a", "c", "d"]


def test_a_leaving_publisher_frees_its_slot_and_the_screen_slot_follows_the_sharer():
    state, sections = W.SlotState(), slots(2)
    state.assign(sections, ["a", "b", "c"], ["x", "y"])
    assert fed(sections) == ["a", "b", "x"]
    state.assign(sections, ["a", "c"], ["y"])  # b and x left
    assert fed(sections) == ["a", "c", "y"]
    state.assign(sections, [], [])
    assert fed(sections) == [None, None, None]


class _Media:
    def __init__(self, kind, mid, direction="recvonly", port=9):
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        self.kind, self.direction, self.port = kind, direction, port
        self.rtp = type("rtp", (), {})()
        self.rtp.muxId = mid
        self.rtp.headerExtensions = []
        self.rtp.codecs = ([RTCRtpCodecParameters("audio/opus", 48000, 2, payloadType=111)] if kind == "audio" else
                           [RTCRtpCodecParameters("video/VP8", 90000, payloadType=96),
                            RTCRtpCodecParameters("video/H264", 90000, payloadType=102),
                            RTCRtpCodecParameters("video/rtx", 90000, parameters={"apt": 96}, payloadType=97)])


def test_whep_answer_sections():
    offered = [_Media("audio", "a0"), _Media("audio", "a1"), _Media("audio", "a2", "sendonly"),
               _Media("video", "v0"), _Media("video", "v1"), _Media("audio", "a3", port=0)]
    sections = W.subscriber_sections(offered, audio_slots=1, bundled={"a3"})
    assert [(s.mid, s.slot, s.direction) for s in sections] == [
        ("a0", VOICE, "sendonly"), ("a1", None, "inactive"), ("a2", None, "inactive"),
        ("v0", SCREEN, "sendonly"), ("v1", None, "inactive"), ("a3", None, "inactive"),
    ]
    assert [c.name for c in sections[3].codecs] == ["VP8", "rtx", "H264"]  # any codec a sharer may send
    assert len({s.ssrc for s in sections if s.slot}) == 2
    with pytest.raises(W.NegotiationError, match="must receive"):
        W.subscriber_sections([_Media("audio", "a0", "sendonly")], audio_slots=3)


def test_bundle_only_sections_are_live():
    offer = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:audio0\r\n"
             "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=bundle-only\r\na=mid:video1\r\n"
             "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:video2\r\n")
    assert bundle_only_mids(offer) == {"video1"}


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/whip/room", HTTPStatus.METHOD_NOT_ALLOWED),
    ("POST", "/whip/room/AAAAAAAAAAAAAAAAAAAAAA", HTTPStatus.METHOD_NOT_ALLOWED),
    ("POST", "/whip/ro om", HTTPStatus.NOT_FOUND),
    ("POST", "/whip/" + "x" * 129, HTTPStatus.NOT_FOUND),
    ("POST", "/whip", HTTPStatus.NOT_FOUND),
    ("DELETE", "/whip/room/short", HTTPStatus.NOT_FOUND),
    ("POST", "/api/room", HTTPStatus.NOT_FOUND),
])
def test_route_refusals(method, path, status):
    with pytest.raises(W.Problem) as exc:
        W.route(method, path)
    assert exc.value.status == status


def test_route_and_body_checks():
    assert W.route("POST", "/whep/room.1").role == "whep"
    assert W.route("DELETE", "/whip/room/AAAAAAAAAAAAAAAAAAAAAA").resource == "AAAAAAAAAAAAAAAAAAAAAA"
    for fields, status in [({}, HTTPStatus.LENGTH_REQUIRED), ({"content-length": "-1"}, HTTPStatus.BAD_REQUEST),
                           ({"content-length": "70000"}, HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
                           ({"content-length": "5", "transfer-encoding": "chunked"}, HTTPStatus.LENGTH_REQUIRED)]:
        with pytest.raises(W.Problem) as exc:
            W.content_length(fields)
        assert exc.value.status == status
    assert W.offer_text({"content-type": "application/SDP; charset=utf-8"}, b"v=0") == "v=0"
    with pytest.raises(W.Problem) as exc:
        W.offer_text({"content-type": "application/sdp"}, b"\xff")
    assert exc.value.status == HTTPStatus.BAD_REQUEST
    assert W.bearer_token({"authorization": "bearer  abc "}) == "abc"
    with pytest.raises(W.Problem) as exc:
        W.bearer_token({"authorization": "Basic abc"})
    assert exc.value.status == HTTPStatus.UNAUTHORIZED


def test_refusals_map_close_codes_to_statuses():
    assert W.refusal(P.Close.FORBIDDEN, "x").status == HTTPStatus.FORBIDDEN
    assert W.refusal(P.Close.CALL_FULL, "x").status == HTTPStatus.CONFLICT
    limited = W.refusal(P.Close.RATE_LIMITED, "x")
    assert limited.status == HTTPStatus.TOO_MANY_REQUESTS and ("Retry-After", "1") in limited.headers
    body = W.refusal(P.Close.TOKEN_EXPIRED, "token expired").body()
    assert b'"status":401' in body and b'"code":"token_expired"' in body


def test_whip_settings():
    from callsgw.config import Config, ConfigError, load_config

    assert Config().whip_port is None and Config().whep_audio_slots == 3
    assert Config(whip_port=0).whip_port == 0
    # in cluster mode a WHIP/WHEP session is relayed to the call's node (tests/cluster/test_relay_whip.py)
    assert Config(whip_port=8444, cluster="redis://127.0.0.1:6379/0", database="postgresql://u@127.0.0.1/db").whip_port
    with pytest.raises(ConfigError, match="whip_port"):
        Config(whip_port=70000)
    with pytest.raises(ConfigError, match="whep_audio_slots"):
        Config(whep_audio_slots=0)
    assert load_config({}, env={"CALLSGW_WHIP_PORT": "8444"}).whip_port == 8444


def test_ice_server_links():
    turn = {"urls": ["turn:gw.example:3478?transport=udp", "turns:gw.example:5349?transport=tcp", "http://x"],
            "username": "1700000000:abc", "credential": "c2VjcmV0PQ==", "ttl": 3600}
    links = W.ice_server_links(turn)
    assert links == [
        ("Link", '<turn:gw.example:3478?transport=udp>; rel="ice-server"; username="1700000000:abc"; '
                 'credential="c2VjcmV0PQ=="; credential-type="password"'),
        ("Link", '<turns:gw.example:5349?transport=tcp>; rel="ice-server"; username="1700000000:abc"; '
                 'credential="c2VjcmV0PQ=="; credential-type="password"'),
    ]
    assert W.ice_server_links(None) == [] and W.ice_server_links({**turn, "username": 'a"b'}) == []


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["POST", "DELETE", "PATCH", "OPTIONS", "GET", "PUT", ""]),
       path=st.text(max_size=80), fields=st.dictionaries(
           st.sampled_from(["content-length", "content-type", "authorization", "transfer-encoding"]),
           st.text(max_size=40)), body=st.binary(max_size=64))
def test_a_peer_gets_a_problem_never_another_exception(method, path, fields, body):
    """Whatever the request head, the checks answer with a Problem (an HTTP status) or pass."""
    for check in (lambda: W.route(method, path), lambda: W.content_length(fields),
                  lambda: W.offer_text(fields, body), lambda: W.bearer_token(fields)):
        try:
            check()
        except W.Problem as problem:
            assert 400 <= problem.status < 600 and problem.body()


def test_parse_head():
    head = W.parse_head(b"POST /whip/room HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nAuthorization:  Bearer t \r\n"
                        b"X-Empty:")
    assert (head.method, head.path) == ("POST", "/whip/room")
    assert head.fields == {"host": "gw", "content-length": "5", "authorization": "Bearer t", "x-empty": ""}
    for bad, status in [(b"POST /whip/room", HTTPStatus.BAD_REQUEST), (b"POST  /whip HTTP/1.1", HTTPStatus.BAD_REQUEST),
                        (b"POST /whip/room HTTP/2", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED),
                        (b"POST /w HTTP/1.1\r\nBad Name: x", HTTPStatus.BAD_REQUEST),
                        (b"POST /w HTTP/1.1\r\nno colon", HTTPStatus.BAD_REQUEST),
                        (b"POST /w HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 2", HTTPStatus.BAD_REQUEST),
                        (b"POST /w HTTP/1.1" + b"\r\nA: b" * 65, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)]:
        with pytest.raises(W.Problem) as exc:
            W.parse_head(bad)
        assert exc.value.status == status, bad

"""RFC 8851 rid / RFC 8853 simulcast: reading them from offers (callsgw.wire.simulcast) and answering
them on a published screen section (callsgw.signaling.negotiation), with truncated and garbage input."""

from __future__ import annotations

import random

import pytest

from callsgw.sdp import parse_offer
from callsgw.signaling.negotiation import RID_URI, RRID_URI, Negotiation, NegotiationError
from callsgw.wire.sdp import SdpError
from callsgw.wire.simulcast import MAX_RID_LENGTH, answer_lines, insert_answer_lines, offered_simulcast
from tests.unit.test_negotiation import LOCAL, PERMS, answer_gateway_offer, client_offer, joined

CHROME_LINES = [  # what Chromium's offer carries with sendEncodings [{rid:'h'}, {rid:'l'}]
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "a=rid:h send",
    "a=rid:l send",
    "a=simulcast:send h;l",
]


def with_lines(offer: str, mid: str, lines: list[str]) -> str:
    """The offer with ``lines`` after ``a=mid:<mid>`` (the offer's own line order is kept)."""
    return offer.replace(f"a=mid:{mid}\r\n", f"a=mid:{mid}\r\n" + "".join(line + "\r\n" for line in lines), 1)


def simulcast_offer(lines=CHROME_LINES, tracks=("voice", "screen")) -> str:
    return with_lines(client_offer(tracks), "1", lines)


def section(text: str, mid: str) -> str:
    start = text.index(f"a=mid:{mid}\r\n")
    start = text.rindex("m=", 0, start)
    end = text.find("\r\nm=", start)
    return text[start:] if end < 0 else text[start:end]


# -- the text parser --------------------------------------------------------------------


def test_chromes_attributes_are_read_per_section():
    got = offered_simulcast(simulcast_offer())
    assert set(got) == {"1"} and got["1"].rids == ("h", "l")


def test_restrictions_paused_streams_alternatives_and_a_recv_part_are_read_past():
    lines = ["a=rid:f send pt=96;max-width=1920", "a=rid:q send max-fps=15", "a=rid:x send", "a=rid:r recv",
             "a=simulcast:send f;~q,x recv r"]
    assert offered_simulcast(simulcast_offer(lines))["1"].rids == ("f", "q")


def test_at_most_max_layers_are_taken_in_the_offered_order():
    rids = ["a", "b", "c", "d"]
    lines = [f"a=rid:{r} send" for r in rids] + ["a=simulcast:send " + ";".join(rids)]
    assert offered_simulcast(simulcast_offer(lines), max_layers=3)["1"].rids == ("a", "b", "c")
    assert offered_simulcast(simulcast_offer(lines), max_layers=2)["1"].rids == ("a", "b")


def test_rid_lines_without_simulcast_mean_no_simulcast():
    assert offered_simulcast(simulcast_offer(["a=rid:h send"])) == {}


@pytest.mark.parametrize("lines, message", [
    (["a=rid:h send", "a=simulcast:send h;l"], "without a=rid:l send"),
    (["a=rid:h send", "a=rid:l recv", "a=simulcast:send h;l"], "without a=rid:l send"),
    (["a=rid:h send", "a=rid:h send", "a=simulcast:send h"], "twice"),
    (["a=rid:h send", "a=simulcast:send h;h"], "twice"),
    (["a=rid:h sideways", "a=simulcast:send h"], "send or recv"),
    (["a=rid:h", "a=simulcast:send h"], "needs an id and a direction"),
    (["a=rid:h/x send", "a=simulcast:send h/x"], "bad rid id"),
    ([f"a=rid:{'r' * (MAX_RID_LENGTH + 1)} send"], "bad rid id"),
    (["a=rid:h send", "a=simulcast:send h", "a=simulcast:send h"], "more than one"),
    (["a=rid:h send", "a=simulcast:send"], "send <list>"),
    (["a=rid:h send", "a=simulcast:sideways h"], "not send or recv"),
    (["a=rid:h send", "a=simulcast:send h send h"], "not send or recv"),
    (["a=rid:h send", "a=simulcast:send ;h"], "bad rid id"),
    (["a=rid:h send", "a=simulcast:send h,"], "bad rid id"),
    ([f"a=rid:r{n} send" for n in range(17)], "more than 16"),
])
def test_garbage_is_refused_with_the_reason(lines, message):
    with pytest.raises(SdpError, match=message) as exc:
        offered_simulcast(simulcast_offer(lines))
    assert "'1'" in str(exc.value)  # names the section


def test_every_truncation_of_the_attributes_parses_or_fails_cleanly():
    full = "\r\n".join(CHROME_LINES[2:])
    for cut in range(len(full)):
        text = client_offer(("voice", "screen")).replace("a=mid:1\r\n", "a=mid:1\r\n" + full[:cut] + "\r\n", 1)
        try:
            got = offered_simulcast(text)
        except SdpError:
            continue
        assert set(got) <= {"1"} and all(set(s.rids) <= {"h", "l"} for s in got.values())


def test_random_bytes_in_the_attributes_never_raise_anything_but_sdp_errors():
    rng = random.Random(8853)
    alphabet = "hl;,~ :=/-_\tsendrecv0"
    for _ in range(3000):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 24)))
        lines = [f"a=rid:{junk}", f"a=simulcast:{junk}"] if rng.random() < 0.5 else ["a=rid:h send", f"a=simulcast:{junk}"]
        try:
            offered_simulcast(simulcast_offer(lines))
        except SdpError:
            pass


def test_answer_lines_go_after_the_sections_mid():
    assert answer_lines(("h", "l")) == ["a=rid:h recv", "a=rid:l recv", "a=simulcast:recv h;l"]
    text = "v=0\r\nm=audio 9 X 0\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\na=x\r\n"
    assert insert_answer_lines(text, {"1": ("h",)}) == (
        "v=0\r\nm=audio 9 X 0\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\na=rid:h recv\r\na=simulcast:recv h\r\na=x\r\n")


# -- negotiation ---------------------------------------------------------------------------


def test_a_simulcast_screen_section_is_answered_with_recv_rids_and_the_rid_extensions():
    offer = simulcast_offer()
    n = Negotiation(LOCAL, parse_offer(offer), may_publish=PERMS)
    answer = n.answer(offer)
    screen = n.published_tracks()["screen"]
    assert screen.rids == ("h", "l")
    assert {e.uri: e.id for e in screen.extensions}.items() >= {RID_URI: 10, RRID_URI: 11}.items()
    video = section(answer, "1")
    for line in ("a=rid:h recv", "a=rid:l recv", "a=simulcast:recv h;l", f"a=extmap:10 {RID_URI}",
                 f"a=extmap:11 {RRID_URI}", "a=recvonly"):
        assert line + "\r\n" in video + "\r\n", line
    assert "a=rid" not in section(answer, "0") and "simulcast" not in section(answer, "0")
    # the answer parses again (aiortc and our own reader agree)
    assert offered_simulcast(answer) == {}  # recv only: nothing the gateway is offered to receive


def test_without_simulcast_nothing_changes():
    offer = client_offer(("voice", "screen"))
    n = Negotiation(LOCAL, parse_offer(offer), may_publish=PERMS)
    answer = n.answer(offer)
    assert n.published_tracks()["screen"].rids == () and "a=simulcast" not in answer and "a=rid" not in answer
    # the RID extensions offered without simulcast are not taken either
    offer = simulcast_offer(CHROME_LINES[:2])
    n = Negotiation(LOCAL, parse_offer(offer), may_publish=PERMS)
    answer = n.answer(offer)
    assert RID_URI not in answer and RRID_URI not in answer


def test_a_gateway_that_cannot_switch_layers_does_not_answer_simulcast_but_keeps_the_rid_extension():
    offer = simulcast_offer()
    n = Negotiation(LOCAL, parse_offer(offer), may_publish=PERMS, simulcast=False)
    answer = n.answer(offer)
    assert n.published_tracks()["screen"].rids == () and "a=simulcast" not in answer and "a=rid" not in answer
    # Chromium re-offers a=simulcast on that transceiver and refuses its own offer without the RID extension
    assert f"a=extmap:10 {RID_URI}" in section(answer, "1")


def test_garbage_simulcast_is_a_negotiation_error_and_leaves_the_state_alone():
    n = joined(("voice", "screen"))
    before = list(n.sections)
    with pytest.raises(NegotiationError, match="without a=rid:l send") as exc:
        n.answer(simulcast_offer(["a=rid:h send", "a=simulcast:send h;l"]))
    assert exc.value.code == "bad_sdp" and n.sections == before


def test_simulcast_on_voice_or_a_non_vp8_codec_is_not_answered():
    offer = with_lines(client_offer(("voice", "screen")), "0", ["a=rid:a send", "a=simulcast:send a"])
    n = Negotiation(LOCAL, parse_offer(offer), may_publish=PERMS)
    answer = n.answer(offer)
    assert n.published_tracks()["voice"].rids == () and "a=simulcast" not in answer
    assert RID_URI not in section(answer, "0")  # audio: never
    h264 = simulcast_offer().replace("VP8/90000", "H264/90000")
    n = Negotiation(LOCAL, parse_offer(h264), may_publish=PERMS)
    assert "a=simulcast" not in n.answer(h264) and n.published_tracks()["screen"].rids == ()


def test_subscribers_are_offered_one_ordinary_stream_without_rid_extensions():
    publisher = Negotiation(LOCAL, parse_offer(simulcast_offer()), may_publish=PERMS)
    publisher.answer(simulcast_offer())
    subscriber = joined()
    offer_id, offer = subscriber.create_offer({("pub", "screen"): publisher.published_tracks()["screen"]})
    assert RID_URI not in offer and RRID_URI not in offer and "a=rid" not in offer and "a=simulcast" not in offer
    subscriber.apply_answer(offer_id, answer_gateway_offer(offer))
    forwarded = [s for s in subscriber.sections if s.forwarded]
    assert forwarded[0].rids == () and len([s for s in section(offer, forwarded[0].mid).splitlines()
                                            if s.startswith("a=ssrc:") and "cname" in s]) == 1


def test_a_renegotiation_keeps_the_layers_and_a_gateway_offer_asks_for_them_again():
    offer = simulcast_offer()
    n = Negotiation(LOCAL, parse_offer(offer), may_publish=PERMS)
    n.answer(offer)
    n.answer(offer)  # the same offer again (a renegotiation)
    assert n.published_tracks()["screen"].rids == ("h", "l")
    other = joined()
    offer_id, gateway_offer = n.create_offer({("other", "voice"): other.published_tracks()["voice"]})
    assert "a=simulcast:recv h;l" in section(gateway_offer, "1")


def test_a_paused_simulcast_sender_keeps_the_rid_extensions_in_the_answer():
    # the page stops sharing: its transceiver goes inactive, and Chromium still lists a=simulcast
    offer = simulcast_offer()
    n = Negotiation(LOCAL, parse_offer(offer), may_publish=PERMS)
    n.answer(offer)
    paused = simulcast_offer().replace("a=sendonly\r\na=extmap:4", "a=inactive\r\na=extmap:4", 1)
    assert "a=inactive" in section(paused, "1")
    answer = n.answer(paused)
    assert "screen" not in n.published_tracks()
    video = section(answer, "1")
    assert f"a=extmap:10 {RID_URI}" in video and "a=inactive" in video
    # and its layers, or Chromium drops all but the first encoding for the next share
    assert "a=rid:h recv" in video and "a=rid:l recv" in video and "a=simulcast:recv h;l" in video

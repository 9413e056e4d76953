"""The Python client's negotiation core against the real GatewayCore, without a socket (issue #13 item 3).

:class:`callsgw.client.negotiation.ClientNegotiation` makes every signaling decision of
``callsgw.client``; here it is driven through ``tests/signaling/pump.py`` (the socket-free pump of
``GatewayCore``, policy ``"rollback"``) with a simulated clock: join, renegotiation both ways, glare,
limits, expiry, leave, resume and ICE restart. Then the core alone: hostile and broken messages.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.client import negotiation as cn
from callsgw.client.negotiation import ClientNegotiation
from callsgw.client.sdp import SdpError
from callsgw.signaling import tokens
from callsgw.signaling.core import Limits
from tests.signaling.pump import CALL, SECRET, Pump, convergence_problems, make_core, published


def events(client) -> list:
    """What the client's core reported since the last look."""
    out, client.neg_events = client.neg_events, []
    while (event := client.neg.next_event()) is not None:
        out.append(event)
    return out


def offer_screen(pump, client) -> None:
    """The client announces its screen share and, on the gateway's echo, offers it; nothing delivered further."""
    client.screen(True)
    pump.step(("g", client.conn_id))  # `screen` reaches the gateway
    while pump.to_client[client.conn_id]:
        pump.step(("c", client.conn_id))  # the echo: the client offers its screen section
    assert client.neg.pending_offer_id is not None


def test_join_applies_the_gateway_answer():
    pump = Pump(policy="rollback")
    ann = pump.open("ann")
    assert ann.neg is not None and not ann.joined
    pump.drain()
    assert ann.joined and ann.neg.participant_id == ann.my_id
    assert [(s.mid, s.direction) for s in ann.neg.sections] == [("0", "sendonly")]
    assert ann.neg.remote.ice_ufrag == pump.core.calls[CALL].participants[ann.my_id].transport.local_ufrag
    assert convergence_problems(pump) == []


def test_renegotiation_both_ways():
    pump = Pump(policy="rollback")
    ann = pump.open("ann")
    pump.drain()
    ben = pump.open("ben")
    pump.drain()
    # the gateway offered ann ben's voice (and ben ann's, in his join answer's follow-up)
    assert ann.offers_received >= 1 and ann.receiving() == {(ben.my_id, "voice")}
    assert ann.neg.participants.keys() == {ben.my_id}
    # ann offers: her screen share
    ann.screen(True)
    pump.drain()
    assert published(ann) == {"voice", "screen"} and ann.neg.sharing
    assert ben.receiving() == {(ann.my_id, "voice"), (ann.my_id, "screen")}
    ann.screen(False)
    pump.drain()
    assert published(ann) == {"voice"} and ben.receiving() == {(ann.my_id, "voice")}
    assert convergence_problems(pump) == []


def test_glare_the_client_rolls_back_and_offers_again():
    pump = Pump(policy="rollback")
    ann = pump.open("ann")
    pump.drain()
    offer_screen(pump, ann)
    ben = pump.open("ben")
    pump.step(("g", ben.conn_id))  # ben's join: the gateway offers ann his voice
    pump.step(("g", ann.conn_id))  # ann's offer crosses it: glare
    pump.drain()
    assert ann.neg.stats["glare"] >= 1
    assert [e for e in ann.errors if e.get("code") == "glare"]
    assert published(ann) == {"voice", "screen"}
    assert convergence_problems(pump) == []


def test_limits_refuse_a_join_and_leave_nothing_behind():
    pump = Pump(make_core(Limits(max_participants_per_call=2, joins_per_second_per_address=1e6,
                                 messages_per_second=1e6)), policy="rollback")
    pump.open("ann"), pump.open("ben")
    pump.drain()
    cat = pump.open("cat")
    pump.drain()
    assert cat.closed and cat.close_code == 4004 and not cat.joined
    assert convergence_problems(pump) == []


def test_an_expired_token_is_refused():
    pump = Pump(policy="rollback")
    expired = tokens.mint(SECRET, call=CALL, name="old", sub="old", ttl=60, now=0)
    old = pump.open("old", token=expired)
    pump.drain()
    assert old.closed and old.close_code == 4002


def test_leave_and_a_resume_grace_that_runs_out():
    pump = Pump(policy="rollback")
    ann, ben, cat = pump.open("ann"), pump.open("ben"), pump.open("cat")
    pump.drain()
    ann.leave()
    pump.drain()
    assert ann.closed and ann.close_code == 1000
    assert ben.neg.participants.keys() == {cat.my_id} and ben.receiving() == {(cat.my_id, "voice")}
    pump.drop_socket(cat)  # no leave: cat may resume for the grace period, then she is gone
    pump.advance(pump.core.limits.resume_grace - 1)
    pump.drain()
    assert cat.my_id in ben.neg.participants
    pump.advance(2)
    pump.drain()
    assert ben.neg.participants == {} and ben.receiving() == set()
    assert convergence_problems(pump) == []


def test_a_resume_settles_an_offer_the_drop_cut():
    pump = Pump(policy="rollback")
    ann, _ = pump.open("ann"), pump.open("ben")
    pump.drain()
    offer_screen(pump, ann)
    pump.drop_socket(ann)  # the offer dies with the socket
    pump.reconnect(ann)
    pump.drain()
    assert ann.resumed_count == 1 and published(ann) == {"voice", "screen"}
    assert convergence_problems(pump) == []


def test_ice_restart_is_negotiated_without_a_socket():
    pump = Pump(policy="rollback")
    ann, ben = pump.open("ann"), pump.open("ben")
    pump.drain()
    events(ann)
    transport = pump.core.calls[CALL].participants[ann.my_id].transport
    old_gateway_ufrag = ann.neg.remote.ice_ufrag
    ann._send_all(ann.neg.restart_ice("newUfrag", "n" * 24, pump.now))
    assert ann.neg.restarting_ice
    pump.drain()
    (answered,) = [e for e in events(ann) if isinstance(e, cn.IceRestartAnswered)]
    assert answered.remote.ice_ufrag != old_gateway_ufrag == transport.ice.local_ufrags[1]
    assert transport.ice.local_ufrags[0] == answered.remote.ice_ufrag and transport.ice.remote_ufrag == "newUfrag"
    assert (ann.neg.ice_ufrag, ann.neg.remote) == ("newUfrag", answered.remote) and not ann.neg.restarting_ice
    assert pump.core.stats["ice_restarts"] == 1 and ben.neg.participants.keys() == {ann.my_id}
    assert convergence_problems(pump) == []


def test_an_offer_left_unanswered_is_reported_once_per_timeout():
    pump = Pump(policy="rollback")
    ann = pump.open("ann")
    pump.drain()
    offer_screen(pump, ann)  # and the pump never delivers the offer
    neg = ann.neg
    sent_at = pump.now
    assert neg.get_timer() == sent_at + cn.OFFER_ANSWER_TIMEOUT
    neg.handle_timer(sent_at + cn.OFFER_ANSWER_TIMEOUT - 0.1)
    assert not [e for e in events(ann) if isinstance(e, cn.Trouble)]
    neg.handle_timer(sent_at + cn.OFFER_ANSWER_TIMEOUT)
    assert [(e.code, e.offer_id) for e in events(ann) if isinstance(e, cn.Trouble)] == [
        ("negotiation_stuck", neg.pending_offer_id)]
    neg.handle_timer(sent_at + cn.OFFER_ANSWER_TIMEOUT + 1)
    assert events(ann) == []


# -- the core alone: what a broken or hostile gateway sends -----------------------------------


def joined_core() -> ClientNegotiation:
    pump = Pump(policy="rollback")
    ann = pump.open("ann")
    pump.drain()
    events(ann)
    return ann.neg


def test_an_offer_that_cannot_be_answered_makes_the_client_leave():
    neg = joined_core()
    assert neg.receive({"type": "offer", "id": 7, "sdp": "v=0\r\ngarbage"}, 0.0) == [{"type": "leave"}]
    (event,) = [e for e in iter(neg.next_event, None)]
    assert isinstance(event, cn.Trouble) and (event.code, event.offer_id) == ("bad_offer", 7)
    assert neg.renegotiate(0.0) == []  # gone: nothing more is offered


def test_a_broken_answer_refuses_the_offer_and_keeps_the_state():
    neg = joined_core()
    sections = list(neg.sections)
    (offer,) = neg.want_screen(True, 0.0)
    assert neg.receive({"type": "answer", "id": offer["id"], "sdp": "v=0\r\n"}, 0.0) == []
    refused = [e for e in iter(neg.next_event, None) if isinstance(e, cn.Refused)]
    assert [(e.what, e.code) for e in refused] == [("offer", "bad_answer")]
    assert neg.sections == sections and not neg.wants_screen and neg.pending_offer_id is None
    # an answer to nothing outstanding is ignored
    assert neg.receive({"type": "answer", "id": 99, "sdp": "x"}, 0.0) == []


def test_an_offer_before_joined_is_not_answered():
    neg = ClientNegotiation(ice_ufrag="abcd", ice_pwd="p" * 22, fingerprint=":".join(["AA"] * 32))
    assert neg.receive({"type": "offer", "id": 1, "sdp": "v=0"}, 0.0) == []
    try:
        neg.joined({"type": "joined", "sdp": "nonsense"})
    except SdpError:
        pass
    else:
        raise AssertionError("a broken join answer must raise SdpError")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["offer", "answer", "error", "participant_joined", "participant_left", "mute", "screen",
                             "resumed", "nonsense"]),
       fields=st.dictionaries(st.sampled_from(["id", "sdp", "code", "ref", "participant", "participant_id",
                                               "muted", "sharing", "participants", "answer", "message"]),
                              _json, max_size=6))
def test_no_message_makes_the_core_raise(kind, fields):
    neg = joined_core_cached()
    msg = {"type": kind, **fields}
    out = neg.resumed(msg, 1.0) if kind == "resumed" else neg.receive(msg, 1.0)
    assert isinstance(out, list) and all(isinstance(m, dict) and "type" in m for m in out)
    while neg.next_event() is not None:
        pass


_cached: list[ClientNegotiation] = []


def joined_core_cached() -> ClientNegotiation:
    """A fresh copy per example would cost a gateway each; one joined core, re-used, also fuzzes state."""
    if not _cached:
        _cached.append(joined_core())
    return _cached[0]


def test_a_converged_event_settles_a_wish_already_met():
    neg = joined_core()
    assert neg.renegotiate(0.0) == []
    assert isinstance(neg.next_event(), cn.Converged)


def test_a_participant_list_that_is_not_a_list_means_nobody():
    """Found by the fuzz test above: ``resumed`` with ``participants: 0`` raised TypeError."""
    neg = joined_core()
    assert neg.resumed({"type": "resumed", "participants": 0}, 1.0) == []
    assert neg.participants == {}
    assert neg.resumed({"type": "resumed", "participants": [{"id": "p1"}, 7, {"id": 3}]}, 1.0) == []
    assert neg.participants == {"p1": {"id": "p1"}}

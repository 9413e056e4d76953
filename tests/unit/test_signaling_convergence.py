"""Signaling always converges: GatewayCore with simulated clients, socket-free (issue #12).

Hypothesis drives joins, leaves, dropped sockets, mutes, screen-share starts
and stops, and the order in which each connection's queued messages move,
over a simulated clock. Once every queue is empty, every participant must
receive exactly the others' published tracks, know exactly the others, and
have no offer outstanding on either side (tests/signaling/pump.py).
``CALLSGW_PUMP_EXAMPLES=2000`` explores more interleavings than CI's 150 per policy.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import json
import time

from callsgw.signaling import tokens
from tests.signaling.pump import CALL, SECRET, Pump, convergence_problems

NAMES = ("ann", "ben", "cat", "dan", "eve")


def _client(pump: Pump, data, label: str):
    live = [c for c in pump.live() if c.joined]
    if not live:
        return None
    return data.draw(st.sampled_from(live), label=label)


def run_script(pump: Pump, data, steps: int) -> None:
    for _ in range(steps):
        action = data.draw(
            st.sampled_from(["deliver"] * 6 + ["open", "open", "leave", "drop", "reconnect", "mute", "screen_on",
                                               "screen_off", "advance", "bad_answer"]),
            label="action",
        )
        if action == "deliver":
            ready = pump.deliverable()
            if ready:
                pump.step(data.draw(st.sampled_from(ready), label="queue"))
        elif action == "open":
            # a name already in the call is the same identity joining again: it replaces the older session
            name = data.draw(st.sampled_from(NAMES), label="name")
            policy = data.draw(st.sampled_from(["rollback", "stash"]), label="policy")
            pump.open(name, policy=policy)
        elif action == "reconnect":
            dropped = [c for c in pump.clients.values() if c.dropped]
            if dropped:
                pump.reconnect(data.draw(st.sampled_from(dropped), label="resumer"))
        elif action == "advance":
            pump.advance(data.draw(st.sampled_from([0.01, 0.1, 1.0, 5.0]), label="dt"))
        else:
            client = _client(pump, data, "who")
            if client is None:
                continue
            if action == "leave":
                client.leave()
            elif action == "drop":
                pump.drop_socket(client)
            elif action == "mute":
                client.mute(data.draw(st.booleans(), label="muted"))
            elif action == "screen_on":
                client.screen(True)
            elif action == "screen_off":
                client.screen(False)
            elif action == "bad_answer":
                client.corrupt_next_answer = True
    rng = random.Random(data.draw(st.integers(0, 2**16), label="drain seed"))
    # quiet down: each client whose socket dropped resumes now, or never (its grace period ends)
    for client in [c for c in pump.clients.values() if c.dropped]:
        if data.draw(st.booleans(), label="resumes"):
            pump.reconnect(client)
    pump.drain(rng)
    pump.advance(pump.core.limits.resume_grace + 1)
    pump.drain(rng)


@pytest.mark.parametrize("policy", ["rollback", "stash"])
@settings(max_examples=int(os.environ.get("CALLSGW_PUMP_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_interleaving_converges(policy, data):
    pump = Pump(policy=policy)
    run_script(pump, data, data.draw(st.integers(5, 60), label="steps"))
    assert convergence_problems(pump) == []


def test_simultaneous_joins_converge_in_every_delivery_order():
    """Four clients join at the same instant; each of many random delivery orders converges."""
    for seed in range(60):
        pump = Pump(policy="stash" if seed % 2 else "rollback")
        for name in NAMES[:4]:
            pump.open(name)
        pump.drain(random.Random(seed))
        assert convergence_problems(pump) == [], f"seed {seed}"
        assert all(len(c.receiving()) == 3 for c in pump.live())


def test_a_refused_answer_loses_no_renegotiation():
    """ann's answer is refused while ben's join waits behind it: a fresh offer carries both."""
    pump = Pump()
    ann = pump.open("ann")
    pump.drain()
    pump.open("ben")
    ann.corrupt_next_answer = True
    # the gateway's offer of ben's voice reaches ann; cat joins before her (broken) answer arrives
    while not ann.offers_received:
        pump.step(("c", ann.conn_id) if pump.to_client[ann.conn_id] else pump.deliverable()[0])
    pump.open("cat")
    pump.drain()
    assert any(e["code"] == "bad_sdp" and e.get("ref") == "answer" for e in ann.errors)
    assert convergence_problems(pump) == []
    assert ann.receiving() == {("ben", "voice"), ("cat", "voice")}


def test_debug_trace_names_every_message_without_sdp_or_tokens(caplog):
    """The DEBUG trace shows each connection's message types in order, never SDP, tokens or names."""
    caplog.set_level("DEBUG", logger="callsgw.signaling.core")
    pump = Pump()
    ann = pump.open("ann")
    pump.drain()
    ben = pump.open("ben")
    pump.drain()
    ben.mute(True)
    pump.drain()
    text = "\n".join(r.getMessage() for r in caplog.records)
    ann_lines = [line for line in text.splitlines() if line.startswith(f"signaling conn {ann.conn_id}")]
    kinds = [line.replace("<-", "->").split("-> ", 1)[1].split()[0] for line in ann_lines]
    assert kinds[:4] == ["join", "joined", "participant_joined", "offer"]
    assert "answer" in kinds and "mute" in kinds
    assert any("participant_id=ben" in line and "participant_joined" in line for line in ann_lines)
    assert any("offer id=1" in line for line in ann_lines)
    for secret in ("v=0", "a=fingerprint", "ice-pwd", ann.pwd, "eyJ"):
        assert secret not in text


def test_a_second_join_of_the_same_identity_replaces_the_first():
    """bye `replaced` and close 4009 to the old session; the others see it leave and come back."""
    pump = Pump()
    ann, ben = pump.open("ann"), pump.open("ben")
    pump.drain()
    ann2 = pump.open("ann")
    pump.drain()
    assert ann.closed and ann.close_code == 4009 and "bye" in ann.log
    assert not ann2.closed and ann2.joined
    assert convergence_problems(pump) == []
    assert ben.receiving() == {("ann", "voice")} and ann2.receiving() == {("ben", "voice")}
    assert ben.log.count("participant_left") == 1 and ben.log.count("participant_joined") == 2


def test_a_replacing_join_with_bad_sdp_leaves_the_owner_in_place():
    pump = Pump()
    ann = pump.open("ann")
    pump.drain()
    intruder = pump.open("ann")
    intruder.outbox.clear()
    intruder.outbox.append(json.dumps({"type": "join", "token": tokens.mint(SECRET, call=CALL, name="x", sub="ann"),
                                       "sdp": "v=0 garbage"}))
    pump.drain()
    assert intruder.closed and intruder.close_code == 4008
    assert not ann.closed and "ann" in pump.core.calls[CALL].participants


def test_revoking_a_token_ends_its_session_and_refuses_it_again():
    pump = Pump()
    ann, ben = pump.open("ann"), pump.open("ben")
    pump.drain()
    jti = pump.core.connections[ann.conn_id].participant.jti
    assert jti and pump.core.revoke(jti, until=time.time() + 3600, now=pump.now) == 1
    pump._collect()
    pump.drain()
    assert ann.closed and ann.close_code == 4001
    assert convergence_problems(pump) == [] and ben.participants == {}
    again = pump.open("ann", token=ann.token)
    pump.drain()
    assert again.closed and again.close_code == 4001 and not again.joined


def test_a_token_living_longer_than_max_token_ttl_is_refused():
    pump = Pump()
    forever = tokens.mint(SECRET, call=CALL, name="ann", sub="ann", ttl=3650 * 86400)
    ann = pump.open("ann", token=forever)
    pump.drain()
    assert ann.closed and ann.close_code == 4001 and not ann.joined


def test_a_dropped_socket_resumes_and_nobody_sees_a_leave():
    """ann's socket dies while ben joins; she resumes on a new one: ben's voice reaches her, no leave."""
    pump = Pump()
    ann, cat = pump.open("ann"), pump.open("cat")
    pump.drain()
    pump.drop_socket(ann)
    ben = pump.open("ben")  # the gateway's offer of ben's voice to ann cannot be delivered now
    pump.drain()
    pump.advance(10)
    pump.reconnect(ann)
    pump.drain()
    assert ann.resumed_count == 1 and not ann.closed
    assert "participant_left" not in cat.log + ben.log
    assert convergence_problems(pump) == []
    assert ann.receiving() == {("ben", "voice"), ("cat", "voice")}


def test_an_answer_lost_with_the_socket_is_sent_again_and_applied():
    pump = Pump()
    ann = pump.open("ann")
    pump.drain()
    ben = pump.open("ben")
    # ann answers the gateway's offer; the answer dies with her socket
    while not ann.answers:
        pump.step(next(q for q in pump.deliverable() if q != ("g", ann.conn_id)))
    pump.drop_socket(ann)
    pump.drain()
    pump.reconnect(ann)
    pump.drain()
    assert convergence_problems(pump) == []
    assert ann.receiving() == {("ben", "voice")} and ben.receiving() == {("ann", "voice")}


def test_resume_refusals_change_nothing():
    """After the grace period, with another participant's credential, and a replayed one: 4011."""
    pump = Pump()
    ann, ben = pump.open("ann"), pump.open("ben")
    pump.drain()
    old_credential = dict(ann.resume)
    pump.drop_socket(ann)
    pump.reconnect(ann)
    pump.drain()
    assert ann.resumed_count == 1
    # a replay of the credential that was just used
    pump.drop_socket(ann)
    ann.resume = old_credential
    pump.reconnect(ann)
    pump.drain()
    assert ann.closed and ann.close_code == 4011
    # ben's credential with ann's participant id
    pump2 = Pump()
    ann2, ben2 = pump2.open("ann"), pump2.open("ben")
    pump2.drain()
    pump2.drop_socket(ann2)
    ann2.resume = dict(ben2.resume)
    pump2.reconnect(ann2)
    pump2.drain()
    assert ann2.closed and ann2.close_code == 4011 and not ben2.closed
    # after the grace period the participant has left
    pump3 = Pump()
    ann3, ben3 = pump3.open("ann"), pump3.open("ben")
    pump3.drain()
    pump3.drop_socket(ann3)
    pump3.advance(pump3.core.limits.resume_grace + 0.5)
    pump3.drain()
    assert ben3.participants == {} and ben3.log.count("participant_left") == 1
    pump3.reconnect(ann3)
    pump3.drain()
    assert ann3.closed and ann3.close_code == 4011
    assert convergence_problems(pump3) == []

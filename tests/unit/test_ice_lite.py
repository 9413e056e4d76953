"""IceLiteAgent: RFC 8445 lite checks, nomination, address following and RFC 7675 consent.

Requests are encoded by aioice (an independent implementation), responses are
read back and verified by aioice. The clock is simulated: no sockets, no sleeps.
"""

from __future__ import annotations

import types

import aioice
import pytest
from aioice import stun as aioice_stun
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.ice import (
    AddressRemoved,
    AddressValidated,
    ConsentExpired,
    IceLiteAgent,
    IceState,
    SelectedAddressChanged,
)
from callsgw.ice.lite import STAT_KEYS
from callsgw.wire import stun

LUFRAG, LPWD = "gwUfrag01", "gwPassword0123456789abcdef"
RUFRAG, RPWD = "peerUfrag", "peerPassword0123456789abc"
A = ("198.51.100.10", 50000)
B = ("198.51.100.11", 50001)
C = ("203.0.113.5", 40000)
D = ("203.0.113.6", 40001)
E = ("203.0.113.7", 40002)
V6 = ("2001:db8::5", 4000)


def check(
    username: str | None = f"{LUFRAG}:{RUFRAG}",
    key: str | None = LPWD,
    *,
    use_candidate: bool = False,
    role: str = "ICE-CONTROLLING",
    fingerprint: bool = True,
    method: aioice_stun.Method = aioice_stun.Method.BINDING,
    message_class: aioice_stun.Class = aioice_stun.Class.REQUEST,
    transaction_id: bytes | None = None,
) -> bytes:
    """A connectivity check encoded by aioice (RFC 8445 section 7.2.2)."""
    msg = aioice_stun.Message(method, message_class, transaction_id=transaction_id)
    if username is not None:
        msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 0x6E7F1EFF
    if role:
        msg.attributes[role] = 0x1122334455667788
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    if key is not None:
        msg.add_message_integrity(key.encode())  # MESSAGE-INTEGRITY, then FINGERPRINT
        if not fingerprint:
            del msg.attributes["FINGERPRINT"]
    elif fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


def new_agent(**kw) -> IceLiteAgent:
    kw.setdefault("now", 0.0)
    return IceLiteAgent(LUFRAG, LPWD, RUFRAG, RPWD, **kw)


def drain(agent: IceLiteAgent) -> list:
    out = []
    while (event := agent.next_event()) is not None:
        out.append(event)
    return out


def run_until(agent: IceLiteAgent, now: float) -> None:
    """What the asyncio shell does: fire every timer due up to ``now``."""
    while (deadline := agent.get_timer()) is not None and deadline <= now:
        agent.handle_timer(deadline)


def read_response(data: bytes) -> aioice_stun.Message:
    """Parse and verify a response with aioice alone."""
    msg = aioice_stun.parse_message(data)  # also checks FINGERPRINT
    assert msg.check_message_integrity(LPWD.encode())
    return msg


# -- answering checks ---------------------------------------------------------


@pytest.mark.parametrize("addr", [A, V6])
def test_valid_check_is_answered(addr):
    agent = new_agent()
    request = check()
    response = agent.receive(request, addr, now=1.0)
    assert response is not None
    msg = read_response(response)
    assert msg.message_method == aioice_stun.Method.BINDING
    assert msg.message_class == aioice_stun.Class.RESPONSE
    assert msg.transaction_id == aioice_stun.parse_message(request).transaction_id
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == addr
    assert stun.verify(response, stun.parse(response), LPWD)  # and our verifier agrees
    assert agent.is_validated(addr)
    assert agent.validated_addresses == (addr,)
    assert agent.selected_address is None  # validated, not nominated
    assert agent.state == "checking"
    assert drain(agent) == [AddressValidated(addr)]
    assert agent.stats["answered"] == 1


def test_use_candidate_selects():
    agent = new_agent()
    assert agent.state == "new"
    assert agent.receive(check(use_candidate=True), A, now=0.5) is not None
    assert agent.selected_address == A
    assert agent.state == IceState.CONNECTED == "connected"
    assert drain(agent) == [AddressValidated(A), SelectedAddressChanged(None, A)]
    # Nominating the same address again changes nothing.
    assert agent.receive(check(use_candidate=True), A, now=1.0) is not None
    assert drain(agent) == []


def test_check_built_by_aioice_ice_agent():
    # The request aioice's (and so aiortc's) controlling agent sends to a lite
    # peer: aggressive nomination, USE-CANDIDATE on every check.
    peer = aioice.Connection(ice_controlling=True)
    peer.remote_username, peer.remote_password = LUFRAG, LPWD
    peer.remote_is_lite = True
    request = peer.build_request(types.SimpleNamespace(component=1), nominate=True)
    request.add_message_integrity(peer.remote_password.encode("utf8"))  # as StunProtocol.request does

    agent = IceLiteAgent(LUFRAG, LPWD, peer.local_username, peer.local_password)
    response = agent.receive(bytes(request), A, now=0.0)
    assert response is not None
    msg = read_response(response)
    assert msg.transaction_id == request.transaction_id
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == A
    assert agent.selected_address == A


def test_aioice_controlled_agent_gets_role_conflict():
    # An aioice agent wrongly in the controlled role: signed 487, which makes it
    # switch to controlling (RFC 8445 section 7.2.5.1; aioice's check_start does so).
    peer = aioice.Connection(ice_controlling=False)
    peer.remote_username, peer.remote_password = LUFRAG, LPWD
    request = peer.build_request(types.SimpleNamespace(component=1), nominate=False)
    request.add_message_integrity(LPWD.encode())

    agent = IceLiteAgent(LUFRAG, LPWD, peer.local_username, peer.local_password)
    response = agent.receive(bytes(request), A, now=0.0)
    msg = read_response(response)
    assert msg.message_class == aioice_stun.Class.ERROR
    assert msg.error_code == 487
    assert msg.transaction_id == request.transaction_id
    assert not agent.is_validated(A)
    assert agent.stats["role_conflict"] == 1
    assert agent.stats["answered"] == 0
    assert drain(agent) == []


def test_rfc5769_sample_request_is_a_role_conflict():
    # RFC 5769 section 2.1 carries ICE-CONTROLLED, USERNAME "evtj:h6vY".
    from tests.unit.test_stun import RFC5769_PASSWORD, RFC5769_REQUEST, RFC5769_TID

    agent = IceLiteAgent("evtj", RFC5769_PASSWORD, "h6vY", "h6vYpasswordpasswordpw")
    msg = aioice_stun.parse_message(agent.receive(RFC5769_REQUEST, A, now=0.0))
    assert msg.check_message_integrity(RFC5769_PASSWORD.encode())
    assert msg.transaction_id == RFC5769_TID
    assert msg.attributes["ERROR-CODE"] == (487, "Role Conflict")


def test_role_conflict_needs_authentication():
    agent = new_agent()
    assert agent.receive(check(role="ICE-CONTROLLED", key="not the password at all!"), A, 0.0) is None
    assert agent.stats["bad_integrity"] == 1
    assert agent.stats["role_conflict"] == 0


def test_check_without_role_attribute_is_answered():
    agent = new_agent()
    assert agent.receive(check(role=""), A, now=0.0) is not None


# -- what gets no answer at all -----------------------------------------------


def _drop_cases():
    good = check()
    flipped_fp = bytearray(good)
    flipped_fp[-1] ^= 0xFF
    return [
        ("bad_integrity", check(key="wrongPassword0123456789ab")),
        ("unknown_ufrag", check(username=f"otherUfrag:{RUFRAG}")),
        ("unknown_ufrag", check(username=f"{LUFRAG}:otherPeer")),
        ("unknown_ufrag", check(username=LUFRAG)),
        ("no_username", check(username=None)),
        ("no_integrity", check(key=None)),
        ("no_fingerprint", check(fingerprint=False)),
        ("bad_fingerprint", bytes(flipped_fp)),
        ("not_request", check(message_class=aioice_stun.Class.INDICATION)),
        ("not_request", check(message_class=aioice_stun.Class.RESPONSE)),
        ("not_request", check(message_class=aioice_stun.Class.ERROR)),
        ("not_binding", check(method=aioice_stun.Method.ALLOCATE)),
        ("malformed", good[:-1]),
        ("malformed", b"\x16\xfe\xfd" + bytes(40)),
        ("malformed", b""),
        ("oversize", good + bytes(1500)),
    ]


@pytest.mark.parametrize(("reason", "data"), _drop_cases())
def test_drop_without_answer(reason, data):
    agent = new_agent()
    assert agent.receive(data, A, now=1.0) is None
    assert agent.stats[reason] == 1
    assert sum(agent.stats.values()) == 1
    assert not agent.is_validated(A)
    assert agent.state == "new"
    assert drain(agent) == []
    assert agent.get_timer() == 30.0  # drops do not refresh consent


def test_truncated_at_every_length():
    agent = new_agent()
    data = check(use_candidate=True)
    for n in range(len(data)):
        assert agent.receive(data[:n], A, now=1.0) is None
    assert agent.stats["malformed"] == len(data)
    assert agent.validated_addresses == ()
    assert drain(agent) == []


def test_every_bit_flip_is_dropped():
    agent = new_agent()
    data = check(use_candidate=True)
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert agent.receive(bytes(flipped), A, now=1.0) is None, f"bit {bit}"
    assert agent.stats["answered"] == 0
    assert agent.validated_addresses == ()


def test_stats_has_every_key():
    assert set(new_agent().stats) == set(STAT_KEYS)
    assert all(v == 0 for v in new_agent().stats.values())


# -- nomination and following the client ---------------------------------------


def test_new_nomination_moves_the_selection():
    agent = new_agent()
    agent.receive(check(use_candidate=True), A, now=0.0)
    agent.receive(check(use_candidate=True), B, now=1.0)
    assert agent.selected_address == B
    assert drain(agent) == [
        AddressValidated(A),
        SelectedAddressChanged(None, A),
        AddressValidated(B),
        SelectedAddressChanged(A, B),
    ]
    assert agent.is_validated(A) and agent.is_validated(B)


def test_nat_rebinding_is_followed_once_the_selected_address_goes_quiet():
    # The client keeps checking "its" pair, but from a new mapped address and
    # without USE-CANDIDATE. The default stale_after is consent_timeout / 3 = 10 s.
    agent = new_agent()
    for t in (0.0, 5.0, 10.0):
        agent.receive(check(use_candidate=True), A, now=t)
    drain(agent)
    agent.receive(check(), B, now=15.0)  # A checked 5 s ago: not stale
    assert agent.selected_address == A
    agent.receive(check(), B, now=19.9)
    assert agent.selected_address == A
    agent.receive(check(), B, now=20.0)  # A quiet for 10 s
    assert agent.selected_address == B
    assert drain(agent) == [AddressValidated(B), SelectedAddressChanged(A, B)]


def test_backup_pair_checks_do_not_steal_a_live_selection():
    agent = new_agent()
    t = 0.0
    while t <= 120.0:
        agent.receive(check(use_candidate=True), A, now=t)
        if t % 25 == 0:
            agent.receive(check(), B, now=t + 0.1)  # libwebrtc pings backups every 25 s
        t += 5.0
    assert agent.selected_address == A


def test_nominated_address_wins_back_from_a_fallback():
    agent = new_agent()
    agent.receive(check(use_candidate=True), A, now=0.0)
    agent.receive(check(), B, now=12.0)  # A stale: fall over to B
    assert agent.selected_address == B
    agent.receive(check(), A, now=13.0)  # A is back, and A was nominated
    assert agent.selected_address == A
    events = drain(agent)
    assert events[-2:] == [SelectedAddressChanged(A, B), SelectedAddressChanged(B, A)]


def test_selected_address_expiry_falls_back_to_the_address_still_checking():
    agent = new_agent(stale_after=30.0)  # only expiry moves the selection
    agent.receive(check(use_candidate=True), A, now=0.0)
    t = 1.0
    while t < 30.0:
        agent.receive(check(), B, now=t)
        t += 5.0
    assert agent.selected_address == A
    drain(agent)
    run_until(agent, 30.0)
    assert agent.selected_address == B
    assert not agent.is_validated(A)
    assert agent.state == "connected"
    assert drain(agent) == [AddressRemoved(A, "expired"), SelectedAddressChanged(A, B)]


def test_fallback_prefers_nominated_then_most_recent():
    agent = new_agent(stale_after=30.0)
    agent.receive(check(use_candidate=True), A, now=0.0)
    agent.receive(check(use_candidate=True), B, now=1.0)  # B selected, A nominated too
    agent.receive(check(), C, now=2.0)
    agent.receive(check(), A, now=20.0)
    agent.receive(check(), C, now=25.0)
    drain(agent)
    run_until(agent, 31.0)  # B expires; A (nominated) beats C (more recent)
    assert agent.selected_address == A
    assert drain(agent) == [AddressRemoved(B, "expired"), SelectedAddressChanged(B, A)]


# -- consent freshness (RFC 7675) ------------------------------------------------


def test_consent_expires_after_30_seconds_and_not_before():
    agent = new_agent()
    agent.receive(check(use_candidate=True), A, now=0.0)
    drain(agent)
    assert agent.get_timer() == 30.0
    agent.handle_timer(29.999)
    assert agent.is_validated(A)
    assert agent.state == "connected"
    assert drain(agent) == []
    agent.handle_timer(30.0)
    assert agent.state == IceState.FAILED == "failed"
    assert not agent.is_validated(A)
    assert agent.selected_address is None
    assert agent.get_timer() is None
    assert drain(agent) == [AddressRemoved(A, "expired"), SelectedAddressChanged(A, None), ConsentExpired()]
    # Terminal: even a valid check gets no answer now.
    assert agent.receive(check(use_candidate=True), A, now=31.0) is None
    assert agent.stats["closed"] == 1
    assert drain(agent) == []


def test_consent_expires_when_no_check_ever_arrives():
    agent = new_agent(now=100.0)
    assert agent.get_timer() == 130.0
    run_until(agent, 129.0)
    assert agent.state == "new"
    run_until(agent, 130.0)
    assert agent.state == "failed"
    assert drain(agent) == [ConsentExpired()]


def test_checks_every_5_seconds_keep_consent_for_5_minutes():
    agent = new_agent()
    t = 0.0
    while t <= 300.0:
        run_until(agent, t)
        assert agent.receive(check(use_candidate=True), A, now=t) is not None
        t += 5.0
    run_until(agent, 300.0)
    assert agent.state == "connected"
    assert agent.stats["answered"] == 61
    assert ConsentExpired() not in drain(agent)
    run_until(agent, 329.9)
    assert agent.state == "connected"
    run_until(agent, 330.0)
    assert agent.state == "failed"


def test_consent_survives_loss_of_most_checks():
    # RFC 7675 consent checks every 4-6 s; the peer's checks are lost in bursts
    # but some get through every 30 s, so consent holds.
    agent = new_agent()
    t, sent = 0.0, 0
    while t <= 300.0:
        run_until(agent, t)
        sent += 1
        if sent % 5 == 0:  # 4 of every 5 lost: one arrives every 25 s
            assert agent.receive(check(use_candidate=True), A, now=t) is not None
        t += 5.0
    assert agent.state == "connected"


def test_receive_applies_expiry_before_handling_a_late_check():
    agent = new_agent()
    agent.receive(check(use_candidate=True), A, now=0.0)
    assert agent.receive(check(use_candidate=True), A, now=30.5) is None  # shell missed the timer
    assert agent.state == "failed"
    assert ConsentExpired() in drain(agent)


def test_an_address_that_stops_checking_loses_validation():
    agent = new_agent()
    agent.receive(check(use_candidate=True), A, now=0.0)
    agent.receive(check(), B, now=1.0)
    t = 5.0
    while t <= 60.0:
        run_until(agent, t)
        agent.receive(check(use_candidate=True), A, now=t)
        t += 5.0
    assert agent.is_validated(A)
    assert not agent.is_validated(B)
    assert agent.state == "connected"
    assert AddressRemoved(B, "expired") in drain(agent)
    # B checking again re-validates it.
    agent.receive(check(), B, now=61.0)
    assert agent.is_validated(B)
    assert drain(agent) == [AddressValidated(B)]


def test_timer_is_the_earliest_address_deadline():
    agent = new_agent()
    agent.receive(check(), A, now=2.0)
    agent.receive(check(), B, now=7.0)
    assert agent.get_timer() == 32.0
    agent.receive(check(), A, now=9.0)
    assert agent.get_timer() == 37.0


def test_custom_consent_timeout():
    agent = new_agent(consent_timeout=5.0)
    agent.receive(check(use_candidate=True), A, now=0.0)
    run_until(agent, 4.9)
    assert agent.state == "connected"
    run_until(agent, 5.0)
    assert agent.state == "failed"


# -- bounds ------------------------------------------------------------------------


def test_max_addresses_evicts_least_recently_checked_but_not_the_selected():
    agent = new_agent(max_addresses=3)
    agent.receive(check(use_candidate=True), A, now=0.0)  # selected, and oldest
    agent.receive(check(), B, now=1.0)
    agent.receive(check(), C, now=2.0)
    drain(agent)
    agent.receive(check(), D, now=3.0)
    assert agent.validated_addresses == (A, C, D)
    assert drain(agent) == [AddressRemoved(B, "evicted"), AddressValidated(D)]
    agent.receive(check(), C, now=4.0)  # C refreshed: D is now the least recent after A
    agent.receive(check(), E, now=5.0)
    assert set(agent.validated_addresses) == {A, C, E}
    assert agent.selected_address == A
    assert drain(agent) == [AddressRemoved(D, "evicted"), AddressValidated(E)]


def test_max_addresses_holds_under_many_addresses():
    agent = new_agent()
    for i in range(200):
        addr = ("10.0.0.1", 1000 + i)
        assert agent.receive(check(use_candidate=(i == 0)), addr, now=i * 0.01) is not None
        assert len(agent.validated_addresses) <= 8
    assert agent.selected_address == ("10.0.0.1", 1000)
    assert len(agent.validated_addresses) == 8


def test_max_addresses_one_follows_the_client():
    agent = new_agent(max_addresses=1)
    agent.receive(check(use_candidate=True), A, now=0.0)
    drain(agent)
    agent.receive(check(), B, now=1.0)
    assert agent.validated_addresses == (B,)
    assert agent.selected_address == B
    assert drain(agent) == [AddressRemoved(A, "evicted"), AddressValidated(B), SelectedAddressChanged(A, B)]


def test_replayed_check_from_another_address_is_dropped():
    agent = new_agent()
    data = check(use_candidate=True)
    assert agent.receive(data, A, now=0.0) is not None
    assert agent.receive(data, A, now=0.5) is not None  # a retransmission is answered again
    assert agent.receive(data, B, now=1.0) is None
    assert agent.stats["replayed"] == 1
    assert not agent.is_validated(B)
    assert agent.selected_address == A


def test_replay_cache_is_bounded():
    agent = new_agent()
    first = check()
    agent.receive(first, A, now=0.0)
    for i in range(IceLiteAgent.REPLAY_CACHE_SIZE):
        agent.receive(check(), A, now=0.01 * i)
    # Forgotten, so no longer detected (a documented limit of the cache).
    assert agent.receive(first, B, now=1.0) is not None


# -- credentials -------------------------------------------------------------------


def test_generate_credentials():
    ufrag, pwd = IceLiteAgent.generate_credentials()
    ice_chars = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")
    assert 4 <= len(ufrag) <= 256 and 22 <= len(pwd) <= 256
    assert set(ufrag) <= ice_chars and set(pwd) <= ice_chars
    assert len({IceLiteAgent.generate_credentials() for _ in range(100)}) == 100
    IceLiteAgent(ufrag, pwd)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("abc", LPWD), {}),  # ufrag too short
        ((LUFRAG, "short"), {}),  # password too short
        (("ab:cd", LPWD), {}),  # not ice-chars
        ((LUFRAG, LPWD + "-"), {}),
        ((LUFRAG, LPWD, RUFRAG, None), {}),  # remote ufrag without password
        ((LUFRAG, LPWD), {"consent_timeout": 0}),
        ((LUFRAG, LPWD), {"max_addresses": 0}),
        ((LUFRAG, LPWD), {"stale_after": 31.0}),
    ],
)
def test_constructor_validates(args, kwargs):
    with pytest.raises(ValueError):
        IceLiteAgent(*args, **kwargs)


def test_remote_credentials_set_later():
    agent = IceLiteAgent(LUFRAG, LPWD)
    assert agent.receive(check(use_candidate=True), A, now=0.0) is not None
    assert agent.receive(check(username=f"{LUFRAG}:strangerUfrag"), B, now=1.0) is not None
    drain(agent)
    agent.set_remote_credentials(RUFRAG, RPWD)
    assert agent.remote_ufrag == RUFRAG and agent.remote_pwd == RPWD
    assert agent.validated_addresses == (A,)
    assert drain(agent) == [AddressRemoved(B, "credentials")]
    assert agent.receive(check(username=f"{LUFRAG}:strangerUfrag"), B, now=2.0) is None
    assert agent.stats["unknown_ufrag"] == 1
    agent.set_remote_credentials(RUFRAG, RPWD)  # same again: no-op
    with pytest.raises(ValueError):
        agent.set_remote_credentials("restartUfrag", RPWD)  # ICE restart: unsupported


def test_remote_credentials_removing_the_selected_address():
    agent = IceLiteAgent(LUFRAG, LPWD)
    agent.receive(check(username=f"{LUFRAG}:strangerUfrag", use_candidate=True), A, now=0.0)
    drain(agent)
    agent.set_remote_credentials(RUFRAG, RPWD)
    assert agent.selected_address is None
    assert agent.state == "new"
    assert drain(agent) == [AddressRemoved(A, "credentials"), SelectedAddressChanged(A, None)]


def test_close():
    agent = new_agent()
    agent.receive(check(use_candidate=True), A, now=0.0)
    drain(agent)
    agent.close()
    assert agent.state == "closed"
    assert not agent.is_validated(A)
    assert agent.selected_address is None
    assert agent.get_timer() is None
    assert agent.receive(check(use_candidate=True), A, now=1.0) is None
    agent.handle_timer(100.0)
    assert agent.state == "closed"
    assert drain(agent) == []


# -- fuzz -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1600))
def test_garbage_never_raises(data):
    agent = new_agent()
    assert agent.receive(data, A, now=1.0) is None
    assert sum(agent.stats.values()) == 1
    assert agent.validated_addresses == ()


_VALID = check(use_candidate=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_checks_never_raise_and_are_never_answered(edits):
    data = bytearray(_VALID)
    for pos, value in edits:
        data[pos] = value
    agent = new_agent()
    response = agent.receive(bytes(data), A, now=1.0)
    if bytes(data) != _VALID:
        assert response is None
        assert not agent.is_validated(A)


# -- ICE restart (RFC 8445 section 9) ------------------------------------------------

NEW_LUFRAG, NEW_LPWD = "gwUfrag02", "gwPassword0123456789zzzzz"
NEW_RUFRAG, NEW_RPWD = "peerUfra2", "peerPassword0123456789xyz"
OLD_CHECK = f"{LUFRAG}:{RUFRAG}"
NEW_CHECK = f"{NEW_LUFRAG}:{NEW_RUFRAG}"


def restarted_agent() -> IceLiteAgent:
    """An agent whose peer is selected at A, then restarted with new credentials on both sides."""
    agent = new_agent()
    assert agent.receive(check(use_candidate=True), A, 1.0) is not None
    drain(agent)
    agent.restart(NEW_LUFRAG, NEW_LPWD, NEW_RUFRAG, NEW_RPWD)
    return agent


def test_restart_keeps_the_old_path_until_a_new_check():
    agent = restarted_agent()
    assert agent.restarting and agent.local_ufrags == (NEW_LUFRAG, LUFRAG)
    assert agent.restarts == 1
    assert agent.selected_address == A and agent.is_validated(A)
    # consent checks under the old credentials are still answered (media continues)
    response = agent.receive(check(OLD_CHECK, LPWD, use_candidate=True), A, 2.0)
    assert stun.authenticate(response, LPWD.encode()) is stun.Verdict.OK
    assert agent.selected_address == A and drain(agent) == []


def test_the_first_new_check_moves_media_and_retires_the_old_address():
    agent = restarted_agent()
    # the answer is signed with the new password, not the old one
    response = agent.receive(check(NEW_CHECK, NEW_LPWD), B, 2.0)
    assert stun.authenticate(response, NEW_LPWD.encode()) is stun.Verdict.OK
    assert stun.authenticate(response, LPWD.encode()) is not stun.Verdict.OK
    assert drain(agent) == [AddressRemoved(A, "restart"), AddressValidated(B), SelectedAddressChanged(A, B)]
    assert not agent.restarting and agent.local_ufrags == (NEW_LUFRAG,)
    assert not agent.is_validated(A) and agent.selected_address == B
    # the old credentials are dead now, from anywhere
    assert agent.receive(check(OLD_CHECK, LPWD, use_candidate=True), A, 2.1) is None
    assert agent.receive(check(OLD_CHECK, LPWD, use_candidate=True), B, 2.2) is None
    assert agent.stats["unknown_ufrag"] == 2
    assert agent.selected_address == B and drain(agent) == []


def test_restart_on_the_same_address_keeps_it_selected():
    agent = restarted_agent()
    assert agent.receive(check(NEW_CHECK, NEW_LPWD), A, 2.0) is not None
    assert drain(agent) == []  # nothing to remove, the selection stays
    assert agent.selected_address == A and not agent.restarting


def test_restart_refuses_mixed_and_wrong_credentials():
    agent = restarted_agent()
    # new local ufrag with the old remote ufrag, and the reverse: neither generation
    assert agent.receive(check(f"{NEW_LUFRAG}:{RUFRAG}", NEW_LPWD), B, 2.0) is None
    assert agent.receive(check(f"{LUFRAG}:{NEW_RUFRAG}", LPWD), B, 2.0) is None
    # the new ufrag with the old password
    assert agent.receive(check(NEW_CHECK, LPWD), B, 2.0) is None
    assert agent.stats["unknown_ufrag"] == 2 and agent.stats["bad_integrity"] == 1
    assert agent.restarting and agent.selected_address == A


def test_restart_argument_checks():
    agent = new_agent()
    with pytest.raises(ValueError, match="new local ufrag"):
        agent.restart(LUFRAG, NEW_LPWD, NEW_RUFRAG, NEW_RPWD)
    with pytest.raises(ValueError, match="new remote credentials"):
        agent.restart(NEW_LUFRAG, NEW_LPWD, RUFRAG, RPWD)
    with pytest.raises(ValueError):
        agent.restart(NEW_LUFRAG, "short", NEW_RUFRAG, NEW_RPWD)
    agent.restart(NEW_LUFRAG, NEW_LPWD, RUFRAG, NEW_RPWD)  # only the password changed: still a restart
    assert agent.restarting
    agent.close()
    with pytest.raises(ValueError, match="closed"):
        agent.restart("gwUfrag03", NEW_LPWD, "peerUfra3", NEW_RPWD)


def test_a_restart_of_a_restart_keeps_the_generation_carrying_media():
    agent = restarted_agent()
    agent.restart("gwUfrag03", "gwPassword0123456789third", "peerUfra3", "peerPassword0123456789thr")
    assert agent.local_ufrags == ("gwUfrag03", LUFRAG)  # the never-used middle generation is gone
    assert agent.receive(check(NEW_CHECK, NEW_LPWD), B, 2.0) is None
    assert agent.receive(check(OLD_CHECK, LPWD), A, 2.0) is not None
    assert agent.receive(check("gwUfrag03:peerUfra3", "gwPassword0123456789third", use_candidate=True), B, 2.1)
    assert agent.selected_address == B and agent.local_ufrags == ("gwUfrag03",)


def test_consent_runs_through_a_restart():
    agent = restarted_agent()  # last check at 1.0, consent_timeout 30
    assert agent.receive(check(NEW_CHECK, NEW_LPWD, use_candidate=True), B, 20.0) is not None
    run_until(agent, 45.0)
    assert agent.state is IceState.CONNECTED and agent.selected_address == B
    run_until(agent, 50.5)
    assert agent.state is IceState.FAILED

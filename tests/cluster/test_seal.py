"""Sealed cluster messages (issue #15 item 6): memberlist's format, replay, staleness, rotation, garbage."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.cluster.keys import ClusterKey, Keyring
from callsgw.cluster.seal import (
    DROP_REASONS, MAX_SEALED, NONCE_BYTES, REPLAY_WINDOW, Names, Seal, label,
)

NOW = 1_700_000_000.0
KEY = ClusterKey(bytes(range(32)))


def pair(keyring=None, **kwargs):
    keyring = keyring or Keyring(primary=KEY, names_key=b"n" * 32)
    return Seal("prod", "node-a", keyring, **kwargs), Seal("prod", "node-b", keyring, **kwargs)


def only_drop(seal, reason):
    assert {r: n for r, n in seal.drops.items() if n} == {reason: 1}


def test_the_wire_is_memberlists_encrypted_packet():
    a, b = pair()
    sealed = a.seal("placement", b"hello", NOW)
    assert sealed[0] == 1 and len(sealed) == 1 + 12 + len(sealed) - 13
    # an independent AES-GCM (the label is the additional data) opens it
    plain = AESGCM(KEY.raw).decrypt(sealed[1:13], sealed[13:], b"callsgw\0prod\0placement")
    assert plain.endswith(b"hello") and b"node-a" in plain
    opened = b.open("placement", sealed, NOW + 1)
    assert opened.body == b"hello" and opened.sender == "node-a" and opened.sequence == 1
    assert opened.sent_at == pytest.approx(NOW, abs=0.001)
    assert b"hello" not in sealed and b"node-a" not in sealed
    assert a.seal("placement", b"hello", NOW) != a.seal("placement", b"hello", NOW)  # fresh nonces


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_every_aes_size(bits):
    a, b = pair(Keyring(primary=ClusterKey(os.urandom(bits // 8))))
    assert b.open("c", a.seal("c", b"x", NOW), NOW).body == b"x"


def test_a_replay_is_dropped_and_counted():
    a, b = pair()
    sealed = a.seal("c", b"x", NOW)
    assert b.open("c", sealed, NOW) is not None
    assert b.open("c", sealed, NOW) is None
    only_drop(b, "replay")


def test_reordering_within_the_window_is_accepted_once():
    a, b = pair()
    msgs = [a.seal("c", b"%d" % i, NOW) for i in range(REPLAY_WINDOW + 10)]
    assert b.open("c", msgs[-1], NOW)
    assert all(b.open("c", m, NOW) for m in msgs[11:-1])  # older but inside the window
    assert b.open("c", msgs[0], NOW) is None  # fell out of the window: refused as a replay
    assert b.open("c", msgs[50], NOW) is None
    assert b.drops["replay"] == 2


def test_stale_and_future_messages_are_dropped():
    a, b = pair(max_age=30, max_skew=5)
    assert b.open("c", a.seal("c", b"x", NOW - 31), NOW) is None
    only_drop(b, "stale")
    assert b.open("c", a.seal("c", b"x", NOW + 6), NOW) is None
    assert b.drops["future"] == 1
    assert b.open("c", a.seal("c", b"x", NOW - 29), NOW) is not None


def test_tampering_anywhere_is_dropped():
    a, b = pair()
    sealed = a.seal("c", b"payload", NOW)
    for i in range(1, len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        assert b.open("c", bytes(bad), NOW) is None
    assert b.drops["auth"] == len(sealed) - 1
    assert b.opened == 0


def test_another_channel_or_cluster_does_not_open_it():
    a, b = pair()
    assert b.open("other", a.seal("c", b"x", NOW), NOW) is None
    other_cluster = Seal("staging", "node-b", a.keyring)
    assert other_cluster.open("c", a.seal("c", b"x", NOW), NOW) is None
    assert b.drops["auth"] == other_cluster.drops["auth"] == 1


def test_an_unknown_key_is_dropped():
    a, _ = pair()
    stranger = Seal("prod", "node-b", Keyring(primary=ClusterKey(os.urandom(32))))
    assert stranger.open("c", a.seal("c", b"x", NOW), NOW) is None
    only_drop(stranger, "auth")


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01" + bytes(NONCE_BYTES + 15), b"\x00" + bytes(40),
                                  b"\x02" + bytes(40), b"\xff" * 64, bytes(MAX_SEALED + 1)])
def test_truncated_or_garbage_is_malformed(data):
    _, b = pair()
    assert b.open("c", data, NOW) is None
    only_drop(b, "malformed")


def test_a_truncated_message_never_opens():
    a, b = pair()
    sealed = a.seal("c", b"payload", NOW)
    for n in range(len(sealed)):
        assert b.open("c", sealed[:n], NOW) is None
    assert b.drops["malformed"] + b.drops["auth"] == len(sealed)


def test_an_authentic_but_malformed_inner_header_is_counted_apart():
    _, b = pair()
    nonce = os.urandom(12)
    for plain in (b"", b"\x00", b"\x05ab", b"\x01a" + bytes(8 + 16)):  # the last has sequence 0
        sealed = b"\x01" + nonce + AESGCM(KEY.raw).encrypt(nonce, plain, label("prod", "c"))
        assert b.open("c", sealed, NOW) is None
    assert b.drops["bad_payload"] == 4


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_hypothesis_garbage_never_opens_nor_raises(data):
    _, b = pair()
    assert b.open("c", data, NOW) is None
    assert b.open_state("c", data, NOW, 10) is None
    assert sum(b.drops.values()) == 2 and set(b.drops) == set(DROP_REASONS)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.integers(0, 7), st.integers(1, 255))
def test_hypothesis_one_flipped_bit_never_opens(position, bit, _):
    a, b = pair()
    sealed = bytearray(a.seal("c", b"some body bytes", NOW))
    sealed[position % len(sealed)] ^= 1 << bit
    assert b.open("c", bytes(sealed), NOW) is None


def test_rotation_the_old_key_opens_during_its_grace_then_not():
    old, new = ClusterKey(os.urandom(32)), ClusterKey(os.urandom(32))
    before = Keyring(primary=old, names_key=b"n" * 32)
    after = Keyring(primary=new, previous=((old, NOW + 100),), activate_at=NOW + 3, names_key=b"n" * 32)
    lagging, b = Seal("prod", "node-a", before), Seal("prod", "node-b", after)
    # a node that has not loaded the new key yet still seals with the old one: b opens it
    assert b.open("c", lagging.seal("c", b"1", NOW + 1), NOW + 1) is not None
    # b itself seals with the old key until activation, so the lagging node can still read it
    assert lagging.open("c", b.seal("c", b"2", NOW + 1), NOW + 1) is not None
    # after activation b seals with the new key; the lagging node (which should have loaded it) cannot
    assert lagging.open("c", b.seal("c", b"3", NOW + 4), NOW + 4) is None
    lagging.set_keyring(after)
    assert lagging.open("c", b.seal("c", b"4", NOW + 5), NOW + 5) is not None
    # the old key opens until the grace ends
    old_message = Seal("prod", "node-c", before).seal("c", b"5", NOW + 99.5)
    assert b.open("c", old_message, NOW + 99.5) is not None
    late = Seal("prod", "node-d", before).seal("c", b"6", NOW + 100)
    assert b.open("c", late, NOW + 100) is None and b.drops["auth"] == 1


def test_a_restarted_sender_is_not_mistaken_for_a_replay():
    keyring = Keyring(primary=KEY)
    b = Seal("prod", "node-b", keyring)
    first = Seal("prod", "node-a", keyring)
    assert b.open("c", first.seal("c", b"x", NOW), NOW)
    restarted = Seal("prod", "node-a", keyring)  # new boot id, sequence from 1 again
    assert b.open("c", restarted.seal("c", b"y", NOW + 1), NOW + 1)


def test_own_echoes_are_ignored_not_counted_as_drops():
    a, _ = pair()
    assert a.open("c", a.seal("c", b"x", NOW), NOW) is None
    assert a.echoes == 1 and sum(a.drops.values()) == 0


def test_the_sender_table_is_bounded_and_forgets_only_stale_senders():
    keyring = Keyring(primary=KEY)
    b = Seal("prod", "node-b", keyring, max_senders=4, max_age=30, max_skew=5)
    senders = [Seal("prod", f"n{i}", keyring) for i in range(5)]
    for s in senders[:4]:
        assert b.open("c", s.seal("c", b"x", NOW), NOW)
    assert b.open("c", senders[4].seal("c", b"x", NOW), NOW) is None
    only_drop(b, "senders_full")
    # 36 s later every message the first four could guard against is stale: they are forgotten
    assert b.open("c", senders[4].seal("c", b"x", NOW + 36), NOW + 36)
    assert b.sender_count == 1


def test_state_entries_may_be_read_again_but_not_when_too_old():
    a, b = pair()
    entry = a.seal("node:a", b"state", NOW)
    assert b.open_state("node:a", entry, NOW + 1, 6).body == b"state"
    assert b.open_state("node:a", entry, NOW + 2, 6).body == b"state"
    assert b.open_state("node:a", entry, NOW + 7, 6) is None and b.drops["stale"] == 1


def test_names_hide_what_they_name():
    names = Names(b"k" * 32, "prod")
    call = names.name("call", "standup-2024")
    assert "standup" not in call and call.startswith("cgw:") and call == names.name("call", "standup-2024")
    assert call != names.name("call", "standup-2025") != Names(b"k" * 32, "staging").name("call", "standup-2024")
    assert call != Names(b"j" * 32, "prod").name("call", "standup-2024")
    assert "prod" not in names.fixed("nodes")

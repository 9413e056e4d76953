"""The Systems table, the ClusterEncryptionKey keyring and the shared API secret (issue #15 items 2 and 5)."""

from __future__ import annotations

import base64
import json
import threading

import pytest

import callsgw.cli as cli
from callsgw.apisecrets import API_SECRET_ROW, SystemsApiSecrets
from callsgw.cluster import keys
from callsgw.cluster.keys import ClusterKey, ClusterKeyError
from callsgw.datadir import DataDirError
from callsgw.security.db import open_store
from callsgw.security.migrations import LATEST


def test_the_systems_table_is_a_migration(systems_store):
    assert systems_store.schema_version() == LATEST >= 4
    assert systems_store.system_value("Nothing") is None


def test_insert_if_absent_keeps_the_first_value(systems_store):
    assert systems_store.system_insert_if_absent("Row", "first") == "first"
    assert systems_store.system_insert_if_absent("Row", "second") == "first"
    assert systems_store.system_value("Row") == "first"
    with pytest.raises(ValueError):
        systems_store.system_insert_if_absent("x" * 65, "v")
    with pytest.raises(ValueError):
        systems_store.system_insert_if_absent("Row2", "v" * (64 * 1024 + 1))


def test_racing_nodes_all_end_up_with_the_first_key(pg_url, tmp_path):
    """Eight 'nodes' (own connections, own threads) make the key at once: one value wins everywhere."""
    stores = [open_store(pg_url, tmp_path) for _ in range(8)]
    results: list = [None] * len(stores)
    barrier = threading.Barrier(len(stores))

    def node(i):
        barrier.wait()
        results[i] = keys.ensure_keyring(stores[i])

    threads = [threading.Thread(target=node, args=(i,)) for i in range(len(stores))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(r is not None for r in results)
        assert len({r.primary.raw for r in results}) == 1
        assert len({r.names_key for r in results}) == 1
        assert results[0].primary.bits == 256
    finally:
        for s in stores:
            s.close()


def test_the_first_node_writes_32_random_bytes_in_base64(systems_store):
    ring = keys.ensure_keyring(systems_store)
    text = systems_store.system_value(keys.KEY_ROW)
    assert len(base64.b64decode(text, validate=True)) == 32
    assert ring.primary.algorithm == "AES-256" and ring.previous == ()
    assert len(ring.names_key) == 32 and ring.names_key != ring.primary.raw
    assert keys.ensure_keyring(systems_store).primary == ring.primary  # later starts read the same


@pytest.mark.parametrize("size,bits", [(16, 128), (24, 192), (32, 256)])
def test_an_operator_key_of_16_24_or_32_bytes_selects_the_aes_size(systems_store, size, bits):
    raw = bytes(range(size))
    systems_store.system_insert_if_absent(keys.KEY_ROW, base64.b64encode(raw).decode() + "\n")
    ring = keys.ensure_keyring(systems_store)
    assert ring.primary.raw == raw  # used as is: never hashed or padded
    assert ring.primary.bits == bits and ring.sealing_key(0).raw == raw


BAD_VALUES = {
    "not base64": "this is not base64!",
    "url-safe alphabet": base64.urlsafe_b64encode(b"\xfb\xff" * 8).decode(),
    "missing padding": base64.b64encode(bytes(16)).decode().rstrip("="),
    "empty": "",
    "blank": "   ",
    "15 bytes": base64.b64encode(bytes(15)).decode(),
    "17 bytes": base64.b64encode(bytes(17)).decode(),
    "31 bytes": base64.b64encode(bytes(31)).decode(),
    "33 bytes": base64.b64encode(bytes(33)).decode(),
    "64 bytes": base64.b64encode(bytes(64)).decode(),
    "a passphrase": "correct horse battery staple",
    "hex of 32 bytes": bytes(range(32)).hex(),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_a_bad_operator_key_stops_the_node_naming_the_row_and_the_lengths(systems_store, case):
    value = BAD_VALUES[case]
    systems_store.system_insert_if_absent(keys.KEY_ROW, value)
    with pytest.raises(ClusterKeyError) as refused:
        keys.ensure_keyring(systems_store)
    message = str(refused.value)
    assert "ClusterEncryptionKey" in message and "16, 24 or 32 bytes" in message
    assert (value.strip() not in message) or not value.strip()  # the value is never repeated
    assert systems_store.system_value(keys.KEY_ROW) == value  # and never "repaired"


def test_keys_never_show_themselves():
    key = ClusterKey(bytes(range(32)))
    for text in (repr(key), str(key), repr(keys.Keyring(primary=key))):
        assert key.to_text() not in text and key.raw.hex() not in text
        assert key.fingerprint in text or "Keyring" in text
    assert len(key.fingerprint.replace(":", "")) == 16
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(key)


def test_rotation_keeps_the_previous_key_for_its_grace_period(systems_store):
    first = keys.ensure_keyring(systems_store).primary
    ring = keys.rotate_keyring(systems_store, grace=100, now=1000.0)
    assert ring.primary != first
    assert ring.opening_keys(1050.0) == (ring.primary, first)
    assert ring.opening_keys(1100.0) == (ring.primary,)  # grace over
    # the new key seals only once every node has loaded it
    assert ring.sealing_key(1000.0) == first
    assert ring.sealing_key(1000.0 + keys.ACTIVATION_DELAY) == ring.primary
    assert ring.names_key == keys.ensure_keyring(systems_store).names_key  # Redis names survive rotation
    again = keys.rotate_keyring(systems_store, grace=100, now=1010.0)
    assert again.opening_keys(1011.0) == (again.primary, ring.primary, first)


def test_rotation_with_no_grace_drops_the_old_key_at_once(systems_store):
    first = keys.ensure_keyring(systems_store).primary
    ring = keys.rotate_keyring(systems_store, grace=0, now=1000.0)
    assert ring.opening_keys(1000.0) == (ring.primary,) and ring.sealing_key(1000.0) == ring.primary != first


def test_two_rotations_at_once_lose_no_key(pg_url, tmp_path):
    stores = [open_store(pg_url, tmp_path) for _ in range(4)]
    try:
        first = keys.ensure_keyring(stores[0]).primary
        new = [ClusterKey.generate() for _ in stores]
        barrier = threading.Barrier(len(stores))

        def rotate(i):
            barrier.wait()
            keys.rotate_keyring(stores[i], grace=600, now=1000.0 + i, new_key=new[i])

        threads = [threading.Thread(target=rotate, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        ring = keys.read_keyring(stores[0])
        known = set(ring.opening_keys(1100.0))
        assert known == {first, *new}  # serialised: every rotation's key is primary or previous
    finally:
        for s in stores:
            s.close()


def test_a_corrupt_keyring_row_is_refused_by_name(systems_store):
    keys.ensure_keyring(systems_store)
    systems_store.system_insert_if_absent(keys.KEYRING_ROW, json.dumps({"previous": [{"key": "AAAA", "until": 5}]}))
    with pytest.raises(ClusterKeyError, match="ClusterEncryptionKeyring"):
        keys.read_keyring(systems_store)


# -- the command line ------------------------------------------------------------------------------


def _db_flags(store) -> list[str]:
    flags = ["--data-dir", str(store.data_dir)]
    return flags + (["--database", store.url] if store.url else [])


def test_cluster_key_status_shows_size_and_fingerprint_never_the_key(systems_store, capsys):
    assert cli.main(["cluster-key", "status", *_db_flags(systems_store)]) == 1  # no key yet
    assert "no ClusterEncryptionKey yet" in capsys.readouterr().err
    ring = keys.ensure_keyring(systems_store)
    assert cli.main(["cluster-key", "status", *_db_flags(systems_store)]) == 0
    out = capsys.readouterr()
    assert "AES-256" in out.out and ring.primary.fingerprint in out.out
    assert ring.primary.to_text() not in out.out + out.err and ring.primary.raw.hex() not in out.out + out.err
    assert cli.main(["cluster-key", "rotate", "--grace", "60", *_db_flags(systems_store)]) == 0
    capsys.readouterr()
    assert cli.main(["cluster-key", "status", "--json", *_db_flags(systems_store)]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    rotated = keys.read_keyring(systems_store)
    assert doc["fingerprint"] == rotated.primary.fingerprint != ring.primary.fingerprint
    assert [p["fingerprint"] for p in doc["previous"]] == [ring.primary.fingerprint]
    for key in (ring.primary, rotated.primary):
        assert key.to_text() not in out and key.raw.hex() not in out


# -- the shared API secret ---------------------------------------------------------------------------


def test_the_api_secret_row_is_shared_by_every_node(systems_store, tmp_path):
    one = SystemsApiSecrets(systems_store)
    other_store = open_store(systems_store.url, systems_store.data_dir)
    try:
        two = SystemsApiSecrets(other_store)
        assert one.current() == two.current() and len(one.current()) == 32
        assert len(base64.b64decode(systems_store.system_value(API_SECRET_ROW), validate=True)) == 32
        two.rotate(grace=100, now=1000.0)
        assert one.refresh() is True and one.refresh() is False
        assert one.current() == two.current()
        assert len(one.verification_keys(1050.0)) == 2 and len(one.verification_keys(1101.0)) == 1
        assert "secret" not in repr(one).lower().replace("systemsapisecrets", "")
    finally:
        other_store.close()


def test_a_corrupt_api_secret_row_is_refused(systems_store):
    systems_store.system_insert_if_absent(API_SECRET_ROW, base64.b64encode(bytes(16)).decode())
    with pytest.raises(DataDirError, match="ApiSecret"):
        SystemsApiSecrets(systems_store)


def test_callsgw_token_signs_with_the_shared_secret_in_cluster_mode(pg_url, tmp_path, capsys):
    from callsgw.signaling import tokens

    flags = ["--cluster", "redis://127.0.0.1:1/0", "--database", pg_url]
    assert cli.main(["token", "--call", "c1", "--name", "ann", "--data-dir", str(tmp_path / "a"), *flags]) == 0
    token = capsys.readouterr().out.strip()
    store = open_store(pg_url, tmp_path)
    try:
        secret = SystemsApiSecrets(store).current()
    finally:
        store.close()
    assert tokens.verify([secret], token, now=__import__("time").time()).call == "c1"
    # the data directory's own secret is not the one used
    from callsgw.datadir import DataDir

    assert DataDir(tmp_path / "a").api_secret() != secret
    assert cli.main(["api-secret", "rotate", "--grace", "0", "--data-dir", str(tmp_path / "a"), *flags]) == 0
    store = open_store(pg_url, tmp_path)
    try:
        assert SystemsApiSecrets(store).current() != secret
    finally:
        store.close()

"""API secret rotation with a grace period (callsgw.apisecrets)."""

from __future__ import annotations

import os

import pytest

from callsgw.apisecrets import PREVIOUS_FILE, ApiSecrets
from callsgw.datadir import DataDir, DataDirError
from callsgw.signaling import tokens

NOW = 1_800_000_000.0


def test_rotation_keeps_the_old_secret_for_the_grace_period_only(tmp_path):
    keys = ApiSecrets(DataDir(tmp_path))
    old_token = tokens.mint(keys.current(), call="c", name="n", now=NOW)
    old = keys.current()
    keys.rotate(grace=600, now=NOW)
    assert keys.current() != old and len(keys.current()) == 32
    assert tokens.verify(keys.verification_keys(NOW + 599), old_token, now=NOW + 1).call == "c"
    with pytest.raises(tokens.InvalidToken, match="signature"):
        tokens.verify(keys.verification_keys(NOW + 601), old_token, now=NOW + 1)
    assert keys.previous_until() == NOW + 600
    assert (os.stat(tmp_path / PREVIOUS_FILE).st_mode & 0o777) == 0o600


def test_rotation_without_grace_cuts_old_tokens_at_once(tmp_path):
    keys = ApiSecrets(DataDir(tmp_path))
    old_token = tokens.mint(keys.current(), call="c", name="n", now=NOW)
    keys.rotate(grace=600, now=NOW)
    keys.rotate(grace=0, now=NOW)
    assert keys.verification_keys(NOW) == (keys.current(),)
    assert keys.previous_until() is None and not (tmp_path / PREVIOUS_FILE).exists()
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(keys.verification_keys(NOW), old_token, now=NOW)


def test_a_running_gateway_sees_a_rotation_made_by_another_process(tmp_path):
    gateway = ApiSecrets(DataDir(tmp_path))
    before = gateway.current()
    assert gateway.refresh() is False
    ApiSecrets(DataDir(tmp_path)).rotate(grace=60, now=NOW)  # `callsgw api-secret rotate`
    assert gateway.refresh() is True
    assert gateway.current() != before and gateway.verification_keys(NOW) == (gateway.current(), before)


@pytest.mark.parametrize("content", [b"", b"garbage", b"123 abcd", b"-5 " + b"00" * 32, b"\xff\xfe"])
def test_a_corrupt_previous_file_is_a_clear_refusal(tmp_path, content):
    DataDir(tmp_path).write_private_file(PREVIOUS_FILE, content)
    with pytest.raises(DataDirError, match="api_secret.previous is corrupt"):
        ApiSecrets(DataDir(tmp_path))


def test_negative_grace_is_refused_and_repr_shows_no_key(tmp_path):
    keys = ApiSecrets(DataDir(tmp_path))
    with pytest.raises(ValueError):
        keys.rotate(grace=-1, now=NOW)
    assert keys.current().hex() not in repr(keys) and "ApiSecrets" in repr(keys)

"""TURN REST API credentials (callsgw/turn.py) and the TURN settings (issue #18 deliverable 2)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from callsgw.config import Config, ConfigError, load_config
from callsgw.turn import TurnConfig, parse_turn_urls, turn_credentials


def test_credentials_are_coturns_use_auth_secret_form():
    creds = turn_credentials(b"north", ("turn:turn.example.com:3478",), "alice", 1_700_000_000.4, 3600)
    assert creds["username"] == "1700003600:alice" and creds["ttl"] == 3600
    # base64(HMAC-SHA1(secret, username)), computed here independently
    want = base64.b64encode(hmac.new(b"north", b"1700003600:alice", hashlib.sha1).digest()).decode()
    assert creds["credential"] == want
    assert creds["urls"] == ["turn:turn.example.com:3478"]
    with pytest.raises(ValueError):
        turn_credentials(b"north", (), "a:b", 0, 60)


def test_the_secret_stays_out_of_repr():
    config = TurnConfig(("turn:127.0.0.1",), b"very-secret-value-123")
    assert "very-secret" not in repr(config)
    gw = Config(turn_url=("turn:127.0.0.1",), turn_secret="very-secret-value-123")
    assert "very-secret" not in repr(gw)
    assert gw.as_dict()["turn_secret"] == "(set)"


@pytest.mark.parametrize("url", ["turn:127.0.0.1", "turn:turn.example.com:3478?transport=tcp",
                                 "turns:turn.example.com:5349", "turn:[2001:db8::1]:3478?transport=udp"])
def test_turn_urls_accepted(url):
    assert parse_turn_urls([url]) == (url,)


@pytest.mark.parametrize("url", ["stun:127.0.0.1", "turn:", "turn:host:99999", "turn:host?transport=sctp",
                                 "https://turn.example.com", "turn:host name"])
def test_turn_urls_refused(url):
    with pytest.raises(ValueError):
        parse_turn_urls([url])


def test_turn_settings_go_together_and_the_secret_has_a_minimum_length():
    env = {"CALLSGW_TURN_URL": "turn:127.0.0.1:3478,turns:turn.example.com", "CALLSGW_TURN_SECRET": "x" * 16,
           "CALLSGW_TURN_TTL": "3600"}
    config = load_config({}, env)
    assert config.turn_url == ("turn:127.0.0.1:3478", "turns:turn.example.com") and config.turn_ttl == 3600
    with pytest.raises(ConfigError, match="turn_url"):
        load_config({}, {"CALLSGW_TURN_URL": "turn:127.0.0.1"})
    with pytest.raises(ConfigError, match="turn_secret"):
        load_config({}, {"CALLSGW_TURN_SECRET": "x" * 16})
    with pytest.raises(ConfigError, match="at least 16") as info:
        load_config({}, {"CALLSGW_TURN_URL": "turn:127.0.0.1", "CALLSGW_TURN_SECRET": "short-secret"})
    assert "short-secret" not in str(info.value)
    with pytest.raises(ConfigError, match="turn_url"):
        load_config({}, {"CALLSGW_TURN_URL": "stun:127.0.0.1", "CALLSGW_TURN_SECRET": "x" * 16})

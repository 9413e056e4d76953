"""Access tokens (callsgw.signaling.tokens): HS256 only, every refusal with its close code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from callsgw.signaling.tokens import (
    MAX_TOKEN_LENGTH,
    PERMISSIONS,
    Claims,
    ExpiredToken,
    InvalidToken,
    MissingPermission,
    RevokedToken,
    TokenError,
    WrongCall,
    mint,
    verify,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def craft(header: dict, payload: dict, secret: bytes = SECRET, *, digest=hashlib.sha256) -> str:
    """A JWT built by hand, so the tests do not rely on the code under test to make bad ones."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    return signing_input + "." + b64(signature)


def claims(**overrides) -> dict:
    payload = {
        "call": "standup",
        "sub": "u-1",
        "name": "alice",
        "perm": list(PERMISSIONS),
        "iat": int(NOW),
        "exp": int(NOW) + 600,
    }
    payload.update(overrides)
    return payload


HS256 = {"alg": "HS256", "typ": "JWT"}


def expect(error: type[TokenError], close_code: int, token, **kwargs) -> TokenError:
    kwargs.setdefault("now", NOW)
    with pytest.raises(error) as info:
        verify(SECRET, token, **kwargs)
    assert type(info.value) is error
    assert info.value.close_code == close_code
    if isinstance(token, str) and len(token) > 20:
        assert token not in str(info.value)
        for part in token.split("."):
            assert len(part) < 8 or part not in str(info.value)
    assert SECRET.hex() not in str(info.value)
    return info.value


# -- round trip -------------------------------------------------------------------------


def test_round_trip():
    token = mint(SECRET, call="standup", name="alice", sub="u-1", ttl=600, now=NOW)
    result = verify(SECRET, token, call="standup", require=PERMISSIONS, now=NOW + 1)
    assert result == Claims(
        call="standup", sub="u-1", name="alice", perms=frozenset(PERMISSIONS),
        exp=NOW + 600, iat=NOW, jti=result.jti,
    )
    assert len(result.jti) == 16
    assert result.has("publish_voice") and result.has("publish_screen")


def test_claims_follow_the_protocol_document():
    token = mint(SECRET, call="c.1_x-y", name="Zoë Ω", sub="u-1", perms=["publish_voice"], ttl=30, now=NOW)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    jti = payload.pop("jti")
    assert payload == {
        "call": "c.1_x-y", "sub": "u-1", "name": "Zoë Ω", "perm": ["publish_voice"],
        "iat": int(NOW), "exp": int(NOW) + 30,
    }
    assert isinstance(jti, str) and len(jti) == 16


def test_sub_defaults_to_a_random_id():
    a = verify(SECRET, mint(SECRET, call="c", name="n", now=NOW), now=NOW)
    b = verify(SECRET, mint(SECRET, call="c", name="n", now=NOW), now=NOW)
    assert a.sub != b.sub and len(a.sub) >= 16


def test_hand_crafted_token_is_accepted():
    # proves that craft() makes valid tokens, so the negative cases below test one thing each
    assert verify(SECRET, craft(HS256, claims()), now=NOW).name == "alice"


def test_no_permissions_is_a_valid_token_without_publish_rights():
    token = mint(SECRET, call="c", name="listener", perms=(), now=NOW)
    result = verify(SECRET, token, now=NOW)
    assert result.perms == frozenset() and not result.has("publish_voice")


# -- refusals ---------------------------------------------------------------------------


def test_expired():
    token = mint(SECRET, call="standup", name="alice", ttl=60, now=NOW)
    verify(SECRET, token, now=NOW + 59)
    err = expect(ExpiredToken, 4002, token, now=NOW + 60)
    assert err.code == "token_expired"
    expect(ExpiredToken, 4002, token, now=NOW + 10_000)


def test_forged_with_another_secret():
    token = mint(OTHER_SECRET, call="standup", name="alice", now=NOW)
    err = expect(InvalidToken, 4001, token)
    assert "signature" in str(err) and err.code == "invalid_token"


def test_forged_and_expired_is_reported_as_forged():
    token = mint(OTHER_SECRET, call="standup", name="alice", ttl=1, now=NOW - 100)
    expect(InvalidToken, 4001, token)


def test_alg_none():
    unsigned = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims()).encode()) + "."
    err = expect(InvalidToken, 4001, unsigned)
    assert "'none'" in str(err) and "HS256" in str(err)
    # "None"/"NONE" spellings are just as unwelcome
    for alg in ("None", "NONE", "nOnE"):
        expect(InvalidToken, 4001, b64(json.dumps({"alg": alg}).encode()) + "." + b64(json.dumps(claims()).encode()) + ".")


def test_alg_hs512_header():
    err = expect(InvalidToken, 4001, craft({"alg": "HS512", "typ": "JWT"}, claims(), digest=hashlib.sha512))
    assert "'HS512'" in str(err) and "only HS256" in str(err)
    # a header that lies about the algorithm of an HS256 signature
    expect(InvalidToken, 4001, craft({"alg": "HS512", "typ": "JWT"}, claims()))


def test_alg_rs256_header():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), key, algorithm="RS256")
    err = expect(InvalidToken, 4001, token)
    assert "RS256" in str(err)
    # the classic key-confusion attack: RS256 header, HMAC keyed with a public key
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expect(InvalidToken, 4001, craft({"alg": "RS256", "typ": "JWT"}, claims(), public_pem))


def test_header_without_alg_or_with_crit():
    expect(InvalidToken, 4001, craft({"typ": "JWT"}, claims()))
    expect(InvalidToken, 4001, craft({"alg": "HS256", "crit": ["exp"]}, claims()))


def test_tampered_payload():
    token = mint(SECRET, call="standup", name="alice", perms=["publish_voice"], now=NOW)
    header, _, signature = token.split(".")
    forged_payload = b64(json.dumps(claims(perm=list(PERMISSIONS))).encode())
    expect(InvalidToken, 4001, f"{header}.{forged_payload}.{signature}")


def test_tampered_signature():
    token = mint(SECRET, call="standup", name="alice", now=NOW)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    expect(InvalidToken, 4001, flipped)


def test_other_call():
    token = mint(SECRET, call="standup", name="alice", now=NOW)
    err = expect(WrongCall, 4003, token, call="board-meeting")
    assert err.code == "forbidden" and "another call" in str(err)
    verify(SECRET, token, call="standup", now=NOW)


def test_missing_permission():
    token = mint(SECRET, call="standup", name="alice", perms=["publish_voice"], now=NOW)
    verify(SECRET, token, require=["publish_voice"], now=NOW)
    err = expect(MissingPermission, 4003, token, require=["publish_voice", "publish_screen"])
    assert err.permission == "publish_screen" and "publish_screen" in str(err) and err.code == "forbidden"


def test_oversize_token():
    big = craft(HS256, claims(name="a" * 64, sub="s" * 128, call="c" * 128, pad="x" * MAX_TOKEN_LENGTH))
    assert len(big) > MAX_TOKEN_LENGTH
    err = expect(InvalidToken, 4001, big)
    assert "longer" in str(err)


@pytest.mark.parametrize(
    "overrides",
    [
        {"call": "has space"},
        {"call": "c" * 129},
        {"call": ""},
        {"call": 7},
        {"name": "n" * 65},
        {"name": ""},
        {"name": "   "},
        {"name": "bell\x07"},
        {"name": ["alice"]},
        {"sub": "s" * 129},
        {"sub": ""},
        {"sub": 1},
        {"perm": "publish_voice"},
        {"perm": ["publish_voice", "publish_video"]},
        {"perm": [1]},
        {"exp": "soon"},
        {"exp": True},
        {"exp": 10**400},
        {"iat": None},
        {"exp": int(NOW) - 10, "iat": int(NOW)},
        {"iat": int(NOW) + 3600, "exp": int(NOW) + 7200},
    ],
)
def test_ill_typed_or_absurd_claims(overrides):
    expect(InvalidToken, 4001, craft(HS256, claims(**overrides)))


@pytest.mark.parametrize("claim", ["call", "sub", "name", "perm", "exp", "iat"])
def test_missing_claims(claim):
    payload = claims()
    del payload[claim]
    err = expect(InvalidToken, 4001, craft(HS256, payload))
    assert claim in str(err)


def test_payload_not_an_object():
    signing_input = b64(json.dumps(HS256).encode()) + "." + b64(b"[1, 2]")
    signature = b64(hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest())
    expect(InvalidToken, 4001, signing_input + "." + signature)


@pytest.mark.parametrize(
    "garbage",
    ["", ".", "..", "a.b.c", "not a token", "a.b", "a.b.c.d", "é.é.é", "eyJhbGciOiJIUzI1NiJ9..", None, 42, b"a.b.c"],
)
def test_garbage(garbage):
    expect(InvalidToken, 4001, garbage)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b64(b) + "." + b64(b[::-1]) + "." + b64(b[:7]))))
def test_garbage_never_raises_anything_but_token_error(text):
    with pytest.raises(TokenError):
        verify(SECRET, text, call="standup", require=PERMISSIONS, now=NOW)


@settings(max_examples=200, deadline=None)
@given(
    header=st.dictionaries(st.sampled_from(["alg", "typ", "kid", "crit"]),
                           st.one_of(st.sampled_from(["HS256", "none", "RS256", "JWT"]), st.integers(), st.none())),
    payload=st.dictionaries(
        st.sampled_from(["call", "sub", "name", "perm", "exp", "iat", "x"]),
        st.one_of(st.text(max_size=80), st.integers(), st.floats(), st.booleans(), st.none(),
                  st.lists(st.sampled_from([*PERMISSIONS, "root", 3]), max_size=4)),
    ),
)
def test_signed_structured_garbage_never_raises_anything_but_token_error(header, payload):
    token = craft(header, payload)
    try:
        result = verify(SECRET, token, now=NOW)
    except TokenError:
        return
    assert isinstance(result, Claims)  # only a fully valid token gets through
    assert header.get("alg") == "HS256"


# -- minting arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"call": "bad call"}, "call id"),
        ({"call": "c" * 129}, "call id"),
        ({"name": ""}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"sub": "has space"}, "sub"),
        ({"perms": ["admin"]}, "unknown permission"),
        ({"perms": "publish_voice"}, "collection"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
    ],
)
def test_mint_refuses_bad_arguments(kwargs, match):
    args = {"call": "c", "name": "n", **kwargs}
    with pytest.raises(ValueError, match=match):
        mint(SECRET, **args)


def test_short_secret_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        mint(b"short", call="c", name="n")
    with pytest.raises(ValueError, match="32 bytes"):
        verify(b"short", "a.b.c")


def test_unknown_required_permission_is_a_programming_error():
    token = mint(SECRET, call="c", name="n", now=NOW)
    with pytest.raises(ValueError, match="unknown permission") as info:
        verify(SECRET, token, require=["publish_video"], now=NOW)
    assert not isinstance(info.value, TokenError)


# -- lifetime bound, several keys, revocation --------------------------------------------


def test_lifetime_above_max_ttl_is_refused():
    long_lived = mint(SECRET, call="c", name="n", ttl=3650 * 86400, now=NOW)
    with pytest.raises(InvalidToken, match="max_token_ttl"):
        verify(SECRET, long_lived, now=NOW + 1, max_ttl=86400)
    day = mint(SECRET, call="c", name="n", ttl=86400, now=NOW)
    assert verify(SECRET, day, now=NOW + 1, max_ttl=86400).call == "c"
    assert verify(SECRET, long_lived, now=NOW + 1).call == "c"  # no bound: not checked


def test_any_of_several_keys_verifies_and_none_else():
    old, new, other = SECRET, b"n" * 32, b"o" * 32
    token = mint(old, call="c", name="n", now=NOW)
    assert verify([new, old], token, now=NOW).call == "c"
    with pytest.raises(InvalidToken, match="signature"):
        verify([new, other], token, now=NOW)
    with pytest.raises(ValueError):
        verify([], token, now=NOW)


def test_revoked_jti_is_refused_and_only_that_one():
    a, b = mint(SECRET, call="c", name="a", now=NOW), mint(SECRET, call="c", name="b", now=NOW)
    jti_a = verify(SECRET, a, now=NOW).jti
    deny = {jti_a}.__contains__
    with pytest.raises(RevokedToken) as refused:
        verify(SECRET, a, now=NOW, revoked=deny)
    assert refused.value.close_code == 4001
    assert verify(SECRET, b, now=NOW, revoked=deny).name == "b"


def test_a_token_without_jti_still_verifies_and_a_bad_jti_is_refused():
    payload = {"call": "c", "sub": "s", "name": "n", "perm": [], "iat": int(NOW), "exp": int(NOW) + 60}
    legacy = jwt.encode(payload, SECRET, algorithm="HS256")
    assert verify(SECRET, legacy, now=NOW, revoked=lambda j: True).jti is None
    bad = jwt.encode({**payload, "jti": 5}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="jti"):
        verify(SECRET, bad, now=NOW)

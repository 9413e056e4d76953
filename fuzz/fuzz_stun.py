"""STUN (RFC 8489) as a peer sends it: callsgw.wire.stun parse, integrity and fingerprint checks.

Documented: :func:`parse` raises only ``StunError`` (``FingerprintError`` is one); ``authenticate``,
``username_of`` and ``ufrags`` never raise; ``verify`` returns a bool. A Binding request that
parses is answered with :func:`binding_success` / :func:`binding_error`, and the answers must
parse and verify under the same key.
"""

from __future__ import annotations

from callsgw.wire import stun

KEY = b"fuzz-ice-password-0123456789"  # the key the corpus's signed checks use
ADDR = ("192.0.2.7", 50000)


def TestOneInput(data: bytes) -> None:
    verdict = stun.authenticate(data, KEY)
    assert isinstance(verdict, stun.Verdict)
    username = stun.username_of(data)
    assert username is None or isinstance(username, str)
    stun.ufrags(data)
    try:
        msg = stun.parse(data)
    except stun.StunError:
        return
    assert verdict is not stun.Verdict.MALFORMED, "parse accepted what authenticate calls malformed"
    ok = stun.verify(data, msg, KEY)
    assert ok is (verdict is stun.Verdict.OK)
    stun.ufrags(msg)
    if msg.message_class == stun.Class.REQUEST and msg.message_method == stun.Method.BINDING and len(
        msg.transaction_id
    ) == 12:
        for reply in (stun.binding_success(msg, ADDR, KEY), stun.binding_error(msg, 487, "Role Conflict", KEY)):
            answered = stun.parse(reply)
            assert stun.verify(reply, answered, KEY)
            assert answered.transaction_id == msg.transaction_id

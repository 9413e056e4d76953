"""The client's negotiation core (callsgw.client.negotiation) receiving what a gateway sends.

Documented: ``ClientNegotiation.receive`` and ``resumed`` never raise, whatever the message;
they return the messages to send, each a dict with a ``type``. The core is joined once against
the real ``GatewayCore`` (``tests/signaling/pump.py``, as ``tests/unit/test_client_negotiation.py``
does) and deep-copied per input, so each input starts from a joined session.

Input: JSON text of one message (or a list of messages, applied in order). Input that is not JSON
is taken as the SDP of a gateway ``offer`` and then of an ``answer`` to an own offer. The
corpus's descriptions carry the placeholder transport of ``fuzz_sdp_offer.LOCAL``; it is swapped
for the joined session's (ICE credentials, fingerprint), so that offers get past the
same-transport check to the answer logic.
"""

from __future__ import annotations

import copy
import json

from callsgw.client.negotiation import ClientNegotiation
from fuzz.fuzz_sdp_offer import LOCAL
from tests.signaling.pump import Pump  # imported here, under atheris' instrumentation with the rest

_template: list[ClientNegotiation] = []


def joined_core() -> ClientNegotiation:
    if not _template:
        pump = Pump(policy="rollback")
        ann = pump.open("ann")
        pump.drain()
        while ann.neg.next_event() is not None:
            pass
        _template.append(ann.neg)
    return copy.deepcopy(_template[0])


def _same_transport(text: str, neg: ClientNegotiation) -> str:
    remote = neg.remote
    if remote is None:
        return text
    return (
        text.replace(f"ice-ufrag:{LOCAL.ice_ufrag}", f"ice-ufrag:{remote.ice_ufrag}")
        .replace(f"ice-pwd:{LOCAL.ice_pwd}", f"ice-pwd:{remote.ice_pwd}")
        .replace(LOCAL.fingerprint, remote.fingerprint)
    )


def _check(out) -> None:
    assert isinstance(out, list), out
    assert all(isinstance(m, dict) and isinstance(m.get("type"), str) for m in out), out


def _apply(neg: ClientNegotiation, msg, now: float) -> None:
    if not isinstance(msg, dict):
        msg = {"type": "nonsense", "value": msg}
    if isinstance(msg.get("sdp"), str):
        msg = {**msg, "sdp": _same_transport(msg["sdp"], neg)}
    if msg.get("type") == "resumed":
        _check(neg.resumed(msg, now))
    else:
        _check(neg.receive(msg, now))
    while neg.next_event() is not None:
        pass


def TestOneInput(data: bytes) -> None:
    neg = joined_core()
    text = data.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        _apply(neg, {"type": "offer", "id": 7, "sdp": text}, 1.0)
        neg = joined_core()
        sent = neg.want_screen(True, 1.0)
        offer_id = next((m.get("id") for m in sent if m.get("type") == "offer"), 1)
        _apply(neg, {"type": "answer", "id": offer_id, "sdp": text}, 2.0)
        return
    messages = parsed if isinstance(parsed, list) else [parsed]
    for i, msg in enumerate(messages[:16]):
        _apply(neg, msg, 1.0 + i)
    neg.handle_timer(1000.0)
    neg.renegotiate(1001.0)

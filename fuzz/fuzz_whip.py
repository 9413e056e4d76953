"""The WHIP/WHEP request checks (callsgw.signaling.whip): the head parser, the route and the body checks.

Documented: whatever a peer sends as a request head and body, the checks either pass or raise a
``Problem`` (an HTTP status with a problem-details body), never another exception.
"""

from __future__ import annotations

from callsgw.signaling import whip


def TestOneInput(data: bytes) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        request = whip.parse_head(head)
        whip.route(request.method, request.path)
        whip.content_length(request.fields)
        whip.offer_text(request.fields, body)
        whip.bearer_token(request.fields)
    except whip.Problem as problem:
        assert 400 <= problem.status < 600, problem.status
        problem.body()

"""Keep secrets out of logs that third-party libraries write.

websockets logs at DEBUG every frame (``"< %s"`` / ``"> %s"`` with the
frame's text: the token of a `join`), every HTTP header (``Authorization:
Bearer <admin key>``) and every request line (a join link's ``?token=``).
The filter installed here drops frame traces and credential headers and cuts
query strings off request lines, on the server and client loggers alike,
whatever level the operator chooses; websockets' other DEBUG lines stay.
"""

from __future__ import annotations

import logging

_FRAME_TRACES = ("< %s", "> %s")
_HEADER_TRACES = ("< %s: %s", "> %s: %s")
_REQUEST_LINES = ("< GET %s HTTP/1.1", "> GET %s HTTP/1.1")
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_LOGGERS = ("websockets", "websockets.server", "websockets.client")


class RedactWebsocketsTraces(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            return True
        if record.msg in _FRAME_TRACES:
            return False
        if record.msg in _HEADER_TRACES and record.args and str(record.args[0]).lower() in _CREDENTIAL_HEADERS:
            return False
        if record.msg in _REQUEST_LINES and record.args:
            record.args = (str(record.args[0]).split("?", 1)[0],)
        return True


_FILTER = RedactWebsocketsTraces()


def install() -> None:
    """Idempotent: add the filter to websockets' loggers."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

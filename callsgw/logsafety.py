"""Keep secrets out of logs that websockets writes, by what the log says, not its format string.

websockets logs at DEBUG every frame (the ``join`` message carries a token),
every HTTP header (``Authorization: Bearer <admin key>``) and every request
line (a join link's ``?token=``, ``/api/v1/...?key=``); at DEBUG and ERROR
it adds tracebacks whose exception text may quote a whole request line
(``invalid HTTP request line: GET /?token=... HTTP/2``). The format strings
change between versions (websockets 17 logs request lines as
``"< %s %s %s"``, older ones as ``"< GET %s HTTP/1.1"``), so the filter
installed here judges each record by its content, on the server and client
loggers alike and at every level:

* a record that carries a WebSocket frame (any argument is a
  ``websockets.frames.Frame``) is dropped;
* a header trace whose name is a credential header (``Authorization``,
  ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``) is dropped;
* in what remains, message and traceback alike, every request target loses
  its query string and fragment (RFC 3986 section 3.4 and 3.5): from the
  first ``?`` or ``#`` on a line up to the line's `` HTTP/x`` version or
  its end, the text becomes ``?[redacted]`` (or ``#[redacted]``). The
  path stays, so the log still says what was asked for.

websockets' other DEBUG lines (states, response lines, other headers) stay.
The tested websockets range is pinned in ``pyproject.toml``; the filter does
not depend on it, and ``tests/admin/test_log_redaction.py`` checks a real
gateway's whole DEBUG log for secrets sent in URLs.
"""

from __future__ import annotations

import logging
import re
import traceback

_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_LOGGERS = ("websockets", "websockets.server", "websockets.client")
# From a "?" or "#" to the request line's " HTTP/<digit>" (not included) or the end of the line.
_QUERY_OR_FRAGMENT = re.compile(r"([?#])[^\r\n]*?(?=\sHTTP/\d|[\r\n]|\Z)")


def redact_targets(text: str) -> str:
    """``text`` with the query string and fragment of every request target cut off."""
    if "?" not in text and "#" not in text:
        return text
    return _QUERY_OR_FRAGMENT.sub(lambda m: m.group(1) + "[redacted]", text)


def _is_frame(value: object) -> bool:
    cls = type(value)
    return cls.__name__ == "Frame" and cls.__module__.startswith("websockets")


class RedactWebsocketsTraces(logging.Filter):
    """Drops frame traces and credential headers; cuts queries and fragments (module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if any(_is_frame(a) for a in args):
            return False
        if len(args) == 2 and str(args[0]).strip().lower() in _CREDENTIAL_HEADERS:
            return False
        try:
            message = record.getMessage()
        except Exception:  # a broken format: let logging report it, but never with the arguments
            record.msg, record.args = str(record.msg), None
            message = record.msg
        redacted = redact_targets(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact_targets(text)
            record.exc_info = None  # handlers format exc_text; none can reach the raw exception
        elif record.exc_text:
            record.exc_text = redact_targets(record.exc_text)
        return True


_FILTER = RedactWebsocketsTraces()


def install() -> None:
    """Idempotent: add the filter to websockets' loggers."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

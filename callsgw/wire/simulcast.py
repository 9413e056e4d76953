"""RID (RFC 8851) and simulcast (RFC 8853) attributes, read from the SDP text and written into answers.

aiortc's SDP parser drops ``a=rid`` and ``a=simulcast`` (aiortc 1.16), so
the gateway reads them from the raw text, per m-section (keyed by its
``a=mid``), and adds its own to the answer text after aiortc wrote it.

What is accepted on a section the participant publishes:

* ``a=rid:<id> send [restrictions]`` (RFC 8851 section 10): ``<id>`` is
  1-:data:`MAX_RID_LENGTH` of ``A-Z a-z 0-9 - _`` (the grammar's
  ``rid-id``, bounded so the value fits an RFC 8285 one-byte element); the
  restrictions (``pt=``, ``max-width=``...) are read past and not answered
  (RFC 8851 section 5: the answerer may drop them);
* ``a=simulcast:send <list>`` (RFC 8853 section 5.1), ``<list>`` being
  ``;``-separated streams, each ``,``-separated alternatives of rid ids, a
  ``~`` prefix marking one paused; a ``recv`` part is read past (the
  gateway never sends simulcast). Each stream's first alternative is taken
  (the gateway does not do alternatives), at most ``max_layers`` of them
  (RFC 8853 section 5.3: the answerer may remove streams).

Anything else in those two attributes is an :class:`~callsgw.wire.sdp.SdpError`
naming the section and the problem: a rid id with a bad character or too
long, a simulcast stream without a matching ``a=rid ... send``, a rid listed
twice, two ``a=simulcast`` lines, a direction other than send/recv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from callsgw.wire.sdp import SdpError

__all__ = ["MAX_RID_LENGTH", "Simulcast", "answer_lines", "insert_answer_lines", "offered_simulcast"]

MAX_RID_LENGTH = 16  # RFC 8852 values ride one-byte RFC 8285 elements (at most 16 bytes)
MAX_RID_LINES = 16  # a=rid lines read per m-section
_RID_ID = re.compile(r"[A-Za-z0-9_-]{1,%d}\Z" % MAX_RID_LENGTH)


@dataclass(frozen=True)
class Simulcast:
    """What one published m-section offers: the send rids, best first as listed."""

    rids: tuple[str, ...]


def _rid_id(value: str, where: str) -> str:
    if not _RID_ID.match(value):
        raise SdpError(f"{where}: bad rid id {value[:40]!r} (1-{MAX_RID_LENGTH} of A-Z a-z 0-9 - _, RFC 8851)")
    return value


def _sections(text: str) -> list[tuple[str | None, list[str]]]:
    """(mid, attribute lines) per m-section of the text."""
    out: list[tuple[str | None, list[str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            out.append((None, []))
        elif out:
            mid, lines = out[-1]
            if line.startswith("a=mid:"):
                out[-1] = (line[6:].strip(), lines)
            elif line.startswith(("a=rid:", "a=simulcast:")):
                lines.append(line)
    return out


def _send_list(value: str, where: str) -> list[str]:
    """The rid ids of a simulcast ``send`` list: each stream's first alternative, ``~`` dropped."""
    rids = []
    for stream in value.split(";"):
        first = stream.split(",")[0].strip()
        if first.startswith("~"):
            first = first[1:]
        rids.append(_rid_id(first, where))
        for alternative in stream.split(",")[1:]:
            _rid_id(alternative.strip().lstrip("~"), where)
    return rids


def offered_simulcast(text: str, *, max_layers: int = 3) -> dict[str, Simulcast]:
    """The simulcast each m-section (by mid) offers to send; sections without ``a=simulcast`` are absent.

    Raises :class:`SdpError` for malformed or inconsistent ``a=rid``/``a=simulcast`` lines.
    """
    found: dict[str, Simulcast] = {}
    for mid, lines in _sections(text):
        where = f"m-section {mid!r}" if mid is not None else "an m-section without a=mid"
        send_rids: set[str] = set()
        rid_lines = 0
        simulcast: str | None = None
        for line in lines:
            if line.startswith("a=rid:"):
                rid_lines += 1
                if rid_lines > MAX_RID_LINES:
                    raise SdpError(f"{where}: more than {MAX_RID_LINES} a=rid lines")
                fields = line[6:].split()
                if len(fields) < 2:
                    raise SdpError(f"{where}: a=rid needs an id and a direction (RFC 8851 section 10)")
                rid = _rid_id(fields[0], where)
                if fields[1] not in ("send", "recv"):
                    raise SdpError(f"{where}: a=rid:{rid} direction must be send or recv, not {fields[1][:20]!r}")
                if fields[1] == "send":
                    if rid in send_rids:
                        raise SdpError(f"{where}: a=rid:{rid} send is given twice")
                    send_rids.add(rid)
            else:
                if simulcast is not None:
                    raise SdpError(f"{where}: more than one a=simulcast line")
                simulcast = line[len("a=simulcast:"):].strip()
        if simulcast is None:
            continue
        if mid is None:
            raise SdpError(f"{where}: a=simulcast needs a=mid")
        parts = simulcast.split()
        if not parts or len(parts) % 2:
            raise SdpError(f"{where}: a=simulcast must be 'send <list>' and/or 'recv <list>' (RFC 8853 section 5.1)")
        rids: list[str] = []
        directions = set()
        for direction, value in zip(parts[::2], parts[1::2]):
            if direction not in ("send", "recv") or direction in directions:
                raise SdpError(f"{where}: a=simulcast direction {direction[:20]!r} is not send or recv once")
            directions.add(direction)
            listed = _send_list(value, where)
            if direction == "send":
                rids = listed
        if len(set(rids)) != len(rids):
            raise SdpError(f"{where}: a=simulcast lists a rid twice")
        for rid in rids:
            if rid not in send_rids:
                raise SdpError(f"{where}: a=simulcast names {rid!r} without a=rid:{rid} send (RFC 8853 section 5.2)")
        if rids:
            found[mid] = Simulcast(tuple(rids[:max_layers]))
    return found


def answer_lines(rids: tuple[str, ...]) -> list[str]:
    """The answer's attributes for a section the gateway receives as simulcast (RFC 8853 section 5.3)."""
    return [f"a=rid:{rid} recv" for rid in rids] + ["a=simulcast:recv " + ";".join(rids)]


def insert_answer_lines(text: str, by_mid: dict[str, tuple[str, ...]]) -> str:
    """``text`` (written by aiortc, CRLF lines) with :func:`answer_lines` after each section's ``a=mid``."""
    if not by_mid:
        return text
    out = []
    for line in text.split("\r\n"):
        out.append(line)
        if line.startswith("a=mid:") and line[6:] in by_mid:
            out.extend(answer_lines(by_mid[line[6:]]))
    return "\r\n".join(out)

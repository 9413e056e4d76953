"""``callsgw inspect``: the live and recent sessions of a running gateway, via the admin API.

Reads ``GET /api/v1/sessions`` (``?call=ID`` with ``--call``) and
``GET /api/v1/media/drops`` with the admin key and prints a table of sessions
(call, participant, joined, left, signaling TLS, DTLS suite, SRTP profile,
fingerprint matched, failure; for live sessions the downlink estimate and the
screen-share layer received, issue #19), then the datagrams the media port refused, by
reason (those that happened); ``--json`` prints both answers as one object,
``{"sessions": [...], "media_drops": {reason: count}}`` (every reason, zeros
included). Connection refused, a wrong key (401) and an untrusted certificate
are reported in one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

NAME = "inspect"
SUMMARY = "show the live and recent sessions of a running gateway and what they negotiated"
DESCRIPTION = (
    "Ask a running gateway's admin API (HTTPS, the gateway's TCP port) for its live and recent "
    "sessions and print what each negotiated: signaling TLS, DTLS cipher suite, SRTP profile and "
    "whether the DTLS certificate matched the SDP fingerprint; then what the media port dropped, by "
    "reason (garbage, STUN with a bad integrity or an unknown ufrag, DTLS or SRTP from addresses no "
    "ICE check validated, SRTP failing authentication, ...). The admin key comes from "
    "--admin-key or $CALLSGW_ADMIN_KEY (it was printed when it was made; `callsgw admin-key "
    "--rotate` makes a new one). Exit status 0 on success, 2 when the gateway cannot be reached, "
    "refuses the key or presents an untrusted certificate."
)
KEY_ENV = "CALLSGW_ADMIN_KEY"
DEFAULT_URL = "https://127.0.0.1:8443"
TIMEOUT = 10.0


class InspectError(Exception):
    """A one-line reason why the gateway could not be inspected."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the gateway's HTTPS base URL (default {DEFAULT_URL})")
    parser.add_argument("--admin-key", help=f"the admin key (default: ${KEY_ENV})")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the gateway's certificate (e.g. the default self-signed one)")
    parser.add_argument("--json", action="store_true",
                        help='print {"sessions": [...], "media_drops": {reason: count}} as JSON instead of tables')
    parser.add_argument("--call", help="only the sessions of this call")
    parser.add_argument("--limit", type=int, default=100, help="at most this many sessions (default 100)")


def fetch(url: str, path: str, key: str, *, insecure: bool = False) -> object:
    """GET ``path`` from the admin API at ``url``; the decoded JSON."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise InspectError(f"--url must be https://HOST:PORT, not {url!r}")
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        f"https://{parts.netloc}{path}", headers={"Authorization": f"Bearer {key}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise InspectError("the gateway refused the admin key (401)") from None
        raise InspectError(f"the gateway answered {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise InspectError(
                f"the gateway's certificate is not trusted ({reason.verify_message}); "
                "use --insecure for a self-signed one"
            ) from None
        if isinstance(reason, ConnectionRefusedError):
            raise InspectError(f"connection refused by {parts.netloc}: is the gateway running?") from None
        raise InspectError(f"cannot reach {parts.netloc}: {reason}") from None
    except (OSError, ValueError) as exc:
        raise InspectError(f"cannot read the answer from {parts.netloc}: {exc}") from None


def _when(value) -> str:
    if value is None:
        return "-"
    if value > 1e9:  # a Unix time
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return f"{value:.1f}"  # the core's monotonic clock


def rows(sessions: list[dict]) -> list[list[str]]:
    out = []
    for s in sessions:
        sig = s.get("signaling") or {}
        dtls = s.get("dtls") or {}
        matched = dtls.get("fingerprint_matched")
        out.append([
            str(s.get("call_id", "")),
            str(s.get("participant_name") or s.get("participant_id") or ""),
            _when(s.get("joined_at")),
            _when(s.get("left_at")) if s.get("left_at") is not None else "live",
            " ".join(x for x in (sig.get("tls_version"), sig.get("tls_cipher")) if x) or "-",
            dtls.get("cipher_suite") or "-",
            s.get("srtp_profile") or "-",
            "-" if matched is None else ("yes" if matched else "NO"),
            s.get("failure") or "-",
            _downlink(s.get("media")),
            _layers(s.get("media")),
        ])
    return out


def _downlink(media) -> str:
    """A live session's downlink estimate: kbit/s, its source, and a mark when congested."""
    if not isinstance(media, dict) or media.get("downlink_bps") is None:
        return "-"
    source = (media.get("downlink") or {}).get("source") or "?"
    congested = " congested" if media.get("congested") else ""
    return f"{media['downlink_bps'] / 1000:.0f} kbit/s ({source}){congested}"


def _layers(media) -> str:
    """The simulcast layer each of the session's screen routes forwards (paused when none)."""
    layers = media.get("screen_layers") if isinstance(media, dict) else None
    if not layers:
        return "-"
    return " ".join(f"{source.split('/')[0]}:{layer or 'paused'}" for source, layer in sorted(layers.items()))


HEADER = ["CALL", "PARTICIPANT", "JOINED", "LEFT", "TLS", "DTLS SUITE", "SRTP PROFILE", "FP MATCHED", "FAILURE",
          "DOWNLINK", "SCREEN LAYER"]


def table(sessions: list[dict]) -> str:
    body = rows(sessions)
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [HEADER, *body]]
    if not body:
        lines.append("(no sessions)")
    return "\n".join(lines) + "\n"


def drops_table(drops: dict) -> str:
    """The media port's drops that happened, largest first."""
    happened = sorted(((n, reason) for reason, n in drops.items() if n), key=lambda x: (-x[0], x[1]))
    if not happened:
        return "MEDIA DROPS\n(none)\n"
    width = max(len("REASON"), *(len(reason) for _, reason in happened))
    lines = ["MEDIA DROPS", f"{'REASON'.ljust(width)}  COUNT"]
    lines += [f"{reason.ljust(width)}  {n}" for n, reason in happened]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    key = args.admin_key or os.environ.get(KEY_ENV)
    if not key:
        print(f"callsgw inspect: error: no admin key: pass --admin-key or set ${KEY_ENV}", file=sys.stderr)
        return 2
    query = {"limit": str(args.limit)}
    if args.call:
        query["call"] = args.call
    try:
        answer = fetch(args.url, "/api/v1/sessions?" + urllib.parse.urlencode(query), key, insecure=args.insecure)
        dropped = fetch(args.url, "/api/v1/media/drops", key, insecure=args.insecure)
    except InspectError as exc:
        print(f"callsgw inspect: error: {exc}", file=sys.stderr)
        return 2
    sessions = answer.get("sessions", []) if isinstance(answer, dict) else []
    drops = dropped.get("drops", {}) if isinstance(dropped, dict) else {}
    if args.json:
        sys.stdout.write(json.dumps({"sessions": sessions, "media_drops": drops}, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(table(sessions) + "\n" + drops_table(drops))
    return 0

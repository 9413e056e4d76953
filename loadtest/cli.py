"""``callsgw loadtest``: list and analyse the RTP streams of a capture.

    callsgw loadtest --list FILE [--json] [--sdp SDP] [--strict]
    callsgw loadtest analyze FILE [--json] [--clock-rate HZ] [--sdp SDP] [--strict]

Exit status: 0 success; 1 the file is a readable capture but holds no RTP; 2 usage error or bad
input (missing or unreadable file, not a capture, truncated or corrupt before the first packet,
unknown link type, unreadable SDP), reported as one line on stderr, never a traceback. A capture
cut short after some packets (a crash of the capturing tool) is analysed up to the damage with a
one-line warning on stderr; ``--strict`` makes that an error (exit 2) instead.

Registered into :data:`callsgw.cli.COMMANDS` by callsgw/cli.py; this module does not import
callsgw.cli (it is imported while that module loads).
"""

from __future__ import annotations

import argparse
import json
import sys

from loadtest.analyze import analyze_streams
from loadtest.capture import CaptureError, CaptureReader
from loadtest.streams import Stream, load_sdp, split_streams

EXIT_OK = 0
EXIT_NO_RTP = 1
EXIT_BAD_INPUT = 2

NAME = "loadtest"
SUMMARY = "read RTP captures (pcap/pcapng): list their streams, analyse loss and jitter"
DESCRIPTION = (
    "Work with RTP captures (classic pcap or pcapng, told apart by magic number; Ethernet, "
    "Linux cooked SLL/SLL2, BSD loopback and raw IP; IPv4 and IPv6 over UDP). "
    "--list FILE shows each RTP stream (5-tuple and SSRC) with its payload type, codec guess, "
    "packets, duration and rate; 'analyze FILE' computes per-stream packets, loss, sequence "
    "errors and interarrival jitter the way 'tshark -q -z rtp,streams' does. "
    "Exit status: 0 success, 1 no RTP in the capture, 2 bad input or usage (one line on stderr)."
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of Hz, got {text!r}") from None
    if not 1 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 10000000 Hz, got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="Print machine-readable JSON on stdout instead of a table.",
    )
    parser.add_argument(
        "--sdp",
        metavar="SDP",
        default=argparse.SUPPRESS,
        help="SDP file whose a=rtpmap lines name the codec and clock rate of dynamic payload "
        "types (e.g. the .sdp ffmpeg writes beside an RTP stream).",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        default=argparse.SUPPRESS,
        help="Treat a capture truncated or corrupt after its first packets as an error (exit 2). "
        "Default: analyse the packets before the damage and warn on stderr.",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--list",
        metavar="FILE",
        dest="list_file",
        default=None,
        help="List the RTP streams of capture FILE: 5-tuple, SSRC, payload type, codec guess, "
        "packets, duration, packet rate and bitrate.",
    )
    _common(parser)
    sub = parser.add_subparsers(dest="loadtest_action", metavar="ACTION", title="actions")
    analyze = sub.add_parser(
        "analyze",
        help="per-stream packets, loss, sequence errors and jitter of a capture",
        description="Per-stream statistics of capture FILE, computed as 'tshark -q -z rtp,streams' "
        "does: packets, lost (expected minus received, expected counted from the first to "
        "the last sequence number with wraps, as tshark 4.0 does), sequence errors, and max and mean RFC 3550 "
        "interarrival jitter in ms. Exit status: 0 success, 1 no RTP in the capture, 2 bad "
        "input or usage.",
    )
    analyze.add_argument("file", metavar="FILE", help="Capture file (pcap or pcapng).")
    analyze.add_argument(
        "--clock-rate",
        metavar="HZ",
        type=_positive_int,
        default=None,
        help="RTP clock rate in Hz used for the jitter of every stream, overriding the SDP, the "
        "static payload type table (RFC 3551) and the codec guess (Opus 48000, VP8 90000).",
    )
    _common(analyze)


def _err(message: str) -> None:
    print(f"callsgw loadtest: error: {message}", file=sys.stderr)


def _load(path: str, sdp_path: str | None, strict: bool) -> tuple[list[Stream], dict | None, CaptureReader]:
    sdp = load_sdp(sdp_path) if sdp_path else None
    reader = CaptureReader(path, strict=strict)
    streams = split_streams(reader, sdp)
    if reader.problem is not None:
        print(f"callsgw loadtest: warning: {reader.problem}; analysing those", file=sys.stderr)
    return streams, sdp, reader


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "loadtest_action", None)
    as_json = getattr(args, "json", False)
    sdp_path = getattr(args, "sdp", None)
    strict = getattr(args, "strict", False)
    if action is None and args.list_file is None:
        _err("nothing to do: give --list FILE or 'analyze FILE' (see callsgw loadtest --help)")
        return EXIT_BAD_INPUT
    if action is not None and args.list_file is not None:
        _err("--list and 'analyze' are separate uses: give one")
        return EXIT_BAD_INPUT
    path = args.list_file if action is None else args.file
    try:
        streams, sdp, reader = _load(path, sdp_path, strict)
    except CaptureError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    except FileNotFoundError as exc:
        _err(f"{exc.filename}: no such file")
        return EXIT_BAD_INPUT
    except OSError as exc:
        _err(f"{exc.filename or path}: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    except UnicodeDecodeError as exc:  # pragma: no cover - errors="replace" in load_sdp
        _err(f"{sdp_path}: {exc}")
        return EXIT_BAD_INPUT
    if not streams:
        _err(f"{path}: no RTP found in {reader.packets} packets ({reader.format})")
        return EXIT_NO_RTP

    if action is None:
        summaries = [s.summary() for s in streams]
        if as_json:
            print(json.dumps({"file": path, "format": reader.format, "streams": summaries}, indent=2))
            return EXIT_OK
        rows = [
            [
                s["src"], s["dst"], f"0x{s['ssrc']:08X}", str(s["payload_type"]),
                s["codec"] + ("?" if s["codec_source"] == "guess" else ""),
                str(s["packets"]), f"{s['duration_s']:.3f}", f"{s['packet_rate']:.1f}",
                f"{s['bitrate_bps'] / 1000:.1f}",
            ]
            for s in summaries
        ]
        print(_table(
            ["source", "destination", "SSRC", "PT", "codec", "packets", "duration s", "pkt/s", "kbit/s"],
            rows, {3, 5, 6, 7, 8},
        ))
        print(f"{len(summaries)} RTP stream(s) in {path} ({reader.format}); codec? = guessed from the payload")
        return EXIT_OK

    stats = analyze_streams(streams, clock_rate=args.clock_rate, sdp=sdp)
    if as_json:
        print(json.dumps({"file": path, "format": reader.format, "streams": [s.as_dict() for s in stats]}, indent=2))
        return EXIT_OK
    rows = [
        [
            s.src, s.dst, f"0x{s.ssrc:08X}", str(s.payload_type), s.codec,
            "-" if s.clock_rate is None else str(s.clock_rate),
            str(s.packets), f"{s.lost} ({s.lost_percent:.1f}%)", str(s.sequence_errors),
            _fmt_ms(s.max_jitter_ms), _fmt_ms(s.mean_jitter_ms),
        ]
        for s in stats
    ]
    print(_table(
        ["source", "destination", "SSRC", "PT", "codec", "clock", "packets", "lost", "seq errors",
         "max jitter ms", "mean jitter ms"],
        rows, {3, 5, 6, 7, 8, 9, 10},
    ))
    return EXIT_OK

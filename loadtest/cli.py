"""``callsgw loadtest``: list and analyse the RTP streams of a capture.

    callsgw loadtest list FILE [--json] [--sdp SDP] [--strict]      (or: callsgw loadtest --list FILE ...)
    callsgw loadtest analyze FILE [--json] [--clock-rate HZ] [--sdp SDP] [--strict]
    callsgw loadtest run --url wss://HOST:PORT/ws (--data-dir DIR | --token-secret-file FILE)
        --calls M --participants-per-call N --capture FILE [--capture FILE2] --duration S
        [--speed X] [--ramp-up PER_SECOND] [--insecure] [--json OUT] [--csv OUT] [--plots DIR]
    callsgw loadtest compare A.json B.json [--max-regression PCT] [--json]
    callsgw loadtest run ... --agents N --agent-listen HOST:PORT --agent-secret-file FILE   (coordinator)
    callsgw loadtest agent --coordinator HOST:PORT --agent-secret-file FILE               (loadtest/agent.py)
    callsgw loadtest find-max (the run options but --calls/--duration) --max-calls M --step-duration S
        [--start-calls M] [--step-calls K] [--pause S] [--json OUT]
    callsgw loadtest shape --upstream HOST:PORT [--listen HOST:PORT] [--rate 400k] [--delay-ms MS] [--loss PCT]
        [--queue-packets N | --queue-bytes N] [--up-... | --down-...]     (loadtest/shaper.py; controls on stdin)

Exit status: 0 success; 1 the file is a readable capture but holds no RTP; 2 usage error or bad
input (missing or unreadable file, not a capture, truncated or corrupt before the first packet,
unknown link type, unreadable SDP), reported as one line on stderr, never a traceback. A capture
cut short after some packets (a crash of the capturing tool) is analysed up to the damage with a
one-line warning on stderr; ``--strict`` makes that an error (exit 2) instead.

``run`` (loadtest/replay.py, measure.py, report.py) exits 0 when every participant joined and
nothing failed, 4 when the run failed (gateway gone, participant dropped, stream missing or
stopped), 5 when a threshold was breached (loadtest/thresholds.py), 3 when some participants did not join, 130/143 when SIGINT/SIGTERM ended it (results
written), 1 when a capture holds no RTP, 2 for bad input, an unwritable output path, an
unreachable gateway or a refused first join. ``compare`` (loadtest/compare.py) exits 0, 6 when a
figure regressed past --max-regression, 2 for bad input. ``find-max`` (loadtest/findmax.py) exits
0 when a maximum was found, 5 when the first step already failed, 130/143, 1, 2 as ``run``.

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
SUMMARY = "replay RTP captures through a gateway as many participants; list and analyse captures"
DESCRIPTION = (
    "Work with RTP captures (classic pcap or pcapng, gzip-compressed or not, told apart by magic number; Ethernet, "
    "Linux cooked SLL/SLL2, BSD loopback and raw IP; IPv4 and IPv6 over UDP). "
    "'list FILE' (or --list FILE) shows each RTP stream (5-tuple and SSRC) with its payload type, codec guess, "
    "packets, duration and rate; 'analyze FILE' computes per-stream packets, loss, sequence "
    "errors and interarrival jitter the way 'tshark -q -z rtp,streams' does; 'run' replays "
    "captures through a gateway as many real participants and measures what arrives "
    "(see 'callsgw loadtest run --help'); 'compare A.json B.json' sets two run reports side by side "
    "and gates on regressions (see 'callsgw loadtest compare --help'); 'find-max' raises the load step by "
    "step and reports the largest that keeps every threshold (see 'callsgw loadtest find-max --help'); 'agent' "
    "runs a share of a 'run --agents N' on another machine (see 'callsgw loadtest agent --help'). "
    "Exit status of list and analyze: 0 success, 1 no RTP in the capture, 2 bad input or usage (one line on "
    "stderr); run, compare and find-max document theirs in their --help."
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
        "packets, duration, packet rate and bitrate (the same as 'list FILE').",
    )
    _common(parser)
    sub = parser.add_subparsers(dest="loadtest_action", metavar="ACTION", title="actions")
    listing = sub.add_parser(
        "list",
        help="the RTP streams of a capture (also spelled --list FILE)",
        description="List the RTP streams of capture FILE: 5-tuple, SSRC, payload type, codec guess, packets, "
        "duration, packet rate and bitrate ('callsgw loadtest --list FILE' is the same). Exit status: 0 "
        "success, 1 no RTP in the capture, 2 bad input or usage.",
    )
    listing.add_argument("file", metavar="FILE", help="Capture file (pcap or pcapng, gzip-compressed or not).")
    _common(listing)
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
    _run_arguments(sub)
    from loadtest import agent, compare

    compare.add_parser(sub)
    agent.add_parser(sub)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 10000, got {text!r}")
    return value


def _ssrc(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an SSRC like 0x1234ABCD or 305441741, got {text!r}") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"an SSRC is 32 bits, got {text!r}")
    return value


MAX_REPLAY_PACKET = 1984  # udpio's packet slot less room for the SRTP tag


def _describe_stream(path: str, stream) -> str:
    s = stream.summary()
    return (f"{path} {s['src']} -> {s['dst']} SSRC 0x{s['ssrc']:08X} PT {s['payload_type']} "
            f"{s['codec']}{' (guessed)' if s['codec_source'] == 'guess' else ''}, {s['packets']} packets, "
            f"{s['duration_s']:.1f} s")


def _choose_streams(found: list, wanted: list[int] | None) -> tuple[list, list[str], str | None]:
    """(chosen (path, stream, raw) list, lines on what was used and left out, an error or None)."""
    from loadtest.replay import pick_tracks  # noqa: F401 - the same rule, applied below

    candidates = found if wanted is None else [f for f in found if f[1].ssrc in wanted]
    if wanted is not None:
        missing = sorted(set(wanted) - {f[1].ssrc for f in found})
        if missing:
            return [], [], "--stream " + ", ".join(f"0x{m:08X}" for m in missing) + ": no such stream in the capture(s)"
    voice = video = None
    for path, stream, raw in candidates:
        codec = stream.codec
        is_video = codec is not None and (codec.name.upper() == "VP8" or codec.clock_rate == 90000)
        if is_video and video is None:
            video = (path, stream, raw)
        elif not is_video and voice is None:
            voice = (path, stream, raw)
    if voice is None:
        return [], [], "no voice stream in the capture(s): every participant publishes voice (give an Opus capture)"
    name = voice[1].codec.name if voice[1].codec else "unknown"
    if name.lower() != "opus":
        how = "could not be recognised" if name == "unknown" else f"is {name}"
        return [], [], (f"the voice stream ({_describe_stream(voice[0], voice[1])}) {how}: the gateway negotiates "
                        "only Opus for voice (give an Opus capture, or --sdp naming its payload type opus)")
    if video is not None and (video[1].codec is None or video[1].codec.name.upper() != "VP8"):
        return [], [], (f"the video stream ({_describe_stream(video[0], video[1])}) is not VP8: the gateway "
                        "negotiates only VP8 for screen share")
    chosen = [c for c in (voice, video) if c is not None]
    for path, stream, raw in chosen:
        big = max(len(r) for r in raw)
        if big > MAX_REPLAY_PACKET:
            return [], [], (f"{_describe_stream(path, stream)}: a packet of {big} bytes; at most "
                            f"{MAX_REPLAY_PACKET} can be replayed")
    lines = [f"voice stream: {_describe_stream(*voice[:2])}"]
    if video is not None:
        lines.append(f"screen stream: {_describe_stream(*video[:2])}")
    for path, stream, _ in found:
        if all(stream is not c[1] for c in chosen):
            lines.append(f"stream left out: {_describe_stream(path, stream)}")
    return chosen, lines, None


def _run_arguments(sub) -> None:
    run = sub.add_parser(
        "run",
        help="replay captures through a gateway as M calls x N real participants, measure, report",
        description="Start M calls x N virtual participants against the gateway at --url. Each joins "
        "through the real protocol (WSS signaling, ICE, DTLS, SRTP) with its own token signed with "
        "the gateway's API secret, publishes the capture's voice stream (the first participant of "
        "each call also shares a screen with the video stream, when a capture holds one) with the "
        "capture's timing (or / --speed), looping it, with SSRC, sequence number and timestamp "
        "rewritten per participant. Receivers measure per stream packets, loss, duplicates, "
        "reordering, RFC 3550 jitter and one-way delay; handshake time per participant; the tester's "
        "own CPU use, and, when the gateway runs on this host, its CPU and RSS (--gateway-pid): CPU % and "
        "microseconds of gateway CPU per forwarded packet. Every participant that joined also reports the streams it expected (the other "
        "joined participants' voices and the call's screen share) and never received a packet of "
        "('streams missing' in the summary, per_participant and convergence in the JSON). "
        "Loss is true loss: what each publisher sent against what each subscriber received (payloads "
        "matched through the send log), so a stream that stops or never arrives counts; participants "
        "whose session ended or whose signaling dropped for good, and a gateway that went away, are "
        "reported as failures. Senders stop half a second (at most a tenth of the run) before the end "
        "so that packets in flight can arrive. SIGINT or SIGTERM ends the run early and cleanly: the "
        "summary, --json and --plots are still written (a second signal aborts). "
        "Live progress on stderr, a summary at the end, --json, --csv and --plots on request (their paths are "
        "checked before the run starts); the summary and the JSON carry the run's identity (UTC time, callsgw "
        "version, captures and streams used, settings) and report voice and screen apart (loss, jitter, delay, "
        "bitrate), so that 'callsgw loadtest compare' can set two runs side by side. "
        "--agents N runs the participants on N 'callsgw loadtest agent' processes (whole calls each) and merges "
        "their reports into one (see the agents options below). "
        "--loss, --jitter and --rate-limit impair every participant's link from inside the tester (send side by "
        "default: the packets the gateway gets; see the impairment options below); the summary and the JSON "
        "(config.impairment, impairment) say what was injected and what it dropped, and the drops count as loss. "
        "Exit status: 0 all joined and nothing failed; 4 the run failed (the gateway went away, a "
        "participant was dropped, a stream never arrived or stopped); 3 some participants did not join; "
        "5 a threshold (--max-loss, --max-delay-p95, --max-jitter, --max-handshake-p95, --min-joined) "
        "was breached; 130 / 143 interrupted by SIGINT / SIGTERM (results written); 1 no RTP in a capture; "
        "2 bad input, an unwritable output path, unreachable gateway or refused first join. The first "
        "that applies of 130/143, 4, 5, 3 wins.",
    )
    _load_options(run, step_mode=False)
    from loadtest import findmax

    findmax.add_parser(sub)
    from loadtest import shaper

    shaper.add_parser(sub)


def _cluster_secret(url: str) -> bytes | None:
    """The cluster's API secret from its shared database's Systems table (None: refused, said on stderr)."""
    import tempfile
    from pathlib import Path

    from callsgw.apisecrets import SystemsApiSecrets
    from callsgw.security.db import StoreError, open_store

    if not url.startswith(("postgresql://", "postgres://")):
        _err("--cluster-database must be the cluster's postgresql:// URL")
        return None
    try:
        store = open_store(url, Path(tempfile.gettempdir()))
    except StoreError as exc:
        _err(f"cannot open the cluster database: {' '.join(str(exc).split())}")
        return None
    try:
        return SystemsApiSecrets(store).current()
    except Exception as exc:  # no ApiSecret row yet (no node ever started), or a database error
        _err(f"cannot read the cluster's API secret: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return None
    finally:
        store.close()


def _load_options(run: argparse.ArgumentParser, step_mode: bool) -> None:
    """The options of 'run'; 'find-max' (step_mode) has all but --calls, --duration and the outputs."""
    run.add_argument("--url", required=True, help="Signaling URL of the gateway, wss://HOST:PORT/ws.")
    secret = run.add_mutually_exclusive_group(required=True)
    secret.add_argument("--data-dir", metavar="DIR", help="The gateway's data directory (its api_secret signs the tokens).")
    secret.add_argument("--token-secret-file", metavar="FILE", help="The gateway's api_secret file.")
    secret.add_argument("--cluster-database", metavar="URL",
                        help="A cluster's shared database (postgresql://...): its Systems row ApiSecret signs the "
                        "tokens, so they verify on every node (issue #15).")
    if not step_mode:
        run.add_argument("--calls", type=_count, required=True, metavar="M", help="Number of calls.")
    run.add_argument("--participants-per-call", type=_count, required=True, metavar="N",
                     help="Virtual participants in each call.")
    run.add_argument("--capture", action="append", required=True, metavar="FILE",
                     help="Capture (pcap/pcapng, gzip-compressed or not) with the voice stream; give it again for "
                     "a second capture (e.g. the video stream shared as screen). The voice must be Opus and the "
                     "screen VP8 (what the gateway negotiates): anything else is refused. Streams of one packet "
                     "are ignored; the streams used and the ones left out are printed.")
    run.add_argument("--stream", action="append", metavar="SSRC", type=_ssrc, default=None,
                     help="Use only the stream(s) with this SSRC (0x1234ABCD or decimal); give it again for a "
                     "second one. Default: the first voice stream and the first video stream found.")
    run.add_argument("--sdp", metavar="SDP", default=None,
                     help="SDP file whose a=rtpmap lines name the codec of dynamic payload types (instead of "
                     "guessing it from the payload).")
    run.add_argument("--strict", action="store_true",
                     help="Refuse (exit 2) a capture cut short or with packets cut by its snap length, instead "
                     "of warning and replaying what is there.")
    if not step_mode:
        run.add_argument("--duration", type=_positive_float, default=None, metavar="S",
                         help="Hard bound of the run in seconds, ramp-up included; then everything is closed. "
                         "Required unless --stage gives the run's shape.")
        from loadtest.stages import parse_stage

        run.add_argument("--stage", action="append", type=parse_stage, default=None, metavar="DURATION:PARTICIPANTS",
                         help="A load stage, as k6 has them: move the participants in the run linearly to PARTICIPANTS "
                         "over DURATION (30s, 1.5m, 500ms; plain seconds); repeat it: --stage 30s:50 --stage 60s:50 "
                         "--stage 10s:0 ramps up, holds and ramps down (departures close their sessions, the last "
                         "joined first). One peak, equal to --calls x --participants-per-call. Loss, delay and jitter "
                         "(totals, thresholds) then come from the hold stages only (a stage whose target equals the "
                         "previous one); the whole run's are kept in totals.whole_run. Replaces --duration (the sum "
                         "of the stages plus a 0.5 s drain) and --ramp-up.")
    run.add_argument("--speed", type=_positive_float, default=1.0, metavar="X",
                     help="Replay speed factor (2 = twice as fast). Default 1.")
    run.add_argument("--ramp-up", type=float, default=None, metavar="PER_SECOND",
                     help="Participants started per second (0 = all at once). Default 20. A ramp that leaves less "
                     "than 1 s of media after the last start within --duration is refused at once (exit 2). A join "
                     "the gateway refuses with close 4006 (its per-address --joins-per-second, default 5) backs off "
                     "and is tried again until --join-timeout; the summary then says so.")
    run.add_argument("--speakers-per-call", type=_count, default=None, metavar="K",
                     help="Only the first K participants of each call publish voice; the others listen (as in "
                     "real meetings). Default: everybody speaks. The screen sharer is a speaker.")
    run.add_argument("--join-timeout", type=_positive_float, default=15.0, metavar="S",
                     help="Seconds each participant may take to join and connect media. Default 15.")
    run.add_argument("--insecure", action="store_true",
                     help="Do not verify the gateway's TLS certificate (its self-signed default one).")
    if not step_mode:
        run.add_argument("--json", dest="json_out", metavar="OUT", default=None, help="Write the JSON report to OUT.")
    if not step_mode:
        run.add_argument("--plots", metavar="DIR", default=None,
                         help="Write delay.png (log scale), jitter.png, loss.png, throughput.png, cpu.png, "
                         "handshake.png (and gateway.png when the gateway is measured) into DIR; each titled with the "
                         "run's identity, the time plots with the participants connected.")
    if not step_mode:
        run.add_argument("--csv", dest="csv_out", metavar="FILE", default=None,
                         help="Write the once-a-second timeline (the JSON's timeline) to FILE as CSV.")
        agents = run.add_argument_group(
            "agents", "Run the participants on N 'callsgw loadtest agent' processes (other machines) instead of here; "
            "one merged report comes out here (loadtest/agent.py).")
        agents.add_argument("--agents", type=_count, default=None, metavar="N",
                            help="Wait for N agents at --agent-listen and give each a share of whole calls (a call is "
                            "never split, so one-way delay is always measured on one agent's clock); --calls must be "
                            "at least N. Not with --stage.")
        agents.add_argument("--agent-listen", default="127.0.0.1:7300", metavar="HOST:PORT",
                            help="Where the agents connect (default 127.0.0.1:7300; give an address they can reach).")
        agents.add_argument("--agent-secret-file", default=None, metavar="FILE",
                            help="The secret shared with the agents (at least 32 bytes; made, mode 0600, when absent): "
                            "it authenticates both ends and keys the AES-GCM sealing of every message, which carry "
                            "the participants' tokens (the gateway's signing secret stays here).")
        agents.add_argument("--agent-wait", type=_positive_float, default=60.0, metavar="S",
                            help="Seconds to wait for the N agents. Default 60.")
    run.add_argument("--gateway-pid", default="auto", metavar="PID|auto|none",
                     help="Sample this local gateway process's CPU (utime+stime) and RSS once a second and "
                     "report gateway CPU %% and us per forwarded packet. 'auto' (default): with a loopback "
                     "--url, the process listening on its port; 'none': do not measure.")
    run.add_argument("--gateway-metrics", default=None, metavar="URL",
                     help="Measure the gateway through its /metrics instead (any host, e.g. "
                     "https://gw:8443/metrics): its own process CPU and RSS, scraped once a second with the "
                     "admin key from --admin-key-file or CALLSGW_ADMIN_KEY. --insecure also skips this "
                     "certificate check.")
    run.add_argument("--admin-key-file", default=None, metavar="FILE",
                     help="The gateway's admin key, for --gateway-metrics (or the CALLSGW_ADMIN_KEY variable).")
    from loadtest import impair, thresholds

    impair.add_arguments(run)
    thresholds.add_arguments(run)


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
        _err("nothing to do: give 'list FILE' (or --list FILE), 'analyze FILE', 'run --url ... --capture FILE' "
             "(replay through a gateway), 'find-max ...', 'compare A.json B.json' or 'agent --coordinator HOST:PORT "
             "...' (see callsgw loadtest --help)")
        return EXIT_BAD_INPUT
    if action is not None and args.list_file is not None:
        _err(f"--list and '{action}' are separate uses: give one")
        return EXIT_BAD_INPUT
    if action == "run":
        return run_load(args)
    if action == "compare":
        from loadtest import compare

        return compare.main(args, _err)
    if action == "find-max":
        from loadtest import findmax

        return findmax.main(args)
    if action == "agent":
        from loadtest import agent

        return agent.main(args)
    if action == "shape":
        from loadtest import shaper

        return shaper.main(args)
    path = args.list_file if action is None else args.file
    listing = action in (None, "list")
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

    if listing:
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
            _fmt_ms(s.max_jitter_ms), _fmt_ms(s.mean_jitter_ms), _fmt_ms(s.jitter_ms),
        ]
        for s in stats
    ]
    print(_table(
        ["source", "destination", "SSRC", "PT", "codec", "clock", "packets", "lost", "seq errors",
         "max jitter ms", "mean jitter ms", "jitter ms"],
        rows, {3, 5, 6, 7, 8, 9, 10, 11},
    ))
    print("max/mean jitter ms: as tshark computes them (JSON max_jitter_ms, mean_jitter_ms); jitter ms: RFC 3550 "
          "jitter after the last packet (JSON jitter_ms)")
    return EXIT_OK


EXIT_PARTIAL = 3
EXIT_THRESHOLD = 5  # a --max-*/--min-joined threshold was breached
EXIT_FAILED = 4  # the run completed but media failed: gateway gone, participants dropped, streams missing or stopped
EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}  # the results are written all the same


def _check_output(path: str, what: str, directory: bool) -> str | None:
    """Why ``path`` cannot be written (checked before the run), or None."""
    import os

    target = os.path.abspath(path)
    if directory:
        if os.path.exists(target):
            if not os.path.isdir(target):
                return f"{what} {path}: exists and is not a directory"
            if not os.access(target, os.W_OK | os.X_OK):
                return f"{what} {path}: directory not writable"
            return None
    elif os.path.isdir(target):
        return f"{what} {path}: is a directory"
    elif os.path.exists(target):
        return None if os.access(target, os.W_OK) else f"{what} {path}: file not writable"
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        return f"{what} {path}: directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{what} {path}: directory {parent} is not writable"
    return None


def _gateway_process(choice: str, url: str) -> tuple[int | None, str | None]:
    """``--gateway-pid``: the pid to sample, or None with the reason. ``ValueError`` for bad input."""
    import os
    from urllib.parse import urlsplit

    from loadtest.gateway_probe import GatewayProbe, ProbeError, listening_pid

    if choice == "none":
        return None, "not measured (--gateway-pid none)"
    if choice != "auto":
        try:
            pid = int(choice)
        except ValueError:
            raise ValueError(f"--gateway-pid must be a process id, 'auto' or 'none', got {choice!r}") from None
        try:
            GatewayProbe(pid)
        except ProbeError as exc:
            raise ValueError(str(exc)) from None
        return pid, None
    parts = urlsplit(url)
    host = (parts.hostname or "").strip("[]")
    if not (host in ("localhost", "::1") or host.startswith("127.")):
        return None, "not measured: the gateway is not on this host (give --gateway-pid for a local one)"
    try:
        port = parts.port or 443
    except ValueError:
        return None, "not measured: the URL has no usable port"
    pid = listening_pid(port)
    if pid is None:
        return None, f"not measured: no single process found listening on port {port} (give --gateway-pid)"
    if pid == os.getpid():
        return None, "not measured: the gateway runs inside this process"
    try:
        GatewayProbe(pid)
    except ProbeError as exc:
        return None, f"not measured: {exc}"
    return pid, None


def _metrics_probe(args: argparse.Namespace):
    """``--gateway-metrics``: a started MetricsProbe, or None (the reason printed)."""
    import os
    from pathlib import Path

    from loadtest.gateway_probe import MetricsProbe, ProbeError

    key = os.environ.get("CALLSGW_ADMIN_KEY")
    if args.admin_key_file:
        try:
            key = Path(args.admin_key_file).read_text().strip()
        except OSError as exc:
            _err(f"{args.admin_key_file}: {exc.strerror or exc}")
            return None
    if not key:
        _err("--gateway-metrics needs the admin key: --admin-key-file FILE or CALLSGW_ADMIN_KEY")
        return None
    try:
        return MetricsProbe(args.gateway_metrics, key, insecure=args.insecure)
    except ProbeError as exc:
        _err(f"cannot measure the gateway: {exc}")
        return None


def run_load(args: argparse.Namespace) -> int:
    """``callsgw loadtest run``: see :mod:`loadtest.replay`."""
    from loadtest.report import summary_text, write_csv, write_json, write_plots

    problem = _apply_stages(args) or _agents_problem(args)
    if problem:
        _err(problem)
        return EXIT_BAD_INPUT
    prep = prepare_run(args, args.calls, args.duration, ((args.json_out, "--json", False),
                                                         (args.plots, "--plots", True), (args.csv_out, "--csv", False)))
    if isinstance(prep, int):
        return prep
    if args.agents:
        from loadtest.agent import execute_coordinated

        report = execute_coordinated(args, prep)
    else:
        report = execute_run(args, prep)
    if isinstance(report, int):
        return report
    print(summary_text(report))
    try:
        if args.json_out:
            write_json(report, args.json_out)
        if args.csv_out:
            write_csv(report, args.csv_out)
        if args.plots:
            for path in write_plots(report, args.plots):
                print(f"plot: {path}")
    except OSError as exc:
        _err(f"{exc.filename}: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    return exit_status(report)


def _agents_problem(args: argparse.Namespace) -> str | None:
    """--agents: what cannot go with it, or None."""
    if not getattr(args, "agents", None):
        return None
    if args.stage:
        return "--stage cannot be used with --agents yet (give --duration and --ramp-up)"
    if args.calls < args.agents:
        return (f"--agents {args.agents} needs at least {args.agents} calls (--calls {args.calls}): each agent runs "
                "whole calls")
    if not args.agent_secret_file:
        return "--agents needs --agent-secret-file FILE (the secret shared with the agents; made when absent)"
    host, _, port = args.agent_listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"--agent-listen must be HOST:PORT, got {args.agent_listen!r}"
    return None


def _apply_stages(args: argparse.Namespace) -> str | None:
    """--stage: check the stages and turn them into the run's schedule and --duration; else
    --duration is required. The problem, or None."""
    from loadtest import stages as st
    from loadtest.replay import DRAIN_S

    args.schedule = None
    if not args.stage:
        if args.duration is None:
            return "give --duration S (or the run's shape with --stage DURATION:PARTICIPANTS)"
        return None
    if args.duration is not None:
        return "--duration and --stage are two ways to give the run's length: give one"
    if args.ramp_up is not None:
        return "--ramp-up and --stage are two ways to give the joins: give one"
    problem = st.check(args.stage, args.calls * args.participants_per_call)
    if problem:
        return problem
    args.schedule = st.schedule(args.stage)
    args.duration = sum(s.duration for s in args.stage) + DRAIN_S  # the drain follows the last stage
    args.ramp_up = 0.0  # the joins follow the schedule
    return None


def prepare_run(args: argparse.Namespace, calls: int, duration: float, outputs) -> dict | int:
    """Everything checked before a run (or the first step of find-max): the options, the output
    paths ``outputs`` ((path, option, is_directory)), the secret, the captures and streams, the
    gateway to measure. A dict for :func:`execute_run`, or the exit status (the error printed)."""
    from pathlib import Path

    from loadtest.replay import load_capture, pick_tracks, read_secret

    if not args.url.startswith(("wss://", "ws://")):
        _err(f"--url must be wss://HOST:PORT/ws, got {args.url!r}")
        return EXIT_BAD_INPUT
    if args.ramp_up is None:
        args.ramp_up = 20.0
    if not args.ramp_up >= 0 or args.ramp_up == float("inf"):
        _err("--ramp-up must be 0 (all at once) or a finite positive rate")
        return EXIT_BAD_INPUT
    problem = ramp_problem(calls * args.participants_per_call, args.ramp_up, duration)
    if problem:
        _err(problem)
        return EXIT_BAD_INPUT
    if args.speakers_per_call is not None and args.speakers_per_call > args.participants_per_call:
        _err(f"--speakers-per-call {args.speakers_per_call} is more than --participants-per-call "
             f"{args.participants_per_call}")
        return EXIT_BAD_INPUT
    for path, what, directory in outputs:
        problem = _check_output(path, what, directory) if path else None
        if problem:
            _err(problem)
            return EXIT_BAD_INPUT
    if args.cluster_database:
        secret = _cluster_secret(args.cluster_database)
        if secret is None:
            return EXIT_BAD_INPUT
    secret_path = args.token_secret_file or str(Path(args.data_dir or ".") / "api_secret")
    try:
        if not args.cluster_database:
            secret = read_secret(secret_path)
    except FileNotFoundError:
        _err(f"{secret_path}: no such file (give the gateway's data directory or its api_secret file)")
        return EXIT_BAD_INPUT
    except (OSError, ValueError) as exc:
        _err(str(exc) if isinstance(exc, ValueError) else f"{secret_path}: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    found = []
    try:
        sdp = load_sdp(args.sdp) if args.sdp else None
    except OSError as exc:
        _err(f"{args.sdp}: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    for path in args.capture:
        try:
            streams, reader = load_capture(path, sdp, strict=args.strict)
        except CaptureError as exc:
            _err(str(exc))
            return EXIT_BAD_INPUT
        except FileNotFoundError as exc:
            _err(f"{exc.filename}: no such file")
            return EXIT_BAD_INPUT
        except OSError as exc:
            _err(f"{exc.filename or path}: {exc.strerror or exc}")
            return EXIT_BAD_INPUT
        if reader.snapped:
            what = (f"{path}: {reader.snapped} of {reader.packets} packets were cut by the capture's snap length "
                    "(their payloads are incomplete)")
            if args.strict:
                _err(f"{what}; --strict refuses them")
                return EXIT_BAD_INPUT
            print(f"callsgw loadtest: warning: {what}; replaying them as they are (--strict refuses)",
                  file=sys.stderr)
        if reader.problem is not None:
            print(f"callsgw loadtest: warning: {reader.problem}; replaying the packets before it", file=sys.stderr)
        if not streams:
            _err(f"{path}: no RTP found in {reader.packets} packets ({reader.format})")
            return EXIT_NO_RTP
        found.extend((path, stream, raw) for stream, raw in streams)
    chosen, used, problem = _choose_streams(found, args.stream)
    if problem:
        _err(problem)
        return EXIT_BAD_INPUT
    for line in used:
        print(f"callsgw loadtest: {line}", file=sys.stderr)
    voice, video = pick_tracks([(stream, raw) for _, stream, raw in chosen])
    from loadtest import impair
    from loadtest.replay import udpio

    if getattr(args, "impaired_calls", None) is not None and not 0 <= args.impaired_calls <= calls:
        _err(f"--impaired-calls must be between 0 and --calls {calls}, got {args.impaired_calls}")
        return EXIT_BAD_INPUT
    args.impairment = impair.from_args(args)
    args.impair_seed = args.impairment.seed  # one seed for every step of find-max, reported in the settings
    if args.impairment.active and udpio is None:
        _err("--loss, --jitter and --rate-limit need the native media path (callsgw._native.udpio is not built)")
        return EXIT_BAD_INPUT
    try:
        gateway_pid, gateway_note = _gateway_process(
            "none" if getattr(args, "gateway_metrics", None) and args.gateway_pid == "auto" else args.gateway_pid,
            args.url)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    metrics_probe = None
    if getattr(args, "gateway_metrics", None):
        metrics_probe = _metrics_probe(args)
        if metrics_probe is None:
            return EXIT_BAD_INPUT
    return {"secret": secret, "chosen": chosen, "used": used, "voice": voice, "video": video,
            "gateway_pid": gateway_pid, "gateway_note": gateway_note, "gateway_metrics": metrics_probe}


def execute_run(args: argparse.Namespace, prep: dict, progress_lines: bool = True) -> dict | int:
    """One run of ``args.calls`` x ``--participants-per-call`` for ``args.duration`` s: the report
    with thresholds and identity, or the exit status (the error printed)."""
    import asyncio

    from loadtest.replay import Interrupted, LoadRun, ReplayError, RunConfig
    from loadtest.report import Progress

    secret, voice, video = prep["secret"], prep["voice"], prep["video"]
    gateway_pid, gateway_note, chosen, used = prep["gateway_pid"], prep["gateway_note"], prep["chosen"], prep["used"]
    config = RunConfig(
        url=args.url, secret=secret, calls=args.calls, participants_per_call=args.participants_per_call,
        voice=voice, video=video, duration=args.duration, speed=args.speed, ramp_up=args.ramp_up,
        ssl=False if args.insecure else None, join_timeout=args.join_timeout,
        gateway_pid=gateway_pid, gateway_note=gateway_note, speakers_per_call=args.speakers_per_call,
        gateway_metrics=prep.get("gateway_metrics"),
        impairment=args.impairment if args.impairment.active else None,
    )
    schedule = getattr(args, "schedule", None)
    if schedule is not None:
        config.joins, config.leaves, config.holds = schedule
        config.stages = [tuple(s) for s in args.stage]
    started = _utc_now()
    progress = Progress(args.calls * args.participants_per_call)
    load = LoadRun(config, on_progress=progress if progress_lines else None)
    try:
        with progress:
            report = asyncio.run(_run_with_signals(load))
    except Interrupted as exc:
        _err(str(exc))
        return EXIT_INTERRUPTED.get(exc.signal_name, EXIT_BAD_INPUT)
    except ReplayError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # a second SIGINT: abort without results
        _err("interrupted twice: aborted without results")
        return EXIT_INTERRUPTED["SIGINT"]
    from loadtest.thresholds import evaluate

    report["thresholds"] = evaluate(report, args)
    report["config"]["captures"] = list(args.capture)
    report["config"]["streams_used"] = used
    report["identity"] = run_identity(args, started, _utc_now(), chosen)
    return {"identity": report.pop("identity"), **report}  # first in the JSON


MIN_MEDIA_AFTER_RAMP_S = 1.0


def ramp_problem(participants: int, ramp_up: float, duration: float) -> str | None:
    """Why a ramp cannot fit in the run (refused before it starts), or None. The senders stop
    DRAIN_S (at most a tenth of the run) before the end; the last participant should have at least
    MIN_MEDIA_AFTER_RAMP_S of media before that."""
    from loadtest.replay import DRAIN_S

    if participants <= 1 or ramp_up == 0:
        return None
    span = (participants - 1) / ramp_up
    sending = duration - min(DRAIN_S, duration / 10)
    if span + MIN_MEDIA_AFTER_RAMP_S <= sending:
        return None
    need_rate = (participants - 1) / max(sending - MIN_MEDIA_AFTER_RAMP_S, 1e-9)
    need_duration = span + MIN_MEDIA_AFTER_RAMP_S + DRAIN_S
    if need_duration < 10 * DRAIN_S:  # short runs drain a tenth of their length
        need_duration = (span + MIN_MEDIA_AFTER_RAMP_S) / 0.9
    import math

    need_rate, need_duration = math.ceil(need_rate * 10) / 10, math.ceil(need_duration * 10) / 10
    return (f"--ramp-up {ramp_up:g}/s starts the {participants} participants over {span:.1f} s, which leaves less "
            f"than {MIN_MEDIA_AFTER_RAMP_S:g} s of media within --duration {duration:g} s: raise --ramp-up to "
            + (f"{need_rate:.1f}/s or more" if sending > MIN_MEDIA_AFTER_RAMP_S else "0 (all at once)")
            + f", or --duration to {need_duration:.1f} s or more (the gateway admits --joins-per-second "
            "joins per address, default 5)")


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


SETTINGS = ("url", "calls", "participants_per_call", "speakers_per_call", "duration", "stage", "speed", "ramp_up",
            "join_timeout", "stream", "agents", "loss", "jitter", "rate_limit", "impair_side", "impaired_calls",
            "impair_seed",
            "sdp", "strict", "gateway_pid", "max_loss", "max_delay_p95", "max_jitter", "max_handshake_p95",
            "min_joined")


def _file_identity(path: str) -> dict:
    import hashlib
    import os

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"path": path, "name": os.path.basename(path), "bytes": os.path.getsize(path),
                "sha256": digest.hexdigest()}
    except OSError:
        return {"path": path, "name": os.path.basename(path), "bytes": None, "sha256": None}


def run_identity(args: argparse.Namespace, started: str, finished: str, chosen: list) -> dict:
    """What makes two runs comparable (or not): when, which callsgw, which captures and streams,
    which settings. ``chosen``: the (capture path, stream, raw packets) used."""
    import platform
    import socket

    import callsgw

    kinds = ["voice", "screen"]
    streams = []
    for (path, stream, _), kind in zip(chosen, kinds):
        s = stream.summary()
        streams.append({"kind": kind, "capture": path, "ssrc": s["ssrc"], "payload_type": s["payload_type"],
                        "codec": s["codec"], "packets": s["packets"], "duration_s": round(s["duration_s"], 3)})
    settings = {}
    for name in SETTINGS:
        value = getattr(args, name, None)
        if isinstance(value, tuple):  # --min-joined (value, is_percent)
            value = f"{value[0]:g}%" if value[1] else int(value[0])
        settings[name] = value
    return {
        "started_at": started,
        "finished_at": finished,
        "callsgw_version": callsgw.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "captures": [_file_identity(p) for p in args.capture],
        "streams": streams,
        "settings": settings,
    }


def exit_status(report: dict) -> int:
    """The run's exit status from its report (README, ``callsgw loadtest run --help``)."""
    if report.get("interrupted"):
        return EXIT_INTERRUPTED.get(report["interrupted"], EXIT_BAD_INPUT)
    if report.get("failures"):
        return EXIT_FAILED
    if (report.get("thresholds") or {}).get("failed"):
        return EXIT_THRESHOLD
    return EXIT_OK if report["participants"]["failed"] == 0 else EXIT_PARTIAL


async def _run_with_signals(load) -> dict:
    """Run with SIGINT/SIGTERM ending the run cleanly (a second one acts as usual)."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    installed = []

    def on_signal(sig: signal.Signals) -> None:
        print(f"callsgw loadtest: {sig.name}: ending the run and writing the results "
              f"(again to abort)", file=sys.stderr, flush=True)
        load.interrupt(sig.name)
        loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread: no handlers
            pass
    try:
        return await load.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)

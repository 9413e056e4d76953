"""``callsgw loadtest find-max`` (issue #22 deliverable 4): step mode, as Mattermost's load-test
feedback mode does. It runs ``loadtest run`` steps of growing load, ``--start-calls`` calls of
``--participants-per-call`` and ``--step-calls`` more each step up to ``--max-calls``, each a fresh
run of ``--step-duration`` seconds (new joins; calls of one step are not reused by the next),
and stops at the first step that fails: a breached threshold (the ``run`` options
``--max-loss`` and the rest), a failure (gateway gone, participant dropped, stream missing or
stopped) or participants that did not join. The largest step that passed is the answer; every
step's figures are printed as it ends and kept in ``--json``.

Exit status: 0 a maximum was found (a step passed; also when every step passed: the summary says
the top was not reached); 5 the first step already failed; 130 / 143 interrupted by SIGINT /
SIGTERM (the steps so far are reported); 1 a capture holds no RTP; 2 bad input, an unwritable
``--json`` path, or an unreachable gateway at the first step.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["add_parser", "main", "step_row"]

EXIT_OK = 0
EXIT_FIRST_STEP_FAILED = 5


def add_parser(sub) -> None:
    from loadtest import cli

    p = sub.add_parser(
        "find-max",
        help="step mode: raise the load step by step, report the largest that keeps every threshold",
        description="Run steps of growing load against the gateway at --url: --start-calls calls of "
        "--participants-per-call participants, then --step-calls more calls each step up to --max-calls, "
        "each step a fresh 'loadtest run' of --step-duration seconds (a --pause between steps lets the gateway "
        "close the previous step's sessions). A step passes when every participant joined, nothing failed "
        "(gateway gone, participant dropped, stream missing or stopped) and every threshold given held "
        "(--max-loss, --max-delay-p95, --max-jitter, --max-handshake-p95, --min-joined). It stops at the first "
        "step that does not pass and reports the largest that did, with every step's figures. "
        "Exit status: 0 a maximum was found (or every step passed: the top was not reached); 5 the first "
        "step already failed; 130 / 143 interrupted (the steps so far are reported); 1 no RTP in a capture; "
        "2 bad input, unwritable --json path or unreachable gateway.")
    cli._load_options(p, step_mode=True)
    p.add_argument("--start-calls", type=cli._count, default=1, metavar="M", help="Calls of the first step. Default 1.")
    p.add_argument("--step-calls", type=cli._count, default=1, metavar="K", help="Calls added each step. Default 1.")
    p.add_argument("--max-calls", type=cli._count, required=True, metavar="M", help="Calls of the last step at most.")
    p.add_argument("--step-duration", type=cli._positive_float, required=True, metavar="S",
                   help="Each step's --duration in seconds (ramp-up included).")
    p.add_argument("--pause", type=float, default=2.0, metavar="S",
                   help="Seconds between steps. Default 2.")
    p.add_argument("--json", dest="json_out", metavar="OUT", default=None,
                   help="Write every step's figures and the result as JSON to OUT.")


def step_row(report: dict, status: int) -> dict:
    """One step's figures and why it failed (empty when it passed)."""
    from loadtest.compare import figures

    parts = report["participants"]
    reasons = [f"threshold {name}" for name in (report.get("thresholds") or {}).get("failed", ())]
    kinds: dict[str, int] = {}
    for failure in report.get("failures") or ():
        kinds[failure["kind"]] = kinds.get(failure["kind"], 0) + 1
    reasons += [f"{n} x {kind.replace('_', ' ')}" for kind, n in kinds.items()]
    if parts["failed"]:
        reasons.append(f"{parts['failed']} of {parts['planned']} did not join")
    if report.get("interrupted"):
        reasons.append(f"interrupted by {report['interrupted']}")
    return {"calls": report["config"]["calls"], "participants": parts["planned"], "joined": parts["joined"],
            "passed": status == 0 and not reasons, "exit_status": status, "reasons": reasons,
            "figures": figures(report), "thresholds": report.get("thresholds"),
            "started_at": (report.get("identity") or {}).get("started_at")}


def _line(i: int, row: dict) -> str:
    f = row["figures"]

    def v(name: str, fmt: str) -> str:
        return "-" if f.get(name) is None else fmt.format(f[name])

    verdict = "PASS" if row["passed"] else "FAIL (" + "; ".join(row["reasons"]) + ")"
    return (f"step {i}: {row['calls']} calls, {row['participants']} participants: {verdict}; joined "
            f"{row['joined']}/{row['participants']}, loss {v('loss', '{:.3f}')}%, delay p95 {v('delay p95', '{:.2f}')} "
            f"ms, jitter p95 {v('jitter p95', '{:.2f}')} ms, handshake p95 {v('handshake p95', '{:.0f}')} ms, "
            f"received {v('received', '{:.0f}')} pkt/s, tester CPU {v('tester CPU', '{:.0f}')}%"
            + ("" if f.get("gateway CPU") is None else
               f", gateway CPU {v('gateway CPU', '{:.0f}')}% ({v('gateway us per forwarded packet', '{:.1f}')} us/pkt)"))


def main(args: argparse.Namespace) -> int:
    from loadtest import cli
    from loadtest.report import write_json

    if args.start_calls > args.max_calls:
        cli._err(f"--start-calls {args.start_calls} is more than --max-calls {args.max_calls}")
        return cli.EXIT_BAD_INPUT
    if not 0 <= args.pause < 3600:
        cli._err("--pause must be 0..3600 seconds")
        return cli.EXIT_BAD_INPUT
    steps = list(range(args.start_calls, args.max_calls + 1, args.step_calls))
    # the largest step's ramp must fit: checked once, before the first step
    prep = cli.prepare_run(args, steps[-1], args.step_duration, ((args.json_out, "--json", False),))
    if isinstance(prep, int):
        return prep
    rows, best, stopped, code = [], None, None, None
    started = cli._utc_now()
    for i, calls in enumerate(steps, start=1):
        step_args = argparse.Namespace(**vars(args))
        step_args.calls, step_args.duration = calls, args.step_duration
        print(f"callsgw loadtest: find-max step {i} of at most {len(steps)}: {calls} calls x "
              f"{args.participants_per_call} = {calls * args.participants_per_call} participants for "
              f"{args.step_duration:g} s", file=sys.stderr, flush=True)
        report = cli.execute_run(step_args, prep, progress_lines=False)
        if isinstance(report, int):
            if report in cli.EXIT_INTERRUPTED.values():
                stopped, code = "interrupted", report
                break
            if i == 1:
                return report  # unreachable gateway, refused first join: bad input
            rows.append({"calls": calls, "participants": calls * args.participants_per_call, "joined": 0,
                         "passed": False, "exit_status": report, "reasons": ["the step's first join failed"],
                         "figures": {}, "thresholds": None, "started_at": None})
            print(f"callsgw loadtest: {_line(i, rows[-1])}", file=sys.stderr, flush=True)
            break
        status = cli.exit_status(report)
        row = step_row(report, status)
        rows.append(row)
        print(f"callsgw loadtest: {_line(i, row)}", file=sys.stderr, flush=True)
        if report.get("interrupted"):
            stopped, code = "interrupted", cli.EXIT_INTERRUPTED.get(report["interrupted"], cli.EXIT_BAD_INPUT)
            break
        if not row["passed"]:
            break
        best = row
        if i < len(steps):
            try:
                time.sleep(args.pause)
            except KeyboardInterrupt:
                stopped, code = "interrupted", cli.EXIT_INTERRUPTED["SIGINT"]
                break
    top_reached = best is not None and best is rows[-1] and stopped is None
    if best is None:
        verdict = "no step kept every threshold: the first already failed"
    elif top_reached:
        verdict = (f"every step passed up to --max-calls: at least {best['calls']} calls, {best['participants']} "
                   "participants (raise --max-calls to find the limit)")
    else:
        verdict = f"the largest load that kept every threshold: {best['calls']} calls, {best['participants']} participants"
    lines = [_line(i, row) for i, row in enumerate(rows, start=1)]
    lines.append(("INTERRUPTED: " if stopped else "") + verdict)
    print("\n".join(lines))
    identity = cli.run_identity(args, started, cli._utc_now(), prep["chosen"])
    for name in ("calls", "duration"):
        identity["settings"].pop(name, None)
    identity["settings"].update(start_calls=args.start_calls, step_calls=args.step_calls, max_calls=args.max_calls,
                                step_duration=args.step_duration, pause=args.pause)
    result = {"identity": identity, "mode": "find-max", "steps": rows, "max": best, "top_reached": top_reached,
              "verdict": verdict, "interrupted": stopped is not None}
    if args.json_out:
        try:
            write_json(result, args.json_out)
        except OSError as exc:
            cli._err(f"{exc.filename}: {exc.strerror or exc}")
            return cli.EXIT_BAD_INPUT
    if code is not None:
        return code
    return EXIT_OK if best is not None else EXIT_FIRST_STEP_FAILED

"""Run one fuzz target under atheris (libFuzzer): ``python -m fuzz.run <target> [libFuzzer args...]``.

The target's modules (callsgw, loadtest, and the parsers they lean on: aioice's STUN codec,
aiortc's SDP module, PyJWT) are imported under atheris' coverage instrumentation. Executions are
counted here and added every few seconds to ``--counter FILE`` (JSON: ``executions``), so that an
interrupted long run keeps its count (libFuzzer's exit paths skip Python's atexit hooks; at most
the last two seconds are lost, and ``scripts/fuzz.sh`` corrects the count from libFuzzer's final
"Done N runs" line when there is one).
"""

from __future__ import annotations

import json
import os
import sys
import time


def _counter_args(argv: list[str]) -> tuple[str | None, list[str]]:
    counter, rest = None, []
    it = iter(argv)
    for arg in it:
        if arg == "--counter":
            counter = next(it)
        elif arg.startswith("--counter="):
            counter = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return counter, rest


def _self_command(name: str) -> str:
    """An executable that runs this target again: libFuzzer re-runs argv[0] for -merge, -fork and -jobs."""
    import shlex
    import tempfile

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(tempfile.gettempdir(), f"callsgw-fuzz-{os.getuid()}-{name}.sh")
    fd, tmp = tempfile.mkstemp(prefix=f"callsgw-fuzz-{name}-", suffix=".sh")
    with os.fdopen(fd, "w") as f:
        f.write(
            "#!/bin/sh\n"
            f"PYTHONPATH={shlex.quote(repo)}${{PYTHONPATH:+:$PYTHONPATH}} "
            f"exec {shlex.quote(sys.executable)} -m fuzz.run {shlex.quote(name)} \"$@\"\n"
        )
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m fuzz.run <target> [--counter FILE] [libFuzzer args...]")
    name = sys.argv[1]
    counter, libfuzzer_args = _counter_args(sys.argv[2:])

    native_dir = os.environ.get("CALLSGW_NATIVE_DIR")
    if native_dir:  # the sanitizer build of native/ (scripts/fuzz.sh), found before callsgw/_native/
        import callsgw._native

        callsgw._native.__path__.insert(0, native_dir)
        # imported before libFuzzer starts, so that it counts both modules' coverage counters
        import callsgw._native.engine
        import callsgw._native.srtp

        for module in (callsgw._native.srtp, callsgw._native.engine):
            if not module.__file__.startswith(native_dir):
                raise SystemExit(f"CALLSGW_NATIVE_DIR={native_dir} but {module.__file__} was loaded")
        print(f"native core from {native_dir}", file=sys.stderr)

    import atheris

    import fuzz

    with atheris.instrument_imports(include=["callsgw", "loadtest", "fuzz", "aioice.stun", "aiortc.sdp", "jwt"]):
        target = fuzz.load(name)

    state = {"base": 0, "runs": 0, "flushed_at": time.monotonic()}
    if counter and os.path.exists(counter):
        with open(counter) as f:
            state["base"] = int(json.load(f).get("executions", 0))

    def flush() -> None:
        if not counter:
            return
        try:
            with open(counter) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = {}
        saved.update(target=name, executions=state["base"] + state["runs"], updated=time.time())
        tmp = counter + ".tmp"
        with open(tmp, "w") as f:
            json.dump(saved, f, indent=1, sort_keys=True)
        os.replace(tmp, counter)
        state["flushed_at"] = time.monotonic()

    test_one_input = target.TestOneInput

    last_run = next((int(a.split("=", 1)[1]) for a in libfuzzer_args if a.startswith("-runs=")), -1)

    def counted(data: bytes) -> None:
        state["runs"] += 1
        runs = state["runs"]
        if runs == last_run or (not runs & 1023 and time.monotonic() - state["flushed_at"] > 2):
            flush()
        test_one_input(data)

    import atexit

    atexit.register(flush)
    atheris.Setup([_self_command(name), *libfuzzer_args], counted)
    try:
        atheris.Fuzz()
    finally:
        flush()


if __name__ == "__main__":
    main()

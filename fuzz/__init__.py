"""Coverage-guided fuzz targets (atheris) for the parsers a remote peer reaches (issue #20, deliverable 1).

Each ``fuzz/fuzz_<name>.py`` has a ``TestOneInput(data: bytes)`` that feeds the real parser and
lets only that parser's documented error types pass: any other exception is a finding. The
targets are plain Python (no atheris import), so the test suite's smoke run
(``tests/fuzz/test_fuzz_smoke.py``) drives them without instrumentation; ``python -m fuzz.run``
runs one under atheris/libFuzzer. ``scripts/fuzz.sh`` is the front end, ``fuzz/corpus/<name>/``
the minimized seed corpora (regenerate with ``python -m fuzz.make_corpus``). ``srtp``, ``engine``
and ``dtls_records`` drive the native core and the DTLS record layer; ``scripts/fuzz.sh`` runs them
on a build of native/ with AddressSanitizer and UndefinedBehaviorSanitizer.
"""

from __future__ import annotations

from pathlib import Path

#: target name -> module (fuzz.fuzz_<name>)
TARGETS: tuple[str, ...] = (
    "stun",
    "demux",
    "rtp",
    "rtcp",
    "sdp_offer",
    "client_sdp",
    "signaling",
    "tokens",
    "negotiation",
    "capture",
    "whip",
    "srtp",
    "engine",
    "dtls_records",
)

#: targets that scripts/fuzz.sh runs on the AddressSanitizer/UndefinedBehaviorSanitizer build of
#: native/ (fuzz/.work/asan-build/, chosen with CALLSGW_NATIVE_DIR; see fuzz/run.py)
SANITIZED: tuple[str, ...] = ("srtp", "engine", "dtls_records")

#: sanitized targets whose runs have LeakSanitizer on (scripts/fuzz.sh; fuzz/lsan.supp): the native
#: core's, where a leak would be callsgw's own. Python runs with PYTHONMALLOC=malloc there, so that
#: LeakSanitizer sees every Python object (pymalloc's arenas are mmap'd memory it does not scan,
#: and the native allocations they point to looked leaked: 4.3 MB in 3,700 blocks after 3,000 srtp
#: inputs). dtls_records is left out: the uninstrumented OpenSSL it drives is reached through
#: cryptography's pyo3 and cffi modules, which keep one-time allocations LeakSanitizer reports.
LEAK_CHECKED: tuple[str, ...] = ("srtp", "engine")

#: of those, the ones where libFuzzer's check after each input (``-detect_leaks``: a whole-heap
#: LeakSanitizer pass whenever an input ends with more mallocs than frees) is too slow (engine: 8
#: executions/s instead of about 1,300; its Python state grows between inputs): they get the check
#: at exit only, which finds the same leaks (a block nothing points to stays so) without the input
LEAK_CHECKED_AT_EXIT: tuple[str, ...] = ("engine",)

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"


def load(name: str):
    """The target module ``fuzz.fuzz_<name>``."""
    import importlib

    if name not in TARGETS:
        raise SystemExit(f"unknown fuzz target {name!r}; known: {', '.join(TARGETS)}")
    return importlib.import_module(f"fuzz.fuzz_{name}")

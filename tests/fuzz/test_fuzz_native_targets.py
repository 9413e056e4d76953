"""The native-core and DTLS fuzz targets reach past their gates (issue #20 deliverable 1).

A target whose every input dies at the first check (the SRTP tag, the engine's session lookup, the
DTLS cookie) would run millions of executions and prove nothing. These tests show that the seed
corpora and the harnesses' real keys get the fuzzer through: seeds that authenticate for both SRTP
profiles, RTP and RTCP; an engine that forwards the seeds' video; a DTLS server that answers the
harness's ClientHellos with its flight. And the UBSan suppressions stay as narrow as documented.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

import fuzz
from callsgw.dtls.connection import DtlsState
from callsgw.srtp import SrtpError
from fuzz import fuzz_dtls_records, fuzz_engine, fuzz_srtp


def _seeds(name: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((fuzz.CORPUS_DIR / name).iterdir())]


def test_srtp_seeds_authenticate_for_both_profiles_rtp_and_rtcp():
    authenticated = set()
    for seed in _seeds("srtp"):
        flags = seed[0]
        if flags & 4:
            continue
        profile, rtcp = fuzz_srtp.PROFILES[flags & 1], bool(flags & 2)
        rx = fuzz_srtp.receiver(profile)
        for packet in fuzz_srtp.packets_of(seed[1:]):
            try:
                (rx.unprotect_rtcp if rtcp else rx.unprotect)(packet)
            except SrtpError:
                continue
            authenticated.add((profile, rtcp))
    assert authenticated == {(p, r) for p in fuzz_srtp.PROFILES for r in (False, True)}


def test_srtp_target_finds_a_batch_that_disagrees_with_the_per_packet_api(monkeypatch):
    """The oracle can fail: a batch API that reports OK for a packet the per-packet API refuses."""
    import numpy as np

    from callsgw.srtp import Profile

    seed = fuzz_srtp.encode(0, [b"\x80\x00" + b"\x00" * 30])  # not authentic: AUTH from both
    fuzz_srtp.TestOneInput(seed)
    real = fuzz_srtp.receiver

    class Lying:
        def __init__(self, session):
            self.session = session

        def __getattr__(self, name):
            return getattr(self.session, name)

        def unprotect_batch(self, buf, offsets, lengths, status=None):
            return np.zeros(len(offsets), np.uint8)

    made = []

    def receiver(profile: Profile):
        made.append(real(profile))
        return made[-1] if len(made) % 2 else Lying(made[-1])

    monkeypatch.setattr(fuzz_srtp, "receiver", receiver)
    try:
        fuzz_srtp.TestOneInput(seed)
    except AssertionError as exc:
        assert "batch status" in str(exc)
    else:
        raise AssertionError("the srtp target did not notice the batch API disagreeing")


def test_engine_seeds_are_forwarded_to_the_subscriber():
    h = fuzz_engine.harness()
    for seed in _seeds("engine"):
        before = h.engine.totals["datagrams"]
        fuzz_engine.TestOneInput(seed)
        assert h.engine.totals["datagrams"] > before
    # TestOneInput drains S's socket: one more video packet as the seeds send it, then look at S
    routes = set()
    h.pub.sock.sendto(h.pub.tx.protect(struct.pack("!BBHII", 0x80, 96, 30010, 9, fuzz_engine.VIDEO_SSRC) + b"v" * 40),
                      h.pub.gateway_addr)
    h.poll_until(1)
    for plain in h.sub.receive_all():
        routes.add(struct.unpack_from("!I", plain, 8)[0])
        assert plain[1] & 0x7F == 100  # payload type 96 rewritten by the route's map
    assert fuzz_engine.VIDEO_OUT in routes


def test_engine_target_notices_when_forwarding_stops(monkeypatch):
    h = fuzz_engine.harness()
    monkeypatch.setattr(h.sub, "receive_all", lambda: [])
    try:
        fuzz_engine.TestOneInput(b"")
    except AssertionError as exc:
        assert "stopped forwarding" in str(exc)
    else:
        raise AssertionError("the engine target did not notice the control stream stopping")


def test_dtls_harness_gets_past_the_first_flight():
    s = fuzz_dtls_records._setup()
    mux, transport = fuzz_dtls_records.gateway()  # through the gateway's mux, ICE validated
    for datagram in s["hello"]:
        mux.receive(datagram, fuzz_dtls_records.CLIENT, 0.0)
    flights = [d for d, addr in mux.datagrams_to_send() if addr == fuzz_dtls_records.CLIENT]
    assert len(flights) >= 2  # HelloVerifyRequest, then ServerHello...ServerHelloDone
    assert any(d[0] == 22 and d[13] == 2 for d in flights), "no ServerHello"
    assert transport.dtls.state is DtlsState.HANDSHAKING
    assert fuzz_dtls_records.connected_gateway()[1].dtls.state is DtlsState.ESTABLISHED
    for seed in _seeds("dtls_records"):
        fuzz_dtls_records.TestOneInput(seed)


def test_ubsan_suppressions_are_only_cythons_generated_wrappers():
    lines = [line.strip() for line in (fuzz.FUZZ_DIR / "ubsan.supp").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules == ["pointer-overflow:__pyx_pw_*", "pointer-overflow:__pyx_tp_new_*"]
    assert set(fuzz.SANITIZED) <= set(fuzz.TARGETS)


def _sanitizer_build_current() -> bool:
    """fuzz/.work/asan-build/ exists (scripts/fuzz.sh --build-asan) and was built from this native/."""
    import hashlib

    build = fuzz.FUZZ_DIR / ".work" / "asan-build"
    sources = build / "lib" / "SOURCES"
    if not (build / "asan_with_fuzzer.so").exists() or not sources.exists():
        return False
    for line in sources.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = fuzz.FUZZ_DIR.parent / name
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return False
    return True


@pytest.mark.parametrize("name", fuzz.SANITIZED)
def test_the_corpus_runs_clean_under_asan_and_ubsan(name):
    """Where the sanitizer build exists (a developer's machine after ``scripts/fuzz.sh``), every kept
    input of the native targets runs under it with no sanitizer report. CI has no clang: skipped."""
    if not _sanitizer_build_current():
        pytest.skip("no current sanitizer build of native/ (scripts/fuzz.sh --build-asan)")
    files = sorted(str(p) for p in (fuzz.CORPUS_DIR / name).iterdir())
    # and what the sanitized runs found (tests/fuzz/crashes/srtp-ubsan-cython-null-plus-zero: UBSan's
    # "applying zero offset to null pointer" in Cython's argument parsing of Session(), on any input)
    files += sorted(str(p) for p in (Path(__file__).parent / "crashes").glob(f"{name}-*"))
    proc = subprocess.run(["scripts/fuzz.sh", "--repro", name, *files], cwd=fuzz.FUZZ_DIR.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "native core from" in proc.stderr and "Loaded 2 modules" in proc.stderr  # sanitized, with native coverage
    assert proc.stderr.count("Executed ") == len(files)
    assert "runtime error" not in proc.stderr and "AddressSanitizer" not in proc.stderr


def test_lsan_suppressions_never_name_the_interpreter_or_a_whole_library():
    """A LeakSanitizer suppression matches any frame of a leak's stack, and every allocation a fuzz
    input causes has libpython and atheris frames above it: naming either would hide every leak."""
    lines = [line.strip() for line in (fuzz.FUZZ_DIR / "lsan.supp").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules == ["leak:OPENSSL_init_crypto", "leak:OPENSSL_init_ssl"]
    assert set(fuzz.LEAK_CHECKED) <= set(fuzz.SANITIZED) and set(fuzz.LEAK_CHECKED_AT_EXIT) <= set(fuzz.LEAK_CHECKED)


_LEAKY = """
import ctypes, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
kept = libc.malloc(4242) if sys.argv[1] == "leak" else None
kept = None  # the only pointer to it is gone
libc.exit(0)  # as libFuzzer ends a run: C's exit, LeakSanitizer's check, no Py_Finalize
"""


@pytest.mark.parametrize("leak", [True, False], ids=["leak", "no-leak"])
def test_leak_detection_as_the_fuzz_runs_have_it_reports_a_leak_made_from_python(leak):
    """The leak-checked runs' environment (scripts/fuzz.sh asan_env: the ASan runtime preloaded,
    PYTHONMALLOC=malloc, detect_leaks=1, fuzz/lsan.supp) reports a block malloc'd from Python and
    dropped, and reports nothing otherwise: CPython itself is clean under it (without
    PYTHONMALLOC=malloc it is not: pymalloc's arenas are not scanned), and the suppressions do not
    hide what is called from Python."""
    import os
    import sys

    runtime = fuzz.FUZZ_DIR / ".work" / "asan-build" / "asan_with_fuzzer.so"
    if not runtime.exists():
        pytest.skip("no sanitizer runtime (scripts/fuzz.sh --build-asan; needs clang)")
    env = dict(os.environ, LD_PRELOAD=str(runtime), PYTHONMALLOC="malloc",
               # symbolize=0: the symbolizer would be a child with the runtime preloaded too
               ASAN_OPTIONS="detect_leaks=1:malloc_context_size=6:symbolize=0",
               LSAN_OPTIONS=f"suppressions={fuzz.FUZZ_DIR / 'lsan.supp'}")
    proc = subprocess.run([sys.executable, "-c", _LEAKY, "leak" if leak else "clean"], env=env,
                          capture_output=True, text=True, timeout=120)
    if leak:
        assert proc.returncode != 0 and "ERROR: LeakSanitizer" in proc.stderr, proc.stderr[-3000:]
        assert "Direct leak of 4242 byte(s)" in proc.stderr
    else:
        assert proc.returncode == 0 and "LeakSanitizer" not in proc.stderr, proc.stderr[-3000:]

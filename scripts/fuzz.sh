#!/usr/bin/env bash
# Coverage-guided fuzzing (issue #20 deliverable 1) with atheris: the parsers a remote peer reaches,
# the native core (SRTP/SRTCP unprotect, the engine path) and the DTLS record layer.
#
#   ./scripts/fuzz.sh                      # every target, 60 s each
#   ./scripts/fuzz.sh stun 1800            # one target for 30 minutes
#   ./scripts/fuzz.sh all 300              # every target, 5 minutes each
#   ./scripts/fuzz.sh rtp --runs 1000000   # one target for a number of executions
#   ./scripts/fuzz.sh --minimize [target]  # fold what runs found back into fuzz/corpus/, minimized
#   ./scripts/fuzz.sh --status             # executions and coverage so far, per target
#   ./scripts/fuzz.sh --build-asan         # (re)build the sanitizer build of native/ (below)
#   ./scripts/fuzz.sh --list
#
# Targets: fuzz/fuzz_<name>.py (see fuzz/__init__.py). A run resumes from the kept corpus
# (fuzz/corpus/<name>/, in git) and the working corpus (fuzz/.work/<name>/corpus/, not in git,
# where libFuzzer adds what it finds). Executions add up in fuzz/.work/<name>/counter.json, so an
# interrupted long run (Ctrl-C, kill) keeps its count and the next run continues it. Crashes go to
# fuzz/.work/<name>/crash-*; reproduce one with `./scripts/fuzz.sh --repro <name> FILE` (for
# srtp, engine and dtls_records in the sanitizer environment, as their runs).
#
# srtp, engine and dtls_records (fuzz.SANITIZED) run on a build of native/*.pyx with clang's
# -fsanitize=address,undefined,fuzzer-no-link in fuzz/.work/asan-build/ (never over callsgw/_native/;
# made on first use and whenever native/ changed; needs `apt-get install clang-14
# libclang-rt-14-dev`), loaded before callsgw/_native/ (CALLSGW_NATIVE_DIR), with ASan and libFuzzer
# merged into one runtime preloaded into Python: libFuzzer sees the native core's edge coverage as
# well as atheris' Python coverage. UBSan reports stop the run (fuzz/ubsan.supp exempts only
# Cython's generated argument parsing from one check). OpenSSL and pyOpenSSL are the system's,
# uninstrumented, so dtls_records gets Python coverage and ASan's allocator checks only.
# FUZZ_SANITIZE=0 runs them on the normal build.
#
# Leaks: srtp and engine (fuzz.LEAK_CHECKED) run with LeakSanitizer on and PYTHONMALLOC=malloc (so
# that it sees every Python object: pymalloc's mmap'd arenas are not scanned and made false leaks).
# srtp is checked after every input that ends with more mallocs than frees (libFuzzer's
# -detect_leaks, a leak-* input is written), engine at exit only (the per-input check is 150 times
# slower there); either way a leak is a finding (exit 77 or 134) with the allocation's stack.
# fuzz/lsan.supp exempts only named third-party one-time allocations, never libpython (every
# allocation made from Python, callsgw's native code's included, has libpython frames above it).
# Checked by hand: a copy of native/srtp.pyx with one EVP_CIPHER_CTX_free removed fails the srtp
# run within its first inputs ("Direct leak of 184 bytes ... CRYPTO_zalloc ... Session.__init__").
# FUZZ_LEAKS=0 turns it off.
#
# Extra libFuzzer flags: FUZZ_ARGS="-max_len=2048 -seed=1" ./scripts/fuzz.sh stun 600
set -euo pipefail
cd "$(dirname "$0")/.."
py="${CALLSGW_VENV:-.venv}/bin/python"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
targets=$("$py" -c 'import fuzz; print(" ".join(fuzz.TARGETS))')

usage() { sed -n '2,42p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

# -- the sanitizer build of native/ (srtp, engine, dtls_records run on it) ---------------------
asan_dir=fuzz/.work/asan-build
sanitized=$("$py" -c 'import fuzz; print(" ".join(fuzz.SANITIZED))')
leak_checked=$("$py" -c 'import fuzz; print(" ".join(fuzz.LEAK_CHECKED))')
leak_at_exit=$("$py" -c 'import fuzz; print(" ".join(fuzz.LEAK_CHECKED_AT_EXIT))')
clang=$(command -v clang-14 || command -v clang || true)
symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || echo /usr/lib/llvm-14/bin/llvm-symbolizer)
build_asan() {  # native/*.pyx with ASan+UBSan+coverage into fuzz/.work/asan-build/lib, never over callsgw/_native/
  local src="$asan_dir/src" rt
  [ -n "$clang" ] || { echo "the sanitizer build needs clang: apt-get install clang-14 libclang-rt-14-dev" >&2; return 1; }
  rm -rf "$src" && mkdir -p "$src" "$asan_dir/lib"
  cp setup.py pyproject.toml README.md "$src"/ && cp -r native "$src"/
  # Cython lives only in pip's isolated build environments, so the build gets a small venv of its own
  if [ ! -x "$asan_dir/venv/bin/python" ]; then
    "$py" -m venv "$asan_dir/venv" && "$asan_dir/venv/bin/python" -m pip install -q "Cython>=3.0" "setuptools>=68" \
      || { echo "cannot make the build venv $asan_dir/venv (needs Cython from PyPI)" >&2; return 1; }
  fi
  # One runtime with ASan (UBSan's handlers are in it) and libFuzzer, preloaded into Python: the
  # extensions' coverage counters (-fsanitize=fuzzer-no-link) then reach the libFuzzer that atheris
  # drives (atheris uses the libFuzzer already in the process). The recipe is atheris'
  # native_extension_fuzzing.md: ASan's static runtime without its preinit object, merged with
  # libFuzzer's no-main archive.
  rt=$("$clang" --print-file-name libclang_rt.asan-x86_64.a)
  cp "$rt" "$asan_dir/asan.a" && ar d "$asan_dir/asan.a" asan_preinit.cpp.o asan_preinit.cc.o 2>/dev/null || true
  "${clang/clang/clang++}" -Wl,--whole-archive "$("$clang" --print-file-name libclang_rt.fuzzer_no_main-x86_64.a)" \
    "$asan_dir/asan.a" -Wl,--no-whole-archive -lpthread -ldl -shared -o "$asan_dir/asan_with_fuzzer.so" \
    || { echo "cannot link $asan_dir/asan_with_fuzzer.so (apt-get install libclang-rt-14-dev)" >&2; return 1; }
  echo "== building native/ with $clang -fsanitize=address,undefined,fuzzer-no-link into $asan_dir/lib"
  ( cd "$src" && CC="$clang" LDSHARED="$clang -shared" \
      CFLAGS="-fsanitize=address,undefined,fuzzer-no-link -fno-omit-frame-pointer -g" \
      LDFLAGS="-fsanitize=address,undefined" nice -n 10 "$OLDPWD/$asan_dir/venv/bin/python" setup.py -q build_ext \
      --build-lib "$OLDPWD/$asan_dir/lib" --build-temp "$OLDPWD/$asan_dir/tmp" --force ) >"$asan_dir/build.log" 2>&1 \
    || { tail -n 30 "$asan_dir/build.log" >&2; return 1; }
  sha256sum native/*.pyx native/*.pxd >"$asan_dir/lib/SOURCES"
  ls "$asan_dir"/lib/callsgw/_native/*.so "$asan_dir/asan_with_fuzzer.so"
}
asan_current() { [ -f "$asan_dir/lib/SOURCES" ] && sha256sum --quiet -c "$asan_dir/lib/SOURCES" >/dev/null 2>&1; }
asan_env() {  # the environment a sanitized run needs: the runtime preloaded, the build found first
  # (asan_env TARGET: LeakSanitizer on for the targets in fuzz.LEAK_CHECKED; see the header)
  local leaks=0
  export LD_PRELOAD="$PWD/$asan_dir/asan_with_fuzzer.so" CALLSGW_NATIVE_DIR="$PWD/$asan_dir/lib/callsgw/_native"
  if [ "${FUZZ_LEAKS:-1}" = 1 ] && [ -n "${1:-}" ] && [[ " $leak_checked " == *" $1 "* ]]; then
    leaks=1
    export PYTHONMALLOC=malloc LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
  fi
  # shorter allocation stacks and a smaller quarantine: about a third more executions per second
  export ASAN_OPTIONS="detect_leaks=$leaks:abort_on_error=1:allocator_may_return_null=1:handle_abort=1:malloc_context_size=6:quarantine_size_mb=64:external_symbolizer_path=$symbolizer${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
  # UBSan's checks stay recoverable in the build so that fuzz/ubsan.supp applies; halt_on_error
  # makes every report not suppressed a crash
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$PWD/fuzz/ubsan.supp:external_symbolizer_path=$symbolizer${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
}

status() {
  local t f
  printf '%-12s %14s %8s %8s %8s\n' target executions cov ft corpus
  for t in $targets; do
    f="fuzz/.work/$t/counter.json"
    [ -f "$f" ] || { printf '%-12s %14s\n' "$t" "-"; continue; }
    "$py" - "$f" "$t" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<12} {c.get('executions', 0):>14,} {c.get('cov', '-'):>8} {c.get('ft', '-'):>8} {c.get('corpus', '-'):>8}")
PY
  done
}

run_one() {  # run_one TARGET SECONDS RUNS
  local t=$1 secs=$2 runs=$3 work="fuzz/.work/$1" limit before log
  mkdir -p "$work/corpus"
  if [ -n "$runs" ]; then limit="-runs=$runs"; else limit="-max_total_time=$secs"; fi
  before=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("executions",0))' "$work/counter.json" 2>/dev/null || echo 0)
  log="$work/last.log"
  echo "== $t ($limit, $before executions before)"
  set +e
  # shellcheck disable=SC2086
  if [ "${FUZZ_SANITIZE:-1}" = 1 ] && [[ " $sanitized " == *" $t "* ]]; then
    asan_current || build_asan || return 1
    ( asan_env "$t"
      per_input=""  # libFuzzer's per-input leak check off where it is too slow (the exit check stays)
      if [[ " $leak_at_exit " == *" $t "* ]]; then per_input="-detect_leaks=0"; fi
      # shellcheck disable=SC2086
      exec "$py" -m fuzz.run "$t" --counter "$work/counter.json" $limit $per_input -print_final_stats=1 \
        -artifact_prefix="$work/" ${FUZZ_ARGS:-} "$work/corpus" "fuzz/corpus/$t" ) 2>"$log"
  else
    # shellcheck disable=SC2086
    "$py" -m fuzz.run "$t" --counter "$work/counter.json" $limit -print_final_stats=1 \
      -artifact_prefix="$work/" ${FUZZ_ARGS:-} "$work/corpus" "fuzz/corpus/$t" 2>"$log"
  fi
  rc=$?
  set -e
  "$py" - "$work/counter.json" "$log" "$before" "$t" "$rc" <<'PY'
import json, re, sys
path, log, before, name, rc = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
text = open(log, errors="replace").read()
try:
    c = json.load(open(path))
except (OSError, ValueError):
    c = {"target": name, "executions": before}
done = re.findall(r"Done (\d+) runs", text)
if done:  # libFuzzer's own count is exact; the harness's periodic one may miss the last seconds
    c["executions"] = before + int(done[-1])
stats = re.findall(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", text)
if stats:
    c["cov"], c["ft"], c["corpus"] = (int(x) for x in stats[-1][1:])
c["last_exit"] = rc
json.dump(c, open(path, "w"), indent=1, sort_keys=True)
run = c["executions"] - before
print(f"   {name}: {run:,} executions this run, {c['executions']:,} in all; cov {c.get('cov', '-')} ft {c.get('ft', '-')}; exit {rc}")
PY
  if [ "$rc" -eq 72 ]; then  # libFuzzer's exit code for an interrupted run (Ctrl-C, SIGINT)
    echo "   $t: interrupted; the next run resumes from its corpus and counter" >&2
    return 1
  fi
  if [ "$rc" -ne 0 ]; then
    echo "   $t: FINDING or error (exit $rc), see $log and $work/crash-*" >&2
    tail -n 30 "$log" >&2
    return 1
  fi
}

minimize() {  # fold the working corpus into the kept one, minimized by coverage
  local t=$1 work="fuzz/.work/$1" tmp
  tmp=$(mktemp -d)
  mkdir -p "$work/corpus"
  # the native targets merge by the sanitizer build's coverage too, native edges included
  ( if [ "${FUZZ_SANITIZE:-1}" = 1 ] && [[ " $sanitized " == *" $t "* ]]; then asan_current || build_asan; asan_env; fi
    exec "$py" -m fuzz.run "$t" -merge=1 "$tmp" "fuzz/corpus/$t" "$work/corpus" ) 2>"$work/merge.log" \
    || { tail "$work/merge.log"; return 1; }
  if [ -z "$(ls -A "$tmp")" ]; then  # never replace the kept corpus with nothing
    echo "$t: the merge kept no input, fuzz/corpus/$t left as it was; see $work/merge.log" >&2
    rm -rf "$tmp"; return 1
  fi
  rm -f "fuzz/corpus/$t"/*
  cp "$tmp"/* "fuzz/corpus/$t"/
  rm -rf "$tmp"
  echo "$t: $(ls "fuzz/corpus/$t" | wc -l) inputs, $(du -sh "fuzz/corpus/$t" | cut -f1)"
}

# The whole command is one function, called on the last line with the exit on the same line: bash
# has read all of it before a long run starts, so editing this file during a run is safe.
main() {
  case "${1:-all}" in
    -h|--help) usage 0 ;;
    --list) echo "$targets"; exit 0 ;;
    --build-asan) build_asan; exit $? ;;
    --repro)  # --repro TARGET FILE...: run inputs through a target, sanitized where its runs are
      if [ "${FUZZ_SANITIZE:-1}" = 1 ] && [[ " $sanitized " == *" $2 "* ]]; then asan_current || build_asan; asan_env "$2"; fi
      exec "$py" -m fuzz.run "$2" "${@:3}" ;;
    --status) status; exit 0 ;;
    --minimize)
      for t in ${2:-$targets}; do minimize "$t"; done; exit 0 ;;
  esac
  local which=${1:-all} secs=60 runs="" failed=0 t
  shift || true
  if [ "${1:-}" = "--runs" ]; then runs=$2; elif [ -n "${1:-}" ]; then secs=$1; fi
  [ "$which" = all ] && which=$targets
  for t in $which; do
    case " $targets " in *" $t "*) ;; *) echo "unknown target $t; known: $targets" >&2; exit 2 ;; esac
  done
  for t in $which; do run_one "$t" "$secs" "$runs" || failed=1; done
  echo; status
  return "$failed"
}
main "$@"; exit $?

#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers a remote peer reaches (issue #20 deliverable 1), with atheris.
#
#   ./scripts/fuzz.sh                      # every target, 60 s each
#   ./scripts/fuzz.sh stun 1800            # one target for 30 minutes
#   ./scripts/fuzz.sh all 300              # every target, 5 minutes each
#   ./scripts/fuzz.sh rtp --runs 1000000   # one target for a number of executions
#   ./scripts/fuzz.sh --minimize [target]  # fold what runs found back into fuzz/corpus/, minimized
#   ./scripts/fuzz.sh --status             # executions and coverage so far, per target
#   ./scripts/fuzz.sh --list
#
# Targets: fuzz/fuzz_<name>.py (see fuzz/__init__.py). A run resumes from the kept corpus
# (fuzz/corpus/<name>/, in git) and the working corpus (fuzz/.work/<name>/corpus/, not in git,
# where libFuzzer adds what it finds). Executions add up in fuzz/.work/<name>/counter.json, so an
# interrupted long run (Ctrl-C, kill) keeps its count and the next run continues it. Crashes go to
# fuzz/.work/<name>/crash-*; reproduce one with `python -m fuzz.run <name> FILE`.
#
# Not covered yet: the native core (native/*.pyx: SRTP/SRTCP unprotect, the engine path) and the
# DTLS record layer have no targets, and there are no AddressSanitizer/UndefinedBehaviorSanitizer
# builds of native/ for fuzzing; both are still open in issue #20.
#
# Extra libFuzzer flags: FUZZ_ARGS="-max_len=2048 -seed=1" ./scripts/fuzz.sh stun 600
set -euo pipefail
cd "$(dirname "$0")/.."
py="${CALLSGW_VENV:-.venv}/bin/python"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
targets=$("$py" -c 'import fuzz; print(" ".join(fuzz.TARGETS))')

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

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
  "$py" -m fuzz.run "$t" --counter "$work/counter.json" $limit -print_final_stats=1 \
    -artifact_prefix="$work/" ${FUZZ_ARGS:-} "$work/corpus" "fuzz/corpus/$t" 2>"$log"
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
  "$py" -m fuzz.run "$t" -merge=1 "$tmp" "fuzz/corpus/$t" "$work/corpus" 2>"$work/merge.log" || { tail "$work/merge.log"; return 1; }
  if [ -z "$(ls -A "$tmp")" ]; then  # never replace the kept corpus with nothing
    echo "$t: the merge kept no input, fuzz/corpus/$t left as it was; see $work/merge.log" >&2
    rm -rf "$tmp"; return 1
  fi
  rm -f "fuzz/corpus/$t"/*
  cp "$tmp"/* "fuzz/corpus/$t"/
  rm -rf "$tmp"
  echo "$t: $(ls "fuzz/corpus/$t" | wc -l) inputs, $(du -sh "fuzz/corpus/$t" | cut -f1)"
}

case "${1:-all}" in
  -h|--help) usage 0 ;;
  --list) echo "$targets"; exit 0 ;;
  --status) status; exit 0 ;;
  --minimize)
    for t in ${2:-$targets}; do minimize "$t"; done; exit 0 ;;
esac
which=${1:-all}
secs=60; runs=""
shift || true
if [ "${1:-}" = "--runs" ]; then runs=$2; elif [ -n "${1:-}" ]; then secs=$1; fi
[ "$which" = all ] && which=$targets
for t in $which; do
  case " $targets " in *" $t "*) ;; *) echo "unknown target $t; known: $targets" >&2; exit 2 ;; esac
done
failed=0
for t in $which; do run_one "$t" "$secs" "$runs" || failed=1; done
echo; status
exit "$failed"

#!/usr/bin/env python3
"""Security mutants: break one security check at a time, run the tests that guard it, restore.

    .venv/bin/python scripts/mutants.py                 # every mutant, a table and the score
    .venv/bin/python scripts/mutants.py --list          # the mutants and their tests, nothing run
    .venv/bin/python scripts/mutants.py --only ice-gate-mux --only ice-gate-both --json

Each mutant is a small source edit that removes or weakens one security
check (an ICE gate, a permission, a DTLS or SRTP policy, the admin key, log
redaction, a data-directory check, a security header), and names the tests
that must notice. The run never touches the working tree: it copies the
repository's committed files (``git archive HEAD``; ``--worktree`` copies the
working tree's files instead, uncommitted changes included) and the built
native modules (``callsgw/_native/*.so``) into a temporary directory,
checks that the named tests pass there unmutated (the baseline), then for
each mutant applies the edit, runs its tests with ``pytest -x``, and puts
the file back. Tests run in a private network namespace (``unshare -n``,
only ``lo`` up) when the kernel allows it, as ``scripts/test.sh`` does.

A mutant is **killed** when its tests fail (or time out), **survived** when
they pass. An edit that no longer matches the source exactly once is
**stale** (the code moved: update the mutant). An edit that stops the code
from importing is **broken**. *Equivalent* mutants change nothing an
attacker or a test can observe; they are run and listed, but left out of the
score (one that is killed should be reclassified).

Score = killed / (mutants - equivalent). Exit status: 0 when every
non-equivalent mutant is killed and none is stale or broken, 1 when one
survived, 2 for usage errors, a failing baseline, stale or broken mutants.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (which must occur exactly once) by ``new`` in ``path``."""

    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutant:
    name: str
    breaks: str  # the security check this mutant removes or weakens
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # pytest node ids or paths, relative to the repository
    equivalent: str | None = None  # why no test can tell (then it is not scored)


def _one(path: str, old: str, new: str) -> tuple[Edit, ...]:
    return (Edit(path, old, new),)


MUX_GATE = Edit("callsgw/transport/mux.py",
                "        if transport.ice.is_validated(addr):\n            previous",
                "        if True:  # MUTANT\n            previous")
TRANSPORT_GATE = Edit("callsgw/transport/media.py",
                      "        if not self.ice.is_validated(addr):",
                      "        if False:  # MUTANT")
ICE_GATE_TESTS = ("tests/media/test_ice_gate.py", "tests/unit/test_transport_mux.py")
LOG_TESTS = ("tests/admin/test_log_redaction.py",
             "tests/admin/test_admin_api.py::test_no_secret_reaches_logs_metrics_or_api")

MUTANTS: tuple[Mutant, ...] = (
    # -- ICE (RFC 8445 section 7.3, RFC 8826 section 4.2) --------------------------------------
    Mutant("ice-gate-mux", "the mux binds an address only after an authenticated ICE check",
           (MUX_GATE,), ICE_GATE_TESTS),
    Mutant("ice-gate-transport", "the transport takes DTLS/SRTP only from ICE-validated addresses",
           (TRANSPORT_GATE,), ICE_GATE_TESTS),
    Mutant("ice-gate-both", "both ICE gates at once", (MUX_GATE, TRANSPORT_GATE), ICE_GATE_TESTS),
    Mutant("ice-integrity", "checks must carry a MESSAGE-INTEGRITY made with our password",
           _one("callsgw/ice/lite.py", "        if verdict is not stun.Verdict.OK:", "        if False:  # MUTANT"),
           ("tests/unit/test_ice_lite.py",)),
    Mutant("ice-remote-ufrag", "USERNAME must name the participant's own remote ufrag",
           _one("callsgw/ice/lite.py",
                "if local != self._local_ufrag or (self._remote_ufrag is not None and remote != self._remote_ufrag):",
                "if local != self._local_ufrag:  # MUTANT"),
           ("tests/unit/test_ice_lite.py",)),
    Mutant("ice-replay", "a check's transaction ID replayed from another address is dropped",
           _one("callsgw/ice/lite.py", "        if seen_from is not None and seen_from != addr:",
                "        if False:  # MUTANT"),
           ("tests/unit/test_ice_lite.py",)),
    # -- DTLS and SRTP policy (RFC 5764, RFC 8122) -------------------------------------------------
    Mutant("dtls-fingerprint-callback", "the peer certificate is pinned to the SDP fingerprint during the handshake",
           _one("callsgw/dtls/connection.py", "        if not hmac.compare_digest(digest, self._expected_digest):\n"
                "            self._rejection = _Rejected(\n                FailureReason.FINGERPRINT_MISMATCH,",
                "        if False:  # MUTANT\n"
                "            self._rejection = _Rejected(\n                FailureReason.FINGERPRINT_MISMATCH,"),
           ("tests/unit/test_dtls.py",)),
    Mutant("dtls-cipher-widened", "OpenSSL is handed only the mandated DTLS cipher suites",
           _one("callsgw/dtls/connection.py", "    ctx.set_cipher_list(policy.openssl_cipher_list)",
                '    ctx.set_cipher_list(policy.openssl_cipher_list + b":ECDHE-ECDSA-CHACHA20-POLY1305")  # MUTANT'),
           ("tests/unit/test_dtls.py",)),
    Mutant("dtls-cipher-check", "a negotiated cipher outside the policy fails the handshake",
           _one("callsgw/dtls/connection.py", "        if cipher not in self.policy.ciphers:",
                "        if False:  # MUTANT"),
           ("tests/unit/test_dtls.py",),
           equivalent="OpenSSL is handed only the policy's ciphers, so it never negotiates another one; "
                      "this after-the-fact check is defence in depth"),
    Mutant("srtp-use-srtp-widened", "OpenSSL is handed only the mandated SRTP profiles (use_srtp)",
           _one("callsgw/dtls/connection.py", "    ctx.set_tlsext_use_srtp(policy.openssl_srtp_profiles)",
                '    ctx.set_tlsext_use_srtp(policy.openssl_srtp_profiles + b":SRTP_AEAD_AES_256_GCM")  # MUTANT'),
           ("tests/unit/test_security_gates.py", "tests/unit/test_dtls.py")),
    Mutant("srtp-profile-check", "a selected SRTP profile outside the policy is refused",
           _one("callsgw/dtls/connection.py", "        return profile if profile in self.policy.srtp_profiles else None",
                "        return profile  # MUTANT"),
           ("tests/unit/test_dtls.py",),
           equivalent="OpenSSL is handed only the policy's profiles (srtp-use-srtp-widened guards that), so "
                      "it never selects another one, and Profile knows only the two mandated; defence in depth"),
    Mutant("dtls-1.0-allowed", "DTLS 1.2 only",
           _one("callsgw/dtls/connection.py", "    ctx.set_min_proto_version(DTLS1_2_VERSION)",
                "    ctx.set_min_proto_version(0xFEFF)  # MUTANT: DTLS 1.0"),
           ("tests/unit/test_dtls.py",),
           equivalent="OpenSSL 3's default security level refuses DTLS 1.0 anyway (and the handshake "
                      "checks the version it got)"),
    # -- permissions and tokens ------------------------------------------------------------------------
    Mutant("publish-screen-negotiation", "an offer that sends video needs publish_screen",
           _one("callsgw/signaling/negotiation.py", "            if permission not in self.may_publish:",
                "            if track == VOICE and permission not in self.may_publish:  # MUTANT"),
           ("tests/unit/test_security_gates.py", "tests/unit/test_negotiation.py")),
    Mutant("publish-screen-message", "the screen announcement needs publish_screen",
           _one("callsgw/signaling/core.py", '            if "publish_screen" not in participant.permissions:',
                "            if False:  # MUTANT"),
           ("tests/unit/test_security_gates.py",)),
    Mutant("token-algorithm", "tokens are HS256 only (no algorithm confusion)",
           _one("callsgw/signaling/tokens.py", "    if alg != ALGORITHM:", "    if False:  # MUTANT"),
           ("tests/unit/test_tokens.py",)),
    # -- the admin key ------------------------------------------------------------------------------------
    Mutant("admin-key-required", "the admin API and /metrics need the admin key",
           _one("callsgw/server/admin.py", "        if not authorized(app, request):", "        if False:  # MUTANT"),
           ("tests/admin/test_admin_api.py::test_rejections_and_rotation",)),
    Mutant("admin-key-compare-digest", "the admin key digest is compared in constant time",
           _one("callsgw/datadir.py",
                "        ok = hmac.compare_digest(candidate, stored if stored is not None else secrets.token_bytes(32))",
                "        ok = candidate == (stored if stored is not None else secrets.token_bytes(32))  # MUTANT"),
           ("tests/admin/test_admin_api.py::test_admin_key_is_stored_hashed",),
           equivalent="`==` gives the same answers; only its timing differs, by nanoseconds over SHA-256 "
                      "digests an attacker cannot choose"),
    # -- logs --------------------------------------------------------------------------------------------
    Mutant("log-query-kept", "request targets lose their query string and fragment in logs",
           _one("callsgw/logsafety.py",
                '    return _QUERY_OR_FRAGMENT.sub(lambda m: m.group(1) + "[redacted]", text)',
                "    return text  # MUTANT"),
           LOG_TESTS),
    Mutant("log-frames-kept", "WebSocket frame traces (the join's token) are dropped from logs",
           _one("callsgw/logsafety.py", "        if any(_is_frame(a) for a in args):\n            return False",
                "        if False:  # MUTANT\n            return False"),
           LOG_TESTS),
    Mutant("log-credential-headers-kept", "Authorization and cookie header traces are dropped from logs",
           _one("callsgw/logsafety.py",
                "        if len(args) == 2 and str(args[0]).strip().lower() in _CREDENTIAL_HEADERS:",
                "        if False:  # MUTANT"),
           LOG_TESTS),
    # -- the data directory ----------------------------------------------------------------------------------
    Mutant("datadir-nofollow", "secrets are never read through a symbolic link",
           _one("callsgw/datadir.py", "os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK",
                "os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK"),
           ("tests/unit/test_config.py", "tests/security/test_datadir_refusals.py")),
    Mutant("datadir-owner", "files and the directory must belong to the user running callsgw",
           _one("callsgw/datadir.py", "        if st.st_uid != uid:\n            raise DataDirError(",
                "        if False:  # MUTANT\n            raise DataDirError("),
           ("tests/unit/test_config.py", "tests/security/test_datadir_refusals.py")),
    Mutant("records-side-file-links", "records.sqlite3 and its journals are never symbolic links",
           _one("callsgw/security/db.py", "        if stat.S_ISLNK(st.st_mode):\n            raise StoreFileError",
                "        if False:  # MUTANT\n            raise StoreFileError"),
           ("tests/security/test_datadir_refusals.py",)),
    # -- the web page's headers --------------------------------------------------------------------------------
    Mutant("csp-frame-ancestors", "the page may not be framed (CSP frame-ancestors 'none')",
           _one("callsgw/server/headers.py", "    \"frame-ancestors 'none'; base-uri 'none'; form-action 'self'\"",
                "    \"base-uri 'none'; form-action 'self'\"  # MUTANT"),
           ("tests/admin/test_http_headers.py", "tests/audit/test_audit.py::test_web_judgement_on_synthetic_headers")),
    Mutant("x-frame-options", "X-Frame-Options: DENY on every answer",
           _one("callsgw/server/headers.py", '        ("X-Frame-Options", "DENY"),\n', ""),
           ("tests/admin/test_http_headers.py",)),
    Mutant("hsts-missing", "HSTS when serving TLS",
           _one("callsgw/server/headers.py", "    if tls:\n        headers.append", "    if False:  # MUTANT\n        headers.append"),
           ("tests/admin/test_http_headers.py",)),
    Mutant("connect-src-any-host", "the page connects only to its own origin (connect-src 'self')",
           _one("callsgw/server/headers.py", "connect-src 'self'; media-src", "connect-src 'self' wss: ws:; media-src"),
           ("tests/admin/test_http_headers.py",)),
    # -- signaling TLS ---------------------------------------------------------------------------------------------
    Mutant("signaling-tls-suites", "signaling TLS 1.2 offers only the two AES-256-GCM suites",
           _one("callsgw/tls.py", 'TLS12_CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"',
                'TLS12_CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"'),
           ("tests/unit/test_tls.py",)),
    Mutant("signaling-tls-1.0", "signaling TLS 1.2 or newer",
           _one("callsgw/tls.py", "    ctx.minimum_version = ssl.TLSVersion.TLSv1_2", "    ctx.minimum_version = ssl.TLSVersion.TLSv1"),
           ("tests/unit/test_tls.py",)),
)


# -- the copy ---------------------------------------------------------------------------------------------


def make_copy(dest: Path, worktree: bool) -> None:
    if worktree:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True).stdout.split(b"\0")
        for name in filter(None, listed):
            src = ROOT / name.decode()
            if src.is_file():
                target = dest / name.decode()
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    else:
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
    native = dest / "callsgw" / "_native"
    native.mkdir(parents=True, exist_ok=True)
    built = list((ROOT / "callsgw" / "_native").glob("*.so"))
    if not built:
        raise SystemExit("mutants: the native modules are not built (pip install -e '.[test]')")
    for so in built:
        shutil.copy2(so, native / so.name)


def _namespace_prefix() -> list[str]:
    try:
        ok = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        ok = False
    if not ok:
        print("mutants: no private network namespace (unshare -n); tests use this host's loopback",
              file=sys.stderr)
        return []
    return ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, str]:
    """``(outcome, last line)``: pass, fail, timeout or error (collection, usage)."""
    argv = [*_namespace_prefix(), sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider",
            "-o", "addopts=", *tests]
    try:
        done = subprocess.run(argv, cwd=copy, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"timed out after {timeout:g} s"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    last = lines[-1] if lines else done.stderr.strip()[-200:]
    if done.returncode == 0:
        return "pass", last
    if done.returncode == 1:
        failed = [line.split(" - ")[0].removeprefix("FAILED ") for line in lines if line.startswith("FAILED ")]
        return "fail", f"{last}: {failed[0]}" if failed else last
    return "error", f"pytest exit {done.returncode}: {last}"


def apply(copy: Path, edits: tuple[Edit, ...]) -> dict[Path, str] | str:
    """Apply every edit; the original texts to restore, or why the mutant is stale."""
    originals: dict[Path, str] = {}
    for edit in edits:
        path = copy / edit.path
        text = originals.get(path) or path.read_text()
        originals.setdefault(path, text)
        current = path.read_text()
        if current.count(edit.old) != 1:
            for p, original in originals.items():
                p.write_text(original)
            return f"{edit.path}: the text to mutate occurs {current.count(edit.old)} times, not once"
        path.write_text(current.replace(edit.old, edit.new))
    return originals


# -- the run ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/mutants.py",
        description="Break one security check at a time in a copy of the repository, run the tests that "
        "guard it, restore it; report which mutants the tests kill and the score.",
        epilog="Run it from the repository's virtual environment (.venv/bin/python). Exit 0 when every "
        "non-equivalent mutant is killed, 1 when one survived, 2 for usage errors, a failing baseline, "
        "stale or broken mutants.",
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests; run nothing")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutant (repeatable)")
    parser.add_argument("--worktree", action="store_true",
                        help="mutate a copy of the working tree's files (uncommitted changes included) "
                        "instead of HEAD's")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"seconds one mutant's tests may take before it counts as killed "
                        f"(default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args(argv)

    mutants = list(MUTANTS)
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTANTS}
        if unknown:
            print(f"mutants: error: unknown mutant(s): {', '.join(sorted(unknown))} (see --list)", file=sys.stderr)
            return 2
        mutants = [m for m in MUTANTS if m.name in args.only]
    if args.list:
        for m in mutants:
            tag = " [equivalent]" if m.equivalent else ""
            print(f"{m.name}{tag}: breaks {m.breaks}")
            print(f"    tests: {' '.join(m.tests)}")
            if m.equivalent:
                print(f"    equivalent: {m.equivalent}")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="callsgw-mutants-"))
    copy = tmp / "repo"
    copy.mkdir()
    results = []
    try:
        make_copy(copy, args.worktree)
        where = subprocess.run([sys.executable, "-c", "import callsgw; print(callsgw.__file__)"], cwd=copy,
                               capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(copy)):
            print(f"mutants: error: the copy imports callsgw from {where!r}, not from the copy", file=sys.stderr)
            return 2
        all_tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
        started = time.monotonic()
        outcome, last = run_tests(copy, all_tests, args.timeout * 2)
        if outcome != "pass":
            print(f"mutants: error: the tests fail without any mutant ({outcome}: {last}); fix that first",
                  file=sys.stderr)
            return 2
        if not args.json:
            print(f"baseline: {len(all_tests)} test targets pass unmutated ({time.monotonic() - started:.0f} s)")
        for m in mutants:
            started = time.monotonic()
            applied = apply(copy, m.edits)
            if isinstance(applied, str):
                status, detail = "stale", applied
            else:
                try:
                    outcome, detail = run_tests(copy, m.tests, args.timeout)
                finally:
                    for path, original in applied.items():
                        path.write_text(original)
                if outcome == "error":
                    status = "broken"
                elif outcome in ("fail", "timeout"):
                    status = "killed"
                else:
                    status = "survived"
            result = {**dataclasses.asdict(m), "status": status, "detail": detail,
                      "seconds": round(time.monotonic() - started, 1)}
            del result["edits"]
            results.append(result)
            if not args.json:
                tag = " (equivalent)" if m.equivalent else ""
                print(f"{status:9} {m.name}{tag}  [{result['seconds']:.0f} s] {detail}", flush=True)
    finally:
        if args.keep:
            print(f"the copy is kept at {copy}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    scored = [r for r in results if not r["equivalent"]]
    killed = sum(r["status"] == "killed" for r in scored)
    report = {
        "source": "working tree" if args.worktree else "HEAD",
        "killed": killed,
        "scored": len(scored),
        "score": f"{killed}/{len(scored)}",
        "survived": [r["name"] for r in scored if r["status"] == "survived"],
        "stale": [r["name"] for r in results if r["status"] == "stale"],
        "broken": [r["name"] for r in results if r["status"] == "broken"],
        "equivalent": {r["name"]: {"status": r["status"], "why": r["equivalent"]} for r in results
                       if r["equivalent"]},
        "mutants": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"\nscore: {killed}/{len(scored)} killed" + (f"; survived: {', '.join(report['survived'])}"
                                                           if report["survived"] else ""))
        for name, eq in report["equivalent"].items():
            print(f"equivalent, not scored: {name} ({eq['status']}): {eq['why']}")
            if eq["status"] == "killed":
                print(f"  -> {name} was killed: it is not equivalent; move it to the scored mutants")
        for name in report["stale"]:
            print(f"stale: {name}: its source text moved; update the mutant")
        for name in report["broken"]:
            print(f"broken: {name}: the mutated code does not run; fix the mutant")
    if report["stale"] or report["broken"]:
        return 2
    return 1 if report["survived"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""``callsgw audit``: an active prober of a gateway's signaling TLS and media DTLS.

It runs as an independent reviewer would run it, from outside:

* **Signaling TLS** (Python :mod:`ssl`, ``@SECLEVEL=0`` so old offers can be made at all): each
  protocol version TLS 1.0 to 1.3 alone, each TLS 1.2 suite of :data:`TLS12_PROBE_SUITES` alone,
  what a default TLS 1.3 client negotiates, and the certificate's key type and size.
* **Media DTLS**: per probe a fresh join through the real signaling (offer from
  :func:`callsgw.client.sdp.build_offer`), the controlling ICE agent over a real UDP socket until
  the pair is selected, then a raw pyOpenSSL DTLS client over memory BIOs configured for that probe
  alone (one suite, DTLS 1.0 only, one SRTP profile, or a wrong fingerprint in the offer).
* **Over ICE-TCP** (RFC 6544; ``--no-ice-tcp`` leaves it out): when the answer carries a
  ``tcptype passive`` candidate, the same probes again over one RFC 4571-framed TCP connection each
  (:mod:`callsgw.security.audit_tcp`), ICE check first, judged alike (area ``dtls-tcp``).
* **Through WHIP** (``--whip URL``, RFC 9725): the same DTLS probes, each joining by a WHIP
  ``POST`` of its offer to ``https://HOST:PORT/whip/{call}`` (bearer token) and leaving by
  ``DELETE`` of the session's resource, so that a standard client's path is held to the same
  verdicts (docs/WHIP.md).
* **No vacuous refusals**: every probe's client configuration is first run against a permissive
  local peer (in-process, memory BIOs). A refusal by the gateway counts only if that local proof
  completed; otherwise the probe is ``unprovable`` and the audit fails.
* **Web headers** (:func:`probe_web`): the page (``/``) and an API answer (``/api/v1/calls``,
  a 401 without the admin key) over the same HTTPS port, each judged by :func:`judge_web`:
  a Content-Security-Policy whose ``default-src`` and ``connect-src`` stay on the page's own
  origin, ``frame-ancestors 'none'`` (no clickjacking, CSP Level 3), ``base-uri 'none'``,
  ``form-action`` no wider than ``'self'``; ``X-Frame-Options: DENY`` (RFC 7034);
  ``X-Content-Type-Options: nosniff``; and, since the audit speaks TLS to the port,
  ``Strict-Transport-Security`` with ``max-age`` of at least :data:`HSTS_MIN_AGE` (RFC 6797).

Exit status: 0 when exactly the mandated suites and profiles are accepted, everything else is
refused and the TLS and web judgements pass; 1 otherwise; 2 for usage or connection errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import secrets
import socket
import ssl
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from callsgw.dtls.certificate import DtlsCertificate, fingerprint_of_der
from callsgw.dtls.profiles import MANDATED_CIPHERS

NAME = "audit"
SUMMARY = "actively probe a gateway's signaling TLS and media DTLS from outside"
DESCRIPTION = (
    "Probe the gateway at WSS-URL as an outside reviewer: which TLS versions and TLS 1.2 suites the "
    "signaling port accepts and its certificate key; the security headers of the page and of an API "
    "answer on the same port (CSP frame-ancestors, base-uri, form-action, connect-src; "
    "X-Frame-Options; HSTS); then, joining through the real signaling and "
    "ICE once per probe, which DTLS 1.2 suites, DTLS versions and SRTP profiles the media port "
    "accepts and whether it refuses a wrong fingerprint. Each refusal counts only when the same "
    "offer completed against a permissive local peer. With --whip URL the media probes join through the "
    "WHIP endpoint (RFC 9725 POST, DELETE) instead of the WebSocket. Exit 0 when exactly the mandated sets are "
    "accepted, 1 otherwise, 2 for usage or connection errors."
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

DTLS1_0, DTLS1_2 = 0xFEFF, 0xFEFD
MTU = 1200
DTLS_TIMEOUT = 5.0
ICE_TIMEOUT = 5.0
JOIN_TIMEOUT = 10.0
DEFAULT_JOIN_INTERVAL = 0.25  # stays under the default 5 joins/s/address

TLS_MANDATED = ("ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384")
TLS12_PROBE_SUITES = TLS_MANDATED + (
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-RSA-AES128-SHA",
    "AES256-GCM-SHA384",
    "AES128-SHA",
)
TLS13_EXPECTED = "TLS_AES_256_GCM_SHA384"
TLS_VERSIONS = (
    ("TLSv1", ssl.TLSVersion.TLSv1, "refuse"),
    ("TLSv1.1", ssl.TLSVersion.TLSv1_1, "refuse"),
    ("TLSv1.2", ssl.TLSVersion.TLSv1_2, "either"),
    ("TLSv1.3", ssl.TLSVersion.TLSv1_3, "either"),
)

MANDATED_SRTP = ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")
OTHER_SRTP = ("SRTP_AES128_CM_SHA1_32", "SRTP_AEAD_AES_256_GCM")
OTHER_DTLS_SUITES = (
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA",
)
RSA_DTLS_SUITES = ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-SHA")


WEB_ANSWERS = (("page", "/"), ("api", "/api/v1/calls"))
HSTS_MIN_AGE = 15_768_000  # six months, in seconds; the gateway sends a year
_SAME_ORIGIN_SOURCES = ("'self'", "'none'")


class AuditError(Exception):
    """A usage or connection problem: one line, exit 2."""


# -- certificates --------------------------------------------------------------


class RsaCertificate:
    """A self-signed RSA-2048 certificate with DtlsCertificate's install/fingerprint interface."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._key = key
        self._cert = _self_signed(key)
        self.der = self._cert.public_bytes(serialization.Encoding.DER)
        self.fingerprint = fingerprint_of_der(self.der)

    def install(self, context: SSL.Context) -> None:
        context.use_certificate(self._cert)
        context.use_privatekey(self._key)
        context.check_privatekey()

    def pem_files(self, directory: str) -> tuple[str, str]:
        return _write_pem(directory, "rsa", self._cert, self._key)


def _self_signed(key) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "callsgw-audit")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )


def _write_pem(directory: str, stem: str, cert, key) -> tuple[str, str]:
    cert_path = os.path.join(directory, f"{stem}.crt")
    key_path = os.path.join(directory, f"{stem}.key")
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


# -- results and judgement -----------------------------------------------------


@dataclass
class ProbeResult:
    """One probe: ``expected`` is accept/refuse/either, ``observed`` accepted/refused/error."""

    area: str  # "tls" or "dtls"
    probe: str
    expected: str
    observed: str = "not run"
    detail: str = ""
    proof: bool | None = None  # None: no proof needed (expected accept, informational)
    proof_detail: str = ""
    verdict: str = ""


def judge_probe(result: ProbeResult) -> str:
    """``pass``, ``FAIL`` or ``unprovable`` for one probe."""
    if result.expected == "accept":
        return "pass" if result.observed == "accepted" else "FAIL"
    if result.observed == "accepted":
        return "pass" if result.expected == "either" else "FAIL"
    if result.observed != "refused":
        return "FAIL"
    return "pass" if result.proof else "unprovable"


def judge(results: list[ProbeResult], tls13: dict, certificate: dict) -> tuple[int, dict]:
    """Set every verdict; return the exit status and the TLS judgement."""
    for r in results:
        r.verdict = judge_probe(r)
    tls_checks = {
        "tls_below_1_2_refused": all(
            r.observed == "refused" for r in results if r.area == "tls" and r.probe in ("TLSv1", "TLSv1.1")
        ),
        "tls12_suites_within_mandated": all(
            r.probe.split()[-1] in TLS_MANDATED
            for r in results
            if r.area == "tls" and r.probe.startswith("TLSv1.2 ") and r.observed == "accepted"
        ),
        "tls13_default_cipher": tls13.get("cipher") == TLS13_EXPECTED,
        "certificate_key": (certificate.get("type") == "RSA" and certificate.get("bits", 0) >= 2048)
        or (certificate.get("type") == "ECDSA" and certificate.get("bits", 0) >= 256),
    }
    tls_judgement = {"passed": all(tls_checks.values()), **tls_checks}
    ok = tls_judgement["passed"] and all(r.verdict == "pass" for r in results)
    return (EXIT_OK if ok else EXIT_FAIL), tls_judgement


# -- signaling TLS -------------------------------------------------------------


def _client_context(version=None, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: offering them is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
        ctx.set_ciphers((ciphers or "ALL") + ":@SECLEVEL=0")
    return ctx


def _local_tls_proof(client_ctx: ssl.SSLContext, cert_files: tuple[str, str]) -> tuple[bool, str]:
    """Run ``client_ctx`` against a permissive in-process TLS server over memory BIOs."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.set_ciphers("ALL:@SECLEVEL=0")
    server_ctx.load_cert_chain(*cert_files)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    try:
        for _ in range(50):
            for name, obj in (("c", client), ("s", server)):
                if not done[name]:
                    try:
                        obj.do_handshake()
                        done[name] = True
                    except ssl.SSLWantReadError:
                        pass
            if c_out.pending:
                s_in.write(c_out.read())
            if s_out.pending:
                c_in.write(s_out.read())
            if done["c"] and done["s"]:
                return True, f"{client.version()} {client.cipher()[0]}"
    except ssl.SSLError as exc:
        return False, f"local peer: {exc.reason or exc}"
    return False, "local peer: no progress"


def _tls_connect(host: str, port: int, ctx: ssl.SSLContext, timeout: float = 5.0):
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise AuditError(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
    try:
        tls = ctx.wrap_socket(raw, server_hostname=host)
    except (ssl.SSLError, ConnectionError, socket.timeout) as exc:
        raw.close()
        return None, getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return tls, ""


def probe_tls(host: str, port: int) -> tuple[list[ProbeResult], dict, dict]:
    results: list[ProbeResult] = []
    with tempfile.TemporaryDirectory(prefix="callsgw-audit-") as tmp:
        rsa_files = RsaCertificate().pem_files(tmp)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        ec_files = _write_pem(tmp, "ec", _self_signed(ec_key), ec_key)

        def run(result: ProbeResult, make_ctx, want_cipher: str | None, cert_files) -> None:
            result.proof, result.proof_detail = _local_tls_proof(make_ctx(), cert_files)
            tls, error = _tls_connect(host, port, make_ctx())
            if tls is None:
                result.observed, result.detail = "refused", error
                return
            with tls:
                got = f"{tls.version()} {tls.cipher()[0]}"
                if want_cipher is not None and tls.cipher()[0] != want_cipher:
                    result.observed, result.detail = "error", f"asked for {want_cipher}, got {got}"
                else:
                    result.observed, result.detail = "accepted", got

        for name, version, expected in TLS_VERSIONS:
            r = ProbeResult("tls", name, expected)
            run(r, lambda v=version: _client_context(v), None, rsa_files)
            results.append(r)
        for suite in TLS12_PROBE_SUITES:
            r = ProbeResult("tls", f"TLSv1.2 {suite}", "either" if suite in TLS_MANDATED else "refuse")
            files = ec_files if "ECDSA" in suite else rsa_files
            run(r, lambda s=suite: _client_context(ssl.TLSVersion.TLSv1_2, s), suite, files)
            results.append(r)

    tls, error = _tls_connect(host, port, _client_context())
    if tls is None:
        raise AuditError(f"a default TLS client cannot connect to {host}:{port}: {error}")
    with tls:
        tls13 = {"version": tls.version(), "cipher": tls.cipher()[0]}
        der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        certificate = {"type": "RSA", "bits": key.key_size}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        certificate = {"type": "ECDSA", "bits": key.curve.key_size, "curve": key.curve.name}
    else:
        certificate = {"type": type(key).__name__, "bits": 0}
    certificate["sha256"] = fingerprint_of_der(der)
    return results, tls13, certificate


# -- web headers ---------------------------------------------------------------


def _csp_directives(policy: str | None) -> dict[str, list[str]]:
    """``{directive: [sources]}`` of a Content-Security-Policy value (CSP Level 3 section 2.2)."""
    out: dict[str, list[str]] = {}
    for part in (policy or "").split(";"):
        tokens = part.split()
        if tokens and tokens[0].lower() not in out:  # the first occurrence wins
            out[tokens[0].lower()] = [t.lower() for t in tokens[1:]]
    return out


def _hsts_max_age(value: str | None) -> int | None:
    for part in (value or "").split(";"):
        name, _, number = part.strip().partition("=")
        if name.strip().lower() == "max-age":
            try:
                return int(number.strip().strip('"'))
            except ValueError:
                return None
    return None


def judge_web(headers: dict[str, str], *, tls: bool = True) -> dict[str, bool]:
    """The checks one HTTP answer's headers pass or fail (header names lower case)."""
    csp = _csp_directives(headers.get("content-security-policy"))

    def only(directive: str, allowed: tuple[str, ...]) -> bool:
        sources = csp.get(directive)
        return bool(sources) and all(src in allowed for src in sources)

    checks = {
        "csp_default_src_same_origin": only("default-src", _SAME_ORIGIN_SOURCES),
        # connect-src falls back to default-src when absent (CSP Level 3 section 6.1)
        "csp_connect_src_same_origin": only("connect-src" if "connect-src" in csp else "default-src",
                                            _SAME_ORIGIN_SOURCES),
        "csp_frame_ancestors_none": csp.get("frame-ancestors") == ["'none'"],
        "csp_base_uri_none": csp.get("base-uri") == ["'none'"],
        "csp_form_action_self": only("form-action", _SAME_ORIGIN_SOURCES),
        "x_frame_options_deny": headers.get("x-frame-options", "").strip().upper() == "DENY",
        "x_content_type_options_nosniff": headers.get("x-content-type-options", "").strip().lower() == "nosniff",
    }
    if tls:
        age = _hsts_max_age(headers.get("strict-transport-security"))
        checks["hsts"] = age is not None and age >= HSTS_MIN_AGE
    return checks


def probe_web(host: str, port: int, context: ssl.SSLContext, timeout: float = 10.0) -> dict:
    """GET the page and an API answer over HTTPS and judge their security headers."""
    import http.client

    answers = {}
    for name, path in WEB_ANSWERS:
        conn = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read(1 << 20)
            got = {k.lower(): v for k, v in response.getheaders()}
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            raise AuditError(f"cannot GET https://{host}:{port}{path}: {exc}") from None
        finally:
            conn.close()
        checks = judge_web(got, tls=True)
        shown = ("content-security-policy", "x-frame-options", "x-content-type-options",
                 "strict-transport-security", "referrer-policy")
        answers[name] = {
            "path": path,
            "status": status,
            "headers": {h: got.get(h) for h in shown},
            "checks": checks,
            "passed": all(checks.values()),
        }
    return {"answers": answers, "passed": all(a["passed"] for a in answers.values())}


# -- media DTLS ----------------------------------------------------------------


@dataclass
class DtlsProbe:
    """One DTLS client configuration."""

    name: str
    expected: str
    ciphers: tuple[str, ...] = MANDATED_CIPHERS
    srtp: tuple[str, ...] = MANDATED_SRTP
    versions: tuple[int, int] = (DTLS1_2, DTLS1_2)
    rsa: bool = False  # an RSA client certificate (and an RSA certificate for the local peer)
    wrong_fingerprint: bool = False
    want_cipher: str | None = None
    want_profile: str | None = None
    want_version: str | None = None


def dtls_probes() -> list[DtlsProbe]:
    probes = [DtlsProbe(f"suite {c}", "accept", ciphers=(c,), want_cipher=c) for c in MANDATED_CIPHERS]
    probes += [DtlsProbe(f"suite {c}", "refuse", ciphers=(c,), want_cipher=c) for c in OTHER_DTLS_SUITES]
    probes += [DtlsProbe(f"suite {c}", "refuse", ciphers=(c,), rsa=True, want_cipher=c) for c in RSA_DTLS_SUITES]
    probes.append(
        DtlsProbe(
            "DTLS 1.0 only", "refuse", ciphers=("ECDHE-ECDSA-AES256-SHA",),
            versions=(DTLS1_0, DTLS1_0), want_version="DTLSv1",
        )
    )
    probes += [DtlsProbe(f"profile {p}", "accept", srtp=(p,), want_profile=p) for p in MANDATED_SRTP]
    probes += [DtlsProbe(f"profile {p}", "refuse", srtp=(p,), want_profile=p) for p in OTHER_SRTP]
    probes.append(DtlsProbe("wrong fingerprint", "refuse", wrong_fingerprint=True))
    return probes


class DtlsClient:
    """A raw pyOpenSSL DTLS client over memory BIOs; accepts any server certificate."""

    def __init__(self, probe: DtlsProbe, certificate) -> None:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_min_proto_version(probe.versions[0])
        ctx.set_max_proto_version(probe.versions[1])
        ctx.set_cipher_list((":".join(probe.ciphers) + ":@SECLEVEL=0").encode())
        ctx.set_tlsext_use_srtp(":".join(probe.srtp).encode())
        certificate.install(ctx)
        ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
        ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET)
        self.ssl = SSL.Connection(ctx, None)
        self.ssl.set_ciphertext_mtu(MTU)
        self.ssl.set_connect_state()
        self.done = False
        self.error: str | None = None
        self.step()

    def step(self) -> None:
        if self.done or self.error:
            return
        try:
            self.ssl.do_handshake()
            self.done = True
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            self.error = "; ".join(e[2] for e in exc.args[0]) if exc.args and exc.args[0] else str(exc)

    def feed(self, data: bytes) -> None:
        if not self.done and not self.error:
            self.ssl.bio_write(data)
            self.step()

    def outgoing(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.ssl.bio_read(65536))
            except SSL.WantReadError:
                return out

    def timer(self) -> float | None:
        if self.done or self.error:
            return None
        return self.ssl.DTLSv1_get_timeout()

    def handle_timeout(self) -> None:
        if not self.done and not self.error:
            self.ssl.DTLSv1_handle_timeout()

    def outcome(self, probe: DtlsProbe) -> tuple[str, str]:
        """``(accepted|refused|error, detail)`` after the handshake ended."""
        if not self.done:
            return "refused", self.error or "timeout"
        cipher = self.ssl.get_cipher_name()
        version = self.ssl.get_protocol_version_name()
        profile = (self.ssl.get_selected_srtp_profile() or b"").decode() or None
        got = f"{version} {cipher} {profile}"
        if probe.want_cipher and cipher != probe.want_cipher:
            return "error", f"asked for {probe.want_cipher}, got {got}"
        if probe.want_profile and profile != probe.want_profile:
            return "error", f"asked for {probe.want_profile}, got {got}"
        if probe.want_version and version != probe.want_version:
            return "error", f"asked for {probe.want_version}, got {got}"
        return "accepted", got


def local_dtls_proof(probe: DtlsProbe, client_cert) -> tuple[bool, str]:
    """Run the probe's client against a permissive in-process DTLS server (memory BIOs)."""
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_min_proto_version(probe.versions[0])
    ctx.set_max_proto_version(probe.versions[1])
    ctx.set_cipher_list((":".join(probe.ciphers) + ":@SECLEVEL=0").encode())
    ctx.set_tlsext_use_srtp(":".join(probe.srtp).encode())
    (RsaCertificate() if probe.rsa else DtlsCertificate.generate()).install(ctx)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
    ctx.set_options(SSL.OP_NO_QUERY_MTU)
    server = SSL.Connection(ctx, None)
    server.set_ciphertext_mtu(MTU)
    server.set_accept_state()
    client = DtlsClient(probe, client_cert)
    server_done = False
    for _ in range(50):
        for data in client.outgoing():
            server.bio_write(data)
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                return False, f"local peer: {exc}"
        while True:
            try:
                client.feed(server.bio_read(65536))
            except SSL.WantReadError:
                break
        if client.error:
            return False, f"local client: {client.error}"
        if client.done and server_done:
            observed, detail = client.outcome(probe)
            return observed == "accepted", detail
    return False, "local handshake made no progress"


@dataclass
class AuditTarget:
    url: str
    host: str
    port: int
    tokens: "TokenSource"
    ssl_context: ssl.SSLContext | None
    join_interval: float = DEFAULT_JOIN_INTERVAL
    whip_url: str | None = None  # join the DTLS probes through WHIP (RFC 9725) instead of the WebSocket
    ice_tcp: bool = True  # repeat the DTLS probes over the ICE-TCP candidate (area "dtls-tcp")
    ice_tcp_probed: bool = False  # set by probe_dtls: the answer had an ICE-TCP candidate
    _last_join: float = field(default=0.0, repr=False)


class TokenSource:
    """One token reused, or fresh tokens minted (random ``sub``) with the API secret."""

    def __init__(self, token: str, secret: bytes | None = None) -> None:
        self.token = token
        self.secret = secret
        self.claims = _unverified_claims(token) if secret is not None else {}

    def next(self) -> str:
        if self.secret is None:
            return self.token
        from callsgw.signaling import tokens

        return tokens.mint(
            self.secret,
            call=self.claims["call"],
            name=str(self.claims.get("name") or "audit"),
            sub=f"audit-{secrets.token_hex(6)}",
            ttl=600,
        )


def _unverified_claims(token: str) -> dict:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        if not isinstance(claims, dict) or not isinstance(claims.get("call"), str):
            raise ValueError
        return claims
    except (IndexError, ValueError, UnicodeDecodeError):
        raise AuditError("the --token is not a callsgw access token (no readable 'call' claim)") from None


async def _join(target: AuditTarget, offer: str):
    """Open a signaling session and join with ``offer``; return ``(ws, answer)``."""
    import websockets
    from websockets.asyncio.client import connect as ws_connect

    from callsgw.client.sdp import SdpError, parse_answer
    from callsgw.signaling.protocol import SUBPROTOCOL

    last_error = None
    for attempt in range(8):
        wait = target._last_join + target.join_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        target._last_join = time.monotonic()
        try:
            ws = await ws_connect(
                target.url, subprotocols=[SUBPROTOCOL], ssl=target.ssl_context,
                open_timeout=JOIN_TIMEOUT, compression=None, max_size=1 << 20,
            )
        except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
            raise AuditError(f"cannot open the signaling WebSocket {target.url}: {exc}") from None
        try:
            async with asyncio.timeout(JOIN_TIMEOUT):
                await ws.send(json.dumps({"type": "join", "token": target.tokens.next(), "sdp": offer}))
                while True:
                    msg = json.loads(await ws.recv())
                    if isinstance(msg, dict) and msg.get("type") == "joined":
                        return ws, parse_answer(msg.get("sdp"))
                    if isinstance(msg, dict) and msg.get("type") == "error":
                        last_error = msg.get("message")
        except websockets.exceptions.ConnectionClosed as exc:
            frame = exc.rcvd or exc.sent
            code, reason = (frame.code, frame.reason) if frame else (None, "")
            # the previous probe's session may still be leaving: retry the same identity
            if code in (4003, 4006) and ("already in the call" in reason or code == 4006):
                await asyncio.sleep(0.3 * (attempt + 1))
                continue
            raise AuditError(f"the gateway refused the join (close {code} {reason or last_error or ''})") from None
        except TimeoutError:
            await ws.close()
            raise AuditError(f"no 'joined' within {JOIN_TIMEOUT:g} s") from None
        except SdpError as exc:
            await ws.close()
            raise AuditError(f"the gateway's answer is unusable: {exc}") from None
    raise AuditError("the gateway kept refusing the join (identity still in the call, or rate limited)")


async def _http(target: AuditTarget, method: str, url: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One HTTP/1.1 request (``Connection: close``) with the probe's bearer token; (status, headers, body)."""
    parts = urlsplit(url)
    tls = parts.scheme.lower() == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise AuditError(f"bad port in {url!r}") from None
    headers = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
               f"Authorization: Bearer {target.tokens.next()}"]
    if method == "POST":
        headers += ["Content-Type: application/sdp", f"Content-Length: {len(body)}"]
    try:
        async with asyncio.timeout(JOIN_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                parts.hostname, port, ssl=target.ssl_context if tls else None,
                server_hostname=parts.hostname if tls else None)
            try:
                writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
                await writer.drain()
                data = await reader.read(1 << 20)
                while chunk := await reader.read(1 << 20):
                    data += chunk
            finally:
                writer.close()
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise AuditError(f"cannot reach the WHIP endpoint {url}: {exc}") from None
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        raise AuditError(f"the WHIP endpoint's answer is not HTTP: {lines[0][:80]!r}") from None
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return status, fields, rest


async def _join_whip(target: AuditTarget, offer: str):
    """POST ``offer`` to the WHIP endpoint; return ``(resource URL, answer)`` (RFC 9725 section 4.2)."""
    from urllib.parse import urljoin

    from callsgw.client.sdp import SdpError, parse_answer

    for attempt in range(8):
        wait = target._last_join + target.join_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        target._last_join = time.monotonic()
        status, fields, body = await _http(target, "POST", target.whip_url, offer.encode())
        if status == 201:
            if "location" not in fields:
                raise AuditError("the WHIP endpoint answered 201 without a Location")
            try:
                return urljoin(target.whip_url, fields["location"]), parse_answer(body.decode("utf-8", "replace"))
            except SdpError as exc:
                raise AuditError(f"the WHIP answer is unusable: {exc}") from None
        if status == 429:  # the previous probe's join still counts: wait and retry
            await asyncio.sleep(0.3 * (attempt + 1))
            continue
        raise AuditError(f"the WHIP endpoint refused the offer: {status} {body[:200].decode('utf-8', 'replace')}")
    raise AuditError("the WHIP endpoint kept answering 429 (rate limited)")


def _media_exchange(probe: DtlsProbe, client_cert, candidates, answer, ice_ufrag, ice_pwd, sock=None) -> tuple[str, str]:
    """ICE (controlling) then the DTLS probe over one UDP socket, or over ``sock``: an ICE-TCP
    connection to the one candidate (:class:`callsgw.security.audit_tcp.FramedSocket`); blocking."""
    from callsgw.client.ice import IceControllingAgent, IceFailed, PairSelected
    from callsgw.dtls.certificate import fingerprint_of_der as fp_of
    from callsgw.wire.demux import PacketKind, classify

    if sock is None:
        family = socket.AF_INET6 if ":" in candidates[0][0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    clock = time.monotonic
    agent = IceControllingAgent(ice_ufrag, ice_pwd, answer.ice_ufrag, answer.ice_pwd, candidates)
    try:
        agent.start(clock())
        selected = None
        deadline = clock() + ICE_TIMEOUT
        while selected is None:
            for data, addr in agent.datagrams_to_send():
                sock.sendto(data, addr)
            while (event := agent.next_event()) is not None:
                if isinstance(event, PairSelected):
                    selected = event.remote_addr
                elif isinstance(event, IceFailed):
                    raise AuditError(f"ICE failed towards {candidates}: {event.reason} {event.detail}")
            if selected is not None:
                break
            now = clock()
            if now >= deadline:
                raise AuditError(f"ICE did not select a pair within {ICE_TIMEOUT:g} s")
            timer = agent.get_timer()
            sock.settimeout(max(0.001, min(deadline, timer if timer is not None else deadline) - now))
            try:
                data, addr = sock.recvfrom(4096)
                agent.receive(data, addr[:2], clock())
            except socket.timeout:
                agent.handle_timer(clock())

        client = DtlsClient(probe, client_cert)
        deadline = clock() + DTLS_TIMEOUT
        while True:
            for data in client.outgoing():
                sock.sendto(data, selected)
            for data, addr in agent.datagrams_to_send():
                sock.sendto(data, addr)
            if client.done or client.error:
                break
            now = clock()
            if now >= deadline:
                break
            wait = deadline - now
            t = client.timer()
            if t is not None:
                wait = min(wait, t)
            ice_timer = agent.get_timer()
            if ice_timer is not None:
                wait = min(wait, ice_timer - now)
            sock.settimeout(max(0.001, wait))
            try:
                data, addr = sock.recvfrom(4096)
            except socket.timeout:
                client.handle_timeout()
                agent.handle_timer(clock())
                continue
            kind = classify(data)
            if kind is PacketKind.STUN:
                agent.receive(data, addr[:2], clock())
            elif kind is PacketKind.DTLS and tuple(addr[:2]) == tuple(selected):
                client.feed(data)
        observed, detail = client.outcome(probe)
        if client.done:
            peer = client.ssl.get_peer_cert_chain(as_cryptography=True) or []
            if peer and fp_of(peer[0].public_bytes(serialization.Encoding.DER)) != answer.fingerprint:
                return "error", f"{detail}; the gateway's certificate does not match its answer's fingerprint"
            try:
                client.ssl.shutdown()
                for data in client.outgoing():
                    sock.sendto(data, selected)
            except SSL.Error:
                pass
        return observed, detail
    finally:
        agent.close()
        sock.close()


class NoTcpCandidate(AuditError):
    """The gateway's answer offers no ICE-TCP candidate (ICE-TCP is off): nothing to probe over TCP."""


def _tcp_exchange(probe: DtlsProbe, cert, candidates, answer, ufrag, pwd) -> tuple[str, str]:
    """:func:`_media_exchange` over an ICE-TCP connection to the first TCP candidate (RFC 6544)."""
    from callsgw.security.audit_tcp import connect_tcp_candidate

    try:
        sock = connect_tcp_candidate(candidates[0])
    except OSError as exc:
        raise AuditError(f"cannot open an ICE-TCP connection to {candidates[0]}: {exc}") from None
    return _media_exchange(probe, cert, candidates[:1], answer, ufrag, pwd, sock=sock)


async def _dtls_probe(target: AuditTarget, probe: DtlsProbe, result: ProbeResult, *, tcp: bool = False) -> None:
    """One DTLS probe over UDP, or with ``tcp`` over the gateway's ICE-TCP candidate (area ``dtls-tcp``)."""
    from callsgw.client.ice import generate_credentials
    from callsgw.client.sdp import build_offer
    from callsgw.client.session import order_candidates

    cert = RsaCertificate() if probe.rsa else DtlsCertificate.generate()
    result.proof, result.proof_detail = local_dtls_proof(probe, cert)
    offered = DtlsCertificate.generate().fingerprint if probe.wrong_fingerprint else cert.fingerprint
    ufrag, pwd = generate_credentials()
    offer = build_offer(ufrag, pwd, offered, ["voice"])
    if target.whip_url is not None:
        resource, answer = await _join_whip(target, offer)
        try:
            candidates = order_candidates(answer.candidates, urlsplit(target.whip_url).hostname)
            if not candidates:
                raise AuditError(f"the WHIP answer has no candidate reachable from here: {answer.candidates}")
            result.observed, result.detail = await asyncio.to_thread(
                _media_exchange, probe, cert, candidates, answer, ufrag, pwd
            )
        finally:
            try:
                await _http(target, "DELETE", resource)
            except AuditError:
                pass
        return
    ws, answer = await _join(target, offer)
    try:
        try:
            remote_ip = ws.remote_address[0]
        except (AttributeError, TypeError, IndexError):
            remote_ip = None
        if tcp:
            candidates = order_candidates(answer.tcp_candidates, remote_ip)
            if not candidates:
                raise NoTcpCandidate("the gateway's answer has no ICE-TCP candidate")
            result.observed, result.detail = await asyncio.to_thread(
                _tcp_exchange, probe, cert, candidates, answer, ufrag, pwd
            )
            return
        candidates = order_candidates(answer.candidates, remote_ip)
        if not candidates:
            raise AuditError(f"the gateway's answer has no candidate reachable from here: {answer.candidates}")
        result.observed, result.detail = await asyncio.to_thread(
            _media_exchange, probe, cert, candidates, answer, ufrag, pwd
        )
    finally:
        try:
            await asyncio.wait_for(ws.close(1000, "audit probe done"), 3)
        except Exception:
            pass


async def probe_dtls(target: AuditTarget) -> list[ProbeResult]:
    results = []
    for probe in dtls_probes():
        result = ProbeResult("dtls", probe.name, probe.expected)
        await _dtls_probe(target, probe, result)
        results.append(result)
    target.ice_tcp_probed = False
    if target.ice_tcp and getattr(target, "whip_url", None) is None:
        # the same probes over the ICE-TCP candidate (RFC 6544), judged alike (area "dtls-tcp")
        for probe in dtls_probes():
            result = ProbeResult("dtls-tcp", probe.name, probe.expected)
            try:
                await _dtls_probe(target, probe, result, tcp=True)
            except NoTcpCandidate:
                break  # ICE-TCP off at the gateway: reported as not probed
            target.ice_tcp_probed = True
            results.append(result)
    return results


# -- the report ----------------------------------------------------------------


def run_audit(target: AuditTarget) -> dict:
    tls_results, tls13, certificate = probe_tls(target.host, target.port)
    web = probe_web(target.host, target.port, target.ssl_context)
    dtls_results = asyncio.run(probe_dtls(target))
    results = tls_results + dtls_results
    code, tls_judgement = judge(results, tls13, certificate)
    if not web["passed"]:
        code = EXIT_FAIL
    return {
        "target": target.url,
        "whip": target.whip_url,
        "exit_code": code,
        "passed": code == EXIT_OK,
        "ice_tcp_probed": target.ice_tcp_probed,
        "tls": {"default_client": tls13, "certificate": certificate, "judgement": tls_judgement},
        "web": web,
        "probes": [asdict(r) for r in results],
    }


def format_table(report: dict) -> str:
    rows = [("area", "probe", "expected", "observed", "proof", "verdict", "detail")]
    for p in report["probes"]:
        proof = "n/a" if p["proof"] is None else ("ok" if p["proof"] else "FAILED")
        rows.append((p["area"], p["probe"], p["expected"], p["observed"], proof, p["verdict"], p["detail"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(6)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r[:6], widths)) + "  " + str(r[6]) for r in rows]
    tls = report["tls"]
    cert = tls["certificate"]
    j = tls["judgement"]
    lines += [
        "",
        f"default TLS client: {tls['default_client']['version']} {tls['default_client']['cipher']} "
        f"(want {TLS13_EXPECTED}: {'ok' if j['tls13_default_cipher'] else 'FAIL'})",
        f"certificate key: {cert['type']}-{cert['bits']} ({'ok' if j['certificate_key'] else 'FAIL'})",
        f"TLS judgement: {'pass' if j['passed'] else 'FAIL'}",
    ]
    web = report.get("web")
    if web is not None:
        for name, answer in web["answers"].items():
            failed = [check for check, ok in answer["checks"].items() if not ok]
            lines.append(f"web {name} (GET {answer['path']} -> {answer['status']}): "
                         + ("ok" if not failed else "FAIL " + ", ".join(failed)))
        lines.append(f"web judgement: {'pass' if web['passed'] else 'FAIL'}")
    lines.append(f"audit {'PASSED' if report['passed'] else 'FAILED'}: {report['target']}")
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="WSS-URL", help="the gateway's signaling URL, wss://HOST:PORT/ws")
    parser.add_argument("--token", required=True,
                        help="an access token for the call to probe in (reused for every probe unless a "
                        "secret is given)")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--token-secret-file", metavar="F",
                        help="the gateway's API secret file: mint a fresh token (random sub) per probe")
    secret.add_argument("--data-dir", metavar="D",
                        help="the gateway's data directory, whose API secret mints a fresh token per probe")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the signaling certificate (self-signed default certificate)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--whip", metavar="URL",
                        help="run the DTLS/SRTP probes through this WHIP endpoint (https://HOST:PORT/whip/CALL, "
                        "the gateway's whip_port) instead of the WebSocket; the token must be for CALL and allow "
                        "publish_voice")
    parser.add_argument("--no-ice-tcp", dest="ice_tcp", action="store_false",
                        help="do not repeat the DTLS probes over the gateway's ICE-TCP candidate")
    parser.add_argument("--join-interval", type=float, default=DEFAULT_JOIN_INTERVAL, metavar="S",
                        help=f"seconds between joins (default {DEFAULT_JOIN_INTERVAL}, under 5 joins/s)")


def _read_secret(args: argparse.Namespace) -> bytes | None:
    if args.token_secret_file:
        try:
            data = Path(args.token_secret_file).read_bytes()
        except OSError as exc:
            raise AuditError(f"cannot read {args.token_secret_file}: {exc.strerror}") from None
        text = data.strip()
        try:
            if len(text) == 64:
                return bytes.fromhex(text.decode())
        except (ValueError, UnicodeDecodeError):
            pass
        return data
    if args.data_dir:
        from callsgw.datadir import DataDir, DataDirError

        try:
            return DataDir(args.data_dir).api_secret()
        except DataDirError as exc:
            raise AuditError(str(exc)) from None
    return None


def make_target(args: argparse.Namespace) -> AuditTarget:
    parts = urlsplit(args.url)
    if parts.scheme.lower() != "wss" or not parts.hostname:
        raise AuditError(f"the URL must be wss://HOST[:PORT]/PATH, not {args.url!r}")
    try:
        port = parts.port or 443
    except ValueError:
        raise AuditError(f"bad port in {args.url!r}") from None
    if args.join_interval < 0:
        raise AuditError("--join-interval must not be negative")
    if args.insecure:
        context = _client_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    else:
        context = ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    whip = getattr(args, "whip", None)
    if whip is not None:
        whip_parts = urlsplit(whip)
        if whip_parts.scheme.lower() not in ("https", "http") or not whip_parts.hostname:
            raise AuditError(f"--whip must be https://HOST:PORT/whip/CALL, not {whip!r}")
    return AuditTarget(
        url=args.url, host=parts.hostname, port=port,
        tokens=TokenSource(args.token, _read_secret(args)),
        ssl_context=context, join_interval=args.join_interval, ice_tcp=getattr(args, "ice_tcp", True), whip_url=whip,
    )


def run(args: argparse.Namespace) -> int:
    try:
        target = make_target(args)
        report = run_audit(target)
    except AuditError as exc:
        print(f"callsgw audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return report["exit_code"]

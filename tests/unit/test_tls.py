"""TLS on the signaling port (callsgw.tls): certificates, key checks, and live handshakes.

The handshake tests use real ssl sockets on 127.0.0.1 (a server thread per
probe). Every negative probe is first shown to succeed against a deliberately
permissive local server (``@SECLEVEL=0``, TLS 1.0 allowed), so a refusal by
the gateway's context cannot be blamed on a probe that was unable to speak the
version or suite it offers. Two independent probes are used where available:
Python's ssl module and the system's ``openssl s_client``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from callsgw.config import Config
from callsgw.datadir import DataDir
from callsgw.tls import (
    TLS12_CIPHERS,
    CertInfo,
    TlsConfigError,
    certificate_for,
    check_certificate,
    describe,
    ensure_default_certificate,
    make_self_signed_certificate,
    server_ssl_context,
)

ALLOWED_TLS12 = {"ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"}
TIMEOUT = 10.0


# -- helpers ------------------------------------------------------------------------------


def write_pair(directory: Path, key, *, name: str = "op", days: int = 30, cert_key=None,
               not_after: datetime.datetime | None = None) -> tuple[Path, Path]:
    """Write a self-signed certificate for ``cert_key`` (default ``key``) and ``key``."""
    cert_key = cert_key or key
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = not_after or now + datetime.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(cert_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - datetime.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    )
    algorithm = None if isinstance(cert_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(cert_key, algorithm)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def default_pair(tmp_path_factory) -> tuple[Path, Path]:
    return ensure_default_certificate(DataDir(tmp_path_factory.mktemp("tls") / "data"))


@pytest.fixture(scope="module")
def gateway_ctx(default_pair) -> ssl.SSLContext:
    return server_ssl_context(*default_pair)


@pytest.fixture(scope="module")
def permissive_ctx(default_pair) -> ssl.SSLContext:
    """A server that accepts anything OpenSSL can still speak: the probes' control."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 is deprecated, on purpose
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(*default_pair)
    return ctx


def client_ctx(*, version: ssl.TLSVersion | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/1.1 are deprecated, on purpose
            ctx.minimum_version = version
            ctx.maximum_version = version
    if ciphers is not None or version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        ctx.set_ciphers((ciphers or "ALL") + ":@SECLEVEL=0")
    return ctx


@dataclass
class Outcome:
    version: str | None = None
    cipher: str | None = None
    error: BaseException | None = None
    server: dict | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class LoopbackServer:
    """Accepts one TLS connection on 127.0.0.1 in a thread and records the server's view."""

    def __init__(self, ctx: ssl.SSLContext):
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.result: dict | BaseException | None = None
        self._thread = threading.Thread(target=self._serve_one, daemon=True)

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join(TIMEOUT)
        self.sock.close()

    def _serve_one(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError as exc:
            self.result = exc
            return
        conn.settimeout(TIMEOUT)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                self.result = describe(tls)
                tls.recv(1)  # until the client closes
        except (ssl.SSLError, OSError) as exc:
            if self.result is None:
                self.result = exc
        finally:
            conn.close()


def python_probe(server_ctx: ssl.SSLContext, ctx: ssl.SSLContext) -> Outcome:
    with LoopbackServer(server_ctx) as server:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
                with ctx.wrap_socket(raw) as tls:
                    outcome = Outcome(version=tls.version(), cipher=tls.cipher()[0])
        except (ssl.SSLError, OSError) as exc:
            outcome = Outcome(error=exc)
    if isinstance(server.result, dict):
        outcome.server = server.result
    return outcome


def s_client_probe(server_ctx: ssl.SSLContext, option: str, cipher: str = "ALL:@SECLEVEL=0",
                   *extra: str) -> Outcome:
    """``openssl s_client -tls1`` etc.: an independent implementation of the client."""
    with LoopbackServer(server_ctx) as server:
        proc = subprocess.run(
            ["openssl", "s_client", "-brief", "-connect", f"127.0.0.1:{server.port}", option,
             "-cipher", cipher, *extra],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
        )
    # -brief reports the negotiated protocol and suite on stderr
    version = re.search(r"^Protocol version: (\S+)", proc.stderr, re.MULTILINE)
    suite = re.search(r"^Ciphersuite: (\S+)", proc.stderr, re.MULTILINE)
    if proc.returncode == 0 and version and suite:
        return Outcome(version=version.group(1), cipher=suite.group(1))
    return Outcome(error=RuntimeError(f"openssl s_client exit {proc.returncode}: {proc.stderr.strip()[-300:]}"))


# -- the default certificate ------------------------------------------------------------


def test_default_certificate_is_rsa_2048_self_signed_with_sans(tmp_path):
    datadir = DataDir(tmp_path / "d")
    cert_path, key_path = ensure_default_certificate(datadir)
    assert (cert_path, key_path) == datadir.tls_paths()
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    assert cert.issuer == cert.subject
    key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = set(san.get_values_for_type(x509.IPAddress))
    assert "localhost" in dns
    hostname = socket.gethostname()
    if hostname and hostname != "localhost" and all(c.isalnum() or c in ".-" for c in hostname):
        assert hostname in dns
    assert ips == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    info = check_certificate(cert_path, key_path)
    assert (info.key_type, info.key_bits) == ("RSA", 2048)


def test_default_certificate_is_reused(tmp_path):
    datadir = DataDir(tmp_path / "d")
    first = check_certificate(*ensure_default_certificate(datadir)).fingerprint_sha256
    again = check_certificate(*ensure_default_certificate(DataDir(tmp_path / "d"))).fingerprint_sha256
    assert first == again


def test_expired_default_certificate_is_replaced(tmp_path):
    datadir = DataDir(tmp_path / "d")
    cert_path, key_path = datadir.tls_paths()
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    made_cert, made_key = write_pair(tmp_path, old, not_after=past)
    datadir.write_private_file(cert_path.name, made_cert.read_bytes())
    datadir.write_private_file(key_path.name, made_key.read_bytes())
    with pytest.raises(TlsConfigError, match="expired"):
        check_certificate(cert_path, key_path)
    ensure_default_certificate(datadir)
    info = check_certificate(cert_path, key_path)
    assert info.not_after > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=300)


@pytest.mark.parametrize("damage", ["garbage", "missing_key", "empty_cert"])
def test_unreadable_default_certificate_is_replaced(tmp_path, damage):
    datadir = DataDir(tmp_path / "d")
    cert_path, key_path = ensure_default_certificate(datadir)
    before = check_certificate(cert_path, key_path).fingerprint_sha256
    if damage == "garbage":
        key_path.write_bytes(b"not a key")
    elif damage == "missing_key":
        key_path.unlink()
    else:
        cert_path.write_bytes(b"")
    ensure_default_certificate(datadir)
    after = check_certificate(cert_path, key_path)
    assert after.fingerprint_sha256 != before and after.key_bits == 2048
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600


def test_self_signed_certificate_skips_invalid_host_names():
    cert_pem, _ = make_self_signed_certificate(hostname="bad_host name", key_bits=2048)
    san = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]


# -- operator certificates ---------------------------------------------------------------


@pytest.mark.parametrize("bits", [2048, 3072])
def test_rsa_2048_and_3072_are_accepted(tmp_path, bits):
    pair = write_pair(tmp_path, rsa.generate_private_key(public_exponent=65537, key_size=bits))
    info = check_certificate(*pair)
    assert isinstance(info, CertInfo)
    assert (info.key_type, info.key_bits) == ("RSA", bits)
    assert info.subject == "CN=op" and len(info.fingerprint_sha256.split(":")) == 32
    server_ssl_context(*pair)


def test_rsa_1024_is_refused(tmp_path):
    pair = write_pair(tmp_path, rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(TlsConfigError, match="RSA-1024; at least RSA-2048"):
        check_certificate(*pair)
    with pytest.raises(TlsConfigError, match="RSA-1024"):
        server_ssl_context(*pair)


def test_ecdsa_p256_and_p384_are_accepted(tmp_path):
    for curve in (ec.SECP256R1(), ec.SECP384R1()):
        info = check_certificate(*write_pair(tmp_path, ec.generate_private_key(curve), name=curve.name))
        assert (info.key_type, info.key_bits) == ("ECDSA", curve.key_size)


def test_ec_p192_is_refused(tmp_path):
    try:
        key = ec.generate_private_key(ec.SECP192R1())
        pair = write_pair(tmp_path, key)
    except Exception as exc:  # the local cryptography/OpenSSL may have dropped P-192 entirely
        pytest.skip(f"cryptography cannot make a P-192 key or certificate here: {exc}")
    with pytest.raises(TlsConfigError, match="at least P-256"):
        check_certificate(*pair)


def test_non_nist_curve_is_refused(tmp_path):
    pair = write_pair(tmp_path, ec.generate_private_key(ec.SECP256K1()))
    with pytest.raises(TlsConfigError, match="secp256k1"):
        check_certificate(*pair)


def test_dsa_and_ed25519_keys_are_refused(tmp_path):
    pair = write_pair(tmp_path, dsa.generate_private_key(key_size=2048), name="dsa")
    with pytest.raises(TlsConfigError, match="DSA key"):
        check_certificate(*pair)
    pair = write_pair(tmp_path, ed25519.Ed25519PrivateKey.generate(), name="ed")
    with pytest.raises(TlsConfigError, match="Ed25519 key"):
        check_certificate(*pair)


def test_key_that_does_not_match_is_refused(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pair = write_pair(tmp_path, key, cert_key=other)
    with pytest.raises(TlsConfigError, match="does not belong"):
        check_certificate(*pair)


def test_unreadable_files_are_refused(tmp_path):
    cert, key = write_pair(tmp_path, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(TlsConfigError, match="cannot read TLS certificate"):
        check_certificate(tmp_path / "missing.crt", key)
    with pytest.raises(TlsConfigError, match="cannot read TLS key"):
        check_certificate(cert, tmp_path / "missing.key")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsConfigError, match="not a PEM certificate"):
        check_certificate(garbage, key)
    with pytest.raises(TlsConfigError, match="not a PEM private key"):
        check_certificate(cert, garbage)
    with pytest.raises(TlsConfigError, match="cannot read"):
        check_certificate(tmp_path, key)  # a directory


def test_encrypted_key_is_refused_clearly(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert, key_path = write_pair(tmp_path, key)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(TlsConfigError, match="encrypted"):
        check_certificate(cert, key_path)


def test_expired_operator_certificate_is_refused(tmp_path):
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    pair = write_pair(tmp_path, rsa.generate_private_key(public_exponent=65537, key_size=2048), not_after=past)
    with pytest.raises(TlsConfigError, match="expired"):
        check_certificate(*pair)


def test_certificate_for_config(tmp_path):
    assert certificate_for(Config(data_dir=tmp_path / "d", plain_ws=True)) is None
    cert, key, info = certificate_for(Config(data_dir=tmp_path / "d"))
    assert (cert, key) == DataDir(tmp_path / "d").tls_paths() and info.key_bits == 2048
    op = write_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    assert certificate_for(Config(data_dir=tmp_path / "d", tls_cert=op[0], tls_key=op[1]))[2].key_type == "ECDSA"
    weak = write_pair(tmp_path, rsa.generate_private_key(public_exponent=65537, key_size=1024), name="weak")
    with pytest.raises(TlsConfigError, match="RSA-1024"):
        certificate_for(Config(data_dir=tmp_path / "d", tls_cert=weak[0], tls_key=weak[1]))


# -- the server context --------------------------------------------------------------------


def test_context_settings(gateway_ctx):
    tls12 = {c["name"] for c in gateway_ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == ALLOWED_TLS12
    assert {c["protocol"] for c in gateway_ctx.get_ciphers()} <= {"TLSv1.2", "TLSv1.3"}
    assert set(TLS12_CIPHERS.split(":")) == ALLOWED_TLS12
    assert gateway_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    for option in (ssl.OP_CIPHER_SERVER_PREFERENCE, ssl.OP_NO_COMPRESSION, ssl.OP_NO_TICKET,
                   ssl.OP_NO_RENEGOTIATION):
        assert gateway_ctx.options & option == option
    assert gateway_ctx.num_tickets == 0


def test_default_client_gets_tls13_aes256(gateway_ctx):
    outcome = python_probe(gateway_ctx, client_ctx())
    assert outcome.ok, outcome.error
    assert (outcome.version, outcome.cipher) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    assert outcome.server == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}


def test_tls12_client_gets_ecdhe_rsa_aes256_gcm(gateway_ctx):
    outcome = python_probe(gateway_ctx, client_ctx(version=ssl.TLSVersion.TLSv1_2))
    assert outcome.ok, outcome.error
    assert (outcome.version, outcome.cipher) == ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384")
    assert outcome.server == {"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES256-GCM-SHA384"}


def test_tls12_client_with_ecdsa_certificate_gets_ecdhe_ecdsa(tmp_path):
    pair = write_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    outcome = python_probe(server_ssl_context(*pair), client_ctx(version=ssl.TLSVersion.TLSv1_2))
    assert (outcome.version, outcome.cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")


@pytest.mark.parametrize("suite", ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-SHA384", "AES256-GCM-SHA384"])
def test_tls12_client_with_other_suites_is_refused(gateway_ctx, permissive_ctx, suite):
    ctx = client_ctx(version=ssl.TLSVersion.TLSv1_2, ciphers=suite)
    control = python_probe(permissive_ctx, ctx)
    assert control.ok and control.cipher == suite, f"the probe cannot even offer {suite}: {control.error}"
    outcome = python_probe(gateway_ctx, ctx)
    assert not outcome.ok, f"gateway accepted {outcome.cipher}"
    assert isinstance(outcome.error, ssl.SSLError)
    assert "handshake failure" in str(outcome.error).lower()


def test_s_client_offering_only_aes128_gcm_is_refused(gateway_ctx, permissive_ctx):
    if not shutil.which("openssl"):
        pytest.skip("no openssl command")
    suite = "ECDHE-RSA-AES128-GCM-SHA256"
    control = s_client_probe(permissive_ctx, "-tls1_2", suite)
    assert control.ok and control.cipher == suite, control.error
    outcome = s_client_probe(gateway_ctx, "-tls1_2", suite)
    assert not outcome.ok and "handshake failure" in str(outcome.error)


LEGACY = {"TLSv1": (ssl.TLSVersion.TLSv1, "-tls1"), "TLSv1.1": (ssl.TLSVersion.TLSv1_1, "-tls1_1")}


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_tls_is_refused(gateway_ctx, permissive_ctx, name):
    """TLS 1.0/1.1 are refused, by a probe first proven to speak them."""
    version, option = LEGACY[name]
    proven = []

    control = python_probe(permissive_ctx, client_ctx(version=version))
    if control.ok:
        assert control.version == name
        proven.append("python ssl")
        outcome = python_probe(gateway_ctx, client_ctx(version=version))
        assert not outcome.ok, f"gateway accepted {name} from the ssl module ({outcome.cipher})"
        assert "protocol version" in str(outcome.error).lower()

    if shutil.which("openssl"):
        control = s_client_probe(permissive_ctx, option)
        if control.ok:
            assert control.version == name
            proven.append("openssl s_client")
            outcome = s_client_probe(gateway_ctx, option)
            assert not outcome.ok, f"gateway accepted {name} from openssl s_client ({outcome.cipher})"
            assert "protocol version" in str(outcome.error)

    if not proven:
        # Neither probe can speak this version even to a permissive server. The
        # refusal below is then weak evidence; say so rather than pass silently.
        outcome = python_probe(gateway_ctx, client_ctx(version=version))
        assert not outcome.ok
        warnings.warn(f"no local probe can speak {name}; refusal asserted without a positive control")


@pytest.mark.parametrize("option,version,cipher", [
    ("-tls1_3", "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    ("-tls1_2", "TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384"),
])
def test_s_client_sees_aes256_gcm(gateway_ctx, option, version, cipher):
    if not shutil.which("openssl"):
        pytest.skip("no openssl command")
    outcome = s_client_probe(gateway_ctx, option)
    assert outcome.ok, outcome.error
    assert (outcome.version, outcome.cipher) == (version, cipher)


def test_tls13_client_preferring_other_suites_gets_aes256(gateway_ctx, default_pair):
    """OP_CIPHER_SERVER_PREFERENCE: the server's order (AES-256-GCM first) wins in TLS 1.3."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl command")
    preference = "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"
    control_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    control_ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE  # Python sets it by default; honour the client
    control_ctx.load_cert_chain(*default_pair)
    control = s_client_probe(control_ctx, "-tls1_3", "ALL", "-ciphersuites", preference)
    assert control.cipher == "TLS_CHACHA20_POLY1305_SHA256", control.error
    outcome = s_client_probe(gateway_ctx, "-tls1_3", "ALL", "-ciphersuites", preference)
    assert outcome.ok, outcome.error
    assert outcome.cipher == "TLS_AES_256_GCM_SHA384"


# -- describe() --------------------------------------------------------------------------------


def test_describe_an_ssl_object_over_memory_bios(gateway_ctx):
    """The asyncio/websockets path exposes an ssl.SSLObject; run a handshake in memory."""
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = gateway_ctx.wrap_bio(server_in, server_out, server_side=True)
    client = client_ctx().wrap_bio(client_in, client_out)
    with pytest.raises(ValueError, match="not completed"):
        describe(server)
    done = {"server": False, "client": False}
    for _ in range(20):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            break
    assert describe(server) == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
    assert describe(client) == describe(server)


def test_describe_without_tls_is_none():
    assert describe(None) is None

"""The callsgw command line (callsgw.cli): token, serve's start-up path, help and errors.

``serve`` is run against a stand-in for callsgw.server.app, so these tests
check what the CLI does before and around the server (configuration, data
directory, certificate, warnings, exit codes) without opening sockets.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

import callsgw.cli as cli
from callsgw.config import Config, setting_specs
from callsgw.datadir import DataDir
from callsgw.signaling.tokens import PERMISSIONS, verify
from callsgw.tls import check_certificate

@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No CALLSGW_* settings from the outside, HOME in the test directory, logging restored."""
    for name in list(os.environ):
        if name.startswith("CALLSGW_") or name == "XDG_DATA_HOME":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def data(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def fake_app(monkeypatch):
    """Stand-in for callsgw.server.app: records the Config that serve() receives."""
    module = types.ModuleType("callsgw.server.app")
    module.calls = []
    module.error = None

    async def serve(config):
        module.calls.append(config)
        if module.error is not None:
            raise module.error

    module.serve = serve
    monkeypatch.setitem(sys.modules, "callsgw.server.app", module)
    return module


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert lines, "no error message"
    assert "Traceback" not in err
    assert "error:" in lines[-1]
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


# -- token ---------------------------------------------------------------------------------


def test_token_prints_exactly_one_verifiable_line(data, capsys):
    code, out, err = run(["token", "--call", "standup", "--name", "alice", "--data-dir", str(data)], capsys)
    assert code == 0, err
    assert out.endswith("\n") and out.count("\n") == 1
    token = out.strip()
    claims = verify(DataDir(data).api_secret(), token, call="standup", require=PERMISSIONS)
    assert claims.name == "alice" and claims.perms == frozenset(PERMISSIONS)
    assert 3599 <= claims.exp - claims.iat <= 3601


def test_token_options(data, capsys):
    code, out, _ = run(
        ["token", "--call", "c-1", "--name", "bob", "--sub", "user-42", "--ttl", "90",
         "--no-voice", "--data-dir", str(data)],
        capsys,
    )
    assert code == 0
    claims = verify(DataDir(data).api_secret(), out.strip())
    assert claims.sub == "user-42" and claims.exp - claims.iat == 90
    assert claims.perms == frozenset({"publish_screen"})
    code, out, _ = run(["token", "--call", "c", "--name", "x", "--no-voice", "--no-screen",
                        "--data-dir", str(data)], capsys)
    assert verify(DataDir(data).api_secret(), out.strip()).perms == frozenset()


def test_token_finds_the_data_dir_and_ttl_through_config(data, tmp_path, capsys, monkeypatch):
    toml = tmp_path / "gw.toml"
    toml.write_text(f"data_dir = '{data}'\ntoken_ttl = 120\n")
    code, out, _ = run(["token", "--call", "c", "--name", "n", "--config", str(toml)], capsys)
    assert code == 0
    claims = verify(DataDir(data).api_secret(), out.strip())
    assert claims.exp - claims.iat == 120
    monkeypatch.setenv("CALLSGW_DATA_DIR", str(tmp_path / "env-data"))
    monkeypatch.setenv("CALLSGW_TOKEN_TTL", "300")
    code, out, _ = run(["token", "--call", "c", "--name", "n"], capsys)
    claims = verify(DataDir(tmp_path / "env-data").api_secret(), out.strip())
    assert claims.exp - claims.iat == 300


def test_token_as_a_real_process(tmp_path):
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "callsgw.cli", "token", "--call", "standup", "--name", "alice",
         "--data-dir", str(data)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and proc.stdout == lines[0] + "\n"
    claims = verify(DataDir(data).api_secret(), lines[0], call="standup")
    assert claims.name == "alice"
    # the secret it made is private
    assert (data / "api_secret").stat().st_mode & 0o777 == 0o600


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    # `callsgw ... | head`: the pipe closes before the command writes; no traceback, the shell's 141
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "callsgw", "token", "--call", "standup", "--name", "alice",
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
    )
    proc.stdout.close()  # long before the interpreter has started
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["token", "--call", "bad call", "--name", "a"], "call id"),
        (["token", "--call", "c", "--name", "x" * 65], "name"),
        (["token", "--call", "c", "--name", "a", "--ttl", "0"], "--ttl"),
        (["token", "--call", "c", "--name", "a", "--ttl", "soon"], "--ttl"),
        (["token", "--name", "a"], "--call"),
        (["token", "--call", "c"], "--name"),
        (["token", "--call", "c", "--name", "a", "--sub", "has space"], "sub"),
    ],
)
def test_token_bad_arguments_exit_2(argv, needle, data, capsys):
    code, out, err = run([*argv, "--data-dir", str(data)], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, needle)


# -- help ------------------------------------------------------------------------------------


def test_serve_help_documents_every_setting(capsys):
    code, out, _ = run(["serve", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    for option in ["--config", "--data-dir", "--listen", "--port", "--media-host", "--media-port",
                   "--ice-host", "--tls-cert", "--tls-key", "--plain-ws", "--demo",
                   "--max-participants", "--max-calls", "--joins-per-second", "--shutdown-grace",
                   "--log-level"]:
        assert option in out, option
    for spec in setting_specs():
        assert spec.flag in out and spec.env in flat and f"TOML key: {spec.name}" in flat
        assert spec.doc.split()[0] in flat
    assert "lowest precedence first" in flat


def test_token_help_documents_every_option(capsys):
    code, out, _ = run(["token", "--help"], capsys)
    assert code == 0
    for option in ["--call", "--name", "--sub", "--ttl", "--no-voice", "--no-screen", "--data-dir", "--config"]:
        assert option in out, option
    flat = " ".join(out.split())
    assert "publish_voice" in flat and "publish_screen" in flat and "stdout" in flat


def test_top_level_help_lists_commands(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "serve" in out and "token" in out


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run([], capsys)
    assert code == 2 and "a command is required" in err


def test_registry():
    assert list(cli.COMMANDS)[:2] == ["serve", "token"]
    with pytest.raises(ValueError, match="already registered"):
        cli.register(cli.COMMANDS["token"])


# -- serve -----------------------------------------------------------------------------------


def test_serve_prepares_state_and_runs_the_app(data, fake_app, capsys):
    code, out, err = run(["serve", "--data-dir", str(data), "--port", "0", "--media-port", "0",
                          "--max-participants", "3", "--log-level", "warning"], capsys)
    assert code == 0, err
    (config,) = fake_app.calls
    assert isinstance(config, Config)
    assert (config.port, config.media_port, config.max_participants_per_call) == (0, 0, 3)
    datadir = DataDir(data)
    assert (config.tls_cert, config.tls_key) == datadir.tls_paths()
    assert check_certificate(config.tls_cert, config.tls_key).key_bits == 2048
    assert (data / "api_secret").exists() and (data / "admin_key.sha256").exists()
    assert "DEMO" not in err and out == ""


def test_serve_flags_override_only_what_was_given(data, fake_app, capsys, monkeypatch):
    monkeypatch.setenv("CALLSGW_MAX_CALLS", "7")
    monkeypatch.setenv("CALLSGW_PORT", "9000")
    code, _, err = run(["serve", "--data-dir", str(data), "--port", "9001"], capsys)
    assert code == 0, err
    (config,) = fake_app.calls
    assert config.port == 9001 and config.max_calls == 7 and config.media_port == 8443


def test_serve_demo_warns_loudly_and_binds_loopback(data, fake_app, capsys):
    code, _, err = run(["serve", "--data-dir", str(data), "--demo"], capsys)
    assert code == 0
    assert fake_app.calls[0].listen_host == "127.0.0.1" and fake_app.calls[0].demo
    warning = [line for line in err.splitlines() if "DEMO MODE" in line]
    assert len(warning) == 1 and "WARNING" in warning[0] and "loopback" in warning[0]
    fake_app.calls.clear()
    code, _, err = run(["serve", "--data-dir", str(data), "--demo", "--listen", "0.0.0.0"], capsys)
    assert code == 0 and fake_app.calls[0].listen_host == "0.0.0.0"
    assert "REACHABLE FROM THE NETWORK" in err


def test_serve_plain_ws_makes_no_certificate(data, fake_app, capsys):
    code, _, err = run(["serve", "--data-dir", str(data), "--plain-ws"], capsys)
    assert code == 0, err
    (config,) = fake_app.calls
    assert config.plain_ws and config.tls_cert is None and config.listen_host == "127.0.0.1"
    assert not DataDir(data).tls_paths()[0].exists()
    assert "without TLS" in err


def test_serve_refuses_a_weak_operator_certificate(data, tmp_path, fake_app, capsys):
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "weak.crt", tmp_path / "weak.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    code, out, err = run(["serve", "--data-dir", str(data), "--tls-cert", str(cert_path),
                          "--tls-key", str(key_path)], capsys)
    assert code == 2 and fake_app.calls == []
    assert_one_line_error(err, "RSA-1024", "at least RSA-2048")


@pytest.mark.parametrize(
    "argv,env,needles",
    [
        (["--port", "70000"], {}, ["port", "flag --port", "0 to 65535"]),
        (["--media-port", "x"], {}, ["media_port", "flag --media-port"]),
        ([], {"CALLSGW_MEDIA_PORT": "-1"}, ["media_port", "CALLSGW_MEDIA_PORT"]),
        (["--dtls-ciphers", "AES128-SHA"], {}, ["dtls_ciphers", "not allowed"]),
        (["--tls-cert", "/nonexistent.pem"], {}, ["needs tls_key"]),
        (["--ice-host", "example.com"], {}, ["ice_host", "IP address"]),
        (["--config", "/nonexistent/callsgw.toml"], {}, ["does not exist"]),
    ],
)
def test_serve_bad_config_exits_2_with_one_line(data, fake_app, capsys, monkeypatch, argv, env, needles):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(["serve", "--data-dir", str(data), *argv], capsys)
    assert code == 2 and fake_app.calls == [] and out == ""
    assert_one_line_error(err, *needles)


def test_serve_unknown_flag_exits_2(capsys):
    code, _, err = run(["serve", "--colour", "blue"], capsys)
    assert code == 2 and "unrecognized arguments: --colour" in err


def test_serve_refuses_a_data_dir_it_cannot_use(tmp_path, fake_app, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["serve", "--data-dir", str(blocker)], capsys)
    assert code == 2 and fake_app.calls == []
    assert_one_line_error(err, "not a directory")


def test_serve_reports_a_socket_error_in_one_line(data, fake_app, capsys):
    fake_app.error = OSError(98, "Address already in use")
    code, _, err = run(["serve", "--data-dir", str(data)], capsys)
    assert code == 1
    assert_one_line_error(err, "Address already in use")



# -- token lifetime, join links, revocation, API secret rotation ----------------------------


def test_token_link_puts_everything_in_the_fragment(data, capsys):
    from urllib.parse import parse_qs, urlsplit

    code, out, err = run(["token", "--data-dir", str(data), "--call", "standup", "--name", "Zoë A",
                          "--link", "https://gw.example:8443/"], capsys)
    assert code == 0, err
    link = urlsplit(out.strip())
    assert (link.scheme, link.netloc, link.path, link.query) == ("https", "gw.example:8443", "/", "")
    fragment = parse_qs(link.fragment)
    assert fragment["call"] == ["standup"] and fragment["name"] == ["Zoë A"]
    assert verify(DataDir(data).api_secret(), fragment["token"][0]).call == "standup"


@pytest.mark.parametrize("url", ["gw.example:8443", "ftp://gw/", "https://gw/#x"])
def test_token_link_refuses_unusable_urls(data, capsys, url):
    code, out, err = run(["token", "--data-dir", str(data), "--call", "c", "--name", "n", "--link", url], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, "--link")


def test_token_refuses_a_lifetime_above_max_token_ttl(data, capsys):
    code, out, err = run(["token", "--data-dir", str(data), "--call", "c", "--name", "n", "--ttl", "90000"], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, "max_token_ttl")
    code, out, err = run(["token", "--data-dir", str(data), "--call", "c", "--name", "n", "--ttl", "86400"], capsys)
    assert code == 0 and out.count(".") == 2


def test_token_needs_call_and_name(data, capsys):
    code, out, err = run(["token", "--data-dir", str(data), "--name", "n"], capsys)
    assert code == 2
    assert_one_line_error(err, "--call")


def test_token_revoke_by_token_and_by_jti_fills_the_deny_list(data, capsys):
    from callsgw.security.db import open_store

    code, token, _ = run(["token", "--data-dir", str(data), "--call", "c", "--name", "n", "--ttl", "600"], capsys)
    claims = verify(DataDir(data).api_secret(), token.strip())
    assert run(["token", "revoke", "--data-dir", str(data), token.strip()], capsys)[0] == 0
    assert run(["token", "revoke", "--data-dir", str(data), "other-jti"], capsys)[0] == 0
    with open_store(None, data) as store:
        denied = store.revoked()
    assert denied[claims.jti] == claims.exp
    assert "other-jti" in denied
    code, _, err = run(["token", "revoke", "--data-dir", str(data), "not.a.token"], capsys)
    assert code == 2
    assert_one_line_error(err, "cannot be revoked")


def test_api_secret_rotate_keeps_old_tokens_for_the_grace(data, capsys):
    from callsgw.apisecrets import ApiSecrets

    code, token, _ = run(["token", "--data-dir", str(data), "--call", "c", "--name", "n"], capsys)
    old = DataDir(data).api_secret()
    code, out, err = run(["api-secret", "rotate", "--data-dir", str(data), "--grace", "120"], capsys)
    assert code == 0 and "120" in err
    keys = ApiSecrets(DataDir(data))
    assert keys.current() != old
    import time

    assert verify(keys.verification_keys(time.time()), token.strip()).call == "c"
    code, out, err = run(["api-secret", "rotate", "--data-dir", str(data), "--grace", "0"], capsys)
    assert code == 0 and ApiSecrets(DataDir(data)).verification_keys(time.time()) == (ApiSecrets(DataDir(data)).current(),)
    code, out, err = run(["api-secret", "rotate", "--data-dir", str(data), "--grace", "-1"], capsys)
    assert code == 2
    assert_one_line_error(err, "--grace")

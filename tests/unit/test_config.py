"""Settings (callsgw.config) and the data directory that holds the secrets (callsgw.datadir)."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from callsgw.config import (
    DEFAULT_SRTP_PROFILE_NAMES,
    Config,
    ConfigError,
    default_data_dir,
    load_config,
    setting_specs,
)
from callsgw.datadir import API_SECRET_BYTES, DataDir, DataDirError
from callsgw.dtls.profiles import MANDATED_CIPHERS, DtlsPolicy
from callsgw.srtp import Profile


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home) -> dict[str, str]:
    """A clean environment: no CALLSGW_* variables, HOME in the test's directory."""
    return {"HOME": str(home), "CALLSGW_VENV": "/irrelevant", "PATH": "/usr/bin"}


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- defaults -------------------------------------------------------------------------


def test_defaults(env, home):
    config = load_config({}, env)
    assert config.data_dir == home / ".local" / "share" / "callsgw"
    assert (config.listen_host, config.port) == ("0.0.0.0", 8443)
    assert (config.media_host, config.media_port) == ("0.0.0.0", 8443)
    assert config.ice_host is None and config.tls_cert is None and config.tls_key is None
    assert config.plain_ws is False and config.demo is False
    assert config.max_participants_per_call == 50
    assert config.max_calls == 1000
    assert config.joins_per_second_per_address == 5.0
    assert config.max_message_size == 65536
    assert config.join_timeout == 10.0
    assert config.messages_per_second == 50.0
    assert config.max_connections == 2000
    assert config.dtls_ciphers == MANDATED_CIPHERS
    assert config.srtp_profiles == ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")
    assert config.shutdown_grace == 10.0 and config.log_level == "info"
    assert config.token_ttl == 3600.0
    assert config.tls_enabled and not config.listen_is_loopback
    assert config.dtls_policy() == DtlsPolicy()


def test_default_data_dir_follows_xdg(tmp_path):
    assert default_data_dir({"XDG_DATA_HOME": str(tmp_path), "HOME": "/nowhere"}) == tmp_path / "callsgw"
    # a relative XDG_DATA_HOME is invalid per the XDG spec and ignored
    assert default_data_dir({"XDG_DATA_HOME": "rel", "HOME": "/h"}) == Path("/h/.local/share/callsgw")


def test_config_is_frozen_and_validated_on_construction():
    config = Config(port=0, media_port=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(ConfigError, match="port"):
        Config(port=70000)
    with pytest.raises(ConfigError, match="max_calls"):
        Config(max_calls=0)
    with pytest.raises(ConfigError, match="media_engine"):
        Config(media_engine="rust")
    assert Config().media_engine == "native-thread" and Config(media_engine="Python").media_engine == "python"


def test_every_setting_is_documented_with_flag_and_env():
    specs = setting_specs()
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(Config)]
    for spec in specs:
        assert len(spec.doc) > 20 and spec.flag.startswith("--") and spec.env == "CALLSGW_" + spec.name.upper()
    flags = {s.name: s.flag for s in specs}
    assert flags["listen_host"] == "--listen"
    assert flags["max_participants_per_call"] == "--max-participants"
    assert flags["joins_per_second_per_address"] == "--joins-per-second"


# -- precedence -----------------------------------------------------------------------


def test_precedence_defaults_toml_env_flags(env, tmp_path):
    toml = write_toml(
        tmp_path / "gw.toml",
        "port = 1001\nmedia_port = 2001\nmax_calls = 3001\nlog_level = 'debug'\n",
    )
    env.update(CALLSGW_MEDIA_PORT="2002", CALLSGW_MAX_CALLS="3002")
    config = load_config({"max_calls": "3003"}, env, toml)
    assert config.port == 1001  # TOML beats the default
    assert config.media_port == 2002  # environment beats TOML
    assert config.max_calls == 3003  # flag beats environment
    assert config.log_level == "debug"
    assert config.max_connections == 2000  # untouched default


def test_flags_given_as_none_do_not_override(env):
    env["CALLSGW_PORT"] = "1234"
    assert load_config({"port": None, "demo": None}, env).port == 1234


def test_typed_flag_values_are_accepted(env):
    config = load_config({"port": 0, "demo": True, "join_timeout": 2}, env)
    assert (config.port, config.demo, config.join_timeout) == (0, True, 2.0)


def test_config_file_from_env_and_flag(env, tmp_path):
    from_env = write_toml(tmp_path / "env.toml", "port = 1111\n")
    from_flag = write_toml(tmp_path / "flag.toml", "port = 2222\n")
    env["CALLSGW_CONFIG"] = str(from_env)
    assert load_config({}, env).port == 1111
    assert load_config({}, env, from_flag).port == 2222


def test_config_file_found_in_data_dir(env, tmp_path):
    data = tmp_path / "data"
    write_toml(data / "callsgw.toml", "max_participants_per_call = 7\n")
    assert load_config({"data_dir": str(data)}, env).max_participants_per_call == 7
    env["CALLSGW_DATA_DIR"] = str(data)
    assert load_config({}, env).max_participants_per_call == 7
    # no file there: plain defaults, no error
    assert load_config({"data_dir": str(tmp_path / "empty")}, env).max_participants_per_call == 50


def test_relative_paths_in_toml_are_relative_to_the_file(env, tmp_path):
    toml = write_toml(tmp_path / "etc" / "gw.toml", "tls_cert = 'c.pem'\ntls_key = 'k.pem'\ndata_dir = 'state'\n")
    config = load_config({}, env, toml)
    assert config.tls_cert == tmp_path / "etc" / "c.pem"
    assert config.tls_key == tmp_path / "etc" / "k.pem"
    assert config.data_dir == tmp_path / "etc" / "state"


def test_env_parsing(env):
    env.update(
        CALLSGW_DEMO="yes",
        CALLSGW_PLAIN_WS="0",
        CALLSGW_ICE_HOST="203.0.113.7",
        CALLSGW_JOINS_PER_SECOND_PER_ADDRESS="250.5",
        CALLSGW_DTLS_CIPHERS=" ECDHE-ECDSA-AES128-GCM-SHA256 , ",
        CALLSGW_LOG_LEVEL="WARNING",
        CALLSGW_TOKEN_TTL="60",
    )
    config = load_config({}, env)
    assert config.demo is True and config.plain_ws is False
    assert config.ice_host == "203.0.113.7"
    assert config.joins_per_second_per_address == 250.5
    assert config.dtls_ciphers == ("ECDHE-ECDSA-AES128-GCM-SHA256",)
    assert config.log_level == "warning" and config.token_ttl == 60.0


@pytest.mark.parametrize("text,value", [("1", True), ("true", True), ("Yes", True), ("on", True),
                                        ("0", False), ("FALSE", False), ("no", False), ("off", False)])
def test_env_booleans(env, text, value):
    env["CALLSGW_PLAIN_WS"] = text
    assert load_config({}, env).plain_ws is value


def test_empty_env_variables_count_as_unset(env, tmp_path):
    toml = write_toml(tmp_path / "gw.toml", "ice_host = '198.51.100.1'\nport = 4444\n")
    env.update(CALLSGW_ICE_HOST="", CALLSGW_PORT="  ", CALLSGW_CONFIG=str(toml))
    config = load_config({}, env)
    assert config.ice_host == "198.51.100.1" and config.port == 4444


# -- errors -----------------------------------------------------------------------------


def expect_error(match: str, *, setting=None, source=None, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError, match=match) as info:
        load_config(**kwargs)
    if setting is not None:
        assert info.value.setting == setting
    if source is not None:
        assert source in str(info.value)
    return info.value


def test_unknown_toml_key(env, tmp_path):
    toml = write_toml(tmp_path / "gw.toml", "port = 1\nmax_participant = 3\n")
    err = expect_error("unknown setting 'max_participant'", env=env, config_file=toml)
    assert str(toml) in str(err) and "max_participants_per_call" in str(err)


@pytest.mark.parametrize(
    "line,setting",
    [
        ("port = '8443'", "port"),
        ("demo = 'yes'", "demo"),
        ("max_calls = 1.5", "max_calls"),
        ("join_timeout = true", "join_timeout"),
        ("dtls_ciphers = 'ECDHE-ECDSA-AES256-SHA'", "dtls_ciphers"),
        ("listen_host = 5", "listen_host"),
        ("log_level = 'verbose'", "log_level"),
        ("ice_host = 'not-an-ip'", "ice_host"),
        ("ice_host = '0.0.0.0'", "ice_host"),
        ("max_message_size = 10", "max_message_size"),
        ("messages_per_second = 0", "messages_per_second"),
        ("shutdown_grace = -1", "shutdown_grace"),
    ],
)
def test_bad_types_and_values_in_toml(env, tmp_path, line, setting):
    toml = write_toml(tmp_path / "gw.toml", line + "\n")
    expect_error(setting, setting=setting, source=f"config file {toml}", env=env, config_file=toml)


def test_bad_values_in_env_name_the_variable(env):
    for var, value, setting in [
        ("CALLSGW_MEDIA_PORT", "udp", "media_port"),
        ("CALLSGW_DEMO", "maybe", "demo"),
        ("CALLSGW_JOIN_TIMEOUT", "nan", "join_timeout"),
        ("CALLSGW_MAX_CONNECTIONS", "-5", "max_connections"),
        ("CALLSGW_LISTEN_HOST", "bad host!", "listen_host"),
    ]:
        expect_error(setting, setting=setting, source=f"environment variable {var}", env={**env, var: value})


@pytest.mark.parametrize("value", [-1, 65536, 70000])
def test_out_of_range_ports(env, tmp_path, value):
    toml = write_toml(tmp_path / "gw.toml", f"media_port = {value}\n")
    expect_error("0 to 65535", setting="media_port", source="config file", env=env, config_file=toml)
    expect_error("0 to 65535", setting="port", source="environment variable CALLSGW_PORT",
                 env={**env, "CALLSGW_PORT": str(value)})
    expect_error("0 to 65535", setting="port", source="flag --port", args={"port": str(value)}, env=env)


def test_port_zero_means_any_free_port(env):
    config = load_config({"port": "0", "media_port": "0"}, env)
    assert (config.port, config.media_port) == (0, 0)


def test_broken_and_missing_config_files(env, tmp_path):
    broken = write_toml(tmp_path / "broken.toml", "port = = 3\n")
    expect_error("not valid TOML", source=str(broken), env=env, config_file=broken)
    expect_error("does not exist", env=env, config_file=tmp_path / "missing.toml")
    expect_error("does not exist", source="CALLSGW_CONFIG", env={**env, "CALLSGW_CONFIG": str(tmp_path / "nope.toml")})
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"port = 1\n\xff\xfe\n")
    expect_error("UTF-8", env=env, config_file=binary)


def test_data_dir_cannot_be_set_from_inside_the_data_dir(env, tmp_path):
    data = tmp_path / "data"
    write_toml(data / "callsgw.toml", f"data_dir = '{tmp_path / 'other'}'\n")
    expect_error("data directory itself", setting="data_dir", args={"data_dir": str(data)}, env=env)


def test_unknown_flag_setting(env):
    expect_error("unknown setting 'colour'", args={"colour": "blue"}, env=env)


def test_unknown_callsgw_env_variables_are_ignored(env):
    env["CALLSGW_SOMETHING_ELSE"] = "x"
    assert load_config({}, env).port == 8443


# -- DTLS lists ------------------------------------------------------------------------


def test_dtls_narrowing_is_allowed(env, tmp_path):
    toml = write_toml(
        tmp_path / "gw.toml",
        "dtls_ciphers = ['TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256']\n"
        "srtp_profiles = ['SRTP_AEAD_AES_128_GCM']\n",
    )
    config = load_config({}, env, toml)
    assert config.dtls_ciphers == ("ECDHE-ECDSA-AES128-GCM-SHA256",)  # IANA name normalised
    assert config.srtp_profiles == ("SRTP_AEAD_AES_128_GCM",)
    policy = config.dtls_policy()
    assert policy.ciphers == ("ECDHE-ECDSA-AES128-GCM-SHA256",)
    assert policy.srtp_profiles == (Profile.AEAD_AES_128_GCM,)
    # reordering is narrowing too
    config = load_config({"srtp_profiles": "SRTP_AES128_CM_SHA1_80,SRTP_AEAD_AES_128_GCM"}, env)
    assert config.dtls_policy().srtp_profiles == (Profile.AES128_CM_HMAC_SHA1_80, Profile.AEAD_AES_128_GCM)
    assert Config(srtp_profiles=(Profile.AES128_CM_HMAC_SHA1_80,)).srtp_profiles == ("SRTP_AES128_CM_SHA1_80",)


@pytest.mark.parametrize(
    "setting,value",
    [
        ("dtls_ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256,ECDHE-RSA-AES128-GCM-SHA256"),
        ("dtls_ciphers", "AES256-SHA"),
        ("dtls_ciphers", ""),
        ("dtls_ciphers", "ECDHE-ECDSA-AES256-SHA,ECDHE-ECDSA-AES256-SHA"),
        ("srtp_profiles", "SRTP_AEAD_AES_256_GCM"),
        ("srtp_profiles", "SRTP_AES128_CM_SHA1_32,SRTP_AEAD_AES_128_GCM"),
    ],
)
def test_dtls_widening_is_refused(env, setting, value):
    err = expect_error("allowed|at least one|twice", setting=setting, args={setting: value}, env=env)
    assert "flag --" in str(err)
    expect_error("allowed|at least one|twice", setting=setting,
                 source="environment variable CALLSGW_" + setting.upper(),
                 env={**env, "CALLSGW_" + setting.upper(): value or ","})


def test_default_srtp_names_match_the_mandate():
    assert DEFAULT_SRTP_PROFILE_NAMES == ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")


# -- loopback rules and TLS combinations -------------------------------------------------


@pytest.mark.parametrize("mode", ["plain_ws", "demo"])
def test_plain_ws_and_demo_default_to_loopback(env, tmp_path, mode):
    config = load_config({mode: True}, env)
    assert config.listen_host == "127.0.0.1" and config.listen_is_loopback
    config = load_config({}, {**env, "CALLSGW_" + mode.upper(): "1"})
    assert config.listen_host == "127.0.0.1"
    toml = write_toml(tmp_path / "gw.toml", f"{mode} = true\n")
    assert load_config({}, env, toml).listen_host == "127.0.0.1"
    # the media socket is not affected
    assert config.media_host == "0.0.0.0"


@pytest.mark.parametrize("mode", ["plain_ws", "demo"])
def test_explicit_listen_host_is_kept(env, tmp_path, mode):
    assert load_config({mode: True, "listen_host": "0.0.0.0"}, env).listen_host == "0.0.0.0"
    assert load_config({mode: True}, {**env, "CALLSGW_LISTEN_HOST": "::"}).listen_host == "::"
    toml = write_toml(tmp_path / "gw.toml", "listen_host = '192.0.2.10'\n")
    config = load_config({mode: "true"}, env, toml)
    assert config.listen_host == "192.0.2.10" and not config.listen_is_loopback


def test_without_plain_ws_or_demo_listen_stays_public(env):
    assert load_config({"plain_ws": False, "demo": False}, env).listen_host == "0.0.0.0"


def test_plain_ws_excludes_operator_certificate(env, tmp_path):
    err = expect_error("cannot use tls_cert", setting="plain_ws", source="flag --plain-ws",
                       args={"plain_ws": True, "tls_cert": str(tmp_path / "c"), "tls_key": str(tmp_path / "k")},
                       env=env)
    assert "tls_cert from flag --tls-cert" in str(err)


def test_certificate_needs_its_key(env, tmp_path):
    expect_error("needs tls_key", setting="tls_cert", source="environment variable CALLSGW_TLS_CERT",
                 env={**env, "CALLSGW_TLS_CERT": str(tmp_path / "c.pem")})
    expect_error("needs tls_cert", setting="tls_key", source="flag --tls-key",
                 args={"tls_key": str(tmp_path / "k.pem")}, env=env)
    with pytest.raises(ConfigError, match="needs tls_key"):
        Config(tls_cert=tmp_path / "c.pem")


def test_as_dict_is_plain_data(env):
    data = load_config({}, env).as_dict()
    assert data["port"] == 8443 and isinstance(data["data_dir"], str)
    assert data["dtls_ciphers"] == list(MANDATED_CIPHERS)


# == the data directory ==================================================================


def test_data_dir_is_created_private(tmp_path):
    old = os.umask(0)
    try:
        datadir = DataDir(tmp_path / "a" / "b")
        assert mode_of(datadir.path) == 0o700
        datadir.api_secret()
        datadir.admin_key()
    finally:
        os.umask(old)
    # stderr is not a terminal under pytest: the new admin key was handed over in admin_key.new
    for name in ("api_secret", "admin_key.sha256", "admin_key.new"):
        assert mode_of(datadir.path / name) == 0o600
    assert sorted(os.listdir(datadir.path)) == ["admin_key.new", "admin_key.sha256", "api_secret"]  # no temp files


def test_open_data_dir_is_tightened(tmp_path, caplog):
    path = tmp_path / "open"
    path.mkdir()
    path.chmod(0o755)
    with caplog.at_level(logging.WARNING):
        DataDir(path)
    assert mode_of(path) == 0o700
    assert "tightened" in caplog.text


def test_data_dir_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a directory owned by another user needs root")
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, 12345, 12345)
    with pytest.raises(DataDirError, match="owned by uid 12345"):
        DataDir(path)


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DataDirError, match="not a directory"):
        DataDir(path)


def test_secrets_are_stable_across_instances(tmp_path):
    first = DataDir(tmp_path / "d")
    secret, key = first.api_secret(), first.admin_key()
    assert isinstance(secret, bytes) and len(secret) == API_SECRET_BYTES
    assert isinstance(key, str) and len(key) >= 43 and key.replace("-", "").replace("_", "").isalnum()
    second = DataDir(tmp_path / "d")
    # the admin key is stored hashed: a later instance checks it but cannot show it
    assert second.api_secret() == secret and second.admin_key() is None
    assert second.check_admin_key(key) and not second.check_admin_key(key + "x")
    assert DataDir(tmp_path / "other").api_secret() != secret


def test_concurrent_first_use_agrees_on_one_secret(tmp_path):
    path = tmp_path / "race"
    DataDir(path)
    barrier = threading.Barrier(8)
    results: list[bytes] = []

    def worker():
        datadir = DataDir(path)
        barrier.wait()
        results.append(datadir.api_secret())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert (path / "api_secret").read_bytes() == results[0]
    assert os.listdir(path) == ["api_secret"]


def test_existing_file_wins_over_a_late_writer(tmp_path):
    datadir = DataDir(tmp_path / "d")
    datadir.write_private_file("thing", b"first")
    with pytest.raises(FileExistsError):
        datadir.write_private_file("thing", b"second")
    assert (datadir.path / "thing").read_bytes() == b"first"
    datadir.write_private_file("thing", b"third", replace=True)
    assert (datadir.path / "thing").read_bytes() == b"third"
    assert sorted(os.listdir(datadir.path)) == ["thing"]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    datadir = DataDir(tmp_path / "d")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(DataDirError, match="No space left"):
        datadir.api_secret()
    monkeypatch.undo()
    assert os.listdir(datadir.path) == []
    assert len(datadir.api_secret()) == API_SECRET_BYTES


def test_files_are_created_exclusively_with_mode_0600(tmp_path, monkeypatch):
    datadir = DataDir(tmp_path / "d")
    calls = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        calls.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    datadir.api_secret()
    creates = [c for c in calls if c[1] & os.O_CREAT]
    assert creates, calls
    for path, flags, mode in creates:
        assert flags & os.O_EXCL and mode == 0o600
        assert Path(path).name != "api_secret"  # written to a temporary name, then linked


def test_corrupt_secret_is_refused_not_replaced(tmp_path):
    datadir = DataDir(tmp_path / "d")
    (datadir.path / "api_secret").write_bytes(b"short")
    (datadir.path / "api_secret").chmod(0o600)
    with pytest.raises(DataDirError, match="corrupt"):
        datadir.api_secret()
    assert (datadir.path / "api_secret").read_bytes() == b"short"


def test_readable_secret_is_tightened(tmp_path, caplog):
    datadir = DataDir(tmp_path / "d")
    secret = datadir.api_secret()
    (datadir.path / "api_secret").chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert DataDir(datadir.path).api_secret() == secret
    assert mode_of(datadir.path / "api_secret") == 0o600
    assert "tightened" in caplog.text


def test_symlinked_secret_is_refused(tmp_path):
    datadir = DataDir(tmp_path / "d")
    target = tmp_path / "elsewhere"
    target.write_bytes(os.urandom(32))
    (datadir.path / "api_secret").symlink_to(target)
    with pytest.raises(DataDirError, match="symbolic link"):
        datadir.api_secret()


def test_secret_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    datadir = DataDir(tmp_path / "d")
    datadir.api_secret()
    os.chown(datadir.path / "api_secret", 12345, 12345)
    with pytest.raises(DataDirError, match="owned by uid 12345"):
        DataDir(datadir.path).api_secret()


def test_secrets_never_logged_or_shown(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG):
        datadir = DataDir(tmp_path / "d")
        secret, key = datadir.api_secret(), datadir.admin_key()
    assert "api_secret" in caplog.text  # the creation is logged, by name only
    for text in (caplog.text, repr(datadir)):
        assert key not in text and secret.hex() not in text and repr(secret) not in text


def test_tls_paths_are_in_the_data_dir(tmp_path):
    datadir = DataDir(tmp_path / "d")
    cert, key = datadir.tls_paths()
    assert cert.parent == datadir.path == key.parent and cert != key

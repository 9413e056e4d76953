"""The gateway's settings: one frozen :class:`Config`, loaded from four layers.

Every setting is a field of :class:`Config`, documented by its field metadata;
``callsgw serve --help`` is generated from those documents, so the two cannot
drift apart. :func:`load_config` merges, lowest precedence first:

1. the defaults below;
2. a TOML file (:mod:`tomllib`, TOML 1.0): ``--config PATH``, else
   ``$CALLSGW_CONFIG``, else ``<data_dir>/callsgw.toml`` if that exists. Keys
   are the field names (``media_port = 8443``); relative paths in the file are
   relative to the file's directory;
3. environment variables ``CALLSGW_<FIELD>`` (``CALLSGW_MEDIA_PORT=8443``).
   Booleans are ``1/0/true/false/yes/no/on/off``, lists are comma-separated,
   and an empty variable counts as unset (so ``${VAR:-}`` in a compose file
   leaves the default alone);
4. command-line flags (``--media-port 8443``).

Any bad value is a :class:`ConfigError` naming the setting and where the value
came from, raised before anything starts.

Loopback rules: ``plain_ws`` (TLS terminated by a proxy) and ``demo`` (the page
may mint tokens for itself) both move the default ``listen_host`` to
``127.0.0.1``; an address given explicitly in any layer is kept.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from callsgw.dtls.profiles import MANDATED_CIPHERS, MANDATED_SRTP_PROFILES, DtlsPolicy

ENV_PREFIX = "CALLSGW_"
"""Prefix of the environment variable of every setting: ``CALLSGW_<FIELD>``."""

CONFIG_ENV = "CALLSGW_CONFIG"
"""Environment variable naming the TOML config file."""

CONFIG_FILE_NAME = "callsgw.toml"
"""The config file looked for in the data directory when none is named."""

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MEDIA_ENGINES = ("native", "native-thread", "python")
LOOPBACK_HOST = "127.0.0.1"

DEFAULT_SRTP_PROFILE_NAMES: tuple[str, ...] = tuple(p.dtls_name for p in MANDATED_SRTP_PROFILES)
"""The mandated SRTP protection profiles by their OpenSSL names, preferred first."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ConfigError(ValueError):
    """A setting has a bad value, or settings contradict each other.

    ``setting`` is the field name (or ``None`` for file-level problems) and
    ``source`` says where the value came from (``"config file /etc/x.toml"``,
    ``"environment variable CALLSGW_PORT"``, ``"flag --port"``, ``"default"``).
    """

    def __init__(self, message: str, *, setting: str | None = None, source: str | None = None):
        self.setting = setting
        self.source = source
        self.problem = message
        where = f" ({source})" if source else ""
        prefix = f"invalid setting {setting}{where}: " if setting else (f"{source}: " if source else "")
        super().__init__(prefix + message)


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/callsgw``, or ``~/.local/share/callsgw`` (XDG Base
    Directory Specification 0.8: a relative ``XDG_DATA_HOME`` is ignored)."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "callsgw"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share" / "callsgw"


def _setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    kind: str,
    metavar: str,
    flag: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    default_text: str | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    metadata = {
        "doc": doc,
        "kind": kind,
        "metavar": metavar,
        "flag": flag,
        "minimum": minimum,
        "maximum": maximum,
        "positive": positive,
        "default_text": default_text,
    }
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata, repr=kind != "secret?")  # a secret stays out of repr


@dataclass(frozen=True)
class Config:
    """Every setting of the gateway, validated on construction.

    Build one with :func:`load_config` (all four layers) or directly with
    keyword arguments (tests). Values are normalised: paths are
    :class:`~pathlib.Path`, the log level is lower case, DTLS names are the
    OpenSSL names. An invalid value raises :class:`ConfigError`.
    """

    data_dir: Path = _setting(
        default_factory=lambda: default_data_dir(),
        doc="Directory holding the gateway's state: the default TLS certificate, the API "
        "secret that signs tokens and the admin key, each made on first use with private "
        "permissions (directory 0700, files 0600). serve, token and the other commands "
        "find them through this setting.",
        kind="path",
        metavar="DIR",
        default_text="$XDG_DATA_HOME/callsgw or ~/.local/share/callsgw",
    )
    listen_host: str = _setting(
        "0.0.0.0",
        doc="Address the TCP listener binds: the HTTPS page, WSS signaling at /ws and the "
        "admin API under /api/, all on one port. With plain_ws or demo the default is "
        "127.0.0.1; an address given explicitly is kept.",
        kind="host",
        metavar="HOST",
        flag="--listen",
    )
    port: int = _setting(
        8443,
        doc="TCP port of the HTTPS page, WSS signaling and admin API (0: any free port).",
        kind="port",
        metavar="N",
    )
    media_host: str = _setting(
        "0.0.0.0",
        doc="Address the UDP media socket binds (ICE, DTLS and SRTP share it, RFC 7983).",
        kind="host",
        metavar="HOST",
    )
    media_port: int = _setting(
        8443,
        doc="UDP port for all media (0: any free port).",
        kind="port",
        metavar="N",
    )
    ice_host: str | None = _setting(
        None,
        doc="ICE host override: the public IP address announced in ICE candidates "
        "(RFC 8445 section 5.1.1.1) when the gateway is behind NAT or in a container. "
        "Also external/internal pairs (announce the external address where the host has the "
        "internal one) and several comma-separated entries (callsgw/ice/hosts.py). "
        "Unset: the media socket's own addresses.",
        kind="ip",
        metavar="IP[/INTERNAL],...",
        default_text="unset",
    )
    ice_port_override: int = _setting(
        0,
        doc="Port announced in the UDP and ICE-TCP candidates instead of the bound ones, for a "
        "Kubernetes NodePort or a port-mapping NAT in front of the gateway (0: the bound ports).",
        kind="port",
        metavar="N",
    )
    ice_tcp: bool = _setting(
        True,
        doc="Accept ICE-TCP (RFC 6544, passive; RFC 4571 framing) for participants whose network "
        "blocks UDP: answers carry a tcptype passive candidate next to the UDP one, and the TCP "
        "port tells ICE-TCP from TLS by its first bytes (or ice_tcp_port gives it a port of its own).",
        kind="bool",
        metavar="BOOL",
    )
    ice_tcp_port: int = _setting(
        -1,
        doc="TCP port for ICE-TCP: -1 shares the HTTPS/WSS port (one TCP port carries everything), "
        "0 any free port, N a port of its own.",
        kind="int",
        metavar="N",
        minimum=-1,
        maximum=65535,
    )
    ice_tcp_per_address: int = _setting(
        16,
        doc="ICE-TCP connections one source IP address may hold at once; more are closed at once.",
        kind="int",
        metavar="N",
        minimum=1,
        maximum=100_000,
    )
    ice_tcp_timeout: float = _setting(
        10.0,
        doc="Seconds an ICE-TCP connection has to pass an ICE connectivity check before it is closed "
        "(and to send its first bytes, on any connection to the shared port).",
        kind="float",
        metavar="S",
        positive=True,
    )
    turn_url: tuple[str, ...] = _setting(
        (),
        doc="TURN servers handed to clients in joined.turn (turn:HOST[:PORT][?transport=udp|tcp] or "
        "turns:, comma-separated, RFC 7065), with credentials made from turn_secret. Empty: no TURN.",
        kind="turn_urls",
        metavar="URL,...",
        default_text="none",
    )
    turn_secret: str | None = _setting(
        None,
        doc="The secret shared with the TURN server (coturn use-auth-secret / static-auth-secret): "
        "each joined.turn credential is base64(HMAC-SHA1(secret, 'expiry:participant')). Needed "
        "with turn_url; at least 16 characters. Never logged or shown.",
        kind="secret?",
        metavar="SECRET",
        default_text="unset",
    )
    turn_ttl: float = _setting(
        86400.0,
        doc="Seconds a TURN credential stays good (the expiry in its username): longer than the "
        "longest call, since the TURN server checks it on every allocation refresh.",
        kind="float",
        metavar="S",
        minimum=60,
        maximum=7 * 86400,
    )
    tls_cert: Path | None = _setting(
        None,
        doc="Operator TLS certificate (PEM, leaf first, chain may follow). Needs tls_key. "
        "RSA keys under 2048 bits and EC keys below P-256 are refused at start.",
        kind="path?",
        metavar="FILE",
        default_text="a self-signed RSA-2048 certificate made in the data directory",
    )
    tls_key: Path | None = _setting(
        None,
        doc="Private key (PEM, unencrypted) of tls_cert.",
        kind="path?",
        metavar="FILE",
        default_text="the key of the default certificate",
    )
    plain_ws: bool = _setting(
        False,
        doc="Serve plain http:// and ws:// for a TLS-terminating proxy such as NGINX; the "
        "listener then binds 127.0.0.1 unless listen_host is set explicitly. Excludes "
        "tls_cert/tls_key.",
        kind="bool",
        metavar="BOOL",
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (),
        doc="Addresses and networks of TLS-terminating proxies (127.0.0.1,10.0.0.0/8): on a connection "
        "from one of them, joined.tls comes from the proxy's X-Callsgw-TLS-Version and X-Callsgw-TLS-Cipher "
        "headers (null when they are missing or malformed) and the client's address from X-Real-IP "
        "(callsgw/server/proxy.py, deploy/nginx/callsgw.conf.template). Empty: no proxy is trusted, "
        "such headers are ignored.",
        kind="networks",
        metavar="NET,...",
        default_text="none",
    )
    demo: bool = _setting(
        False,
        doc="Demo mode: the web page may fetch tokens for itself, so anybody who reaches it "
        "can join calls. Binds 127.0.0.1 unless listen_host is set explicitly.",
        kind="bool",
        metavar="BOOL",
    )
    max_participants_per_call: int = _setting(
        50,
        doc="Participants one call may hold; one more join is closed with 4004.",
        kind="int",
        metavar="N",
        flag="--max-participants",
        minimum=1,
        maximum=100_000,
    )
    max_calls: int = _setting(
        1000,
        doc="Calls the gateway holds at once; a join that would open one more is closed "
        "with 4005.",
        kind="int",
        metavar="N",
        minimum=1,
        maximum=10_000_000,
    )
    joins_per_second_per_address: float = _setting(
        5.0,
        doc="Joins per second one source address may make (close 4006 beyond). Raise it "
        "for the load tester and the auditor, which join many times from 127.0.0.1.",
        kind="float",
        metavar="X",
        flag="--joins-per-second",
        positive=True,
    )
    max_message_size: int = _setting(
        65536,
        doc="Largest signaling message in bytes (close 1009 beyond).",
        kind="int",
        metavar="BYTES",
        minimum=1024,
        maximum=16 * 1024 * 1024,
    )
    join_timeout: float = _setting(
        10.0,
        doc="Seconds a new connection has to send join (close 4007 beyond).",
        kind="float",
        metavar="S",
        positive=True,
    )
    messages_per_second: float = _setting(
        50.0,
        doc="Signaling messages per second one connection may send (error rate_limited, "
        "then close 4006).",
        kind="float",
        metavar="X",
        positive=True,
    )
    max_connections: int = _setting(
        2000,
        doc="Simultaneous signaling connections (each TLS connection costs about 256 KiB).",
        kind="int",
        metavar="N",
        minimum=1,
        maximum=10_000_000,
    )
    dtls_ciphers: tuple[str, ...] = _setting(
        MANDATED_CIPHERS,
        doc="DTLS 1.2 cipher suites, preferred first (OpenSSL or IANA names). May only "
        "narrow the mandated set: " + ", ".join(MANDATED_CIPHERS) + ".",
        kind="names",
        metavar="LIST",
        default_text=",".join(MANDATED_CIPHERS),
    )
    srtp_profiles: tuple[str, ...] = _setting(
        DEFAULT_SRTP_PROFILE_NAMES,
        doc="DTLS-SRTP protection profiles, preferred first (RFC 5764 section 4.1.2, "
        "RFC 7714 section 14.2). May only narrow the mandated set: "
        + ", ".join(DEFAULT_SRTP_PROFILE_NAMES)
        + ".",
        kind="names",
        metavar="LIST",
        default_text=",".join(DEFAULT_SRTP_PROFILE_NAMES),
    )
    shutdown_grace: float = _setting(
        10.0,
        doc="Seconds calls may drain on SIGINT/SIGTERM after joins stop and clients are "
        "told (bye, close 1001).",
        kind="float",
        metavar="S",
        minimum=0,
        maximum=86400,
    )
    media_engine: str = _setting(
        "native-thread",
        doc="Forwarding path of the media port: native-thread (the Cython engine: batched UDP "
        "I/O, decrypt, route, re-encrypt and send in one native pass per batch, on a native "
        "thread of its own that nothing in Python can stall), native (the same engine run "
        "from the event loop) or python "
        "(asyncio datagrams and per-packet SRTP; the fallback and the benchmark baseline).",
        kind="media_engine",
        metavar="PATH",
    )
    log_level: str = _setting(
        "info",
        doc="Log level: " + ", ".join(LOG_LEVELS) + ".",
        kind="log_level",
        metavar="LEVEL",
    )
    database: str | None = _setting(
        None,
        doc="Where session security records go: a postgresql:// URL (psycopg 3), or "
        "sqlite:///PATH. Unset: the SQLite file records.sqlite3 in the data directory.",
        kind="url?",
        metavar="URL",
        default_text="records.sqlite3 in the data directory",
    )
    record_retention_days: float = _setting(
        30.0,
        doc="Days a finished session's security record is kept before it is pruned.",
        kind="float",
        metavar="DAYS",
        minimum=0.001,
        maximum=36500,
    )
    token_ttl: float = _setting(
        3600.0,
        doc="Default lifetime in seconds of tokens minted by callsgw token (and by the "
        "demo page). At most max_token_ttl.",
        kind="float",
        metavar="S",
        minimum=1,
        maximum=366 * 86400,
    )
    resume_grace: float = _setting(
        30.0,
        doc="Seconds a participant whose signaling connection dropped (no close frame) stays in "
        "the call, media and all, so that its client can resume on a new connection with the "
        "credential from joined (docs/PROTOCOL.md, Resuming). 0 turns resuming off: a dropped "
        "connection leaves at once.",
        kind="float",
        metavar="S",
        minimum=0,
        maximum=600,
    )
    max_token_ttl: float = _setting(
        86400.0,
        doc="Longest token lifetime (exp - iat) the gateway accepts, in seconds: a token "
        "minted to live longer is refused at join (4001) whatever its expiry, and "
        "callsgw token refuses to mint one. Bounds the damage of a leaked token.",
        kind="float",
        metavar="S",
        minimum=60,
        maximum=366 * 86400,
    )

    whip_port: int | None = _setting(
        None,
        doc="TCP port of the WHIP (RFC 9725) and WHEP endpoints, POST /whip/{call} and POST "
        "/whep/{call}, served with the same TLS certificate (or plain HTTP with plain_ws) on "
        "listen_host. A port of its own because the signaling port's WebSocket server reads no "
        "request bodies (docs/WHIP.md). Unset: WHIP and WHEP are off (0: any free port).",
        kind="port?",
        metavar="N",
        default_text="unset (off)",
    )
    whep_audio_slots: int = _setting(
        3,
        doc="Voice m-sections a WHEP subscriber is given at most: they carry the most recent "
        "active speakers (docs/WHIP.md, the slot rule); one more carries the screen share.",
        kind="int",
        metavar="N",
        minimum=1,
        maximum=16,
    )

    cluster: str | None = _setting(
        None,
        doc="Cluster mode (issue #15): the Redis URL the nodes share (redis://HOST:6379/0; rediss:// "
        "for TLS). Needs database = postgresql://... (the shared Systems table holds the "
        "ClusterEncryptionKey and the API secret). Unset: a single node, which needs neither Redis "
        "nor PostgreSQL.",
        kind="redis?",
        metavar="URL",
        default_text="unset (a single node)",
    )
    cluster_name: str = _setting(
        "callsgw",
        doc="Name of the cluster: part of every sealed message's label and of the Redis key names, so "
        "two clusters sharing one Redis never read each other's entries. 1 to 64 characters of "
        "A-Z a-z 0-9 . _ -.",
        kind="name",
        metavar="NAME",
    )
    node_id: str | None = _setting(
        None,
        doc="This node's id in the cluster (1 to 64 characters of A-Z a-z 0-9 . _ -). Unset: a random "
        "id made on first start and kept in the data directory (file node_id), so it survives restarts.",
        kind="name?",
        metavar="ID",
        default_text="a stable id kept in the data directory",
    )
    advertise_url: str | None = _setting(
        None,
        doc="The signaling URL other nodes and operators see for this node (wss://HOST:PORT/ws). "
        "Unset: made from the listener's address and port.",
        kind="ws_url?",
        metavar="URL",
        default_text="wss://<listen address>:<port>/ws",
    )

    def __post_init__(self) -> None:
        values = {}
        for f in fields(self):
            value = _coerce(f, getattr(self, f.name), source="Config()", from_text=False)
            object.__setattr__(self, f.name, value)
            values[f.name] = value
        _check_combination(values, lambda name: "Config()")

    def dtls_policy(self) -> DtlsPolicy:
        """The :class:`~callsgw.dtls.profiles.DtlsPolicy` of these settings."""
        return DtlsPolicy(ciphers=self.dtls_ciphers, srtp_profiles=self.srtp_profiles)

    @property
    def tls_enabled(self) -> bool:
        """True unless ``plain_ws`` leaves TLS to a proxy."""
        return not self.plain_ws

    @property
    def listen_is_loopback(self) -> bool:
        """True when the TCP listener is reachable from this machine only."""
        return _is_loopback(self.listen_host)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view of every setting (paths and lists as text); holds no secret."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif f.metadata["kind"] == "secret?" and value is not None:
                value = "(set)"  # a secret is never shown
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class SettingSpec:
    """How one :class:`Config` field is documented and set from outside."""

    name: str
    doc: str
    kind: str
    metavar: str
    flag: str
    env: str
    default_text: str


def setting_specs() -> tuple[SettingSpec, ...]:
    """One :class:`SettingSpec` per :class:`Config` field, in field order."""
    specs = []
    for f in fields(Config):
        md = f.metadata
        if md["default_text"] is not None:
            default_text = md["default_text"]
        else:
            default = f.default
            if isinstance(default, bool):
                default_text = str(default).lower()
            elif isinstance(default, float):
                default_text = f"{default:g}"
            else:
                default_text = str(default)
        specs.append(
            SettingSpec(
                name=f.name,
                doc=md["doc"],
                kind=md["kind"],
                metavar=md["metavar"],
                flag=md["flag"] or "--" + f.name.replace("_", "-"),
                env=ENV_PREFIX + f.name.upper(),
                default_text=default_text,
            )
        )
    return tuple(specs)


_FIELDS = {f.name: f for f in fields(Config)}


def load_config(
    args: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | str | None = None,
) -> Config:
    """Merge defaults < TOML file < environment < ``args`` into a :class:`Config`.

    ``args`` maps field names to flag values; ``None`` means "not given", and
    strings are parsed like environment values. ``env`` defaults to
    :data:`os.environ`; variables other than ``CALLSGW_<FIELD>`` and
    ``CALLSGW_CONFIG`` are ignored. ``config_file`` (``--config``) beats
    ``$CALLSGW_CONFIG``, which beats ``<data_dir>/callsgw.toml`` (read only if
    it exists; a named file must exist).
    """
    env = os.environ if env is None else env
    flag_values, flag_sources = {}, {}
    for name, raw in (args or {}).items():
        if raw is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}", source="flags")
        source = "flag " + _flag_of(name)
        flag_values[name] = _coerce(_FIELDS[name], raw, source=source, from_text=isinstance(raw, str))
        flag_sources[name] = source

    env_values, env_sources = {}, {}
    for name, f in _FIELDS.items():
        var = ENV_PREFIX + name.upper()
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        source = "environment variable " + var
        env_values[name] = _coerce(f, raw, source=source, from_text=True)
        env_sources[name] = source

    if config_file is not None:
        path, source, implicit = Path(config_file).expanduser(), "flag --config", False
    elif env.get(CONFIG_ENV, "").strip():
        path, source, implicit = Path(env[CONFIG_ENV]).expanduser(), "environment variable " + CONFIG_ENV, False
    else:
        data_dir = flag_values.get("data_dir") or env_values.get("data_dir") or default_data_dir(env)
        path, source, implicit = Path(data_dir) / CONFIG_FILE_NAME, "default location", True
    file_values, file_sources = _read_toml(path, source=source, implicit=implicit)

    layers = [(file_values, file_sources), (env_values, env_sources), (flag_values, flag_sources)]
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for values, layer_sources in layers:
        merged.update(values)
        sources.update(layer_sources)

    if "listen_host" not in merged and (merged.get("plain_ws") or merged.get("demo")):
        merged["listen_host"] = LOOPBACK_HOST
        sources["listen_host"] = "loopback default of " + ("plain_ws" if merged.get("plain_ws") else "demo")

    if "data_dir" not in merged:
        merged["data_dir"] = default_data_dir(env)
    _check_combination(
        {name: merged.get(name, _default_of(name)) for name in _FIELDS},
        lambda name: sources.get(name, "default"),
    )
    return Config(**merged)


def _flag_of(name: str) -> str:
    return _FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")


def _default_of(name: str) -> Any:
    f = _FIELDS[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _read_toml(path: Path, *, source: str, implicit: bool) -> tuple[dict[str, Any], dict[str, str]]:
    label = f"config file {path}"
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        if implicit:
            return {}, {}  # no file in the data directory (or no data directory yet)
        raise ConfigError(f"config file {path} (from {source}) does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} (from {source}): {exc.strerror}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("not valid UTF-8 (TOML 1.0 requires it)", source=label) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=label) from None

    values, sources = {}, {}
    for key, raw_value in document.items():
        if key not in _FIELDS:
            raise ConfigError(
                f"unknown setting {key!r}; known settings: " + ", ".join(_FIELDS),
                source=label,
            )
        if key == "data_dir" and implicit:
            raise ConfigError(
                f"cannot be set in {path}, the file inside the data directory itself; "
                "use --data-dir or CALLSGW_DATA_DIR",
                setting=key,
                source=label,
            )
        if isinstance(raw_value, str) and raw_value == "" and _FIELDS[key].metadata["kind"] in ("ip", "path?"):
            values[key] = None
        else:
            value = _coerce(_FIELDS[key], raw_value, source=label, from_text=False)
            if isinstance(value, Path) and not value.is_absolute():
                value = path.parent / value
            values[key] = value
        sources[key] = label
    return values, sources


def _check_combination(values: Mapping[str, Any], source_of) -> None:
    """Cross-setting rules; ``source_of(name)`` names where a value came from."""
    if values.get("cluster") and not str(values.get("database") or "").startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "cluster mode needs PostgreSQL: set database to a postgresql://... URL shared by every node "
            "(it holds the Systems table with the ClusterEncryptionKey and the API secret); "
            f"database is {'unset (SQLite)' if not values.get('database') else 'SQLite'}"
            f" (from {source_of('database')})",
            setting="cluster",
            source=source_of("cluster"),
        )
    cert, key = values["tls_cert"], values["tls_key"]
    if (cert is None) != (key is None):
        given, missing = ("tls_cert", "tls_key") if key is None else ("tls_key", "tls_cert")
        raise ConfigError(
            f"needs {missing} as well: an operator certificate comes with its private key",
            setting=given,
            source=source_of(given),
        )
    if values["token_ttl"] > values["max_token_ttl"]:
        raise ConfigError(
            f"is {values['token_ttl']:g} s, longer than max_token_ttl ({values['max_token_ttl']:g} s, "
            f"from {source_of('max_token_ttl')}): such tokens would be refused",
            setting="token_ttl",
            source=source_of("token_ttl"),
        )
    if bool(values.get("turn_url")) != bool(values.get("turn_secret")):
        given = "turn_url" if values.get("turn_url") else "turn_secret"
        raise ConfigError(
            "turn_url and turn_secret go together: clients get TURN credentials made with the secret "
            "the TURN server shares (coturn use-auth-secret)",
            setting=given,
            source=source_of(given),
        )
    if values["plain_ws"] and cert is not None:
        raise ConfigError(
            "serves plain ws:// behind a TLS proxy, so it cannot use tls_cert/tls_key "
            f"(tls_cert from {source_of('tls_cert')}); set one or the other",
            setting="plain_ws",
            source=source_of("plain_ws"),
        )


def _coerce(f: dataclasses.Field, raw: Any, *, source: str, from_text: bool) -> Any:
    """Parse and check one value of field ``f``; :class:`ConfigError` on failure."""
    md = f.metadata
    kind = md["kind"]

    def bad(message: str) -> ConfigError:
        return ConfigError(message, setting=f.name, source=source)

    if raw is None:
        if kind in ("ip", "path?", "url?", "redis?", "name?", "ws_url?", "port?", "secret?"):
            return None
        raise bad("a value is required")
    if from_text and not isinstance(raw, str):
        raise bad(f"expected text, got {type(raw).__name__}")
    text = raw.strip() if isinstance(raw, str) else None

    if kind in ("path", "path?"):
        if isinstance(raw, str) and text:
            return Path(text).expanduser()
        if isinstance(raw, os.PathLike):
            return Path(raw).expanduser()
        raise bad(f"expected a path, got {raw!r}")

    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if text is not None and from_text and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise bad(f"expected a boolean (1/0, true/false, yes/no, on/off), got {raw!r}")

    if kind == "port?" and isinstance(raw, str) and not text:
        return None
    if kind in ("port", "int", "port?"):
        if from_text:
            try:
                value = int(text, 10)
            except ValueError:
                raise bad(f"expected an integer, got {raw!r}") from None
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        else:
            raise bad(f"expected an integer, got {raw!r}")
        if kind in ("port", "port?"):
            if not 0 <= value <= 65535:
                raise bad(f"must be a port number from 0 to 65535 (0: any free port), got {value}")
            return value
        return _check_range(value, md, bad)

    if kind == "float":
        if from_text:
            try:
                value = float(text)
            except ValueError:
                raise bad(f"expected a number, got {raw!r}") from None
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            value = float(raw)
        else:
            raise bad(f"expected a number, got {raw!r}")
        if not math.isfinite(value):
            raise bad(f"must be a finite number, got {raw!r}")
        return _check_range(value, md, bad)

    if kind == "networks":  # trusted_proxies (callsgw/server/proxy.py)
        from callsgw.server.proxy import parse_networks

        if from_text:
            items = text.split(",")
        elif isinstance(raw, (list, tuple)) and all(isinstance(item, str) for item in raw):
            items = raw
        else:
            raise bad(f"expected a list of IP addresses or networks, got {type(raw).__name__}")
        try:
            return parse_networks(items)
        except ValueError as exc:
            raise bad(str(exc)) from None
    if kind == "turn_urls":  # callsgw/turn.py
        from callsgw.turn import parse_turn_urls

        if from_text:
            items = text.split(",")
        elif isinstance(raw, (list, tuple)):
            items = raw
        else:
            raise bad(f"expected a list of TURN URLs, got {type(raw).__name__}")
        try:
            return parse_turn_urls(items)
        except ValueError as exc:
            raise bad(str(exc)) from None
    if kind == "secret?":
        if not isinstance(raw, str):
            raise bad("expected text")  # the value itself is never repeated in an error
        if not text:
            return None
        if len(text) < 16:
            raise bad("must be at least 16 characters")
        return text
    if kind == "ip":  # ice_host: IP[/INTERNAL],... (callsgw/ice/hosts.py)
        from callsgw.ice.hosts import parse_ice_hosts

        if not isinstance(raw, str) or not text:
            raise bad(f"expected an address, got {raw!r}")
        try:
            return parse_ice_hosts(text).text()
        except ValueError as exc:
            raise bad(f"expected an IP address or external/internal pairs: {exc}") from None
    if kind in ("host", "ip"):
        if not isinstance(raw, str) or not text:
            raise bad(f"expected an address, got {raw!r}")
        if kind == "host":
            if not _is_host(text):
                raise bad(f"expected an IP address or a host name, got {raw!r}")
            return text
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise bad(f"expected an IP address, got {raw!r}") from None
        if address.is_unspecified or address.is_multicast:
            raise bad(f"must be a unicast address that peers can reach, got {text}")
        return str(address)

    if kind == "url?":
        if isinstance(raw, str) and not text:
            return None
        if isinstance(raw, str) and text.startswith(("postgresql://", "postgres://", "sqlite:///")):
            from callsgw.cluster.services import database_url_problem  # TLS to PostgreSQL (issue #16)

            problem = database_url_problem(text)
            if problem is not None:
                raise bad(problem)
            return text
        raise bad("expected a postgresql://... or sqlite:///... URL")

    if kind == "redis?":
        if isinstance(raw, str) and not text:
            return None
        if isinstance(raw, str) and text.startswith(("redis://", "rediss://", "unix://")) and len(text) <= 2048:
            from callsgw.cluster.services import redis_url_problem  # TLS to Redis (issue #16)

            problem = redis_url_problem(text)
            if problem is not None:
                raise bad(problem)
            return text
        raise bad("expected a redis://HOST:PORT/DB, rediss://... or unix://... URL")  # never echo: it may hold a password

    if kind in ("name", "name?"):
        if kind == "name?" and isinstance(raw, str) and not text:
            return None
        if isinstance(raw, str) and _NAME.fullmatch(text):
            return text
        raise bad(f"expected 1 to 64 characters of A-Z a-z 0-9 . _ - (starting with a letter or digit), got {raw!r}")

    if kind == "ws_url?":
        if isinstance(raw, str) and not text:
            return None
        if isinstance(raw, str) and text.startswith(("wss://", "ws://")) and len(text) <= 512 and text.isprintable() \
                and " " not in text:
            return text
        raise bad(f"expected a wss://HOST:PORT/ws URL, got {raw!r}")

    if kind == "media_engine":
        if isinstance(raw, str) and text.lower() in MEDIA_ENGINES:
            return text.lower()
        raise bad(f"expected one of {', '.join(MEDIA_ENGINES)}, got {raw!r}")
    if kind == "log_level":
        if isinstance(raw, str) and text.lower() in LOG_LEVELS:
            return text.lower()
        raise bad(f"expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")

    if kind == "names":
        if from_text:
            items: Iterable[Any] = [part.strip() for part in text.split(",") if part.strip()]
        elif isinstance(raw, (list, tuple)):
            items = raw
        else:
            raise bad(f"expected a list, got {raw!r}")
        try:
            if f.name == "dtls_ciphers":
                return DtlsPolicy(ciphers=tuple(items)).ciphers
            policy = DtlsPolicy(srtp_profiles=tuple(items))
        except ValueError as exc:
            raise bad(str(exc)) from None
        return tuple(p.dtls_name for p in policy.srtp_profiles)

    raise AssertionError(f"unknown setting kind {kind!r}")


def _check_range(value, md, bad):
    if md["positive"] and not value > 0:
        raise bad(f"must be greater than 0, got {value}")
    if md["minimum"] is not None and value < md["minimum"]:
        raise bad(f"must be at least {md['minimum']}, got {value}")
    if md["maximum"] is not None and value > md["maximum"]:
        raise bad(f"must be at most {md['maximum']}, got {value}")
    return value


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_HOSTNAME_LABEL.fullmatch(label) for label in name.split("."))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""docker-compose.yml: Docker does not run on these machines, so parse it and check its keys.

The checks follow the Compose Specification (compose-spec.io). The file is a
cluster (issue #16): two gateway nodes, Redis, PostgreSQL and nginx, with host
networking. Every gateway environment variable must be a real setting and load
(after compose's interpolation) into a plain-ws cluster node that trusts nginx's
address; nginx must get the repository's template and every variable it needs,
pointing at the nodes' listeners; Redis and PostgreSQL must be where the nodes'
URLs say. The same topology runs as processes in tests/cluster/test_nginx.py.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from callsgw.cli import build_parser
from callsgw.config import Config, load_config, setting_specs

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GATEWAYS = ("gw1", "gw2")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def interpolate(value, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (a missing required one fails)."""
    def one(match):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""
    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", one, str(value))


def loaded(service: dict, env: dict[str, str]) -> Config:
    return load_config({}, {k: interpolate(v, env) for k, v in service["environment"].items()})


ENV = {"CALLSGW_DB_PASSWORD": "s3cret-for-the-test"}


def test_parses_with_the_cluster_services(compose, services):
    assert isinstance(compose, dict) and "version" not in compose  # obsolete in the Compose Specification
    assert set(services) == {"gw1", "gw2", "redis", "postgres", "nginx"}


@pytest.mark.parametrize("name", GATEWAYS)
def test_gateway_image_command_and_lifecycle(services, name):
    gw = services[name]
    assert gw["image"] == "callsgw:latest" and gw["build"] == "."
    command = gw["command"].split() if isinstance(gw["command"], str) else gw["command"]
    assert command[:2] == ["callsgw", "serve"]
    assert build_parser().parse_args(command[1:]).command == "serve"  # a command line the CLI accepts
    assert gw["network_mode"] == "host" and "ports" not in gw  # published ports are ignored with host networking
    assert gw["restart"] in {"unless-stopped", "always", "on-failure"}
    assert gw.get("stop_signal", "SIGTERM") in {"SIGTERM", "SIGINT"}
    match = re.fullmatch(r"(\d+)s", gw["stop_grace_period"])
    assert match and int(match.group(1)) > Config.__dataclass_fields__["shutdown_grace"].default
    assert {"redis", "postgres"} <= set(gw["depends_on"])


def test_each_gateway_has_its_own_data_volume(compose, services):
    volumes = []
    for name in GATEWAYS:
        assert services[name]["environment"]["CALLSGW_DATA_DIR"] == "/data"
        mounts = [v.split(":") for v in services[name]["volumes"]]
        named = [m[0] for m in mounts if len(m) >= 2 and m[1] == "/data"]
        assert len(named) == 1 and not named[0].startswith((".", "/")), "a named volume, not a bind mount"
        assert named[0] in compose["volumes"]
        volumes.append(named[0])
    assert len(set(volumes)) == 2


def test_gateway_environment_names_are_real_settings(services):
    known = {spec.env for spec in setting_specs()}
    for name in GATEWAYS:
        assert set(services[name]["environment"]) <= known


def test_gateways_load_as_plain_ws_cluster_nodes_behind_nginx(services):
    configs = {name: loaded(services[name], ENV) for name in GATEWAYS}
    for cfg in configs.values():
        assert cfg.plain_ws and cfg.listen_is_loopback
        assert cfg.cluster.startswith(("redis://", "rediss://")) and cfg.database.startswith("postgresql://")
        assert cfg.ice_host is None  # unset CALLSGW_ICE_HOST interpolates to "": no override
        assert any(ipaddress.ip_address("127.0.0.1") in ipaddress.ip_network(n) for n in cfg.trusted_proxies)
        assert cfg.advertise_url == "wss://localhost:8443/ws"
        assert "s3cret-for-the-test" in cfg.database
    a, b = configs.values()
    assert a.node_id != b.node_id and a.port != b.port and a.media_port != b.media_port
    assert (a.cluster, a.database) == (b.cluster, b.database)  # one cluster
    with_ice = loaded(services["gw1"], {**ENV, "CALLSGW_ICE_HOST": "203.0.113.7"})
    assert with_ice.ice_host == "203.0.113.7"


def test_the_database_password_is_required_not_defaulted(services):
    with pytest.raises(KeyError, match="CALLSGW_DB_PASSWORD"):
        loaded(services["gw1"], {})
    assert "${CALLSGW_DB_PASSWORD:?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]


def test_redis_and_postgresql_are_where_the_nodes_look_and_only_on_loopback(services):
    cfg = loaded(services["gw1"], ENV)
    redis, pg = urlsplit(cfg.cluster), urlsplit(cfg.database)
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--bind") + 1] == redis.hostname == "127.0.0.1"
    assert redis_cmd[redis_cmd.index("--port") + 1] == str(redis.port)
    assert "listen_addresses=127.0.0.1" in services["postgres"]["command"] and pg.hostname == "127.0.0.1"
    pg_env = services["postgres"]["environment"]
    assert (pg.username, pg.path.lstrip("/"), pg.port) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_DB"], 5432)
    for name in ("redis", "postgres"):
        assert services[name]["network_mode"] == "host" and "healthcheck" in services[name]


def test_nginx_gets_the_repositorys_template_and_every_variable_it_needs(services):
    nginx = services["nginx"]
    mounts = [v.split(":") for v in nginx["volumes"]]
    templates = [m for m in mounts if m[1].startswith("/etc/nginx/templates/")]
    assert len(templates) == 1 and templates[0][1].endswith(".template")
    source = ROOT / templates[0][0]
    assert source == ROOT / "deploy" / "nginx" / "callsgw.conf.template" and source.exists()
    needed = set(re.findall(r"\$\{([A-Z0-9_]+)\}", source.read_text()))
    assert needed and needed <= set(nginx["environment"])
    # the upstreams are the gateways' listeners
    nodes = {nginx["environment"]["CALLSGW_NODE_1"], nginx["environment"]["CALLSGW_NODE_2"]}
    listeners = {f"{c.listen_host}:{c.port}" for c in (loaded(services[n], ENV) for n in GATEWAYS)}
    assert nodes == listeners
    assert nginx["environment"]["CALLSGW_NGINX_PORT"] == "8443"
    cert_dir = [m for m in mounts if m[1] == "/etc/nginx/tls"]
    assert cert_dir and nginx["environment"]["CALLSGW_NGINX_CERT"].startswith("/etc/nginx/tls/")
    assert nginx["network_mode"] == "host" and set(GATEWAYS) <= set(nginx["depends_on"])


def test_nginx_headers_are_the_ones_the_gateway_reads():
    from callsgw.server.proxy import CLIENT_ADDRESS_HEADER, TLS_CIPHER_HEADER, TLS_VERSION_HEADER

    text = (ROOT / "deploy" / "nginx" / "callsgw.conf.template").read_text()
    assert f"proxy_set_header {TLS_VERSION_HEADER} $ssl_protocol;" in text
    assert f"proxy_set_header {TLS_CIPHER_HEADER} $ssl_cipher;" in text
    assert f"proxy_set_header {CLIENT_ADDRESS_HEADER} $remote_addr;" in text

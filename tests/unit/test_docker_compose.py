"""docker-compose.yml: Docker does not run on these machines, so parse it and check its keys.

The checks follow the Compose Specification (compose-spec.io): one ``callsgw``
service, host networking or both 8443 ports published, the data directory as a
named volume at /data, the ICE host override taken from the environment, a
restart policy, and ``callsgw serve`` as the command. The environment variable
names are checked against callsgw.config, so a renamed setting breaks this test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from callsgw.cli import build_parser
from callsgw.config import Config, load_config, setting_specs

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def service(compose) -> dict:
    return compose["services"]["callsgw"]


def test_parses_with_one_gateway_service(compose):
    assert isinstance(compose, dict)
    assert set(compose["services"]) == {"callsgw"}
    assert "version" not in compose  # obsolete in the Compose Specification


def test_image_and_command(service):
    assert service["image"] == "callsgw:latest"
    command = service["command"]
    command = command.split() if isinstance(command, str) else command
    assert command[:2] == ["callsgw", "serve"]
    # the command line must be one the CLI accepts
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve"


def test_networking_reaches_both_ports(service):
    if service.get("network_mode") == "host":
        assert "ports" not in service  # published ports are ignored with host networking
        return
    ports = {str(p) for p in service.get("ports", [])}
    assert any(re.fullmatch(r"(\d+\.\d+\.\d+\.\d+:)?8443:8443/tcp|(\S+:)?8443:8443", p) for p in ports), ports
    assert any(re.fullmatch(r"(\S+:)?8443:8443/udp", p) for p in ports), ports


def test_alternative_port_mapping_is_documented():
    text = COMPOSE.read_text()
    assert re.search(r"#\s*-\s*\"8443:8443/tcp\"", text)
    assert re.search(r"#\s*-\s*\"8443:8443/udp\"", text)


def test_data_directory_is_a_named_volume(compose, service):
    environment = service["environment"]
    assert environment["CALLSGW_DATA_DIR"] == "/data"
    mounts = [v.split(":") for v in service["volumes"]]
    named = [m for m in mounts if len(m) >= 2 and m[1] == "/data"]
    assert len(named) == 1
    volume_name = named[0][0]
    assert not volume_name.startswith((".", "/")), "a named volume, not a bind mount"
    assert volume_name in compose["volumes"]


def test_ice_host_is_settable_from_the_environment(service):
    assert service["environment"]["CALLSGW_ICE_HOST"] == "${CALLSGW_ICE_HOST:-}"


def test_environment_names_are_real_settings(service):
    known = {spec.env for spec in setting_specs()}
    assert set(service["environment"]) <= known


def test_environment_as_compose_would_pass_it_loads(service):
    # unset CALLSGW_ICE_HOST interpolates to "", which must mean "no override"
    env = {name: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
           for name, value in service["environment"].items()}
    config = load_config({}, env)
    assert config.data_dir == Path("/data") and config.ice_host is None
    env["CALLSGW_ICE_HOST"] = "203.0.113.7"
    assert load_config({}, env).ice_host == "203.0.113.7"


def test_restart_and_graceful_stop(service):
    assert service["restart"] in {"unless-stopped", "always", "on-failure"}
    assert service.get("stop_signal", "SIGTERM") in {"SIGTERM", "SIGINT"}
    grace = service["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match and int(match.group(1)) > Config.__dataclass_fields__["shutdown_grace"].default

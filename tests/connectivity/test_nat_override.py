"""Issue #18 deliverables 3 and 4: a user-space NAT that rewrites the port in front of the gateway,
with the advertised-address overrides, and the overrides' parsing.

The NAT (tests/connectivity/nat.py) publishes one port P for UDP and TCP and forwards from
127.0.0.3 to the gateway's bound ports; nftables drops anything reaching those ports from
elsewhere, so the only way in is through P. The Python client signals through the NAT and sends
media to whatever the answer's candidates say: it connects only when they announce P
(``ice_port_override``), and the ICE-TCP candidate announces P too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess

import pytest

from callsgw.client import connect
from callsgw.config import ConfigError, load_config
from callsgw.ice.hosts import IceHosts, announced_addresses, parse_ice_hosts
from callsgw.sdp import gateway_addresses
from callsgw.signaling import tokens
from tests.connectivity.nat import PortNat
from tests.netfilter import NFT, private_namespace
from tests.signaling.gateway import running_gateway

INSIDE = "127.0.0.3"


def free_port_for_udp_and_tcp() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


@contextlib.contextmanager
def only_through(inside: str, udp_port: int, tcp_port: int):
    """Drop UDP to ``udp_port`` and TCP to ``tcp_port`` unless they come from ``inside`` (the NAT)."""
    if not private_namespace():
        pytest.skip("firewall rules are only set inside a private network namespace (scripts/test.sh)")
    table = f"callsgw_test_nat_{udp_port}"
    subprocess.run([NFT, "add", "table", "inet", table], check=True)
    try:
        subprocess.run([NFT, "add", "chain", "inet", table, "i", "{ type filter hook input priority 0; }"], check=True)
        for rule in (f"udp dport {udp_port} ip saddr != {inside} drop",
                     f"tcp dport {tcp_port} ip saddr != {inside} drop"):
            subprocess.run([NFT, "add", "rule", "inet", table, "i", *rule.split()], check=True)
        yield
    finally:
        subprocess.run([NFT, "delete", "table", "inet", table], check=True)


async def nat_call(tmp_path, *, override: bool) -> tuple[bool, PortNat]:
    public = free_port_for_udp_and_tcp()
    options = {"ice_port_override": public} if override else {}
    async with running_gateway(tmp_path, **options) as app:
        nat = await PortNat(public, ("127.0.0.1", app.media_port), ("127.0.0.1", app.port), inside=INSIDE).start()
        try:
            with only_through(INSIDE, app.media_port, app.port):
                token = tokens.mint(app.datadir.api_secret(), call="nat", name="alice")
                session = await connect(f"wss://127.0.0.1:{public}/ws", token, ssl=False)
                try:
                    try:
                        await session.wait_connected(timeout=8)
                        connected = True
                    except Exception:
                        connected = False
                finally:
                    await session.close()
        finally:
            nat.close()
        return connected, nat


async def test_a_call_connects_through_a_port_rewriting_nat_with_the_port_override(tmp_path):
    async with asyncio.timeout(60):
        connected, nat = await nat_call(tmp_path, override=True)
    assert connected
    assert nat.stats["udp_in"] > 0 and nat.stats["udp_out"] > 0 and nat.stats["tcp"] >= 1


async def test_without_the_override_the_nat_blocks_the_call(tmp_path):
    async with asyncio.timeout(60):
        connected, nat = await nat_call(tmp_path, override=False)
    assert not connected  # the answer named the bound port, which only the NAT may reach
    assert nat.stats["udp_in"] == 0


async def test_udp_and_tcp_candidates_announce_the_override(tmp_path):
    async with running_gateway(tmp_path, ice_port_override=30443, ice_host="203.0.113.7/127.0.0.1") as app:
        assert app.core.media_address[1] == 30443 and app.core.ice_tcp_port == 30443
        assert app.core.announce == ("203.0.113.7",)


def test_ice_host_parsing():
    assert parse_ice_hosts("203.0.113.7") == IceHosts(("203.0.113.7",), ())
    hosts = parse_ice_hosts(" 203.0.113.7/10.0.0.5 , 198.51.100.2, 2001:db8::1/fd00::5")
    assert hosts.plain == ("198.51.100.2",)
    assert hosts.pairs == (("203.0.113.7", "10.0.0.5"), ("2001:db8::1", "fd00::5"))
    assert hosts.text() == "198.51.100.2,203.0.113.7/10.0.0.5,2001:db8::1/fd00::5"
    for bad in ("", "nope", "203.0.113.7/", "/10.0.0.5", "0.0.0.0", "203.0.113.7//10.0.0.1",
                "1.1.1.1/10.0.0.5,2.2.2.2/10.0.0.5", "1.1.1.1,,2.2.2.2", ",".join(["1.1.1.1"] * 17)):
        with pytest.raises(ValueError):
            parse_ice_hosts(bad)


def test_pairs_replace_the_hosts_internal_addresses():
    local = ("10.0.0.5", "192.168.1.9")
    assert announced_addresses(parse_ice_hosts("203.0.113.7/10.0.0.5"), local) == ("203.0.113.7", "192.168.1.9")
    assert announced_addresses(parse_ice_hosts("198.51.100.2,203.0.113.7/10.0.0.5"), local) == (
        "198.51.100.2", "203.0.113.7", "192.168.1.9")
    assert announced_addresses(parse_ice_hosts("198.51.100.2"), local) == ("198.51.100.2",)
    assert announced_addresses(parse_ice_hosts("203.0.113.7/10.9.9.9"), local) == local  # not ours: nothing to map
    # in this namespace the host's only address is 127.0.0.1
    if private_namespace():
        assert gateway_addresses("203.0.113.7/127.0.0.1") == ("203.0.113.7",)
    assert gateway_addresses("203.0.113.7,198.51.100.2") == ("203.0.113.7", "198.51.100.2")


def test_config_takes_pairs_lists_and_the_port_override_from_every_layer():
    env = {"CALLSGW_ICE_HOST": "203.0.113.7/10.0.0.5,198.51.100.2", "CALLSGW_ICE_PORT_OVERRIDE": "30443"}
    config = load_config({}, env)
    assert config.ice_host == "198.51.100.2,203.0.113.7/10.0.0.5" and config.ice_port_override == 30443
    with pytest.raises(ConfigError, match="ice_host"):
        load_config({}, {"CALLSGW_ICE_HOST": "203.0.113.7/not-an-ip"})
    with pytest.raises(ConfigError, match="ice_port_override"):
        load_config({}, {"CALLSGW_ICE_PORT_OVERRIDE": "70000"})

"""Advertised-address overrides: which addresses and port the gateway's candidates announce.

A gateway behind NAT, in a container or behind a Kubernetes NodePort binds one address and port
but is reached at another. RFC 8445 section 5.1.1.1 has the host gather its own addresses; an
operator who knows the mapping states it (as Mattermost rtcd's ``ice_host_override`` does):

* ``--ice-host 203.0.113.7``: announce only this address (a 1:1 NAT, a container);
* ``--ice-host 203.0.113.7/10.0.0.5``: an ``external/internal`` pair: where the host has the
  address 10.0.0.5, announce 203.0.113.7 instead (other addresses of the host stay as they are);
* several entries, comma-separated, mixing both forms: plain entries are announced first, then
  the host's addresses with each paired internal one replaced by its external one;
* ``--ice-port-override 30443``: candidates announce this port instead of the bound ones (UDP
  media and ICE-TCP alike), for NodePort services and port-mapping NATs.

:func:`parse_ice_hosts` checks and normalises the text (the config layer calls it), and
:func:`announced_addresses` applies it to the host's own addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["IceHosts", "announced_addresses", "parse_ice_hosts"]

MAX_ENTRIES = 16


@dataclass(frozen=True)
class IceHosts:
    """A parsed ``ice_host`` setting."""

    plain: tuple[str, ...] = ()  # announced as they are
    pairs: tuple[tuple[str, str], ...] = ()  # (external, internal)

    def text(self) -> str:
        """The normalised setting text (what the config keeps)."""
        return ",".join(list(self.plain) + [f"{e}/{i}" for e, i in self.pairs])


def _unicast(text: str, what: str) -> str:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{what} {text.strip()!r} is not an IP address") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{what} must be a unicast address that peers can reach, got {address}")
    return str(address)


def parse_ice_hosts(text: str) -> IceHosts:
    """Parse ``ext[,ext/int,...]``; ``ValueError`` naming the bad entry."""
    entries = [e.strip() for e in text.split(",")]
    if not any(entries):
        raise ValueError("expected an IP address or external/internal pairs")
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} entries")
    plain: list[str] = []
    pairs: list[tuple[str, str]] = []
    internals: set[str] = set()
    for entry in entries:
        if not entry:
            raise ValueError("an empty entry (two commas, or one at an end)")
        external, sep, internal = entry.partition("/")
        if sep:
            pair = (_unicast(external, "external address"), _unicast(internal, "internal address"))
            if pair[1] in internals:
                raise ValueError(f"internal address {pair[1]} is mapped twice")
            internals.add(pair[1])
            pairs.append(pair)
        else:
            address = _unicast(external, "address")
            if address not in plain:
                plain.append(address)
    return IceHosts(tuple(plain), tuple(pairs))


def announced_addresses(hosts: IceHosts, local: tuple[str, ...]) -> tuple[str, ...]:
    """The addresses candidates announce: ``hosts`` applied to the host's own ``local`` addresses.

    Only plain entries: those alone. With pairs: the plain ones, then ``local`` with each paired
    internal address replaced by its external one (duplicates dropped, order kept).
    """
    if not hosts.pairs:
        return hosts.plain or local
    mapping = {internal: external for external, internal in hosts.pairs}
    out: list[str] = list(hosts.plain)
    for address in local:
        announced = mapping.get(address, address)
        if announced not in out:
            out.append(announced)
    return tuple(out)

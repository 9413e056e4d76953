"""What a trusted TLS-terminating proxy says about a client's connection (issue #16 deliverable 5).

Behind nginx (``plain_ws``, ``deploy/nginx/callsgw.conf.template``) the gateway's own
connection is the proxy's, so it neither sees the client's TLS nor its address.
The proxy forwards both in request headers of the WebSocket upgrade:

=========================  ==========================  ============================================
header                     nginx value                 becomes
=========================  ==========================  ============================================
``X-Callsgw-TLS-Version``  ``$ssl_protocol``           ``joined.tls.version`` (``TLSv1.3``)
``X-Callsgw-TLS-Cipher``   ``$ssl_cipher``             ``joined.tls.cipher`` (OpenSSL name)
``X-Real-IP``              ``$remote_addr``            the participant's address (join rate limit,
                                                       security records)
=========================  ==========================  ============================================

Anybody can send such headers, so they count only on a connection whose
source address is in the ``trusted_proxies`` setting (addresses and
networks). From a trusted proxy the headers decide: both TLS headers present
and well-formed give ``{"version", "cipher"}``; missing, repeated, oversized
(over :data:`MAX_VALUE` bytes) or malformed ones give ``None``, as a
connection without TLS does. From anywhere else they are ignored and the
connection's own TLS (or ``None`` for plain ws://) is reported. The proxy
must *set* these headers (nginx ``proxy_set_header`` replaces what the client
sent), or a client could choose what the gateway reports.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable

log = logging.getLogger(__name__)

TLS_VERSION_HEADER = "X-Callsgw-TLS-Version"
TLS_CIPHER_HEADER = "X-Callsgw-TLS-Cipher"
CLIENT_ADDRESS_HEADER = "X-Real-IP"

MAX_VALUE = 64
"""Longest header value taken (bytes); a longer one is refused unread."""

TLS_VERSIONS = frozenset({"SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"})
"""The names OpenSSL (nginx ``$ssl_protocol``, Python ``SSLObject.version()``) gives TLS versions."""

_CIPHER = re.compile(r"[A-Z0-9][A-Z0-9_-]{0,63}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Iterable[str]) -> tuple[str, ...]:
    """``trusted_proxies``: IP addresses and CIDR networks, normalised; ``ValueError`` on a bad one."""
    out = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise ValueError(f"expected IP addresses or networks (10.0.0.0/8), got {text[:60]!r}") from None
        out.append(str(network))
    return tuple(out)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack listener sees ::ffff:127.0.0.1
    return address


def is_trusted(trusted: Iterable[str], host: str) -> bool:
    """True when ``host`` (the connection's source address) is in one of the ``trusted`` networks."""
    address = _address(host)
    if address is None:
        return False
    return any(address in ipaddress.ip_network(net) for net in trusted)


def _one(headers, name: str) -> str | None:
    """The header's only value, if it is there once and short enough; else None."""
    try:
        values = headers.get_all(name)
    except AttributeError:  # a plain mapping (tests)
        value = headers.get(name)
        values = [] if value is None else [value]
    if len(values) != 1:
        return None
    value = values[0]
    if not isinstance(value, str) or len(value.encode("utf-8", "surrogateescape")) > MAX_VALUE:
        return None
    return value.strip()


def forwarded_tls(headers) -> dict[str, str] | None:
    """The TLS the proxy's headers describe, or None when they are missing or malformed."""
    version, cipher = _one(headers, TLS_VERSION_HEADER), _one(headers, TLS_CIPHER_HEADER)
    if version is None or cipher is None:
        return None
    if version not in TLS_VERSIONS or not _CIPHER.fullmatch(cipher):
        log.warning("a trusted proxy sent malformed %s/%s headers; the connection's TLS is reported as null",
                    TLS_VERSION_HEADER, TLS_CIPHER_HEADER)
        return None
    return {"version": version, "cipher": cipher}


def client_view(trusted: Iterable[str], peer: tuple[str, int], headers,
                own_tls: dict[str, str] | None) -> tuple[dict[str, str] | None, tuple[str, int]]:
    """``(tls, peer)`` of a signaling connection as ``joined.tls`` and the core should see them.

    ``peer`` and ``own_tls`` are the connection's own (source address, and
    :func:`callsgw.tls.describe` of it or None). From a trusted proxy, the
    forwarded TLS and client address replace them (the address only when the
    header holds one IP address; the port stays the proxy connection's).
    """
    trusted = tuple(trusted)
    if not trusted or headers is None or not is_trusted(trusted, peer[0]):
        return own_tls, peer
    client = _one(headers, CLIENT_ADDRESS_HEADER)
    address = _address(client) if client else None
    if address is not None:
        peer = (str(address), peer[1])
    return forwarded_tls(headers), peer

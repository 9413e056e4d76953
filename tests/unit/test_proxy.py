"""callsgw/server/proxy.py: a trusted proxy's TLS and address headers, and nobody else's (issue #16)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from websockets.datastructures import Headers

from callsgw.config import ConfigError, load_config
from callsgw.server.proxy import (
    CLIENT_ADDRESS_HEADER, MAX_VALUE, TLS_CIPHER_HEADER, TLS_VERSION_HEADER, client_view, forwarded_tls, is_trusted,
    parse_networks,
)

TRUSTED = parse_networks(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])
OWN = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}


def forwarded(version="TLSv1.2", cipher="ECDHE-RSA-AES256-GCM-SHA384", client="203.0.113.9") -> Headers:
    headers = Headers()
    if version is not None:
        headers[TLS_VERSION_HEADER] = version
    if cipher is not None:
        headers[TLS_CIPHER_HEADER] = cipher
    if client is not None:
        headers[CLIENT_ADDRESS_HEADER] = client
    return headers


def test_a_trusted_proxy_reports_the_clients_tls_and_address():
    tls, peer = client_view(TRUSTED, ("127.0.0.1", 40000), forwarded(), None)
    assert tls == {"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES256-GCM-SHA384"}
    assert peer == ("203.0.113.9", 40000)
    tls, peer = client_view(TRUSTED, ("10.1.2.3", 5), forwarded("TLSv1.3", "TLS_AES_256_GCM_SHA384", "2001:db8::1"),
                            None)
    assert tls == OWN and peer == ("2001:db8::1", 5)
    # a dual-stack listener sees IPv4 proxies as IPv4-mapped IPv6
    assert client_view(TRUSTED, ("::ffff:127.0.0.1", 1), forwarded(), None)[0]["version"] == "TLSv1.2"


@pytest.mark.parametrize("source", ["192.0.2.1", "11.0.0.1", "127.0.0.2", "::1", "fe80::1", "unknown", ""])
def test_spoofed_headers_from_an_untrusted_address_are_ignored(source):
    spoof = forwarded("TLSv1.3", "TLS_AES_256_GCM_SHA384", "198.51.100.1")
    assert client_view(TRUSTED, (source, 7), spoof, None) == (None, (source, 7))  # plain ws: still null
    assert client_view(TRUSTED, (source, 7), spoof, OWN) == (OWN, (source, 7))  # its own TLS stands


def test_no_trusted_proxies_means_nothing_is_taken():
    assert client_view((), ("127.0.0.1", 7), forwarded(), None) == (None, ("127.0.0.1", 7))


@pytest.mark.parametrize("headers", [
    forwarded(version=None), forwarded(cipher=None),  # the proxy spoke plain HTTP: nginx sends no empty header
    forwarded(version="TLSv9"), forwarded(version="tlsv1.3"),
    {TLS_VERSION_HEADER: "TLSv1.3\x00", TLS_CIPHER_HEADER: "TLS_AES_256_GCM_SHA384"},  # (websockets refuses these)
    forwarded(cipher="AES256 GCM"), forwarded(cipher="<script>"), forwarded(cipher="a" * 20),
    forwarded(cipher="A" * (MAX_VALUE + 1)), forwarded(version="TLSv1.2" + " " * MAX_VALUE),
    {TLS_VERSION_HEADER: "TLSv1.2", TLS_CIPHER_HEADER: "ECDHE-RSA-AES256-GCM-SHA384\r\nX: y"},
    forwarded(cipher="ÉCDHE"),
])
def test_garbage_from_a_trusted_proxy_gives_null(headers):
    tls, _ = client_view(TRUSTED, ("127.0.0.1", 1), headers, OWN)
    assert tls is None


def test_repeated_headers_are_refused():
    headers = forwarded()
    headers[TLS_VERSION_HEADER] = "TLSv1.3"  # Headers appends: now two values
    assert forwarded_tls(headers) is None
    twice = forwarded(client="203.0.113.9")
    twice[CLIENT_ADDRESS_HEADER] = "198.51.100.7"
    assert client_view(TRUSTED, ("127.0.0.1", 1), twice, None)[1] == ("127.0.0.1", 1)


@pytest.mark.parametrize("client", ["not-an-ip", "203.0.113.9, 10.0.0.1", "1" * 100, "", "203.0.113.9:80"])
def test_a_bad_client_address_keeps_the_proxys(client):
    _, peer = client_view(TRUSTED, ("127.0.0.1", 9), forwarded(client=client), None)
    assert peer == ("127.0.0.1", 9)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200), st.text(max_size=200))
def test_any_header_values_give_a_valid_description_or_null(version, cipher, client):
    headers = {TLS_VERSION_HEADER: version, TLS_CIPHER_HEADER: cipher, CLIENT_ADDRESS_HEADER: client}
    tls, peer = client_view(TRUSTED, ("10.0.0.1", 3), headers, None)
    assert tls is None or (tls["version"].startswith(("TLSv", "SSLv")) and len(tls["cipher"]) <= MAX_VALUE)
    assert len(peer[0]) <= 45


def test_is_trusted_and_networks():
    assert is_trusted(TRUSTED, "10.255.0.1") and is_trusted(TRUSTED, "fd12::1") and not is_trusted(TRUSTED, "::1")
    with pytest.raises(ValueError, match="10.0.0.0/8"):
        parse_networks(["10.0.0.1/8"])  # host bits set: a typo, not a network
    with pytest.raises(ValueError):
        parse_networks(["proxy.example"])


def test_the_setting_from_flags_environment_and_toml(tmp_path):
    assert load_config({"trusted_proxies": "127.0.0.1, 10.0.0.0/8"}, {}).trusted_proxies == \
        ("127.0.0.1/32", "10.0.0.0/8")
    assert load_config({}, {"CALLSGW_TRUSTED_PROXIES": "::1"}).trusted_proxies == ("::1/128",)
    (tmp_path / "c.toml").write_text('trusted_proxies = ["192.0.2.0/24"]\n')
    assert load_config({}, {}, tmp_path / "c.toml").trusted_proxies == ("192.0.2.0/24",)
    assert load_config({}, {}).trusted_proxies == ()
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_config({"trusted_proxies": "everyone"}, {})

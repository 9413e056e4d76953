"""TLS to the cluster's shared services: Redis and PostgreSQL (issue #16 deliverable 4).

The seed secures every transmission in transit, so a cluster's links to Redis
and PostgreSQL can run over TLS. Both are configured in the URL the
``cluster`` and ``database`` settings already hold, in each library's own
documented syntax, so that every command that opens them (``serve``,
``cluster status``, ``token``, ``cluster-key``) honours it without more settings:

* Redis: ``rediss://HOST:6380/0?ssl_ca_certs=/etc/callsgw/redis-ca.pem``
  (redis-py's URL options). :func:`redis_options` makes every client callsgw
  opens verify the server's certificate and its host name (RFC 6125 via
  OpenSSL) and speak TLS 1.2 or newer (RFC 5246, RFC 8446). Without
  ``ssl_ca_certs`` the system's CAs are used.
* PostgreSQL: ``postgresql://gw@db.example/callsgw?sslmode=verify-full&sslrootcert=/etc/callsgw/pg-ca.pem``
  (libpq's connection parameters, PostgreSQL manual section 34.1.2 and 34.19).

:func:`redis_url_problem` and :func:`database_url_problem` refuse, at start,
URLs that would weaken this: a Redis URL that turns verification off or
allows TLS below 1.2, TLS options on a plain ``redis://`` URL, and a
``sslrootcert`` without ``sslmode=verify-full`` or ``verify-ca`` (where libpq
would not check the certificate at all). The messages never repeat the URL
(it may hold a password).
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit

_REDIS_TLS_OPTIONS = ("ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_cert_reqs", "ssl_check_hostname",
                      "ssl_min_version", "ssl_certfile", "ssl_keyfile")
MIN_TLS = ssl.TLSVersion.TLSv1_2


def _query(url: str) -> dict[str, list[str]] | None:
    try:
        return parse_qs(urlsplit(url).query, keep_blank_values=True)
    except ValueError:
        return None


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` may not name the cluster's Redis, or None (the URL is not repeated)."""
    query = _query(url)
    if query is None:
        return "not a valid URL"
    tls = url.startswith("rediss://")
    for name in query:
        if name.startswith("ssl_") and not tls:
            return f"the TLS option {name} needs a rediss:// URL (Redis over TLS)"
    if tls:
        reqs = query.get("ssl_cert_reqs", ["required"])[-1].lower()
        if reqs != "required":
            return "ssl_cert_reqs must stay 'required': the Redis server's certificate is always verified"
        if query.get("ssl_check_hostname", ["true"])[-1].lower() in ("0", "false", "no", "off", "n", "f"):
            return "ssl_check_hostname may not be turned off: the Redis server's host name is always checked"
        minimum = query.get("ssl_min_version")
        if minimum is not None:
            try:
                allowed = int(minimum[-1]) >= MIN_TLS.value
            except ValueError:
                allowed = False
            if not allowed:
                return f"ssl_min_version must be {MIN_TLS.value} (TLS 1.2) or more"
    return None


def database_url_problem(url: str) -> str | None:
    """Why a ``postgresql://`` URL may not be used, or None."""
    if not url.startswith(("postgresql://", "postgres://")):
        return None
    query = _query(url)
    if query is None:
        return "not a valid URL"
    mode = query.get("sslmode", [""])[-1]
    if "sslrootcert" in query and mode not in ("verify-full", "verify-ca"):
        return ("sslrootcert is only used with sslmode=verify-full (or verify-ca); "
                f"sslmode is {mode or 'unset (prefer: the certificate is not checked)'}")
    return None


def redis_options(url: str, *, read_timeout: float | None = 5.0) -> dict:
    """Keyword arguments for ``redis.asyncio.from_url(url, **options)``.

    For ``rediss://``: certificate and host name verified, TLS 1.2 at least
    (redis-py lets the URL's own options win; :func:`redis_url_problem` has
    refused any that would loosen these).
    """
    options: dict = {"socket_connect_timeout": 5, "decode_responses": False}
    if read_timeout is not None:
        options["socket_timeout"] = read_timeout
    if url.startswith("rediss://"):
        options.update(ssl_cert_reqs="required", ssl_check_hostname=True, ssl_min_version=MIN_TLS)
    return options


def tls_failure(exc: BaseException) -> str | None:
    """A one-line reason when ``exc`` (or what caused it) is a TLS failure, else None."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({exc.verify_message}); check the CA file (ssl_ca_certs)"
        if isinstance(exc, ssl.SSLError):
            return f"TLS failed ({exc.reason or type(exc).__name__})"
        text = str(exc)
        if "certificate verify failed" in text or "CERTIFICATE_VERIFY_FAILED" in text:
            return "TLS certificate verification failed; check the CA file (ssl_ca_certs)"
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None

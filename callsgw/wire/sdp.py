"""SDP pieces both roles read alike: the error, the size bound, ``a=setup``, BUNDLE, fingerprints.

The gateway (:mod:`callsgw.sdp`: offers it answers as the ICE-lite DTLS
server) and the client (:mod:`callsgw.client.sdp`: answers and offers it
gets from the gateway) each keep their own checks and messages; what they
read the same way lives here. Parsing itself is aiortc's ``aiortc.sdp``.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiortc import sdp as aiosdp

from callsgw.dtls.certificate import parse_fingerprint

__all__ = ["MAX_SDP_BYTES", "SdpError", "bundle_mids", "raw_setups", "sha256_fingerprints"]

MAX_SDP_BYTES = 64 * 1024  # largest session description either side accepts (UTF-8 bytes)


class SdpError(ValueError):
    """The session description is malformed or not acceptable."""


def raw_setups(text: str) -> set[str]:
    """Every ``a=setup`` value in ``text``, lower-cased (RFC 4145 section 4).

    Read from the text because aiortc maps ``actpass`` and ``active`` to the
    same DTLS role, and both roles must tell them apart.
    """
    return {
        line.strip()[len("a=setup:"):].strip().lower()
        for line in text.splitlines()
        if line.strip().lower().startswith("a=setup:")
    }


def bundle_mids(desc: aiosdp.SessionDescription) -> tuple[str, ...]:
    """The mids of the first ``a=group:BUNDLE`` (RFC 9143), or ``()`` when there is none."""
    bundle = next((g for g in desc.group if g.semantic == "BUNDLE"), None)
    return tuple(str(m) for m in bundle.items) if bundle is not None else ()


def sha256_fingerprints(fingerprints: Iterable[aiosdp.RTCDtlsFingerprint]) -> set[str]:
    """The canonical ``AB:CD:...`` form of the sha-256 ones (RFC 8122 section 5); others are ignored.

    Raises ``ValueError`` (from :func:`callsgw.dtls.certificate.parse_fingerprint`)
    for a malformed sha-256 value; callers say where it was.
    """
    return {
        parse_fingerprint(f"{fp.algorithm} {fp.value}")
        for fp in fingerprints
        if fp.algorithm.lower() == "sha-256"
    }

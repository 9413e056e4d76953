"""Kill network paths inside the test namespace with nftables (``scripts/test.sh`` runs pytest under
``unshare -n``, so the rules never touch the host; outside such a namespace the tests that need
them skip)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess

import pytest

NFT = shutil.which("nft") or "/usr/sbin/nft"


def private_namespace() -> bool:
    """True when ``lo`` is the only interface: the namespace ``scripts/test.sh`` makes."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


@contextlib.contextmanager
def blocked(port: int, direction: str, proto: str = "udp"):
    """Drop ``proto`` packets leaving (``"out"``: source port) or arriving at (``"in"``: destination port) ``port``.

    Locally sent packets dropped on output make ``sendto``/``connect`` fail with EPERM, which is
    what a program sees when its network is gone.
    """
    if not private_namespace():
        pytest.skip("firewall rules are only set inside a private network namespace (scripts/test.sh)")
    table = f"callsgw_test_{proto}_{direction}_{port}"
    hook, match = ("output", "sport") if direction == "out" else ("input", "dport")
    subprocess.run([NFT, "add", "table", "inet", table], check=True)
    try:
        subprocess.run([NFT, "add", "chain", "inet", table, "c", f"{{ type filter hook {hook} priority 0; }}"],
                       check=True)
        subprocess.run([NFT, "add", "rule", "inet", table, "c", proto, match, str(port), "drop"], check=True)
        yield
    finally:
        subprocess.run([NFT, "delete", "table", "inet", table], check=True)

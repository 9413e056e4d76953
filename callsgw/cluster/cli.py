"""``callsgw cluster-key`` and ``callsgw cluster``: the operators' view of the cluster (issue #15).

``cluster-key status`` prints the AES size and a short SHA-256 fingerprint of
the ``ClusterEncryptionKey`` (and of the previous keys still in their grace
period), never a key. ``cluster-key rotate`` makes a new primary key; the old
one keeps opening messages for ``--grace`` seconds. Both work on the database
the ``database`` setting names (the cluster's PostgreSQL).

``cluster status`` lists the nodes registered in Redis (the ``cluster``
setting): state, advertised URL, media addresses, load; plus the key's size
and fingerprint. ``--json`` gives the same document as ``GET /api/v1/cluster``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from types import SimpleNamespace

from callsgw.config import CONFIG_ENV, CONFIG_FILE_NAME, ConfigError, load_config, setting_specs

EXIT_OK = 0
EXIT_FAILURE = 1


class UsageError(ConfigError):
    """A cluster command was used wrongly: ``callsgw`` prints it as one line, exit 2."""

    def __init__(self, message: str):
        super().__init__(message)


def _specs_by_name():
    return {spec.name: spec for spec in setting_specs()}


def _add_setting_option(parser: argparse.ArgumentParser, spec) -> None:
    """The same option ``callsgw serve`` has for this setting (flag, help, environment, TOML key)."""
    text = f"{spec.doc} Default: {spec.default_text}. Environment: {spec.env}. TOML key: {spec.name}."
    parser.add_argument(spec.flag, dest=spec.name, metavar=spec.metavar, default=None, help=text.replace("%", "%%"))


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", default=None,
                        help=f"TOML settings file. Default: ${CONFIG_ENV} if set, else {CONFIG_FILE_NAME} in the "
                        "data directory if it exists.")


def _load(args: argparse.Namespace, names):
    flags = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return load_config(flags, os.environ, args.config)


def _store(config):
    from callsgw.security.db import StoreError, open_store

    try:
        return open_store(config.database, config.data_dir)
    except (StoreError, OSError) as exc:
        raise UsageError(f"cannot open the database: {' '.join(str(exc).split())}") from None


def _key_arguments(parser: argparse.ArgumentParser) -> None:
    specs = _specs_by_name()
    actions = parser.add_subparsers(dest="key_action", metavar="{status,rotate}", required=True)
    status = actions.add_parser(
        "status", help="the key's AES size and SHA-256 fingerprint (never the key)",
        description="Print the ClusterEncryptionKey's AES size and the first 8 bytes of its SHA-256, and "
        "the same for previous keys still accepted during a rotation's grace period. Never a key.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    rotate = actions.add_parser(
        "rotate", help="make a new primary key; the old one opens messages for --grace seconds",
        description="Write a new random 32-byte ClusterEncryptionKey (AES-256) as the primary. Running "
        "nodes load it within a second and seal with it a few seconds later; the previous key keeps "
        "opening messages for the grace period. With a leaked key use --grace 0.",
    )
    rotate.add_argument("--grace", metavar="SECONDS", type=float, default=None,
                        help="How long the previous key still opens messages (default 300).")
    for sub in (status, rotate):
        _add_setting_option(sub, specs["data_dir"])
        _add_setting_option(sub, specs["database"])
        _add_config_option(sub)


def _run_key(args: argparse.Namespace) -> int:
    from callsgw.cluster import keys

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config = _load(args, ("data_dir", "database"))
    store = _store(config)
    now = time.time()
    try:
        if args.key_action == "rotate":
            grace = keys.DEFAULT_GRACE if args.grace is None else args.grace
            if not (math.isfinite(grace) and grace >= 0):
                raise UsageError(f"--grace must be 0 or more seconds, got {args.grace!r}")
            keyring = keys.rotate_keyring(store, grace=grace, now=now)
            print(f"rotated the cluster key: new primary {keyring.primary.algorithm} {keyring.primary.fingerprint}"
                  + (f"; the previous key opens messages for {grace:g} more seconds" if grace else
                     "; the previous key no longer opens anything"), file=sys.stderr)
            return EXIT_OK
        keyring = keys.read_keyring(store)
    finally:
        store.close()
    if keyring is None:
        print(f"there is no {keys.KEY_ROW} yet: the first `callsgw serve --cluster` node makes it",
              file=sys.stderr)
        return EXIT_FAILURE
    info = keyring.describe(now)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"{keys.KEY_ROW}: {info['algorithm']}, SHA-256 fingerprint {info['fingerprint']}")
    if info["sealing"] != info["fingerprint"]:
        print(f"  (new primary: messages are sealed with {info['sealing']} until "
              f"{_when(info['activate_at'])})")
    for prev in info["previous"]:
        print(f"previous key: {prev['algorithm']}, SHA-256 fingerprint {prev['fingerprint']}, "
              f"opens messages until {_when(prev['until'])}")
    return EXIT_OK


def _when(unix: float | None) -> str:
    return "-" if unix is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))


KEY_COMMAND = SimpleNamespace(
    NAME="cluster-key",
    SUMMARY="status or rotation of the ClusterEncryptionKey (never shown)",
    DESCRIPTION="The ClusterEncryptionKey (Systems table of the database setting) seals every message "
    "between cluster nodes. `status` prints its AES size and fingerprint; `rotate` makes a new one.",
    add_arguments=_key_arguments,
    run=_run_key,
)


# -- cluster status ------------------------------------------------------------------------------


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    specs = _specs_by_name()
    actions = parser.add_subparsers(dest="cluster_action", metavar="{status,drain}", required=True)
    status = actions.add_parser(
        "status", help="nodes, states, loads, calls per node, the key's size and fingerprint",
        description="List the nodes registered in Redis (cluster setting) with their state, URL, media "
        "addresses and load, and the ClusterEncryptionKey's size and fingerprint (database setting).",
    )
    status.add_argument("--json", action="store_true", help="print JSON (the document of GET /api/v1/cluster)")
    drain = actions.add_parser(
        "drain", help="no new calls for NODE (its calls stay); --undo takes it back",
        description="Ask the node NODE to drain: within one heartbeat (2 s) it is 'draining' and gets no new "
        "calls; its calls stay. The request is sealed in Redis under an HMAC name; --undo withdraws it.",
    )
    drain.add_argument("node", metavar="NODE", help="the node id (see cluster status)")
    drain.add_argument("--undo", action="store_true", help="withdraw the request: the node takes new calls again")
    for sub in (status, drain):
        for name in ("data_dir", "database", "cluster", "cluster_name"):
            _add_setting_option(sub, specs[name])
        _add_config_option(sub)


def _run_cluster(args: argparse.Namespace) -> int:
    import asyncio

    from callsgw.cluster import ClusterError, keys
    from callsgw.cluster.node import read_cluster_status

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config = _load(args, ("data_dir", "database", "cluster", "cluster_name"))
    if not config.cluster:
        raise UsageError(f"cluster {args.cluster_action} needs the cluster setting (--cluster redis://HOST:6379/0)")
    store = _store(config)
    try:
        keyring = keys.read_keyring(store)
    finally:
        store.close()
    if keyring is None:
        print(f"there is no {keys.KEY_ROW} yet: no cluster node has started", file=sys.stderr)
        return EXIT_FAILURE
    try:
        if args.cluster_action == "drain":
            from callsgw.cluster.node import request_drain

            asyncio.run(request_drain(config, keyring, args.node, undo=args.undo))
            print(f"node {args.node}: drain request {'withdrawn' if args.undo else 'stored'}; the node follows "
                  "within one heartbeat (2 s)", file=sys.stderr)
            return EXIT_OK
        doc = asyncio.run(read_cluster_status(config, keyring))
    except ClusterError as exc:
        print(f"callsgw cluster: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return EXIT_OK
    key = doc["key"]
    print(f"cluster {doc['cluster']}: {len(doc['nodes'])} node(s); key {key['algorithm']} {key['fingerprint']}")
    print(f"{'node':<24} {'state':<9} {'calls':>5} {'parts':>5} {'pkt/s':>8} {'cpu':>5}  url")
    for node in doc["nodes"]:
        load = node["load"]
        print(f"{node['node_id']:<24} {node['state']:<9} {load['calls']:>5} {load['participants']:>5} "
              f"{load['forwarded_pps']:>8.0f} {load['cpu']:>5.2f}  {node['url']}")
    if doc["unreadable"]:
        print(f"{doc['unreadable']} registry entr{'y' if doc['unreadable'] == 1 else 'ies'} could not be opened "
              "(another key, tampered, or stale)", file=sys.stderr)
    return EXIT_OK


CLUSTER_COMMAND = SimpleNamespace(
    NAME="cluster",
    SUMMARY="the cluster's nodes, states and loads (status [--json])",
    DESCRIPTION="Operators' view of a cluster of gateways (serve --cluster).",
    add_arguments=_cluster_arguments,
    run=_run_cluster,
)

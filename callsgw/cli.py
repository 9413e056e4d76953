"""The ``callsgw`` command: ``serve`` runs the gateway, ``token`` mints access tokens.

Subcommands live in :data:`COMMANDS`, a registry of :class:`Command` entries
(name, one-line summary, description, an ``add_arguments`` hook and a ``run``
function returning the exit status); a new subcommand is one more
:func:`register` call. ``serve``'s options are generated from the documented
fields of :class:`callsgw.config.Config`, so ``--help`` always lists every
setting with its default, environment variable and TOML key.

Exit status: 0 success, 1 runtime failure (e.g. the port is taken, the records
database server is unreachable), 2 usage or configuration error, or a data
directory (secrets, certificate, records database and its journals) refused
as unsafe (one line on stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from callsgw import __version__, tls
from callsgw.config import CONFIG_ENV, CONFIG_FILE_NAME, ConfigError, load_config, setting_specs
from callsgw.datadir import DataDir, DataDirError
from callsgw.signaling import tokens
from callsgw.tls import TlsConfigError

PROG = "callsgw"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool whose reader went away

log = logging.getLogger("callsgw.cli")

_PRECEDENCE = (
    "Settings come from, lowest precedence first: built-in defaults; a TOML file "
    f"(--config PATH, else ${CONFIG_ENV}, else <data dir>/{CONFIG_FILE_NAME}) using the TOML "
    "keys named above; the environment variables named above; then these flags."
)


class UsageError(Exception):
    """A command was used wrongly; the message is printed as one line, exit 2."""


@dataclass(frozen=True)
class Command:
    """One subcommand of ``callsgw``."""

    name: str
    summary: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}
"""Subcommands by name, in registration order (the order of ``--help``)."""


def register(command: Command) -> Command:
    """Add ``command`` to :data:`COMMANDS`; a name may be registered once."""
    if command.name in COMMANDS:
        raise ValueError(f"subcommand {command.name!r} is already registered")
    COMMANDS[command.name] = command
    return command


def build_parser() -> argparse.ArgumentParser:
    """The ``callsgw`` parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="callsgw: WebRTC calls media security gateway.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for command in COMMANDS.values():
        sp = sub.add_parser(command.name, help=command.summary, description=command.description)
        command.add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``callsgw`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's own usage error
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        status = COMMANDS[args.command].run(args)
        sys.stdout.flush()  # here, not at exit: a reader gone is then caught below
        return status
    except (ConfigError, DataDirError, TlsConfigError, UsageError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`... --json | head`): stop quietly, as other tools do; what is still
        # buffered goes nowhere instead of raising again when the interpreter flushes at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


# -- shared options ---------------------------------------------------------------


def _specs_by_name():
    return {spec.name: spec for spec in setting_specs()}


def _setting_help(spec) -> str:
    text = (
        f"{spec.doc} Default: {spec.default_text}. "
        f"Environment: {spec.env}. TOML key: {spec.name}."
    )
    return text.replace("%", "%%")


def _add_setting_option(parser: argparse.ArgumentParser, spec) -> None:
    if spec.kind == "bool":
        parser.add_argument(
            spec.flag,
            dest=spec.name,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=_setting_help(spec),
        )
    else:
        parser.add_argument(
            spec.flag, dest=spec.name, metavar=spec.metavar, default=None, help=_setting_help(spec)
        )


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=f"TOML settings file. Default: ${CONFIG_ENV} if set, else {CONFIG_FILE_NAME} in the "
        "data directory if it exists.",
    )


def _flag_values(args: argparse.Namespace, names) -> dict[str, object]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


# -- serve ------------------------------------------------------------------------


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _PRECEDENCE
    _add_config_option(parser)
    for spec in setting_specs():
        _add_setting_option(parser, spec)


def _run_serve(args: argparse.Namespace) -> int:
    config = load_config(_flag_values(args, _specs_by_name()), os.environ, args.config)
    _setup_logging(config.log_level)
    datadir = DataDir(config.data_dir)
    datadir.api_secret()
    datadir.admin_key()
    scheme = "https"
    served = tls.certificate_for(config)
    if served is None:
        scheme = "http"
        log.warning(
            "plain_ws: serving http:// and ws:// without TLS on %s:%d; a proxy must terminate TLS",
            config.listen_host, config.port,
        )
        if not config.listen_is_loopback:
            log.warning("plain_ws on %s: unencrypted signaling is reachable from the network", config.listen_host)
    else:
        cert_path, key_path, info = served
        tls.server_ssl_context(cert_path, key_path)  # OpenSSL must accept the pair too
        config = dataclasses.replace(config, tls_cert=cert_path, tls_key=key_path)
        log.info(
            "TLS certificate %s: %s-%d, subject %s, valid until %s, SHA-256 %s",
            cert_path, info.key_type, info.key_bits, info.subject,
            info.not_after.strftime("%Y-%m-%d"), info.fingerprint_sha256,
        )
    if config.demo:
        exposure = (
            f"on loopback only ({config.listen_host})"
            if config.listen_is_loopback
            else f"ON {config.listen_host}, REACHABLE FROM THE NETWORK"
        )
        print(
            f"{PROG}: WARNING: DEMO MODE {exposure}: the {scheme} web page hands out call tokens "
            "to anybody who opens it. Never use it in production.",
            file=sys.stderr,
            flush=True,
        )
    app = importlib.import_module("callsgw.server.app")
    from callsgw.cluster import ClusterError
    from callsgw.security.db import StoreError, StoreUnavailable

    try:
        asyncio.run(app.serve(config))
    except OSError as exc:
        print(f"{PROG} serve: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except DataDirError:
        raise  # main() reports it (a refused records file is one too): one line, exit 2
    except StoreError as exc:  # the records database refused: one line; a server down may come back
        print(f"{PROG} serve: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILURE if isinstance(exc, StoreUnavailable) else EXIT_USAGE
    except ClusterError as exc:  # Redis unreachable or refusing (cluster mode): may work on a retry
        print(f"{PROG} serve: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


register(
    Command(
        name="serve",
        summary="run the gateway (HTTPS page, WSS signaling, admin API, UDP media)",
        description="Run the gateway: the web page at https://HOST:PORT/, signaling at "
        "wss://HOST:PORT/ws and the admin API under /api/ on one TCP port, and all media "
        "on one UDP port. The data directory, API secret, admin key and default TLS "
        "certificate are made on first start. Stops on SIGINT/SIGTERM: joins stop, "
        "clients get bye, calls drain for shutdown_grace seconds.",
        add_arguments=_serve_arguments,
        run=_run_serve,
    )
)


# -- token ------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 second, got {text!r}")
    return value


def _token_arguments(parser: argparse.ArgumentParser) -> None:
    specs = _specs_by_name()
    parser.epilog = (
        "Revoke a token: callsgw token revoke TOKEN-OR-JTI. The token's jti goes on the deny-list in "
        "the records database (until the token would have expired); a running gateway ends every "
        "session that uses it within a few seconds and refuses it from then on. Give the token "
        "itself when you have it (its expiry is then known), else its jti."
    )
    actions = parser.add_subparsers(dest="token_action", metavar="{revoke}")
    revoke = actions.add_parser(
        "revoke", help="put a token on the deny-list (by the token itself, or its jti)",
        description="Put a token on the gateway's deny-list, kept in the records database "
        "(database setting). A running gateway picks it up within a few seconds, ends the "
        "sessions that use it (close 4001) and refuses it from then on.",
    )
    revoke.add_argument("which", metavar="TOKEN-OR-JTI",
                        help="the token (three dot-separated parts), or the jti claim of one")
    _add_setting_option(revoke, specs["data_dir"])
    _add_setting_option(revoke, specs["database"])
    _add_setting_option(revoke, specs["cluster"])
    _add_config_option(revoke)
    parser.add_argument(
        "--call",
        metavar="ID",
        help=f"Call id the token admits to: 1 to {tokens.MAX_CALL_ID_LENGTH} characters of "
        "A-Z a-z 0-9 . _ -.",
    )
    parser.add_argument(
        "--name",
        metavar="NAME",
        help=f"Display name of the participant, 1 to {tokens.MAX_NAME_LENGTH} characters.",
    )
    parser.add_argument(
        "--sub",
        metavar="ID",
        default=None,
        help="Participant identity (the sub claim), unique per participant. "
        "Default: a random id.",
    )
    parser.add_argument(
        "--ttl",
        metavar="SECONDS",
        type=_seconds,
        default=None,
        help=f"Lifetime of the token in seconds, at most the max_token_ttl setting "
        f"({specs['max_token_ttl'].default_text} unless configured). Default: the token_ttl setting "
        f"({specs['token_ttl'].default_text} unless configured; {specs['token_ttl'].env}).",
    )
    parser.add_argument(
        "--link",
        metavar="URL",
        default=None,
        help="Print a ready join link to the gateway's page at URL (e.g. https://gw.example:8443/) "
        "instead of the bare token. Call, name and token travel in the URL fragment (#...), "
        "which browsers never send to a server or proxy; the page asks for one click before it "
        "opens the microphone.",
    )
    parser.add_argument(
        "--no-voice",
        action="store_true",
        help="Do not grant publish_voice: the participant may listen but not send audio.",
    )
    parser.add_argument(
        "--no-screen",
        action="store_true",
        help="Do not grant publish_screen: the participant may not share a screen.",
    )
    _add_setting_option(parser, specs["data_dir"])
    _add_setting_option(parser, specs["database"])
    _add_setting_option(parser, specs["cluster"])
    _add_config_option(parser)


def api_secrets_for(config):
    """The API secrets of these settings: the shared database's Systems rows in cluster mode,
    else the data directory's files. Returns ``(secrets, close)``."""
    from callsgw.apisecrets import ApiSecrets, SystemsApiSecrets

    if not config.cluster:
        return ApiSecrets(DataDir(config.data_dir)), lambda: None
    from callsgw.security.db import StoreError, open_store

    try:
        store = open_store(config.database, config.data_dir)
    except (StoreError, OSError) as exc:
        raise UsageError(f"cannot open the cluster database: {' '.join(str(exc).split())}") from None
    try:
        return SystemsApiSecrets(store), store.close
    except BaseException:
        store.close()
        raise


def join_link(base: str, *, call: str, name: str, token: str) -> str:
    """A link to the page at ``base`` that joins ``call`` as ``name``: all of it in the fragment."""
    from urllib.parse import urlencode, urlsplit, urlunsplit

    parts = urlsplit(base)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise UsageError(f"--link needs the page's http(s) URL, e.g. https://gw.example:8443/, got {base!r}")
    if parts.fragment:
        raise UsageError("--link URL must not have a fragment (#...): the link puts the token there")
    fragment = urlencode({"call": call, "name": name, "token": token})
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, fragment))


def _run_token(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.token_action == "revoke":
        return _run_token_revoke(args)
    missing = [flag for flag, value in (("--call", args.call), ("--name", args.name)) if value is None]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    config = load_config(_flag_values(args, ("data_dir", "database", "cluster")), os.environ, args.config)
    ttl = config.token_ttl if args.ttl is None else args.ttl
    if ttl > config.max_token_ttl:
        raise UsageError(
            f"--ttl {ttl:g} is longer than max_token_ttl ({config.max_token_ttl:g} s): the gateway "
            "would refuse the token; raise max_token_ttl if you really mean it"
        )
    api_secrets, close = api_secrets_for(config)
    try:
        secret = api_secrets.current()
    finally:
        close()
    perms = [
        perm
        for perm, dropped in (("publish_voice", args.no_voice), ("publish_screen", args.no_screen))
        if not dropped
    ]
    try:
        token = tokens.mint(
            secret,
            call=args.call,
            name=args.name,
            sub=args.sub,
            perms=perms,
            ttl=ttl,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.link is not None:
        token = join_link(args.link, call=args.call, name=args.name, token=token)
    sys.stdout.write(token + "\n")
    sys.stdout.flush()
    return EXIT_OK


def _run_token_revoke(args: argparse.Namespace) -> int:
    import time

    from callsgw.security.db import StoreError, open_store

    config = load_config(_flag_values(args, ("data_dir", "database", "cluster")), os.environ, args.config)
    now = time.time()
    which = args.which.strip()
    if which.count(".") == 2:
        api_secrets, close = api_secrets_for(config)
        try:
            keys = api_secrets.verification_keys(now)
        finally:
            close()
        try:
            claims = tokens.verify(keys, which, now=now)
        except tokens.ExpiredToken:
            print("that token has already expired: no gateway accepts it, nothing to revoke", file=sys.stderr)
            return EXIT_OK
        except tokens.TokenError as exc:
            raise UsageError(f"that token cannot be revoked here: {exc}") from None
        if claims.jti is None:
            raise UsageError(
                "that token has no jti (minted before revocation existed): rotate the API secret "
                "instead (callsgw api-secret rotate --grace 0)"
            )
        jti, until = claims.jti, claims.exp
    else:
        jti, until = which, now + config.max_token_ttl  # no token lives longer than that
    try:
        store = open_store(config.database, config.data_dir)
    except (StoreError, OSError) as exc:
        raise UsageError(f"cannot open the records database: {exc}") from None
    try:
        store.revoke(jti, until, now=now)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()
    print(f"revoked token {jti} (denied until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(until))}); "
          "a running gateway ends its sessions within a few seconds", file=sys.stderr)
    return EXIT_OK


register(
    Command(
        name="token",
        summary="mint an access token for one participant of one call",
        description="Mint an HS256 access token signed with the data directory's API secret "
        "(made if missing) and print it alone on stdout. By default it grants both "
        "publish_voice and publish_screen.",
        add_arguments=_token_arguments,
        run=_run_token,
    )
)


# -- commands that live in their own modules ---------------------------------------


def register_module(module) -> None:
    """Register a command module exposing NAME, SUMMARY, DESCRIPTION, add_arguments and run."""
    register(
        Command(
            name=module.NAME,
            summary=module.SUMMARY,
            description=module.DESCRIPTION,
            add_arguments=module.add_arguments,
            run=module.run,
        )
    )


def _register_modules() -> None:
    from callsgw import inspect_cli
    from callsgw.security import audit as audit_cli

    register_module(inspect_cli)
    register_module(audit_cli)
    from callsgw.cluster import cli as cluster_cli

    register_module(cluster_cli.KEY_COMMAND)
    register_module(cluster_cli.CLUSTER_COMMAND)
    try:
        from loadtest import cli as loadtest_cli
    except ImportError:  # an install made before loadtest/ existed: every other command still works
        return
    register_module(loadtest_cli)


_register_modules()


def _admin_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="the data directory (default: the configured data_dir)")
    parser.add_argument("--config", help="settings file (TOML)")
    parser.add_argument("--rotate", action="store_true",
                        help="make a new admin key, print it once, and stop accepting the old one")


def _run_admin_key(args: argparse.Namespace) -> int:
    flags = {"data_dir": args.data_dir} if args.data_dir else {}
    config = load_config(flags, os.environ, args.config)
    datadir = DataDir(config.data_dir)
    if args.rotate:
        key = datadir.rotate_admin_key()
        print(key)
        print("the old admin key no longer works; this one is shown only now", file=sys.stderr)
        return EXIT_OK
    key = datadir.admin_key(announce=False)
    if key is not None:
        print(key)
        print("made a new admin key; it is shown only now (only its SHA-256 is kept)", file=sys.stderr)
        return EXIT_OK
    print(
        f"the admin key is stored only as a SHA-256 hash in {datadir.path}, so it cannot be shown: "
        "it was printed when it was made. Run `callsgw admin-key --rotate` to make a new one "
        "(the old one stops working).",
        file=sys.stderr,
    )
    return EXIT_OK


register(
    Command(
        name="admin-key",
        summary="make or rotate the admin API key (only its hash is stored)",
        description="The admin API and /metrics need the admin key (Authorization: Bearer KEY). "
        "The data directory keeps only its SHA-256, so an existing key cannot be shown again: "
        "without options this makes a key if there is none (and prints it once), else explains; "
        "--rotate makes and prints a new key and invalidates the old one.",
        add_arguments=_admin_key_arguments,
        run=_run_admin_key,
    )
)


# -- api-secret -----------------------------------------------------------------------


def _api_secret_arguments(parser: argparse.ArgumentParser) -> None:
    specs = _specs_by_name()
    actions = parser.add_subparsers(dest="secret_action", metavar="{rotate}", required=True)
    rotate = actions.add_parser(
        "rotate", help="make a new API secret; the old one verifies for --grace seconds",
        description="Make a new API secret, which signs every token from now on. Tokens "
        "signed with the old secret keep verifying for the grace period, then stop. A running "
        "gateway picks the new secret up within a second. With a leaked secret use --grace 0.",
    )
    rotate.add_argument("--grace", metavar="SECONDS", type=float, default=None,
                        help="How long tokens signed with the old secret still verify. Default: "
                        "the token_ttl setting (so tokens handed out just before keep working).")
    _add_setting_option(rotate, specs["data_dir"])
    _add_setting_option(rotate, specs["database"])
    _add_setting_option(rotate, specs["cluster"])
    _add_config_option(rotate)


def _run_api_secret(args: argparse.Namespace) -> int:
    import time

    config = load_config(_flag_values(args, ("data_dir", "database", "cluster")), os.environ, args.config)
    grace = config.token_ttl if args.grace is None else args.grace
    if not (math.isfinite(grace) and grace >= 0):
        raise UsageError(f"--grace must be 0 or more seconds, got {args.grace!r}")
    api_secrets, close = api_secrets_for(config)
    try:
        api_secrets.rotate(grace=grace, now=time.time())
    finally:
        close()
    if grace:
        print(f"rotated the API secret; tokens signed with the old one verify for {grace:g} more seconds",
              file=sys.stderr)
    else:
        print("rotated the API secret; tokens signed with the old one no longer verify", file=sys.stderr)
    return EXIT_OK


register(
    Command(
        name="api-secret",
        summary="rotate the API secret that signs tokens (with a grace period)",
        description="The API secret (api_secret in the data directory) signs every access token. "
        "`rotate` replaces it; the old one keeps verifying for a grace period.",
        add_arguments=_api_secret_arguments,
        run=_run_api_secret,
    )
)


if __name__ == "__main__":
    sys.exit(main())

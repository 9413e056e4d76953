"""The data directory: where the gateway keeps its secrets and certificate.

``serve``, ``token`` and every other command find their state through one
setting, ``data_dir`` (:mod:`callsgw.config`). The directory holds:

=================  ==========================================================
``api_secret``     32 random bytes, the HS256 key that signs access tokens
                   (RFC 7518 section 3.2: at least the hash output size)
``admin_key.sha256``  the SHA-256 (hex) of the admin key that authorises the
                   admin API; the key itself is shown once, when made, and
                   never kept (``callsgw admin-key --rotate`` makes a new one)
``admin_key.new``  the new admin key, written only when it was made while
                   stderr was not a terminal (journald, ``docker logs``): the
                   operator reads it and deletes it (see :meth:`DataDir.admin_key`)
``tls_cert.pem``   the default self-signed certificate (:mod:`callsgw.tls`)
``tls_key.pem``    its private key
``node_id``        this node's stable id in a cluster (``serve --cluster``,
                   issue #15), made on first use unless node_id is set
``callsgw.toml``   optional settings file, written by the operator
=================  ==========================================================

Every file is made on first use with mode 0600 inside a 0700 directory, and
written atomically: the bytes go to a temporary file created with
``O_CREAT | O_EXCL`` and mode 0600, which is then linked (first writer wins,
so two commands starting at once agree on one secret) or renamed into place.
A directory or file owned by another user is refused; group or world access
is removed with a warning. Secret values are never logged, and never
appear in ``repr``.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

API_SECRET_FILE = "api_secret"
ADMIN_KEY_FILE = "admin_key.sha256"
ADMIN_KEY_HANDOFF_FILE = "admin_key.new"
LEGACY_ADMIN_KEY_FILE = "admin_key"
TLS_CERT_FILE = "tls_cert.pem"
TLS_KEY_FILE = "tls_key.pem"
NODE_ID_FILE = "node_id"

API_SECRET_BYTES = 32
"""Length of the token-signing key: 256 bits for HS256 (RFC 7518 section 3.2)."""

ADMIN_KEY_BYTES = 32
"""Random bytes behind the admin key (43 URL-safe characters)."""

MAX_FILE_SIZE = 1 << 20
"""Largest file read from the data directory (certificates with long chains fit)."""

DIR_MODE = 0o700
FILE_MODE = 0o600

_ADMIN_KEY_RE = re.compile(rb"[A-Za-z0-9_-]{43,}")
_DIGEST_RE = re.compile(rb"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NODE_ID_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\n?")


def _new_admin_key() -> str:
    """A random admin key. The "cgw_" prefix keeps it from starting with "-"
    (a command line would take it for an option) and lets secret scanners
    recognise it."""
    return "cgw_" + secrets.token_urlsafe(ADMIN_KEY_BYTES)


class DataDirError(RuntimeError):
    """The data directory or one of its files cannot be used safely."""


class DataDir:
    """One data directory, created (mode 0700) and checked on construction.

    The secret accessors make their file on first use and return the same
    value on every later call, from this or any other instance.
    """

    def __init__(self, path: os.PathLike[str] | str):
        self.path = Path(path).expanduser().absolute()
        self._api_secret: bytes | None = None
        self._prepare_directory()

    def __repr__(self) -> str:
        return f"DataDir({str(self.path)!r})"

    # -- secrets -------------------------------------------------------------

    def api_secret(self) -> bytes:
        """The 32-byte HS256 key that signs and checks access tokens."""
        if self._api_secret is None:
            self._api_secret = self._secret(
                API_SECRET_FILE,
                make=lambda: secrets.token_bytes(API_SECRET_BYTES),
                valid=lambda data: len(data) == API_SECRET_BYTES,
                expected=f"exactly {API_SECRET_BYTES} bytes",
            )
        return self._api_secret

    def node_id(self) -> str:
        """This node's stable cluster id: ``node-`` and 12 random hex digits, made on first use."""
        data = self._secret(
            NODE_ID_FILE,
            make=lambda: f"node-{secrets.token_hex(6)}\n".encode("ascii"),
            valid=lambda data: _NODE_ID_RE.fullmatch(data) is not None,
            expected="one id of 1 to 64 characters of A-Z a-z 0-9 . _ -",
        )
        return data.decode("ascii").strip()

    def admin_key(self, *, announce: bool = True) -> str | None:
        """Make the admin key if there is none; return it only if this call made it.

        Only the key's SHA-256 is kept (``admin_key.sha256``), so an existing
        key cannot be shown again: the return value is ``None`` then. A new
        key is returned and, with ``announce``, handed to the operator once
        (:meth:`_hand_over_admin_key`): on a terminal it is printed on stderr;
        otherwise stderr is a log stream that journald or ``docker logs``
        keeps, so the key goes to ``admin_key.new`` (mode 0600) and only that
        file's path is logged. A plain ``admin_key`` file from an older
        version is replaced by its hash (the key stays valid).
        """
        if self._admin_digest() is not None:
            handoff = self.path / ADMIN_KEY_HANDOFF_FILE
            if os.path.lexists(handoff):
                log.warning("%s still holds the admin key in clear: read it, then delete it", handoff)
            return None
        legacy = self.read_private_file(LEGACY_ADMIN_KEY_FILE)
        if legacy is not None and _ADMIN_KEY_RE.fullmatch(legacy.strip()):
            try:
                self.write_private_file(ADMIN_KEY_FILE, _digest_line(legacy.strip()))
            except FileExistsError:
                pass
            _unlink_quietly(self.path / LEGACY_ADMIN_KEY_FILE)
            log.warning("the admin key in %s was replaced by its SHA-256 hash in %s; the key stays "
                        "valid (run `callsgw admin-key --rotate` if you no longer have it)",
                        self.path / LEGACY_ADMIN_KEY_FILE, self.path / ADMIN_KEY_FILE)
            return None
        key = _new_admin_key()
        try:
            self.write_private_file(ADMIN_KEY_FILE, _digest_line(key.encode("ascii")))
        except FileExistsError:
            return None  # made concurrently by another process: that one wins
        log.info("created %s in %s", ADMIN_KEY_FILE, self.path)
        if announce:
            self._hand_over_admin_key(key)
        return key

    def _hand_over_admin_key(self, key: str) -> None:
        """Show a new admin key once: on stderr if it is a terminal, else in ``admin_key.new``."""
        if _is_terminal(sys.stderr):
            _announce_admin_key(key, self.path / ADMIN_KEY_FILE)
            return
        path = self.write_private_file(ADMIN_KEY_HANDOFF_FILE, key.encode("ascii") + b"\n", replace=True)
        log.warning(
            "made a new admin key; stderr is not a terminal, so it is not printed but written to %s "
            "(mode 0600, only its SHA-256 is kept in %s): read it, then delete that file",
            path, ADMIN_KEY_FILE,
        )

    def rotate_admin_key(self) -> str:
        """Replace the admin key with a new one and return it (the old one stops working)."""
        key = _new_admin_key()
        self.write_private_file(ADMIN_KEY_FILE, _digest_line(key.encode("ascii")), replace=True)
        _unlink_quietly(self.path / LEGACY_ADMIN_KEY_FILE)
        _unlink_quietly(self.path / ADMIN_KEY_HANDOFF_FILE)  # it held the old key
        log.info("rotated %s in %s", ADMIN_KEY_FILE, self.path)
        return key

    def has_admin_key(self) -> bool:
        return self._admin_digest() is not None

    def check_admin_key(self, presented: str | bytes | None) -> bool:
        """Whether ``presented`` is the admin key: SHA-256 digests compared in constant time.

        The stored hash is read on every call, so a rotation takes effect at
        once in a running gateway. With no key (or no presented key) the same
        work is done against a random digest and the answer is ``False``.
        """
        stored = self._admin_digest()
        if isinstance(presented, str):
            presented = presented.encode("utf-8", "surrogateescape")
        candidate = hashlib.sha256(presented or b"").digest()
        ok = hmac.compare_digest(candidate, stored if stored is not None else secrets.token_bytes(32))
        return ok and stored is not None and bool(presented)

    def _admin_digest(self) -> bytes | None:
        data = self.read_private_file(ADMIN_KEY_FILE)
        if data is None:
            return None
        if not _DIGEST_RE.fullmatch(data.strip()):
            raise DataDirError(
                f"{self.path / ADMIN_KEY_FILE} is corrupt (expected a SHA-256 in hex); delete it and run "
                "`callsgw admin-key --rotate` to make a new admin key"
            )
        return bytes.fromhex(data.strip().decode("ascii"))

    def tls_paths(self) -> tuple[Path, Path]:
        """``(cert_path, key_path)`` of the default certificate; see
        :func:`callsgw.tls.ensure_default_certificate`, which makes them."""
        return self.path / TLS_CERT_FILE, self.path / TLS_KEY_FILE

    # -- private files -------------------------------------------------------

    def read_private_file(self, name: str) -> bytes | None:
        """Content of the file ``name``, or ``None`` if it does not exist.

        Refuses symbolic links, non-regular files and files owned by another
        user; tightens a mode that lets group or others in to 0600.
        """
        path = self._file(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataDirError(f"{path} is a symbolic link; refusing to follow it") from None
            raise DataDirError(f"cannot read {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DataDirError(f"{path} is not a regular file")
            self._check_owner(path, st)
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                os.fchmod(fd, FILE_MODE)
                log.warning(
                    "%s had mode %04o, readable beyond its owner; tightened to %04o "
                    "(rotate it if others may have read it)",
                    path, mode, FILE_MODE,
                )
            data = fh.read(MAX_FILE_SIZE + 1)
        if len(data) > MAX_FILE_SIZE:
            raise DataDirError(f"{path} is larger than {MAX_FILE_SIZE} bytes")
        return data

    def write_private_file(self, name: str, data: bytes, *, replace: bool = False) -> Path:
        """Write ``data`` to ``name`` atomically with mode 0600; return the path.

        Without ``replace`` an existing file wins: ``FileExistsError`` is raised
        and the file is left as it was. Readers never see a partial file.
        """
        path = self._file(name)
        tmp = self.path / f".{name}.{secrets.token_hex(8)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, FILE_MODE)
        except OSError as exc:
            raise DataDirError(f"cannot write in {self.path}: {exc.strerror}") from None
        try:
            try:
                os.fchmod(fd, FILE_MODE)  # the umask may have removed owner bits
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, path)
            else:
                self._link_new(tmp, path)
        except OSError as exc:
            if isinstance(exc, FileExistsError):
                raise
            raise DataDirError(f"cannot write {path}: {exc.strerror}") from None
        finally:
            _unlink_quietly(tmp)
        self._sync_directory()
        return path

    # -- internals -----------------------------------------------------------

    def _prepare_directory(self) -> None:
        try:
            os.makedirs(self.path, mode=DIR_MODE, exist_ok=True)
        except FileExistsError:
            raise DataDirError(f"data directory {self.path} exists and is not a directory") from None
        except OSError as exc:
            raise DataDirError(f"cannot create data directory {self.path}: {exc.strerror}") from None
        st = os.stat(self.path)
        if not stat.S_ISDIR(st.st_mode):
            raise DataDirError(f"data directory {self.path} is not a directory")
        self._check_owner(self.path, st)
        mode = stat.S_IMODE(st.st_mode)
        if mode != DIR_MODE:
            try:
                os.chmod(self.path, DIR_MODE)
            except OSError as exc:
                raise DataDirError(
                    f"cannot set mode {DIR_MODE:04o} on data directory {self.path}: {exc.strerror}"
                ) from None
            if mode & 0o077:
                log.warning(
                    "data directory %s had mode %04o, open to group or others; tightened to %04o",
                    self.path, mode, DIR_MODE,
                )

    @staticmethod
    def _check_owner(path: Path, st: os.stat_result) -> None:
        uid = os.geteuid()
        if st.st_uid != uid:
            raise DataDirError(
                f"{path} is owned by uid {st.st_uid}, not by the user running callsgw "
                f"(uid {uid}); refusing to keep secrets there"
            )

    def _file(self, name: str) -> Path:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"not a plain file name: {name!r}")
        return self.path / name

    def _secret(
        self,
        name: str,
        *,
        make: Callable[[], bytes],
        valid: Callable[[bytes], bool],
        expected: str,
    ) -> bytes:
        data = self.read_private_file(name)
        if data is None:
            try:
                self.write_private_file(name, make())
                log.info("created %s in %s", name, self.path)
            except FileExistsError:
                pass  # made concurrently by another process: use that one
            data = self.read_private_file(name)
            if data is None:
                raise DataDirError(f"{self.path / name} vanished right after it was written")
        if not valid(data):
            raise DataDirError(
                f"{self.path / name} is corrupt (expected {expected}); restore it, or delete it "
                "to make a new one (anything issued with the old one stops working)"
            )
        return data

    @staticmethod
    def _link_new(tmp: Path, path: Path) -> None:
        """Put ``tmp`` at ``path`` unless ``path`` exists (``FileExistsError``)."""
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            # No hard links on this file system: rename, after an existence
            # check (a narrower race, but still never a partial file).
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
            os.rename(tmp, path)

    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass  # some file systems cannot sync a directory; the rename is still atomic
        finally:
            os.close(fd)


def _digest_line(key: bytes) -> bytes:
    return hashlib.sha256(key).hexdigest().encode("ascii") + b"\n"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or not a real stream
        return False


def _announce_admin_key(key: str, path: Path) -> None:
    sys.stderr.write(
        f"callsgw: made a new admin key; it is shown only now (only its SHA-256 is kept in {path}):\n"
        f"  {key}\n"
    )
    sys.stderr.flush()


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

"""The API secrets that sign and check access tokens, and their rotation.

One small interface, so that the keys can later live in the cluster's shared
``Systems`` table instead of the data directory without the signaling core
noticing:

* :meth:`ApiSecrets.current` signs new tokens;
* :meth:`ApiSecrets.verification_keys` checks them: the current secret and,
  until its grace period ends, the one it replaced;
* :meth:`ApiSecrets.rotate` makes a new current secret and keeps the old one
  for ``grace`` seconds (0: tokens signed with it stop working at once, the
  answer to a leaked secret).

In the data directory the current secret is ``api_secret`` (32 random bytes,
as before) and the previous one ``api_secret.previous``: one line
``<unix expiry> <hex secret>``, mode 0600 like every secret there. A running
gateway notices a rotation made by another process (``callsgw api-secret
rotate``) through :meth:`ApiSecrets.refresh`, which its shell calls on its
timer; nothing here reads the clock.
"""

from __future__ import annotations

import os
import secrets

from callsgw.datadir import API_SECRET_BYTES, API_SECRET_FILE, DataDir, DataDirError

PREVIOUS_FILE = API_SECRET_FILE + ".previous"


class ApiSecrets:
    """The current API secret and, during a rotation's grace period, the previous one."""

    def __init__(self, datadir: DataDir):
        self._dir = datadir
        self._stamp: tuple | None = None
        self._current = b""
        self._previous: bytes | None = None
        self._previous_until = 0.0
        self.refresh()

    def __repr__(self) -> str:  # never the keys
        return f"ApiSecrets({self._dir!r}, previous={'yes' if self._previous else 'no'})"

    # -- the interface the gateway uses ------------------------------------------------------

    def current(self) -> bytes:
        """The key that signs new tokens."""
        return self._current

    def verification_keys(self, now: float) -> tuple[bytes, ...]:
        """Keys a token may be signed with at Unix time ``now``: current first."""
        if self._previous is not None and now < self._previous_until:
            return (self._current, self._previous)
        return (self._current,)

    def previous_until(self) -> float | None:
        """Unix time at which the previous secret stops verifying (None: there is none)."""
        return self._previous_until if self._previous is not None else None

    def refresh(self) -> bool:
        """Reload from the data directory if either file changed; True if it did."""
        stamp = (self._stat(API_SECRET_FILE), self._stat(PREVIOUS_FILE))
        if stamp == self._stamp:
            return False
        current = self._dir.read_private_file(API_SECRET_FILE)
        if current is None:
            current = self._dir.api_secret()  # made on first use
        if len(current) != API_SECRET_BYTES:
            raise DataDirError(
                f"{self._dir.path / API_SECRET_FILE} is corrupt (expected exactly {API_SECRET_BYTES} bytes); "
                "restore it, or delete it to make a new one (every token issued with it stops working)"
            )
        self._current = current
        self._previous, self._previous_until = self._read_previous()
        self._stamp = (self._stat(API_SECRET_FILE), self._stat(PREVIOUS_FILE))
        return True

    # -- rotation (``callsgw api-secret rotate``) ------------------------------------------------

    def rotate(self, *, grace: float, now: float) -> None:
        """A new current secret; the old one verifies for ``grace`` more seconds (0: not at all)."""
        if not grace >= 0:
            raise ValueError(f"grace must be 0 or more seconds, got {grace!r}")
        self._stamp = None
        self.refresh()
        old = self._current
        if grace > 0:
            line = f"{int(now + grace)} {old.hex()}\n".encode()
            self._dir.write_private_file(PREVIOUS_FILE, line, replace=True)
        else:
            try:
                os.unlink(self._dir.path / PREVIOUS_FILE)
            except FileNotFoundError:
                pass
        self._dir.write_private_file(API_SECRET_FILE, secrets.token_bytes(API_SECRET_BYTES), replace=True)
        self._stamp = None
        self.refresh()

    # -- internals ---------------------------------------------------------------------------

    def _stat(self, name: str) -> tuple | None:
        try:
            st = os.stat(self._dir.path / name, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read_previous(self) -> tuple[bytes | None, float]:
        data = self._dir.read_private_file(PREVIOUS_FILE)
        if data is None:
            return None, 0.0
        try:
            until_text, key_hex = data.decode("ascii").split()
            until, key = float(until_text), bytes.fromhex(key_hex)
        except (UnicodeDecodeError, ValueError):
            until, key = 0.0, b""
        if len(key) != API_SECRET_BYTES or until <= 0:
            raise DataDirError(
                f"{self._dir.path / PREVIOUS_FILE} is corrupt (expected '<unix expiry> <64 hex digits>'); "
                "delete it (tokens signed with the previous API secret then stop working)"
            )
        return key, until


# -- the cluster's shared secret (issue #15) ------------------------------------------------------

API_SECRET_ROW = "ApiSecret"
API_SECRET_PREVIOUS_ROW = "ApiSecretPrevious"


class SystemsApiSecrets:
    """:class:`ApiSecrets`' interface over the shared database's ``Systems`` table (cluster mode).

    The row ``ApiSecret`` holds the current secret (base64 of 32 bytes), made by
    the first node with an insert-if-absent in a serializable transaction, so a
    token minted against any node verifies on every node. During a rotation's
    grace period ``ApiSecretPrevious`` holds ``<unix expiry> <base64 secret>``.
    :meth:`refresh` reads the rows (it blocks: the gateway calls it from a
    worker thread) and swaps the keys in one assignment.
    """

    def __init__(self, store):
        self._store = store
        self._state: tuple[bytes, bytes | None, float] = (b"", None, 0.0)
        store.system_insert_if_absent(API_SECRET_ROW, _b64(secrets.token_bytes(API_SECRET_BYTES)))
        self.refresh()

    def __repr__(self) -> str:  # never the keys
        return f"SystemsApiSecrets(previous={'yes' if self._state[1] else 'no'})"

    def current(self) -> bytes:
        return self._state[0]

    def verification_keys(self, now: float) -> tuple[bytes, ...]:
        current, previous, until = self._state
        if previous is not None and now < until:
            return (current, previous)
        return (current,)

    def previous_until(self) -> float | None:
        _, previous, until = self._state
        return until if previous is not None else None

    def refresh(self) -> bool:
        rows = self._store.system_values((API_SECRET_ROW, API_SECRET_PREVIOUS_ROW))
        state = _parse_rows(rows)
        if state == self._state:
            return False
        self._state = state
        return True

    def rotate(self, *, grace: float, now: float) -> None:
        if not grace >= 0:
            raise ValueError(f"grace must be 0 or more seconds, got {grace!r}")
        fresh = secrets.token_bytes(API_SECRET_BYTES)

        def change(rows):
            current, _, _ = _parse_rows(rows)
            previous = f"{int(now + grace)} {_b64(current)}" if grace > 0 else None
            return {API_SECRET_ROW: _b64(fresh), API_SECRET_PREVIOUS_ROW: previous}

        self._store.system_update(change, (API_SECRET_ROW, API_SECRET_PREVIOUS_ROW))
        self.refresh()


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def _parse_rows(rows) -> tuple[bytes, bytes | None, float]:
    import base64
    import binascii

    def key(text: str | None, row: str) -> bytes:
        try:
            raw = base64.b64decode((text or "").strip().encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            raw = b""
        if len(raw) != API_SECRET_BYTES:
            raise DataDirError(f"the Systems row {row} must hold base64 of exactly {API_SECRET_BYTES} bytes")
        return raw

    current = key(rows.get(API_SECRET_ROW), API_SECRET_ROW)
    text = rows.get(API_SECRET_PREVIOUS_ROW)
    if text is None:
        return current, None, 0.0
    try:
        until_text, key_text = text.split()
        until = float(until_text)
    except ValueError:
        raise DataDirError(f"the Systems row {API_SECRET_PREVIOUS_ROW} must be '<unix expiry> <base64 secret>'") \
            from None
    return current, key(key_text, API_SECRET_PREVIOUS_ROW), until

"""The ``ClusterEncryptionKey`` and its keyring, kept in the shared database's ``Systems`` table.

Mattermost keeps the key as base64 text in the row ``ClusterEncryptionKey``;
16, 24 or 32 bytes select AES-128, AES-192 or AES-256. The first node writes 32
random bytes with an insert-if-absent in a serializable transaction, so every
node ends up with the first node's key. An operator may put a value of their
own in the row before the first start; anything that is not base64 of exactly
16, 24 or 32 bytes stops the node at start with :class:`ClusterKeyError`
naming the row and the allowed lengths. A value is never hashed, padded or cut
into a key.

Rows (``Systems(name, value)``):

``ClusterEncryptionKey``
    the primary key, base64: new messages are sealed with it (Mattermost's row,
    unchanged in meaning).
``ClusterEncryptionKeyring``
    JSON ``{"previous": [{"key": B64, "until": UNIX}, ...], "activate_at": UNIX}``:
    keys that still open messages until ``until`` (a rotation's grace period),
    newest first, and when the primary starts sealing. Absent: no previous key.
``ClusterNameKey``
    32 bytes (base64) derived once, with HMAC-SHA256, from the first
    ``ClusterEncryptionKey``; Redis key names are HMACs under it
    (:class:`callsgw.cluster.seal.Names`). It is kept across rotations, so a
    call's placement keeps its Redis name while its messages change key.

Rotation (``callsgw cluster-key rotate``) writes a new primary and moves the
old one into ``previous`` with ``until = now + grace``, in one serializable
transaction. Nodes re-read the rows every :data:`REFRESH_INTERVAL` seconds;
so that no node receives a message under a key it has not loaded yet, the new
primary only starts *sealing* at ``activate_at = now + ACTIVATION_DELAY`` (until
then every node seals with the old key, and already opens the new one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from callsgw.config import ConfigError

KEY_ROW = "ClusterEncryptionKey"
KEYRING_ROW = "ClusterEncryptionKeyring"
NAMES_ROW = "ClusterNameKey"
ROWS = (KEY_ROW, KEYRING_ROW, NAMES_ROW)

KEY_SIZES = (16, 24, 32)
"""Allowed key lengths in bytes: AES-128, AES-192, AES-256."""
DEFAULT_KEY_BYTES = 32
NAMES_KEY_BYTES = 32
MAX_PREVIOUS = 8
"""Previous keys kept at most (the oldest are dropped first)."""
REFRESH_INTERVAL = 1.0
"""Seconds between a running node's reads of the keyring rows."""
ACTIVATION_DELAY = 3 * REFRESH_INTERVAL
"""Seconds between a rotation and the new primary's first sealed message."""
DEFAULT_GRACE = 300.0
"""Seconds the previous key keeps opening messages after a rotation, by default."""

_NAMES_LABEL = b"callsgw cluster key names v1"


class ClusterKeyError(ConfigError):
    """A Systems row holding cluster key material is unusable; the node must not start."""

    def __init__(self, message: str):
        super().__init__(message)


class ClusterKey:
    """One AES key. Its repr and str show the size and fingerprint, never the key."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes):
        if len(raw) not in KEY_SIZES:
            raise ValueError(f"an AES key is 16, 24 or 32 bytes, not {len(raw)}")
        self._raw = bytes(raw)

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def bits(self) -> int:
        return len(self._raw) * 8

    @property
    def algorithm(self) -> str:
        return f"AES-{self.bits}"

    @property
    def fingerprint(self) -> str:
        """The first 8 bytes of the key's SHA-256, hex in pairs: enough to compare, not to guess."""
        digest = hashlib.sha256(self._raw).hexdigest()[:16]
        return ":".join(digest[i:i + 2] for i in range(0, 16, 2))

    def to_text(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClusterKey) and hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"ClusterKey({self.algorithm}, sha256 {self.fingerprint})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into a log or a crash dump by accident
        raise TypeError("a ClusterKey is not picklable")

    @classmethod
    def generate(cls, size: int = DEFAULT_KEY_BYTES) -> "ClusterKey":
        return cls(secrets.token_bytes(size))


def parse_key(value: str | None, *, row: str = KEY_ROW) -> ClusterKey:
    """The key in a Systems value: strict base64 of exactly 16, 24 or 32 bytes.

    Surrounding whitespace (a newline left by psql) is ignored; anything else
    that is not base64 of one of the allowed lengths is a :class:`ClusterKeyError`
    naming the row. The message never repeats the value.
    """
    allowed = "base64 of exactly 16, 24 or 32 bytes (AES-128, AES-192 or AES-256)"
    if not isinstance(value, str) or not value.strip():
        raise ClusterKeyError(f"the Systems row {row} is empty: it must hold {allowed}")
    text = value.strip()
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise ClusterKeyError(f"the Systems row {row} is not valid base64: it must hold {allowed}") from None
    if len(raw) not in KEY_SIZES:
        raise ClusterKeyError(
            f"the Systems row {row} holds {len(raw)} bytes: it must hold {allowed}; "
            "callsgw never hashes or pads a value into a key"
        )
    return ClusterKey(raw)


@dataclass(frozen=True)
class Keyring:
    """The primary key, the previous keys still accepted, and the Redis names key."""

    primary: ClusterKey
    previous: tuple[tuple[ClusterKey, float], ...] = ()  # (key, until), newest first
    activate_at: float = 0.0
    names_key: bytes = b""

    def __repr__(self) -> str:
        return (f"Keyring(primary={self.primary!r}, previous={len(self.previous)}, "
                f"activate_at={self.activate_at:.0f})")

    def sealing_key(self, now: float) -> ClusterKey:
        """The key new messages are sealed with at ``now``.

        Until ``activate_at`` that is the newest previous key still in its
        grace period, so that every node has loaded the new primary before it
        receives anything sealed with it.
        """
        if now < self.activate_at:
            for key, until in self.previous:
                if now < until:
                    return key
        return self.primary

    def opening_keys(self, now: float) -> tuple[ClusterKey, ...]:
        """Every key a message may be sealed with at ``now``: primary first."""
        return (self.primary, *(key for key, until in self.previous if now < until))

    def describe(self, now: float) -> dict:
        """Sizes and fingerprints (never a key): what ``cluster-key status`` and the API show."""
        return {
            "algorithm": self.primary.algorithm,
            "bits": self.primary.bits,
            "fingerprint": self.primary.fingerprint,
            "sealing": self.sealing_key(now).fingerprint,
            "activate_at": self.activate_at or None,
            "previous": [
                {"algorithm": key.algorithm, "fingerprint": key.fingerprint, "until": until}
                for key, until in self.previous if now < until
            ],
        }


def derive_names_key(primary: ClusterKey) -> bytes:
    return hmac.new(primary.raw, _NAMES_LABEL, hashlib.sha256).digest()


def _parse_keyring(value: str | None, primary: ClusterKey, names_value: str | None) -> Keyring:
    previous: list[tuple[ClusterKey, float]] = []
    activate_at = 0.0
    if value is not None:
        try:
            doc = json.loads(value)
            items = doc.get("previous", [])
            activate_at = float(doc.get("activate_at", 0.0))
            if not isinstance(items, list) or not math.isfinite(activate_at):
                raise ValueError
            for item in items[:MAX_PREVIOUS]:
                until = float(item["until"])
                if not math.isfinite(until):
                    raise ValueError
                previous.append((parse_key(item["key"], row=KEYRING_ROW), until))
        except ClusterKeyError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ClusterKeyError(
                f"the Systems row {KEYRING_ROW} is not a keyring document "
                '({"previous": [{"key": BASE64, "until": UNIX_TIME}], "activate_at": UNIX_TIME})'
            ) from None
    names = b""
    if names_value is not None:
        try:
            names = base64.b64decode(names_value.strip().encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            names = b""
        if len(names) != NAMES_KEY_BYTES:
            raise ClusterKeyError(f"the Systems row {NAMES_ROW} must hold base64 of exactly {NAMES_KEY_BYTES} bytes")
    return Keyring(primary=primary, previous=tuple(previous), activate_at=activate_at, names_key=names)


def keyring_from_rows(rows: Mapping[str, str | None]) -> Keyring | None:
    """The keyring the Systems rows hold, or None when there is no ClusterEncryptionKey yet."""
    if rows.get(KEY_ROW) is None:
        return None
    return _parse_keyring(rows.get(KEYRING_ROW), parse_key(rows[KEY_ROW]), rows.get(NAMES_ROW))


def read_keyring(store) -> Keyring | None:
    """The keyring in ``store`` (a :class:`callsgw.security.db.RecordStore`), made of nothing."""
    return keyring_from_rows(store.system_values(ROWS))


def ensure_keyring(store) -> Keyring:
    """The cluster's keyring; the first caller anywhere makes the key (insert-if-absent).

    A fresh key is 32 random bytes (AES-256). Each row is inserted only if it is
    absent, in a serializable transaction, so every node ends up with the first
    node's key. A bad operator value raises :class:`ClusterKeyError`.
    """
    store.system_insert_if_absent(KEY_ROW, ClusterKey.generate().to_text())
    primary = parse_key(store.system_value(KEY_ROW))  # checked before anything is derived from it
    if store.system_value(NAMES_ROW) is None:
        store.system_insert_if_absent(NAMES_ROW, base64.b64encode(derive_names_key(primary)).decode("ascii"))
    keyring = read_keyring(store)
    assert keyring is not None
    return keyring


def rotate_keyring(store, *, grace: float, now: float, new_key: ClusterKey | None = None) -> Keyring:
    """A new primary; the old one opens messages for ``grace`` more seconds (0: not at all).

    One serializable read-modify-write of the rows, so two rotations at once
    never lose a key. The new primary seals from ``now + ACTIVATION_DELAY`` on
    (with ``grace`` 0 at once: after a leak, the old key must stop now).
    """
    if not (math.isfinite(grace) and grace >= 0):
        raise ValueError(f"grace must be 0 or more seconds, got {grace!r}")
    fresh = new_key or ClusterKey.generate()

    def change(rows: dict[str, str | None]) -> dict[str, str | None]:
        current = keyring_from_rows(rows)
        if current is None:
            raise ClusterKeyError(f"there is no Systems row {KEY_ROW} yet: the first cluster node makes it")
        if fresh == current.primary:
            raise ClusterKeyError("the new key is the current primary key")
        kept = [(k, u) for k, u in current.previous if now < u and k != fresh]
        previous = ([(current.primary, now + grace)] if grace > 0 else []) + kept
        doc = {
            "previous": [{"key": k.to_text(), "until": u} for k, u in previous[:MAX_PREVIOUS]],
            "activate_at": now + ACTIVATION_DELAY if grace > 0 else now,
        }
        out = {KEY_ROW: fresh.to_text(), KEYRING_ROW: json.dumps(doc, sort_keys=True)}
        if rows.get(NAMES_ROW) is None:
            out[NAMES_ROW] = base64.b64encode(derive_names_key(current.primary)).decode("ascii")
        return out

    store.system_update(change, ROWS)
    keyring = read_keyring(store)
    assert keyring is not None
    return keyring

"""Sealing every message that crosses nodes (issue #15 item 6), sans-I/O.

The wire format is hashicorp/memberlist's encrypted packet (``security.go``,
encryption version 1)::

    [version byte = 1][12-byte random nonce][AES-GCM ciphertext + 16-byte tag]

AES-GCM (``cryptography``'s AESGCM over OpenSSL, never written here) under the
keyring's sealing key, with the *label* as additional data: the cluster name
and the channel (``"callsgw\\0<cluster>\\0<channel>"``). The channel names what
the message is for (a pub/sub channel, or the Redis key a state entry is
stored under), so a sealed blob moved to another channel or another cluster
does not open. Opening tries every key of the keyring, primary first, like
memberlist.

Inside the plaintext, before the body::

    [1 byte n][n bytes sender node id][8-byte boot id][u64 sequence][u64 time, Unix ms]

The boot id is random per process, the sequence counts from 1 per boot, so a
restarted node needs no memory of its old sequence. An opened *message*
(:meth:`Seal.open`) must be fresh (no older than ``max_age``, no further
ahead than ``max_skew``) and not seen before: a 128-entry sliding window per
(sender, boot), as IPsec and SRTP keep. Sender state is forgotten only when
every message it could still protect against is stale; the table is bounded
(:data:`MAX_SENDERS`), and a new sender beyond it is dropped. A stored *state
entry* (:meth:`Seal.open_state`: a registry entry, a placement) is read many
times by design, so only its age is checked.

Drops are counted by reason in :attr:`Seal.drops` (exported as
``callsgw_cluster_drops_total{reason}``):

``malformed``     too short, too long, or not version 1
``auth``          no key of the keyring opens it: tampered with, moved to
                  another channel, or sealed under a key this node does not
                  hold. AES-GCM cannot tell these apart (memberlist cannot either)
``bad_payload``   authentic, but the inner header is malformed (a bug, not an attack)
``stale``         older than the bound; ``future``: too far ahead of this clock
``replay``        seen before (same sender, boot and sequence)
``senders_full``  a new sender while the sender table is full of live senders

This node's own messages echoed back (pub/sub delivers to the sender too) are
ignored and counted apart (:attr:`Seal.echoes`), not as drops.

:class:`Names` derives Redis key names with HMAC-SHA256 under the cluster's
names key, so no call id or node id appears in a key name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from callsgw.cluster.keys import ClusterKey, Keyring, derive_names_key

VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_SEALED = 1 << 20
"""Largest sealed message opened (anything longer is dropped as malformed before any work)."""
MAX_NODE_ID = 64
BOOT_BYTES = 8
MAX_SENDERS = 4096
REPLAY_WINDOW = 128
DEFAULT_MAX_AGE = 30.0
DEFAULT_MAX_SKEW = 5.0

DROP_REASONS = ("malformed", "auth", "bad_payload", "stale", "future", "replay", "senders_full")
_HEAD = struct.Struct("!QQ")


@dataclass(frozen=True)
class Opened:
    """An authentic message: who sent it, when, and its body."""

    sender: str
    boot: bytes
    sequence: int
    sent_at: float  # Unix time, as the sender's clock said
    body: bytes


class _Sender:
    __slots__ = ("highest", "window", "last_seen")

    def __init__(self) -> None:
        self.highest = 0
        self.window = 0  # bit i: sequence highest - i was accepted
        self.last_seen = 0.0

    def check(self, seq: int) -> bool:
        if seq > self.highest:
            return True
        offset = self.highest - seq
        return offset < REPLAY_WINDOW and not (self.window >> offset) & 1

    def accept(self, seq: int) -> None:
        if seq > self.highest:
            shift = seq - self.highest
            self.window = ((self.window << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            self.highest = seq
        else:
            self.window |= 1 << (self.highest - seq)


def label(cluster: str, channel: str) -> bytes:
    """The additional data of every message on ``channel`` of ``cluster``."""
    return b"callsgw\0" + cluster.encode() + b"\0" + channel.encode()


class Seal:
    """Seals and opens one node's cluster messages; counts every drop by reason.

    ``keyring`` may be replaced at any time (:meth:`set_keyring`) when the
    Systems rows change. ``now`` is always passed in (Unix seconds).
    """

    def __init__(self, cluster: str, node_id: str, keyring: Keyring, *,
                 max_age: float = DEFAULT_MAX_AGE, max_skew: float = DEFAULT_MAX_SKEW,
                 boot: bytes | None = None, max_senders: int = MAX_SENDERS):
        node = node_id.encode()
        if not 0 < len(node) <= MAX_NODE_ID:
            raise ValueError(f"a node id is 1 to {MAX_NODE_ID} bytes")
        self.cluster = cluster
        self.node_id = node_id
        self._node = node
        self.boot = boot if boot is not None else os.urandom(BOOT_BYTES)
        if len(self.boot) != BOOT_BYTES:
            raise ValueError(f"a boot id is {BOOT_BYTES} bytes")
        self.max_age = max_age
        self.max_skew = max_skew
        self.max_senders = max_senders
        self._sequence = 0
        self._senders: OrderedDict[tuple[bytes, bytes], _Sender] = OrderedDict()
        self._ciphers: dict[bytes, AESGCM] = {}
        self.drops: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
        self.opened = 0
        self.sealed = 0
        self.echoes = 0
        self.keyring = keyring
        self.names = Names(keyring.names_key or derive_names_key(keyring.primary), cluster)

    def __repr__(self) -> str:
        return f"Seal({self.cluster!r}, {self.node_id!r}, {self.keyring!r})"

    def set_keyring(self, keyring: Keyring) -> None:
        self.keyring = keyring
        live = {key.raw for key in (keyring.primary, *(k for k, _ in keyring.previous))}
        self._ciphers = {raw: c for raw, c in self._ciphers.items() if raw in live}
        names_key = keyring.names_key or derive_names_key(keyring.primary)
        if names_key != self.names.key:
            self.names = Names(names_key, self.cluster)

    def _cipher(self, key: ClusterKey) -> AESGCM:
        cipher = self._ciphers.get(key.raw)
        if cipher is None:
            cipher = self._ciphers[key.raw] = AESGCM(key.raw)
        return cipher

    # -- sealing ------------------------------------------------------------------------------

    def seal(self, channel: str, body: bytes, now: float) -> bytes:
        """``body`` sealed for ``channel``: a fresh sequence number, ``now`` as its time."""
        self._sequence += 1
        plain = (bytes((len(self._node),)) + self._node + self.boot
                 + _HEAD.pack(self._sequence, max(0, int(now * 1000))) + body)
        nonce = os.urandom(NONCE_BYTES)
        key = self.keyring.sealing_key(now)
        self.sealed += 1
        return bytes((VERSION,)) + nonce + self._cipher(key).encrypt(nonce, plain, label(self.cluster, channel))

    # -- opening ------------------------------------------------------------------------------

    def _decrypt(self, channel: str, data: bytes, now: float) -> Opened | None:
        if not isinstance(data, (bytes, bytearray, memoryview)) or not \
                1 + NONCE_BYTES + TAG_BYTES <= len(data) <= MAX_SEALED or data[0] != VERSION:
            self.drops["malformed"] += 1
            return None
        data = bytes(data)
        nonce, ciphertext = data[1:1 + NONCE_BYTES], data[1 + NONCE_BYTES:]
        aad = label(self.cluster, channel)
        plain = None
        for key in self.keyring.opening_keys(now):
            try:
                plain = self._cipher(key).decrypt(nonce, ciphertext, aad)
                break
            except InvalidTag:
                continue
        if plain is None:
            self.drops["auth"] += 1
            return None
        n = plain[0] if plain else 0
        end = 1 + n + BOOT_BYTES + _HEAD.size
        if not 0 < n <= MAX_NODE_ID or len(plain) < end:
            self.drops["bad_payload"] += 1
            return None
        try:
            sender = plain[1:1 + n].decode()
        except UnicodeDecodeError:
            self.drops["bad_payload"] += 1
            return None
        boot = plain[1 + n:1 + n + BOOT_BYTES]
        seq, ms = _HEAD.unpack_from(plain, 1 + n + BOOT_BYTES)
        if seq == 0:
            self.drops["bad_payload"] += 1
            return None
        return Opened(sender, boot, seq, ms / 1000.0, plain[end:])

    def _fresh(self, opened: Opened, now: float, max_age: float) -> bool:
        if opened.sent_at > now + self.max_skew:
            self.drops["future"] += 1
            return False
        if now - opened.sent_at > max_age:
            self.drops["stale"] += 1
            return False
        return True

    def open(self, channel: str, data: bytes, now: float) -> Opened | None:
        """A message from another node, or None (dropped and counted): authentic, fresh, not seen before."""
        opened = self._decrypt(channel, data, now)
        if opened is None or not self._fresh(opened, now, self.max_age):
            return None
        ident = (opened.sender.encode(), opened.boot)
        if ident == (self._node, self.boot):
            self.echoes += 1
            return None
        state = self._senders.get(ident)
        if state is None:
            self._forget_quiet_senders(now)
            if len(self._senders) >= self.max_senders:
                self.drops["senders_full"] += 1
                return None
            state = self._senders[ident] = _Sender()
        if not state.check(opened.sequence):
            self.drops["replay"] += 1
            return None
        state.accept(opened.sequence)
        state.last_seen = now
        self._senders.move_to_end(ident)
        self.opened += 1
        return opened

    def open_state(self, channel: str, data: bytes, now: float, max_age: float) -> Opened | None:
        """A stored entry (read many times by design): authentic and no older than ``max_age``."""
        opened = self._decrypt(channel, data, now)
        if opened is None or not self._fresh(opened, now, max_age):
            return None
        self.opened += 1
        return opened

    def _forget_quiet_senders(self, now: float) -> None:
        """Drop sender state only when every message it guards against is stale anyway.

        A message accepted at ``last_seen`` was sent no later than
        ``last_seen + max_skew``; after ``max_age`` more it is stale.
        """
        horizon = now - (self.max_age + self.max_skew)
        while self._senders:
            ident, state = next(iter(self._senders.items()))
            if state.last_seen >= horizon:
                break
            del self._senders[ident]

    @property
    def sender_count(self) -> int:
        return len(self._senders)


class Names:
    """Redis key and channel names, HMAC-SHA256 under the cluster's names key.

    ``name("call", call_id)`` is ``cgw:call:<32 hex>``; the cluster name is part
    of the HMAC input, so two clusters sharing a Redis never collide, and
    nothing about the call (or node) can be read from the name.
    """

    def __init__(self, key: bytes, cluster: str):
        if len(key) < 16:
            raise ValueError("a names key is at least 16 bytes")
        self.key = key
        self._prefix = hmac.new(key, b"cluster\0" + cluster.encode(), hashlib.sha256).hexdigest()[:8]
        self._cluster = cluster.encode()

    def __repr__(self) -> str:
        return f"Names(cgw:{self._prefix})"

    def name(self, kind: str, ident: str) -> str:
        digest = hmac.new(self.key, self._cluster + b"\0" + kind.encode() + b"\0" + ident.encode(),
                          hashlib.sha256).hexdigest()[:32]
        return f"cgw:{self._prefix}:{kind}:{digest}"

    def fixed(self, kind: str) -> str:
        """A cluster-wide name (the node index, ...)."""
        return f"cgw:{self._prefix}:{kind}"

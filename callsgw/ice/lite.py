"""The gateway's side of ICE for one participant: a lite agent with consent freshness.

Sans-I/O (GUIDE section 1): no sockets, no asyncio, no clock. The shell feeds
datagrams with :meth:`IceLiteAgent.receive`, sends back what it returns, drains
:meth:`IceLiteAgent.next_event`, and calls :meth:`IceLiteAgent.handle_timer` at
:meth:`IceLiteAgent.get_timer`. ``now`` is any monotonic clock in seconds.

Protocol
--------
* **Lite** (RFC 8445 sections 2.5 and 6.1.1). The gateway has host candidates
  only, never sends checks, never nominates, and is always controlled. It
  answers Binding requests (section 7.3) and learns from them which peer
  addresses work and which pair the controlling peer nominated.
* **Checks** (RFC 8445 section 7.3, RFC 8489 section 9.1 short-term
  credentials). A request is answered only if USERNAME is
  ``"<local_ufrag>:<remote_ufrag>"`` (section 7.2.2; the remote part is
  checked once the remote ufrag is known), MESSAGE-INTEGRITY verifies with the
  local password and FINGERPRINT is present and correct. Everything else gets
  no answer at all, not even the 400/401 of RFC 8489 section 9.1.3: the gateway
  never reflects, never amplifies, and never tells a prober which ufrags exist.
  Each drop increments ``stats[reason]``.
* **Role conflict** (RFC 8445 section 7.3.1.1). A lite agent cannot take the
  controlling role (section 6.1.1). A request carrying ICE-CONTROLLED means the
  peer thinks it is controlled too; if and only if it authenticated, it gets a
  signed 487 (Role Conflict) error response, which makes a full agent switch to
  controlling (section 7.2.5.1), and the address is not validated. The lite
  agent keeps its role whatever the tie-breakers, since it has no other.
  Requests with ICE-CONTROLLING or no role attribute are answered normally.
* **Validated addresses.** An address from which an authenticated check
  arrived is validated, and is the gate for DTLS and SRTP (GUIDE section 4:
  accept DTLS only from an address that passed a check). At most
  ``max_addresses`` are kept; a new one evicts the least recently checked
  address other than the selected one.
* **Nomination** (RFC 8445 sections 7.3.1.5 and 8.1.1). USE-CANDIDATE on an
  authenticated check nominates the pair: the address becomes the selected
  address at once, even if another one was selected before (the controlling
  agent's latest nomination wins, which is how a client that moves is
  followed).
* **Following a client without a new nomination.** A client behind a NAT
  whose mapping changes keeps checking the pair it believes is selected, now
  from a new address, possibly without USE-CANDIDATE. The selection moves to
  another validated address when a check arrives from it and either the
  selected address has not been checked for ``stale_after`` seconds (default
  ``consent_timeout / 3``, 10 s: two missed RFC 7675 consent checks), or it
  was nominated and the selected address was not. When the selected address
  is removed (expiry, eviction, credentials), the selection falls back to the
  most recently checked remaining address, nominated ones first, or to none.
  Every change emits :class:`SelectedAddressChanged`. Falling back to an
  address that was not nominated is a gateway policy, not RFC 8445's. It is
  safe because every validated address has shown consent (the peer sends
  authenticated checks from it, which it does only on pairs it may use).
* **Consent** (RFC 7675 section 5.1). A lite agent sends no consent checks;
  the peer's own checks, which a full agent sends every 4 to 6 s on the
  selected pair (RFC 7675 section 5.1), are the gateway's evidence of consent.
  Each authenticated check refreshes the address it came from. An address
  unchecked for ``consent_timeout`` seconds (30 s, RFC 7675 section 5.1) loses
  its validation (:class:`AddressRemoved`). A session with no authenticated
  check for ``consent_timeout`` seconds, counted from creation until the first
  one, has lost consent: :class:`ConsentExpired` is emitted, the state becomes
  ``"failed"`` and the agent answers nothing more. That is terminal; a new
  session needs a new agent with new credentials.
* **Replays.** A transaction ID seen recently from one address and then from
  another is dropped (``stats["replayed"]``): retransmissions come from the
  same address, so this is a captured check replayed elsewhere. Only the last
  :attr:`IceLiteAgent.REPLAY_CACHE_SIZE` transaction IDs are remembered.

* **ICE restart** (RFC 8445 section 9; RFC 8839 section 4.4: the peer's
  offer carries a new ice-ufrag/ice-pwd, and the answer new ones too).
  :meth:`IceLiteAgent.restart` installs the new local and remote credentials
  as a new *generation* and keeps the previous one: until the first
  authenticated check under the new credentials, checks under the old ones
  are still answered and media keeps flowing on the selected address (section
  9 lets media continue on the previous pair). That first new-generation check
  completes the restart: the previous credentials are forgotten, every
  address validated only under them is removed (:class:`AddressRemoved`,
  reason ``"restart"``), so DTLS and SRTP from the old address are refused
  from then on, and the selection moves to the new address. The session's
  consent clock, the replay cache and (above this agent) DTLS and SRTP carry
  on: the participant keeps its keys, rollover counters and replay windows.

Not implemented, on purpose: unknown comprehension-required attributes are
ignored (no 420 response; aioice ignores them too); PRIORITY is not required, since a
lite agent does not create peer-reflexive candidates. A failed agent (consent
expired) cannot be restarted: its session is over.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict, deque
from typing import Final, Union

from callsgw.ice.credentials import PWD_MIN, UFRAG_MIN, check_credential, generate_credentials as _generate
from callsgw.wire import stun

__all__ = [
    "Address",
    "AddressRemoved",
    "AddressValidated",
    "ConsentExpired",
    "IceEvent",
    "IceLiteAgent",
    "IceState",
    "SelectedAddressChanged",
    "STAT_KEYS",
]

#: A transport address as the socket layer reports it, compared as given:
#: (host, port), or the 4-tuple of an IPv6 socket. The shell must use one form.
Address = tuple


_ROLE_CONFLICT: Final = 487

#: Every key of :attr:`IceLiteAgent.stats`.
STAT_KEYS: Final = (
    "answered",  # Binding success response sent
    "role_conflict",  # authenticated request with ICE-CONTROLLED, 487 sent
    "oversize",  # datagram above stun.MAX_STUN_SIZE
    "malformed",  # not well-formed STUN
    "bad_fingerprint",  # FINGERPRINT present and wrong
    "not_request",  # indication, success or error response
    "not_binding",  # a request of another method (Allocate, ...)
    "no_username",  # no USERNAME attribute
    "unknown_ufrag",  # USERNAME is not "<local_ufrag>:<remote_ufrag>"
    "no_integrity",  # no MESSAGE-INTEGRITY
    "no_fingerprint",  # no FINGERPRINT
    "bad_integrity",  # MESSAGE-INTEGRITY does not verify with the local password
    "replayed",  # transaction ID seen recently from another address
    "closed",  # agent failed or closed
)

_VERDICT_STAT: Final = {
    stun.Verdict.MALFORMED: "malformed",
    stun.Verdict.NO_INTEGRITY: "no_integrity",
    stun.Verdict.NO_FINGERPRINT: "no_fingerprint",
    stun.Verdict.BAD_FINGERPRINT: "bad_fingerprint",
    stun.Verdict.BAD_INTEGRITY: "bad_integrity",
}


class IceState(str, enum.Enum):
    """Agent state; compares equal to its string value (``state == "failed"``)."""

    NEW = "new"  # no address validated
    CHECKING = "checking"  # addresses validated, none selected
    CONNECTED = "connected"  # a selected address exists
    FAILED = "failed"  # consent expired (terminal)
    CLOSED = "closed"  # close() was called (terminal)


@dataclasses.dataclass(frozen=True, slots=True)
class AddressValidated:
    """``addr`` passed its first authenticated check: DTLS/SRTP may now flow from it."""

    addr: Address


@dataclasses.dataclass(frozen=True, slots=True)
class AddressRemoved:
    """``addr`` is no longer validated.

    ``reason`` is ``"expired"`` (no check for ``consent_timeout``), ``"evicted"``
    (``max_addresses`` reached), ``"credentials"`` (validated under another
    remote ufrag than the one set later) or ``"restart"`` (validated only under
    the credentials an ICE restart replaced). When consent expires, every address
    has expired first, so these events precede :class:`ConsentExpired`.
    :meth:`IceLiteAgent.close` emits none.
    """

    addr: Address
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class SelectedAddressChanged:
    """Media for this participant now goes to ``new`` (``None``: nowhere)."""

    old: Address | None
    new: Address | None


@dataclasses.dataclass(frozen=True, slots=True)
class ConsentExpired:
    """No authenticated check for ``consent_timeout`` seconds (RFC 7675 section 5.1).

    The agent is now ``"failed"``: stop sending to this participant.
    """


IceEvent = Union[AddressValidated, AddressRemoved, SelectedAddressChanged, ConsentExpired]


class _Peer:
    """What the agent knows about one validated address."""

    __slots__ = ("last_check", "nominated", "remote_ufrag", "generation")

    def __init__(self, last_check: float, remote_ufrag: str, generation: int) -> None:
        self.last_check = last_check
        self.nominated = False
        self.remote_ufrag = remote_ufrag
        self.generation = generation  # credentials generation of the latest check


class _Credentials:
    """One generation of credentials: ours (ufrag, MESSAGE-INTEGRITY key) and the peer's ufrag."""

    __slots__ = ("local_ufrag", "key", "remote_ufrag", "generation")

    def __init__(self, local_ufrag: str, key: bytes, remote_ufrag: str | None, generation: int) -> None:
        self.local_ufrag = local_ufrag
        self.key = key
        self.remote_ufrag = remote_ufrag
        self.generation = generation




class IceLiteAgent:
    """RFC 8445 lite agent with RFC 7675 consent, for one participant (see the module docstring).

    ``receive`` answers checks, ``is_validated`` gates DTLS/SRTP,
    ``selected_address`` says where media goes, ``next_event`` reports changes,
    ``get_timer``/``handle_timer`` run consent expiry. ``stats`` counts answers
    and drops by reason (keys in :data:`STAT_KEYS`).

    ``remote_pwd`` is stored for completeness but never used: a lite agent
    sends no checks, so it never verifies a response signed with it.
    """

    #: How many recent transaction IDs are remembered for replay detection.
    REPLAY_CACHE_SIZE: Final = 64

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str | None = None,
        remote_pwd: str | None = None,
        *,
        consent_timeout: float = 30.0,
        max_addresses: int = 8,
        stale_after: float | None = None,
        now: float = 0.0,
    ) -> None:
        self._local_ufrag = check_credential("local ufrag", local_ufrag, UFRAG_MIN)
        self._local_pwd = check_credential("local password", local_pwd, PWD_MIN)
        self._key = local_pwd.encode("ascii")
        self._remote_ufrag: str | None = None
        self._remote_pwd: str | None = None
        if (remote_ufrag is None) != (remote_pwd is None):
            raise ValueError("give both remote_ufrag and remote_pwd, or neither")
        if remote_ufrag is not None and remote_pwd is not None:
            self._remote_ufrag = check_credential("remote ufrag", remote_ufrag, UFRAG_MIN)
            self._remote_pwd = check_credential("remote password", remote_pwd, PWD_MIN)
        if not consent_timeout > 0:
            raise ValueError("consent_timeout must be positive")
        if isinstance(max_addresses, bool) or not isinstance(max_addresses, int) or max_addresses < 1:
            raise ValueError("max_addresses must be an int of at least 1")
        if stale_after is None:
            stale_after = consent_timeout / 3
        if not 0 < stale_after <= consent_timeout:
            raise ValueError("stale_after must be in (0, consent_timeout]")
        self._consent_timeout = float(consent_timeout)
        self._max_addresses = max_addresses
        self._stale_after = float(stale_after)

        # Validated addresses, least recently checked first.
        self._peers: OrderedDict[Address, _Peer] = OrderedDict()
        self._selected: Address | None = None
        self._terminal: IceState | None = None
        # Consent clock of the whole session: creation, then the last valid check.
        self._last_consent = float(now)
        self._recent_tids: OrderedDict[bytes, Address] = OrderedDict()
        self._events: deque[IceEvent] = deque()
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._generation = 0
        # The credentials an ICE restart replaced, while the restart is not complete.
        self._previous: _Credentials | None = None
        self.restarts = 0  # ICE restarts begun

    # -- credentials ---------------------------------------------------------

    @staticmethod
    def generate_credentials() -> tuple[str, str]:
        """A fresh ``(ufrag, pwd)`` (see :mod:`callsgw.ice.credentials`)."""
        return _generate()

    @property
    def local_ufrag(self) -> str:
        return self._local_ufrag

    @property
    def local_pwd(self) -> str:
        return self._local_pwd

    @property
    def remote_ufrag(self) -> str | None:
        return self._remote_ufrag

    @property
    def remote_pwd(self) -> str | None:
        return self._remote_pwd

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """Learn the peer's ufrag and password (from its SDP, RFC 8839 section 5.4).

        Until then, checks are accepted with any remote ufrag (RFC 8445 section
        7.3 lets an agent answer checks before it has the remote credentials).
        Afterwards the remote part of USERNAME must match, and addresses that
        were validated under another remote ufrag are removed
        (:class:`AddressRemoved` with reason ``"credentials"``).

        Setting the same credentials again does nothing. Changing them is an
        ICE restart (RFC 8445 section 9), which needs new local credentials as
        well: ``ValueError`` here, use :meth:`restart`.
        """
        check_credential("remote ufrag", ufrag, UFRAG_MIN)
        check_credential("remote password", pwd, PWD_MIN)
        if self._remote_ufrag is not None:
            if (ufrag, pwd) != (self._remote_ufrag, self._remote_pwd):
                raise ValueError("remote credentials are already set; an ICE restart goes through restart()")
            return
        self._remote_ufrag, self._remote_pwd = ufrag, pwd
        if self._terminal is not None:
            return
        old = self._selected
        for addr in [a for a, p in self._peers.items() if p.remote_ufrag != ufrag]:
            self._remove(addr, "credentials")
        if self._selected not in self._peers:
            self._selected = self._fallback()
        self._announce_selection(old)

    @property
    def local_ufrags(self) -> tuple[str, ...]:
        """The local ufrags checks are answered under: the current one, then, during a restart, the previous."""
        if self._previous is None:
            return (self._local_ufrag,)
        return (self._local_ufrag, self._previous.local_ufrag)

    @property
    def restarting(self) -> bool:
        """True between :meth:`restart` and the first authenticated check under the new credentials."""
        return self._previous is not None

    def restart(self, local_ufrag: str, local_pwd: str, remote_ufrag: str, remote_pwd: str) -> None:
        """Begin an ICE restart with new credentials on both sides (see the module docstring).

        The local ufrag must be new (the gateway's answer to a restart carries
        new credentials, RFC 8839 section 4.4) and so must the remote
        credentials (that is what makes the peer's offer a restart); a remote
        ufrag alone or a remote password alone may stay. A restart during a
        restart replaces the pending new generation; the one before it stays
        answerable. ``ValueError`` if the agent is failed or closed, or if a
        credential is malformed or not new.
        """
        if self._terminal is not None:
            raise ValueError(f"cannot restart ICE on an agent that is {self._terminal.value}")
        check_credential("local ufrag", local_ufrag, UFRAG_MIN)
        check_credential("local password", local_pwd, PWD_MIN)
        check_credential("remote ufrag", remote_ufrag, UFRAG_MIN)
        check_credential("remote password", remote_pwd, PWD_MIN)
        if local_ufrag in self.local_ufrags:
            raise ValueError("an ICE restart needs a new local ufrag")
        if (remote_ufrag, remote_pwd) == (self._remote_ufrag, self._remote_pwd):
            raise ValueError("an ICE restart needs new remote credentials")
        if self._previous is None:
            # a restart of a restart keeps the generation that still carries the media
            self._previous = _Credentials(self._local_ufrag, self._key, self._remote_ufrag, self._generation)
        self._generation += 1
        self._local_ufrag, self._local_pwd = local_ufrag, local_pwd
        self._key = local_pwd.encode("ascii")
        self._remote_ufrag, self._remote_pwd = remote_ufrag, remote_pwd
        self.restarts += 1

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> IceState:
        if self._terminal is not None:
            return self._terminal
        if self._selected is not None:
            return IceState.CONNECTED
        return IceState.CHECKING if self._peers else IceState.NEW

    @property
    def selected_address(self) -> Address | None:
        """Where media for this participant goes, or ``None``."""
        return self._selected

    @property
    def validated_addresses(self) -> tuple[Address, ...]:
        """Validated addresses, least recently checked first."""
        return tuple(self._peers)

    def is_validated(self, addr: Address) -> bool:
        """True if ``addr`` passed a check and has not expired or been evicted.

        As of the last ``receive``/``handle_timer``: the shell must call
        ``handle_timer`` at ``get_timer()`` for expiry to be applied on time.
        """
        return addr in self._peers

    def next_event(self) -> IceEvent | None:
        """The oldest pending event, or ``None``."""
        return self._events.popleft() if self._events else None

    def close(self) -> None:
        """Stop: forget all addresses, answer nothing more, state ``"closed"``. No events."""
        if self._terminal is None:
            self._terminal = IceState.CLOSED
        self._peers.clear()
        self._selected = None
        self._recent_tids.clear()

    # -- timers --------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next consent deadline (an address's or the session's), or ``None`` once terminal."""
        if self._terminal is not None:
            return None
        deadline = self._last_consent
        for peer in self._peers.values():
            if peer.last_check < deadline:
                deadline = peer.last_check
        return deadline + self._consent_timeout

    def handle_timer(self, now: float) -> None:
        """Apply every consent expiry due at ``now`` (RFC 7675 section 5.1). Safe to call early or late."""
        if self._terminal is not None:
            return
        timeout = self._consent_timeout
        old = self._selected
        for addr in [a for a, p in self._peers.items() if p.last_check + timeout <= now]:
            self._remove(addr, "expired")
        if self._last_consent + timeout <= now:
            # Every address's last check is at most _last_consent, so none is left.
            self._peers.clear()
            self._selected = None
            self._terminal = IceState.FAILED
            self._recent_tids.clear()
            self._announce_selection(old)
            self._events.append(ConsentExpired())
            return
        if self._selected not in self._peers:
            self._selected = self._fallback()
        self._announce_selection(old)

    # -- checks --------------------------------------------------------------

    def receive(self, data: bytes, addr: Address, now: float) -> bytes | None:
        """Handle one STUN datagram from ``addr``; return the datagram to send back to ``addr``, or ``None``.

        Only an authenticated Binding request is answered (RFC 8445 section
        7.3): with a signed success response carrying XOR-MAPPED-ADDRESS =
        ``addr``, or, if it carries ICE-CONTROLLED, a signed 487. Everything
        else is dropped and counted in ``stats``. Expiries due at ``now`` are
        applied first. Never raises for any ``data``.
        """
        self.handle_timer(now)
        if self._terminal is not None:
            return self._drop("closed")
        if len(data) > stun.MAX_STUN_SIZE:
            return self._drop("oversize")
        try:
            msg = stun.parse(data)
        except stun.FingerprintError:
            return self._drop("bad_fingerprint")
        except stun.StunError:
            return self._drop("malformed")
        if msg.message_class != stun.Class.REQUEST:
            return self._drop("not_request")
        if msg.message_method != stun.Method.BINDING:
            return self._drop("not_binding")

        # RFC 8445 section 7.2.2 / RFC 8489 section 9.1.3: USERNAME first,
        # then MESSAGE-INTEGRITY; FINGERPRINT required by RFC 8445 section 7.
        if "USERNAME" not in msg.attributes:
            return self._drop("no_username")
        ufrags = stun.ufrags(msg)
        if ufrags is None:
            return self._drop("unknown_ufrag")
        local, remote = ufrags
        previous = self._previous
        if local == self._local_ufrag:
            expected_remote, key, generation = self._remote_ufrag, self._key, self._generation
        elif previous is not None and local == previous.local_ufrag:
            expected_remote, key, generation = previous.remote_ufrag, previous.key, previous.generation
        else:
            return self._drop("unknown_ufrag")
        if expected_remote is not None and remote != expected_remote:
            return self._drop("unknown_ufrag")
        verdict = stun.authenticate(data, key)
        if verdict is not stun.Verdict.OK:
            return self._drop(_VERDICT_STAT[verdict])

        # Authenticated from here on.
        tid = msg.transaction_id
        seen_from = self._recent_tids.get(tid)
        if seen_from is not None and seen_from != addr:
            return self._drop("replayed")

        if "ICE-CONTROLLED" in msg.attributes:
            # RFC 8445 section 7.3.1.1; a lite agent stays controlled (6.1.1).
            self._remember(tid, addr)
            self.stats["role_conflict"] += 1
            return stun.binding_error(msg, _ROLE_CONFLICT, "Role Conflict", key)

        # Build the answer before changing any state: an addr the socket layer
        # should never produce (not an IP) raises ValueError here, untouched.
        response = stun.binding_success(msg, addr, key)
        self._remember(tid, addr)
        self._checked(addr, remote, "USE-CANDIDATE" in msg.attributes, now, generation)
        self.stats["answered"] += 1
        return response

    # -- internals -----------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.stats[reason] += 1
        return None

    def _remember(self, tid: bytes, addr: Address) -> None:
        recent = self._recent_tids
        recent[tid] = addr
        recent.move_to_end(tid)
        if len(recent) > self.REPLAY_CACHE_SIZE:
            recent.popitem(last=False)

    def _checked(self, addr: Address, remote_ufrag: str, use_candidate: bool, now: float, generation: int) -> None:
        """Record an authenticated check from ``addr`` and update the selection."""
        old = self._selected
        if now > self._last_consent:
            self._last_consent = now
        if generation == self._generation and self._previous is not None:
            self._complete_restart(keep=addr)
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= self._max_addresses:
                self._evict()
            peer = self._peers[addr] = _Peer(now, remote_ufrag, generation)
            self._events.append(AddressValidated(addr))
        else:
            peer.last_check = now
            peer.remote_ufrag = remote_ufrag
            if peer.generation != generation:
                peer.generation = generation
                peer.nominated = False  # nominations do not survive a restart
            self._peers.move_to_end(addr)
        if use_candidate:
            peer.nominated = True

        if self._selected is not None and self._selected not in self._peers:
            # The selected address was just evicted (max_addresses == 1) or retired by a restart.
            self._selected = self._fallback()
        selected = self._selected
        if use_candidate or (selected is None and peer.nominated):
            self._selected = addr
        elif selected is not None and selected != addr:
            current = self._peers[selected]
            if (peer.nominated and not current.nominated) or now - current.last_check >= self._stale_after:
                self._selected = addr
        self._announce_selection(old)

    def _complete_restart(self, keep: Address) -> None:
        """The first check under the new credentials arrived from ``keep``: retire the old generation."""
        self._previous = None
        for addr in [a for a, p in self._peers.items() if p.generation != self._generation and a != keep]:
            self._remove(addr, "restart")
        # a selection removed here falls back in _checked, to ``keep`` (the newest check)

    def _evict(self) -> None:
        victim = next((a for a in self._peers if a != self._selected), None)
        if victim is None:  # only the selected address is left
            victim = next(iter(self._peers))
        self._remove(victim, "evicted")

    def _remove(self, addr: Address, reason: str) -> None:
        del self._peers[addr]
        self._events.append(AddressRemoved(addr, reason))

    def _fallback(self) -> Address | None:
        """The best remaining address: nominated first, then most recently checked."""
        best: Address | None = None
        best_rank: tuple[bool, float] | None = None
        for addr, peer in self._peers.items():
            rank = (peer.nominated, peer.last_check)
            if best_rank is None or rank >= best_rank:
                best, best_rank = addr, rank
        return best

    def _announce_selection(self, old: Address | None) -> None:
        if self._selected != old:
            self._events.append(SelectedAddressChanged(old, self._selected))

"""The client's side of ICE: a full, controlling agent against the ICE-lite gateway.

Sans-I/O (GUIDE section 1): no sockets, no asyncio, no clock. The shell feeds
datagrams with :meth:`IceControllingAgent.receive`, sends what
:meth:`IceControllingAgent.datagrams_to_send` returns, drains
:meth:`IceControllingAgent.next_event`, and calls
:meth:`IceControllingAgent.handle_timer` at
:meth:`IceControllingAgent.get_timer`. ``now`` is always an argument (any
monotonic clock, in seconds).

Protocol
--------
* **Roles** (RFC 8445 section 6.1.1). The gateway is a lite agent (its SDP says
  ``a=ice-lite``), so this full agent is always the controlling one. It has
  one local candidate, the shell's UDP socket (component 1, RTP and RTCP
  multiplexed, RFC 5761), and the gateway's host candidates as remote
  candidates; the checklist is one pair per remote candidate, in the order
  given (the caller puts the preferred candidates first).
* **Checks** (RFC 8445 section 7.2.2, RFC 8489 section 9.1 short-term
  credentials). A Binding request with USERNAME ``"<remote ufrag>:<local
  ufrag>"``, PRIORITY (the peer-reflexive priority of section 7.1.1: type
  preference 110, local preference 65535, component 1), ICE-CONTROLLING with a
  random 64-bit tie-breaker (section 7.1.3), USE-CANDIDATE, MESSAGE-INTEGRITY
  keyed with the **remote** password (section 7.2.2) and FINGERPRINT
  (section 7). Requests are encoded with aioice's ``Message``; responses are
  checked with :mod:`callsgw.wire.stun`, an independent implementation.
* **Nomination.** Every check carries USE-CANDIDATE. RFC 8445 section 8.1.1
  describes regular nomination (a second check with USE-CANDIDATE on a pair
  already valid); sending the flag on the first check, as RFC 5245's
  aggressive nomination did, saves that round trip, and it is what a lite
  peer expects: it selects the pair as soon as an authenticated check with
  the flag arrives (section 7.3.1.5) and cannot nominate itself. The first
  pair whose check succeeds is therefore valid and nominated at once, so it
  is selected (:class:`PairSelected`); the other pairs are abandoned
  (section 8.1.2).
* **Pacing and retransmission** (RFC 8445 section 14). A new check starts at
  most every ``ta`` seconds (Ta, 50 ms by default, section 14.2).
  A check that gets no answer is retransmitted with the same transaction ID
  and bytes (RFC 8489 section 6.2.1) after an RTO of ``rto`` (500 ms, the floor
  of RFC 8445 section 14.3), doubling after each retransmission up to
  ``max_rto``; after ``max_transmissions`` transmissions (Rc = 7) and one more
  RTO without an answer the pair fails. When every pair has failed the agent
  fails (:class:`IceFailed` ``"checks_failed"``): with the defaults, 15.5 s
  after the first check of the last pair.
* **Responses** (RFC 8445 section 7.2.5). A response counts only if its
  transaction ID is one we sent and still track, it comes from the address
  the request went to (section 7.2.5.2.1: the pair must be symmetric), its
  MESSAGE-INTEGRITY verifies with the remote password and its FINGERPRINT is
  right. Anything else (and every request or indication: a lite peer sends no
  checks, section 2.5) is dropped and counted in ``stats``. An authenticated
  error response fails its pair (section 7.2.5.2.4); a 487 cannot be resolved
  against a lite peer, which never takes the controlling role.
* **Consent freshness** (RFC 7675 section 5.1). Once a pair is selected, a
  consent check (the same Binding request, still with USE-CANDIDATE so that
  the gateway keeps following this pair) is sent every ``consent_interval``
  seconds (5 s), each interval drawn uniformly from 0.8 to 1.2 times that.
  Each check is a new transaction with a fresh random transaction ID. Consent
  holds while a valid response has arrived to a request **sent** within the
  last ``consent_timeout`` seconds (30 s); since an answer to any recent check
  counts, checks are not retransmitted: the next periodic check takes the
  place of a lost one. When consent expires the agent fails
  (:class:`IceFailed` ``"consent_expired"``) and sends nothing more; a late
  response does not revive it (RFC 7675 section 5.1).

ICE restart (section 9) is a new agent with new credentials, run next to
this one until it selects a pair (:meth:`ClientTransport.begin_ice_restart`);
:meth:`IceControllingAgent.owns` tells the two agents' responses apart, and
:meth:`IceControllingAgent.consent_age` is how long the path has been silent,
the client's reason to restart before consent expires.

Not implemented, on purpose: answering Binding requests (a lite peer never
sends them), switching to the controlled role (RFC 8445 section 7.2.5.1:
impossible against a lite peer),
trickle ICE and local candidate gathering (the gateway needs no client
candidates: it learns the client's address from its checks).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import random
import secrets
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Final, Union

from aioice import stun as aiostun

from callsgw.ice.credentials import PWD_MIN, UFRAG_MIN, check_credential, generate_credentials as _generate
from callsgw.wire import stun

__all__ = [
    "Address",
    "IceControllingAgent",
    "IceEvent",
    "IceFailed",
    "IceState",
    "PairSelected",
    "STAT_KEYS",
    "generate_credentials",
    "peer_reflexive_priority",
]

#: A transport address ``(ip, port)``, compared as given. The shell must pass
#: received addresses in this form (an IPv6 socket's 4-tuple cut to 2).
Address = tuple


#: Peer-reflexive type preference (RFC 8445 section 5.1.2.2).
PRFLX_TYPE_PREFERENCE: Final = 110

#: How many consent transactions are remembered. At one check per 4 s at
#: least, 30 s of checks is 8; the rest are expired anyway.
MAX_CONSENT_TRANSACTIONS: Final = 16
#: Outgoing datagrams kept when the shell does not drain them; oldest go first.
MAX_QUEUED_DATAGRAMS: Final = 64
MAX_QUEUED_EVENTS: Final = 64
#: Remote candidates kept (the gateway announces a handful of host candidates).
MAX_REMOTE_CANDIDATES: Final = 16

#: Every key of :attr:`IceControllingAgent.stats`.
STAT_KEYS: Final = (
    "checks_sent",  # first transmissions of connectivity checks
    "retransmissions",  # retransmitted connectivity checks
    "consent_checks_sent",  # RFC 7675 consent checks
    "responses",  # authenticated success responses accepted
    "error_responses",  # authenticated error responses (fail the pair)
    "oversize",  # datagram above stun.MAX_STUN_SIZE
    "malformed",  # not well-formed STUN
    "bad_fingerprint",  # FINGERPRINT wrong
    "not_binding",  # another STUN method
    "unexpected_request",  # a request or indication (a lite peer sends none)
    "unknown_transaction",  # not a transaction we are waiting for
    "wrong_source",  # answer from another address than the request's target
    "no_integrity",  # no MESSAGE-INTEGRITY
    "no_fingerprint",  # no FINGERPRINT
    "bad_integrity",  # MESSAGE-INTEGRITY does not verify with the remote password
    "closed",  # datagram after the agent failed or closed
    "send_queue_full",  # outgoing datagram dropped, the shell did not drain
)

_VERDICT_STAT: Final = {
    stun.Verdict.MALFORMED: "malformed",
    stun.Verdict.NO_INTEGRITY: "no_integrity",
    stun.Verdict.NO_FINGERPRINT: "no_fingerprint",
    stun.Verdict.BAD_FINGERPRINT: "bad_fingerprint",
    stun.Verdict.BAD_INTEGRITY: "bad_integrity",
}


class IceState(str, enum.Enum):
    """Agent state; compares equal to its string value."""

    NEW = "new"  # not started
    CHECKING = "checking"  # connectivity checks running
    CONNECTED = "connected"  # a pair is selected, consent is fresh
    FAILED = "failed"  # every check failed, or consent expired (terminal)
    CLOSED = "closed"  # close() was called (terminal)


@dataclasses.dataclass(frozen=True, slots=True)
class PairSelected:
    """The pair to ``remote_addr`` succeeded and is selected: send media there.

    ``mapped_addr`` is the client's address as the gateway saw it
    (XOR-MAPPED-ADDRESS of the success response, RFC 8489 section 14.2), if
    the response carried one.
    """

    remote_addr: Address
    mapped_addr: Address | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class IceFailed:
    """ICE is over: ``"checks_failed"`` (no pair succeeded) or
    ``"consent_expired"`` (RFC 7675 section 5.1). Stop sending."""

    reason: str
    detail: str = ""


IceEvent = Union[PairSelected, IceFailed]




def generate_credentials() -> tuple[str, str]:
    """A fresh ``(ufrag, pwd)`` (see :mod:`callsgw.ice.credentials`)."""
    return _generate()


def peer_reflexive_priority(component: int = 1, local_preference: int = 65535) -> int:
    """The PRIORITY a check carries (RFC 8445 sections 5.1.2.1 and 7.1.1).

    The priority the peer-reflexive candidate learned from this check would
    have: type preference 110, the local preference, 256 minus the component.
    """
    return (PRFLX_TYPE_PREFERENCE << 24) | (local_preference << 8) | (256 - component)


def _normalise(addr: Iterable) -> Address:
    """``(ip, port)`` with the IP in canonical text form; ``ValueError`` if not an address."""
    try:
        host, port = tuple(addr)[:2]
        ip = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        raise ValueError(f"remote candidate {addr!r} is not an (IP address, port) pair") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFFFF:
        raise ValueError(f"remote candidate {addr!r} has an invalid port")
    return (str(ip), port)


class _Pair:
    """One candidate pair (our socket, a remote candidate) and its check."""

    __slots__ = ("remote", "state", "tid", "request", "transmissions", "rto", "deadline", "first_sent")

    def __init__(self, remote: Address) -> None:
        self.remote = remote
        self.state = "waiting"  # waiting | in_progress | succeeded | failed | cancelled
        self.tid: bytes | None = None
        self.request: bytes | None = None
        self.transmissions = 0
        self.rto = 0.0
        self.deadline: float | None = None
        self.first_sent = 0.0


class IceControllingAgent:
    """RFC 8445 full agent in the controlling role, with RFC 7675 consent (see the module docstring).

    ``stats`` counts what was sent and why datagrams were dropped (keys in
    :data:`STAT_KEYS`). ``tie_breaker`` is the ICE-CONTROLLING value
    (RFC 8445 section 7.1.3), random unless given.
    """

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str | None = None,
        remote_pwd: str | None = None,
        remote_candidates: Iterable[Address] = (),
        *,
        tie_breaker: int | None = None,
        ta: float = 0.05,
        rto: float = 0.5,
        max_rto: float = 3.0,
        max_transmissions: int = 7,
        consent_interval: float = 5.0,
        consent_timeout: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self._local_ufrag = check_credential("local ufrag", local_ufrag, UFRAG_MIN)
        self._local_pwd = check_credential("local password", local_pwd, PWD_MIN)
        if tie_breaker is None:
            tie_breaker = secrets.randbits(64)
        if isinstance(tie_breaker, bool) or not isinstance(tie_breaker, int) or not 0 <= tie_breaker < 2**64:
            raise ValueError("tie_breaker must be an unsigned 64-bit integer (RFC 8445 section 7.1.3)")
        if not ta > 0 or not rto > 0 or not max_rto >= rto:
            raise ValueError("ta and rto must be positive and max_rto at least rto")
        if isinstance(max_transmissions, bool) or not isinstance(max_transmissions, int) or max_transmissions < 1:
            raise ValueError("max_transmissions must be an int of at least 1")
        if not 0 < consent_interval * 1.2 < consent_timeout:
            raise ValueError("consent_interval * 1.2 must be positive and below consent_timeout")
        self._tie_breaker = tie_breaker
        self._ta = float(ta)
        self._rto = float(rto)
        self._max_rto = float(max_rto)
        self._max_transmissions = max_transmissions
        self._consent_interval = float(consent_interval)
        self._consent_timeout = float(consent_timeout)
        self._rng = rng if rng is not None else secrets.SystemRandom()

        self._remote_ufrag: str | None = None
        self._remote_pwd: str | None = None
        self._key = b""
        self._pairs: list[_Pair] = []
        self._state = IceState.NEW
        self._selected: Address | None = None
        self._mapped: Address | None = None
        self._next_check_at: float | None = None
        self._by_tid: dict[bytes, _Pair] = {}
        # consent transactions: tid -> time sent
        self._consent_tids: OrderedDict[bytes, float] = OrderedDict()
        self._consent_base = 0.0  # send time of the newest request answered
        self._next_consent_at: float | None = None
        self._out: deque[tuple[bytes, Address]] = deque()
        self._events: deque[IceEvent] = deque()
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        if remote_ufrag is not None or remote_pwd is not None or remote_candidates:
            self.set_remote(remote_ufrag, remote_pwd, remote_candidates)

    # -- configuration ---------------------------------------------------------

    def set_remote(self, ufrag: str | None, pwd: str | None, candidates: Iterable[Address]) -> None:
        """Learn the gateway's credentials and candidates (from its SDP, RFC 8839 section 5.4).

        Candidates are ``(ip, port)`` UDP host candidates, best first;
        duplicates are dropped and at most :data:`MAX_REMOTE_CANDIDATES` kept.
        Only before :meth:`start`; an ICE restart needs a new agent.
        """
        if self._state is not IceState.NEW:
            raise ValueError("remote parameters are fixed once checks started; an ICE restart needs a new agent")
        if ufrag is None or pwd is None:
            raise ValueError("give both the remote ufrag and the remote password")
        self._remote_ufrag = check_credential("remote ufrag", ufrag, UFRAG_MIN)
        self._remote_pwd = check_credential("remote password", pwd, PWD_MIN)
        self._key = pwd.encode("ascii")
        pairs: list[_Pair] = []
        seen: set[Address] = set()
        for candidate in candidates:
            addr = _normalise(candidate)
            if addr in seen:
                continue
            if len(pairs) >= MAX_REMOTE_CANDIDATES:
                break
            seen.add(addr)
            pairs.append(_Pair(addr))
        self._pairs = pairs

    def start(self, now: float) -> None:
        """Start connectivity checks: the first check is queued at once (RFC 8445 section 6.1.4.2)."""
        if self._state is not IceState.NEW:
            raise ValueError(f"cannot start an agent that is {self._state.value}")
        if self._remote_ufrag is None:
            raise ValueError("set the remote credentials and candidates first")
        if not self._pairs:
            raise ValueError("no remote candidate to check")
        self._state = IceState.CHECKING
        self._next_check_at = now
        self.handle_timer(now)

    # -- state -----------------------------------------------------------------

    @property
    def state(self) -> IceState:
        return self._state

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
    def tie_breaker(self) -> int:
        return self._tie_breaker

    @property
    def remote_candidates(self) -> tuple[Address, ...]:
        return tuple(p.remote for p in self._pairs)

    @property
    def selected_address(self) -> Address | None:
        """The remote address of the selected pair, or ``None`` (also after failure)."""
        return self._selected

    @property
    def mapped_address(self) -> Address | None:
        """Our address as the gateway saw it in the selected pair's check, if known."""
        return self._mapped

    def consent_age(self, now: float) -> float | None:
        """Seconds since the newest check that got an answer was sent (``None`` unless connected).

        About one consent interval on a healthy path; past two intervals
        the path has dropped at least two checks in a row.
        """
        if self._state is not IceState.CONNECTED:
            return None
        return now - self._consent_base

    def owns(self, data: bytes) -> bool:
        """True if ``data`` is a STUN message answering a transaction this agent is waiting for."""
        tid = bytes(data[8:20])
        return len(tid) == 12 and (tid in self._by_tid or tid in self._consent_tids)

    def next_event(self) -> IceEvent | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """``(datagram, remote address)`` to send from the agent's socket, oldest first."""
        out = list(self._out)
        self._out.clear()
        return out

    def close(self) -> None:
        """Stop: send nothing more, accept nothing more, state ``"closed"``. No event."""
        if self._state not in (IceState.FAILED, IceState.CLOSED):
            self._state = IceState.CLOSED
        self._selected = None
        self._by_tid.clear()
        self._consent_tids.clear()
        self._out.clear()

    # -- timers ----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next retransmission, paced check, consent check or consent expiry; ``None`` when idle."""
        if self._state is IceState.CHECKING:
            times = [p.deadline for p in self._pairs if p.state == "in_progress" and p.deadline is not None]
            if self._next_check_at is not None and any(p.state == "waiting" for p in self._pairs):
                times.append(self._next_check_at)
            return min(times) if times else None
        if self._state is IceState.CONNECTED:
            expiry = self._consent_base + self._consent_timeout
            return expiry if self._next_consent_at is None else min(expiry, self._next_consent_at)
        return None

    def handle_timer(self, now: float) -> None:
        """Do whatever is due at ``now``. Safe to call early or late."""
        if self._state is IceState.CHECKING:
            self._run_checks(now)
        elif self._state is IceState.CONNECTED:
            self._run_consent(now)

    def _run_checks(self, now: float) -> None:
        for pair in self._pairs:
            if pair.state != "in_progress" or pair.deadline is None or pair.deadline > now:
                continue
            if pair.transmissions >= self._max_transmissions:
                # RFC 8489 section 6.2.1: no answer after the last transmission
                self._fail_pair(pair)
                continue
            # RFC 8489 section 6.2.1: same request, RTO doubled (bounded)
            pair.transmissions += 1
            pair.rto = min(pair.rto * 2, self._max_rto)
            pair.deadline = now + pair.rto
            self.stats["retransmissions"] += 1
            self._send(pair.request, pair.remote)
        # RFC 8445 section 14.2: one new check per Ta
        if self._next_check_at is not None and self._next_check_at <= now:
            waiting = next((p for p in self._pairs if p.state == "waiting"), None)
            if waiting is not None:
                self._start_check(waiting, now)
                self._next_check_at = now + self._ta
        if self._state is IceState.CHECKING and all(p.state == "failed" for p in self._pairs):
            self._fail("checks_failed", f"no answer from any of {len(self._pairs)} gateway candidate(s)")

    def _run_consent(self, now: float) -> None:
        if now >= self._consent_base + self._consent_timeout:
            self._fail(
                "consent_expired",
                f"no answer to a consent check sent in the last {self._consent_timeout:g} s (RFC 7675)",
            )
            return
        # forget transactions too old to refresh consent anyway
        horizon = now - self._consent_timeout
        while self._consent_tids and next(iter(self._consent_tids.values())) < horizon:
            self._consent_tids.popitem(last=False)
        if self._next_consent_at is not None and self._next_consent_at <= now:
            tid = secrets.token_bytes(12)
            self._consent_tids[tid] = now
            while len(self._consent_tids) > MAX_CONSENT_TRANSACTIONS:
                self._consent_tids.popitem(last=False)
            self.stats["consent_checks_sent"] += 1
            self._send(self._request(tid), self._selected)
            self._next_consent_at = now + self._consent_delay()

    def _consent_delay(self) -> float:
        # RFC 7675 section 5.1: uniformly random in [0.8, 1.2] x the interval
        return self._consent_interval * self._rng.uniform(0.8, 1.2)

    # -- input -----------------------------------------------------------------

    def receive(self, data: bytes, addr: Address, now: float) -> None:
        """Handle one STUN datagram from ``addr`` (see the module docstring). Never raises.

        Timers due at ``now`` run first, so a response that arrives after
        consent expired does not count.
        """
        self.handle_timer(now)
        if self._state not in (IceState.CHECKING, IceState.CONNECTED):
            return self._drop("closed")
        if len(data) > stun.MAX_STUN_SIZE:
            return self._drop("oversize")
        try:
            msg = stun.parse(data)
        except stun.FingerprintError:
            return self._drop("bad_fingerprint")
        except stun.StunError:
            return self._drop("malformed")
        if msg.message_method != stun.Method.BINDING:
            return self._drop("not_binding")
        if msg.message_class not in (stun.Class.RESPONSE, stun.Class.ERROR):
            return self._drop("unexpected_request")
        tid = msg.transaction_id
        pair = self._by_tid.get(tid)
        consent_sent = self._consent_tids.get(tid)
        if pair is None and consent_sent is None:
            return self._drop("unknown_transaction")
        expected = pair.remote if pair is not None else self._selected
        if tuple(addr)[:2] != expected:
            return self._drop("wrong_source")
        verdict = stun.authenticate(data, self._key)
        if verdict is not stun.Verdict.OK:
            return self._drop(_VERDICT_STAT[verdict])

        # authenticated, from the right address, for a live transaction
        if msg.message_class == stun.Class.ERROR:
            self.stats["error_responses"] += 1
            if pair is not None:
                self._fail_pair(pair)
                if all(p.state == "failed" for p in self._pairs):
                    code = msg.attributes.get("ERROR-CODE")
                    self._fail("checks_failed", f"the gateway refused the checks: {code!r}")
            else:
                del self._consent_tids[tid]  # refused: does not refresh consent
            return None
        self.stats["responses"] += 1
        mapped = msg.attributes.get("XOR-MAPPED-ADDRESS")
        if pair is not None:
            self._succeed(pair, mapped, now)
        else:
            del self._consent_tids[tid]
            if consent_sent > self._consent_base:
                self._consent_base = consent_sent
        return None

    # -- internals ---------------------------------------------------------------

    def _request(self, tid: bytes) -> bytes:
        """A signed Binding request (RFC 8445 section 7.2.2)."""
        msg = aiostun.Message(
            message_method=aiostun.Method.BINDING,
            message_class=aiostun.Class.REQUEST,
            transaction_id=tid,
        )
        msg.attributes["USERNAME"] = f"{self._remote_ufrag}:{self._local_ufrag}"
        msg.attributes["PRIORITY"] = peer_reflexive_priority()
        msg.attributes["ICE-CONTROLLING"] = self._tie_breaker
        msg.attributes["USE-CANDIDATE"] = None
        msg.add_message_integrity(self._key)  # also adds FINGERPRINT
        return bytes(msg)

    def _start_check(self, pair: _Pair, now: float) -> None:
        tid = secrets.token_bytes(12)
        pair.tid = tid
        pair.request = self._request(tid)
        pair.state = "in_progress"
        pair.transmissions = 1
        pair.rto = self._rto
        pair.deadline = now + self._rto
        pair.first_sent = now
        self._by_tid[tid] = pair
        self.stats["checks_sent"] += 1
        self._send(pair.request, pair.remote)

    def _fail_pair(self, pair: _Pair) -> None:
        pair.state = "failed"
        pair.deadline = None
        if pair.tid is not None:
            self._by_tid.pop(pair.tid, None)

    def _succeed(self, pair: _Pair, mapped, now: float) -> None:
        # RFC 8445 sections 7.2.5.3 and 8.1.1: valid and nominated, so selected
        pair.state = "succeeded"
        pair.deadline = None
        for other in self._pairs:
            if other is not pair and other.state in ("waiting", "in_progress"):
                other.state = "cancelled"  # RFC 8445 section 8.1.2
                other.deadline = None
        self._by_tid.clear()
        self._next_check_at = None
        self._selected = pair.remote
        self._mapped = tuple(mapped)[:2] if isinstance(mapped, tuple) else None
        self._state = IceState.CONNECTED
        # the check's first transmission is the request consent dates from
        self._consent_base = pair.first_sent
        self._next_consent_at = now + self._consent_delay()
        self._event(PairSelected(self._selected, self._mapped))

    def _fail(self, reason: str, detail: str) -> None:
        self._state = IceState.FAILED
        self._selected = None
        self._by_tid.clear()
        self._consent_tids.clear()
        self._next_check_at = None
        self._next_consent_at = None
        self._out.clear()  # RFC 7675 section 5.1: cease transmission
        self._event(IceFailed(reason, detail))

    def _send(self, data: bytes, addr: Address) -> None:
        if len(self._out) >= MAX_QUEUED_DATAGRAMS:
            self._out.popleft()
            self.stats["send_queue_full"] += 1
        self._out.append((data, addr))

    def _event(self, event: IceEvent) -> None:
        if len(self._events) >= MAX_QUEUED_EVENTS:
            self._events.popleft()
        self._events.append(event)

    def _drop(self, reason: str) -> None:
        self.stats[reason] += 1
        return None

"""A socket-free pump around :class:`GatewayCore` with simulated clients (tests only).

str0m style: no sockets, no asyncio, no wall clock. Every client talks to the
core through two FIFO queues (client -> gateway, gateway -> client), one pair
per WebSocket, exactly as TCP orders them; a test (or hypothesis) decides which
queue moves next, when clients join, leave, mute or share a screen, and when
the simulated clock advances. That explores the interleavings in which
messages of different connections cross each other: the concurrent-joins bug
(issue #12) lives in such orderings.

:class:`SimClient` is one participant. Its glare policy is one of the two that
real clients use:

* ``"rollback"``: the Python client itself: every decision is made by its
  sans-I/O negotiation core, :class:`callsgw.client.negotiation.ClientNegotiation`
  (a gateway offer that crosses our own offer makes us drop ours at once,
  answer, and offer again afterwards), so the property below is checked on
  the real client code;
* ``"stash"``: the web page, modelled here with the client SDP helpers of
  ``callsgw.client.sdp``: the gateway offer waits until the gateway refuses
  ours with ``glare``, then we roll back, answer it, and offer again.

:func:`convergence_problems` states the property that must hold once the
queues are empty: every participant receives exactly the others' published
tracks, knows exactly the others, and no offer is outstanding on either side.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace

from callsgw.client.negotiation import ClientNegotiation
from callsgw.client.sdp import (
    MediaSection,
    answer_sections,
    applied_answer,
    build_offer,
    describe,
    parse_answer,
    parse_offer,
)
from callsgw.dtls.certificate import DtlsCertificate
from callsgw.signaling import tokens
from callsgw.signaling.core import (
    AddTransport,
    Close,
    GatewayCore,
    Limits,
    RemoveTransport,
    Send,
)

START = 1000.0  # the simulated monotonic clock's first reading
SECRET = b"pump-secret-" + b"x" * 32
CALL = "pumpcall"

_certificates: dict[str, DtlsCertificate] = {}


def _certificate(role: str) -> DtlsCertificate:
    # key generation is the slow part of a core; one per role serves every example
    if role not in _certificates:
        _certificates[role] = DtlsCertificate.generate()
    return _certificates[role]


def make_core(limits: Limits | None = None) -> GatewayCore:
    return GatewayCore(
        api_secret=SECRET,
        certificate=_certificate("gateway"),
        media_address=("127.0.0.1", 40000),
        announce=("127.0.0.1",),
        wall_offset=time.time() - START,  # tokens are minted at the real time
        limits=limits or Limits(joins_per_second_per_address=1e6, messages_per_second=1e6, max_connections=1000),
    )


@dataclass
class SimClient:
    """One participant as a client program sees it; no I/O (its messages go to ``outbox``)."""

    name: str
    conn_id: int
    policy: str = "rollback"  # "rollback" | "stash"
    may_share: bool = True
    ufrag: str = field(default_factory=lambda: "u" + "".join(random.choices("abcdefgh", k=7)))
    pwd: str = "p" * 24
    outbox: deque = field(default_factory=deque)
    sections: list[MediaSection] = field(default_factory=list)
    participants: dict[str, dict] = field(default_factory=dict)
    pending: tuple[int, list[MediaSection]] | None = None  # our offer waiting for its answer
    stashed: dict | None = None  # ("stash" policy) a gateway offer waiting for our glare
    joined: bool = False
    closed: bool = False
    dropped: bool = False  # the socket died under us; we may resume
    close_code: int | None = None
    my_id: str | None = None
    want_screen: bool = False
    sharing: bool = False  # the gateway confirmed our screen state
    offers_received: int = 0
    answers_sent: int = 0
    next_offer_id: int = 1
    errors: list[dict] = field(default_factory=list)
    token: str = ""
    resume: dict | None = None  # the latest resume credential from the gateway
    answers: dict[int, str] = field(default_factory=dict)  # gateway offer id -> our answer text
    resumed_count: int = 0
    corrupt_next_answer: bool = False  # the next answer says a=setup:actpass: the gateway refuses it
    msids: dict[str, str | None] = field(default_factory=dict)  # mid -> the gateway's a=msid
    log: list[str] = field(default_factory=list)
    now: float = START  # the pump's clock when the current message is delivered
    neg: ClientNegotiation | None = None  # "rollback": the Python client's own negotiation core
    neg_events: list = field(default_factory=list)  # what the core reported, oldest first

    def __post_init__(self) -> None:
        if self.policy == "rollback":
            self.neg = ClientNegotiation(ice_ufrag=self.ufrag, ice_pwd=self.pwd, fingerprint=self.fingerprint)

    @property
    def fingerprint(self) -> str:
        return _certificate("client").fingerprint

    # -- things a user does ------------------------------------------------------------

    def join(self, token: str) -> None:
        if self.neg is not None:
            self._send({"type": "join", "token": token, "sdp": self.neg.join_offer()})
            return
        self.pending = (0, [MediaSection.voice("0")])
        sdp = build_offer(self.ufrag, self.pwd, self.fingerprint, self.pending[1])
        self._send({"type": "join", "token": token, "sdp": sdp})

    def mute(self, muted: bool) -> None:
        self._send({"type": "mute", "muted": muted})

    def screen(self, on: bool) -> None:
        """Announce first (the gateway's verdict decides), then offer the section (as the page does)."""
        if on:
            self._send({"type": "screen", "sharing": True})
        else:
            self.want_screen = False
            self._send({"type": "screen", "sharing": False})
            if self.neg is not None:
                self._send_all(self.neg.want_screen(False, self.now))
            else:
                self._maybe_offer()

    def leave(self) -> None:
        self._send({"type": "leave"})

    # -- the gateway's messages ---------------------------------------------------------

    def receive(self, msg: dict) -> None:
        kind = msg["type"]
        self.log.append(kind)
        if self.neg is not None:
            self._receive_with_core(msg)
            return
        if kind == "joined":
            answer = parse_answer(msg["sdp"])
            self.sections = applied_answer(self.pending[1], answer)
            self.pending = None
            self.joined = True
            self.my_id = msg["participant"]["id"]
            self.participants = {p["id"]: dict(p) for p in msg["participants"]}
            self.resume = msg.get("resume")
        elif kind == "resumed":
            self._resumed(msg)
        elif kind == "participant_joined":
            self.participants[msg["participant"]["id"]] = dict(msg["participant"])
        elif kind == "participant_left":
            self.participants.pop(msg["participant_id"], None)
        elif kind == "screen":
            if msg["participant_id"] == self.my_id:
                self.sharing = msg["sharing"]
                if msg["sharing"] and not self.want_screen:
                    self.want_screen = True
                    self._maybe_offer()
            elif msg["participant_id"] in self.participants:
                self.participants[msg["participant_id"]]["sharing"] = msg["sharing"]
        elif kind == "mute":
            if msg["participant_id"] in self.participants:
                self.participants[msg["participant_id"]]["muted"] = msg["muted"]
        elif kind == "offer":
            self.offers_received += 1
            self._gateway_offer(msg)
        elif kind == "answer":
            self._answer(msg)
        elif kind == "error":
            self.errors.append(msg)
            self._error(msg)

    def _receive_with_core(self, msg: dict) -> None:
        """The Python client's way: its negotiation core decides, the pump only delivers."""
        kind, neg = msg["type"], self.neg
        if kind == "joined":
            neg.joined(msg)
            self.joined = True
            self.my_id = msg["participant"]["id"]
            self.resume = msg.get("resume")
        elif kind == "resumed":
            self.resumed_count += 1
            self.resume = msg["resume"]
            self.sharing = msg["sharing"]
            self._send_all(neg.resumed(msg, self.now))
        elif kind == "screen" and msg["participant_id"] == self.my_id:
            self.sharing = msg["sharing"]
            if msg["sharing"] and not self.want_screen:
                self.want_screen = True
                self._send_all(neg.want_screen(True, self.now))
        else:
            if kind == "offer":
                self.offers_received += 1
            elif kind == "error":
                self.errors.append(msg)
            self._send_all(neg.receive(msg, self.now))
        self._mirror()

    def _send_all(self, messages: list[dict]) -> None:
        for message in messages:
            if message["type"] == "answer":
                self.answers_sent += 1
                self.answers[message["id"]] = message["sdp"]
                if self.corrupt_next_answer:  # the gateway must refuse it: a=setup:actpass in an answer
                    self.corrupt_next_answer = False
                    message = {**message, "sdp": message["sdp"].replace("a=setup:active", "a=setup:actpass")}
            self._send(message)
        while (event := self.neg.next_event()) is not None:
            self.neg_events.append(event)  # the Python client's shell turns these into futures
        self._mirror()

    def _mirror(self) -> None:
        """The core's state under the names the property reads."""
        neg = self.neg
        self.sections = list(neg.sections)
        self.participants = neg.participants
        self.pending = (neg.pending_offer_id, []) if neg.pending_offer_id is not None else None
        if neg.latest_remote is not None:
            self.msids = {m.mid: m.msid for m in neg.latest_remote.media}

    def send_resume(self) -> None:
        """On a new socket: ask to re-attach to our session (docs/PROTOCOL.md "Resuming")."""
        self.closed = False
        self.close_code = None
        self._send({"type": "resume", "participant_id": self.my_id, "call": CALL,
                    "credential": self.resume["credential"]})

    def _resumed(self, msg: dict) -> None:
        self.resumed_count += 1
        self.resume = msg["resume"]
        self.participants = {p["id"]: dict(p) for p in msg["participants"]}
        self.sharing = msg["sharing"]
        if self.pending is not None:
            answer = msg.get("answer")
            if answer is not None and answer["id"] == self.pending[0]:
                self._answer(answer)  # the answer we missed
            else:
                self.pending = None  # never reached the gateway (or was refused): offer again
                if self.stashed is not None:
                    offer, self.stashed = self.stashed, None
                    self._answer_offer(offer)
                self._maybe_offer()
        elif self.stashed is not None:
            offer, self.stashed = self.stashed, None
            self._answer_offer(offer)

    def closed_by_gateway(self, code: int) -> None:
        self.closed = True
        self.close_code = code

    # -- negotiation -----------------------------------------------------------------

    def _send(self, msg: dict) -> None:
        if not self.closed:
            self.outbox.append(json.dumps(msg))

    def _offer_id(self) -> int:
        n = self.next_offer_id
        self.next_offer_id += 1
        return n

    def _desired(self) -> list[MediaSection]:
        sections = list(self.sections)
        screen = next((s for s in sections if s.track_id == "screen" and not s.stopped), None)
        if self.want_screen and screen is None:
            taken = {s.mid for s in sections}
            n = len(sections)
            while str(n) in taken:
                n += 1
            sections.append(MediaSection.screen(str(n)))
        elif not self.want_screen and screen is not None:
            sections[sections.index(screen)] = replace(screen, stopped=True, direction="inactive")
        return sections

    def _maybe_offer(self) -> None:
        if not self.joined or self.pending is not None or self.stashed is not None:
            return
        proposal = self._desired()
        if proposal == self.sections:
            return
        offer_id = self._offer_id()
        self.pending = (offer_id, proposal)
        self._send({"type": "offer", "id": offer_id, "sdp": build_offer(self.ufrag, self.pwd, self.fingerprint, proposal)})

    def _answer(self, msg: dict) -> None:
        if self.pending is None or msg["id"] != self.pending[0]:
            return  # stale: a rolled-back offer
        _, proposal = self.pending
        self.pending = None
        self.sections = applied_answer(proposal, parse_answer(msg["sdp"]))
        if self.stashed is not None:
            offer, self.stashed = self.stashed, None
            self._answer_offer(offer)
        self._maybe_offer()

    def _gateway_offer(self, msg: dict) -> None:
        if msg["id"] in self.answers:
            # sent again after a resume: our answer was lost with the old socket
            self._send({"type": "answer", "id": msg["id"], "sdp": self.answers[msg["id"]]})
            return
        if self.pending is not None:
            self.stashed = msg  # the page's way: answered once the gateway refused ours with glare
            return
        self._answer_offer(msg)
        self._maybe_offer()

    def _answer_offer(self, msg: dict) -> None:
        offer = parse_offer(msg["sdp"])
        publishing = [s for s in self.sections if s.sends]
        sections = answer_sections(offer, publishing)
        self.msids = {m.mid: m.msid for m in offer.media}
        setup = "actpass" if self.corrupt_next_answer else "active"
        self.corrupt_next_answer = False
        sdp = describe(sections, ice_ufrag=self.ufrag, ice_pwd=self.pwd, fingerprint=self.fingerprint, setup=setup)
        self.sections = sections
        self.answers_sent += 1
        self.answers[msg["id"]] = sdp
        self._send({"type": "answer", "id": msg["id"], "sdp": sdp})

    def _error(self, msg: dict) -> None:
        if msg.get("ref") == "offer" and self.pending is not None and msg.get("id") == self.pending[0]:
            self.pending = None  # rolled back (glare) or refused
            if msg["code"] != "glare":
                self.want_screen = self.sharing and self.want_screen
            if self.stashed is not None:
                offer, self.stashed = self.stashed, None
                self._answer_offer(offer)
            if msg["code"] == "glare":
                self._maybe_offer()

    # -- what the client sees ----------------------------------------------------------

    def receiving(self) -> set[tuple[str, str]]:
        """(publisher id, track) of every live section we receive on, named by the gateway's msid."""
        out = set()
        for s in self.sections:
            if not s.receives:
                continue
            stream, _, track = (self.msids.get(s.mid) or "? ?").partition(" ")
            out.add((stream, track[len(stream) + 1:] if track.startswith(stream + "-") else track))
        return out


class Pump:
    """The core, its connections as FIFO queue pairs, and a simulated clock."""

    def __init__(self, core: GatewayCore | None = None, *, policy: str = "rollback"):
        self.core = core or make_core()
        self.now = START
        self.clients: dict[int, SimClient] = {}
        self.to_gateway: dict[int, deque] = {}
        self.to_client: dict[int, deque] = {}
        self.policy = policy
        self._ids = 0
        self.gone: list[SimClient] = []
        self.offer_sdp: dict[tuple[int, str], str] = {}  # (conn, mid) -> msid of the gateway's section

    # -- connections --------------------------------------------------------------

    def open(self, name: str, *, screen: bool = True, policy: str | None = None, token: str | None = None) -> SimClient:
        self._ids += 1
        conn = self._ids
        client = SimClient(name, conn, policy=policy or self.policy, may_share=screen)
        self.clients[conn] = client
        self.to_gateway[conn] = client.outbox
        self.to_client[conn] = deque()
        self.core.connect(conn, ("127.0.0.1", 50000 + conn), None, self.now)
        perms = ("publish_voice", "publish_screen") if screen else ("publish_voice",)
        client.token = token or tokens.mint(SECRET, call=CALL, name=name, sub=name, perms=perms, ttl=86400)
        client.join(client.token)
        self._collect()
        return client

    def live(self) -> list[SimClient]:
        return [c for c in self.clients.values() if not c.closed]

    # -- moving messages -------------------------------------------------------------

    def deliverable(self) -> list[tuple[str, int]]:
        """Every queue with something in it: ('g', conn) to the gateway, ('c', conn) to a client."""
        out = [("g", c) for c, q in self.to_gateway.items() if q]
        out += [("c", c) for c, q in self.to_client.items() if q]
        return out

    def step(self, which: tuple[str, int]) -> None:
        direction, conn = which
        if direction == "g":
            text = self.to_gateway[conn].popleft()
            if conn in self.core.connections:
                self.core.receive(conn, text, self.now)
        else:
            item = self.to_client[conn].popleft()
            client = self.clients[conn]
            if isinstance(item, Close):
                client.closed_by_gateway(item.code)
                # the socket is gone: whatever the client still had queued is lost
                self.to_gateway[conn].clear()
                self.core.disconnect(conn, self.now)
                self.to_client[conn].clear()
            elif not client.closed:
                client.now = self.now
                client.receive(item)
        self._collect()

    def drop_socket(self, client: SimClient) -> None:
        """The client's WebSocket dies without a leave (network gone): whatever was in flight is lost."""
        client.closed = True
        client.dropped = True
        self.to_gateway[client.conn_id].clear()
        self.to_client[client.conn_id].clear()
        self.core.disconnect(client.conn_id, self.now)
        self._collect()

    def reconnect(self, client: SimClient) -> None:
        """A dropped client opens a new socket and resumes its session."""
        assert client.dropped and client.resume is not None
        old = client.conn_id
        self._ids += 1
        conn = self._ids
        del self.clients[old], self.to_gateway[old], self.to_client[old]
        client.conn_id = conn
        client.dropped = False
        client.outbox = deque()
        self.clients[conn] = client
        self.to_gateway[conn] = client.outbox
        self.to_client[conn] = deque()
        self.core.connect(conn, ("127.0.0.1", 50000 + conn), None, self.now)
        client.send_resume()
        self._collect()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.core.handle_timer(self.now)
        self._collect()

    def drain(self, rng: random.Random | None = None, limit: int = 100_000) -> None:
        """Deliver until every queue is empty, in random queue order (FIFO within a queue)."""
        rng = rng or random.Random(0)
        for _ in range(limit):
            ready = self.deliverable()
            if not ready:
                return
            self.step(rng.choice(ready))
        raise AssertionError("the pump did not quiet down: messages keep flowing")

    def _collect(self) -> None:
        for action in self.core.actions():
            if isinstance(action, Send):
                if action.conn_id in self.to_client:
                    self.to_client[action.conn_id].append(json.loads(json.dumps(action.message)))
            elif isinstance(action, Close):
                if action.conn_id in self.to_client:
                    self.to_client[action.conn_id].append(action)
            elif isinstance(action, (AddTransport, RemoveTransport)):
                pass  # no media in this pump: the property is about signaling


def published(client: SimClient) -> set[str]:
    """The tracks a client sends, by its negotiated sections."""
    return {s.track_id for s in client.sections if s.sends and s.track_id}


def _participant(core: GatewayCore, client: SimClient):
    conn = core.connections.get(client.conn_id)
    return conn.participant if conn is not None else None


def convergence_problems(pump: Pump) -> list[str]:
    """What breaks the property once traffic is quiet (empty list: it holds)."""
    core = pump.core
    problems = []
    live = [c for c in pump.live() if c.joined]
    call = core.calls.get(CALL)
    in_call = set(call.participants) if call is not None else set()
    if {c.my_id for c in live} != in_call:
        problems.append(f"gateway participants {sorted(in_call)} != live joined clients {sorted(c.my_id for c in live)}")
    expected_tracks = {c.my_id: published(c) for c in live}
    for c in live:
        others = {o.my_id for o in live if o is not c}
        if set(c.participants) != others:
            problems.append(f"{c.name} knows {sorted(c.participants)}, expected {sorted(others)}")
        want = {(o, "voice" if t == "voice" else "screen") for o in others for t in expected_tracks[o]}
        got = c.receiving()
        if got != want:
            problems.append(f"{c.name} receives {sorted(got)}, expected {sorted(want)}")
        if c.pending is not None:
            problems.append(f"{c.name} has its offer {c.pending[0]} outstanding")
        if c.stashed is not None:
            problems.append(f"{c.name} holds an unanswered gateway offer {c.stashed['id']}")
        participant = _participant(core, c)
        if participant is not None and participant.negotiation.pending_offer is not None:
            problems.append(f"gateway offer {participant.negotiation.pending_offer[0]} to {c.name} is unanswered")
        if participant is not None:
            gw_sources = set(participant.negotiation.forwarded_sources())
            gw_want = {(o, t) for o in others for t in
                       _participant(core, next(x for x in live if x.my_id == o)).negotiation.published_tracks()}
            if gw_sources != gw_want:
                problems.append(f"gateway forwards {sorted(gw_sources)} to {c.name}, expected {sorted(gw_want)}")
    return problems

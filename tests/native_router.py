"""The native datapath driven like the Python one, for the conformance tests both must pass.

Two harnesses over a real :class:`callsgw._native.engine.Engine` on loopback,
where every participant is a real UDP socket with real SRTP sessions:

* :class:`NativeRig` gives the :class:`~callsgw.sfu.datapath.Datapath`
  interface itself (``rig.datapath``, a :class:`~callsgw.sfu.native.NativeDatapath`)
  and :meth:`NativeRig.sent`, what the subscribers' sockets received,
  decrypted, as the :class:`~callsgw.sfu.router.Outgoing` the Python datapath
  returns. ``tests/unit/test_datapath.py`` runs the interface's contract on
  both datapaths with it.
* :class:`NativeRouter` has the sans-I/O router's API with a router on the
  native datapath behind it, so that ``tests/unit/test_router.py`` runs every
  router case on both datapaths:

  * ``on_rtp(pid, packet, now)`` protects ``packet`` with the participant's
    keys, sends it to the engine's socket, polls the engine, gives the router
    what the engine hands up (a new stream's first packet, RTX, route
    starts), and returns every copy the subscribers' sockets received,
    decrypted, plus the router's own RTCP, as the Python router returns them;
  * ``on_rtcp`` and ``handle_timer`` call the router (RTCP is the control
    plane's in both paths) and add what the engine sent meanwhile
    (retransmissions).

``threaded=True`` runs the engine on its own thread (``media_engine =
"native-thread"``): the harness sets the engine's clock to each ``now``
(:meth:`Engine.set_clock`), waits until the thread read the datagram, and
takes what it handed up from the ring (:meth:`Engine.take`).

A subscriber that receives an SRTP index twice must receive the same bytes
(the retransmission rule); the harness checks it instead of failing on the
replay, and raises if the bytes differ.
"""

from __future__ import annotations

import os
import socket
import time

from callsgw._native.engine import UP_RAW, UP_RTCP, UP_RTP, UP_STARTED, Engine
from callsgw.sfu.native import SharedEngine
from callsgw.sfu.router import Outgoing, Router
from callsgw.srtp import Profile, Session, SrtpError
from callsgw.wire.demux import PacketKind, classify

PROFILE = Profile.AEAD_AES_128_GCM


class Peer:
    """A participant's UDP socket and both directions of its SRTP association with the engine."""

    def __init__(self, gateway_addr, pid: str = "peer"):
        self.pid = pid
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()
        self.gateway_addr = gateway_addr
        up_key, up_salt = os.urandom(16), os.urandom(12)
        down_key, down_salt = os.urandom(16), os.urandom(12)
        self.tx = Session(PROFILE, up_key, up_salt, allow_repeat_tx=True)
        self.gw_rx = Session(PROFILE, up_key, up_salt, replay_window=512)
        self.gw_tx = Session(PROFILE, down_key, down_salt, replay_window=512, allow_repeat_tx=True)
        self.rx = Session(PROFILE, down_key, down_salt, replay_window=1024)
        self.seen: dict[bytes, bytes] = {}  # ciphertext -> plaintext, for identical resends

    def __hash__(self):
        return id(self)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.gateway_addr)

    def receive_all(self) -> list[bytes]:
        out = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            if classify(data) is not PacketKind.RTP:
                continue
            try:
                plain = self.rx.unprotect(data)
            except SrtpError:
                plain = self.seen.get(data)
                if plain is None:
                    raise AssertionError(f"{self.pid} got an undecryptable or reused SRTP index with new bytes")
            self.seen[data] = plain
            if len(self.seen) > 4096:
                self.seen.pop(next(iter(self.seen)))
            out.append(plain)


class NativeRig:
    """An engine on a loopback socket, its :class:`SharedEngine`, and one :class:`Peer` per participant."""

    def __init__(self, *, engine_limits: dict | None = None, threaded: bool = False):
        self.threaded = threaded
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        limits = dict(max_sessions=512, max_sources=1024, max_streams=512, max_routes=1024)
        limits.update(engine_limits or {})
        self.engine = Engine(self.sock.fileno(), **limits)
        self.shared = SharedEngine(self.engine)
        self.peers: dict[str, Peer] = {}
        self._slot_owner: dict[int, str] = {}
        self.datapath = self.shared.for_call(self.peer)  # one call's NativeDatapath
        if threaded:
            self.engine.start()

    def peer(self, pid: str) -> Peer:
        peer = self.peers.get(pid)
        if peer is None:
            peer = self.peers[pid] = Peer(self.sock.getsockname(), pid)
            slot = self.shared.session_slot(peer)
            self.engine.session_keys(slot, peer.gw_rx, peer.gw_tx)
            self.engine.session_address(slot, peer.addr)
            self._slot_owner[slot] = pid
        return peer

    def sent(self, out: list | None = None) -> list[Outgoing]:
        """What the engine sent since the last call (flushed first), decrypted per receiving peer."""
        self.engine.flush()
        return [Outgoing(pid, p) for pid, peer in self.peers.items() for p in peer.receive_all()] + list(out or ())

    def close(self) -> None:
        self.engine.stop()  # joins the thread (nothing when it never started)
        for peer in self.peers.values():
            peer.sock.close()
        self.sock.close()


class NativeRouter(NativeRig):
    """The Router API over the native engine (see the module docstring)."""

    def __init__(self, *, engine_limits: dict | None = None, threaded: bool = False, **kwargs):
        super().__init__(engine_limits=engine_limits, threaded=threaded)
        self.router = Router(datapath=self.datapath, **kwargs)
        self.raw: list[bytes] = []

    def __getattr__(self, name):
        return getattr(self.router, name)

    # -- the data path ---------------------------------------------------------------

    def set_published(self, participant_id, track, section):
        self.peer(participant_id)
        return self.router.set_published(participant_id, track, section)

    def set_forwarded(self, subscriber_id, sections):
        self.peer(subscriber_id)
        return self.router.set_forwarded(subscriber_id, sections)

    def on_rtp(self, publisher_id: str, packet: bytes, now: float) -> list[Outgoing]:
        peer = self.peer(publisher_id)
        try:
            data = peer.tx.protect(packet)
        except SrtpError:
            data = packet  # SRTP cannot carry it: send the bytes raw, as an attacker would
        before = self.engine.totals["datagrams"]
        if self.threaded:
            self.engine.set_clock(now)
        peer.sock.sendto(data, peer.gateway_addr)
        out: list[Outgoing] = []
        deadline = time.monotonic() + (2 if data else 0.01)  # an empty datagram is not always counted
        while self.engine.totals["datagrams"] == before and time.monotonic() < deadline:
            if self.threaded:
                time.sleep(0.0002)  # the thread counts a datagram once it served it
            else:
                out += self._deliver(self.engine.poll(now), now)
        if self.threaded:
            out += self._deliver(self.engine.take(), now)
        self.router.speaker_tick(now)  # what the Python router does per packet
        return self._finish(out)

    def on_rtcp(self, participant_id: str, packet: bytes, now: float) -> list[Outgoing]:
        self.peer(participant_id)
        return self._finish(self.router.on_rtcp(participant_id, packet, now))

    def handle_timer(self, now: float) -> list[Outgoing]:
        return self._finish(self.router.handle_timer(now))

    def _deliver(self, items, now: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        for kind, slot, _addr, data in items:
            if kind == UP_RTP:
                out += self.router.on_rtp(self._slot_owner[slot], data, now)
            elif kind == UP_RTCP:
                out += self.router.on_rtcp(self._slot_owner[slot], data, now)
            elif kind == UP_STARTED:
                out += self.router.route_started(slot, now)
            elif kind == UP_RAW:
                self.raw.append(data)  # the shell would give it to the UdpMux
        return out

    def _finish(self, python_out: list[Outgoing]) -> list[Outgoing]:
        return self.sent(python_out)

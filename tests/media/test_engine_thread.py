"""The native engine on its own thread (``media_engine = "native-thread"``, issue 14).

* A call runs while the gateway's event loop is blocked on purpose for 200 ms
  by a handler (the media shell's delivery of what the engine hands up sleeps):
  forwarded packets keep arriving during the stall, by their receive
  timestamps, on the threaded engine; on the in-loop engine (``"native"``) the
  same stall stops them, which is what the thread is for.
* Churn: participants join and leave in rounds; every engine slot (sessions,
  sources, streams, routes) is returned, and after shutdown the engine thread
  has exited (its kernel thread id is gone from ``/proc/self/task``).
* The engine alone: :meth:`Engine.start` / :meth:`Engine.stop`, what goes up
  reaches Python through the ring and its eventfd, a full ring is counted and
  dropped, and an item queued for a session slot that Python closed is never
  delivered to the slot's next owner.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import threading
import time

import pytest

from callsgw._native.engine import UP_RAW, UP_RTP, Engine
from callsgw.client import connect
from callsgw.signaling import tokens
from callsgw.srtp import Profile, Session
from callsgw.wire.demux import PacketKind, classify
from tests.signaling.gateway import running_gateway

STALL = 0.2
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # Linux <linux/in.h>; Python 3.11 does not name it
INTERVAL = 0.005  # the publisher sends every 5 ms


def rtp(seq: int, ssrc: int, pt: int) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 240, ssrc) + b"%06d" % seq + bytes(60)


async def routed(app, call: str, names: set[str]) -> None:
    """Until every named participant receives the others and no offer is outstanding."""
    async with asyncio.timeout(20):
        while True:
            c = app.core.calls.get(call)
            ready = [p for p in (c.participants.values() if c else ())
                     if p.name in names and p.negotiation.forwarded_sources() and p.negotiation.pending_offer is None]
            if len(ready) == len(names):
                return
            await asyncio.sleep(0.05)


class Publisher(threading.Thread):
    """Sends protected RTP on a handed-off client socket from a thread of its own."""

    def __init__(self, handoff):
        super().__init__(daemon=True)
        self.h = handoff
        self.sock = socket.socket(fileno=os.dup(handoff.fd))
        self.stop = threading.Event()
        self.sent = 0

    def run(self):
        seq = 1000
        next_at = time.monotonic()
        while not self.stop.is_set():
            data = self.h.tx.protect(rtp(seq, self.h.voice_ssrc, self.h.voice_pt))
            try:
                self.sock.sendto(data, self.h.remote_address)
                self.sent += 1
            except BlockingIOError:
                pass
            seq += 1
            next_at += INTERVAL
            time.sleep(max(0.0, next_at - time.monotonic()))
        self.sock.close()


class Receiver(threading.Thread):
    """Reads a handed-off client socket (the event loop's reading paused) and stamps each RTP packet."""

    def __init__(self, handoff, loop):
        super().__init__(daemon=True)
        self.h = handoff
        self.loop = loop
        self.sock = socket.socket(fileno=os.dup(handoff.fd))
        self.stop = threading.Event()
        self.arrivals: list[float] = []  # time.monotonic() of each decrypted RTP packet

    def run(self):
        while not self.stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.02)
            if not ready:
                continue
            try:
                data, addr = self.sock.recvfrom(4096)
            except BlockingIOError:
                continue
            now = time.monotonic()
            if classify(data) is PacketKind.RTP:
                try:
                    self.h.rx.unprotect(data)
                except Exception:
                    continue
                self.arrivals.append(now)
            else:  # STUN (consent) and the rest: back to the client's own handling
                self.loop.call_soon_threadsafe(self.h.deliver, data, addr)
        self.sock.close()


@pytest.mark.parametrize("engine", ["native-thread", "native"])
async def test_forwarding_goes_on_while_the_event_loop_is_stalled(tmp_path, engine):
    async with running_gateway(tmp_path, media_engine=engine) as app:
        secret = app.datadir.api_secret()
        url = f"wss://127.0.0.1:{app.port}/ws"
        alice = await connect(url, tokens.mint(secret, call="stall", name="alice"), ssl=False)
        bob = await connect(url, tokens.mint(secret, call="stall", name="bob"), ssl=False, publish_voice=False)
        loop = asyncio.get_running_loop()
        publisher = receiver = None
        try:
            for s in (alice, bob):
                await s.wait_connected(timeout=20)
            await routed(app, "stall", {"bob"})
            a, b = alice.media_handoff(), bob.media_handoff()
            b.udp.pause_reading()
            receiver = Receiver(b, loop)
            publisher = Publisher(a)
            receiver.start()
            publisher.start()
            async with asyncio.timeout(10):
                while len(receiver.arrivals) < 50:  # the stream is installed: the engine forwards it
                    await asyncio.sleep(0.05)

            # a handler of the media shell blocks the event loop: the next delivery sleeps
            stall: dict[str, float] = {}
            deliver = app.media._deliver

            def blocking_deliver(items, now):
                if "start" not in stall:
                    stall["start"] = time.monotonic()
                    time.sleep(STALL)  # a blocking call in a handler, on purpose
                    stall["end"] = time.monotonic()
                deliver(items, now)

            app.media._deliver = blocking_deliver
            stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            stranger.sendto(b"\xff" * 20, ("127.0.0.1", app.media_port))  # goes up to Python: the stall
            stranger.close()
            async with asyncio.timeout(5):
                while "end" not in stall:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            if engine == "native-thread":
                # a handler that raises: logged by the shell, and forwarding goes on
                def failing_deliver(items, now):
                    raise RuntimeError("a broken handler")

                app.media._deliver = failing_deliver
                before = len(receiver.arrivals)
                for _ in range(3):
                    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    stranger.sendto(b"\xff" * 20, ("127.0.0.1", app.media_port))
                    stranger.close()
                    await asyncio.sleep(0.1)
                assert app.media.engine.running
                assert len(receiver.arrivals) - before >= 0.3 / INTERVAL * 0.5
                app.media._deliver = deliver
        finally:
            for worker in (publisher, receiver):
                if worker is not None:
                    worker.stop.set()
                    worker.join(2)
            for s in (alice, bob):
                await s.close()

        start, end = stall["start"], stall["end"]
        assert end - start >= STALL * 0.95
        during = [t for t in receiver.arrivals if start <= t <= end]
        edges = [start] + during + [end]
        longest_gap = max(later - earlier for earlier, later in zip(edges, edges[1:]))
        expected = (end - start) / INTERVAL
        print(f"{engine}: stall {1000 * (end - start):.0f} ms, {len(during)} packets arrived during it "
              f"(about {expected:.0f} sent), longest gap {1000 * longest_gap:.1f} ms")
        if engine == "native-thread":
            assert len(during) >= expected * 0.5, (len(during), expected)
            assert longest_gap < STALL / 2, longest_gap
        else:  # the in-loop engine waits for the loop: nothing is forwarded during the stall
            assert longest_gap > STALL * 0.75, longest_gap


async def test_churn_returns_every_slot_and_the_thread_exits(tmp_path):
    async with running_gateway(tmp_path, media_engine="native-thread", joins_per_second_per_address=1000.0) as app:
        engine = app.media.engine
        assert engine.running and engine.thread_id > 0
        tid = engine.thread_id
        assert os.path.exists(f"/proc/self/task/{tid}")
        with open(f"/proc/self/task/{tid}/comm") as f:
            assert f.read().strip() == "callsgw-engine"
        secret = app.datadir.api_secret()
        url = f"wss://127.0.0.1:{app.port}/ws"
        for round_ in range(3):
            sessions = []
            for name in ("alice", "bob", "carol"):
                s = await connect(url, tokens.mint(secret, call=f"churn{round_}", name=name), ssl=False)
                sessions.append(s)
            for s in sessions:
                await s.wait_connected(timeout=20)
            await routed(app, f"churn{round_}", {"alice", "bob", "carol"})
            for seq in range(1, 11):  # every publisher's stream gets installed in the engine
                for s in sessions:
                    s.send_voice(rtp(seq, s.voice_ssrc, s.media_handoff().voice_pt))
                await asyncio.sleep(0.02)
            async with asyncio.timeout(10):
                while engine.usage()["streams"] < 3:
                    await asyncio.sleep(0.05)
            usage = engine.usage()
            assert usage["sessions"] == 3 and usage["routes"] >= 6 and usage["sources"] >= 3, usage
            for s in sessions:
                await s.close()
            async with asyncio.timeout(10):
                while any(engine.usage().values()) or app.core.calls:
                    await asyncio.sleep(0.05)
        assert engine.usage() == {"sessions": 0, "sources": 0, "streams": 0, "routes": 0}
        await app.stop()
        assert not engine.running
        assert not os.path.exists(f"/proc/self/task/{tid}"), "the engine thread is still alive after shutdown"


# -- the engine alone -------------------------------------------------------------------


def _engine_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def test_the_thread_hands_up_through_the_ring_and_stops():
    sock = _engine_socket()
    engine = Engine(sock.fileno(), max_sessions=4, max_sources=4, max_streams=4, max_routes=4)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    try:
        engine.start()
        assert engine.running
        with pytest.raises(RuntimeError):
            engine.poll(0.0)  # the thread serves the socket now
        with pytest.raises(RuntimeError):
            engine.start()
        for i in range(10):
            peer.sendto(b"\x00\x01" + bytes([i]) * 18, sock.getsockname())  # STUN-class: up to Python
        _wait(lambda: engine.up_pending >= 10)
        assert select.select([engine.up_fd], [], [], 1.0)[0], "the eventfd is readable"
        items = engine.take(4)
        assert [item[0] for item in items] == [UP_RAW] * 4
        assert items[0][2] == peer.getsockname() and items[0][3] == b"\x00\x01" + bytes([0]) * 18
        rest = engine.take()
        assert [item[3][2] for item in rest] == list(range(4, 10))  # in order, nothing lost
        assert engine.up_pending == 0
        assert not select.select([engine.up_fd], [], [], 0)[0], "reset by take()"
        assert engine.totals["datagrams"] == 10 and engine.totals["errors"] == 0
    finally:
        engine.stop()
        engine.stop()  # idempotent
        assert not engine.running
        peer.close()
        sock.close()


def test_a_full_ring_drops_and_counts_and_the_engine_goes_on():
    sock = _engine_socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    engine = Engine(sock.fileno(), max_sessions=4, max_sources=4, max_streams=4, max_routes=4)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        engine.start()
        for i in range(5000):  # more than the ring holds (4096), nobody taking
            peer.sendto(b"\x00\x01" + struct.pack("!I", i) + bytes(14), sock.getsockname())
            if i % 50 == 49:
                time.sleep(0.001)  # the kernel's receive buffer keeps them all
        _wait(lambda: engine.totals["datagrams"] > 4096, timeout=10)
        seen = -1
        while seen != engine.totals["datagrams"]:  # until the engine read what arrived
            seen = engine.totals["datagrams"]
            time.sleep(0.1)
        totals = engine.totals
        assert engine.up_pending == 4096
        assert totals["up_overflow"] == totals["datagrams"] - 4096 > 0
        taken = []
        while engine.up_pending:
            taken += engine.take(1000)
        assert len(taken) == 4096
        peer.sendto(b"\x00\x01after", sock.getsockname())  # room again: delivered
        _wait(lambda: engine.up_pending == 1)
        assert engine.take()[0][3] == b"\x00\x01after"
    finally:
        engine.stop()
        peer.close()
        sock.close()


def test_an_item_of_a_closed_session_never_reaches_the_slots_next_owner():
    sock = _engine_socket()
    engine = Engine(sock.fileno(), max_sessions=1, max_sources=1, max_streams=1, max_routes=1)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    key, salt = os.urandom(16), os.urandom(12)
    sender = Session(Profile.AEAD_AES_128_GCM, key, salt)
    try:
        slot = engine.session_open()
        engine.session_keys(slot, Session(Profile.AEAD_AES_128_GCM, key, salt),
                            Session(Profile.AEAD_AES_128_GCM, os.urandom(16), os.urandom(12)))
        engine.session_address(slot, peer.getsockname())
        engine.start()
        peer.sendto(sender.protect(rtp(1, 0x1234, 111)), sock.getsockname())  # unknown stream: up, decrypted
        _wait(lambda: engine.up_pending == 1)
        engine.session_close(slot)
        assert engine.session_open() == slot  # the slot's next owner
        assert engine.take() == []
        assert engine.totals["up_stale"] == 1
    finally:
        engine.stop()
        peer.close()
        sock.close()


def test_a_socket_error_is_counted_and_the_thread_goes_on():
    import errno

    sock = _engine_socket()
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)  # ICMP errors come back from recv
    engine = Engine(sock.fileno(), max_sessions=1, max_sources=1, max_streams=1, max_routes=1)
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    nobody = closed.getsockname()
    closed.close()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        engine.start()
        sock.sendto(b"x", nobody)  # port unreachable: the socket's next receive fails
        _wait(lambda: engine.totals["errors"] >= 1)
        assert engine.totals["last_errno"] == errno.ECONNREFUSED
        assert engine.running
        peer.sendto(b"\x00\x01still here", sock.getsockname())
        _wait(lambda: engine.up_pending >= 1)
        assert engine.take()[-1][3] == b"\x00\x01still here"
    finally:
        engine.stop()
        peer.close()
        sock.close()


async def test_the_shell_logs_an_engine_error_once(tmp_path, caplog):
    async with running_gateway(tmp_path, media_engine="native-thread") as app:
        app.media.sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        nobody = closed.getsockname()
        closed.close()
        engine = app.media.engine
        for _ in range(3):
            app.media.sock.sendto(b"x", nobody)
            async with asyncio.timeout(5):
                while engine.totals["errors"] < _ + 1:
                    await asyncio.sleep(0.01)
            stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            stranger.sendto(b"\xff" * 20, ("127.0.0.1", app.media_port))  # something goes up: the shell looks
            stranger.close()
            await asyncio.sleep(0.1)
        assert engine.running and engine.totals["errors"] == 3
        logged = [r for r in caplog.records if "native engine thread: socket error" in r.getMessage()]
        assert len(logged) == 1


def test_srtp_through_the_engine_lock_matches_the_session():
    sock = _engine_socket()
    engine = Engine(sock.fileno(), max_sessions=1, max_sources=1, max_streams=1, max_routes=1)
    key, salt = os.urandom(16), os.urandom(14)
    ours, theirs = Session(Profile.AES128_CM_HMAC_SHA1_80, key, salt), Session(Profile.AES128_CM_HMAC_SHA1_80, key, salt)
    try:
        engine.start()
        packet = rtp(7, 0x99, 111)
        protected = engine.srtp(0, ours, packet)
        assert theirs.unprotect(protected) == packet
        rtcp = struct.pack("!BBHI", 0x80, 201, 1, 0x99)
        assert engine.srtp(3, ours, theirs.protect_rtcp(rtcp)) == rtcp
        from callsgw.srtp import SrtpError

        with pytest.raises(SrtpError):
            engine.srtp(1, ours, protected[:-1] + bytes([protected[-1] ^ 1]))
    finally:
        engine.stop()
        sock.close()


def test_a_session_closed_from_python_gets_nothing_from_the_next_batch_on():
    from tests.native_router import NativeRig

    rig = NativeRig(threaded=True)
    try:
        alice, bob = rig.peer("alice"), rig.peer("bob")
        dp = rig.datapath
        source = dp.source_open()
        dp.source_configure(source, published=True, media_pts=(96,), clock_rate=90000, video=True)
        dp.stream_add(source, "alice", 0xA1)
        route = dp.route_open("bob", 0xB0)
        dp.route_attach(route, source)
        dp.route_configure(route, pt_map={96: 100}, ext_ids={}, mid_id=0, mid_value=b"", window=128, block=False)

        def send(seqs):
            before = rig.engine.totals["datagrams"]
            for seq in seqs:
                alice.send(alice.tx.protect(rtp(seq, 0xA1, 96)))
            _wait(lambda: rig.engine.totals["datagrams"] >= before + len(seqs))

        send(range(1, 21))
        assert len(bob.receive_all()) == 20  # the engine thread forwards alice's stream to bob
        rig.shared.release_session(bob)  # Engine.session_close under the control lock
        bob.receive_all()  # whatever was sent before the close returned
        send(range(21, 41))
        time.sleep(0.05)
        assert bob.receive_all() == []
        assert dp.route_state(route).drops["not_connected"] == 20
    finally:
        rig.close()

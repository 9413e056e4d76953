"""Hostile media through a real gateway, on both forwarding paths (native engine and Python).

Two publishers and one subscriber over real signaling, ICE, DTLS and SRTP on
loopback. One publisher's SRTP is mangled on the wire (its client's socket
and keys, via ``CallSession.media_handoff``): loss, reordering, the same
datagram twice, an old datagram replayed later, corrupted tags, truncated
and garbage datagrams. The other publisher sends cleanly at the same time.
The subscriber must get exactly the clean publisher's packets and exactly
the mangled publisher's authentic, first-seen packets, byte-identical, and
the gateway must count the refusals against the right session.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from callsgw.client import connect
from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway

COUNT = 120


def rtp(seq: int, ssrc: int, pt: int, tag: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 960, ssrc) + tag + b"%05d" % seq + bytes(40)


def payload_tag(packet: bytes) -> bytes:
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        offset += 4 + 4 * struct.unpack_from("!H", packet, offset + 2)[0]
    return packet[offset:offset + 10]


async def wait_routes(app, call: str, subscriber: str) -> None:
    async with asyncio.timeout(15):
        while True:
            c = app.core.calls.get(call)
            p = next((p for p in c.participants.values() if p.name == subscriber), None) if c else None
            if p is not None and len(p.negotiation.forwarded_sources()) >= 2 and p.negotiation.pending_offer is None:
                return
            await asyncio.sleep(0.05)


async def drain(session, quiet: float = 0.5) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(await asyncio.wait_for(session.rtp.get(), quiet))
        except asyncio.TimeoutError:
            return got


@pytest.mark.parametrize("engine", ["native", "native-thread", "python"])
async def test_loss_reordering_duplicates_replays_and_bad_tags(tmp_path, engine):
    async with running_gateway(tmp_path, media_engine=engine) as app:
        secret = app.datadir.api_secret()
        url = f"wss://127.0.0.1:{app.port}/ws"
        alice = await connect(url, tokens.mint(secret, call="h", name="alice"), ssl=False)
        bob = await connect(url, tokens.mint(secret, call="h", name="bob"), ssl=False)
        carol = await connect(url, tokens.mint(secret, call="h", name="carol"), ssl=False, publish_voice=False)
        try:
            for s in (alice, bob, carol):
                await s.wait_connected(timeout=20)
            await wait_routes(app, "h", "carol")
            a = alice.media_handoff()
            b = bob.media_handoff()

            def wire(h, data):
                h.udp.sendto(data, h.remote_address)

            protected = {}
            order = []
            for seq in range(COUNT):
                if seq % 10 == 3:
                    continue  # lost
                order.append(seq)
            for i in range(0, len(order) - 1, 7):  # reordered pairs
                order[i], order[i + 1] = order[i + 1], order[i]
            expected_alice = set()
            for n, seq in enumerate(order):
                packet = rtp(seq, a.voice_ssrc, a.voice_pt, b"alice")
                data = a.tx.protect(packet)
                protected[seq] = data
                if seq % 17 == 5:
                    bad = bytearray(data)
                    bad[-1] ^= 0x01  # corrupted tag: refused, and the genuine one never follows
                    wire(a, bytes(bad))
                else:
                    wire(a, data)
                    expected_alice.add(seq)
                    if seq % 11 == 0:
                        wire(a, data)  # the network duplicated it
                if n % 9 == 0:
                    wire(a, data[:7])  # truncated
                    wire(a, b"\x80" + bytes(30))  # garbage in the RTP range
                wire(b, b.tx.protect(rtp(seq, b.voice_ssrc, b.voice_pt, b"bob--")))
                if n % 10 == 0:
                    await asyncio.sleep(0.005)
            for seq in (1, 2, 12):
                wire(a, protected[seq])  # replayed much later
            received = await drain(carol)
            tags = [payload_tag(p) for p in received]
            got_alice = [int(t[5:]) for t in tags if t.startswith(b"alice")]
            got_bob = [int(t[5:]) for t in tags if t.startswith(b"bob--")]
            # the clean publisher is untouched by its neighbour's garbage
            assert sorted(got_bob) == [s for s in range(COUNT) if s % 10 != 3]
            # exactly the authentic packets, once each, in the order they arrived
            assert sorted(got_alice) == sorted(expected_alice)
            assert len(got_alice) == len(set(got_alice))
            assert got_alice == [s for s in order if s in expected_alice]
            # the refusals are counted against alice's session only
            app.media.sync_counters()
            participants = {p.name: p for p in app.core.calls["h"].participants.values()}
            alice_errors = participants["alice"].transport.counters.srtp_errors
            bob_errors = participants["bob"].transport.counters.srtp_errors
            assert alice_errors.get("auth", 0) >= sum(1 for s in order if s % 17 == 5)
            replays = alice_errors.get("replay", 0) + alice_errors.get("replay_old", 0)
            assert replays >= 3 + sum(1 for s in order if s % 11 == 0 and s % 17 != 5)
            assert sum(bob_errors.values()) == 0
        finally:
            for s in (alice, bob, carol):
                await s.close()


async def test_engine_tables_empty_again_after_calls_churn(tmp_path):
    """Joins, screen shares and leaves, repeated: every engine slot is given back."""
    async with running_gateway(tmp_path, joins_per_second_per_address=1000) as app:
        engine = app.media.engine
        secret = app.datadir.api_secret()
        url = f"wss://127.0.0.1:{app.port}/ws"
        for round_ in range(3):
            sessions = [
                await connect(url, tokens.mint(secret, call=f"c{round_}", name=f"p{n}"), ssl=False,
                              publish_screen=(n == 0))
                for n in range(3)
            ]
            for s in sessions:
                await s.wait_connected(timeout=20)
            await wait_routes(app, f"c{round_}", "p2")
            for seq in range(30):  # streams get installed, routes carry packets
                for s in sessions:
                    h = s.media_handoff()
                    s.send_voice(rtp(seq, h.voice_ssrc, h.voice_pt, b"churn"))
                await asyncio.sleep(0.005)
            await drain(sessions[2], quiet=0.3)
            used = engine.usage()
            assert used["sessions"] == 3 and used["streams"] >= 3 and used["routes"] >= 6
            for s in sessions:
                await s.close()
            async with asyncio.timeout(10):
                while app.core.participant_count:
                    await asyncio.sleep(0.05)
            assert engine.usage() == {"sessions": 0, "sources": 0, "streams": 0, "routes": 0}

"""Join/leave churn with the Python client against a real gateway on loopback (issue #12).

Up to six `callsgw.client` sessions join, leave (with `leave`, or by just
closing the socket), mute and unmute, and start and stop a screen share at
random (seeded) moments for about 15 s; the actions of different
participants overlap freely (one action at a time per participant). Every
session sends voice all along (and screen video while it shares), each
packet's payload naming its sender. Then the churn stops, the seats left
empty are filled by joins made all at once, everyone unmutes, and once
traffic quiets every remaining session must hold:

* its participant list is exactly the other remaining participants;
* its negotiated receive sections are exactly the others' published tracks
  (everyone's voice, the screen of whoever shares), on both sides: the
  client's sections and the gateway's forwarded sources;
* no offer is outstanding: none of its own, none of the gateway's (nor one
  the gateway holds back for later), and every gateway offer it received
  was answered;
* voice from every other participant (and the shared screen) arrives, on
  the SSRC the gateway announced for that publisher's section.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from callsgw.client import connect
from callsgw.client.session import SessionError
from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway

SLOTS = 6
CHURN_SECONDS = 15.0
FINAL_MEMBERS = 4  # seats filled (all at once) when the churn stops
QUIET_TIMEOUT = 30.0
MEDIA_WINDOW = 1.5  # s of traffic every stream must show once quiet
TAG = b"churn:"  # payload prefix; the sender's participant id follows

# one Opus frame of silence (RFC 6716 TOC 0xf8) and a VP8 key frame start (RFC 7741)
OPUS_PT, VP8_PT = 111, 96


def rtp(pt: int, seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
    return bytes([0x80, pt | (0x80 if marker else 0)]) + seq.to_bytes(2, "big") + ts.to_bytes(4, "big") \
        + b"\x00\x00\x00\x01" + payload


@dataclass(eq=False)
class Member:
    slot: int
    generation: int
    session: object = None  # CallSession
    tasks: list = field(default_factory=list)
    received: Counter = field(default_factory=Counter)  # (publisher id, "audio"|"video") -> packets
    sent: Counter = field(default_factory=Counter)  # "audio"|"video" -> packets sent
    ssrcs: dict = field(default_factory=dict)  # (publisher id, kind) -> SSRCs seen
    offers: int = 0  # gateway offers received
    client_errors: list = field(default_factory=list)
    leaving: bool = False

    @property
    def id(self) -> str:
        return f"c{self.slot}g{self.generation}"


class Churn:
    def __init__(self, app, rng: random.Random):
        self.app = app
        self.rng = rng
        self.url = f"wss://127.0.0.1:{app.port}/ws"
        self.secret = app.datadir.api_secret()
        self.members: dict[int, Member] = {}  # slot -> member in the call (or joining)
        self.locks = {slot: asyncio.Lock() for slot in range(SLOTS)}
        self.generations = Counter()
        self.log: list[str] = []  # what happened, for the failure message
        self.unexpected: list[str] = []  # errors no action explains
        self.counts = Counter()  # actions done, by kind
        self.started = time.monotonic()

    def note(self, text: str, kind: str | None = None) -> None:
        if kind:
            self.counts[kind] += 1
        self.log.append(f"{time.monotonic() - self.started:6.2f} {text}")

    # -- the participants' own tasks ----------------------------------------------

    async def _send_media(self, m: Member) -> None:
        payload = TAG + m.id.encode()
        seq = v_seq = 0
        while True:
            s = m.session
            if not s.muted:
                if s.send_voice(rtp(OPUS_PT, v_seq & 0xFFFF, (v_seq * 960) & 0xFFFFFFFF, b"\xf8\xff\xfe" + payload)):
                    m.sent["audio"] += 1
                v_seq += 1
            if seq % 5 == 0 and s.sharing:
                n = seq // 5
                if s.send_screen(rtp(VP8_PT, n & 0xFFFF, (n * 9000) & 0xFFFFFFFF,
                                     b"\x10\x00\x9d\x01\x2a" + payload, marker=True)):
                    m.sent["video"] += 1
            seq += 1
            await asyncio.sleep(0.02)

    async def _receive(self, m: Member) -> None:
        while True:
            packet = await m.session.rtp.get()
            start = 12 + 4 * (packet[0] & 0x0F)
            if packet[0] & 0x10 and len(packet) >= start + 4:  # RFC 3550 header extension
                start += 4 + 4 * int.from_bytes(packet[start + 2:start + 4], "big")
            at = packet.find(TAG, start)
            if at < 0:
                continue
            publisher = packet[at + len(TAG):].decode(errors="replace")
            kind = "audio" if packet[at - 3:at] == b"\xf8\xff\xfe" else "video"
            m.received[(publisher, kind)] += 1
            m.ssrcs.setdefault((publisher, kind), set()).add(int.from_bytes(packet[8:12], "big"))

    async def _events(self, m: Member) -> None:
        while True:
            msg = await m.session.events.get()
            if msg.get("type") == "offer":
                m.offers += 1
            elif msg.get("type") == "client_error":
                m.client_errors.append(msg)
            elif msg.get("type") == "error" and msg.get("code") not in ("screen_busy", "glare"):
                self.unexpected.append(f"{m.id}: error {msg}")

    async def _watch(self, m: Member) -> None:
        closed = await m.session.wait_closed()
        if not m.leaving:
            self.unexpected.append(f"{m.id}: the gateway closed the session ({closed.code} {closed.reason!r})")
            if self.members.get(m.slot) is m:
                del self.members[m.slot]

    # -- actions --------------------------------------------------------------------

    async def join(self, slot: int) -> None:
        self.generations[slot] += 1
        m = Member(slot, self.generations[slot])
        self.members[slot] = m
        token = tokens.mint(self.secret, call="churn", name=f"client {slot}", sub=m.id)
        self.note(f"{m.id} joins", "join")
        try:
            m.session = await connect(self.url, token, ssl=False)
        except BaseException:
            del self.members[slot]
            raise
        m.tasks = [asyncio.create_task(c(m)) for c in (self._send_media, self._receive, self._events, self._watch)]
        await m.session.wait_connected(timeout=15)
        self.note(f"{m.id} joined, media connected")

    async def leave(self, slot: int, graceful: bool) -> None:
        m = self.members.pop(slot)
        m.leaving = True
        self.note(f"{m.id} {'leaves' if graceful else 'drops its socket'}", "leave" if graceful else "drop")
        if graceful:
            await m.session.leave()
        else:
            await m.session.close()
        for task in m.tasks:
            task.cancel()

    async def mute(self, slot: int, muted: bool) -> None:
        m = self.members[slot]
        self.note(f"{m.id} {'mutes' if muted else 'unmutes'}", "mute" if muted else "unmute")
        await m.session.mute(muted)

    async def screen(self, slot: int, on: bool) -> None:
        m = self.members[slot]
        self.note(f"{m.id} screen {'on' if on else 'off'}", "screen_on" if on else "screen_off")
        try:
            await m.session.set_screen_share(on)
        except SessionError as exc:
            if getattr(exc, "code", None) == "screen_busy":
                self.note(f"{m.id} screen refused: busy", "screen_busy")
            else:
                self.unexpected.append(f"{m.id}: set_screen_share({on}) failed: {exc!r}")
        except TimeoutError:
            self.unexpected.append(f"{m.id}: set_screen_share({on}) timed out (negotiation stuck)")

    async def act(self, slot: int) -> None:
        lock = self.locks[slot]
        if lock.locked():
            return
        async with lock:
            m = self.members.get(slot)
            try:
                if m is None:
                    await self.join(slot)
                    return
                roll = self.rng.random()
                sharer = next((x for x in self.members.values()
                               if x.session is not None and x.session.sharing), None)
                if roll < 0.12:
                    await self.leave(slot, graceful=True)
                elif roll < 0.2:
                    await self.leave(slot, graceful=False)
                elif roll < 0.5 or (sharer not in (None, m) and roll < 0.85):
                    await self.mute(slot, not m.session.muted)
                else:  # start sharing (refused while somebody else shares), or stop
                    await self.screen(slot, not m.session.sharing)
            except Exception as exc:  # noqa: BLE001 - any failure is a finding
                self.unexpected.append(f"slot {slot}: {type(exc).__name__}: {exc}")

    async def run(self, seconds: float) -> None:
        pending = set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            slot = self.rng.randrange(SLOTS)
            pending.add(asyncio.create_task(self.act(slot)))
            pending = {t for t in pending if not t.done()}
            await asyncio.sleep(self.rng.uniform(0.02, 0.5))
        await asyncio.gather(*pending)

    async def fill_and_unmute(self) -> None:
        free = [slot for slot in range(SLOTS) if slot not in self.members]
        joining = free[: max(0, FINAL_MEMBERS - len(self.members))]
        await asyncio.gather(*(self.act(slot) for slot in joining))  # at the same moment
        for m in list(self.members.values()):
            if m.session.muted:
                await self.mute(m.slot, False)

    async def close_all(self) -> None:
        for m in list(self.members.values()):
            m.leaving = True
            try:
                await m.session.close()
            except Exception:  # noqa: BLE001 - teardown
                pass
            for task in m.tasks:
                task.cancel()

    # -- the property ---------------------------------------------------------------

    def expected_tracks(self) -> dict[str, list[str]]:
        out = {}
        for m in self.members.values():
            kinds = ["audio"] if m.session.voice_ssrc is not None else []
            if m.session.sharing:
                kinds.append("video")
            out[m.id] = kinds
        return out

    def signaling_problems(self) -> list[str]:
        problems = []
        call = self.app.core.calls.get("churn")
        members = list(self.members.values())
        ids = sorted(m.id for m in members)
        if call is None or sorted(call.participants) != ids:
            problems.append(f"gateway participants {sorted(call.participants) if call else None} != {ids}")
        tracks = self.expected_tracks()
        for m in members:
            s = m.session
            others = sorted(x for x in ids if x != m.id)
            want = sorted((pid, kind) for pid in others for kind in tracks[pid])
            if sorted(s.participants) != others:
                problems.append(f"{m.id}: participants {sorted(s.participants)} != {others}")
            if s.pending_offer_id is not None:
                problems.append(f"{m.id}: own offer {s.pending_offer_id} unanswered")
            if m.offers != s.stats["offers_answered"] or m.client_errors:
                problems.append(f"{m.id}: {m.offers} gateway offers, {s.stats['offers_answered']} answered,"
                                f" client errors {m.client_errors}")
            got = sorted(
                (remote.msid.split()[0] if remote.msid else None, local.kind)
                for local, remote in zip(s.sections, s.remote_media)
                if local.receives and not remote.rejected and remote.direction in ("sendonly", "sendrecv")
            )
            if got != want:
                problems.append(f"{m.id}: receive sections {got} != others' published tracks {want}")
            if [x.mid for x in s.sections] != [x.mid for x in s.remote_media]:
                problems.append(f"{m.id}: sections {[x.mid for x in s.sections]} and the gateway's"
                                f" {[x.mid for x in s.remote_media]} differ")
            p = call.participants.get(m.id) if call else None
            if p is None:
                continue
            if p.negotiation.pending_offer is not None or p.renegotiate_later:
                problems.append(f"{m.id}: gateway offer {p.negotiation.pending_offer and p.negotiation.pending_offer[0]}"
                                f" outstanding (later={p.renegotiate_later})")
            forwarded = sorted((pid, "audio" if track == "voice" else "video")
                               for pid, track in p.negotiation.forwarded_sources())
            if forwarded != want:
                problems.append(f"{m.id}: gateway forwards {forwarded} != {want}")
        return problems

    async def media_problems(self) -> list[str]:
        """Over MEDIA_WINDOW, every subscriber gets at least half of what each other member sent
        (relative, so that a loaded machine, which slows senders and receivers alike, passes)."""
        before = {m.id: Counter(m.received) for m in self.members.values()}
        sent_before = {m.id: Counter(m.sent) for m in self.members.values()}
        await asyncio.sleep(MEDIA_WINDOW)
        problems = []
        tracks = self.expected_tracks()
        sent = {m.id: {kind: m.sent[kind] - sent_before[m.id][kind] for kind in ("audio", "video")}
                for m in self.members.values()}
        for m in self.members.values():
            announced = {}
            for remote in m.session.remote_media:
                if remote.msid and not remote.rejected:
                    announced[(remote.msid.split()[0], remote.kind)] = set(remote.ssrcs)
            for pid, kinds in tracks.items():
                if pid == m.id:
                    continue
                for kind in kinds:
                    grew = m.received[(pid, kind)] - before[m.id][(pid, kind)]
                    if sent[pid][kind] == 0:
                        problems.append(f"{pid} sent no {kind} in {MEDIA_WINDOW} s")
                    elif grew < max(1, sent[pid][kind] // 2):
                        problems.append(f"{m.id}: {grew} {kind} packets from {pid} in {MEDIA_WINDOW} s,"
                                        f" of {sent[pid][kind]} sent")
                    elif not m.ssrcs[(pid, kind)] & announced.get((pid, kind), set()):
                        problems.append(f"{m.id}: {kind} from {pid} on SSRCs {m.ssrcs[(pid, kind)]},"
                                        f" announced {announced.get((pid, kind))}")
        return problems

    def describe(self) -> str:
        lines = []
        call = self.app.core.calls.get("churn")
        for m in self.members.values():
            s = m.session
            lines.append(
                f"  {m.id}: participants={sorted(s.participants)} own_offer={s.pending_offer_id}"
                f" offers rx/answered={m.offers}/{s.stats['offers_answered']} glare={s.stats['glare']}"
                f" muted={s.muted} sharing={s.sharing} media={s.media_state.name}"
            )
            lines.append("    sections mid:kind:direction <- gateway direction:msid: " + " ".join(
                f"{loc.mid}:{loc.kind[0]}:{'stopped' if loc.stopped else loc.direction}"
                f"<-{rem.direction}{':port0' if rem.rejected else ''}:{rem.msid.split()[0] if rem.msid else '-'}"
                for loc, rem in zip(s.sections, s.remote_media)
            ))
            p = call.participants.get(m.id) if call else None
            if p is not None:
                lines.append(
                    f"    gateway: pending={p.negotiation.pending_offer and p.negotiation.pending_offer[0]}"
                    f" later={p.renegotiate_later} sharing={p.sharing} sections="
                    + " ".join(f"{x.mid}:{x.kind[0]}:{x.direction}{':stopped' if x.stopped else ''}"
                               + (f"<-{x.source[0]}/{x.source[1]}" if x.source else "") for x in p.negotiation.sections)
                )
            lines.append(f"    received (packets): {dict(m.received)}")
        lines.append("  last events: " + " | ".join(self.log[-25:]))
        return "\n".join(lines)


@pytest.mark.parametrize("engine,seed", [("native", 1), ("native-thread", 3), ("python", 2)])
async def test_join_leave_churn_converges(tmp_path, engine, seed):
    rng = random.Random(seed)
    async with running_gateway(tmp_path, media_engine=engine, joins_per_second_per_address=1000.0) as app:
        churn = Churn(app, rng)
        try:
            async with asyncio.timeout(CHURN_SECONDS + QUIET_TIMEOUT + 45):
                await churn.run(CHURN_SECONDS)
                await churn.fill_and_unmute()
                churn.note("quiet")
                deadline = time.monotonic() + QUIET_TIMEOUT
                while (problems := churn.signaling_problems()) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                if not problems:
                    problems = await churn.media_problems() + churn.signaling_problems()
                actions = len(churn.log)
                print(f"{engine} seed {seed}: {dict(churn.counts)}")
                assert not problems and not churn.unexpected, (
                    f"seed {seed}, {actions} events; problems: {problems}; unexpected: {churn.unexpected}\n"
                    + churn.describe()
                )
                assert len(churn.members) >= FINAL_MEMBERS
        finally:
            await churn.close_all()

"""Issue #12: participants who join at the same moment must all hear each other.

Four pages of headless Chromium join one call at the same instant, round
after round (a fresh call id per round), on two gateways side by side (the
native and the Python media engine, two rounds each in turn). Rounds
alternate between four tabs of one window (Chromium hides all tabs but the
front one and runs their timers about once a second) and four windows (all
visible). Once traffic quiets, every page must hold:

* ``state.participants`` is exactly the three others;
* its receivers (negotiated sections the gateway sends on, the page's
  ``currentDirection`` receiving) are exactly the others' published tracks
  (their voice; the screen of whoever shares at the end of the round);
* inbound-rtp audio ``packetsReceived`` grows on three distinct SSRCs, one
  per other participant;
* ``pc.signalingState === 'stable'`` and ``offersReceived === answersSent``,
  and the gateway holds no offer to it (nor one queued for later).

How the four joins are made simultaneous, per variant:

* ``links``: the reporter's way: pre-created pages, pre-minted join links,
  the four ``Page.navigate`` sent in one ``asyncio.gather``, then (a link
  waits for one click) the four Join buttons clicked in one gather;
* ``cold_browser``: the same with a browser started for the round and its
  four pages created together just before (cold renderers, first
  getUserMedia of the process);
* ``barrier``: pages already on the call page start joining, and each holds
  its ``join`` frame (its WebSocket open) until the test releases all four
  through DevTools at once: the joins reach the gateway within milliseconds;
* ``while_negotiating``: two pages join (barrier), and the two others are
  released just as the gateway takes the second join and sends its first
  offers (0-40 ms later, seeded);
* ``screen_share``: barrier joins, and one page starts a screen share as soon
  as it has joined, while the others are still joining; in every other round
  it stops again shortly after.

Rounds go on after a failed one; the assertion at the end gives the failure
rate, and dumps for the first failed rounds the state of every page
(participants, offers/answers, signalingState, transceivers
``mid:kind:direction:currentDirection``, the remote description's sections
and whose track each carries, inbound counts, the signaling messages it
received and its SDP operations with their timing and outcome, a pending
one marked PENDING) and of the gateway (pending offers, sections). The
summary line (printed with ``-s``) gives per round how far apart the
gateway took the joins and how long signaling took to settle.

A round fails as *stuck* when the property does not hold and nothing moved
for 10 s (no message, no SDP step, no state change on any page or the
gateway); a slow machine only makes rounds longer (under a 6x CPU throttle
plus two busy host cores each SDP step of a page takes 1-4 s), up to the
hard bound ``CALLSGW_CONCURRENT_CONVERGE_TIMEOUT`` (s, default 60).
Other knobs, to measure over more rounds or on a loaded machine:
``CALLSGW_CONCURRENT_ROUNDS`` (default 10), ``CALLSGW_CONCURRENT_SEED`` and
``CALLSGW_CONCURRENT_CPU_THROTTLE`` (DevTools CPU throttling of every page,
default 1 = none).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field

import pytest

from callsgw.signaling import tokens
from tests.browser.chromium import Chromium, chromium_path
from tests.browser.page_net import remote_sections
from tests.browser.test_web_client import RecordingPage, base_url, join_link, open_page
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")

PAGES = 4
ROUNDS = int(os.environ.get("CALLSGW_CONCURRENT_ROUNDS", "10"))
SEED = int(os.environ.get("CALLSGW_CONCURRENT_SEED", "12"))
# > 1 slows every page's main thread that many times (DevTools CPU throttling), as
# on a loaded machine; the default keeps the test fast
CPU_THROTTLE = float(os.environ.get("CALLSGW_CONCURRENT_CPU_THROTTLE", "1"))
# From the joins to a consistent state: a round fails when nothing moves for STUCK_AFTER
# seconds (no message, no SDP step, no state change on any page or the gateway) while the
# property does not hold, or at the latest after CONVERGE_TIMEOUT (a busy machine is slow,
# not stuck: there every SDP step of a page may take seconds).
STUCK_AFTER = 10.0
CONVERGE_TIMEOUT = float(os.environ.get("CALLSGW_CONCURRENT_CONVERGE_TIMEOUT", "60"))
MEDIA_TIMEOUT = 10.0  # then until audio grows from every other participant
DUMPED_FAILURES = 3  # rounds whose full state goes into the assertion message
TEST_TIMEOUT = 60 + ROUNDS * 25.0

# Installed in every page before its scripts run: while window.__holdJoin is
# set, the page's `join` frame is held (its WebSocket is open) until the test
# calls window.__releaseJoin() in every page at once through DevTools. Timers
# cannot do this: Chromium runs the timers of hidden tabs about once a second.
# It also keeps a trace for the failure message, without changing behaviour:
# the signaling messages received (type, id) and every SDP operation of the
# RTCPeerConnection (start, end, resulting signalingState or error), with
# Date.now() % 1e6 times (the pages share the clock).
JOIN_BARRIER = """
(() => {
  window.__manualJoin = true;  // the test clicks join links' Join button itself (PROBE would, on a timer)
  const now = () => Date.now() % 1000000;
  const keep = (list, item) => { list.push(item); if (list.length > 40) list.shift(); };
  window.__messages = [];
  window.__sdpOps = [];
  const send = WebSocket.prototype.send;
  window.__holdJoin = false;
  window.__heldJoins = [];
  WebSocket.prototype.send = function (data) {
    if (!this.__traced) {
      this.__traced = true;
      this.addEventListener('message', (ev) => {
        try {
          const m = JSON.parse(ev.data);
          if (m.type !== 'speaking') keep(window.__messages, [now(), m.type + (m.id !== undefined ? ':' + m.id : '')]);
        } catch (e) { /* not JSON */ }
      });
    }
    if (window.__holdJoin && typeof data === 'string' && data.startsWith('{"type":"join"')) {
      window.__heldJoins.push(() => send.call(this, data));
      return;
    }
    return send.call(this, data);
  };
  window.__releaseJoin = () => {
    window.__holdJoin = false;
    const held = window.__heldJoins.splice(0);
    for (const go of held) go();
    return held.length;
  };
  const proto = RTCPeerConnection.prototype;
  for (const name of ['createOffer', 'createAnswer', 'setLocalDescription', 'setRemoteDescription']) {
    const original = proto[name];
    proto[name] = function (...args) {
      const entry = {op: name, type: args[0] && args[0].type || null, t0: now(), t1: null, state: null, error: null};
      keep(window.__sdpOps, entry);
      const result = original.apply(this, args);
      Promise.resolve(result).then(
        () => { entry.t1 = now(); entry.state = this.signalingState; },
        (e) => { entry.t1 = now(); entry.error = String(e && e.message || e); });
      return result;
    };
  }
})();
"""

SNAPSHOT = """(async () => {
  const c = window.callsgw;
  if (!c) return {loaded: false};
  const st = c.state, pc = c.pc;
  const out = {
    loaded: true, phase: st.phase, joined: st.joined, id: st.participantId, name: st.name,
    participants: Object.keys(st.participants).sort(),
    offersReceived: st.offersReceived, answersSent: st.answersSent, offersSent: st.offersSent,
    glareCount: st.glareCount, lastError: st.lastError, closeCode: st.closeCode,
    sharing: st.sharing, screenSharer: st.screenSharer,
    signalingState: pc ? pc.signalingState : null, connectionState: pc ? pc.connectionState : null,
    remoteSdp: pc && pc.remoteDescription ? pc.remoteDescription.sdp : null,
    transceivers: [], inbound: [], problems: (window.__problems || []).slice(-8),
    messages: (window.__messages || []).slice(-16), sdpOps: (window.__sdpOps || []).slice(-10), now: Date.now() % 1000000,
  };
  if (!pc) return out;
  for (const t of pc.getTransceivers()) out.transceivers.push({
    mid: t.mid, kind: t.receiver.track.kind, direction: t.direction, currentDirection: t.currentDirection,
    sending: !!t.sender.track, track: t.receiver.track.id,
  });
  const stats = await pc.getStats();
  stats.forEach((r) => {
    if (r.type === 'inbound-rtp') out.inbound.push({
      ssrc: r.ssrc, kind: r.kind, mid: r.mid ?? null, track: r.trackIdentifier ?? null,
      packets: r.packetsReceived || 0,
    });
  });
  return out;
})()"""


# ------------------------------------------------------------------ state and checks


def published(snap: dict) -> set[str]:
    """What a page publishes: 'audio' (its voice), 'video' (its screen), negotiated and sending."""
    return {
        t["kind"] for t in snap.get("transceivers", [])
        if t["sending"] and t["currentDirection"] in ("sendonly", "sendrecv")
    }


def receiving(snap: dict) -> dict[str, tuple[str, str]]:
    """mid -> (publisher id, kind) for every section the gateway sends on and the page receives."""
    current = {t["mid"]: t["currentDirection"] for t in snap.get("transceivers", [])}
    out = {}
    for s in remote_sections(snap.get("remoteSdp")):
        if s["port"] and s["dir"] in ("sendonly", "sendrecv") and current.get(s["mid"]) in ("recvonly", "sendrecv"):
            out[s["mid"]] = (s["msid"], s["kind"])
    return out


def structural_problems(snaps: list[dict], gateway: dict | None) -> list[str]:
    """Everything that contradicts the quiet-state property, other than media flow."""
    problems = []
    ids = [s.get("id") for s in snaps]
    if not all(s.get("loaded") and s.get("joined") and s.get("id") for s in snaps):
        return [f"page {i}: not joined (phase {s.get('phase')}, close {s.get('closeCode')})"
                for i, s in enumerate(snaps) if not (s.get("loaded") and s.get("joined") and s.get("id"))]
    expected_tracks = {}
    for s in snaps:
        for kind in published(s):
            expected_tracks.setdefault(s["id"], set()).add(kind)
    for i, s in enumerate(snaps):
        others = sorted(x for x in ids if x != s["id"])
        if s["participants"] != others:
            problems.append(f"page {i}: participants {s['participants']} != others {others}")
        if s["signalingState"] != "stable":
            problems.append(f"page {i}: signalingState {s['signalingState']}")
        if s["offersReceived"] != s["answersSent"]:
            problems.append(f"page {i}: offersReceived {s['offersReceived']} != answersSent {s['answersSent']}")
        want = sorted((pid, kind) for pid, kinds in expected_tracks.items() if pid != s["id"] for kind in kinds)
        got = sorted(receiving(s).values())
        if got != want:
            problems.append(f"page {i}: receives {got} != others' published tracks {want}")
    if gateway is not None:
        for pid, g in gateway.get("participants", {}).items():
            if g["pending_offer"] is not None or g["renegotiate_later"]:
                problems.append(f"gateway: offer to {pid} outstanding ({g['pending_offer']}, later={g['renegotiate_later']})")
        if sorted(gateway.get("participants", {})) != sorted(ids):
            problems.append(f"gateway: participants {sorted(gateway.get('participants', {}))} != pages {sorted(ids)}")
    return problems


def audio_by_publisher(snap: dict) -> dict[str, dict[int, int]]:
    """publisher id -> {ssrc: packetsReceived} of the page's inbound audio streams."""
    mids = receiving(snap)
    by_track = {t["track"]: t["mid"] for t in snap.get("transceivers", [])}
    out: dict[str, dict[int, int]] = {}
    for r in snap.get("inbound", []):
        if r["kind"] != "audio":
            continue
        mid = r["mid"] if r["mid"] is not None else by_track.get(r["track"])
        owner = mids.get(mid, (None, None))[0]
        if owner is not None:
            out.setdefault(owner, {})[r["ssrc"]] = r["packets"]
    return out


def media_problems(before: list[dict], after: list[dict]) -> list[str]:
    """Each page's audio grew from every other voice publisher, on distinct SSRCs."""
    problems = []
    voices = {s["id"] for s in after if "audio" in published(s)}
    for i, (b, a) in enumerate(zip(before, after)):
        old, new = audio_by_publisher(b), audio_by_publisher(a)
        growing = {}
        for owner, streams in new.items():
            for ssrc, packets in streams.items():
                if packets > old.get(owner, {}).get(ssrc, 0):
                    growing.setdefault(owner, set()).add(ssrc)
        want = sorted(voices - {a["id"]})
        ssrcs = {x for v in growing.values() for x in v}
        if sorted(growing) != want or len(ssrcs) < len(want):
            problems.append(f"page {i}: audio grows from {sorted(growing)} ({len(ssrcs)} SSRCs), want {want}")
    return problems


def gateway_state(app, call_id: str) -> dict | None:
    call = app.core.calls.get(call_id)
    if call is None:
        return None
    return {
        "participants": {
            p.id: {
                "name": p.name,
                "pending_offer": p.negotiation.pending_offer[0] if p.negotiation.pending_offer else None,
                "renegotiate_later": p.renegotiate_later,
                "sharing": p.sharing,
                "published": sorted(p.negotiation.published_tracks()),
                "sections": [
                    f"{s.mid}:{s.kind}:{s.direction}{':stopped' if s.stopped else ''}"
                    + (f"<-{call.participants[s.source[0]].name if s.source[0] in call.participants else s.source[0]}"
                       f"/{s.source[1]}" if s.source else "")
                    for s in p.negotiation.sections
                ],
            }
            for p in call.participants.values()
        }
    }


def dump(round_no: int, label: str, snaps: list[dict], gateway: dict | None, extra: str) -> str:
    names = {s.get("id"): s.get("name") for s in snaps}
    if gateway:
        names.update({pid: g["name"] for pid, g in gateway["participants"].items()})
    name = lambda pid: names.get(pid, pid)  # noqa: E731
    lines = [f"--- round {round_no} ({label}) {extra}"]
    for i, s in enumerate(snaps):
        if not s.get("loaded"):
            lines.append(f"  page {i}: not loaded {s.get('error', '')}")
            continue
        tx = " ".join(f"{t['mid']}:{t['kind'][0]}:{t['direction']}:{t['currentDirection']}" for t in s.get("transceivers", []))
        remote = " ".join(
            f"{r['mid']}:{r['kind'][0]}:{r['dir']}{':port0' if not r['port'] else ''}"
            f"{'<-' + str(name(r['msid'])) if r['msid'] else ''}"
            for r in remote_sections(s.get("remoteSdp"))
        )
        inbound = " ".join(f"{r['kind'][0]}{r['mid']}:{r['ssrc']}={r['packets']}" for r in s.get("inbound", []))
        lines.append(
            f"  page {i} {s.get('name')} ({s.get('id')}): phase={s.get('phase')} joined={s.get('joined')}"
            f" participants={[name(p) for p in s.get('participants', [])]}"
            f" offers rx/answers tx/offers tx={s.get('offersReceived')}/{s.get('answersSent')}/{s.get('offersSent')}"
            f" glare={s.get('glareCount')} signaling={s.get('signalingState')} media={s.get('connectionState')}"
            f" sharing={s.get('sharing')} screenSharer={name(s.get('screenSharer'))}"
        )
        lines.append(f"    transceivers mid:kind:direction:currentDirection: {tx}")
        lines.append(f"    remote sections: {remote}")
        lines.append(f"    inbound: {inbound}")
        if s.get("lastError") or s.get("problems") or s.get("closeCode"):
            lines.append(f"    lastError={s.get('lastError')} close={s.get('closeCode')} problems={s.get('problems')}")
        if s.get("messages"):
            lines.append("    messages received (ms % 1e6): " + " ".join(f"{t}:{m}" for t, m in s["messages"]))
        if s.get("sdpOps"):
            lines.append(f"    SDP operations (now {s.get('now')}): " + " ".join(
                f"{o['op']}({o['type'] or ''})@{o['t0']}->"
                + (f"{o['t1']}:{o['error'] or o['state']}" if o["t1"] is not None else "PENDING")
                for o in s["sdpOps"]))
        if s.get("console"):
            lines.append(f"    console: {s['console']}")
    if gateway is None:
        lines.append("  gateway: no such call")
    else:
        for pid, g in gateway["participants"].items():
            lines.append(
                f"  gateway {g['name']} ({pid}): pending_offer={g['pending_offer']} later={g['renegotiate_later']}"
                f" sharing={g['sharing']} published={g['published']} sections={' '.join(g['sections'])}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------ driving the tabs


@dataclass
class Round:
    no: int
    variant: str
    app: object
    call_id: str
    links: list[str]
    tokens: list[str]
    names: list[str]
    joins: list[float] = field(default_factory=list)  # gateway receive times of the joins
    on_join: object = None  # called with the number of joins taken so far
    started: float = field(default_factory=time.monotonic)
    converged: float | None = None  # s from the round's start to the quiet, consistent state


async def snap(page) -> dict:
    try:
        out = await page.evaluate(SNAPSHOT, timeout=10)
    except (RuntimeError, TimeoutError) as exc:  # mid-navigation: no context yet
        return {"loaded": False, "error": str(exc)[:200]}
    if out is None:
        return {"loaded": False}
    return out


async def snaps(pages) -> list[dict]:
    return list(await asyncio.gather(*(snap(p) for p in pages)))


async def wait_page(page, expression: str, timeout: float, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await page.evaluate(expression, timeout=5):
                return
        except (RuntimeError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(expression)
        await asyncio.sleep(interval)


async def load_idle(pages, app) -> None:
    """Every tab on the gateway's page, not in a call."""
    url = base_url(app)
    await asyncio.gather(*(p.call("Page.navigate", {"url": url}) for p in pages))
    for p in pages:
        await wait_page(p, "location.origin !== 'null' && document.readyState === 'complete' && !!window.callsgw", 15, 0.05)


async def hold_joins(pages, rnd: Round, indices: list[int]) -> None:
    """The pages in `indices` (on the page, not in a call) start joining and hold their `join` frames."""
    exprs = [
        "window.__holdJoin = true; window.callsgw.join("
        + json.dumps({"call": rnd.call_id, "name": rnd.names[i], "token": rnd.tokens[i]})
        + ").catch(() => {}); true"
        for i in indices
    ]
    await asyncio.gather(*(pages[i].evaluate(e) for i, e in zip(indices, exprs)))
    await asyncio.gather(*(wait_page(pages[i], "window.__heldJoins.length === 1", 15) for i in indices))


async def release_joins(pages, indices: list[int]) -> None:
    await asyncio.gather(*(pages[i].evaluate("window.__releaseJoin()") for i in indices))


async def prepare(page):
    await page.call("Page.addScriptToEvaluateOnNewDocument", {"source": JOIN_BARRIER})
    if CPU_THROTTLE > 1:
        await page.call("Emulation.setCPUThrottlingRate", {"rate": CPU_THROTTLE})
    return page


async def start_round(pages, rnd: Round, rng: random.Random) -> None:
    if rnd.variant in ("links", "cold_browser"):
        # the reporter's way: join links opened in all pages at once; a link waits for one
        # click on its Join button, so all four are clicked at once too
        await asyncio.gather(*(p.call("Page.navigate", {"url": link}) for p, link in zip(pages, rnd.links)))
        await asyncio.gather(*(wait_page(p, "document.documentElement.dataset.linkJoin === 'ready'", 20, 0.01)
                               for p in pages))
        await asyncio.gather(*(p.evaluate("document.getElementById('join-btn').click(); true") for p in pages))
        return
    await load_idle(pages, rnd.app)
    everyone = list(range(PAGES))
    await hold_joins(pages, rnd, everyone)
    if rnd.variant == "barrier":
        await release_joins(pages, everyone)
    elif rnd.variant == "while_negotiating":
        # the gateway offers 0 and 1 each other's voice as it takes the second
        # join; 2 and 3 join while those offers are being answered
        second = asyncio.Event()
        rnd.on_join = lambda count: second.set() if count == 2 else None
        await release_joins(pages, [0, 1])
        await asyncio.wait_for(second.wait(), 10)
        await asyncio.sleep(rng.choice([0, 0, 0.005, 0.01, 0.02, 0.04]))
        await release_joins(pages, [2, 3])
    elif rnd.variant == "screen_share":
        # one page shares its screen as soon as it has joined, while the
        # others join; every other round it stops again shortly after
        await release_joins(pages, everyone)
        sharer = pages[rnd.no % PAGES]
        await wait_page(sharer, "window.callsgw.state.joined", 10, 0.005)
        await sharer.evaluate("window.callsgw.startScreenShare({fake: true})")
        if rnd.no % 2:
            await asyncio.sleep(rng.uniform(0.0, 0.8))
            await sharer.evaluate("window.callsgw.stopScreenShare()")
    else:
        raise AssertionError(rnd.variant)


def progress_mark(snaps: list[dict], gateway: dict | None):
    """Changes whenever a page or the gateway makes a signaling step."""
    pages = tuple(
        (s.get("loaded"), s.get("phase"), s.get("signalingState"), s.get("offersReceived"), s.get("answersSent"),
         s.get("offersSent"), len(s.get("transceivers", ())), tuple(s.get("participants", ())),
         tuple(map(tuple, s.get("messages", ())))[-1:],
         tuple((o["t0"], o["t1"]) for o in s.get("sdpOps", ()))[-1:])
        for s in snaps
    )
    return pages, json.dumps(gateway, sort_keys=True)


async def converge(pages, rnd: Round) -> tuple[list[str], list[dict]]:
    """Wait for the quiet-state property; returns the problems left (empty when it holds)."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    last, moved = None, time.monotonic()
    while True:
        current = await snaps(pages)
        gateway = gateway_state(rnd.app, rnd.call_id)
        problems = structural_problems(current, gateway)
        if not problems:
            break
        now = time.monotonic()
        mark = progress_mark(current, gateway)
        if mark != last:
            last, moved = mark, now
        elif now - moved > STUCK_AFTER:
            problems.insert(0, f"stuck: nothing moved for {now - moved:.0f} s")
            break
        if now > deadline:
            problems.insert(0, f"still moving but not settled after {CONVERGE_TIMEOUT:g} s")
            break
        await asyncio.sleep(0.25)
    rnd.converged = None if problems else time.monotonic() - rnd.started
    if problems:
        return problems, current
    deadline = time.monotonic() + MEDIA_TIMEOUT
    before = current
    while True:
        await asyncio.sleep(0.6)
        after = await snaps(pages)
        problems = media_problems(before, after)
        if not problems or time.monotonic() > deadline:
            break
        before = after
    # still consistent once media flows (nothing renegotiated behind our back)
    problems += structural_problems(after, gateway_state(rnd.app, rnd.call_id))
    return problems, after


async def end_round(pages, rnd: Round) -> None:
    """Every tab back on about:blank (its `beforeunload` sends `leave`), the call gone."""
    await asyncio.gather(*(p.call("Page.navigate", {"url": "about:blank"}) for p in pages))
    # Page.navigate returns before the old document is gone; a navigation
    # started before that commits can be lost, so wait for the blank page
    for p in pages:
        await wait_page(p, "location.href === 'about:blank' && document.readyState === 'complete'", 10, 0.05)
    await call_gone(rnd)


async def call_gone(rnd: Round) -> None:
    deadline = time.monotonic() + 10
    while rnd.call_id in rnd.app.core.calls and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert rnd.call_id not in rnd.app.core.calls, "the pages left, but the call stayed on the gateway"


def time_joins(app, sink: list) -> None:
    """Record when the gateway handles each join (test instrumentation only)."""
    original = app.core._join

    def timed(conn, join, now):
        result = original(conn, join, now)
        if sink:
            sink[0].joins.append(now)
            if sink[0].on_join is not None:
                sink[0].on_join(len(sink[0].joins))
        return result

    app.core._join = timed


async def open_window(browser: Chromium) -> RecordingPage:
    """Like open_page, but the page gets a window of its own: it stays visible
    (tabs behind the front one are hidden, and their timers throttled)."""
    return await open_page(browser, new_window=True)


@pytest.mark.parametrize("variant", ["links", "cold_browser", "barrier", "while_negotiating", "screen_share"])
async def test_simultaneous_joins_converge(tmp_path, browser, variant, request):
    rng = random.Random(f"{SEED}-{variant}")
    failures: list[str] = []
    spreads: list[float] = []
    settle: list[float | None] = []
    started = time.monotonic()
    current_round: list[Round] = []
    async with asyncio.timeout(TEST_TIMEOUT), \
            running_gateway(tmp_path / "native", media_engine="native") as native, \
            running_gateway(tmp_path / "python", media_engine="python") as python:
        for app in (native, python):
            time_joins(app, current_round)
        cold = variant == "cold_browser"
        surfaces = {"tabs": [], "windows": []}
        for _ in range(0 if cold else PAGES):
            surfaces["tabs"].append(await prepare(await open_page(browser, width=800, height=600)))
            surfaces["windows"].append(await prepare(await open_window(browser)))
        for no in range(ROUNDS):
            # tabs (all but one hidden) and windows (all visible) alternate; engines every two rounds
            surface = ("tabs", "windows")[no % 2]
            if cold:  # a browser started for this round, its pages made together, then the links
                fresh = Chromium()
                request.addfinalizer(fresh.close)  # closed below; also if the round raises
                opener = (lambda b: open_page(b, width=800, height=600)) if surface == "tabs" else open_window
                pages = list(await asyncio.gather(*(opener(fresh) for _ in range(PAGES))))
                await asyncio.gather(*(prepare(p) for p in pages))
            else:
                pages = surfaces[surface]
            app = (native, python)[no // 2 % 2]
            call_id = f"r{no}-{variant.replace('_', '-')}-{rng.randrange(1 << 30):x}"
            names = [f"p{chr(97 + i)}" for i in range(PAGES)]
            secret = app.datadir.api_secret()
            toks = [tokens.mint(secret, call=call_id, name=n) for n in names]
            rnd = Round(no, variant, app, call_id, [join_link(app, call_id, n) for n in names], toks, names)
            current_round[:] = [rnd]
            await start_round(pages, rnd, rng)
            problems, final = await converge(pages, rnd)
            spread = (max(rnd.joins) - min(rnd.joins)) * 1000 if len(rnd.joins) > 1 else float("nan")
            spreads.append(spread)
            settle.append(rnd.converged)
            if problems:
                for page, s in zip(pages, final):
                    s["console"] = page.console[-6:]
                engine = "native" if app is native else "python"
                failures.append(
                    dump(no, f"{variant}, {surface}, {engine} engine", final, gateway_state(app, call_id),
                         f"joins spread {spread:.1f} ms: " + "; ".join(problems))
                )
            if cold:
                for page in pages:
                    await page.close()
                fresh.close()
                await call_gone(rnd)
            else:
                await end_round(pages, rnd)
        pages = surfaces["tabs"] + surfaces["windows"]
        for page in pages:
            await page.close()
        browser.close()  # before the gateways stop: no idle browser connection holds their shutdown
    elapsed = time.monotonic() - started
    summary = (f"{variant}: {len(failures)}/{ROUNDS} rounds failed in {elapsed:.0f} s; joins spread (ms) per round:"
               f" {', '.join(f'{s:.0f}' for s in spreads)}; signaling settled after (s):"
               f" {', '.join('-' if t is None else f'{t:.1f}' for t in settle)}")
    print(summary)
    assert not failures, summary + "\n" + "\n".join(failures[:DUMPED_FAILURES])

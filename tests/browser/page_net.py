"""The web page's signaling under test control, in a real Chromium (tests only).

``NET_SHIM`` is installed with ``Page.addScriptToEvaluateOnNewDocument``, so it
runs before the page's own script. It wraps ``window.WebSocket``: the real
gateway stays behind the page, but every message from the gateway passes
through ``window.__net`` first, where a test can hold it, drop it, change it,
release held messages in any order, or inject messages of its own. It also
records what the page sent, and it can make the page's RTCPeerConnection fail
(or hang) on the next ``createAnswer``/``setLocalDescription``/... call.

``convergence_problems`` states what must hold once traffic quiets: every
page is joined, ``signalingState`` is ``stable``, every gateway offer it got was
answered, ``state.participants`` is the gateway's participants (the others),
its receivers are exactly the others' published tracks, the gateway holds no
offer to anybody, and (``media=True``) audio packets grow from every other
voice publisher.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from tests.browser.chromium import Chromium
from tests.browser.test_web_client import open_page

NET_SHIM = r"""
(() => {
  const Native = window.WebSocket;
  const onmessage = Object.getOwnPropertyDescriptor(Native.prototype, 'onmessage');
  const net = window.__net = {
    sockets: 0,       // WebSockets the page opened (a rejoin opens another)
    received: [],     // every gateway message off the wire: {socket, type, id}
    delivered: [],    // what the page's handler got, in order: {socket, type, id, injected}
    dropped: [],      // {socket, type, id}
    sent: [],         // what the page sent (parsed), with its socket number
    held: [],         // {ws, socket, m}: kept from the page until released
    hold: null,       // null, or the message types to hold ('*': all of them)
    holdSocket: null, // hold on this socket only (null: any)
    drop: {},         // type -> how many of the next such messages vanish
    dropSocket: null, // drop on this socket only (null: any)
    mutate: null,     // (m, socket) -> m: change a message as it arrives (null: drop it)
    unreachable: 0,   // the next N WebSockets go to a closed port (Chromium reports that close late)
    refuse: 0,        // the next N WebSockets fail at once (close 1006)
    faults: {         // the next N such calls on an RTCPeerConnection reject (or never settle)
      createOffer: 0, createAnswer: 0, setLocalAnswer: 0, setRemoteOffer: 0, setRemoteAnswer: 0,
      hangRemoteOffer: 0, hangLocalAnswer: 0,
    },
    faulted: [],
    ws: null,
    deliver(ws, m, injected) {
      net.delivered.push({ socket: ws.__socket, type: m.type, id: m.id ?? null, injected: !!injected });
      const handler = ws.__pageHandler;
      if (handler) handler.call(ws, new MessageEvent('message', { data: JSON.stringify(m) }));
    },
    /** Deliver the held messages that `pred` accepts (all without one), in the order given by `order` (indices into the matches) or as held. */
    release(pred, order) {
      const picked = [];
      net.held = net.held.filter((h) => {
        if (!pred || pred(h.m)) { picked.push(h); return false; }
        return true;
      });
      const seq = order ? order.map((i) => picked[i]) : picked;
      for (const h of seq) net.deliver(h.ws, h.m, false);
      return seq.length;
    },
    /** Remove and return the first held message `pred` accepts. */
    take(pred) {
      const i = net.held.findIndex((h) => pred(h.m));
      return i < 0 ? null : net.held.splice(i, 1)[0].m;
    },
    /** Deliver a message to the page as if the gateway sent it now (current socket). */
    inject(m) { net.deliver(net.ws, m, true); },
    heldTypes() { return net.held.map((h) => h.m.type + (h.m.id !== undefined ? ':' + h.m.id : '')); },
  };
  const wanted = (rule, socket) => rule === null || rule === socket;
  function incoming(ws, ev) {
    let m;
    try { m = JSON.parse(ev.data); } catch { m = null; }
    if (!m || typeof m.type !== 'string') {
      if (ws.__pageHandler) ws.__pageHandler.call(ws, ev);
      return;
    }
    const socket = ws.__socket;
    net.received.push({ socket, type: m.type, id: m.id ?? null });
    if (net.mutate) {
      m = net.mutate(m, socket);
      if (!m) return;
    }
    if (net.drop[m.type] > 0 && wanted(net.dropSocket, socket)) {
      net.drop[m.type] -= 1;
      net.dropped.push({ socket, type: m.type, id: m.id ?? null });
      return;
    }
    if (net.hold && wanted(net.holdSocket, socket) && (net.hold.includes('*') || net.hold.includes(m.type))) {
      net.held.push({ ws, socket, m });
      return;
    }
    net.deliver(ws, m, false);
  }
  class TestWebSocket extends Native {
    constructor(url, protocols) {
      const away = net.unreachable > 0;
      if (away) net.unreachable -= 1;
      super(away ? url.replace(/\/\/[^/]+/, '//127.0.0.1:65000') : url, protocols);
      const ws = this;
      if (!away && net.refuse > 0) {
        net.refuse -= 1;
        ws.close();  // still connecting: the connection fails (1006)
      }
      ws.__socket = ++net.sockets;
      ws.__pageHandler = null;
      net.ws = ws;
      onmessage.set.call(ws, (ev) => incoming(ws, ev));
      Object.defineProperty(ws, 'onmessage', {
        configurable: true,
        get: () => ws.__pageHandler,
        set: (fn) => { ws.__pageHandler = fn; },
      });
    }
    send(data) {
      try { net.sent.push({ socket: this.__socket, ...JSON.parse(data) }); } catch { /* not JSON */ }
      return super.send(data);
    }
  }
  window.WebSocket = TestWebSocket;

  const P = RTCPeerConnection.prototype;
  const orig = {
    createOffer: P.createOffer, createAnswer: P.createAnswer,
    setLocalDescription: P.setLocalDescription, setRemoteDescription: P.setRemoteDescription,
  };
  const f = net.faults;
  const fire = (name) => {
    if (f[name] > 0) { f[name] -= 1; net.faulted.push(name); return true; }
    return false;
  };
  const boom = (what) => Promise.reject(new DOMException(`injected ${what} failure`, 'OperationError'));
  P.createOffer = function (...args) {
    return fire('createOffer') ? boom('createOffer') : orig.createOffer.apply(this, args);
  };
  P.createAnswer = function (...args) {
    return fire('createAnswer') ? boom('createAnswer') : orig.createAnswer.apply(this, args);
  };
  P.setLocalDescription = function (d, ...args) {
    const answer = (d && d.type === 'answer') || (!d && this.signalingState === 'have-remote-offer');
    if (answer && fire('hangLocalAnswer')) return new Promise(() => {});
    if (answer && fire('setLocalAnswer')) return boom('setLocalDescription(answer)');
    return orig.setLocalDescription.call(this, d, ...args);
  };
  P.setRemoteDescription = function (d, ...args) {
    if (d && d.type === 'offer' && fire('hangRemoteOffer')) return new Promise(() => {});
    if (d && d.type === 'offer' && fire('setRemoteOffer')) return boom('setRemoteDescription(offer)');
    if (d && d.type === 'answer' && fire('setRemoteAnswer')) return boom('setRemoteDescription(answer)');
    return orig.setRemoteDescription.call(this, d, ...args);
  };
})();
"""

# Everything the checks need from one page, in one round trip.
SNAPSHOT = r"""(async () => {
  const c = window.callsgw;
  if (!c) return { loaded: false };
  const st = c.state, pc = c.pc;
  const out = {
    loaded: true, phase: st.phase, joined: st.joined, id: st.participantId, name: st.name,
    participants: Object.keys(st.participants).sort(),
    offersReceived: st.offersReceived, answersSent: st.answersSent, offersSent: st.offersSent,
    glareCount: st.glareCount, lastError: st.lastError, closeCode: st.closeCode,
    stuck: st.stuck || null, warnings: st.warnings || null, mediaFlow: st.mediaFlow || null,
    rejoins: st.rejoins ?? null, recovery: st.recovery ? JSON.parse(JSON.stringify(st.recovery)) : null,
    verdict: st.security.verdict, sharing: st.sharing,
    signalingState: pc ? pc.signalingState : null, connectionState: pc ? pc.connectionState : null,
    remoteSdp: pc && pc.remoteDescription ? pc.remoteDescription.sdp : null,
    transceivers: [], inbound: [],
    problems: (window.__problems || []).slice(-8),
    net: window.__net ? { sockets: window.__net.sockets, held: window.__net.heldTypes(), faulted: window.__net.faulted } : null,
  };
  if (!pc) return out;
  for (const t of pc.getTransceivers()) out.transceivers.push({
    mid: t.mid, kind: t.receiver.track.kind, direction: t.direction, currentDirection: t.currentDirection,
    sending: !!t.sender.track, track: t.receiver.track.id,
  });
  (await pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp') out.inbound.push({
      kind: r.kind, mid: r.mid ?? null, track: r.trackIdentifier ?? null, ssrc: r.ssrc, packets: r.packetsReceived || 0,
    });
  });
  return out;
})()"""


# ------------------------------------------------------------------------- pages


async def open_net_page(browser: Chromium, **initial):
    """A page (tests/browser/test_web_client.open_page) with NET_SHIM; `initial` presets window.__net
    (e.g. hold=['*'] to hold every gateway message from the first one)."""
    page = await open_page(browser, width=1000, height=700)
    source = NET_SHIM
    if initial:
        source += f"\nObject.assign(window.__net, {json.dumps(initial)});\n"
    await page.call("Page.addScriptToEvaluateOnNewDocument", {"source": source})
    return page


async def net(page, expression: str):
    """Evaluate `expression` with `net` bound to the page's window.__net."""
    return await page.evaluate(f"(() => {{ const net = window.__net; return ({expression}); }})()")


async def wait_held(page, predicate_js: str, timeout: float = 10) -> None:
    """Until a held message satisfies `predicate_js` (a JS function of the message)."""
    await page.wait_for(f"window.__net.held.some(h => ({predicate_js})(h.m))", timeout=timeout, interval=0.05)


async def wait_sent(page, predicate_js: str, timeout: float = 10) -> None:
    await page.wait_for(f"window.__net.sent.some(m => ({predicate_js})(m))", timeout=timeout, interval=0.05)


async def snapshot(page) -> dict:
    try:
        out = await page.evaluate(SNAPSHOT, timeout=10)
    except (RuntimeError, TimeoutError) as exc:
        return {"loaded": False, "error": str(exc)[:300]}
    return out or {"loaded": False}


# ------------------------------------------------------------------ convergence


def remote_sections(sdp: str | None) -> list[dict]:
    """The gateway's m-sections in a page's remote description: mid, kind, port, direction, msid stream."""
    out = []
    for block in (sdp or "").replace("\r\n", "\n").split("\nm=")[1:]:
        lines = block.split("\n")
        head = lines[0].split()
        section = {"kind": head[0], "port": int(head[1]), "mid": None, "dir": "sendrecv", "msid": None}
        for line in lines[1:]:
            if line.startswith("a=mid:"):
                section["mid"] = line[6:].strip()
            elif line in ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive"):
                section["dir"] = line[2:]
            elif line.startswith("a=msid:"):
                section["msid"] = line[7:].split()[0]
        out.append(section)
    return out


def receiving(snap: dict) -> dict[str, tuple[str, str]]:
    """mid -> (publisher id, kind) of every section the gateway sends on and the page receives."""
    current = {t["mid"]: t["currentDirection"] for t in snap.get("transceivers", [])}
    return {
        s["mid"]: (s["msid"], s["kind"])
        for s in remote_sections(snap.get("remoteSdp"))
        if s["port"] and s["dir"] in ("sendonly", "sendrecv") and current.get(s["mid"]) in ("recvonly", "sendrecv")
    }


def audio_by_publisher(snap: dict) -> dict[str, int]:
    """publisher id -> inbound audio packets on the page's receivers for it."""
    mids = receiving(snap)
    by_track = {t["track"]: t["mid"] for t in snap.get("transceivers", [])}
    out: dict[str, int] = {}
    for r in snap.get("inbound", []):
        if r["kind"] != "audio":
            continue
        mid = r["mid"] if r["mid"] is not None else by_track.get(r["track"])
        owner = mids.get(mid, (None, None))[0]
        if owner is not None:
            out[owner] = out.get(owner, 0) + r["packets"]
    return out


KIND = {"voice": "audio", "screen": "video"}


def gateway_view(app, call_id: str) -> dict:
    call = app.core.calls.get(call_id)
    if call is None:
        return {}
    return {
        p.id: {
            "pending_offer": p.negotiation.pending_offer[0] if p.negotiation.pending_offer else None,
            "renegotiate_later": p.renegotiate_later,
            "published": sorted(KIND.get(t, t) for t in p.negotiation.published_tracks()),
        }
        for p in call.participants.values()
    }


def structural_problems(snaps: list[dict], gateway: dict) -> list[str]:
    problems = []
    for i, s in enumerate(snaps):
        if not (s.get("loaded") and s.get("joined") and s.get("id")):
            problems.append(f"page {i}: not joined (phase {s.get('phase')}, close {s.get('closeCode')}, "
                            f"recovery {s.get('recovery')}, {s.get('error', '')})")
    if problems:
        return problems
    ids = sorted(s["id"] for s in snaps)
    if sorted(gateway) != ids:
        problems.append(f"gateway participants {sorted(gateway)} != pages {ids}")
    for pid, g in gateway.items():
        if g["pending_offer"] is not None or g["renegotiate_later"]:
            problems.append(f"gateway: offer to {pid} outstanding (id {g['pending_offer']}, later={g['renegotiate_later']})")
    for i, s in enumerate(snaps):
        others = sorted(x for x in gateway if x != s["id"])
        if s["participants"] != others:
            problems.append(f"page {i}: participants {s['participants']} != gateway's others {others}")
        if s["signalingState"] != "stable":
            problems.append(f"page {i}: signalingState {s['signalingState']}")
        if s["offersReceived"] != s["answersSent"]:
            problems.append(f"page {i}: offersReceived {s['offersReceived']} != answersSent {s['answersSent']}")
        if s.get("stuck"):
            problems.append(f"page {i}: stuck {s['stuck']}")
        want = sorted((pid, kind) for pid, g in gateway.items() if pid != s["id"] for kind in g["published"])
        got = sorted(receiving(s).values())
        if got != want:
            problems.append(f"page {i}: receives {got} != others' published tracks {want}")
    return problems


def media_problems(before: list[dict], after: list[dict], gateway: dict) -> list[str]:
    problems = []
    voices = {pid for pid, g in gateway.items() if "audio" in g["published"]}
    for i, (b, a) in enumerate(zip(before, after)):
        old, new = audio_by_publisher(b), audio_by_publisher(a)
        growing = sorted(pid for pid, n in new.items() if n > old.get(pid, 0))
        want = sorted(voices - {a.get("id")})
        if growing != want:
            problems.append(f"page {i}: audio grows from {growing}, want {want}")
    return problems


def describe(snaps: list[dict]) -> str:
    lines = []
    for i, s in enumerate(snaps):
        tx = " ".join(f"{t['mid']}:{t['kind'][0]}:{t['direction']}:{t['currentDirection']}" for t in s.get("transceivers", []))
        remote = " ".join(f"{r['mid']}:{r['kind'][0]}:{r['dir']}{':port0' if not r['port'] else ''}<-{r['msid']}"
                          for r in remote_sections(s.get("remoteSdp")))
        lines.append(
            f"  page {i} {s.get('name')} ({s.get('id')}): joined={s.get('joined')} participants={s.get('participants')}"
            f" offers rx/answers tx/offers tx={s.get('offersReceived')}/{s.get('answersSent')}/{s.get('offersSent')}"
            f" glare={s.get('glareCount')} signaling={s.get('signalingState')} media={s.get('connectionState')}"
            f" stuck={s.get('stuck')} rejoins={s.get('rejoins')} net={s.get('net')}\n"
            f"    transceivers: {tx}\n    remote: {remote}\n    lastError={s.get('lastError')} problems={s.get('problems')}"
        )
    return "\n".join(lines)


async def wait_converged(pages, app, call_id: str, timeout: float = 15.0, media: bool = True) -> list[dict]:
    """Until the quiet-state property holds (then audio must grow from every other voice); fails with a dump."""
    deadline = time.monotonic() + timeout
    while True:
        snaps = [await snapshot(p) for p in pages]
        gateway = gateway_view(app, call_id)
        problems = structural_problems(snaps, gateway)
        if not problems:
            break
        if time.monotonic() > deadline:
            raise AssertionError("no convergence: " + "; ".join(problems) + "\n" + describe(snaps) + f"\n  gateway: {gateway}")
        await asyncio.sleep(0.2)
    if not media:
        return snaps
    before = snaps
    deadline = time.monotonic() + 10
    while True:
        await asyncio.sleep(0.7)
        after = [await snapshot(p) for p in pages]
        gateway = gateway_view(app, call_id)
        problems = media_problems(before, after, gateway) + structural_problems(after, gateway)
        if not problems:
            return after
        if time.monotonic() > deadline:
            raise AssertionError("media does not flow: " + "; ".join(problems) + "\n" + describe(after))
        before = after


# ----------------------------------------------------------------------- fixtures


@pytest.fixture
def web_root(monkeypatch):
    """CALLSGW_TEST_WEB_ROOT=DIR serves another copy of the page (e.g. the previous commit's,
    to show that a test fails on it): `git show HEAD~1:callsgw/web/app.js > DIR/app.js`, ..."""
    root = os.environ.get("CALLSGW_TEST_WEB_ROOT")
    if root:
        import callsgw.server.app as server_app

        monkeypatch.setattr(server_app, "WEB_ROOT", Path(root).resolve())
    return root


@pytest.fixture
def browser(web_root):
    b = Chromium()
    try:
        yield b
    finally:
        b.close()

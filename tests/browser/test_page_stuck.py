"""The page recovers from its own stuck negotiation, and shows stuck media (issue #12).

Real Chromium, real gateway, tests/browser/page_net.py on the page's WebSocket.

* Own negotiation stuck (an offer step that never completes, an own offer
  without answer, somebody publishing voice without a receiver here): after
  ``bounds.negotiationStuckMs`` the page rejoins (leave, fresh join, same
  token), with exponential backoff and a cap, and says so; it converges after.
* Stuck media (an unmuted participant whose voice does not arrive): a warning
  on that participant and over the stage, no rejoin; the security panel says
  "Verified" only while media flows from somebody expected.

On the page of commit 81b116c each of these tests fails: it had no watchdog
(stuck forever, silently) and no media check (``Verified`` over silence).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.browser.chromium import chromium_path
from tests.browser.page_net import browser, net, open_net_page, snapshot, wait_converged, wait_held, wait_sent, web_root  # noqa: F401
from tests.browser.test_web_client import join_link, page_problems
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")

TEST_TIMEOUT = 58
GARBLED = "v=0\r\nthis is not SDP\r\n"

# Records every text the page's banner and media warning show (they change faster than polling sees).
BANNER_LOG = """(() => {
  window.__banners = [];
  const log = () => {
    for (const id of ['banner', 'media-warning']) {
      const box = document.getElementById(id);
      const text = box.hidden ? '' : box.textContent.trim();
      const last = window.__banners.filter(b => b.id === id).pop();
      if (text && (!last || last.text !== text)) window.__banners.push({id, text, at: Date.now()});
    }
  };
  new MutationObserver(log).observe(document.querySelector('#stage'), {subtree: true, childList: true, characterData: true, attributes: true});
  return true;
})()"""


async def join_page(browser, app, call: str, name: str, **mint):
    page = await open_net_page(browser)
    await page.goto(join_link(app, call, name, **mint))
    await page.wait_for("window.callsgw && window.callsgw.state.joined", timeout=15)
    await page.evaluate(BANNER_LOG)
    return page


async def start_call(browser, app, call: str, names: list[str]) -> list:
    pages = [await join_page(browser, app, call, name) for name in names]
    await wait_converged(pages, app, call, media=False)
    return pages


async def pid(page) -> str:
    return await page.evaluate("window.callsgw.state.participantId")


async def banners(page) -> list[str]:
    return [b["text"] for b in await page.evaluate("window.__banners")]


# ------------------------------------------------------------ own negotiation stuck


async def test_hung_answer_step_rejoins_after_the_bound(tmp_path, browser):
    """The reported state: `have-remote-offer`, more offers received than answers sent, because a
    step of the queue never completes. The page rejoins after the bound and converges."""
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b = await start_call(browser, app, "hung", ["ann", "bob"])
        bound = await b.evaluate("window.callsgw.bounds?.negotiationStuckMs ?? 10000") / 1000
        await net(b, "net.faults.hangLocalAnswer = 1")
        c = await join_page(browser, app, "hung", "cy")  # the gateway offers Bob Cy's voice
        await b.wait_for("window.__net.faulted.includes('hangLocalAnswer')", timeout=10)
        hung_at = time.monotonic()
        state = await snapshot(b)
        assert state["signalingState"] == "have-remote-offer"
        assert state["offersReceived"] == state["answersSent"] + 1
        await b.wait_for("window.callsgw.state.rejoins === 1", timeout=bound + 8)
        took = time.monotonic() - hung_at
        assert bound - 0.5 <= took <= bound + 7, took  # the bound, one watchdog tick, the rejoin delay
        await wait_converged([a, b, c], app, "hung")
        state = await snapshot(b)
        assert state["recovery"]["status"] == "rejoined" and state["stuck"] is None
        assert "unanswered" in state["recovery"]["reason"] or "signaling state" in state["recovery"]["reason"]
        shown = await banners(b)
        assert any("Media negotiation is stuck" in t and "Rejoining the call in" in t for t in shown), shown
        for page in (a, b, c):
            assert await page_problems(page) == []


async def test_own_offer_without_answer_rejoins(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b = await start_call(browser, app, "no-answer", ["ann", "bob"])
        bound = await b.evaluate("window.callsgw.bounds?.negotiationStuckMs ?? 10000") / 1000
        await b.evaluate("window.callsgw.toggleMute(true)")
        # every answer to Bob's offers on this connection is lost
        await net(b, "(net.dropSocket = 1, net.drop.answer = 100)")
        assert await b.evaluate("window.callsgw.startScreenShare({fake: true})") is True
        await wait_sent(b, "m => m.type === 'offer'")
        started = time.monotonic()
        await b.wait_for("window.callsgw.state.rejoins === 1", timeout=bound + 8)
        assert time.monotonic() - started >= bound - 0.5
        await wait_converged([a, b], app, "no-answer")
        state = await snapshot(b)
        assert "own offer got no answer" in state["recovery"]["reason"]
        # the rejoin is a fresh join: the screen share is not resumed, but the mute is kept
        assert state["sharing"] is False
        assert await b.evaluate("window.callsgw.state.muted && window.callsgw.pc.getSenders()"
                                ".every(s => !s.track || s.track.kind !== 'audio' || !s.track.enabled)") is True
        bob = await pid(b)
        await a.wait_for(f"window.callsgw.state.participants[{json.dumps(bob)}].muted === true", timeout=5)
        for page in (a, b):
            assert await page_problems(page) == []


async def test_voice_publisher_without_receiver_counts_as_stuck(tmp_path, browser):
    """Bob never gets the gateway's offer with Cy's voice (lost), so nothing here is unanswered;
    but the gateway says Cy is speaking, and Bob has no receiver for Cy: stuck, rejoin."""
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b = await start_call(browser, app, "no-rx", ["ann", "bob"])
        bound = await b.evaluate("window.callsgw.bounds?.negotiationStuckMs ?? 10000") / 1000
        await net(b, "(net.dropSocket = 1, net.drop.offer = 1)")
        c = await join_page(browser, app, "no-rx", "cy")
        cy = await pid(c)
        await b.wait_for("window.__net.dropped.some(d => d.type === 'offer')", timeout=10)
        # the gateway's active-speaker report for Cy (what it sends when Cy talks)
        await net(b, f"net.inject({{type: 'speaking', participant_id: {json.dumps(cy)}, speaking: true}})")
        started = time.monotonic()
        await b.wait_for("window.callsgw.state.rejoins === 1", timeout=bound + 8)
        assert time.monotonic() - started >= bound - 1
        state = await snapshot(b)
        assert "publishes voice, but this page has had no receiver" in state["recovery"]["reason"]
        await wait_converged([a, b, c], app, "no-rx")


async def test_rejoin_backs_off_and_succeeds_when_the_gateway_is_back(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b = await start_call(browser, app, "backoff", ["ann", "bob"])
        # the next two connections fail
        await net(b, "net.refuse = 2")
        await net(b, f"net.inject({{type: 'offer', id: 99, sdp: {json.dumps(GARBLED)}}})")
        await b.wait_for("window.callsgw.state.recovery && window.callsgw.state.recovery.status === 'rejoined'", timeout=15)
        await wait_converged([a, b], app, "backoff")
        state = await snapshot(b)
        history = state["recovery"]["history"]
        assert [h["delayMs"] for h in history] == [500, 1000, 2000]
        assert [h["result"] for h in history][-1] == "joined"
        assert state["rejoins"] == 3 and state["net"]["sockets"] == 4
        gaps = [(y["at"] - x["at"]) / 1000 for x, y in zip(history, history[1:])]
        assert gaps[1] > gaps[0], gaps  # each wait doubles
        shown = await banners(b)
        assert any("attempt 3 of 5" in t for t in shown), shown


async def test_rejoin_attempts_are_capped(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b = await start_call(browser, app, "capped", ["ann", "bob"])
        cap = await b.evaluate("window.callsgw.bounds?.rejoinMaxAttempts ?? 5")
        # the first rejoin finds the gateway unreachable, the others are refused at once
        await net(b, "(net.unreachable = 1, net.refuse = 100)")
        await net(b, f"net.inject({{type: 'offer', id: 99, sdp: {json.dumps(GARBLED)}}})")
        await b.wait_for("window.callsgw.state.recovery && window.callsgw.state.recovery.status === 'gave_up'", timeout=30)
        state = await snapshot(b)
        assert state["rejoins"] == cap and len(state["recovery"]["history"]) == cap
        assert [h["delayMs"] for h in state["recovery"]["history"]] == [500, 1000, 2000, 4000, 8000][:cap]
        # it says so, and it stops: back at the form with the reason
        assert await b.evaluate("document.querySelector('#join-view').hidden") is False
        notice = await b.evaluate("document.querySelector('#join-notice').textContent")
        assert "could not be recovered" in notice and "could not be answered" in notice
        await asyncio.sleep(2)
        assert await b.evaluate("window.callsgw.state.rejoins") == cap
        # Ann's page lost Bob, and is otherwise fine
        await wait_converged([a], app, "capped")


# ------------------------------------------------------------------ stuck media


SILENCE = "window.callsgw.pc.getSenders().find(s => s.track && s.track.kind === 'audio').replaceTrack(null)"
RESTORE = """(() => {
  const pc = window.callsgw.pc;
  const sender = pc.getSenders().find(s => !s.track && pc.getTransceivers().some(t => t.sender === s && t.receiver.track.kind === 'audio'));
  return navigator.mediaDevices.getUserMedia({audio: true}).then(m => sender.replaceTrack(m.getAudioTracks()[0])).then(() => true);
})()"""


async def test_silent_publisher_is_warned_about_without_rejoin(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        ann, bob, cy = await start_call(browser, app, "silent", ["ann", "bob", "cy"])
        lee = await join_page(browser, app, "silent", "lee", perms=["publish_screen"])  # listen-only: normal
        await wait_converged([ann, bob, cy, lee], app, "silent")
        ida = await pid(ann)
        # Ann's browser stops sending audio, while Ann is not muted
        await ann.evaluate(SILENCE)
        silenced = time.monotonic()
        for page in (bob, cy, lee):
            await page.wait_for(f"window.callsgw.state.warnings.some(w => w.kind === 'no_audio' && w.participantId === {json.dumps(ida)})",
                                timeout=12)
        assert time.monotonic() - silenced >= 4  # the bound is 5 s after the last packet
        # shown on Ann in the list and on the stage
        assert await bob.evaluate(f"document.querySelector('#people [data-participant={json.dumps(ida)}]').dataset.noAudio") == "true"
        assert "no audio" in await bob.evaluate(f"document.querySelector('#people [data-participant={json.dumps(ida)}] .badge.no-audio').textContent")
        assert "No audio is arriving from ann" in await bob.evaluate("document.querySelector('#media-warning').textContent")
        assert await bob.evaluate("document.querySelector('#media-warning').hidden") is False
        # only Ann: Cy's audio flows, so the security panel still verifies for Bob
        warnings = await bob.evaluate("window.callsgw.state.warnings")
        assert [w["participantId"] for w in warnings] == [ida]
        await bob.wait_for("window.callsgw.state.security.verdict === 'ok'", timeout=5)
        # no page rejoined: not for a silent sender, not for the listen-only one (past the negotiation bound)
        await asyncio.sleep(max(0.0, 11 - (time.monotonic() - silenced)))
        for page in (ann, bob, cy, lee):
            state = await snapshot(page)
            assert state["rejoins"] == 0 and state["net"]["sockets"] == 1 and state["stuck"] is None
        assert await ann.evaluate("window.callsgw.state.warnings.length") == 0  # Bob and Cy do reach Ann
        # Ann's audio is back: the warning goes
        await ann.evaluate(RESTORE)
        await bob.wait_for("window.callsgw.state.warnings.length === 0", timeout=6)
        await bob.wait_for("document.querySelector('#media-warning').hidden")
        # muted: no warning, even though nothing arrives
        await ann.evaluate("window.callsgw.toggleMute(true)")
        await bob.wait_for(f"window.callsgw.state.participants[{json.dumps(ida)}].muted === true", timeout=5)
        await ann.evaluate(SILENCE)
        await asyncio.sleep(6.5)
        assert await bob.evaluate("window.callsgw.state.warnings.length") == 0
        for page in (ann, bob, cy, lee):
            assert await page_problems(page) == []


async def test_security_panel_never_verifies_over_silence(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        ann, bob = await start_call(browser, app, "quiet", ["ann", "bob"])
        await bob.wait_for("window.callsgw.refreshSecurity().then(s => s.verdict === 'ok')", timeout=20)
        assert await bob.evaluate("document.querySelector('#sec-status').textContent") == "Verified"
        # the only voice Bob expects stops arriving
        await ann.evaluate(SILENCE)
        await bob.wait_for("window.callsgw.state.mediaFlow === 'silent'", timeout=12)
        await bob.wait_for("window.callsgw.state.security.verdict === 'warn'", timeout=3)
        status = await bob.evaluate("document.querySelector('#sec-status').textContent")
        assert status != "Verified" and "no audio" in status.lower(), status
        assert (await bob.evaluate("document.querySelector('#sec-pill').className")).endswith("warn")
        # back: verified again
        await ann.evaluate(RESTORE)
        await bob.wait_for("window.callsgw.state.security.verdict === 'ok'", timeout=8)
        assert await bob.evaluate("document.querySelector('#sec-status').textContent") == "Verified"

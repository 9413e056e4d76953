"""The page's own negotiation queue under injected orderings (issue #12, page side).

Real Chromium, real gateway; tests/browser/page_net.py sits between the two on
the page's WebSocket and holds, reorders, drops, garbles or injects gateway
messages, or makes the page's RTCPeerConnection fail once. After each ordering,
once traffic quiets, everything must converge (page_net.wait_converged): every
page stable with every gateway offer answered, ``state.participants`` equal to
the gateway's, receivers equal to the others' published tracks, audio flowing
from each of them, and no offer outstanding on the gateway.

Orderings that broke the page before this file (app.js of commit 81b116c):

* ``test_messages_around_the_join_answer[events_first|reversed]``:
  ``participant_joined``/``participant_left`` handled before ``joined`` were
  wiped by the participant list in ``joined``;
* ``test_messages_around_the_join_answer[offer_first|reversed]``: a gateway
  offer handled before the join answer found the join offer pending
  (``have-local-offer``), was stashed as if it crossed an own offer, and was
  never answered: the gateway held it, and every later offer, forever;
* ``test_gateway_offer_crossing_own_offer[glare_lost]``: the page waited for
  ``glare`` before answering a gateway offer that crossed its own; without it,
  both offers hung forever;
* ``test_unappliable_gateway_offer_rejoins`` and
  ``test_failed_answer_step_is_rolled_back_and_retried``: a failing
  setRemoteDescription/createAnswer/setLocalDescription was swallowed by the
  queue (a toast), the offer never answered (``have-remote-offer`` with more
  offers received than answers sent, as in the report);
* ``test_unappliable_answers[own_offer|join]``: an answer the page could not
  apply left it in ``have-local-offer`` for good.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.browser.chromium import chromium_path
from tests.browser.page_net import browser, net, open_net_page, snapshot, wait_converged, wait_held, wait_sent, web_root  # noqa: F401
from tests.browser.test_web_client import join_link, page_problems
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")

TEST_TIMEOUT = 55
GARBLED = "v=0\r\nthis is not SDP\r\n"


async def join_page(browser, app, call: str, name: str, **initial):
    page = await open_net_page(browser, **initial)
    await page.goto(join_link(app, call, name))
    return page


async def joined(page, timeout: float = 15) -> str:
    await page.wait_for("window.callsgw && window.callsgw.state.joined", timeout=timeout)
    return await page.evaluate("window.callsgw.state.participantId")


async def start_call(browser, app, call: str, names: list[str]) -> list:
    """Pages that join one after the other, then converge."""
    pages = []
    for name in names:
        page = await join_page(browser, app, call, name)
        await joined(page)
        pages.append(page)
    await wait_converged(pages, app, call, media=False)
    return pages


async def no_problems(*pages) -> None:
    for page in pages:
        assert await page_problems(page) == []


# ----------------------------------------------------------- participant events


JOIN_ORDERS = {
    # as sent, in one go: the events arrive while the queue applies the join answer
    "as_sent": "held => held",
    # the others' joins and leaves overtake `joined`
    "events_first": "held => [...held.filter(m => m.type.startsWith('participant_')),"
                    " ...held.filter(m => !m.type.startsWith('participant_'))]",
    # the gateway's first offer overtakes `joined`
    "offer_first": "held => [...held.filter(m => m.type === 'offer'), ...held.filter(m => m.type !== 'offer')]",
    "reversed": "held => held.slice().reverse()",
}


@pytest.mark.parametrize("order", list(JOIN_ORDERS))
async def test_messages_around_the_join_answer(tmp_path, browser, order):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b = await start_call(browser, app, "join-order", ["ann", "bob"])
        # Cy's page holds everything the gateway sends it: `joined` (ann, bob), its first offer ...
        c = await join_page(browser, app, "join-order", "cy", hold=["*"])
        await wait_held(c, "m => m.type === 'joined'")
        await wait_held(c, "m => m.type === 'offer'")
        # ... Dee joins (participant_joined) and Bob leaves (participant_left) meanwhile
        d = await join_page(browser, app, "join-order", "dee")
        dee = await joined(d)
        await wait_held(c, f"m => m.type === 'participant_joined' && m.participant.id === {json.dumps(dee)}")
        bob = await b.evaluate("window.callsgw.state.participantId")
        await b.evaluate("window.callsgw.leave()")
        await wait_held(c, f"m => m.type === 'participant_left' && m.participant_id === {json.dumps(bob)}")
        held = await net(c, "net.heldTypes()")
        delivered = await net(c, f"""(() => {{
            const order = ({JOIN_ORDERS[order]})(net.held.map(h => h.m));
            net.hold = null;
            const seq = order.map(m => net.held.findIndex(h => h.m === m));
            return net.release(null, seq) && net.delivered.map(d => d.type + (d.id !== null ? ':' + d.id : ''));
        }})()""")
        assert delivered, held
        await wait_converged([a, c, d], app, "join-order")
        assert await c.evaluate("window.callsgw.state.rejoins || 0") == 0
        await no_problems(a, c, d)


EVENT_ORDERS = {
    "as_sent": "held => held",
    "left_first": "held => [...held.filter(m => m.type === 'participant_left'), ...held.filter(m => m.type !== 'participant_left')]",
    "offer_first": "held => [...held.filter(m => m.type === 'offer'), ...held.filter(m => m.type !== 'offer').reverse()]",
}


@pytest.mark.parametrize("order", list(EVENT_ORDERS))
async def test_participant_events_while_an_offer_is_answered(tmp_path, browser, order):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b, c = await start_call(browser, app, "busy", ["ann", "bob", "cy"])
        await net(c, "net.hold = ['offer', 'participant_joined', 'participant_left']")
        d = await join_page(browser, app, "busy", "dee")  # Cy is offered Dee's voice
        await joined(d)
        await wait_held(c, "m => m.type === 'offer'")
        await wait_held(c, "m => m.type === 'participant_joined'")
        await b.evaluate("window.callsgw.leave()")  # the gateway's next offer to Cy waits for the answer
        await wait_held(c, "m => m.type === 'participant_left'")
        # one go: the events land while the queue sets the offer
        await net(c, f"""(() => {{
            const order = ({EVENT_ORDERS[order]})(net.held.map(h => h.m));
            net.hold = null;
            return net.release(null, order.map(m => net.held.findIndex(h => h.m === m)));
        }})()""")
        await wait_converged([a, c, d], app, "busy")
        assert await c.evaluate("window.callsgw.state.rejoins || 0") == 0
        await no_problems(a, c, d)


# ------------------------------------------------------------------------ glare

# The page (Bob) starts a screen share while the gateway's offer to it (Cy's
# voice) is held: Bob's offer crosses it, the gateway refuses Bob's offer with
# `glare`; then the held messages reach Bob in the order named.
CROSSINGS = ["offer_then_glare", "glare_then_offer", "glare_lost", "offer_after_reoffer", "own_offer_queued_first"]


@pytest.mark.parametrize("order", CROSSINGS)
async def test_gateway_offer_crossing_own_offer(tmp_path, browser, order):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b = await start_call(browser, app, "glare", ["ann", "bob"])
        await net(b, "net.hold = ['offer', 'answer', 'error']")
        c = await join_page(browser, app, "glare", "cy")
        await joined(c)
        await wait_held(b, "m => m.type === 'offer'")
        if order == "own_offer_queued_first":
            # Bob's offer is queued first, the gateway's offer comes while it is being made
            await b.evaluate("window.callsgw.renegotiate(); window.__net.release(m => m.type === 'offer'); true")
        else:
            assert await b.evaluate("window.callsgw.startScreenShare({fake: true})") is True
        await wait_sent(b, "m => m.type === 'offer'")
        await wait_held(b, "m => m.type === 'error' && m.code === 'glare'")
        is_glare = "m => m.type === 'error' && m.code === 'glare'"
        if order == "offer_then_glare":
            await net(b, "net.release(m => m.type === 'offer')")
            await asyncio.sleep(0.3)
            await net(b, f"net.release({is_glare})")
        elif order == "glare_then_offer":
            await net(b, f"net.release({is_glare})")
            await asyncio.sleep(0.3)
            await net(b, "net.release(m => m.type === 'offer')")
        elif order == "glare_lost":
            await net(b, f"net.take({is_glare}) && net.release(m => m.type === 'offer')")
        elif order == "offer_after_reoffer":
            # `glare` at once, the gateway's offer only after the page offered again (3 s) and got `glare` again
            await net(b, f"net.release({is_glare})")
            await wait_sent(b, "m => m.type === 'offer' && m.id === 2", timeout=6)
            await wait_held(b, "m => m.type === 'error' && m.code === 'glare' && m.id === 2")
            await net(b, "net.release(m => m.type === 'offer')")
        await net(b, "(net.hold = null, net.release())")
        await wait_converged([a, b, c], app, "glare")
        if order != "own_offer_queued_first":
            assert await b.evaluate("window.callsgw.state.sharing") is True
            assert await b.evaluate(
                "window.callsgw.pc.getTransceivers().some(t => t.sender.track && t.sender.track.kind === 'video'"
                " && t.currentDirection === 'sendonly')"
            )
        state = await snapshot(b)
        assert (state["rejoins"] or 0) == 0
        assert state["glareCount"] == (0 if order == "glare_lost" else 2 if order == "offer_after_reoffer" else 1)
        await no_problems(a, b, c)


# ------------------------------------------------------------- failing steps


@pytest.mark.parametrize("variant", ["injected", "gateway_offer_garbled"])
async def test_unappliable_gateway_offer_rejoins(tmp_path, browser, variant):
    """An offer setRemoteDescription refuses cannot be answered; the gateway holds it until
    it is answered, so the page rejoins (leave + join, same token)."""
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b = await start_call(browser, app, "garbled", ["ann", "bob"])
        if variant == "injected":
            await net(b, f"net.inject({{type: 'offer', id: 99, sdp: {json.dumps(GARBLED)}}})")
        else:
            await net(b, "net.hold = ['offer']")
            c = await join_page(browser, app, "garbled", "cy")
            await joined(c)
            await wait_held(b, "m => m.type === 'offer'")
            await net(b, """(() => {
                const m = net.take(m => m.type === 'offer');
                net.hold = null;
                net.inject({...m, sdp: m.sdp.slice(0, m.sdp.length >> 1) + '\\r\\nm=nonsense\\r\\n'});
                return m.id;
            })()""")
        await b.wait_for("window.callsgw.state.rejoins === 1", timeout=10)
        pages = [a, b] if variant == "injected" else [a, b, c]
        await wait_converged(pages, app, "garbled")
        state = await snapshot(b)
        assert state["recovery"]["status"] == "rejoined"
        assert "could not be answered" in state["recovery"]["reason"]
        assert state["net"]["sockets"] == 2  # one rejoin: leave, then join on a new connection
        await no_problems(*pages)


@pytest.mark.parametrize("fault", ["createAnswer", "setLocalAnswer", "setRemoteOffer"])
async def test_failed_answer_step_is_rolled_back_and_retried(tmp_path, browser, fault):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b = await start_call(browser, app, "retry", ["ann", "bob"])
        await net(b, f"net.faults.{fault} = 1")
        c = await join_page(browser, app, "retry", "cy")  # the gateway offers Bob Cy's voice
        await joined(c)
        await b.wait_for(f"window.__net.faulted.includes({json.dumps(fault)})", timeout=10)
        await wait_converged([a, b, c], app, "retry")
        state = await snapshot(b)
        assert state["net"]["sockets"] == 1  # one retry sufficed: no rejoin
        await no_problems(a, b, c)


async def test_failed_answer_step_twice_rejoins(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b = await start_call(browser, app, "retry2", ["ann", "bob"])
        await net(b, "net.faults.createAnswer = 2")
        c = await join_page(browser, app, "retry2", "cy")
        await joined(c)
        await b.wait_for("window.callsgw.state.rejoins === 1", timeout=10)
        await wait_converged([a, b, c], app, "retry2")
        await no_problems(a, b, c)


@pytest.mark.parametrize("which", ["own_offer", "join"])
async def test_unappliable_answers(tmp_path, browser, which):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        if which == "join":
            a = await join_page(browser, app, "bad-answer", "ann")
            await joined(a)
            # the gateway's answer to Bob's join is garbled on Bob's first connection
            b = await join_page(browser, app, "bad-answer", "bob", hold=["joined"], holdSocket=1)
            await wait_held(b, "m => m.type === 'joined'")
            await net(b, f"(net.hold = null, net.inject({{...net.take(m => m.type === 'joined'), sdp: {json.dumps(GARBLED)}}}))")
            await b.wait_for("window.callsgw.state.rejoins === 1", timeout=10)
        else:
            a, b = await start_call(browser, app, "bad-answer", ["ann", "bob"])
            await net(b, "net.hold = ['answer']")
            await b.evaluate("window.callsgw.renegotiate()")
            await wait_held(b, "m => m.type === 'answer'")
            await net(b, f"(net.hold = null, net.inject({{...net.take(m => m.type === 'answer'), sdp: {json.dumps(GARBLED)}}}))")
            # rolled back and offered again; the gateway's second answer applies
            await wait_sent(b, "m => m.type === 'offer' && m.id === 2")
        await wait_converged([a, b], app, "bad-answer")
        state = await snapshot(b)
        assert state["net"]["sockets"] == (2 if which == "join" else 1)
        await no_problems(a, b)


async def test_answers_for_stale_ids_are_ignored(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a, b = await start_call(browser, app, "stale", ["ann", "bob"])
        # nothing outstanding: an answer out of nowhere
        await net(b, f"net.inject({{type: 'answer', id: 7, sdp: {json.dumps(GARBLED)}}})")
        # own offer 1 outstanding: an answer for another id first, then the real one, then the real one again
        await net(b, "net.hold = ['answer']")
        await b.evaluate("window.callsgw.renegotiate()")
        await wait_held(b, "m => m.type === 'answer' && m.id === 1")
        await net(b, f"""(() => {{
            const real = net.take(m => m.type === 'answer');
            net.hold = null;
            net.inject({{type: 'answer', id: 0, sdp: real.sdp}});
            net.inject({{type: 'answer', id: 2, sdp: {json.dumps(GARBLED)}}});
            net.inject(real);
            net.inject(real);
            return true;
        }})()""")
        await wait_converged([a, b], app, "stale")
        state = await snapshot(b)
        # none of them was applied or answered with another offer; no rejoin
        assert state["offersSent"] == 1 and state["net"]["sockets"] == 1
        assert state["lastError"] is None
        await no_problems(a, b)

"""The web client (callsgw/web/) in a real headless Chromium against a real gateway.

Each test starts a gateway (tests/signaling/gateway.py) and one Chromium,
opens the page the gateway serves and drives it through the DOM and
`window.callsgw`. Media forwarding is not asserted here (remote media need
not flow): these tests cover the page, its signaling and its security panel.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest

from callsgw.signaling import tokens
from tests.browser.chromium import Chromium, Page, chromium_path
from tests.signaling.gateway import running_gateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")

MANDATED_DTLS = {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"}
SCREENSHOT = Path("/tmp/callsgw-web.png")
TEST_TIMEOUT = 30

# Installed before any page script runs: records CSP violations, uncaught
# errors, unhandled rejections and console.error calls in the page itself.
PROBE = """
window.__problems = [];
document.addEventListener('securitypolicyviolation', (e) =>
  window.__problems.push('csp: ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline')));
window.addEventListener('error', (e) =>
  window.__problems.push('error: ' + (e.message || (e.target && (e.target.src || e.target.href)) || 'resource')), true);
window.addEventListener('unhandledrejection', (e) =>
  window.__problems.push('unhandled rejection: ' + (e.reason && e.reason.message || e.reason)));
// A join link waits for one click (the page never joins by itself). Tests that are not about
// that click make it as soon as the page is ready; a test sets window.__manualJoin to make it itself.
(() => {
  const timer = setInterval(() => {
    if (document.documentElement && document.documentElement.dataset.linkJoin === 'ready') {
      clearInterval(timer);
      if (!window.__manualJoin) document.getElementById('join-btn').click();
    }
  }, 20);
  setTimeout(() => clearInterval(timer), 20000);
})();
(() => {
  const orig = console.error;
  console.error = function (...args) { window.__problems.push('console.error: ' + args.join(' ')); return orig.apply(this, args); };
})();
"""


class RecordingPage(Page):
    """A Page that also keeps every DevTools event (log entries, exceptions)."""

    events: list[dict]

    async def call(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        msg_id = next(self._ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        async with asyncio.timeout(timeout):
            while True:
                msg = json.loads(await self.ws.recv())
                if "method" in msg:
                    self.events.append(msg)
                    if msg["method"] == "Runtime.consoleAPICalled":
                        self.console.append(
                            " ".join(str(a.get("value", a.get("description", ""))) for a in msg["params"]["args"])
                        )
                if msg.get("id") == msg_id:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg["result"]

    def problems(self) -> list[str]:
        """Errors Chromium reported: console errors, log errors (CSP, failed loads), exceptions."""
        out = []
        for e in self.events:
            method, params = e["method"], e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:300])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console: " + json.dumps(params.get("args", []))[:300])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        return out


async def open_page(browser: Chromium, width: int = 1280, height: int = 800, *,
                    new_window: bool = False) -> RecordingPage:
    page = await browser.new_page(new_window=new_window)
    page.__class__ = RecordingPage
    page.events = []
    await page.call("Log.enable")
    await page.call("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
    await page.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    return page


async def page_problems(page: RecordingPage) -> list[str]:
    in_page = await page.evaluate("window.__problems || []")
    return list(in_page) + page.problems()


def base_url(app) -> str:
    return f"https://127.0.0.1:{app.port}/"


def join_link(app, call: str, name: str, **mint) -> str:
    from urllib.parse import urlencode

    token = tokens.mint(app.datadir.api_secret(), call=call, name=name, **mint)
    return base_url(app) + "#" + urlencode({"call": call, "name": name, "token": token})


async def screenshot(page: Page, path: Path) -> None:
    shot = await page.call("Page.captureScreenshot", {"format": "png"})
    path.write_bytes(base64.b64decode(shot["data"]))


def hold_next_gateway_offer(ms: int) -> str:
    """JS: the page's network delays the gateway's next `offer`, and every
    message after it (order kept), by `ms`: the gateway's offer and the
    page's own offer cross, as on a slow link."""
    return """(() => {
      const ws = window.callsgw.ws, deliver = ws.onmessage, held = [];
      window.__held = 0;
      ws.onmessage = (ev) => {
        const m = JSON.parse(ev.data);
        if (held.length || (m.type === 'offer' && !window.__held)) {
          if (!held.length) {
            window.__held = 1;
            setTimeout(() => { for (const e of held.splice(0)) deliver.call(ws, e); }, %d);
          }
          held.push(ev);
        } else deliver.call(ws, ev);
      };
    })()""" % ms


async def settled(page: Page) -> None:
    await page.wait_for(
        "window.callsgw.pc.signalingState === 'stable' && window.callsgw.state.answersSent >= 1", timeout=10
    )


async def wait_joined(page: Page, timeout: float = 15) -> None:
    await page.wait_for("window.callsgw && window.callsgw.state.joined", timeout=timeout)


async def others(page: Page) -> dict:
    return await page.evaluate("JSON.parse(JSON.stringify(window.callsgw.state.participants))")


def quit_browser(browser: Chromium) -> None:
    """Stop Chromium while the gateway still runs: an idle connection that
    Chromium keeps open (e.g. a preconnect) would make the gateway's
    shutdown wait for its close timeout."""
    browser.close()


# --------------------------------------------------------------------------- tests


async def test_page_loads_without_errors_or_csp_violations(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path, demo=True) as app:
        page = await open_page(browser)
        await page.goto(base_url(app) + "?demo=1")
        # the page's own script and stylesheet ran (no inline code is needed)
        await page.wait_for("typeof window.callsgw === 'object' && !!document.querySelector('#join-form')")
        assert await page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgba(0, 0, 0, 0)"
        assert await page.evaluate("document.querySelector('#call-view').hidden") is True
        # demo mode prefills a call and a name
        call = await page.evaluate("document.querySelector('#f-call').value")
        assert call.startswith("demo-")
        assert await page.evaluate("document.querySelector('#f-name').value")
        # nothing is loaded from elsewhere
        external = await page.evaluate(
            "performance.getEntriesByType('resource').map(r => r.name).filter(u => !u.startsWith(location.origin))"
        )
        assert external == []
        await asyncio.sleep(0.5)  # let late reports (favicon, CSP) arrive
        assert await page_problems(page) == []
        # the HTTP response carries the CSP the page was written for
        csp = await page.evaluate(
            "fetch('/', {cache: 'no-store'}).then(r => r.headers.get('content-security-policy'))"
        )
        assert "default-src 'self'" in csp
        quit_browser(browser)


async def test_join_link_joins_and_security_panel_matches_gateway(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        page = await open_page(browser)
        await page.goto(join_link(app, "link-call", "Alice"))
        await wait_joined(page)
        # the token left the address bar
        assert "token=" not in await page.evaluate("location.href")
        state = await page.evaluate("JSON.parse(JSON.stringify(window.callsgw.state))")
        assert state["call"] == "link-call" and state["name"] == "Alice"
        assert state["listenOnly"] is False  # the fake microphone is published
        senders = await page.evaluate(
            "window.callsgw.pc.getSenders().filter(s => s.track && s.track.kind === 'audio').length"
        )
        assert senders == 1
        assert await page.evaluate("document.querySelector('#call-view').hidden") is False

        # everything the panel needs: browser stats and the gateway's `connection` report
        sec = await page.wait_for(
            "window.callsgw.refreshSecurity().then(s => (s.browser && s.browser.dtlsCipher && s.gateway"
            " && s.browser.remoteCertificate) ? JSON.parse(JSON.stringify(s)) : null)",
            timeout=20,
        )
        signaling, b, gw = sec["signaling"], sec["browser"], sec["gateway"]
        assert signaling["version"] == "TLSv1.3"
        assert signaling["cipher"] == "TLS_AES_256_GCM_SHA384"
        assert signaling["subprotocol"] == "callsgw.v1"
        assert b["tlsVersion"] == "FEFD" and b["dtlsVersion"] == "DTLS 1.2"
        assert b["dtlsCipher"] in MANDATED_DTLS
        assert b["srtpProfile"] == "AEAD_AES_128_GCM"
        assert b["srtpCipher"].removeprefix("SRTP_") == "AEAD_AES_128_GCM"
        assert b["dtlsRole"] == "client"
        assert b["localCertificate"]["algorithm"] == "sha-256"
        # ... and they match what the gateway negotiated
        assert gw["srtp_profile"] == "AEAD_AES_128_GCM"
        assert gw["dtls"]["cipher_suite"] == b["dtlsCipher"]
        assert gw["dtls"]["fingerprint_matched"] is True
        assert gw["dtls"]["remote_fingerprint"].upper() == b["localCertificate"]["fingerprint"].upper()
        assert gw["dtls"]["local_fingerprint"].upper() == b["remoteCertificate"]["fingerprint"].upper()
        assert all(v is True for k, v in sec["checks"].items()), sec["checks"]
        assert sec["verdict"] == "ok"

        # the panel shows those values, marked as allowed (green)
        await page.wait_for("document.querySelector('#sec-status').textContent === 'Verified'", timeout=5)
        panel = await page.evaluate(
            "[...document.querySelectorAll('#security-panel dd')].map(d => [d.textContent, d.dataset.check])"
        )
        shown = {text: check for text, check in panel}
        assert shown["TLSv1.3"] == "true" and shown["TLS_AES_256_GCM_SHA384"] == "true"
        assert shown["DTLS 1.2"] == "true"
        assert shown[b["dtlsCipher"]] == "true"
        assert shown["AEAD_AES_128_GCM"] == "true"
        assert any(b["localCertificate"]["fingerprint"] in text for text in shown)
        green = await page.evaluate(
            "getComputedStyle([...document.querySelectorAll('#sec-browser dd')]"
            ".find(d => d.textContent === 'AEAD_AES_128_GCM')).color"
        )
        r, g, _b = (int(x) for x in green[green.index("(") + 1 : green.index(")")].split(",")[:3])
        assert g > 150 and g > r + 50  # green
        assert await page_problems(page) == []
        quit_browser(browser)


async def test_demo_two_tabs_mute_screen_share_and_leave(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path, demo=True) as app:
        a = await open_page(browser)
        b = await open_page(browser)
        # both tabs of this browser get the same demo call; each joins by clicking
        for page in (a, b):
            await page.goto(base_url(app) + "?demo=1")
            await page.wait_for("!!window.callsgw")
            await page.evaluate("document.querySelector('#join-btn').click()")
        await wait_joined(a)
        await wait_joined(b)
        ida = await a.evaluate("window.callsgw.state.participantId")
        idb = await b.evaluate("window.callsgw.state.participantId")
        assert await a.evaluate("window.callsgw.state.call") == await b.evaluate("window.callsgw.state.call")
        await a.wait_for(f"!!window.callsgw.state.participants[{json.dumps(idb)}]")
        await b.wait_for(f"!!window.callsgw.state.participants[{json.dumps(ida)}]")
        # ... and shows it in the list (the other person and you)
        name_a = await a.evaluate("window.callsgw.state.name")
        await b.wait_for(
            f"[...document.querySelectorAll('#people .person-name')].some(n => n.textContent === {json.dumps(name_a)})"
        )
        assert await b.evaluate("document.querySelectorAll('#people .person').length") == 2
        # one <audio autoplay> per remote voice track, on both sides
        for page in (a, b):
            await page.wait_for("document.querySelectorAll('#audio-sink audio').length === 1", timeout=10)
            assert await page.evaluate("document.querySelector('#audio-sink audio').autoplay") is True

        # mute in A shows in B's list
        await a.evaluate("document.querySelector('#mute-btn').click()")
        assert await a.evaluate("window.callsgw.state.muted") is True
        assert await a.evaluate("window.callsgw.pc.getSenders().find(s => s.track && s.track.kind === 'audio').track.enabled") is False
        await b.wait_for(f"window.callsgw.state.participants[{json.dumps(ida)}].muted === true", timeout=5)
        await b.wait_for(f"document.querySelector('#people [data-participant={json.dumps(ida)}]').dataset.muted === 'true'")
        await a.evaluate("window.callsgw.toggleMute()")
        await b.wait_for(f"window.callsgw.state.participants[{json.dumps(ida)}].muted === false", timeout=5)

        # screen share from A (canvas source): B hears of it and is offered a video section
        offers_before = await b.evaluate("window.callsgw.state.offersReceived")
        assert await a.evaluate("window.callsgw.startScreenShare({fake: true})") is True
        await b.wait_for(f"window.callsgw.state.participants[{json.dumps(ida)}].sharing === true", timeout=5)
        await b.wait_for(f"window.callsgw.state.screenSharer === {json.dumps(ida)}")
        await b.wait_for(
            "window.callsgw.pc.getTransceivers().some(t => t.receiver.track.kind === 'video'"
            " && t.currentDirection === 'recvonly')",
            timeout=10,
        )
        assert await b.evaluate("window.callsgw.state.offersReceived") > offers_before
        assert "m=video" in await b.evaluate("window.callsgw.pc.remoteDescription.sdp")
        await b.wait_for("!document.querySelector('#screen-stage').hidden")
        # A's own offer published the video: sendonly, negotiated
        await a.wait_for(
            "window.callsgw.pc.getTransceivers().some(t => t.sender.track && t.sender.track.kind === 'video'"
            " && t.currentDirection === 'sendonly')",
            timeout=10,
        )
        # a second sharer is refused while A shares
        assert await b.evaluate("window.callsgw.startScreenShare({fake: true})") is False
        assert await b.evaluate("window.callsgw.state.sharing") is False

        await asyncio.sleep(2.5)  # one refresh of the security panel, for the screenshot
        await screenshot(a, SCREENSHOT)
        await screenshot(b, SCREENSHOT.with_name("callsgw-web-viewer.png"))

        # stop sharing; the section is kept (inactive) and reused when sharing again
        await a.evaluate("window.callsgw.stopScreenShare()")
        await b.wait_for(f"window.callsgw.state.participants[{json.dumps(ida)}].sharing === false", timeout=5)
        await b.wait_for("document.querySelector('#screen-stage').hidden", timeout=5)
        await a.wait_for(
            "window.callsgw.pc.signalingState === 'stable' && window.callsgw.pc.getTransceivers()"
            ".some(t => t.sender.track === null && t.receiver.track.kind === 'video' && t.currentDirection === 'inactive')",
            timeout=10,
        )
        video_sections = "window.callsgw.pc.localDescription.sdp.split('m=video').length - 1"
        before = await a.evaluate(video_sections)
        assert await a.evaluate("window.callsgw.startScreenShare({fake: true})") is True
        await b.wait_for(f"window.callsgw.state.participants[{json.dumps(ida)}].sharing === true", timeout=5)
        await a.wait_for(
            "window.callsgw.pc.signalingState === 'stable' && window.callsgw.pc.getTransceivers()"
            ".some(t => t.sender.track && t.sender.track.kind === 'video' && t.currentDirection === 'sendonly')",
            timeout=10,
        )
        assert await a.evaluate(video_sections) == before
        # B is offered A's screen again and takes it
        await b.wait_for(
            "window.callsgw.pc.signalingState === 'stable' && window.callsgw.pc.getTransceivers()"
            ".some(t => t.receiver.track.kind === 'video' && t.currentDirection === 'recvonly')",
            timeout=10,
        )
        await b.wait_for("!document.querySelector('#screen-stage').hidden")

        # A leaves: B's list updates, A is back at the form
        await a.evaluate("document.querySelector('#leave-btn').click()")
        await a.wait_for("!document.querySelector('#join-view').hidden && window.callsgw.pc === null")
        await b.wait_for(f"!window.callsgw.state.participants[{json.dumps(ida)}]", timeout=5)
        await b.wait_for("document.querySelectorAll('#people .person').length === 1")
        await b.wait_for("document.querySelector('#screen-stage').hidden")
        # the gateway stopped A's sections in B's connection: A's audio element is gone
        await b.wait_for("document.querySelectorAll('#audio-sink audio').length === 0", timeout=10)
        await a.wait_for("window.callsgw.state.closeCode === 1000", timeout=5)
        assert await a.evaluate("document.querySelector('#join-notice-title').textContent") == "You left the call"
        for page in (a, b):
            assert await page_problems(page) == []
        quit_browser(browser)


async def test_glare_polite_side_rolls_back_answers_and_reoffers(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a = await open_page(browser)
        b = await open_page(browser)
        await a.goto(join_link(app, "glare", "Ann"))
        await wait_joined(a)
        await b.goto(join_link(app, "glare", "Bob"))
        await wait_joined(b)
        await a.wait_for("Object.keys(window.callsgw.state.participants).length === 1")
        # let the join renegotiations settle
        for page in (a, b):
            await settled(page)
        await asyncio.sleep(0.5)
        # B's network holds the gateway's next offer (and everything after it) for a second
        await b.evaluate(hold_next_gateway_offer(1000))
        glare_before = await b.evaluate("window.callsgw.state.glareCount")
        # A publishes its screen: the gateway offers B a video section ...
        assert await a.evaluate("window.callsgw.startScreenShare({fake: true})") is True
        await b.wait_for("window.__held === 1", timeout=10)
        # ... while B sends an offer of its own: glare
        await b.evaluate("window.callsgw.renegotiate()")
        await b.wait_for(f"window.callsgw.state.glareCount > {glare_before}", timeout=10)
        # B rolled back, answered the gateway, offered again and got its answer
        await b.wait_for(
            "window.callsgw.pc.signalingState === 'stable' && window.callsgw.pc.getTransceivers()"
            ".some(t => t.receiver.track.kind === 'video' && t.currentDirection === 'recvonly')",
            timeout=10,
        )
        await b.wait_for("window.callsgw.state.offersSent >= 2", timeout=5)
        last_error = await b.evaluate("window.callsgw.state.lastError")
        assert last_error["code"] == "glare"
        await asyncio.sleep(0.5)
        # the session went on: still joined, no further errors
        assert await b.evaluate("window.callsgw.state.joined") is True
        assert await b.evaluate("window.callsgw.state.lastError.code") == "glare"
        for page in (a, b):
            assert await page_problems(page) == []
        quit_browser(browser)


async def test_bad_token_shows_invalid_token_message(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        page = await open_page(browser)
        await page.goto(base_url(app) + "?call=c1&name=Mallory&token=not.a-valid.token")
        await page.wait_for("window.callsgw.state.closeCode === 4001", timeout=10)
        await page.wait_for("!document.querySelector('#join-notice').hidden")
        title = await page.evaluate("document.querySelector('#join-notice-title').textContent")
        assert "Invalid token" in title and "4001" in title
        assert await page.evaluate("document.querySelector('#join-view').hidden") is False
        assert await page.evaluate("window.callsgw.state.joined") is False
        assert await page.evaluate("window.callsgw.pc") is None
        quit_browser(browser)


async def test_expired_token_and_missing_demo_mode_are_explained(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        page = await open_page(browser)
        await page.goto(base_url(app))
        # this gateway is not in demo mode: /demo/token is 404
        await page.evaluate("document.querySelector('#demo-btn').click()")
        await page.wait_for("!document.querySelector('#join-notice').hidden", timeout=5)
        notice = await page.evaluate("document.querySelector('#join-notice').textContent")
        assert "not running in demo mode" in notice
        # an expired token closes with 4002 and says so
        token = tokens.mint(app.datadir.api_secret(), call="c2", name="Old", ttl=1, now=time.time() - 100)
        await page.evaluate(f"window.callsgw.join({{call: 'c2', name: 'Old', token: {json.dumps(token)}}}).catch(e => e.message)")
        await page.wait_for("window.callsgw.state.closeCode === 4002", timeout=10)
        title = await page.evaluate("document.querySelector('#join-notice-title').textContent")
        assert "expired" in title.lower() and "4002" in title
        quit_browser(browser)


async def test_listen_only_token_joins_without_microphone(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        page = await open_page(browser)
        await page.goto(join_link(app, "listen", "Lee", perms=["publish_screen"]))
        await wait_joined(page)
        assert await page.evaluate("window.callsgw.state.listenOnly") is True
        assert await page.evaluate("window.callsgw.pc.getSenders().filter(s => s.track).length") == 0
        assert await page.evaluate("document.querySelector('#mute-btn').disabled") is True
        assert "listen-only" in await page.evaluate("document.querySelector('#banner-text').textContent")
        await page.wait_for("window.callsgw.pc.connectionState === 'connected'", timeout=15)
        assert await page_problems(page) == []
        quit_browser(browser)


async def test_gateway_shutdown_says_bye_and_closes_1001(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path, shutdown_grace=1.0) as app:
        page = await open_page(browser)
        await page.goto(join_link(app, "closing", "Sam"))
        await wait_joined(page)
        stopping = asyncio.create_task(app.stop())
        await page.wait_for("window.callsgw.state.bye === 'shutdown'", timeout=5)
        await page.wait_for("window.callsgw.state.closeCode === 1001", timeout=10)
        title = await page.evaluate("document.querySelector('#join-notice-title').textContent")
        assert "shutting down" in title and "1001" in title
        assert await page.evaluate("document.querySelector('#join-view').hidden") is False
        quit_browser(browser)
        await stopping


async def test_glare_during_screen_share_start_keeps_the_new_track(tmp_path, browser):
    async with asyncio.timeout(TEST_TIMEOUT), running_gateway(tmp_path) as app:
        a = await open_page(browser)
        b = await open_page(browser)
        c = await open_page(browser)
        await a.goto(join_link(app, "glare2", "Ann"))
        await wait_joined(a)
        await b.goto(join_link(app, "glare2", "Bob"))
        await wait_joined(b)
        await settled(a)
        await settled(b)
        await asyncio.sleep(0.3)
        # B's link holds the gateway's next offer for 3.5 s (longer than the
        # page waits for the gateway to confirm `screen`)
        await b.evaluate(hold_next_gateway_offer(3500))
        await c.goto(join_link(app, "glare2", "Cy"))  # the gateway offers B Cy's voice ...
        await wait_joined(c)
        await b.wait_for("window.__held === 1", timeout=10)
        # ... while B starts sharing: B's offer adds a new sendonly video transceiver
        assert await b.evaluate("window.callsgw.startScreenShare({fake: true})") is True
        await b.wait_for("window.callsgw.state.glareCount === 1", timeout=10)
        # rolled back, answered the gateway (Cy's voice), offered the screen again
        await b.wait_for(
            "window.callsgw.pc.signalingState === 'stable' && window.callsgw.pc.getTransceivers()"
            ".some(t => t.sender.track && t.sender.track.kind === 'video' && t.currentDirection === 'sendonly')",
            timeout=10,
        )
        assert await b.evaluate(
            "window.callsgw.pc.getTransceivers().filter(t => t.receiver.track.kind === 'audio'"
            " && t.currentDirection === 'recvonly').length"
        ) == 2
        # the others get the screen
        for page in (a, c):
            await page.wait_for(
                "window.callsgw.pc.getTransceivers().some(t => t.receiver.track.kind === 'video'"
                " && t.currentDirection === 'recvonly')",
                timeout=10,
            )
        for page in (a, b, c):
            assert await page_problems(page) == []
        quit_browser(browser)

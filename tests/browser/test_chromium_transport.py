"""A real headless Chromium completes ICE + DTLS + SRTP with the gateway.

The test serves its own small page and a test-only SDP exchange endpoint
(the real signaling comes with `callsgw serve`), drives Chromium over the
DevTools protocol, and checks both sides: Chromium's getStats() transport
entry and the gateway's security record.
"""

from __future__ import annotations

import asyncio

import pytest

from callsgw.dtls.profiles import MANDATED_CIPHERS, iana_cipher_name
from tests.browser.chromium import Chromium, chromium_path
from tests.gateway_harness import TestGateway

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (scripts/test.sh installs it)")

PAGE = b"""<!doctype html><meta charset="utf-8"><title>callsgw transport test</title>
<script>
window.run = async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  window.pc = pc;
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  await pc.setLocalDescription(await pc.createOffer());
  const res = await fetch('/offer', {method: 'POST', body: pc.localDescription.sdp});
  if (!res.ok) throw new Error('offer refused: ' + await res.text());
  await pc.setRemoteDescription({type: 'answer', sdp: await res.text()});
  return true;
};
window.transportStats = async () => {
  const stats = await window.pc.getStats();
  const out = {};
  for (const r of stats.values()) {
    if (r.type === 'transport') out.transport = r;
    if (r.type === 'outbound-rtp') out.outbound = r;
  }
  return out;
};
</script>"""


async def serve_page(gw: TestGateway) -> asyncio.AbstractServer:
    """A minimal HTTP/1.1 server: GET / (the page), POST /offer (SDP in, answer out)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *headers = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            length = 0
            for h in headers:
                if h.lower().startswith("content-length:"):
                    length = int(h.split(":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            if method == "GET" and path == "/":
                status, ctype, out = "200 OK", "text/html", PAGE
            elif method == "POST" and path == "/offer":
                status, ctype, out = "200 OK", "application/sdp", gw.answer(body.decode()).encode()
            else:
                status, ctype, out = "404 Not Found", "text/plain", b"not found"
        except Exception as exc:  # report to the page, never kill the server
            status, ctype, out = "400 Bad Request", "text/plain", str(exc).encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(out)}\r\nConnection: close\r\n\r\n".encode()
            + out
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_chromium_negotiates_mandated_suite_and_aead_gcm():
    gw = await TestGateway().start()
    http = await serve_page(gw)
    port = http.sockets[0].getsockname()[1]
    browser = Chromium()
    try:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.evaluate("window.run()")
        await page.wait_for("window.pc.connectionState === 'connected'", timeout=30)
        stats = await page.wait_for(
            "window.transportStats().then(s => s.outbound && s.outbound.packetsSent > 20 ? s : null)", timeout=20
        )
        transport_stats = stats["transport"]
        allowed = {iana_cipher_name(c) for c in MANDATED_CIPHERS}
        assert transport_stats["dtlsCipher"] in allowed
        # Chromium 156 reports the DTLS-SRTP profile name, "SRTP_AEAD_AES_128_GCM"
        assert transport_stats["srtpCipher"].removeprefix("SRTP_") == "AEAD_AES_128_GCM"
        assert transport_stats["tlsVersion"] == "FEFD"  # DTLS 1.2
        assert transport_stats["dtlsRole"] == "client"
        (transport,) = gw.transports
        async with asyncio.timeout(10):
            while gw.received_rtp(transport) < 20:
                await asyncio.sleep(0.1)
        record = transport.record
        assert record.dtls.cipher_suite == transport_stats["dtlsCipher"]
        assert record.srtp_profile == "AEAD_AES_128_GCM"
        assert record.dtls.fingerprint_matched
        assert transport.counters.srtp_errors == {}
        await page.close()
    finally:
        browser.close()
        http.close()
        gw.close()

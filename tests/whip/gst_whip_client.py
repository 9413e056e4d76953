#!/usr/bin/python3
"""A WHIP/WHEP client on GStreamer's webrtcbin, run as a subprocess by tests/whip/test_whip_gstreamer.py.

Debian's GStreamer 1.22 has webrtcbin but not gst-plugins-rs' whipsink/
whipclientsink, so this script does the RFC 9725 HTTP exchange itself:
build the pipeline, let webrtcbin make the offer, wait for ICE gathering to
complete (no trickle), POST the offer with the bearer token, apply the
201's answer, run, then DELETE the resource. It runs under Debian's
/usr/bin/python3 (python3-gi, python3-gst-1.0), not the project's venv.

    gst_whip_client.py whip URL TOKEN SECONDS [--video]   # publish Opus (and VP8) test sources
    gst_whip_client.py whep URL TOKEN SECONDS             # receive one audio slot, count the buffers

One JSON line on stdout: the HTTP status, the Location, what was sent or
received, webrtcbin's ICE/DTLS states, and what its DTLS and SRTP elements
negotiated (from their properties and the dtls debug log on stderr).
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import urllib.error
import urllib.request
from urllib.parse import urljoin

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

PUBLISH = (
    "webrtcbin name=w bundle-policy=max-bundle "
    "audiotestsrc is-live=true wave=sine freq=440 volume=0.5 ! audioconvert ! audioresample ! "
    "opusenc ! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! "
    "identity name=audio_out ! w. "
)
VIDEO = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 ! "
    "vp8enc deadline=1 keyframe-max-dist=15 ! rtpvp8pay pt=96 ! "
    "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! identity name=video_out ! w. "
)


def http(method: str, url: str, token: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test gateway's certificate is self-signed
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/sdp"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


class Client:
    def __init__(self, mode: str, url: str, token: str, seconds: float, video: bool):
        self.mode, self.url, self.token, self.seconds = mode, url, token, seconds
        self.loop = GLib.MainLoop()
        self.result: dict = {"mode": mode, "sent": {}, "received": {}}
        self.counts = {"audio_out": 0, "video_out": 0, "audio_in": 0}
        self.lock = threading.Lock()
        if mode == "whip":
            self.pipe = Gst.parse_launch(PUBLISH + (VIDEO if video else ""))
            self.webrtc = self.pipe.get_by_name("w")
            for name in ("audio_out", "video_out"):
                element = self.pipe.get_by_name(name)
                if element is not None:
                    element.connect("handoff", self._count, name)
            for transceiver in self._transceivers():
                transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        else:
            self.pipe = Gst.Pipeline.new("whep")
            self.webrtc = Gst.ElementFactory.make("webrtcbin", "w")
            self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
            self.pipe.add(self.webrtc)
            caps = Gst.Caps.from_string("application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000")
            self.webrtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, caps)
            self.webrtc.connect("pad-added", self._on_pad)
        self._loopback_only()
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        self.pipe.get_bus().add_signal_watch()
        self.pipe.get_bus().connect("message::error", self._on_error)
        self.offer_sent = False

    def _loopback_only(self) -> None:
        """libnice leaves loopback out of its host candidates; the tests run where only lo is up."""
        # keep the wrappers: PyGObject would otherwise drop a reference webrtcbin still needs
        self._ice = self.webrtc.get_property("ice-agent")
        self._agent = self._ice.get_property("agent")
        address = Nice.Address.new()
        address.set_from_string("127.0.0.1")
        self._agent.add_local_address(address)

    def _transceivers(self):
        out, n = [], 0
        while (t := self.webrtc.emit("get-transceiver", n)) is not None:
            out.append(t)
            n += 1
        return out

    def _count(self, element, buffer, name):
        with self.lock:
            self.counts[name] += 1

    def _on_pad(self, webrtc, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("signal-handoffs", True)
        sink.set_property("sync", False)
        sink.connect("handoff", lambda s, b, p: self._count(s, b, "audio_in"))
        self.pipe.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    def _on_error(self, bus, message):
        err, debug = message.parse_error()
        self.result["error"] = f"{err.message} ({debug})"
        self.loop.quit()

    def _on_negotiation_needed(self, webrtc):
        promise = Gst.Promise.new_with_change_func(self._on_offer, None)
        webrtc.emit("create-offer", None, promise)

    def _on_offer(self, promise, _):
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None and reply.has_field("offer") else None
        if offer is None:
            self.result["error"] = f"webrtcbin made no offer: {reply.to_string() if reply else None}"
            GLib.idle_add(self.loop.quit)
            return
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def _on_gathering(self, webrtc, _pspec):
        if webrtc.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self.offer_sent:
            self.offer_sent = True
            GLib.idle_add(self._post)

    def _post(self):
        sdp = self.webrtc.get_property("local-description").sdp.as_text()
        self.result["offer"] = sdp
        self.result["offer_candidates"] = sum(1 for line in sdp.splitlines() if line.startswith("a=candidate"))
        status, headers, body = http("POST", self.url, self.token, sdp.encode())
        self.result["status"] = status
        if status != 201:
            self.result["body"] = body.decode(errors="replace")
            self.loop.quit()
            return False
        self.result["location"] = headers.get("location")
        self.result["etag"] = headers.get("etag")
        self.result["answer"] = body.decode()
        _, message = GstSdp.SDPMessage.new_from_text(body.decode())
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        GLib.timeout_add(int(self.seconds * 1000), self._finish)
        return False

    def _finish(self):
        self.result["ice_connection_state"] = self.webrtc.get_property("ice-connection-state").value_nick
        self.result["connection_state"] = self.webrtc.get_property("connection-state").value_nick
        self.result["dtls"] = self._dtls_facts()
        with self.lock:
            self.result["sent"] = {"audio": self.counts["audio_out"], "video": self.counts["video_out"]}
            self.result["received"] = {"audio": self.counts["audio_in"]}
        location = self.result.get("location")
        if location:
            status, _, _ = http("DELETE", urljoin(self.url, location), self.token)
            self.result["delete_status"] = status
        self.loop.quit()
        return False

    def _dtls_facts(self) -> dict:
        """What webrtcbin's DTLS elements say about the handshake (GStreamer 1.22 exposes no cipher suite)."""
        facts = {}
        iterator = self.webrtc.iterate_recurse()
        while True:
            ok, element = iterator.next()
            if ok != Gst.IteratorResult.OK:
                break
            factory = element.get_factory()
            name = factory.get_name() if factory else ""
            if name in ("dtlsenc", "dtlsdec", "dtlssrtpenc", "dtlssrtpdec"):
                props = {p.name for p in element.list_properties()}
                if "connection-state" in props:
                    facts[f"{name}.connection_state"] = element.get_property("connection-state").value_nick
                if name == "dtlsenc" and "is-client" in props:
                    facts["dtlsenc.is_client"] = element.get_property("is-client")
                for prop in ("srtp-cipher", "srtp-auth", "srtcp-cipher", "srtcp-auth"):
                    if prop in props:
                        value = element.get_property(prop)
                        facts[f"{name}.{prop}"] = getattr(value, "value_nick", value)
        return facts

    def run(self) -> dict:
        self.pipe.set_state(Gst.State.PLAYING)
        GLib.timeout_add(int((self.seconds + 20) * 1000), self._timeout)
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        return self.result

    def _timeout(self):
        self.result.setdefault("error", "timed out")
        self.loop.quit()
        return False


def main(argv: list[str]) -> int:
    Gst.init(None)
    mode, url, token, seconds = argv[1], argv[2], argv[3], float(argv[4])
    result = Client(mode, url, token, seconds, "--video" in argv).run()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""GStreamer's webrtcbin as a second independent WebRTC stack, through WHIP and WHEP (#23 deliverable 4).

Debian's GStreamer 1.22 (gstreamer1.0-plugins-bad) has webrtcbin but no
whipsink/whipclientsink, so tests/whip/gst_whip_client.py drives webrtcbin
and does the RFC 9725 exchange itself, under Debian's /usr/bin/python3
(python3-gi, python3-gst-1.0, gir1.2-nice-0.1): the venv's Python cannot
import Debian's gi. Real sockets on loopback; libnice's ICE, GStreamer's
DTLS (OpenSSL) and libsrtp against the gateway.

The negotiated suites are recorded on both sides: the gateway's security
record (DTLS cipher suite, SRTP profile, fingerprint check) and what
webrtcbin's dtlsenc/dtlsdec elements report (client role, SRTP cipher and
auth); GStreamer 1.22 exposes no DTLS cipher suite name.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from callsgw.client import connect
from callsgw.signaling import tokens
from tests.signaling.gateway import running_gateway
from tests.whip.test_whep_aiortc import sending

CLIENT = Path(__file__).with_name("gst_whip_client.py")
SYSTEM_PYTHON = "/usr/bin/python3"
MANDATED = {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"}
# GstDtlsSrtpCipher / GstDtlsSrtpAuth values (gst-plugins-bad ext/dtls/gstdtlssrtpenc.h)
GST_SRTP = {(1, 2): "AES128_CM_HMAC_SHA1_80", (1, 1): "AES128_CM_HMAC_SHA1_32"}


def _gstreamer_missing() -> str | None:
    probe = ("import gi; gi.require_version('Gst','1.0'); gi.require_version('GstWebRTC','1.0'); "
             "gi.require_version('Nice','0.1'); from gi.repository import Gst, GstWebRTC, Nice; Gst.init(None); "
             "missing=[e for e in ('webrtcbin','opusenc','vp8enc','nicesrc','dtlsenc','srtpenc') "
             "if Gst.ElementFactory.find(e) is None]; print(','.join(missing))")
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} cannot run: {exc}"
    if out.returncode != 0:
        return "Debian's GStreamer Python bindings are missing (scripts/test.sh installs them): " + out.stderr[-200:]
    if out.stdout.strip():
        return f"GStreamer elements missing: {out.stdout.strip()}"
    return None


MISSING = _gstreamer_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def token(app, name: str, **kw) -> str:
    return tokens.mint(app.datadir.api_secret(), call="room", name=name, **kw)


async def gst_client(mode: str, app, tok: str, seconds: float, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(CLIENT), mode, f"https://127.0.0.1:{app.whip.port}/{mode}/room", tok, str(seconds),
        *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), seconds + 40)
    lines = out.decode().strip().splitlines()
    assert proc.returncode == 0 and lines, err.decode()[-2000:]
    return json.loads(lines[-1])


def gst_srtp(result: dict) -> str | None:
    dtls = result["dtls"]
    return GST_SRTP.get((dtls.get("dtlsenc.srtp-cipher"), dtls.get("dtlsenc.srtp-auth")))


async def test_gstreamer_publishes_voice_and_screen_through_whip(tmp_path):
    async with running_gateway(tmp_path, whip_port=0) as app:
        listener = await connect(f"wss://127.0.0.1:{app.port}/ws", token(app, "ann"), ssl=False)
        try:
            await listener.wait_connected(timeout=20)
            run = asyncio.create_task(gst_client("whip", app, token(app, "gst"), 6, "--video"))
            # the GStreamer publisher appears in the call ...
            async with asyncio.timeout(30):
                while not any(p["name"] == "gst" for p in listener.participants.values()):
                    await asyncio.sleep(0.05)
                gst_id = next(pid for pid, p in listener.participants.items() if p["name"] == "gst")
                gateway_side = app.core.calls["room"].participants[gst_id]
                # ... its video is the call's screen share ...
                while not listener.participants[gst_id]["sharing"]:
                    await asyncio.sleep(0.05)
                # ... and the listener gets both its streams through the gateway
                kinds: dict[int, str] = {}
                counts = {"audio": 0, "video": 0}
                while min(counts.values()) < 20:
                    for media in listener.remote_media:
                        if media.msid and media.msid.split(" ")[0] == gst_id:
                            kinds.update({ssrc: media.kind for ssrc in media.ssrcs})
                    try:
                        packet = await asyncio.wait_for(listener.rtp.get(), 1)
                    except TimeoutError:
                        continue
                    kind = kinds.get(int.from_bytes(packet[8:12], "big"))
                    if kind is not None:
                        counts[kind] += 1
                record = gateway_side.transport.record
            result = await run
            assert result["status"] == 201 and result["connection_state"] == "connected", result
            assert result["sent"]["audio"] > 50 and result["sent"]["video"] > 20
            assert result["delete_status"] == 200
            # the suites, both sides: the gateway DTLS server with a mandated suite and the fingerprint
            # checked; GStreamer the DTLS client with the same SRTP profile
            assert record.dtls.cipher_suite in MANDATED and record.dtls.role == "server"
            assert record.dtls.version == "DTLS 1.2" and record.dtls.fingerprint_matched is True
            assert result["dtls"]["dtlsenc.is_client"] is True
            assert gst_srtp(result) == record.srtp_profile, (result["dtls"], record.srtp_profile)
            print(f"\nWHIP GStreamer: gateway {record.dtls.version} {record.dtls.cipher_suite} "
                  f"{record.srtp_profile}; webrtcbin dtlsenc client, SRTP {gst_srtp(result)}")
            assert gateway_side.record.signaling.protocol == "whip"
            # DELETE left the call
            async with asyncio.timeout(10):
                while gst_id in listener.participants:
                    await asyncio.sleep(0.05)
        finally:
            await listener.close()


async def test_gstreamer_subscribes_through_whep(tmp_path):
    async with running_gateway(tmp_path, whip_port=0) as app:
        ann = await connect(f"wss://127.0.0.1:{app.port}/ws", token(app, "ann"), ssl=False)
        try:
            await ann.wait_connected(timeout=20)
            async with sending([ann]):
                result = await gst_client("whep", app, token(app, "gst", perms=()), 4)
            assert result["status"] == 201 and result["connection_state"] == "connected", result
            assert "a=sendonly" in result["answer"] and "a=ssrc:" in result["answer"]
            assert result["received"]["audio"] > 50, result["received"]  # ann's voice, through the slot
            assert result["delete_status"] == 200
            assert result["dtls"]["dtlsenc.is_client"] is True and gst_srtp(result) is not None
            async with asyncio.timeout(10):
                while len(app.core.calls["room"].participants) > 1:
                    await asyncio.sleep(0.05)
        finally:
            await ann.close()

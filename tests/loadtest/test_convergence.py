"""``loadtest run`` reports the streams a participant expected and did not get (issue #12).

A small run (1 call x 3 participants, Opus voice, the first one also shares VP8 video) against a
local gateway, on both tester media paths: when one publisher is kept from sending, both other
participants report its voice missing, in ``per_participant`` / ``convergence`` and in the
summary; when everybody sends, nothing is missing.
"""

from __future__ import annotations

import asyncio
import heapq

import pytest

from loadtest.replay import LoadRun, RunConfig, load_capture, pick_tracks, udpio
from loadtest.report import summary_text
from tests.loadtest.test_replay import real
from tests.signaling.gateway import running_gateway

SILENT = 1  # the participant kept from sending (not the call's screen sharer)
PATHS = [pytest.param(True, id="native"), pytest.param(False, id="per-packet")]


class SilentPublisher(LoadRun):
    """A run in which participant SILENT joins and negotiates voice but never sends a packet."""

    def _attach(self, p):  # native path: its Replayers are never scheduled
        super()._attach(p)
        if p.index == SILENT:
            mine = {id(replayer) for replayer, _ in p.media.replayers}
            self._due[:] = [item for item in self._due if item[1] not in mine]
            heapq.heapify(self._due)

    async def _send(self, p):  # per-packet path: its sender never sends
        if p.index == SILENT:
            await asyncio.Event().wait()
        return await super()._send(p)


def config(app, native: bool) -> RunConfig:
    (voice, _), (_, video) = (pick_tracks(load_capture(str(real(name)))[0])
                              for name in ("opus_voice_10s.pcap", "vp8_screen_10s.pcap"))
    return RunConfig(url=f"wss://127.0.0.1:{app.port}/ws", secret=app.datadir.api_secret(), calls=1,
                     participants_per_call=3, voice=voice, video=video, duration=3.5, ramp_up=50, ssl=False,
                     native=native)


@pytest.mark.parametrize("native", PATHS)
async def test_missing_voice_of_a_silent_publisher_is_reported(tmp_path, native):
    if native and udpio is None:
        pytest.skip("callsgw._native.udpio is not built")
    async with running_gateway(tmp_path, joins_per_second_per_address=1000) as app:
        report = await SilentPublisher(config(app, native)).run()
    assert report["participants"]["joined"] == 3
    # 0 shares the screen: 0 expects 1's and 2's voice; 1 and 2 expect the two other voices and 0's screen
    assert report["convergence"] == {"participants_checked": 3, "expected_streams": 8,
                                     "participants_with_missing_streams": 2, "missing_streams": 2,
                                     "unattributed_streams": 0}
    rows = {row["index"]: row for row in report["per_participant"]}
    silent = [{"publisher": SILENT, "name": f"vp{SILENT}", "kind": "voice"}]
    assert rows[0]["missing_streams"] == silent and rows[2]["missing_streams"] == silent
    assert rows[SILENT]["missing_streams"] == []  # it hears the others, and sees the screen
    assert [row["expected_streams"] for row in report["per_participant"]] == [2, 3, 3]
    text = summary_text(report)
    assert "2 of 8 expected, at 2 of 3 participants" in text
    assert "missing stream: vp0 (call 0) received nothing from vp1 (voice)" in text
    assert "missing stream: vp2 (call 0) received nothing from vp1 (voice)" in text


@pytest.mark.parametrize("native", PATHS)
async def test_healthy_run_misses_nothing(tmp_path, native):
    if native and udpio is None:
        pytest.skip("callsgw._native.udpio is not built")
    async with running_gateway(tmp_path, joins_per_second_per_address=1000) as app:
        report = await LoadRun(config(app, native)).run()
    assert report["convergence"] == {"participants_checked": 3, "expected_streams": 8,
                                     "participants_with_missing_streams": 0, "missing_streams": 0,
                                     "unattributed_streams": 0}
    assert all(row["missing_streams"] == [] for row in report["per_participant"])
    # true loss (#22): every stream accounted for, none missing or stopped, nothing failed
    assert report["failures"] == [] and report["interrupted"] is None
    assert report["loss"]["streams"] == 8 and report["loss"]["streams_missing"] == 0
    assert report["loss"]["expected"] > 500 and report["loss"]["loss_percent"] < 1.0
    text = summary_text(report)
    assert "0 of 8 expected" in text and "missing stream:" not in text

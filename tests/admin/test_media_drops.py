"""``callsgw_media_drops_total{reason}``: each kind of unwanted datagram at a real gateway's media port.

One participant joins through the real protocol; then a stranger's socket
(an address no ICE check validated) sends garbage, an oversize datagram,
STUN without USERNAME, STUN for a ufrag nobody has, checks for the
participant's ufrag with a wrong password, a wrong remote ufrag, no
integrity, and an indication, and DTLS, SRTP and SRTCP; the participant's
own (validated) socket sends SRTP that fails authentication and a replay.
Each reason's counter in ``/metrics`` must have moved by exactly what was
sent, on both media engines, the admin API and ``callsgw inspect`` must show
the same numbers, and the counts must outlive the participant's leave.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import struct

import pytest
from aioice import stun as aioice_stun

from callsgw import cli
from callsgw.server import views
from tests.admin.test_admin_api import get, two_party_call, wait_for
from tests.signaling.gateway import running_gateway

_METRIC = re.compile(r'^callsgw_media_drops_total\{reason="([a-z_]+)"\} ([0-9.e+]+)$', re.M)


def _stun(username: str | None, key: str | None, *, message_class=aioice_stun.Class.REQUEST) -> bytes:
    msg = aioice_stun.Message(aioice_stun.Method.BINDING, message_class)
    if username is not None:
        msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 0x6E7F1EFF
    msg.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    if key is not None:
        msg.add_message_integrity(key.encode())
    else:
        msg.add_fingerprint()
    return bytes(msg)


def _rtp(seq: int, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, 111, seq, seq * 960, ssrc) + bytes(60)


async def _drops(port: int, key: str) -> dict[str, float]:
    status, _, body = await get(port, "/metrics", key)
    assert status == 200
    return {reason: float(n) for reason, n in _METRIC.findall(body.decode())}


@pytest.mark.parametrize("engine", ["native", "native-thread", "python"])
async def test_each_unwanted_datagram_is_counted_by_reason(tmp_path, capsys, engine):
    async with running_gateway(tmp_path, media_engine=engine) as app:
        key = app.datadir.admin_key(announce=False)
        alice, bob, _ = await two_party_call(app, call="drops")
        (p,) = [p for p in app.core.calls["drops"].participants.values() if p.name == "alice"]
        ours, theirs = p.transport.local_ufrag, p.transport.remote.ice_ufrag
        media = ("127.0.0.1", app.media_port)

        before = await _drops(app.port, key)
        assert set(before) == set(views.MEDIA_DROP_REASONS), "every reason is exported from the start"

        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.1", 0))
        sent = {
            "unclassified": [b"\xff" * 40],  # first byte 255: nothing RFC 7983 knows
            "stun_without_username": [_stun(None, None)],
            "stun_unknown_ufrag": [_stun("nosuchufrag:abcd", "x" * 22)],
            "ice_bad_integrity": [_stun(f"{ours}:{theirs}", "wrong-password-" + "x" * 10)] * 2,
            "ice_unknown_ufrag": [_stun(f"{ours}:notthepeer", p.transport.local_pwd)],
            "ice_no_integrity": [_stun(f"{ours}:{theirs}", None)],
            "ice_not_request": [_stun(f"{ours}:{theirs}", p.transport.local_pwd,
                                      message_class=aioice_stun.Class.INDICATION)],
            "dtls_from_unknown_address": [bytes([22, 0xFE, 0xFD]) + bytes(30)],
            "rtp_from_unknown_address": [_rtp(1), _rtp(2), _rtp(3)],
            "rtcp_from_unknown_address": [struct.pack("!BBHI", 0x80, 200, 6, 0x1234) + bytes(20)],
        }
        oversize_reason = "engine_oversize" if engine != "python" else "oversize"
        sent[oversize_reason] = [bytes([0x80, 111]) + bytes(2998)]
        for datagrams in sent.values():
            for data in datagrams:
                stranger.sendto(data, media)
        stranger.close()

        # from alice's own validated address: SRTP that fails authentication, and a replay
        handoff = alice.media_handoff()
        good = handoff.tx.protect(_rtp(500, handoff.voice_ssrc))
        forged = bytearray(handoff.tx.protect(_rtp(501, handoff.voice_ssrc)))
        forged[-1] ^= 0x01
        handoff.udp.sendto(bytes(forged), handoff.remote_address)
        handoff.udp.sendto(good, handoff.remote_address)
        await asyncio.sleep(0.1)
        handoff.udp.sendto(good, handoff.remote_address)  # the same (SSRC, index) again
        sent["srtp_auth"] = [bytes(forged)]
        sent["srtp_replay"] = [good]

        want = {reason: before[reason] + len(datagrams) for reason, datagrams in sent.items()}

        async def counted():
            now = await _drops(app.port, key)
            return now if all(now[r] >= n for r, n in want.items()) else None

        try:
            after = await wait_for(counted, timeout=10)
        except TimeoutError:
            after = await _drops(app.port, key)
        for reason, n in want.items():
            assert after[reason] == n, (reason, after[reason], n)
        moved = {r for r in after if after[r] != before[r]}
        assert moved == set(sent), moved ^ set(sent)  # nothing else moved: each datagram has one reason

        # the admin API and inspect show the same numbers
        status, _, body = await get(app.port, "/api/v1/media/drops", key)
        api = json.loads(body)["drops"]
        assert status == 200 and all(api[r] == after[r] for r in sent)
        base = ["inspect", "--url", f"https://127.0.0.1:{app.port}", "--admin-key", key, "--insecure"]
        capsys.readouterr()
        assert await asyncio.to_thread(cli.main, [*base, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)["media_drops"]
        assert all(shown[r] == after[r] for r in sent)
        assert await asyncio.to_thread(cli.main, base) == 0
        table = capsys.readouterr().out
        assert "MEDIA DROPS" in table
        for reason in sent:
            assert re.search(rf"^{reason}\s+{int(after[reason])}$", table, re.M), reason

        # counts outlive the participants (a counter never goes back)
        await alice.leave()
        await bob.leave()
        await wait_for(lambda: asyncio.sleep(0, result=not app.core.calls))
        final = await _drops(app.port, key)
        for reason in sent:
            assert final[reason] >= after[reason], reason


def test_every_reason_the_code_counts_is_documented():
    """The labels are a closed list: every drop key in the sources is named in MEDIA_DROP_REASONS."""
    root = os.path.dirname(views.__file__) + "/../"
    keys = set()
    for path in ("transport/mux.py", "transport/media.py", "server/native.py"):
        text = open(root + path).read()
        keys |= set(re.findall(r'drops\["([a-z_]+)"\]', text))
        keys |= {f"{kind}_from_unknown_address" for kind in ("dtls", "rtp", "rtcp")}
        keys |= {f"{kind}_from_unvalidated_address" for kind in ("dtls", "rtp", "rtcp")}
    from callsgw.ice.lite import STAT_KEYS

    keys |= {f"ice_{k}" for k in STAT_KEYS if k not in ("answered", "role_conflict")}
    assert keys <= set(views.MEDIA_DROP_REASONS), keys - set(views.MEDIA_DROP_REASONS)

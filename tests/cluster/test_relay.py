"""Any node accepts any client (issue #15 item 4): joins relayed over sealed Redis pub/sub.

Two in-process gateways in one cluster (a real redis-server and PostgreSQL on
loopback). A client that reaches node A for a call placed on node B is
carried by A and run by B: B's answer carries B's candidates, so media flows
straight to B, and everything A and B say to each other crosses Redis sealed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

import pytest
from hypothesis import given, settings, strategies as st

from callsgw.client import connect
from callsgw.client.session import JoinError
from callsgw.cluster.relay import RelayError, close_frame, msg_frame, open_frame, parse_frame
from callsgw.signaling import tokens
from tests.cluster.test_nodes import Monitor, api_get, cluster_gateway, ws_url

SESSION = "0123456789abcdef01234567"


# -- the frames ----------------------------------------------------------------------------------


def test_frames_round_trip():
    opened = parse_frame(open_frame(SESSION, ("10.0.0.7", 50123), {"version": "TLSv1.3", "cipher": "X"}, '{"a":1}'))
    assert (opened.kind, opened.session, opened.peer, opened.tls, opened.text) == \
        ("open", SESSION, ("10.0.0.7", 50123), {"version": "TLSv1.3", "cipher": "X"}, '{"a":1}')
    assert parse_frame(msg_frame(SESSION, "héllo")).text == "héllo"
    closed = parse_frame(close_frame(SESSION, code=4001, reason="x" * 300))
    assert closed.code == 4001 and len(closed.reason.encode()) <= 123
    assert parse_frame(close_frame(SESSION, clean=True)).clean is True


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b"null", b'{"k":"msg"}', b'{"k":"msg","s":"xyz","text":"a"}',
    b'{"k":"nope","s":"0123456789abcdef01234567"}', b'{"k":"msg","s":"0123456789abcdef01234567","text":5}',
    b'{"k":"open","s":"0123456789abcdef01234567","text":"a","peer":["h",70000]}',
    b'{"k":"open","s":"0123456789abcdef01234567","text":"a","peer":["h",1],"tls":{"a":1}}',
    b'{"k":"close","s":"0123456789abcdef01234567","code":99}',
    b'{"k":"close","s":"0123456789abcdef01234567","clean":"yes"}',
    b'\xff\xfe', b"[" * 100000,
])
def test_malformed_frames_are_relay_errors(body):
    with pytest.raises(RelayError):
        parse_frame(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_and_truncated_frames_never_raise_anything_else(data):
    whole = open_frame(SESSION, ("127.0.0.1", 1), None, '{"type":"join"}')
    for body in (data, whole[:len(data) % (len(whole) + 1)]):
        try:
            parse_frame(body)
        except RelayError:
            pass


# -- relayed calls -------------------------------------------------------------------------------


def voice(session, seq: int) -> bytes:
    return bytes([0x80, 111]) + seq.to_bytes(2, "big") + bytes(4) + session.voice_ssrc.to_bytes(4, "big") + bytes(40)


async def hears(speaker, listener, timeout: float = 10.0) -> None:
    """``listener`` receives ``speaker``'s voice (SSRC rewritten by the gateway, so any packet counts)."""
    while not listener.rtp.empty():
        listener.rtp.get_nowait()
    seq = 1000
    async with asyncio.timeout(timeout):
        while listener.rtp.empty():
            seq += 1
            speaker.send_voice(voice(speaker, seq))
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def two_nodes(tmp_path, redis_server, pg_url, **overrides):
    async with cluster_gateway(tmp_path, "node-a", redis_server, pg_url, **overrides) as a, \
            cluster_gateway(tmp_path, "node-b", redis_server, pg_url, **overrides) as b:
        for node in (a, b):
            await node.cluster.heartbeat()  # both see both
        yield a, b


def mint(app, call: str, name: str) -> str:
    return tokens.mint(app.secrets.current(), call=call, name=name)


async def test_a_call_placed_on_b_is_reached_through_a_and_media_flows_both_ways(tmp_path, redis_server, pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url) as (a, b):
        assert await b.cluster.place("relayed", prefer_self=True) == "node-b"
        ann = await connect(ws_url(a), mint(a, "relayed", "ann"), ssl=False)  # reaches A, relayed to B
        ben = await connect(ws_url(b), mint(b, "relayed", "ben"), ssl=False)  # reaches B directly
        try:
            await asyncio.wait_for(asyncio.gather(ann.wait_connected(), ben.wait_connected()), 20)
            assert "relayed" in b.core.calls and "relayed" not in a.core.calls
            assert b.core.participant_count == 2 and a.core.participant_count == 0
            assert a.relay.stats()["origin_sessions"] == 1 and b.relay.stats()["hosted_sessions"] == 1
            # B's answer carried B's candidates: ann's media goes straight to B's UDP port
            ports = {port for _, port in ann._neg.remote.candidates}
            assert ports == {b.media_port} and a.media_port not in ports
            assert ann.tls is not None and ann.tls["version"].startswith("TLS")  # A's TLS, carried in the open
            async with asyncio.timeout(10):
                while set(ann.participants) != {ben.participant_id}:
                    await asyncio.sleep(0.05)
            await hears(ann, ben)
            await hears(ben, ann)
            await ann.ping()  # signaling both ways through the relay after the join
            doc = json.loads(await asyncio.to_thread(api_get, a, "/api/v1/cluster"))
            assert doc["relay"]["origin_sessions"] == 1 and doc["relay"]["bus_published"] >= 2
            metrics = await asyncio.to_thread(api_get, b, "/metrics")
            assert 'callsgw_cluster_relay_sessions{side="hosted"} 1.0' in metrics
            assert 'callsgw_cluster_relay_frames_total{event="bad_frames"} 0.0' in metrics
            record = b.core.calls["relayed"].participants[ann.participant_id].record
            assert record.signaling.tls_version == ann.tls["version"]  # the security record has A's TLS
            assert record.dtls.cipher_suite in {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                                           "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"}
        finally:
            await ann.close()
            await ben.close()
        async with asyncio.timeout(10):  # a clean leave through the relay ends the session on B at once
            while b.core.participant_count:
                await asyncio.sleep(0.05)
        assert a.relay.stats()["origin_sessions"] == 0 and b.relay.stats()["hosted_sessions"] == 0
        assert a.cluster.seal.drops["auth"] == 0 and b.cluster.seal.drops["replay"] == 0


async def test_the_first_join_places_a_new_call_and_racing_joins_through_both_nodes_meet(tmp_path, redis_server,
                                                                                         pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url) as (a, b):
        sessions = await asyncio.gather(*(connect(ws_url(node), mint(node, "race", f"p{i}"), ssl=False)
                                          for i, node in enumerate((a, b, a, b))))
        try:
            await asyncio.wait_for(asyncio.gather(*(s.wait_connected() for s in sessions)), 30)
            hosts = [node for node in (a, b) if "race" in node.core.calls]
            assert len(hosts) == 1 and hosts[0].core.participant_count == 4
            other = b if hosts[0] is a else a
            assert other.relay.stats()["origin_sessions"] == 2
            await hears(sessions[0], sessions[1])
        finally:
            for s in sessions:
                await s.close()


async def test_a_relayed_client_whose_websocket_is_cut_resumes_through_the_relay(tmp_path, redis_server, pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url) as (a, b):
        await b.cluster.place("resume", prefer_self=True)
        ann = await connect(ws_url(a), mint(a, "resume", "ann"), ssl=False)
        ben = await connect(ws_url(b), mint(b, "resume", "ben"), ssl=False)
        try:
            await asyncio.wait_for(asyncio.gather(ann.wait_connected(), ben.wait_connected()), 20)
            ann._ws.transport.abort()  # the client's socket to A dies; B keeps the participant
            async with asyncio.timeout(15):
                while ann.resumes == 0:
                    await asyncio.sleep(0.05)
            await ann.ping()
            assert b.core.stats.get("resumes") == 1 and b.core.participant_count == 2
            kinds = []
            while not ben.events.empty():
                kinds.append(ben.events.get_nowait()["type"])
            assert "participant_left" not in kinds
            await hears(ann, ben)
        finally:
            await ann.close()
            await ben.close()


async def test_a_refused_relayed_join_is_refused_with_the_host_s_code(tmp_path, redis_server, pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url, max_participants_per_call=1) as (a, b):
        await b.cluster.place("full", prefer_self=True)
        ben = await connect(ws_url(b), mint(b, "full", "ben"), ssl=False)
        try:
            with pytest.raises(JoinError) as refused:
                await connect(ws_url(a), mint(a, "full", "ann"), ssl=False)
            assert refused.value.code == 4004  # the host's core decided, the origin carried the close
        finally:
            await ben.close()
        assert a.relay.stats()["origin_sessions"] == 0
        assert b.relay.stats()["hosted_sessions"] == 0


async def test_sessions_carried_for_other_nodes_are_bounded_by_max_connections(tmp_path, redis_server, pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url, max_connections=1) as (a, b):
        await b.cluster.place("bounded", prefer_self=True)
        ann = await connect(ws_url(a), mint(a, "bounded", "ann"), ssl=False)  # carried by A
        try:
            with pytest.raises(JoinError) as refused:
                await connect(ws_url(a), mint(a, "bounded", "ben"), ssl=False)
            assert refused.value.code == 4006 and a.relay.stats()["refused_full"] == 1
            await ann.ping()  # the one carried goes on
        finally:
            await ann.close()


async def test_the_origin_ends_relayed_sessions_when_the_host_node_is_lost(tmp_path, redis_server, pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url) as (a, b):
        await b.cluster.place("lost", prefer_self=True)
        ann = await connect(ws_url(a), mint(a, "lost", "ann"), ssl=False)
        try:
            await asyncio.wait_for(ann.wait_connected(), 20)
            a.relay.prune({"node-a"})  # what A's next heartbeat does once B's entry expired
            async with asyncio.timeout(10):
                while True:
                    event = await ann.events.get()
                    if event["type"] == "bye":
                        break
            assert event["reason"] == "node_lost" and event["reconnect"] is True
            assert a.relay.stats()["node_lost"] == 1
        finally:
            await ann.close()


async def test_joins_that_need_the_cluster_get_4012_when_redis_is_gone(tmp_path, redis_server, pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url) as (a, b):
        await a.cluster.place("here", prefer_self=True)
        local = await connect(ws_url(a), mint(a, "here", "ann"), ssl=False)
        try:
            await local.wait_connected(timeout=20)
            assert "here" in a.core.calls
            redis_server.stop()
            with pytest.raises(JoinError) as refused:
                await connect(ws_url(a), mint(a, "elsewhere", "ben"), ssl=False)
            assert refused.value.code == 4012 and refused.value.error["code"] == "cluster_unavailable"
            # a call hosted here does not need Redis to take another participant
            cid = await connect(ws_url(a), mint(a, "here", "cid"), ssl=False)
            await cid.wait_connected(timeout=20)
            await cid.close()
        finally:
            await local.close()


async def test_redis_carries_nothing_of_a_relayed_join_in_clear_and_the_publishes_are_counted(
        tmp_path, redis_server, pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url) as (a, b):
        await b.cluster.place("confidential-relayed-call", prefer_self=True)
        monitor = Monitor(redis_server.port)
        try:
            token = mint(a, "confidential-relayed-call", "Yorick Relayed")
            ann = await connect(ws_url(a), token, ssl=False)
            try:
                await ann.wait_connected(timeout=20)
                ice = (ann._core.local_ufrag, ann._core.local_pwd)
                gateway_pwd = ann._neg.remote.ice_pwd
            finally:
                await ann.close()
            await asyncio.sleep(0.5)
        finally:
            seen = monitor.stop()
    publishes = seen.count(b'"PUBLISH"')
    assert publishes >= 3  # open+join, joined, the close; the figure is reported by bench_relay_join
    forbidden = {
        "call id": b"confidential-relayed-call", "name": b"Yorick", "token": token.encode(),
        "token payload": token.split(".")[1].encode(), "sdp": b"v=0", "ice ufrag": ice[0].encode(),
        "ice pwd": ice[1].encode(), "gateway ice pwd": gateway_pwd.encode(), "node id": b"node-",
        "json": b'"type"', "base64 sdp": base64.b64encode(b"v=0\r\n")[:6],
    }
    found = [what for what, needle in forbidden.items() if needle in seen]
    assert found == []


async def test_a_frame_for_an_unknown_session_is_answered_with_a_close(tmp_path, redis_server, pg_url):
    async with two_nodes(tmp_path, redis_server, pg_url) as (a, b):
        a.relay.bus.send("node-b", msg_frame(SESSION, json.dumps({"type": "ping"})))
        async with asyncio.timeout(10):
            while b.relay.stats()["unknown_session"] < 1 or a.relay.stats()["unknown_session"] < 1:
                await asyncio.sleep(0.05)
        # B said close; A, which has no such session either, did not answer the close (no ping-pong)
        await asyncio.sleep(0.3)
        assert b.relay.stats()["unknown_session"] == 1 and a.relay.stats()["unknown_session"] == 1

"""``loadtest run --agents N`` and ``loadtest agent`` (issue #22 deliverable 8).

The sealed channel is checked on its own (wrong secret, replay, tampering, direction); an agent
facing a coordinator that sends bad or unauthenticated messages stops with one line; then three
real agent processes run shares of one run against a real ``python -m callsgw serve`` on loopback,
beside an agent with the wrong secret that the coordinator refuses, and the merged report must add
up.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from callsgw.cli import main
from loadtest.agent import (MAGIC, AgentError, Channel, load_secret, merge_reports, run_agent, split_calls,
                            track_from_wire, track_to_wire)
from tests.loadtest.test_gateway_probe import _serve
from tests.loadtest.test_replay import real

ROOT = Path(__file__).parents[2]
SECRET = b"s" * 32


def _pair(secret_a: bytes = SECRET, secret_c: bytes = SECRET) -> tuple[Channel, Channel]:
    an, cn = os.urandom(16), os.urandom(16)
    return Channel(secret_a, an, cn, "agent"), Channel(secret_c, an, cn, "coordinator")


def test_channel_seals_both_ways_and_refuses_wrong_keys_replays_and_tampering():
    agent, coord = _pair()
    frame = coord.seal({"type": "run", "tokens": ["t1"]})
    assert b"t1" not in frame  # encrypted
    assert agent.open(frame) == {"type": "run", "tokens": ["t1"]}
    assert coord.open(agent.seal({"type": "hello"}))["type"] == "hello"
    with pytest.raises(AgentError, match="out of sequence"):
        agent.open(frame)  # replayed
    second = coord.seal({"type": "stop"})
    tampered = second[:-1] + bytes([second[-1] ^ 1])
    with pytest.raises(AgentError, match="did not authenticate"):
        agent.open(tampered)
    # a frame sealed by the agent does not open as one from the coordinator (direction in the key and AAD)
    mine = agent.seal({"type": "hello"})
    fresh_agent, _ = _pair()
    with pytest.raises(AgentError):
        fresh_agent.open(mine)
    wrong_agent, coord2 = _pair(secret_a=b"x" * 32)
    with pytest.raises(AgentError, match="did not authenticate.*--agent-secret-file"):
        wrong_agent.open(coord2.seal({"type": "run"}))
    a3, c3 = _pair()
    with pytest.raises(AgentError, match="malformed"):
        a3.open(b"short")
    for body in (b"[1]", b"not json"):
        nonce = c3.sent.to_bytes(12, "big")
        c3.sent += 1
        frame = nonce + c3._out.encrypt(nonce, body, c3._out_aad)
        with pytest.raises(AgentError, match="no type|not JSON"):
            a3.open(frame)


def test_secret_file_rules(tmp_path):
    with pytest.raises(AgentError, match="no such file"):
        load_secret(str(tmp_path / "absent"))
    made = load_secret(str(tmp_path / "new.key"), create=True)
    assert len(made) == 32 and (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "short.key").write_bytes(b"abc")
    with pytest.raises(AgentError, match="at least 32 bytes"):
        load_secret(str(tmp_path / "short.key"))


def test_calls_are_split_whole_and_evenly():
    assert split_calls(3, 3) == [(0, 1), (1, 2), (2, 3)]
    assert split_calls(7, 3) == [(0, 3), (3, 5), (5, 7)]
    from loadtest.replay import load_capture, pick_tracks

    streams, _ = load_capture(real("opus_voice_10s.pcap"))
    voice, _ = pick_tracks(streams)
    again = track_from_wire(json.loads(json.dumps(track_to_wire(voice))))
    assert again == voice
    broken = track_to_wire(voice)
    broken["lengths"][0] += 1
    with pytest.raises(AgentError, match="malformed track"):
        track_from_wire(broken)


async def _fake_coordinator(behaviour: str, secret: bytes) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader, writer):
        hello = await reader.readexactly(len(MAGIC) + 16)
        if behaviour == "not-the-protocol":
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        own = os.urandom(16)
        writer.write(MAGIC + own)
        channel = Channel(secret, hello[len(MAGIC):], own, "coordinator")
        n = int.from_bytes(await reader.readexactly(4), "big")
        await reader.readexactly(n)
        if behaviour == "malformed-run":
            frame = channel.seal({"type": "run", "calls": "many"})
        elif behaviour == "garbage":
            frame = os.urandom(64)
        else:
            frame = channel.seal({"type": "run"})
        writer.write(len(frame).to_bytes(4, "big") + frame)
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("behaviour, secret, message", [
    ("wrong-secret", b"w" * 32, "did not authenticate"),
    ("garbage", SECRET, "did not authenticate|out of sequence"),
    ("malformed-run", SECRET, "run message is malformed"),
    ("not-the-protocol", SECRET, "does not speak the callsgw loadtest agent protocol"),
])
async def test_an_agent_refuses_bad_or_unauthenticated_coordinator_messages(behaviour, secret, message):
    server, port = await _fake_coordinator(behaviour, secret)
    lines = []
    try:
        with pytest.raises(AgentError, match=message):
            await run_agent(f"127.0.0.1:{port}", SECRET, "t", 5.0, say=lines.append)
    finally:
        server.close()


def test_agent_command_gives_one_line_on_a_wrong_secret(tmp_path):
    """The real command: exit 2 and one line, no traceback."""
    async def scenario():
        server, port = await _fake_coordinator("wrong-secret", b"w" * 32)
        key = tmp_path / "agent.key"
        key.write_bytes(SECRET)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callsgw", "loadtest", "agent", "--coordinator", f"127.0.0.1:{port}",
            "--agent-secret-file", str(key), cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        server.close()
        return proc.returncode, err.decode()

    code, err = asyncio.run(scenario())
    assert code == 2 and "Traceback" not in err
    assert "error: a message from the coordinator did not authenticate" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent(port: int, key: Path, name: str, delay: float = 0.0) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
    command = [sys.executable, "-m", "callsgw", "loadtest", "agent", "--coordinator", f"127.0.0.1:{port}",
               "--agent-secret-file", str(key), "--name", name, "--connect-timeout", "60"]
    if delay:  # start later (the coordinator takes the first N that authenticate)
        command = ["sh", "-c", f"sleep {delay}; exec \"$@\"", "agent", *command]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_three_agents_run_one_merged_run_against_a_real_gateway(tmp_path, capsys):
    data = tmp_path / "data"
    proc, port = _serve(data)
    key, wrong = tmp_path / "agent.key", tmp_path / "wrong.key"
    key.write_bytes(os.urandom(32))
    wrong.write_bytes(os.urandom(32))
    listen = _free_port()
    intruder = _agent(listen, wrong, "intruder")  # connects first, with another secret: refused
    agents = [_agent(listen, key, f"a{i}", delay=3.0) for i in range(3)]
    try:
        report_path = tmp_path / "merged.json"
        code = main(["loadtest", "run", "--url", f"wss://127.0.0.1:{port}/ws", "--data-dir", str(data),
                     "--calls", "4", "--participants-per-call", "3", "--capture", str(real("opus_voice_10s.pcap")),
                     "--duration", "6", "--ramp-up", "30", "--insecure", "--json", str(report_path),
                     "--csv", str(tmp_path / "t.csv"), "--loss", "5", "--impair-seed", "3",
                     "--agents", "3", "--agent-listen", f"127.0.0.1:{listen}", "--agent-secret-file", str(key),
                     "--agent-wait", "60", "--max-loss", "50"])
        out, err = capsys.readouterr()
        agent_errs = [a.communicate(timeout=60)[1] for a in agents]
        intruder_err = intruder.communicate(timeout=60)[1]
    finally:
        for a in (*agents, intruder):
            if a.poll() is None:
                a.kill()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    print(out, err, *agent_errs, intruder_err, sep="\n")
    assert code == 0, err
    assert [a.returncode for a in agents] == [0, 0, 0] and intruder.returncode == 2
    assert "refused: a message from the agent did not authenticate" in err
    assert "did not authenticate" in intruder_err and "Traceback" not in err + intruder_err + "".join(agent_errs)
    report = json.loads(report_path.read_text())
    per = report["agents"]["per_agent"]
    assert report["agents"]["count"] == 3 and sorted(a["name"] for a in per) == ["a0", "a1", "a2"]
    # whole calls: 4 calls over 3 agents as 2 + 1 + 1, the participants numbered across agents
    assert sorted(a["calls"][1] - a["calls"][0] for a in per) == [1, 1, 2]
    assert sorted(a["first_participant"] for a in per) == [0, 6, 9]
    assert report["participants"]["planned"] == 12 and report["participants"]["joined"] == 12
    assert report["participants"]["joined"] == sum(a["joined"] for a in per)
    assert sorted(row["index"] for row in report["per_participant"]) == list(range(12))
    assert report["config"]["calls"] == 4 and report["config"]["agents"] == 3
    # packets and loss add up across agents; the loss is recomputed from the sums
    totals, loss = report["totals"], report["loss"]
    assert totals["packets_sent"] == sum(a["packets_sent"] for a in per)
    assert totals["packets_received"] == sum(a["packets_received"] for a in per)
    assert loss["expected"] == sum(a["expected"] for a in per) and loss["lost"] == sum(a["lost"] for a in per)
    assert loss["loss_percent"] == pytest.approx(100 * loss["lost"] / loss["expected"], abs=1e-3)
    assert totals["loss_percent"] == loss["loss_percent"]
    assert loss["streams"] == 4 * 3 * 2  # every subscriber hears the other two of its call
    assert len(report["streams"]) == 24 and {s["agent"] for s in report["streams"]} == {0, 1, 2}
    # the injected 5 % (send side: each packet is dropped once for its 2 subscribers) across agents
    trials = loss["expected"] / 2
    assert abs(loss["loss_percent"] - 5) < 4 * math.sqrt(0.05 * 0.95 / trials) * 100 + 0.5
    assert report["impairment"]["send"]["publishers"] == 12
    assert report["convergence"]["missing_streams"] == 0 and report["failures"] == []
    delay = totals["delay_ms"]
    assert delay["matched"] == sum(s["delay_samples"] for s in report["streams"]) and delay["p95"] >= delay["p50"] > 0
    assert "same agent" in report["agents"]["one_way_delay"]
    assert report["thresholds"]["failed"] == [] and report["identity"]["settings"]["agents"] == 3
    assert "agents                           3 (" in out and "one-way delay pairs" in out
    assert len(report["handshake_ms"]["values"]) == 12
    assert report["timeline"] and max(p["connected"] for p in report["timeline"]) == 12
    assert (tmp_path / "t.csv").read_text().startswith("t,connected")
    # the gateway runs on the coordinator's host (loopback --url): the coordinator samples it
    gateway = report["gateway"]
    assert gateway["pid"] == proc.pid and gateway["forwarded_packets"] > 500
    assert 0 < gateway["us_per_forwarded_packet"] < 5000 and gateway["rss_mb"]["max"] > 20


def test_agents_options_are_checked(tmp_path, capsys):
    base = ["loadtest", "run", "--url", "wss://127.0.0.1:1/ws", "--token-secret-file", str(tmp_path / "s"),
            "--participants-per-call", "2", "--capture", "x", "--duration", "3"]
    for extra, message in ((["--calls", "2", "--agents", "3", "--agent-secret-file", "k"], "needs at least 3 calls"),
                           (["--calls", "3", "--agents", "3"], "needs --agent-secret-file"),
                           (["--calls", "3", "--agents", "3", "--agent-secret-file", "k", "--agent-listen", "nope"],
                            "--agent-listen must be HOST:PORT")):
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["loadtest", "agent", "--coordinator", "nowhere", "--agent-secret-file", "k"]) == 2
    assert "--coordinator must be HOST:PORT" in capsys.readouterr().err


def test_merge_reports_of_nothing_sent_keeps_zero_loss():
    """The merge on two minimal agent reports (no delay samples): zero loss, no division by zero."""
    def report(joined: int) -> dict:
        zero_kind = {"streams": 0, "sent": 0, "lost": 0, "loss_percent": 0.0}
        kind = {"streams": 0, "packets_received": 0, "jitter_ms": {}, "delay_ms": None,
                "received_kbps_per_stream": None, "loss": zero_kind, "sent_kbps_per_stream": 49.7}
        return {"config": {"calls": 1, "ramp_up_per_second": 5, "screen_sharers": 0, "speakers": 2},
                "shared_host": True, "note": "n", "run_seconds": 3.0, "interrupted": None, "failures": [],
                "loss": {"method": "m", "expected": 0, "received": 0, "lost": 0, "loss_percent": 0.0, "streams": 0,
                         "streams_missing": 0,
                         "streams_stopped": 0, "by_kind": {"voice": zero_kind, "screen": zero_kind},
                         "sending_stopped_at_s": 2.5, "per_stream": []},
                "participants": {"planned": 2, "joined": joined, "failed": 2 - joined, "errors": {"x": 2 - joined},
                                 "join_retries": 0, "rate_limited_participants": 0},
                "convergence": {}, "per_participant": [], "handshake_ms": {"values": []},
                "totals": {"streams": 0, "packets_sent": 0, "packets_received": 0, "delay_ms": None},
                "by_kind": {"voice": kind, "screen": kind}, "streams": [],
                "tester": {"cpu_seconds": 0.1, "cpu_percent_of_one_core": 3, "send_lag_ms": None, "bottleneck": False,
                           "warnings": []},
                "impairment": {"applied": False}, "timeline": []}

    empty = {"ms": [], "matched": 0}
    merged = merge_reports([{"report": report(2), "samples": {"all": empty, "voice": empty, "screen": empty}},
                            {"report": report(1), "samples": {"all": empty, "voice": empty, "screen": empty}}],
                           [{"name": "a", "peer": "p", "calls": (0, 1), "offset": 0},
                            {"name": "b", "peer": "q", "calls": (1, 2), "offset": 2}])
    assert merged["participants"]["joined"] == 3 and merged["participants"]["errors"] == {"x": 1}
    assert merged["totals"]["loss_percent"] == 0.0 and merged["totals"]["delay_ms"] is None


def test_a_coordinator_interrupted_while_waiting_for_agents_exits_130(tmp_path):
    secret = tmp_path / "api_secret"
    secret.write_bytes(os.urandom(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "callsgw", "loadtest", "run", "--url", "wss://127.0.0.1:9/ws", "--token-secret-file",
         str(secret), "--calls", "2", "--participants-per-call", "2", "--capture", str(real("opus_voice_10s.pcap")),
         "--duration", "5", "--agents", "2", "--agent-listen", f"127.0.0.1:{_free_port()}", "--agent-secret-file",
         str(tmp_path / "agent.key"), "--gateway-pid", "none"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "waiting for 2 agents" in line:
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + err
    assert proc.returncode == 130, err
    assert "interrupted (SIGINT) before the agents started the run" in err and "Traceback" not in err
    assert "made a new agent secret" in err and (tmp_path / "agent.key").stat().st_size == 32


def test_sigint_at_the_coordinator_ends_every_agents_share_and_keeps_the_results(tmp_path):
    data = tmp_path / "data"
    proc, port = _serve(data)
    key = tmp_path / "agent.key"
    key.write_bytes(os.urandom(32))
    listen = _free_port()
    agents = [_agent(listen, key, f"a{i}") for i in range(2)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSGW_")}
    report_path = tmp_path / "merged.json"
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "callsgw", "loadtest", "run", "--url", f"wss://127.0.0.1:{port}/ws", "--data-dir",
         str(data), "--calls", "2", "--participants-per-call", "2", "--capture", str(real("opus_voice_10s.pcap")),
         "--duration", "30", "--insecure", "--json", str(report_path), "--agents", "2", "--agent-listen",
         f"127.0.0.1:{listen}", "--agent-secret-file", str(key)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in coordinator.stderr:
            lines.append(line)
            if "the run starts on 2 agents" in line:
                break
        import time

        time.sleep(4.5)
        coordinator.send_signal(signal.SIGINT)
        out, err = coordinator.communicate(timeout=60)
        for a in agents:
            a.communicate(timeout=60)
    finally:
        for p in (coordinator, *agents):
            if p.poll() is None:
                p.kill()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    err = "".join(lines) + err
    assert coordinator.returncode == 130, err
    assert [a.returncode for a in agents] == [0, 0]
    report = json.loads(report_path.read_text())
    assert report["interrupted"] == "SIGINT" and report["run_seconds"] < 15
    assert report["participants"]["joined"] == 4 and report["totals"]["packets_received"] > 0
    assert "INTERRUPTED: SIGINT" in out and "Traceback" not in err

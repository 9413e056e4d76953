"""More than one tester machine: ``loadtest agent`` processes run shares of one ``loadtest run --agents N``.

The coordinator (``callsgw loadtest run --agents N --agent-listen HOST:PORT --agent-secret-file F``)
reads the captures and checks the options as for a local run, then listens for N agents; each
agent (``callsgw loadtest agent --coordinator HOST:PORT --agent-secret-file F``) connects, proves it
holds the shared secret, and gets a share of the run: whole calls (a call is never split across
agents, so every publisher and its subscribers are on one agent), the capture tracks, one token per
participant and a common start time. The coordinator mints the tokens: the gateway's signing
secret never leaves it. Each agent runs its share as a local ``loadtest run`` would
(:class:`loadtest.replay.LoadRun`) and sends its report back; the coordinator merges them into one
report (:func:`merge_reports`), with thresholds, summary, ``--json``, ``--csv`` and ``--plots`` as usual.

Wire, over TCP::

    agent -> coordinator   b"CGWLT1" + 16 random bytes (the agent's nonce)
    coordinator -> agent   b"CGWLT1" + 16 random bytes (the coordinator's nonce)
    then, both ways, frames: [u32 length][12-byte nonce][AES-GCM ciphertext + 16-byte tag]

Keys: HKDF-SHA256 (RFC 5869) of the shared secret (at least 32 bytes, ``--agent-secret-file``)
with both nonces as salt gives one AES-256-GCM key per direction for this connection alone; the
nonce is the frame's sequence number in that direction (from 0), which must come in order, so a
frame replayed, dropped, reordered or taken from another connection does not open. The additional
data names the direction. The plaintext is a JSON object with a ``type``: the agent's ``hello``,
then the coordinator's ``run`` (or ``error``), optionally ``stop`` (SIGINT/SIGTERM at the
coordinator), and the agent's ``result`` (or ``error``). Frames are at most :data:`MAX_FRAME` bytes;
anything that does not open, parse or validate ends the connection with one clear line on each
side (a wrong secret reads "did not authenticate"), never a traceback.

One-way delay: each agent measures it between its own publishers and subscribers, against its own
clock (send log and kernel receive time on one host). As calls are not split, every pair is on one
agent and the report's delay needs no clock shared between agents; the report says so
(``agents.one_way_delay``). Loss is summed across agents (sent and lost per stream), jitter is taken
over every agent's streams, and the delay percentiles are merged from each agent's delay samples
weighted by the packets each stands for.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import sys
import time

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["AgentError", "Channel", "load_secret", "merge_reports", "split_calls", "track_to_wire",
           "track_from_wire", "run_agent", "coordinate"]

MAGIC = b"CGWLT1"
NONCE_BYTES = 16
GCM_NONCE = 12
TAG = 16
MAX_FRAME = 64 << 20  # a run message holds the capture tracks (a 10 s VP8 screen is about 3 MB)
MIN_SECRET = 32
HANDSHAKE_TIMEOUT = 10.0
START_DELAY_S = 2.0  # the agents start this long after the run message (on their own clocks)
SAMPLE_LIMIT = 20_000  # delay samples per agent and kind sent back for the merged percentiles
MAX_TRACK_PACKETS = 1_000_000
INFO = b"callsgw loadtest agent v1"


class AgentError(Exception):
    """A coordination problem: one clear line."""


def load_secret(path: str, create: bool = False) -> bytes:
    """The shared secret from ``path`` (at least 32 bytes); with ``create``, a new 32-byte one
    (mode 0600) when the file does not exist."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except FileNotFoundError:
        if not create:
            raise AgentError(f"{path}: no such file (copy the coordinator's --agent-secret-file here)") from None
        data = os.urandom(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise AgentError(f"{path}: cannot create the agent secret: {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        print(f"callsgw loadtest: made a new agent secret in {path} (mode 0600): copy it to every agent machine",
              file=sys.stderr)
        return data
    except OSError as exc:
        raise AgentError(f"{path}: {exc.strerror or exc}") from None
    if len(data) < MIN_SECRET:
        raise AgentError(f"{path}: an agent secret is at least {MIN_SECRET} bytes, this one has {len(data)}")
    return data


class Channel:
    """The sealed messages of one connection (sans-I/O): ``seal(dict) -> bytes`` and ``open(bytes) -> dict``."""

    def __init__(self, secret: bytes, agent_nonce: bytes, coordinator_nonce: bytes, role: str):
        if role not in ("agent", "coordinator"):
            raise ValueError("role is 'agent' or 'coordinator'")
        okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=agent_nonce + coordinator_nonce, info=INFO).derive(secret)
        to_agent, to_coordinator = AESGCM(okm[:32]), AESGCM(okm[32:])
        self.role = role
        self.peer = "coordinator" if role == "agent" else "agent"
        self._out = to_coordinator if role == "agent" else to_agent
        self._in = to_agent if role == "agent" else to_coordinator
        self._out_aad = b"callsgw loadtest " + role.encode() + b" to " + self.peer.encode()
        self._in_aad = b"callsgw loadtest " + self.peer.encode() + b" to " + role.encode()
        self.sent = 0
        self.received = 0

    def seal(self, message: dict) -> bytes:
        nonce = self.sent.to_bytes(GCM_NONCE, "big")
        self.sent += 1
        return nonce + self._out.encrypt(nonce, json.dumps(message, separators=(",", ":")).encode(), self._out_aad)

    def open(self, frame: bytes) -> dict:
        if len(frame) < GCM_NONCE + TAG:
            raise AgentError(f"a message from the {self.peer} is malformed ({len(frame)} bytes)")
        if int.from_bytes(frame[:GCM_NONCE], "big") != self.received:
            raise AgentError(f"a message from the {self.peer} is out of sequence (replayed or reordered)")
        try:
            body = self._in.decrypt(frame[:GCM_NONCE], frame[GCM_NONCE:], self._in_aad)
        except InvalidTag:
            raise AgentError(f"a message from the {self.peer} did not authenticate (a different "
                             "--agent-secret-file, or the message was altered)") from None
        self.received += 1
        try:
            message = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise AgentError(f"a message from the {self.peer} is not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise AgentError(f"a message from the {self.peer} has no type")
        return message


async def _write(writer: asyncio.StreamWriter, frame: bytes) -> None:
    writer.write(len(frame).to_bytes(4, "big") + frame)
    await writer.drain()


async def _read(reader: asyncio.StreamReader, peer: str, timeout: float | None = None) -> bytes:
    try:
        head = await asyncio.wait_for(reader.readexactly(4), timeout)
        n = int.from_bytes(head, "big")
        if n > MAX_FRAME:
            raise AgentError(f"the {peer} sent a frame of {n} bytes (at most {MAX_FRAME})")
        return await asyncio.wait_for(reader.readexactly(n), timeout)
    except asyncio.IncompleteReadError:
        raise AgentError(f"the {peer} closed the connection") from None
    except TimeoutError:
        raise AgentError(f"the {peer} sent nothing for {timeout:g} s") from None
    except ConnectionError as exc:
        raise AgentError(f"the connection to the {peer} failed: {exc}") from None


async def _hello(reader, writer, own: bytes, peer: str) -> bytes:
    """Send our magic and nonce, read theirs."""
    writer.write(MAGIC + own)
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.readexactly(len(MAGIC) + NONCE_BYTES), HANDSHAKE_TIMEOUT)
    except asyncio.IncompleteReadError:
        raise AgentError(f"the {peer} closed the connection during the handshake") from None
    except TimeoutError:
        raise AgentError(f"the {peer} did not answer the handshake within {HANDSHAKE_TIMEOUT:g} s") from None
    except ConnectionError as exc:
        raise AgentError(f"the connection to the {peer} failed: {exc}") from None
    if data[:len(MAGIC)] != MAGIC:
        raise AgentError(f"the {peer} does not speak the callsgw loadtest agent protocol")
    return data[len(MAGIC):]


# -- the capture tracks on the wire ---------------------------------------------------------


def track_to_wire(track) -> dict | None:
    if track is None:
        return None
    return {"kind": track.kind, "codec": track.codec, "clock_rate": track.clock_rate,
            "payload_type": track.payload_type, "offsets": list(track.offsets), "ts_deltas": list(track.ts_deltas),
            "b0": list(track.b0), "markers": list(track.markers), "lengths": [len(r) for r in track.rests],
            "rests": base64.b64encode(b"".join(track.rests)).decode(),
            "loop_seconds": track.loop_seconds, "loop_ts": track.loop_ts}


def track_from_wire(d) -> object:
    """A :class:`loadtest.replay.Track` from the run message, checked (AgentError when malformed)."""
    from loadtest.measure import payload_key
    from loadtest.replay import Track

    if d is None:
        return None
    try:
        n = len(d["offsets"])
        if not 2 <= n <= MAX_TRACK_PACKETS or d["kind"] not in ("voice", "screen"):
            raise ValueError("packet count or kind")
        rests_blob = base64.b64decode(d["rests"], validate=True)
        lengths = [int(x) for x in d["lengths"]]
        if sum(lengths) != len(rests_blob) or any(not 4 <= x <= 1500 for x in lengths):
            raise ValueError("packet lengths")
        rests, at = [], 0
        for x in lengths:
            rests.append(rests_blob[at:at + x])
            at += x
        fields = {
            "offsets": tuple(float(x) for x in d["offsets"]),
            "ts_deltas": tuple(int(x) & 0xFFFFFFFF for x in d["ts_deltas"]),
            "b0": tuple(int(x) & 0xFF for x in d["b0"]), "markers": tuple(int(x) & 0x80 for x in d["markers"]),
        }
        if any(len(v) != n for v in (*fields.values(), rests)):
            raise ValueError("field lengths")
        # the per-packet path's payload hashes are Python's hash() (per process): made here again
        fields["hashes"] = tuple(payload_key(bytes((b0, m)) + bytes(6) + rest)[1]
                                 for b0, m, rest in zip(fields["b0"], fields["markers"], rests))
        loop_seconds = float(d["loop_seconds"])
        if not 0 < loop_seconds < 86400:
            raise ValueError("loop length")
        return Track(kind=d["kind"], codec=str(d["codec"])[:32], clock_rate=int(d["clock_rate"]),
                     payload_type=int(d["payload_type"]) & 0x7F, rests=tuple(rests), loop_seconds=loop_seconds,
                     loop_ts=int(d["loop_ts"]) & 0xFFFFFFFF, **fields)
    except (KeyError, TypeError, ValueError, base64.binascii.Error) as exc:
        raise AgentError(f"the coordinator's run message has a malformed track ({exc})") from None


# -- the coordinator ------------------------------------------------------------------------


def split_calls(calls: int, agents: int) -> list[tuple[int, int]]:
    """[first call, end) per agent: whole calls, as even as they go."""
    base, extra = divmod(calls, agents)
    out, at = [], 0
    for k in range(agents):
        n = base + (1 if k < extra else 0)
        out.append((at, at + n))
        at += n
    return out


def _delay_samples(collector) -> dict:
    """Up to SAMPLE_LIMIT delay samples (ms) overall and per kind, with the packets they stand for."""
    rng = np.random.default_rng()

    def thin(chunks: list, matched: int) -> dict:
        values = np.concatenate(chunks) if chunks else np.zeros(0)
        if len(values) > SAMPLE_LIMIT:
            values = rng.choice(values, SAMPLE_LIMIT, replace=False)
        return {"ms": np.round(values * 1000, 4).tolist(), "matched": matched}

    streams = list(collector.streams.values())
    out = {"all": thin([*collector._delay_chunks, np.asarray(collector.delays, dtype=np.float64)],
                       sum(s.delay_count for s in streams))}
    for kind in ("voice", "screen"):
        chunks = []
        if kind in collector.kind_samples:
            chunks.append(collector.kind_samples[kind].values())
        if collector.kind_delays.get(kind):
            chunks.append(np.asarray(collector.kind_delays[kind], dtype=np.float64))
        out[kind] = thin(chunks, sum(s.delay_count for s in streams if s.kind == kind))
    return out


def _weighted_delay(parts: list[tuple[dict | None, dict]]) -> dict | None:
    """Merge per-agent delay summaries (mean and max exact over every matched packet) and samples
    (percentiles, each agent's samples weighted by the packets they stand for)."""
    parts = [(summary, samples) for summary, samples in parts if summary and samples and samples["ms"]]
    if not parts:
        return None
    values = np.concatenate([np.asarray(s["ms"], dtype=np.float64) for _, s in parts])
    weights = np.concatenate([np.full(len(s["ms"]), s["matched"] / len(s["ms"])) for _, s in parts])
    order = np.argsort(values, kind="stable")
    values, cum = values[order], np.cumsum(weights[order])
    total = cum[-1]

    def rank(q: float) -> float:
        return round(float(values[min(len(values) - 1, int(np.searchsorted(cum, q / 100 * total)))]), 4)

    matched = sum(summary.get("matched", 0) or 0 for summary, _ in parts)
    mean = sum((summary["mean"] or 0) * (summary.get("matched") or 0) for summary, _ in parts)
    return {"samples": len(values), "min": round(float(values[0]), 4),
            "mean": round(mean / matched, 4) if matched else None,
            "p50": rank(50), "p95": rank(95), "p99": rank(99),
            "max": round(max(summary["max"] for summary, _ in parts), 4), "matched": matched,
            "merged": f"percentiles over {len(parts)} agents' samples weighted by the packets each stands for"}


def _jitter(streams: list[dict]) -> tuple[float | None, float | None, float | None]:
    from loadtest.measure import percentile

    jitters = [s["jitter_ms"] for s in streams if s.get("jitter_ms") is not None]
    maxima = [s["max_jitter_ms"] for s in streams if s.get("max_jitter_ms") is not None]
    return (round(sum(jitters) / len(jitters), 4) if jitters else None,
            round(percentile(jitters, 95), 4) if jitters else None,
            round(max(maxima), 4) if maxima else None)


def _sum_keys(dicts: list[dict], keys) -> dict:
    return {k: sum((d or {}).get(k) or 0 for d in dicts) for k in keys}


def merge_reports(results: list[dict], agents: list[dict]) -> dict:
    """One report from the agents' ``(report, samples)`` results; ``agents``: name, peer, calls,
    participant offset per agent."""
    from loadtest.measure import summary_ms

    reports = [r["report"] for r in results]
    samples = [r["samples"] for r in results]
    first = reports[0]
    cfg = dict(first["config"])
    cfg["calls"] = sum(r["config"]["calls"] for r in reports)
    cfg["ramp_up_per_second"] = sum(r["config"]["ramp_up_per_second"] for r in reports)
    for key in ("screen_sharers", "speakers"):
        cfg[key] = sum(r["config"].get(key) or 0 for r in reports)
    cfg["agents"] = len(reports)

    def tag(k: int, rows: list[dict]) -> list[dict]:
        return [{"agent": k, **row} for row in rows]

    # loss: sent and lost summed per stream over the agents
    losses = [r["loss"] for r in reports]
    loss = {"method": first["loss"]["method"] + "; summed over the agents (each measures its own calls)",
            **_sum_keys(losses, ("expected", "received", "lost", "streams", "streams_missing", "streams_stopped"))}
    loss["loss_percent"] = round(100 * loss["lost"] / loss["expected"], 4) if loss["expected"] else 0.0
    loss["by_kind"] = {}
    for kind in ("voice", "screen"):
        k = _sum_keys([lo["by_kind"][kind] for lo in losses], ("streams", "sent", "lost"))
        k["loss_percent"] = round(100 * k["lost"] / k["sent"], 4) if k["sent"] else 0.0
        loss["by_kind"][kind] = k
    loss["sending_stopped_at_s"] = max(lo["sending_stopped_at_s"] for lo in losses)
    loss["per_stream"] = [row for k, lo in enumerate(losses) for row in tag(k, lo["per_stream"])]

    streams = [row for k, r in enumerate(reports) for row in tag(k, r["streams"])]
    totals = _sum_keys([r["totals"] for r in reports], ("streams", "packets_sent", "packets_received", "duplicates",
                                                         "reordered", "sequence_lost", "sequence_expected"))
    totals["sequence_loss_percent"] = (round(100 * totals["sequence_lost"] / totals["sequence_expected"], 4)
                                       if totals["sequence_expected"] else 0.0)
    totals["expected"], totals["lost"], totals["loss_percent"] = loss["expected"], loss["lost"], loss["loss_percent"]
    totals["mean_jitter_ms"], totals["jitter_p95_ms"], totals["max_jitter_ms"] = _jitter(streams)
    totals["delay_ms"] = _weighted_delay([(r["totals"]["delay_ms"], s["all"]) for r, s in zip(reports, samples)])

    by_kind = {}
    for kind in ("voice", "screen"):
        rows = [r["by_kind"][kind] for r in reports]
        mine = [s for s in streams if s["kind"] == kind]
        mean, p95, mx = _jitter(mine)
        rates = [(row["received_kbps_per_stream"], row["streams"]) for row in rows if row.get("received_kbps_per_stream")]
        weight = sum(n for _, n in rates)
        by_kind[kind] = {
            "streams": sum(row["streams"] for row in rows),
            "packets_received": sum(row["packets_received"] for row in rows),
            "jitter_ms": {"mean": mean, "p95": p95, "max": mx},
            "delay_ms": _weighted_delay([(row.get("delay_ms"), s[kind]) for row, s in zip(rows, samples)]),
            "received_kbps_per_stream": ({"mean": round(sum(r["mean"] * n for r, n in rates) / weight, 2),
                                          "min": min(r["min"] for r, _ in rates), "max": max(r["max"] for r, _ in rates)}
                                         if weight else None),
            "loss": loss["by_kind"][kind],
            "sent_kbps_per_stream": rows[0].get("sent_kbps_per_stream"),
        }

    parts = [r["participants"] for r in reports]
    errors: dict[str, int] = {}
    for p in parts:
        for error, n in p["errors"].items():
            errors[error] = errors.get(error, 0) + n
    participants = {**_sum_keys(parts, ("planned", "joined", "failed", "join_retries", "rate_limited_participants")),
                    "errors": errors}
    convergence = _sum_keys([r["convergence"] for r in reports],
                            ("participants_checked", "expected_streams", "participants_with_missing_streams",
                             "missing_streams", "unattributed_streams"))
    per_participant = []
    for k, (r, a) in enumerate(zip(reports, agents)):
        for row in r["per_participant"]:
            per_participant.append({**row, "agent": k, "index": row["index"] + a["offset"]})
    handshakes = [v for r in reports for v in r["handshake_ms"].get("values", ())]
    handshake = {**(summary_ms([v / 1000 for v in handshakes]) or {}), "values": handshakes}

    failures = []
    for k, (r, a) in enumerate(zip(reports, agents)):
        for f in r["failures"]:
            failures.append({**f, "agent": k, "detail": f"agent {k} ({a['name']}): {f['detail']}"})
    testers = [r["tester"] for r in reports]
    warnings = [f"agent {k} ({a['name']}): {w}" for k, (t, a) in enumerate(zip(testers, agents)) for w in t["warnings"]]
    lags = [t["send_lag_ms"] for t in testers if t.get("send_lag_ms")]
    tester = {
        "cpu_seconds": round(sum(t["cpu_seconds"] for t in testers), 3),
        "cpu_percent_of_one_core": max(t["cpu_percent_of_one_core"] for t in testers),
        "cpu_percent_note": "the busiest agent's (each agent is its own process)",
        "send_lag_ms": ({"p95": max(x["p95"] for x in lags), "max": max(x["max"] for x in lags),
                         "note": "the largest over the agents"} if lags else None),
        "media_path": testers[0].get("media_path"),
        "bottleneck": any(t["bottleneck"] for t in testers),
        "warnings": warnings,
        "per_agent": testers,
    }
    impairments = [r.get("impairment") or {} for r in reports]
    impairment = {k: v for k, v in impairments[0].items() if k not in ("send", "receive")}
    if "impaired_calls" in impairment:  # each agent was told its share of the first K calls
        shares = [i.get("impaired_calls") for i in impairments]
        impairment["impaired_calls"] = None if any(x is None for x in shares) else sum(shares)
    sends = [i["send"] for i in impairments if i.get("send")]
    if sends:
        keys = ("publishers", "packets", "bytes_in", "dropped_loss", "dropped_rate_limit", "sent", "bytes_out",
                "send_errors", "held_at_end", "calls", "cpu_seconds")
        send = _sum_keys(sends, keys)
        passed = send["packets"] - send["dropped_rate_limit"]
        send["loss_applied_percent"] = round(100 * send["dropped_loss"] / passed, 4) if passed else 0.0
        send["rate_limit_drop_percent"] = (round(100 * send["dropped_rate_limit"] / send["packets"], 4)
                                           if send["packets"] else 0.0)
        send["cost_us_per_packet"] = round(send["cpu_seconds"] * 1e6 / send["packets"], 3) if send["packets"] else None
        lates = [(x["release_late_ms"], x["release_late_ms"]["packets"]) for x in sends if x.get("release_late_ms")]
        count = sum(n for _, n in lates)
        send["release_late_ms"] = ({"mean": round(sum(x["mean"] * n for x, n in lates) / count, 3),
                                    "max": max(x["max"] for x, _ in lates), "packets": count} if count else None)
        impairment["send"] = send
    recvs = [i["receive"] for i in impairments if i.get("receive")]
    if recvs:
        recv = _sum_keys(recvs, ("subscribers", "records", "dropped_loss"))
        recv["loss_applied_percent"] = round(100 * recv["dropped_loss"] / recv["records"], 4) if recv["records"] else 0.0
        impairment["receive"] = recv

    return {
        "config": cfg,
        "shared_host": any(r["shared_host"] for r in reports),
        "note": first["note"] + f"; {len(reports)} agents ran the participants",
        "run_seconds": max(r["run_seconds"] for r in reports),
        "interrupted": next((r["interrupted"] for r in reports if r["interrupted"]), None),
        "failures": failures,
        "loss": loss,
        "hold": None,
        "participants": participants,
        "convergence": convergence,
        "per_participant": per_participant,
        "handshake_ms": handshake,
        "totals": totals,
        "by_kind": by_kind,
        "streams": streams,
        "tester": tester,
        "impairment": impairment,
        "gateway": {"pid": None, "note": "not measured: the coordinator measures a gateway on its own host "
                                         "(--gateway-pid, or auto with a loopback --url)"},
        "agents": {
            "count": len(reports),
            "split": "whole calls per agent (a call is never split across agents)",
            "one_way_delay": ("measured only between a publisher and a subscriber on the same agent, each agent on "
                              "its own clock; every pair here is on one agent (calls are not split), so no clock is "
                              "shared or compared between agents"),
            "per_agent": [{"agent": k, "name": a["name"], "peer": a["peer"], "calls": list(a["calls"]),
                           "first_participant": a["offset"], "planned": r["participants"]["planned"],
                           "joined": r["participants"]["joined"], "packets_sent": r["totals"]["packets_sent"],
                           "packets_received": r["totals"]["packets_received"], "expected": r["loss"]["expected"],
                           "lost": r["loss"]["lost"], "loss_percent": r["loss"]["loss_percent"],
                           "tester_cpu_percent": r["tester"]["cpu_percent_of_one_core"]}
                          for k, (r, a) in enumerate(zip(reports, agents))],
        },
        "timeline": _merge_timelines([r["timeline"] for r in reports]),
    }


def _merge_timelines(timelines: list[list[dict]]) -> list[dict]:
    """One point a second: counts and rates summed over the agents, the rest averaged."""
    additive = {"connected", "sent_pps", "received_pps", "tester_cpu_percent", "received_total"}
    by_second: dict[int, list[dict]] = {}
    for timeline in timelines:
        for point in timeline:
            by_second.setdefault(int(round(point["t"])), []).append(point)
    out = []
    for second in sorted(by_second):
        points = by_second[second]
        merged = {"t": round(max(p["t"] for p in points), 3)}
        for key in {k for p in points for k in p} - {"t"}:
            values = [p[key] for p in points if isinstance(p.get(key), (int, float)) and not isinstance(p[key], bool)]
            if not values:
                continue
            merged[key] = round(sum(values), 4) if key in additive else round(sum(values) / len(values), 4)
        merged["agents_reporting"] = len(points)
        out.append(merged)
    return out


async def coordinate(args, prep: dict, on_line=None) -> list[dict] | None:
    """Wait for ``args.agents`` agents, send each its share, collect their results. Returns the
    results (each {"report", "samples"}) with ``args.agent_shares`` set, or raises AgentError."""
    from callsgw.signaling import tokens

    from loadtest.replay import RunConfig

    say = on_line or (lambda line: print(f"callsgw loadtest: {line}", file=sys.stderr, flush=True))
    n = args.agents
    secret = load_secret(args.agent_secret_file, create=True)
    host, _, port = args.agent_listen.rpartition(":")
    joined: list[tuple[str, str, Channel, asyncio.StreamReader, asyncio.StreamWriter]] = []
    ready = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = "%s:%s" % writer.get_extra_info("peername")[:2]
        if ready.is_set():
            writer.close()
            return
        channel = None
        try:
            own = os.urandom(NONCE_BYTES)
            theirs = await _hello(reader, writer, own, "agent")
            channel = Channel(secret, theirs, own, "coordinator")
            hello = channel.open(await _read(reader, "agent", HANDSHAKE_TIMEOUT))
            if hello["type"] != "hello":
                raise AgentError(f"expected the agent's hello, got {hello['type']!r}")
        except AgentError as exc:
            say(f"agent {peer} refused: {exc}")
            if channel is not None:  # sealed: an agent with another secret reads "did not authenticate"
                try:
                    await _write(writer, channel.seal({"type": "error", "message": f"refused: {exc}"}))
                except OSError:
                    pass
            writer.close()
            return
        name = str(hello.get("name") or peer)[:64]
        if ready.is_set():
            writer.close()
            return
        joined.append((name, peer, channel, reader, writer))
        say(f"agent {len(joined) - 1} ({name}) connected from {peer} ({len(joined)} of {n})")
        if len(joined) == n:
            ready.set()

    try:
        server = await asyncio.start_server(handle, host.strip("[]") or "127.0.0.1", int(port))
    except OSError as exc:
        raise AgentError(f"--agent-listen {args.agent_listen}: {exc.strerror or exc}") from None
    where = server.sockets[0].getsockname()
    say(f"waiting for {n} agents on {where[0]}:{where[1]} (callsgw loadtest agent --coordinator "
        f"{where[0]}:{where[1]} --agent-secret-file {args.agent_secret_file})")
    args.agent_address = f"{where[0]}:{where[1]}"
    try:
        try:
            await asyncio.wait_for(ready.wait(), args.agent_wait)
        except TimeoutError:
            raise AgentError(f"only {len(joined)} of {n} agents connected within --agent-wait {args.agent_wait:g} s")
    finally:
        server.close()
    shares = split_calls(args.calls, n)
    ppc = args.participants_per_call
    prefix = RunConfig.__dataclass_fields__["call_prefix"].default_factory()
    start_at = time.time() + START_DELAY_S
    args.agent_shares = []
    offset = 0
    for k, ((name, peer, channel, _, writer), (c0, c1)) in enumerate(zip(joined, shares)):
        calls = c1 - c0
        ttl = max(3600.0, args.duration + args.join_timeout + 600)
        minted = [tokens.mint(prep["secret"], call=f"{prefix}-{c0 + i % calls}", name=f"vp{offset + i}",
                              sub=f"vp{offset + i}", ttl=ttl) for i in range(calls * ppc)]
        imp = args.impairment
        message = {
            "type": "run", "agent": k, "url": args.url, "verify_tls": not args.insecure, "calls": calls,
            "participants_per_call": ppc, "duration": args.duration, "speed": args.speed,
            "ramp_up": args.ramp_up / n, "join_timeout": args.join_timeout,
            "speakers_per_call": args.speakers_per_call, "call_prefix": prefix, "index_offset": offset,
            "tokens": minted, "voice": track_to_wire(prep["voice"]), "video": track_to_wire(prep["video"]),
            "impairment": {"loss": imp.loss, "jitter": imp.jitter, "rate_kbps": imp.rate_kbps, "side": imp.side,
                           "seed": imp.seed,  # --impaired-calls: this agent's share of the first K calls
                           "calls": None if imp.calls is None else max(0, min(calls, imp.calls - c0))}
            if imp.active else None,
            "start_at": start_at,
        }
        args.agent_shares.append({"name": name, "peer": peer, "calls": (c0, c1), "offset": offset})
        offset += calls * ppc
        await _write(writer, channel.seal(message))
    plan = ", ".join(f"{a['name']}: calls {a['calls'][0]}..{a['calls'][1] - 1}" for a in args.agent_shares)
    say(f"the run starts on {n} agents ({plan})")

    async def collect(k: int) -> dict:
        name, _, channel, reader, _ = joined[k]
        while True:
            message = channel.open(await _read(reader, f"agent {k} ({name})",
                                               args.duration + args.join_timeout + 120))
            if message["type"] == "result":
                report, samples = message.get("report"), message.get("samples")
                if not isinstance(report, dict) or not isinstance(samples, dict):
                    raise AgentError(f"agent {k} ({name}) sent a malformed result")
                say(f"agent {k} ({name}) finished: {report['participants']['joined']}/"
                    f"{report['participants']['planned']} joined, loss {report['loss']['loss_percent']:.3f}%")
                return {"report": report, "samples": samples}
            if message["type"] == "error":
                raise AgentError(f"agent {k} ({name}): {str(message.get('message'))[:500]}")

    args.gateway_samples = []
    sampler = asyncio.create_task(_sample_gateway(prep.get("gateway_pid"), start_at, args.gateway_samples))
    stopping = asyncio.Event()

    async def forward_stop() -> None:
        await stopping.wait()
        for _, _, channel, _, writer in joined:
            try:
                await _write(writer, channel.seal({"type": "stop", "signal": args.agent_stop_signal}))
            except (OSError, AgentError):
                pass

    args.agent_stop = lambda name: (setattr(args, "agent_stop_signal", name), stopping.set())
    stopper = asyncio.create_task(forward_stop())
    try:
        return await asyncio.gather(*(collect(k) for k in range(n)))
    finally:
        stopper.cancel()
        sampler.cancel()
        for *_, writer in joined:
            writer.close()


async def _sample_gateway(pid: int | None, start_at: float, samples: list) -> None:
    """A local gateway (--gateway-pid, found as for a local run) sampled by the coordinator once a
    second from the agents' common start: (s since the start, CPU seconds, RSS bytes)."""
    if pid is None:
        return
    from loadtest.gateway_probe import GatewayProbe, ProbeError

    try:
        probe = GatewayProbe(pid)
    except ProbeError:
        return
    await asyncio.sleep(max(0.0, start_at - time.time()))
    while True:
        now = probe.read()
        if now is None:
            return
        samples.append((time.time() - start_at, *now))
        await asyncio.sleep(1.0 - (time.time() - start_at) % 1.0)


def _attach_gateway(report: dict, samples: list, pid: int) -> None:
    """The coordinator's gateway samples on the merged timeline (the nearest within 0.6 s of each
    second), then the gateway section as a local run makes it."""
    from loadtest.gateway_probe import gateway_summary

    last = None
    for point in report["timeline"]:
        near = min(samples, key=lambda x: abs(x[0] - point["t"]), default=None)
        if near is None or abs(near[0] - point["t"]) > 0.6:
            continue
        point["gateway_cpu_s"] = round(near[1], 3)
        point["gateway_rss_mb"] = round(near[2] / 2**20, 1)
        if last is not None and point["t"] > last["t"]:
            dt = point["t"] - last["t"]
            forwarded = point.get("received_total", 0) - last.get("received_total", 0)
            point["gateway_cpu_percent"] = round(100 * (near[1] - last["gateway_cpu_s"]) / dt, 1)
            point["gateway_us_per_forwarded"] = (round((near[1] - last["gateway_cpu_s"]) / forwarded * 1e6, 2)
                                                 if forwarded > 0 else None)
        last = point
    summary = gateway_summary(report["timeline"], pid)
    summary["sampled_by"] = "the coordinator (the gateway runs on its host), on the agents' merged timeline"
    report["gateway"] = summary


def execute_coordinated(args, prep: dict) -> dict | int:
    """``loadtest run --agents N``: the merged report with thresholds and identity, or the exit status."""
    import signal

    from loadtest import cli

    interrupted = []

    async def main() -> list[dict]:
        loop = asyncio.get_running_loop()
        installed = []
        task = asyncio.current_task()

        def on_signal(sig) -> None:
            stop = getattr(args, "agent_stop", None)
            if stop is None:  # still waiting for the agents: nothing ran, nothing to report
                interrupted.append(sig.name)
                task.cancel()
                return
            print(f"callsgw loadtest: {sig.name}: telling the agents to end the run and write the results "
                  "(again to abort)", file=sys.stderr, flush=True)
            stop(sig.name)
            loop.remove_signal_handler(sig)

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
            except (ValueError, RuntimeError, NotImplementedError):
                pass
        try:
            return await coordinate(args, prep)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    started = cli._utc_now()
    try:
        results = asyncio.run(main())
    except AgentError as exc:
        cli._err(str(exc))
        return cli.EXIT_BAD_INPUT
    except asyncio.CancelledError:
        name = interrupted[0] if interrupted else "SIGINT"
        cli._err(f"interrupted ({name}) before the agents started the run")
        return cli.EXIT_INTERRUPTED.get(name, cli.EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        cli._err("interrupted twice: aborted without results")
        return cli.EXIT_INTERRUPTED["SIGINT"]
    report = merge_reports(results, args.agent_shares)
    if prep.get("gateway_pid") is not None and getattr(args, "gateway_samples", None):
        _attach_gateway(report, args.gateway_samples, prep["gateway_pid"])
    report["config"]["participants_per_call"] = args.participants_per_call
    report["config"]["agent_listen"] = getattr(args, "agent_address", args.agent_listen)
    from loadtest.thresholds import evaluate

    report["thresholds"] = evaluate(report, args)
    report["config"]["captures"] = list(args.capture)
    report["config"]["streams_used"] = prep["used"]
    identity = cli.run_identity(args, started, cli._utc_now(), prep["chosen"])
    return {"identity": identity, **report}


# -- the agent ------------------------------------------------------------------------------


def _config_from(message: dict):
    from loadtest.impair import Impairment
    from loadtest.replay import RunConfig

    try:
        calls, ppc = int(message["calls"]), int(message["participants_per_call"])
        minted = message["tokens"]
        if not (1 <= calls <= 100_000 and 1 <= ppc <= 10_000) or not isinstance(minted, list) \
                or len(minted) != calls * ppc or not all(isinstance(t, str) and len(t) < 4096 for t in minted):
            raise ValueError("calls, participants or tokens")
        url = str(message["url"])
        if not url.startswith(("wss://", "ws://")):
            raise ValueError("url")
        duration = float(message["duration"])
        if not 0 < duration <= 86400:
            raise ValueError("duration")
        imp = message.get("impairment")
        impairment = None
        if imp is not None:
            impairment = Impairment(loss=float(imp["loss"]), jitter=float(imp["jitter"]),
                                    rate_kbps=None if imp["rate_kbps"] is None else float(imp["rate_kbps"]),
                                    side=imp["side"] if imp["side"] in ("send", "receive", "both") else "send",
                                    seed=int(imp["seed"]),
                                    calls=None if imp.get("calls") is None else int(imp["calls"]))
        speakers = message.get("speakers_per_call")
        config = RunConfig(
            url=url, secret=b"", calls=calls, participants_per_call=ppc, voice=track_from_wire(message["voice"]),
            video=track_from_wire(message.get("video")), duration=duration, speed=float(message["speed"]),
            ramp_up=float(message["ramp_up"]), ssl=None if message["verify_tls"] else False,
            join_timeout=float(message["join_timeout"]), gateway_note="not measured by an agent",
            speakers_per_call=None if speakers is None else int(speakers), impairment=impairment,
            tokens=minted, index_offset=int(message["index_offset"]),
        )
        config.call_prefix = str(message["call_prefix"])[:32]
        start_at = float(message["start_at"])
    except AgentError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise AgentError(f"the coordinator's run message is malformed ({exc})") from None
    if config.voice is None or not config.speed > 0 or not config.ramp_up >= 0:
        raise AgentError("the coordinator's run message is malformed (voice, speed or ramp-up)")
    return config, start_at


async def run_agent(coordinator: str, secret: bytes, name: str, connect_timeout: float, say=None) -> int:
    """Connect, get a share, run it, send the report back. The exit status."""
    from loadtest.replay import LoadRun, ReplayError

    say = say or (lambda line: print(f"callsgw loadtest agent: {line}", file=sys.stderr, flush=True))
    host, _, port = coordinator.rpartition(":")
    deadline = time.monotonic() + connect_timeout
    while True:
        try:
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            break
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise AgentError(f"cannot reach the coordinator at {coordinator} within --connect-timeout "
                                 f"{connect_timeout:g} s: {exc.strerror or exc}") from None
            await asyncio.sleep(0.2)
    try:
        own = os.urandom(NONCE_BYTES)
        theirs = await _hello(reader, writer, own, "coordinator")
        channel = Channel(secret, own, theirs, "agent")
        await _write(writer, channel.seal({"type": "hello", "name": name}))
        say(f"connected to the coordinator at {coordinator}; waiting for the run")
        message = channel.open(await _read(reader, "coordinator"))
        if message["type"] == "error":
            raise AgentError(f"the coordinator refused: {str(message.get('message'))[:500]}")
        if message["type"] != "run":
            raise AgentError(f"expected a run message from the coordinator, got {message['type']!r}")
        config, start_at = _config_from(message)
        say(f"running {config.calls} call(s) of {config.participants_per_call} participants for "
            f"{config.duration:g} s (participants vp{config.index_offset}.."
            f"vp{config.index_offset + config.calls * config.participants_per_call - 1})")
        await asyncio.sleep(max(0.0, min(START_DELAY_S * 5, start_at - time.time())))
        load = LoadRun(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # ends this share cleanly; its report still goes back
            try:
                loop.add_signal_handler(sig, load.interrupt, sig.name)
            except (ValueError, RuntimeError, NotImplementedError):
                pass

        async def listen() -> None:  # a stop from the coordinator; anything else is an error
            while True:
                m = channel.open(await _read(reader, "coordinator"))
                if m["type"] == "stop":
                    load.interrupt(str(m.get("signal") or "SIGINT")[:16])
                else:
                    raise AgentError(f"unexpected {m['type']!r} message from the coordinator during the run")

        listener = asyncio.create_task(listen())
        try:
            report = await load.run()
        except ReplayError as exc:
            await _write(writer, channel.seal({"type": "error", "message": str(exc)}))
            say(str(exc))
            return 2
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        if listener.done() and not listener.cancelled() and isinstance(listener.exception(), AgentError):
            raise listener.exception()
        result = {"type": "result", "report": report, "samples": _delay_samples(load.collector)}
        await _write(writer, channel.seal(result))
        say(f"done: {report['participants']['joined']}/{report['participants']['planned']} joined, "
            f"loss {report['loss']['loss_percent']:.3f}%; report sent")
        return 0
    finally:
        writer.close()


def add_parser(sub) -> None:
    p = sub.add_parser(
        "agent",
        help="run a share of a 'loadtest run --agents N' on this machine",
        description="Connect to the coordinator ('callsgw loadtest run --agents N --agent-listen HOST:PORT "
        "--agent-secret-file FILE ...') at --coordinator, prove knowledge of the shared secret (the same "
        "--agent-secret-file, copied from the coordinator), run the whole calls it assigns (the capture tracks, "
        "one token per participant and the start time come with them, sealed: AES-256-GCM under keys derived "
        "with HKDF from the secret and both sides' nonces; the gateway's signing secret stays with the "
        "coordinator), and send the report back; the coordinator writes the one merged report. A message that "
        "does not authenticate or parse ends it with one line. Exit status: 0 the share ran and its report was "
        "sent; 2 bad input, an unreachable coordinator, a wrong secret or a bad message, or a run that could "
        "not start (told to the coordinator too).")
    p.add_argument("--coordinator", required=True, metavar="HOST:PORT",
                   help="The coordinator's --agent-listen address.")
    p.add_argument("--agent-secret-file", required=True, metavar="FILE",
                   help="The coordinator's shared secret (at least 32 bytes; the coordinator makes one when absent).")
    p.add_argument("--name", default=None, help="This agent's name in the report. Default: host name and pid.")
    p.add_argument("--connect-timeout", type=float, default=60.0, metavar="S",
                   help="Keep trying to reach the coordinator this long. Default 60.")


def main(args) -> int:
    def err(message: str) -> None:
        print(f"callsgw loadtest agent: error: {message}", file=sys.stderr)

    if ":" not in args.coordinator or not args.coordinator.rpartition(":")[2].isdigit():
        err(f"--coordinator must be HOST:PORT, got {args.coordinator!r}")
        return 2
    try:
        secret = load_secret(args.agent_secret_file)
        name = args.name or f"{socket.gethostname()}-{os.getpid()}"
        return asyncio.run(run_agent(args.coordinator, secret, name, args.connect_timeout))
    except AgentError as exc:
        err(str(exc))
        return 2
    except KeyboardInterrupt:
        err("interrupted")
        return 130

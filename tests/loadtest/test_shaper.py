"""loadtest/shaper.py: the shaped link between one client and the gateway (issue #19 deliverable 4).

The :class:`Link` model is checked with a simulated clock (exact figures); the
:class:`Shaper` thread on real loopback sockets against a UDP echo (generous bounds: two
shared vCPUs); the SDP rewrite on the gateway's own answer and on broken input; the CLI as a
subprocess; and end to end, a real gateway with one Python client behind the shaper and one
beside it, exchanging voice through it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from loadtest.shaper import Link, LinkConfig, SdpRewriteError, Shaper, apply_control, parse_rate, \
    rewrite_sdp_candidates

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------- the model, simulated clock


def drive(link: Link, sends: list[tuple[float, bytes]], until: float, step: float = 0.0005):
    """Push each (time, data) and collect (time, data) out, stepping a simulated clock."""
    out, i, now = [], 0, 0.0
    while now <= until:
        while i < len(sends) and sends[i][0] <= now:
            link.push(now, sends[i][1], None)
            i += 1
        out.extend((now, d) for d, _ in link.pop_due(now))
        now += step
    return out


def test_rate_cap_holds_exactly_on_a_simulated_clock():
    link = Link(LinkConfig(rate_bps=400_000, burst_bytes=3000, queue_packets=10_000))
    sends = [(k * 0.005, b"x" * 972) for k in range(1000)]  # 1000 B on the wire every 5 ms: 1.6 Mbit/s offered
    out = drive(link, sends, 5.0)
    window = [t for t, _ in out if 1.0 <= t < 4.0]
    rate = len(window) * 1000 * 8 / 3.0
    assert abs(rate - 400_000) / 400_000 < 0.01, rate
    assert link.counters["dropped_queue"] == 0


def test_burst_passes_at_once_then_the_rate():
    link = Link(LinkConfig(rate_bps=80_000, burst_bytes=5000, overhead_bytes=0))
    for _ in range(5):
        link.push(0.0, b"b" * 1000)
    assert len(link.pop_due(0.0)) == 5  # the full bucket lets the burst through
    link.push(0.0, b"b" * 1000)
    assert link.pop_due(0.05) == []
    assert link.next_deadline(0.05) == pytest.approx(0.1)  # 1000 B at 10 kB/s
    assert len(link.pop_due(0.1)) == 1


def test_packet_bigger_than_the_bucket_is_not_stuck():
    link = Link(LinkConfig(rate_bps=8000, burst_bytes=100, overhead_bytes=0))
    link.push(0.0, b"z" * 1000)
    assert len(link.pop_due(0.0)) == 1  # a full bucket lets it go, and goes negative
    link.push(0.0, b"z" * 10)
    assert link.pop_due(0.5) == []  # 900 B of debt plus 10 B at 1000 B/s
    assert link.next_deadline(0.5) == pytest.approx(0.91)


def test_default_bucket_is_10_ms_of_the_rate_and_at_least_3000_bytes():
    assert LinkConfig(rate_bps=10_000_000).bucket() == 12_500
    assert LinkConfig(rate_bps=400_000).bucket() == 3000 and LinkConfig().bucket() == 3000
    assert LinkConfig(rate_bps=10_000_000, burst_bytes=1500).bucket() == 1500
    link = Link(LinkConfig(rate_bps=400_000))
    link.configure(0.0, rate_bps=10_000_000)
    link.configure(1.0, rate_bps=10_000_000)
    assert link.tokens == 12_500  # the deeper bucket of the new rate fills


def test_fixed_delay_keeps_order():
    link = Link(LinkConfig(delay_s=0.05))
    for k in range(10):
        link.push(k * 0.001, bytes([k]))
    assert link.pop_due(0.0499) == []
    assert [d for d, _ in link.pop_due(0.06)] == [bytes([k]) for k in range(10)]


def test_loss_fraction_is_seeded_and_near_the_setting():
    def run(seed):
        link = Link(LinkConfig(loss=0.1), rng=random.Random(seed))
        return [link.push(0.0, b"p") for _ in range(20_000)]

    a, b, c = run(7), run(7), run(8)
    assert a == b and a != c
    assert 0.09 < a.count(False) / len(a) < 0.11


def test_queue_limits_drop_at_the_tail():
    link = Link(LinkConfig(rate_bps=8000, burst_bytes=100, queue_packets=3, overhead_bytes=0))
    accepted = [link.push(0.0, bytes([k]) * 200) for k in range(6)]
    # the first leaves at once (full bucket), three wait, the rest find the queue full
    assert accepted == [True, True, True, True, False, False]
    assert link.counters["dropped_queue"] == 2 and link.queue_peak_packets == 3
    link = Link(LinkConfig(rate_bps=8000, burst_bytes=100, queue_bytes=500, overhead_bytes=0))
    accepted = [link.push(0.0, b"q" * 200) for _ in range(5)]
    assert accepted == [True, True, True, False, False]
    assert link.queue_peak_bytes == 400


def test_lifting_the_cap_releases_the_queue_at_once():
    link = Link(LinkConfig(rate_bps=8000, burst_bytes=100, overhead_bytes=0))
    for _ in range(20):
        link.push(0.0, b"w" * 100)
    link.pop_due(0.0)
    assert len(link.queue) == 19
    link.configure(0.2, rate_bps=None)
    assert len(link.pop_due(0.2)) == 19 and not link.queue
    with pytest.raises(ValueError):
        link.configure(0.3, loss=1.5)
    assert link.config.rate_bps is None  # a refused change changes nothing


# ------------------------------------------------------------------------ the thread, real sockets


class Echo:
    """A UDP echo standing in for the gateway's media port."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.seen: list[tuple[bytes, tuple]] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                data, addr = self.sock.recvfrom(70_000)
            except OSError:
                return
            self.seen.append((data, addr))
            self.sock.sendto(data, addr)

    def close(self):
        self.sock.close()


@pytest.fixture
def echo():
    e = Echo()
    yield e
    e.close()


def client(shaper: Shaper) -> socket.socket:
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.connect(shaper.address)
    c.settimeout(2)
    return c


def blast(sock: socket.socket, seconds: float, size: int, interval: float, stop=None) -> list[tuple[float, int]]:
    """Send `size`-byte datagrams every `interval` s for `seconds` while a thread collects the echoes."""
    got: list[tuple[float, int]] = []
    sock.settimeout(0.3)

    def rx():
        while True:
            try:
                got.append((time.monotonic(), len(sock.recv(70_000))))
            except (socket.timeout, OSError):
                return

    t = threading.Thread(target=rx)
    t.start()
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < seconds:
        if stop is not None:
            stop(time.monotonic() - start)
        sock.send(b"r" * size)
        k += 1
        time.sleep(max(0.0, start + k * interval - time.monotonic()))
    t.join()
    return got


def throughput(got, start: float, end: float, overhead: int = 28) -> float:
    window = [(t, n) for t, n in got if start <= t < end]
    return sum(n + overhead for _, n in window) * 8 / (end - start)


def test_shaper_holds_400_kbit_s_on_loopback(echo):
    with Shaper(("127.0.0.1", 0), echo.address, up=LinkConfig(rate_bps=400_000, queue_packets=2000)) as shaper:
        c = client(shaper)
        t0 = time.monotonic()
        got = blast(c, 4.0, 1172, 0.008)  # 1.2 Mbit/s offered
        rate = throughput(got, t0 + 0.5, t0 + 3.5)
        counters = shaper.counters()
    assert 0.93 * 400_000 < rate < 1.07 * 400_000, rate
    assert counters["up"]["queue_peak_packets"] > 100
    assert counters["down"]["out_packets"] == len(got)


def test_shaper_adds_the_delay(echo):
    def rtts(shaper):
        c = client(shaper)
        out = []
        for _ in range(20):
            t = time.monotonic()
            c.send(b"ping")
            c.recv(100)
            out.append(time.monotonic() - t)
            time.sleep(0.005)
        return sorted(out)[len(out) // 2]

    with Shaper(("127.0.0.1", 0), echo.address) as plain:
        base = rtts(plain)
    with Shaper(("127.0.0.1", 0), echo.address, up=LinkConfig(delay_s=0.03), down=LinkConfig(delay_s=0.02)) as shaped:
        delayed = rtts(shaped)
    assert 0.048 < delayed - base < 0.065, (base, delayed)


def test_shaper_loss_with_a_seed(echo):
    with Shaper(("127.0.0.1", 0), echo.address, down=LinkConfig(loss=0.2), seed=3) as shaper:
        c = client(shaper)
        got = blast(c, 1.0, 100, 0.001)
        counters = shaper.counters()
    sent = counters["up"]["in_packets"]
    assert sent > 300
    assert 0.13 < 1 - len(got) / sent < 0.27
    assert counters["down"]["dropped_loss"] == sent - len(got)


def test_queue_limit_drops_and_counts(echo):
    with Shaper(("127.0.0.1", 0), echo.address,
                down=LinkConfig(rate_bps=200_000, queue_packets=5, burst_bytes=1500)) as shaper:
        c = client(shaper)
        for _ in range(100):
            c.send(b"d" * 1000)  # 2 MB/s: the up link passes them, the down link queues 5
            time.sleep(0.0005)  # (not all at once: a socket buffer on the way would drop some)
        time.sleep(1.0)
        down = shaper.counters()["down"]
    assert down["in_packets"] >= 95
    assert down["dropped_queue"] >= 75
    assert down["queue_peak_packets"] == 5
    assert down["out_packets"] + down["dropped_queue"] == down["in_packets"]


def test_cap_changed_at_runtime(echo):
    with Shaper(("127.0.0.1", 0), echo.address, down=LinkConfig(rate_bps=200_000, queue_bytes=20_000)) as shaper:
        c = client(shaper)
        lifted = []

        def lift(elapsed):
            if elapsed >= 2.0 and not lifted:
                shaper.set_rate("down", 1_000_000)
                lifted.append(time.monotonic())

        t0 = time.monotonic()
        got = blast(c, 3.5, 1172, 0.012, stop=lift)  # 800 kbit/s offered
        before = throughput(got, t0 + 0.5, t0 + 1.9)
        after = throughput(got, lifted[0] + 0.5, t0 + 3.4)
        assert shaper.counters()["down"]["config"]["rate_bps"] == 1_000_000
    assert 0.85 * 200_000 < before < 1.15 * 200_000, before
    assert 0.85 * 800_000 < after < 1.15 * 800_000, after  # the offered load, no longer capped
    with pytest.raises(ValueError):
        shaper.configure("sideways", rate_bps=1)


def test_odd_datagrams_pass_unchanged_and_flows_are_bounded(echo):
    odd = [b"", b"\x00", bytes(range(256)) * 4, os.urandom(1500), b"\x16\xfe\xfd" + os.urandom(60),
           b"\x80" * 12, os.urandom(60_000)]
    with Shaper(("127.0.0.1", 0), echo.address, up=LinkConfig(loss=0.0), max_flows=2) as shaper:
        c = client(shaper)
        for data in odd:
            c.send(data)
            assert c.recv(70_000) == data
        others = [client(shaper) for _ in range(3)]
        for o in others:
            o.send(b"hello")
        assert others[0].recv(100) == b"hello"
        time.sleep(0.2)
        with pytest.raises(socket.timeout):
            others[1].settimeout(0.2)
            others[1].recv(100)
        counters = shaper.counters()
    assert counters["flows"] == 2 and counters["up"]["dropped_flows"] == 2
    # the gateway saw the shaper's upstream sockets, never the clients' own addresses
    assert {addr for _, addr in echo.seen}.isdisjoint({c.getsockname(), *(o.getsockname() for o in others)})


def test_gateway_gone_does_not_kill_the_shaper():
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    address = dead.getsockname()
    dead.close()  # nothing listens: ICMP port unreachable on the upstream socket
    with Shaper(("127.0.0.1", 0), address) as shaper:
        c = client(shaper)
        for _ in range(20):
            c.send(b"x")
            time.sleep(0.005)
        time.sleep(0.1)
        assert shaper._thread.is_alive()
        assert shaper.counters()["up"]["out_packets"] == 20


# ------------------------------------------------------------------------------- the SDP rewrite


GATEWAY_ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=ice-lite\r\n"
    "m=audio 40000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\n"
    "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n"
    "a=candidate:2 1 udp 2130706175 10.0.0.5 40000 typ host\r\n"
    "a=candidate:3 1 tcp 1518280447 127.0.0.1 40001 typ host tcptype passive\r\n"
    "a=end-of-candidates\r\n"
    "m=video 40000 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\na=mid:1\r\n"
    "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n"
    "a=end-of-candidates\r\n"
)


def test_rewrite_points_the_gateway_candidate_at_the_shaper():
    out = rewrite_sdp_candidates(GATEWAY_ANSWER, ("127.0.0.1", 40000), ("127.0.0.1", 51234))
    cands = [line for line in out.split("\r\n") if line.startswith("a=candidate:")]
    assert cands == ["a=candidate:1 1 udp 2130706431 127.0.0.1 51234 typ host"] * 2
    assert "a=end-of-candidates" in out and out.endswith("\r\n") and "\n" not in out.replace("\r\n", "")
    kept = rewrite_sdp_candidates(GATEWAY_ANSWER, ("127.0.0.1", 40000), ("127.0.0.1", 51234), keep_others=True)
    assert "tcptype passive" in kept and "10.0.0.5 40000" in kept
    lf = rewrite_sdp_candidates(GATEWAY_ANSWER.replace("\r\n", "\n"), None, ("127.0.0.1", 9))
    assert "\r" not in lf and lf.count("127.0.0.1 9 typ host") == 3  # None: every UDP candidate


@pytest.mark.parametrize("bad, message", [
    ("", "v=0"),
    ("garbage\x00\xff", "v=0"),
    ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n", "no media section"),
    (GATEWAY_ANSWER[: GATEWAY_ANSWER.index("typ host") - 3], "truncated"),
    (GATEWAY_ANSWER.replace("127.0.0.1 40000 typ", "127.0.0.1 4x000 typ"), "not a number"),
    (GATEWAY_ANSWER.replace("40000 typ", "40002 typ"), "no a UDP candidate"),
    ("v=0\r\n" + "a=x\r\n" * 20_000 + "m=audio", "larger than"),
])
def test_rewrite_refuses_broken_sdp_clearly(bad, message):
    with pytest.raises(SdpRewriteError, match=message):
        rewrite_sdp_candidates(bad, ("127.0.0.1", 40000), ("127.0.0.1", 1))
    with pytest.raises(SdpRewriteError):
        rewrite_sdp_candidates(None, None, ("127.0.0.1", 1))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ CLI


def test_parse_rate_and_controls(echo):
    assert parse_rate("400k") == 400_000 and parse_rate("2.5M") == 2_500_000 and parse_rate("none") is None
    with pytest.raises(ValueError):
        parse_rate("fast")
    with Shaper(("127.0.0.1", 0), echo.address) as shaper:
        assert apply_control(shaper, "rate down 300k") == "ok rate down 300k"
        apply_control(shaper, "queue both packets 7")
        apply_control(shaper, "loss up 5")
        apply_control(shaper, "delay both 10")
        time.sleep(0.05)
        stats = json.loads(apply_control(shaper, "stats"))
        assert stats["down"]["config"]["rate_bps"] == 300_000 and stats["up"]["config"]["loss"] == 0.05
        assert stats["up"]["config"]["queue_packets"] == 7 and stats["down"]["config"]["delay_s"] == 0.01
        for bad in ("rate sideways 1k", "loss up 101", "frobnicate", "queue up lots"):
            with pytest.raises(ValueError):
                apply_control(shaper, bad)
        assert apply_control(shaper, "quit") == "quit"


def test_cli_shapes_and_takes_controls_on_stdin(echo):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "callsgw", "loadtest", "shape", "--upstream",
                             f"{echo.address[0]}:{echo.address[1]}", "--down-rate", "100k", "--queue-packets", "50"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline()
        assert first.startswith("listening 127.0.0.1:"), first + proc.stderr.read()
        port = int(first.split(":")[-1])
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(2)
        c.sendto(b"via the cli", ("127.0.0.1", port))
        assert c.recv(100) == b"via the cli"
        proc.stdin.write("rate both none\nbogus\nstats\nquit\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok rate both none"
        assert proc.stdout.readline().startswith("error ")
        stats = json.loads(proc.stdout.readline())
        assert stats["down"]["config"]["rate_bps"] is None and stats["up"]["in_packets"] == 1
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    bad = subprocess.run([sys.executable, "-m", "callsgw", "loadtest", "shape", "--upstream", "127.0.0.1:1",
                          "--loss", "150"], capture_output=True, text=True, env=env, timeout=30)
    assert bad.returncode == 2 and "loss" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------ end to end


async def test_one_python_client_behind_the_shaper_in_a_real_call(tmp_path):
    """A real gateway; `shaped` joins through the shaper (its SDP rewritten), `plain` directly:
    voice flows both ways, and only the shaped client's packets cross the shaper."""
    from callsgw.client import connect
    from callsgw.signaling import tokens
    from tests.signaling.gateway import running_gateway

    async with running_gateway(tmp_path) as app:
        secret = app.datadir.api_secret()
        url = f"wss://127.0.0.1:{app.port}/ws"
        gateway = ("127.0.0.1", app.media_port)
        with Shaper(("127.0.0.1", 0), gateway, up=LinkConfig(rate_bps=300_000, delay_s=0.02, queue_packets=50),
                    down=LinkConfig(rate_bps=300_000, delay_s=0.02, queue_packets=50)) as shaper:
            seen_sdp = []

            def rewrite(sdp: str) -> str:
                out = rewrite_sdp_candidates(sdp, gateway, shaper.address)
                seen_sdp.append(out)
                return out

            shaped = await connect(url, tokens.mint(secret, call="c", name="shaped"), ssl=False, sdp_filter=rewrite)
            plain = await connect(url, tokens.mint(secret, call="c", name="plain"), ssl=False)
            try:
                await shaped.wait_connected(timeout=20)
                await plain.wait_connected(timeout=20)
                assert seen_sdp and all(f"{shaper.address[1]} typ host" in s for s in seen_sdp)

                async def voice(session, n):
                    for seq in range(n):
                        packet = bytes([0x80, 111]) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big") \
                            + b"\x00\x00\x00\x07" + b"\xf8\xff\xfe" + bytes(60)
                        session.send_voice(packet)
                        await asyncio.sleep(0.02)

                async def receive(session, n):
                    async with asyncio.timeout(20):
                        for _ in range(n):
                            await session.rtp.get()

                await asyncio.gather(voice(shaped, 150), voice(plain, 150), receive(shaped, 100), receive(plain, 100))
                counters = shaper.counters()
            finally:
                await shaped.close()
                await plain.close()
    # STUN, DTLS, SRTP and SRTCP of the shaped client, in both directions, crossed the shaper
    assert counters["up"]["out_packets"] >= 150 and counters["down"]["out_packets"] >= 100
    assert counters["flows"] == 1

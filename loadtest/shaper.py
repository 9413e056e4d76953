"""A user-space UDP link shaper for ONE client in front of the gateway (issue #19 deliverable 4).

``tc netem`` does not exist in this kernel (docs: ../shared/GUIDE.md section 7), so a test,
a benchmark or a load tester that wants a slow, lossy or bufferbloated link for one client
puts this relay between that client and the gateway's media port::

    client  --->  shaper listen socket  --[up link]-->  shaper's own socket  --->  gateway media port
    client  <---  shaper listen socket  <-[down link]-  shaper's own socket  <---  gateway media port

The client reaches the shaper because the gateway's UDP host candidate in the SDP the client
receives is rewritten to the shaper's address (:func:`rewrite_sdp_candidates`); the other
clients keep the gateway's real candidate and are not shaped. The gateway sees the shaper's
upstream socket as the client's address (ICE-lite answers a check from wherever it comes, and
consent, DTLS and SRTP then flow on that path).

Each direction is a :class:`Link`, a sans-I/O model driven with ``now`` (tests use a simulated
clock), applied in this order to every datagram, whatever it holds (STUN, DTLS, SRTP, garbage,
an empty datagram: the shaper never parses the payload):

1. random loss, with probability ``loss`` from a seeded :class:`random.Random` (``dropped_loss``);
2. the queue: when it already holds ``queue_packets`` packets or the datagram would take it past
   ``queue_bytes``, the datagram is dropped at the tail (``dropped_queue``). A full queue is what
   a real bottleneck does, and the growing queueing delay before it is what a delay-based
   estimator (GCC's trendline, RFC 8888/transport-cc users) sees;
3. the token bucket: the head of the queue leaves when the bucket holds its size plus
   ``overhead_bytes`` (28, IPv4 + UDP headers: the cap is a link rate, as a router counts it);
   the bucket fills at ``rate_bps`` up to its depth (``burst_bytes``, by default 10 ms of the
   rate and at least 3000 B: :meth:`LinkConfig.bucket`). A datagram bigger than the bucket leaves
   when the bucket is full and takes it below zero, so nothing is stuck;
4. a fixed one-way ``delay_s`` after the datagram leaves the bucket (propagation), then it is sent.

``rate_bps=None`` means no cap (the queue drains at once); every field can be changed at
runtime (:meth:`Shaper.configure`, :meth:`Shaper.set_rate`), from any thread: the change is made
under the lock the loop holds while it touches the links, and the loop is woken through a socket
pair to recompute its next deadline. Lifting a cap mid-run
releases the queued packets at once.

:class:`Shaper` is the I/O shell: one dedicated thread with a ``selectors`` loop that sleeps
until the next departure, so its timing does not depend on an asyncio loop that may be busy
with a gateway or a browser driver. Accuracy measured on the 2-vCPU machine at load average
5-8 (1200 B datagrams offered at 1.5x the cap, throughput over 3 s after a 1 s start, the CLI in
its own process): 100 kbit/s -0.8 to +2.4 % (one packet is 3 % of that window), 400 kbit/s -2.4
to 0 %, 2 Mbit/s -6 to -2 %, 10 Mbit/s -1.6 % with the default bucket (-13 % with a 3000 B one).
In one process with other Python threads (the GIL) the same runs scattered more above 1 Mbit/s;
run ``callsgw loadtest shape`` as its own process for high rates. An added 50 ms delay adds
50-52 ms to the round trip (tests/loadtest/test_shaper.py). Scheduling jitter is about 0.1-1 ms,
up to the machine's vCPU stalls (9 ms, benchmarks/vcpu_stalls.py).

The client side may open several flows (one per client source address, e.g. Chromium gathering
more than one local candidate): each gets its own upstream socket, up to ``max_flows``
(datagrams of further flows are dropped and counted as ``dropped_flows``). Both directions of
every flow share the one link per direction: it is one access link.

The CLI is ``callsgw loadtest shape`` (:func:`add_parser`, :func:`main`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import random
import selectors
import signal
import socket
import sys
import threading
import time

DIRECTIONS = ("up", "down")  # up: client -> gateway; down: gateway -> client
MAX_DATAGRAM = 65535
DEFAULT_OVERHEAD = 28  # IPv4 (20) + UDP (8) header bytes counted against the rate
RECV_BATCH = 256  # datagrams read from one socket per loop turn, so both directions keep moving


class SdpRewriteError(ValueError):
    """The SDP could not be rewritten (not an SDP, truncated, or no gateway candidate in it)."""


@dataclasses.dataclass
class LinkConfig:
    """One direction of the shaped link. ``None`` for a limit means none."""

    rate_bps: float | None = None
    burst_bytes: int | None = None  # None: max(3000, 10 ms of the rate), see bucket()
    delay_s: float = 0.0
    loss: float = 0.0
    queue_packets: int | None = None
    queue_bytes: int | None = None
    overhead_bytes: int = DEFAULT_OVERHEAD

    def bucket(self) -> int:
        """The token bucket's depth in bytes: ``burst_bytes``, or by default 10 ms of the rate and at
        least 3000 B (two full-size packets). The depth must cover the loop's wake-up latency, or
        the rate falls short: at 10 Mbit/s a 3000 B bucket is 2.4 ms, and two busy vCPUs are late by
        more than that often enough to lose 10-13 % of the rate (measured); 10 ms holds it within 2 %."""
        if self.burst_bytes is not None:
            return int(self.burst_bytes)
        return max(3000, int((self.rate_bps or 0) / 8 * 0.01))

    def validate(self) -> None:
        if self.rate_bps is not None and not (self.rate_bps > 0 and self.rate_bps < 1e12):
            raise ValueError(f"rate_bps must be positive or None, got {self.rate_bps!r}")
        if self.burst_bytes is not None and not 1 <= int(self.burst_bytes) <= 100_000_000:
            raise ValueError(f"burst_bytes must be between 1 and 1e8, got {self.burst_bytes!r}")
        if not 0.0 <= self.delay_s <= 60.0:
            raise ValueError(f"delay_s must be between 0 and 60, got {self.delay_s!r}")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be a fraction between 0 and 1, got {self.loss!r}")
        for name in ("queue_packets", "queue_bytes"):
            value = getattr(self, name)
            if value is not None and not 1 <= int(value) <= 100_000_000:
                raise ValueError(f"{name} must be between 1 and 1e8 or None, got {value!r}")
        if not 0 <= int(self.overhead_bytes) <= 1000:
            raise ValueError(f"overhead_bytes must be between 0 and 1000, got {self.overhead_bytes!r}")


class Link:
    """One direction: loss, tail-drop queue, token bucket, fixed delay (sans-I/O; ``now`` in seconds).

    :meth:`push` admits a datagram (with an opaque ``dest`` carried along); :meth:`pop_due`
    returns the ``(data, dest)`` pairs whose time has come, in order; :meth:`next_deadline`
    says when to call it next (None: nothing pending).
    """

    def __init__(self, config: LinkConfig | None = None, *, rng: random.Random | None = None, now: float = 0.0):
        self.config = config or LinkConfig()
        self.config.validate()
        self.rng = rng or random.Random(0)
        self.queue: collections.deque = collections.deque()  # (data, dest, arrival)
        self.queue_bytes = 0
        self.delay_line: collections.deque = collections.deque()  # (due, data, dest)
        self.tokens = float(self.config.bucket())
        self.refilled = now
        self.counters = collections.Counter()
        self.queue_peak_packets = 0
        self.queue_peak_bytes = 0

    # -- configuration

    def configure(self, now: float, **changes) -> None:
        """Change fields of the config at ``now``; a lifted or raised cap takes effect at once."""
        self._refill(now)
        new = dataclasses.replace(self.config, **changes)
        new.validate()
        self.config = new
        self.tokens = min(self.tokens, float(new.bucket()))
        self._drain(now)

    # -- the model

    def _refill(self, now: float) -> None:
        rate = self.config.rate_bps
        if rate is not None and now > self.refilled:
            self.tokens = min(float(self.config.bucket()), self.tokens + (now - self.refilled) * rate / 8.0)
        elif rate is None:
            self.tokens = float(self.config.bucket())
        self.refilled = max(self.refilled, now)

    def _cost(self, data: bytes) -> int:
        return len(data) + self.config.overhead_bytes

    def push(self, now: float, data: bytes, dest=None) -> bool:
        """Offer one datagram arriving at ``now``. False if it was dropped (loss or full queue)."""
        c = self.counters
        c["in_packets"] += 1
        c["in_bytes"] += len(data)
        cfg = self.config
        if cfg.loss and self.rng.random() < cfg.loss:
            c["dropped_loss"] += 1
            return False
        if (cfg.queue_packets is not None and len(self.queue) >= cfg.queue_packets) or (
            cfg.queue_bytes is not None and self.queue_bytes + len(data) > cfg.queue_bytes
        ):
            c["dropped_queue"] += 1
            return False
        self.queue.append((data, dest, now))
        self.queue_bytes += len(data)
        self.queue_peak_packets = max(self.queue_peak_packets, len(self.queue))
        self.queue_peak_bytes = max(self.queue_peak_bytes, self.queue_bytes)
        self._drain(now)
        return True

    def _drain(self, now: float) -> None:
        """Move every queued datagram the bucket lets through by ``now`` into the delay line."""
        self._refill(now)
        cfg = self.config
        while self.queue:
            data, dest, arrival = self.queue[0]
            cost = self._cost(data)
            if cfg.rate_bps is not None and self.tokens < min(cost, cfg.bucket()):
                break
            self.queue.popleft()
            self.queue_bytes -= len(data)
            if cfg.rate_bps is not None:
                self.tokens -= cost
            # it left the bucket at `now`: the delay line is FIFO because the delay is fixed
            self.delay_line.append((now + cfg.delay_s, data, dest))
            self.counters["queue_wait_us"] += int((now - arrival) * 1e6)

    def departure_time(self, now: float) -> float | None:
        """When the head of the queue can leave the bucket (None: the queue is empty)."""
        if not self.queue:
            return None
        cfg = self.config
        if cfg.rate_bps is None:
            return now
        self._refill(now)
        need = min(self._cost(self.queue[0][0]), cfg.bucket()) - self.tokens
        return now if need <= 0 else now + need * 8.0 / cfg.rate_bps

    def next_deadline(self, now: float) -> float | None:
        times = [t for t in (self.departure_time(now), self.delay_line[0][0] if self.delay_line else None)
                 if t is not None]
        return min(times) if times else None

    def pop_due(self, now: float) -> list:
        self._drain(now)
        out = []
        while self.delay_line and self.delay_line[0][0] <= now:
            _, data, dest = self.delay_line.popleft()
            out.append((data, dest))
            self.counters["out_packets"] += 1
            self.counters["out_bytes"] += len(data)
        return out

    def snapshot(self) -> dict:
        c = self.counters
        out = {k: c[k] for k in ("in_packets", "in_bytes", "out_packets", "out_bytes", "dropped_loss",
                                 "dropped_queue", "dropped_flows", "dropped_send")}
        out.update(queued_packets=len(self.queue), queued_bytes=self.queue_bytes,
                   in_flight_packets=len(self.delay_line), queue_peak_packets=self.queue_peak_packets,
                   queue_peak_bytes=self.queue_peak_bytes,
                   mean_queue_wait_ms=round(c["queue_wait_us"] / 1000 / max(1, c["out_packets"] + len(self.delay_line)), 3),
                   config=dataclasses.asdict(self.config))
        return out


class Shaper:
    """The thread that moves datagrams between one client and the gateway through two :class:`Link`.

    ``listen``: where the client sends (port 0: any free port; read :attr:`address`).
    ``upstream``: the gateway's media address. ``up``/``down``: each direction's config.
    """

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], *, up: LinkConfig | None = None,
                 down: LinkConfig | None = None, seed: int = 0, max_flows: int = 16):
        self.upstream = (upstream[0], int(upstream[1]))
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self._family = family
        self._listen = socket.socket(family, socket.SOCK_DGRAM)
        self._listen.bind(listen)
        self._listen.setblocking(False)
        self.address = self._listen.getsockname()[:2]
        rng = random.Random(seed)
        # each direction its own seeded generator, so up-link traffic does not shift the down link's losses
        self.links = {"up": Link(up or LinkConfig(), rng=random.Random(rng.random())),
                      "down": Link(down or LinkConfig(), rng=random.Random(rng.random()))}
        self.max_flows = max_flows
        self._flows: dict[tuple, socket.socket] = {}  # client address -> upstream socket
        self._clients: dict[int, tuple] = {}  # upstream socket fd -> client address
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ, "client")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._lock = threading.Lock()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.errors: collections.Counter = collections.Counter()

    # -- control, from any thread

    def start(self) -> "Shaper":
        self._thread = threading.Thread(target=self._run, name="callsgw-shaper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
        for s in list(self._flows.values()):
            s.close()
        self._sel.close()
        self._listen.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> "Shaper":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def configure(self, direction: str, **changes) -> None:
        """Change a direction's :class:`LinkConfig` fields ('up', 'down' or 'both') at runtime.

        Validated first (a ValueError for a bad value, nothing changed), then applied at once."""
        names = _directions(direction)
        for name in names:
            dataclasses.replace(self.links[name].config, **changes).validate()
        with self._lock:  # the loop touches the links only under this lock: the change is atomic
            now = time.monotonic()
            for name in names:
                self.links[name].configure(now, **changes)
        self._wake()  # the loop recomputes its next deadline

    def set_rate(self, direction: str, rate_bps: float | None) -> None:
        """Cap ('up', 'down', 'both') at ``rate_bps`` bit/s, or lift the cap with None."""
        self.configure(direction, rate_bps=rate_bps)

    def counters(self) -> dict:
        """Per direction: in/out packets and bytes, drops by reason, queue now and peak, config."""
        with self._lock:
            out = {name: link.snapshot() for name, link in self.links.items()}
        out["up"]["dropped_flows"] = self.errors["dropped_flows"]
        out["flows"] = len(self._flows)
        return out

    # -- the loop

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _flow(self, client: tuple) -> socket.socket | None:
        sock = self._flows.get(client)
        if sock is None:
            if len(self._flows) >= self.max_flows:
                return None
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
            sock.bind((self.address[0], 0))
            sock.connect(self.upstream)
            sock.setblocking(False)
            self._flows[client] = sock
            self._clients[sock.fileno()] = client
            self._sel.register(sock, selectors.EVENT_READ, "gateway")
        return sock

    def _read(self, sock: socket.socket, kind: str, now: float) -> None:
        for _ in range(RECV_BATCH):
            try:
                if kind == "client":
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
                else:
                    data = sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:  # ICMP port unreachable from the gateway on a connected socket
                self.errors["refused"] += 1
                continue
            except OSError:
                self.errors["recv_error"] += 1
                return
            with self._lock:
                if kind == "client":
                    flow = self._flow(addr[:2])
                    if flow is None:
                        self.errors["dropped_flows"] += 1
                        continue
                    self.links["up"].push(now, data, flow)
                else:
                    self.links["down"].push(now, data, self._clients[sock.fileno()])

    def _send_due(self, now: float) -> None:
        with self._lock:
            up = self.links["up"].pop_due(now)
            down = self.links["down"].pop_due(now)
        for data, flow in up:
            try:
                flow.send(data)
            except OSError:
                self.links["up"].counters["dropped_send"] += 1
        for data, client in down:
            try:
                self._listen.sendto(data, client)
            except OSError:
                self.links["down"].counters["dropped_send"] += 1

    def _run(self) -> None:
        while not self._stop:
            now = time.monotonic()
            with self._lock:
                deadlines = [d for d in (link.next_deadline(now) for link in self.links.values()) if d is not None]
            timeout = 0.5 if not deadlines else max(0.0, min(deadlines) - now)
            try:
                events = self._sel.select(min(timeout, 0.5))
            except OSError:
                if self._stop:
                    return
                raise
            now = time.monotonic()
            for key, _ in events:
                if key.data == "wake":
                    try:
                        while self._wake_r.recv(512):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                else:
                    self._read(key.fileobj, key.data, now)
            self._send_due(time.monotonic())


def _directions(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return DIRECTIONS
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'up', 'down' or 'both', got {direction!r}")
    return (direction,)


# ------------------------------------------------------------------------ SDP rewrite


def rewrite_sdp_candidates(sdp: str, gateway: tuple[str, int] | None, shaper: tuple[str, int], *,
                           keep_others: bool = False) -> str:
    """The gateway's SDP (offer or answer) with its UDP candidate pointing at the shaper instead.

    Every ``a=candidate`` line of transport ``udp`` whose address and port are ``gateway``'s (any
    UDP candidate when ``gateway`` is None) gets ``shaper``'s address and port; nothing else in
    the line changes (foundation, priority, type). Every other candidate line is dropped unless
    ``keep_others``: the gateway's ICE-TCP candidates (RFC 6544) and its other addresses would let
    the client's ICE agent find a path around the shaper, which relays UDP only, and a shaped client
    must not be able to escape its link. ``c=`` lines are left alone (ICE decides the path,
    RFC 8839 section 5.1). Line endings are kept.

    Raises :class:`SdpRewriteError` when ``sdp`` is not text of an SDP (no ``v=0`` first line, no
    ``m=`` section, over :data:`~callsgw.wire.sdp.MAX_SDP_BYTES`), when a candidate line is
    truncated (fewer than the 8 fields of RFC 8839 section 5.1), or when no UDP candidate of the
    gateway was found, so a test never runs unshaped by mistake.
    """
    from callsgw.wire.sdp import MAX_SDP_BYTES

    if not isinstance(sdp, str):
        raise SdpRewriteError(f"the SDP must be text, got {type(sdp).__name__}")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_SDP_BYTES:
        raise SdpRewriteError(f"the SDP is larger than {MAX_SDP_BYTES} bytes")
    if not sdp.startswith("v=0"):
        raise SdpRewriteError("not an SDP: it does not start with 'v=0' (RFC 8866 section 5)")
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    if not any(line.startswith("m=") for line in lines):
        raise SdpRewriteError("the SDP has no media section (truncated?)")
    shaper_host, shaper_port = shaper[0], int(shaper[1])
    out, rewritten = [], 0
    for number, line in enumerate(lines, 1):
        if not line.startswith("a=candidate:"):
            out.append(line)
            continue
        fields = line[len("a=candidate:"):].split(" ")
        if len(fields) < 8 or fields[6] != "typ":
            raise SdpRewriteError(f"line {number}: truncated or malformed candidate {line[:80]!r}")
        try:
            port = int(fields[5])
        except ValueError:
            raise SdpRewriteError(f"line {number}: candidate port {fields[5][:16]!r} is not a number") from None
        is_gateway = fields[2].lower() == "udp" and (gateway is None or (fields[4] == gateway[0] and port == int(gateway[1])))
        if is_gateway:
            fields[4], fields[5] = shaper_host, str(shaper_port)
            out.append("a=candidate:" + " ".join(fields))
            rewritten += 1
        elif keep_others:
            out.append(line)
    if not rewritten:
        where = "any UDP candidate" if gateway is None else f"a UDP candidate {gateway[0]} {gateway[1]}"
        raise SdpRewriteError(f"the SDP holds no {where} of the gateway to rewrite")
    return eol.join(out)


# -------------------------------------------------------------------------------- CLI


def parse_rate(text: str) -> float | None:
    """'400k', '2.5M', '800000' (bit/s) or 'none'/'off' (no cap)."""
    t = text.strip().lower()
    if t in ("none", "off", "unlimited", "0"):
        return None
    scale = 1.0
    if t and t[-1] in "kmg":
        scale = {"k": 1e3, "m": 1e6, "g": 1e9}[t[-1]]
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise ValueError(f"not a rate: {text!r} (e.g. 400k, 2M, none)") from None
    if not 0 < value < 1e12:
        raise ValueError(f"rate out of range: {text!r}")
    return value


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _arg_rate(text: str) -> float | None:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


CONTROL_HELP = """control lines on stdin (one per line):
  rate DIR RATE          DIR up|down|both; RATE e.g. 400k, 2M, none (lift the cap)
  delay DIR MS           added one-way delay
  loss DIR PERCENT       random loss
  queue DIR packets N|bytes N|none
  stats                  print the counters as one JSON line
  quit                   stop (also SIGINT, SIGTERM)
signals: SIGUSR1 prints the counters; SIGUSR2 lifts the caps of both directions."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "shape",
        help="a shaped UDP link (rate, delay, loss, queue) between one client and the gateway",
        description="Relay UDP between ONE client and the gateway's media port through a shaped link: per "
        "direction (up: client to gateway, down: gateway to client) a token-bucket rate cap, a fixed added "
        "delay, seeded random loss and a tail-drop queue limit. Point the client at the shaper by rewriting the "
        "gateway's candidate in the SDP it receives (loadtest.shaper.rewrite_sdp_candidates). Prints "
        "'listening HOST:PORT' first, then runs until quit/SIGINT/SIGTERM and prints the final counters as "
        "JSON. Exit status: 0, 2 bad usage.",
        epilog=CONTROL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", type=_address, required=True, metavar="HOST:PORT",
                   help="The gateway's media address (UDP).")
    p.add_argument("--listen", type=_address, default=("127.0.0.1", 0), metavar="HOST:PORT",
                   help="Where the client sends (default 127.0.0.1:0, any free port).")
    for d in ("", "up-", "down-"):
        which = {"": "both directions", "up-": "client to gateway", "down-": "gateway to client"}[d]
        p.add_argument(f"--{d}rate", type=_arg_rate, default=argparse.SUPPRESS if d else None, metavar="RATE",
                       help=f"Cap of {which} in bit/s (400k, 2M, none).")
        p.add_argument(f"--{d}delay-ms", type=float, default=argparse.SUPPRESS if d else 0.0, metavar="MS",
                       help=f"Added one-way delay of {which}.")
        p.add_argument(f"--{d}loss", type=float, default=argparse.SUPPRESS if d else 0.0, metavar="PERCENT",
                       help=f"Random loss of {which}, in percent.")
        p.add_argument(f"--{d}queue-packets", type=int, default=argparse.SUPPRESS if d else None, metavar="N",
                       help=f"Queue limit of {which} in packets (tail drop).")
        p.add_argument(f"--{d}queue-bytes", type=int, default=argparse.SUPPRESS if d else None, metavar="N",
                       help=f"Queue limit of {which} in bytes (tail drop).")
    p.add_argument("--burst-bytes", type=int, default=None, metavar="N",
                   help="Token bucket depth in bytes (default: 10 ms of the rate, at least 3000).")
    p.add_argument("--overhead-bytes", type=int, default=DEFAULT_OVERHEAD, metavar="N",
                   help="Header bytes counted per datagram against the rate (default 28, IPv4 + UDP).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random loss (default 0).")
    p.add_argument("--stats-interval", type=float, default=0.0, metavar="S",
                   help="Print the counters as a JSON line every S seconds (default: never).")


def configs_from_args(args) -> dict[str, LinkConfig]:
    out = {}
    for d in DIRECTIONS:
        def pick(name):
            return getattr(args, f"{d}_{name}", getattr(args, name))
        loss = pick("loss")
        cfg = LinkConfig(rate_bps=pick("rate"), burst_bytes=args.burst_bytes, delay_s=pick("delay_ms") / 1000.0,
                         loss=loss / 100.0, queue_packets=pick("queue_packets"), queue_bytes=pick("queue_bytes"),
                         overhead_bytes=args.overhead_bytes)
        cfg.validate()
        out[d] = cfg
    return out


def apply_control(shaper: Shaper, line: str) -> str | None:
    """Apply one control line (see CONTROL_HELP); returns a line to print, or 'quit'. ValueError if bad."""
    words = line.split()
    if not words:
        return None
    cmd = words[0].lower()
    if cmd == "quit":
        return "quit"
    if cmd == "stats":
        return json.dumps(shaper.counters())
    if len(words) < 3:
        raise ValueError(f"expected '{cmd} DIR VALUE'")
    direction = words[1].lower()
    if cmd == "rate":
        shaper.configure(direction, rate_bps=parse_rate(words[2]))
    elif cmd == "delay":
        shaper.configure(direction, delay_s=float(words[2]) / 1000.0)
    elif cmd == "loss":
        shaper.configure(direction, loss=float(words[2]) / 100.0)
    elif cmd == "queue":
        kind = words[2].lower()
        if kind == "none":
            shaper.configure(direction, queue_packets=None, queue_bytes=None)
        elif kind in ("packets", "bytes") and len(words) == 4:
            value = None if words[3].lower() == "none" else int(words[3])
            shaper.configure(direction, **{f"queue_{kind}": value})
        else:
            raise ValueError("expected 'queue DIR packets N', 'queue DIR bytes N' or 'queue DIR none'")
    else:
        raise ValueError(f"unknown control {cmd!r} (rate, delay, loss, queue, stats, quit)")
    return f"ok {line.strip()}"


def main(args, err=None) -> int:
    def fail(message: str) -> int:
        print(f"callsgw loadtest shape: {message}", file=sys.stderr)
        return 2

    try:
        configs = configs_from_args(args)
        shaper = Shaper(args.listen, args.upstream, up=configs["up"], down=configs["down"], seed=args.seed)
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    done = threading.Event()
    print(f"listening {shaper.address[0]}:{shaper.address[1]}", flush=True)

    def on_signal(signum, frame):
        if signum == signal.SIGUSR1:
            print(json.dumps(shaper.counters()), flush=True)
        elif signum == signal.SIGUSR2:
            shaper.set_rate("both", None)
            print("ok caps lifted", flush=True)
        else:
            done.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, on_signal)

    def control():
        for line in sys.stdin:
            try:
                reply = apply_control(shaper, line)
            except ValueError as exc:
                print(f"error {exc}", flush=True)
                continue
            if reply == "quit":
                break
            if reply:
                print(reply, flush=True)
        else:
            return  # stdin closed: keep shaping until a signal
        done.set()

    shaper.start()
    threading.Thread(target=control, daemon=True, name="shaper-control").start()
    try:
        while not done.wait(args.stats_interval or 3600):
            if args.stats_interval:
                print(json.dumps(shaper.counters()), flush=True)
    finally:
        shaper.stop()
        print(json.dumps(shaper.counters()), flush=True)
    return 0

"""Replay RTP captures through the gateway as many real participants (``callsgw loadtest run``).

Each virtual participant joins through the real protocol with :mod:`callsgw.client` (WSS
signaling, ICE, DTLS, SRTP), with its own token minted from the gateway's API secret. Every
participant publishes the capture's voice stream; the first participant of each call also
shares a screen with the video stream when one is given.

Sending: the packets keep the capture's inter-packet timing divided by ``speed``; the capture
loops when the run is longer. Per participant and track the payload type becomes the negotiated
one (Opus 111, VP8 96), the sequence number counts on continuously across loops from a random
start, and the timestamp advances continuously from a random 32-bit base (a loop adds the
capture's timestamp span plus one typical step). The SSRC is rewritten by the client session
to its announced one. Due packets are sent in bursts; how late a burst is against its schedule
is the *send lag*, which tells a tester overload apart from a gateway one.

The run is bounded by ``duration`` from its start (ramp-up included): at the deadline every
sender and receiver stops and every session is closed, whatever state it is in.

Convergence: every participant that joined expects one stream per other joined participant of
its call (voice; and the screen of the call's sharer, when its session negotiated one). At the
end of the run, a stream counts as received when at least one packet of it arrived: attributed
to its publisher through the send log, or else through the SSRC the gateway announced for that
publisher's section (its ``a=msid`` names the publisher's identity, ``vp<index>``). What was
expected and did not arrive is reported per participant (``missing_streams``) and in total
(``convergence``): a participant that hears nobody, or misses one voice, shows there.

Media path: signaling, ICE and DTLS always run in :mod:`callsgw.client`. Once a participant's
media is connected, the run takes its socket over (``CallSession.media_handoff()``, as
``benchmarks/bench_forward.py`` does): one asyncio task, the *pump*, wakes every ~1 ms, sends
every packet that is due with a native :class:`~callsgw._native.udpio.Replayer` per track
(header rewrite, SRTP protect and ``sendmmsg`` without the GIL) and drains every readable socket
with a :class:`~callsgw._native.udpio.Recorder` (``recvmmsg``, SRTP unprotect and one record
per RTP packet, without the GIL); datagrams that are not RTP from the gateway (STUN consent,
RTCP, DTLS) go back to the client through ``deliver``. Once a second the send logs and the
records go to :class:`loadtest.measure.Collector` as numpy arrays. Without the extension
(``callsgw._native.udpio``) the run falls back to the per-packet path through the client
(``media_path`` in the report says which ran).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import heapq
import random
import select
import socket
import struct
import time
from dataclasses import dataclass, field

from callsgw.client import connect
from callsgw.client.session import JoinError
from callsgw.signaling import tokens
import numpy as np

from loadtest.gateway_probe import GatewayProbe, MetricsProbe, gateway_summary
from loadtest.impair import Impairment, ReceiveImpairment, UplinkShaper, summarize as impairment_summary
from loadtest.measure import (BIN_S, RECORD_DTYPE, Collector, CpuClock, deliveries, payload_key, percentile,
                               realtime_ns, summary_ms)

try:
    from callsgw._native import udpio
except ImportError:  # the extension is not built: per-packet path
    udpio = None
from loadtest.capture import CaptureReader
from loadtest.streams import Stream, parse_rtp, split_streams

__all__ = ["Track", "RunConfig", "LoadRun", "ReplayError", "track_from_stream", "pick_tracks"]

OPUS_PT = 111
VP8_PT = 96
TICK = 0.001  # pump period (s)
RCVBUF = 4 << 20  # receive buffer per media socket (bytes; capped by net.core.rmem_max)
MAX_BURST = 256  # packets one Replayer may send per tick after a stall (the rest stay due)
SEND_LOG_PERIOD_NS = 50_000_000  # the send logs go to the collector every 50 ms
COLLECT_PERIOD_NS = 500_000_000  # each participant's receive records about every 0.5 s
MIN_STREAM_PACKETS = 2  # shorter "streams" in a capture are ignored
DRAIN_S = 0.5  # at the end, senders stop this long (at most a tenth of the run) before receivers
RATE_LIMITED = 4006  # the gateway's close code for too many joins from one address
JOIN_BACKOFF_S = 0.25  # the first pause before a join refused with 4006 is tried again
JOIN_BACKOFF_MAX_S = 4.0
LIVE_LAG_S = 1.5  # the live loss counts send-time bins that ended this long ago (their receipts are in)


class ReplayError(Exception):
    """A run that cannot go on (unreachable gateway, refused join): one clear line."""


class _StopRun(Exception):
    """Internal: the run was interrupted."""


class Interrupted(ReplayError):
    """SIGINT/SIGTERM before the first participant joined: nothing to report."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name


@dataclass(frozen=True)
class Track:
    kind: str  # "voice" or "screen"
    codec: str
    clock_rate: int
    payload_type: int
    offsets: tuple[float, ...]  # seconds from the first packet
    ts_deltas: tuple[int, ...]  # RTP timestamp minus the first packet's
    b0: tuple[int, ...]  # first header byte (version, padding, extension, CSRC count)
    markers: tuple[int, ...]
    rests: tuple[bytes, ...]  # the packet from the SSRC on
    hashes: tuple[int, ...]  # hash of the payload (after CSRCs and extension)
    loop_seconds: float
    loop_ts: int

    @property
    def packets(self) -> int:
        return len(self.offsets)

    @property
    def mean_bytes(self) -> float:
        """Mean RTP packet size (header, CSRCs, extension, payload) in bytes, before SRTP."""
        return 8 + sum(len(r) for r in self.rests) / len(self.rests)

    @property
    def kbps(self) -> float:
        """The track's RTP bitrate at speed 1, in kbit/s (one loop's bytes over its length)."""
        return (8 * len(self.rests) + sum(len(r) for r in self.rests)) * 8 / self.loop_seconds / 1000


def track_from_stream(stream: Stream, kind: str, raw: list[bytes]) -> Track:
    """A replayable track from a capture stream and the raw RTP of its packets."""
    packets = stream.packets
    first = packets[0]
    offsets = tuple(p.time - first.time for p in packets)
    ts_deltas = tuple((p.timestamp - first.timestamp) & 0xFFFFFFFF for p in packets)
    steps = sorted(b - a for a, b in zip(offsets, offsets[1:]) if b > a)
    ts_steps = sorted(d for a, b in zip(ts_deltas, ts_deltas[1:]) if (d := b - a) > 0)
    step = steps[len(steps) // 2] if steps else 0.02
    ts_step = ts_steps[len(ts_steps) // 2] if ts_steps else 960
    codec = stream.codec
    clock = codec.clock_rate if codec and codec.clock_rate else (48000 if kind == "voice" else 90000)
    return Track(
        kind=kind,
        codec=codec.name if codec else "unknown",
        clock_rate=clock,
        payload_type=OPUS_PT if kind == "voice" else VP8_PT,
        offsets=offsets,
        ts_deltas=ts_deltas,
        b0=tuple(r[0] for r in raw),
        markers=tuple(r[1] & 0x80 for r in raw),
        rests=tuple(bytes(r[8:]) for r in raw),
        hashes=tuple(payload_key(r)[1] for r in raw),
        loop_seconds=offsets[-1] + step,
        loop_ts=ts_deltas[-1] + ts_step,
    )


def pick_tracks(streams_and_raw: list[tuple[Stream, list[bytes]]]) -> tuple[Track | None, Track | None]:
    """(voice, video): the first audio stream and the first 90 kHz video stream (VP8 preferred)."""
    voice = video = None
    for stream, raw in streams_and_raw:
        codec = stream.codec
        is_video = codec is not None and (codec.name.upper() == "VP8" or codec.clock_rate == 90000)
        if is_video and video is None:
            video = track_from_stream(stream, "screen", raw)
        elif not is_video and voice is None:
            voice = track_from_stream(stream, "voice", raw)
    return voice, video


@dataclass
class RunConfig:
    url: str
    secret: bytes
    calls: int
    participants_per_call: int
    voice: Track
    video: Track | None
    duration: float
    speed: float = 1.0
    ramp_up: float = 20.0  # participants per second; 0 = all at once
    ssl: bool | None = None  # False = do not verify the certificate (--insecure)
    join_timeout: float = 15.0
    native: bool | None = None  # batched native media path; None = when the extension is built
    gateway_pid: int | None = None  # the local gateway process to measure (loadtest.gateway_probe)
    gateway_metrics: object | None = None  # or a MetricsProbe scraping a (remote) gateway's /metrics
    gateway_note: str | None = None  # why the gateway is not measured, when it is not
    speakers_per_call: int | None = None  # members 0..K-1 of each call publish voice; None = everybody
    # --stage (loadtest.stages.schedule): join and leave times per participant (s from the start),
    # the hold windows the figures come from, and the stages themselves for the report
    joins: list[float] | None = None
    leaves: list[float | None] | None = None
    holds: list[tuple[float, float]] | None = None
    stages: list[tuple[float, int]] | None = None
    impairment: Impairment | None = None  # --loss/--jitter/--rate-limit (loadtest.impair); needs the native path
    # an agent's share (loadtest.agent): the tokens the coordinator minted, one per participant (the
    # agent never holds the signing secret), and the first participant's number in the whole run
    tokens: list[str] | None = None
    index_offset: int = 0
    call_prefix: str = field(default_factory=lambda: f"lt{random.getrandbits(24):06x}")


@dataclass
class Participant:
    index: int
    call: int
    member: int
    shares_screen: bool
    speaks: bool = True  # publishes voice (--speakers-per-call: the others listen)
    session: object | None = None
    handshake: float | None = None
    error: str | None = None
    connected: bool = False
    media: "NativeMedia | None" = None
    # at the end of the run, before the session closes: what it publishes ("voice", "screen")
    # and the SSRCs the gateway announced to it, SSRC -> (publisher index, kind)
    publishes: tuple[str, ...] = ()
    announced: dict = field(default_factory=dict)
    # signaling during the run, in seconds since the run started
    connected_at: float | None = None
    closed_at: float | None = None  # the gateway (or the network) ended the session for good
    close: str | None = None  # "CODE 'reason'" of that close
    signaling_lost_at: float | None = None  # the WebSocket died and the client started resuming
    reconnecting: bool = False  # still resuming at the last look
    resumes: int = 0
    join_retries: int = 0  # joins refused with close 4006 (rate limited) and tried again
    leaving: bool = False  # a ramp-down stage is closing its session: not a failure
    left_at: float | None = None
    offset: int = 0  # an agent's share: the number of its first participant in the whole run

    @property
    def identity(self) -> str:
        """The token's ``sub`` (the gateway's participant id, and its ``a=msid`` stream id)."""
        return f"vp{self.index + self.offset}"


class NativeMedia:
    """One participant's media socket, driven by the pump after ``media_handoff()``."""

    def __init__(self, run: "LoadRun", p: Participant):
        cfg = run.config
        h = p.session.media_handoff()
        self.handoff = h
        self.index = p.index
        h.udp.pause_reading()  # from now on the pump reads this socket
        self.fd = h.fd
        try:
            h.udp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass
        host, port = h.remote_address[0], h.remote_address[1]
        self.recorder = udpio.Recorder(h.fd, host, port, h.rx)
        self.replayers = []  # (Replayer, send-log track id)
        start = realtime_ns() + 5_000_000
        tracks = [(cfg.voice, h.voice_ssrc, h.voice_pt)] if p.speaks else []
        if p.shares_screen and cfg.video is not None:
            tracks.append((cfg.video, h.screen_ssrc, h.screen_pt))
        imp = cfg.impairment
        if imp is not None and imp.calls is not None and p.call >= imp.calls:
            imp = None  # --impaired-calls: this participant's call is in the control group
        # --impair-side send: the Replayers send to the shaper's tap, which passes the packets on
        self.shaper = (UplinkShaper(imp, p.index + p.offset, h.fd, tuple(h.remote_address[:2]), realtime_ns())
                       if imp is not None and imp.send and tracks else None)
        self.downlink = ReceiveImpairment(imp, p.index + p.offset) if imp is not None and imp.receive else None
        send_fd, send_host, send_port = ((self.shaper.tap.fileno(), self.shaper.tap_host, self.shaper.tap_port)
                                         if self.shaper is not None else (h.fd, host, port))
        for track, ssrc, pt in tracks:
            if ssrc is None:
                raise RuntimeError(f"the session does not send {track.kind}")
            pt = track.payload_type if pt is None else pt
            replayer = udpio.Replayer(send_fd, send_host, send_port, h.tx, run.template(track), ssrc, pt,
                                      random.getrandbits(16), random.getrandbits(32), start, cfg.speed)
            self.replayers.append((replayer, run.collector.send_log.register_track(
                p.index, track.kind, track.clock_rate)))
        self.deliver_errors = 0
        self.detached = False  # the session closed its socket: the pump no longer uses it
        self.pending: bytes | None = None  # records that arrived after the last send-log take

    def poll(self) -> None:
        for data, addr in self.recorder.poll():
            try:
                self.handoff.deliver(data, addr)
            except Exception:  # noqa: BLE001 - one bad datagram must not stop the pump
                self.deliver_errors += 1

    def release(self) -> None:
        """Give the socket back to asyncio (before the session closes it)."""
        if getattr(self, "detached", False):
            return
        try:
            if not self.handoff.udp.is_closing():
                self.handoff.udp.resume_reading()
        except Exception:  # noqa: BLE001
            pass


class LoadRun:
    """One bounded run; ``await run()`` returns the report dict (see :mod:`loadtest.report`)."""

    def __init__(self, config: RunConfig, on_progress=None):
        self.config = config
        self.probe: GatewayProbe | MetricsProbe | None = None  # set when the run starts (config.gateway_pid)
        self.collector = Collector()
        self.participants = [
            Participant(i, call=i % config.calls, member=i // config.calls,
                        shares_screen=config.video is not None and i // config.calls == 0,
                        speaks=config.speakers_per_call is None or i // config.calls < config.speakers_per_call,
                        offset=config.index_offset)
            for i in range(config.calls * config.participants_per_call)
        ]
        self.on_progress = on_progress
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = 0
        self.started_at = 0.0
        self.finished_at = 0.0
        self.native = (udpio is not None) if config.native is None else (config.native and udpio is not None)
        self._templates: dict[int, object] = {}
        self._media: list[NativeMedia] = []
        self._shapers: list[UplinkShaper] = []  # --impair-side send: the impaired uplinks
        self._shaper_of: dict[int, UplinkShaper] = {}  # id(Replayer) -> its shaper
        self._downlinks: list[ReceiveImpairment] = []
        self._by_fd: dict[int, NativeMedia] = {}
        self._due: list[tuple[int, int, object]] = []  # heap of (due ns, tie, Replayer)
        self._epoll = None
        self.backlogs: list[float] = []  # s, per second: the oldest packet a poll found waiting
        self.collect_times: list[float] = []  # s, per measurement step run on the pump's loop
        self._rotation: collections.deque = collections.deque()  # (next turn ns, NativeMedia)
        self._log_ns = 0
        self._backlog = 0
        self._t0_ns = realtime_ns()
        self.pump_gaps: list[tuple[float, float]] = []  # (s into the run, ms) between pump ticks over 20 ms
        self.gc_pauses: list[tuple[int, float]] = []  # (generation, ms) of the garbage collections
        self._gc_t0 = 0.0
        self.native_counters: dict[str, int] = {}
        self._stop = asyncio.Event()  # set by interrupt(): end the run now, keep the results
        self.interrupted: str | None = None  # the signal's name
        self._sending = True
        self.sending_stopped_at: float | None = None  # s since the start
        self._finishing = False
        self._watchers: list[asyncio.Task] = []
        self.gateway_gone_at: float | None = None  # the measured gateway process exited (s since start)
        self._live_bin = 0  # the first send-time bin the live loss has not counted yet
        self.hold_jitter: dict[int, list[float]] = {}  # hold window -> every stream's jitter at its end (ms)
        self.collector.hold_windows = list(config.holds or ())

    def interrupt(self, signal_name: str = "SIGINT") -> None:
        """End the run early (SIGINT/SIGTERM): senders stop, receivers drain, the report is made."""
        if self.interrupted is None:
            self.interrupted = signal_name
        self._stop.set()

    async def _stopped(self) -> None:
        """Raises once interrupt() was called (so that FIRST_EXCEPTION waits end on it)."""
        await self._stop.wait()
        raise _StopRun()

    def _t(self) -> float:
        return self._loop.time() - self.started_at

    def template(self, track: Track):
        """The shared udpio.TrackTemplate of a track (built once)."""
        tpl = self._templates.get(id(track))
        if tpl is None:
            packets = [bytes((b0, m)) + bytes(6) + rest for b0, m, rest in zip(track.b0, track.markers, track.rests)]
            tpl = self._templates[id(track)] = udpio.TrackTemplate(
                packets, track.offsets, track.ts_deltas, track.loop_seconds, track.loop_ts)
        return tpl

    # -- participants -----------------------------------------------------------------

    def _token(self, p: Participant) -> str:
        if self.config.tokens is not None:
            return self.config.tokens[p.index]
        return tokens.mint(self.config.secret, call=f"{self.config.call_prefix}-{p.call}", name=p.identity,
                           sub=p.identity)

    async def _join(self, p: Participant) -> None:
        """Join; a join refused with close 4006 (the gateway's per-address join rate) is tried again
        after a growing, jittered pause (JOIN_BACKOFF_S doubling up to JOIN_BACKOFF_MAX_S) until
        --join-timeout from the first try has passed."""
        give_up = self._loop.time() + self.config.join_timeout
        pause = JOIN_BACKOFF_S
        while True:
            try:
                return await self._join_once(p)
            except JoinError as exc:
                if exc.code != RATE_LIMITED or self._loop.time() + pause > give_up or self._sending is False:
                    raise
            p.join_retries += 1
            await asyncio.sleep(pause * random.uniform(0.75, 1.25))
            pause = min(pause * 2, JOIN_BACKOFF_MAX_S)

    async def _join_once(self, p: Participant) -> None:
        cfg = self.config
        t0 = self._loop.time()
        session = await connect(cfg.url, self._token(p), publish_voice=p.speaks, publish_screen=p.shares_screen,
                                 ssl=cfg.ssl, name=p.identity, open_timeout=cfg.join_timeout)
        p.session = session
        await session.wait_connected(timeout=cfg.join_timeout)
        p.handshake = self._loop.time() - t0
        p.connected = True
        p.connected_at = self._t()
        self.connected += 1
        self._watchers.append(asyncio.create_task(self._watch(p)))

    async def _watch(self, p: Participant) -> None:
        """Note a session that ends before the run does (the gateway closed it, or gave up resuming)."""
        closed = await p.session.wait_closed()
        if self._finishing or p.leaving:
            return
        p.closed_at = self._t()
        p.close = f"{closed.code} {closed.reason!r}" if closed.reason else str(closed.code)
        if p.media is not None:
            self._detach(p.media)

    async def _leave(self, p: Participant, at: float) -> None:
        """A ramp-down stage: the participant stops sending and closes its session at ``at``."""
        await asyncio.sleep(max(0.0, at - self._loop.time()))
        if not p.connected or p.closed_at is not None or p.session is None:
            return
        p.leaving = True
        p.left_at = self._t()
        self.connected -= 1
        if p.media is not None:
            self._detach(p.media)
        try:
            async with asyncio.timeout(5):
                await p.session.close()
        except (TimeoutError, Exception):  # noqa: BLE001 - leaving must not stop the run
            pass

    def _note_signaling(self) -> None:
        """Once a second: the client events that tell of a dropped or resumed signaling connection."""
        for p in self.participants:
            session = p.session
            if session is None or not p.connected or p.left_at is not None:
                continue
            events = session.events
            while not events.empty():
                kind = events.get_nowait().get("type")
                if kind == "client_reconnecting":
                    p.reconnecting = True
                    if p.signaling_lost_at is None:
                        p.signaling_lost_at = self._t()
                elif kind == "resumed":
                    p.reconnecting = False
                    p.resumes += 1

    async def _participant(self, p: Participant, start_at: float) -> None:
        delay = start_at - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await self._join(p)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            p.error = describe_error(exc)
            return
        if self.native:
            self._attach(p)
            return
        receiver = asyncio.create_task(self._receive(p))
        try:
            await self._send(p)
            await receiver  # sending stopped (the run drains, or the session closed): keep receiving
        finally:
            receiver.cancel()

    # -- the native media path ----------------------------------------------------------

    def _attach(self, p: Participant) -> None:
        """Take the participant's media socket over (after its media connected)."""
        media = p.media = NativeMedia(self, p)
        self._media.append(media)
        self._by_fd[media.fd] = media
        self._epoll.register(media.fd, select.EPOLLIN)
        self._rotation.append((realtime_ns() + COLLECT_PERIOD_NS, media))
        if media.shaper is not None:
            self._shapers.append(media.shaper)
            for replayer, _ in media.replayers:
                self._shaper_of[id(replayer)] = media.shaper
        if media.downlink is not None:
            self._downlinks.append(media.downlink)
        for replayer, _ in media.replayers:
            heapq.heappush(self._due, (replayer.next_due_ns, id(replayer), replayer))

    def _detach(self, media: "NativeMedia") -> None:
        """Stop sending and reading on a participant's media (its session closed its socket)."""
        media.detached = True
        mine = {id(replayer) for replayer, _ in media.replayers}
        self._due[:] = [item for item in self._due if item[1] not in mine]
        heapq.heapify(self._due)
        if media.shaper is not None:
            media.shaper.closed = True  # the session closed its socket: nothing more goes out
        self._by_fd.pop(media.fd, None)
        try:
            self._epoll.unregister(media.fd)
        except (OSError, ValueError):
            pass

    async def _pump(self) -> None:
        """Every ~1 ms: send what is due on every track, drain every readable socket, and hand
        a little of the collected data to the collector (so no tick stalls for long)."""
        due, note, by_fd, ep = self._due, self.collector.note_send_lag, self._by_fd, self._epoll
        pop, push = heapq.heappop, heapq.heappush
        rotation = self._rotation
        shapers = self._shaper_of  # id(Replayer) -> its participant's UplinkShaper
        fed, held = set(), set()
        next_log = 0
        gaps = self.pump_gaps
        last = realtime_ns()
        while True:
            now = realtime_ns()
            if now - last > 20_000_000 and len(gaps) < 1000:
                gaps.append(((now - self._t0_ns) / 1e9, (now - last) / 1e6))
            last = now
            while self._sending and due and due[0][0] <= now:
                _, tie, replayer = pop(due)
                try:
                    sent, lag = replayer.send_due(now, MAX_BURST)
                except (RuntimeError, ValueError):
                    continue  # a closed session's keys: drop the track
                if lag >= 0:
                    note(lag / 1e9)
                if sent and shapers:
                    shaper = shapers.get(tie)
                    if shaper is not None:
                        fed.add(shaper)
                push(due, (replayer.next_due_ns, tie, replayer))
            if fed or held:  # the impaired uplinks that got packets or still hold some (also while draining)
                for shaper in fed | held:
                    if not shaper.closed and shaper.pump(now, shaper in fed):
                        held.add(shaper)
                    else:
                        held.discard(shaper)
                fed.clear()
            for fd, _ in ep.poll(0):
                media = by_fd.get(fd)
                if media is not None and not getattr(media, "detached", False):
                    media.poll()
            # measurement, spread over the ticks: the send logs every SEND_LOG_PERIOD, then at most
            # one participant's records per tick, each participant about once per COLLECT_PERIOD
            if now >= next_log:
                t0 = time.perf_counter()
                self._take_send_logs(now)
                self.collect_times.append(time.perf_counter() - t0)
                next_log = now + SEND_LOG_PERIOD_NS
            if rotation and rotation[0][0] <= now:
                _, media = rotation.popleft()
                t0 = time.perf_counter()
                self._take_records(media, cut_ns=self._log_ns)
                self.collect_times.append(time.perf_counter() - t0)
                rotation.append((now + COLLECT_PERIOD_NS, media))
            await asyncio.sleep(TICK)

    def _take_send_logs(self, now_ns: int) -> None:
        """Every Replayer's send log to the collector; records that arrived before ``now_ns`` can
        then be matched (they were sent before it)."""
        chunks, tracks = [], []
        for media in self._media:
            for replayer, track in media.replayers:
                data = replayer.take_log()
                if data:
                    chunks.append(data)
                    tracks.append(track)
        if chunks:
            self.collector.send_log.record_batches(tracks, chunks)
        self._log_ns = now_ns

    def _take_records(self, media: "NativeMedia", cut_ns: int | None) -> None:
        """One participant's receive records to the collector, those that arrived before ``cut_ns``
        (all with None); the rest wait for the next turn."""
        self._backlog = max(self._backlog, media.recorder.backlog_max_ns)  # take() clears it
        data = media.recorder.take()
        if media.pending is not None:
            data = media.pending + data
            media.pending = None
        if cut_ns is not None and data:
            rec = np.frombuffer(data, dtype=RECORD_DTYPE)
            late = rec["arrival_ns"] > cut_ns
            if late.any():
                media.pending = rec[late].tobytes()
                data = rec[~late].tobytes()
        if data and media.downlink is not None:  # --impair-side receive: loss and jitter on the records
            data = media.downlink.apply(np.frombuffer(data, dtype=RECORD_DTYPE)).tobytes()
        if data:
            self.collector.on_records(media.index, data)

    def _collect(self) -> None:
        """Everything collected so far to the collector (at the end of the run)."""
        t0 = time.perf_counter()
        self._take_send_logs(realtime_ns())
        for media in self._media:
            self._take_records(media, cut_ns=None)
        self.collect_times.append(time.perf_counter() - t0)

    def _note_backlog(self) -> None:
        """Once a second: the oldest packet a poll found waiting, over the records taken since the last call."""
        if self._media:
            self.backlogs.append(self._backlog / 1e9)
        self._backlog = 0

    def _release_media(self) -> None:
        counters = {"unprotect_errors": 0, "truncated": 0, "records_dropped": 0, "handback_dropped": 0,
                    "handed_back": 0, "kernel_stamps": 0, "rtp_total": 0, "send_dropped": 0,
                    "protect_errors": 0, "send_log_dropped": 0, "deliver_errors": 0}
        for media in self._media:
            st = media.recorder.stats()
            for key in ("unprotect_errors", "truncated", "records_dropped", "handback_dropped", "handed_back",
                        "kernel_stamps", "rtp_total"):
                counters[key] += st[key]
            for replayer, _ in media.replayers:
                counters["send_dropped"] += replayer.dropped
                counters["protect_errors"] += replayer.protect_errors
                counters["send_log_dropped"] += replayer.log_dropped
            counters["deliver_errors"] += media.deliver_errors
            if not getattr(media, "detached", False):
                try:
                    self._epoll.unregister(media.fd)
                except (OSError, ValueError):
                    pass
            media.release()
            if media.shaper is not None:
                media.shaper.close()
        self.native_counters = counters
        self._media.clear()
        self._by_fd.clear()
        self._due.clear()
        self._rotation.clear()

    # -- the per-packet media path (fallback) -------------------------------------------

    async def _receive(self, p: Participant) -> None:
        queue = p.session.rtp
        loop, on_packet, index = self._loop, self.collector.on_packet, p.index
        while True:
            packet = await queue.get()
            now = loop.time()
            on_packet(index, packet, now)
            while not queue.empty():
                on_packet(index, queue.get_nowait(), now)

    async def _send(self, p: Participant) -> None:
        cfg, loop, log = self.config, self._loop, self.collector.send_log
        session = p.session
        tracks = [(cfg.voice, session.send_voice)] if p.speaks else []
        if p.shares_screen and cfg.video is not None:
            tracks.append((cfg.video, session.send_screen))
        if not tracks:  # a listener
            return
        state = []
        start = loop.time() + 0.005
        for track, send in tracks:
            # [next index, loop count, seq, ts base]
            state.append([0, 0, random.getrandbits(16), random.getrandbits(32)])
        speed = cfg.speed
        pack = struct.Struct("!BBHI").pack
        while True:
            # the earliest due packet over the tracks
            due = None
            for i, (track, _) in enumerate(tracks):
                n, loops = state[i][0], state[i][1]
                t = start + (loops * track.loop_seconds + track.offsets[n]) / speed
                if due is None or t < due:
                    due = t
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
                now = loop.time()
            if not self._sending or p.closed_at is not None or p.left_at is not None:
                return
            self.collector.note_send_lag(now - due)
            # send everything due on every track
            for i, (track, send) in enumerate(tracks):
                st = state[i]
                while True:
                    n, loops = st[0], st[1]
                    if start + (loops * track.loop_seconds + track.offsets[n]) / speed > now:
                        break
                    ts = (st[3] + loops * track.loop_ts + track.ts_deltas[n]) & 0xFFFFFFFF
                    packet = pack(track.b0[n], track.markers[n] | track.payload_type, st[2], ts) + track.rests[n]
                    log.record((ts, track.hashes[n]), p.index, track.kind, track.clock_rate, now)
                    send(packet)
                    st[2] = (st[2] + 1) & 0xFFFF
                    n += 1
                    if n == track.packets:
                        n, st[1] = 0, loops + 1
                    st[0] = n

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> dict:
        cfg = self.config
        self._loop = loop = asyncio.get_running_loop()
        self._t0_ns = realtime_ns()
        gc.callbacks.append(self._on_gc)
        try:
            return await self._run()
        finally:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif len(self.gc_pauses) < 100_000:
            self.gc_pauses.append((info.get("generation", 0), (time.perf_counter() - self._gc_t0) * 1000))

    async def _run(self) -> dict:
        cfg = self.config
        loop = self._loop
        cpu = CpuClock()
        self.probe = (GatewayProbe(cfg.gateway_pid) if cfg.gateway_pid is not None
                      else cfg.gateway_metrics if cfg.gateway_metrics is not None else None)
        if self.probe is not None:
            self.collector.sample(0.0, 0, 0.0, loop.time(), self.probe.read())  # the baseline
            self.collector.timeline.clear()
        self.started_at = loop.time()
        # bin 0 of the true-loss accounting is now, on both clocks
        self.collector.send_log.base_ns = realtime_ns()
        self.collector.send_log.origin_s = self.started_at
        deadline = self.started_at + cfg.duration
        drain = min(DRAIN_S, cfg.duration / 10)
        stop = asyncio.create_task(self._stopped())
        # the first participant alone first: an unreachable gateway or a bad secret stops the run here
        first = self.participants[0]
        join = asyncio.create_task(self._join(first))
        await asyncio.wait([join, stop], timeout=cfg.duration, return_when=asyncio.FIRST_COMPLETED)
        if not join.done():
            join.cancel()
            await asyncio.gather(join, return_exceptions=True)
            stop.cancel()
            await self._close_all()
            if self.interrupted is not None:
                raise Interrupted(f"interrupted ({self.interrupted}) before the first participant joined",
                                  self.interrupted)
            raise ReplayError(f"the first participant did not connect within --duration {cfg.duration:g} s "
                              f"(gateway {cfg.url})")
        if join.exception() is not None:
            stop.cancel()
            exc = join.exception()
            await self._close_all()
            if isinstance(exc, TimeoutError):
                raise ReplayError(f"the first participant did not connect within --join-timeout {cfg.join_timeout:g} s "
                                  f"(gateway {cfg.url})")
            raise ReplayError(f"the first participant could not join through {cfg.url}: {describe_error(exc)}")

        tasks = []
        if self.native:
            self._epoll = select.epoll()
            self._attach(first)
            first_receiver = asyncio.create_task(self._pump())
        else:
            first_receiver = asyncio.create_task(self._receive(first))
            tasks.append(asyncio.create_task(self._send(first)))
        now = loop.time()
        for k, p in enumerate(self.participants[1:], start=1):
            if cfg.joins is not None:
                at = self.started_at + cfg.joins[k]
            else:
                at = now + (k / cfg.ramp_up if cfg.ramp_up > 0 else 0.0)
            tasks.append(asyncio.create_task(self._participant(p, at)))
        for p, leave in zip(self.participants, cfg.leaves or ()):
            if leave is not None:
                self._watchers.append(asyncio.create_task(self._leave(p, self.started_at + leave)))
        sampler = asyncio.create_task(self._sample(cpu))
        try:
            # send until the drain (or an interrupt), then only receive for the drain
            send_until = deadline - drain
            if self.native:  # joins end early; media runs to the deadline
                await asyncio.wait([*tasks, first_receiver, stop], timeout=max(0.0, send_until - loop.time()),
                                   return_when=asyncio.FIRST_EXCEPTION)
                if first_receiver.done():
                    first_receiver.result()  # the pump failed: raise its error
                remaining = send_until - loop.time()
                if remaining > 0 and not stop.done():
                    await asyncio.wait([first_receiver, stop], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if first_receiver.done():
                    first_receiver.result()
            else:
                await asyncio.wait([*tasks, stop], timeout=max(0.0, send_until - loop.time()),
                                   return_when=asyncio.FIRST_EXCEPTION)
            self._sending = False
            self.sending_stopped_at = self._t()
            await asyncio.sleep(max(0.0, min(drain, deadline - loop.time())))
        finally:
            self._finishing = True
            self.finished_at = loop.time()
            if self.sending_stopped_at is None:
                self.sending_stopped_at = self._t()
            for t in (*tasks, first_receiver, sampler, stop, *self._watchers):
                t.cancel()
            await asyncio.gather(*tasks, first_receiver, sampler, stop, *self._watchers, return_exceptions=True)
            for p in self.participants:
                if p.session is None and p.error is None:
                    p.error = "not connected before the end of the run"
                elif not p.connected and p.error is None:
                    p.error = "media not connected before the end of the run"
            if self.native:
                self._collect()
            self._note_signaling()
            self._final_sample(cpu)
            self._note_negotiated()
            if self.native:
                self._release_media()
                self._epoll.close()
            await self._close_all()
        return self._report(cpu)

    def _note_negotiated(self) -> None:
        """What each joined session publishes and the SSRCs announced to it (before they close)."""
        by_identity = {p.identity: p.index for p in self.participants}
        for p in self.participants:
            session = p.session
            if session is None or not p.connected:
                continue
            p.publishes = tuple(kind for kind, ssrc in (("voice", session.voice_ssrc), ("screen", session.screen_ssrc))
                                if ssrc is not None)
            for media in getattr(session, "remote_media", ()):
                publisher = by_identity.get(media.msid.split()[0]) if media.msid else None
                if publisher is None or media.rejected:
                    continue
                for ssrc in media.ssrcs:
                    p.announced[ssrc] = (publisher, "voice" if media.kind == "audio" else "screen")

    def _convergence(self) -> tuple[list[dict], dict]:
        """Per participant the streams it expected and did not get; the totals."""
        received: dict[int, set[tuple[int, str]]] = {}
        unattributed = 0
        for stats in self.collector.streams.values():
            if stats.packets - stats.duplicates <= 0:
                continue
            source = (stats.publisher, stats.kind) if stats.publisher is not None else None
            if source is None:
                subscriber = self.participants[stats.subscriber] if stats.subscriber < len(self.participants) else None
                source = subscriber.announced.get(stats.ssrc) if subscriber is not None else None
            if source is None:
                unattributed += 1
                continue
            received.setdefault(stats.subscriber, set()).add(source)
        joined = [p for p in self.participants if p.connected]
        rows, expected_total, missing_total, short = [], 0, 0, 0
        for p in self.participants:
            row = {"index": p.index, "name": p.identity, "call": p.call, "joined": p.connected}
            if p.connected:
                expected = [(q.index, kind) for q in joined if q.call == p.call and q is not p for kind in q.publishes]
                got = received.get(p.index, set())
                missing = [source for source in expected if source not in got]
                row["expected_streams"] = len(expected)
                row["missing_streams"] = [{"publisher": q, "name": f"vp{q}", "kind": kind} for q, kind in missing]
                expected_total += len(expected)
                missing_total += len(missing)
                short += bool(missing)
            else:  # not in the call: it expects nothing (counted under participants.failed)
                row["expected_streams"] = 0
                row["missing_streams"] = []
                row["error"] = p.error
            rows.append(row)
        return rows, {
            "participants_checked": len(joined),
            "expected_streams": expected_total,
            "participants_with_missing_streams": short,
            "missing_streams": missing_total,
            "unattributed_streams": unattributed,
        }

    def _snapshot_holds(self, final: bool = False) -> None:
        """At the first sample after a hold window ended (or at the end of the run), every stream's
        RFC 3550 jitter: the hold figures' jitter."""
        for i, (_, end) in enumerate(self.config.holds or ()):
            if i not in self.hold_jitter and (final or self._t() >= end):
                self.hold_jitter[i] = [j for st in self.collector.streams.values() if (j := st.jitter_ms()) is not None]

    def _live_loss(self) -> tuple[int, int, float, float]:
        """True loss of the send-time bins that settled since the last call (once a second):
        bins that ended LIVE_LAG_S (plus the time to collect every participant's records) ago."""
        lag = LIVE_LAG_S + len(self._media) * 0.002
        settled = int((self._t() - lag) // BIN_S)
        first = self._live_bin
        if settled <= first:  # nothing settled yet: no figure (not the sequence-gap one)
            return 0, 0, first * BIN_S, first * BIN_S
        self._live_bin = settled
        rows = deliveries(self.collector.send_log, self.collector.streams.values(), self._expected(settled),
                          window=(first, settled))
        return sum(r.sent for r in rows), sum(r.lost for r in rows), first * BIN_S, settled * BIN_S

    def _expected(self, stop_bin: int) -> list[tuple]:
        """(subscriber, publisher, kind, both connected s, end bin) for every stream that should flow."""
        joined = [p for p in self.participants if p.connected]
        expected = []
        for sub in joined:
            for pub in joined:
                if pub.call != sub.call or pub is sub:
                    continue
                end = stop_bin
                for gone in (sub.closed_at, pub.closed_at, sub.left_at, pub.left_at):
                    if gone is not None:
                        end = min(end, int(gone // BIN_S))  # the bin it left in is partial
                both = max(sub.connected_at or 0.0, pub.connected_at or 0.0)
                for kind in (pub.publishes or self._publishes(pub)):
                    expected.append((sub.index, pub.index, kind, both, end))
        return expected

    def _publishes(self, p: Participant) -> tuple[str, ...]:
        """What a participant sends while the run goes on (``publishes`` is set at the end): the
        tracks it registered in the send log."""
        return tuple(kind for publisher, kind in self.collector.send_log.track_ids if publisher == p.index)

    def _true_loss(self) -> tuple[list, dict]:
        """Per (subscriber, publisher track) what was sent against what arrived; the totals."""
        stop_bin = int(self.sending_stopped_at // BIN_S) + 1  # sending stopped inside it: it is whole
        expected = self._expected(stop_bin)
        rows = deliveries(self.collector.send_log, self.collector.streams.values(), expected)
        sent = sum(r.sent for r in rows)
        lost = sum(r.lost for r in rows)
        by_kind = {}
        for kind in ("voice", "screen"):
            mine = [r for r in rows if r.kind == kind]
            k_sent, k_lost = sum(r.sent for r in mine), sum(r.lost for r in mine)
            by_kind[kind] = {"streams": len(mine), "sent": k_sent, "lost": k_lost,
                             "loss_percent": round(100 * k_lost / k_sent, 4) if k_sent else 0.0}
        return rows, {
            "method": ("what each publisher sent against what each subscriber received (payloads matched "
                       f"through the send log), per {BIN_S:g} s of send time, from the first whole bin after a "
                       "stream's first packet (for a stream that never arrived: 2 s after both ends connected) to "
                       "the end of sending or the departure of either end"),
            "expected": sent,
            "received": sent - lost,
            "lost": lost,
            "loss_percent": round(100 * lost / sent, 4) if sent else 0.0,
            "by_kind": by_kind,
            "streams": len(rows),
            "streams_missing": sum(r.state == "missing" for r in rows),
            "streams_stopped": sum(r.state == "stopped" for r in rows),
            "sending_stopped_at_s": round(self.sending_stopped_at, 3),
        }

    def _hold_figures(self, loss: dict) -> dict | None:
        """Loss (send-time bins wholly inside the hold windows), delay (packets that arrived in them)
        and jitter (each stream's at each window's end) of the hold windows, or None without holds."""
        holds = self.config.holds
        if not holds:
            return None
        expected = self._expected(int(self.sending_stopped_at // BIN_S) + 1)
        rows = []
        for start, end in holds:
            rows += deliveries(self.collector.send_log, self.collector.streams.values(), expected,
                               window=(int(np.ceil(start / BIN_S - 1e-9)), int(end // BIN_S)))
        sent, lost = sum(r.sent for r in rows), sum(r.lost for r in rows)
        by_kind = {}
        for kind in ("voice", "screen"):
            k_sent = sum(r.sent for r in rows if r.kind == kind)
            k_lost = sum(r.lost for r in rows if r.kind == kind)
            by_kind[kind] = {"streams": loss["by_kind"][kind]["streams"], "sent": k_sent, "lost": k_lost,
                             "loss_percent": round(100 * k_lost / k_sent, 4) if k_sent else 0.0}
        jitters = [j for values in self.hold_jitter.values() for j in values]
        return {
            "windows_s": [[round(a, 3), round(b, 3)] for a, b in holds],
            "expected": sent, "lost": lost, "loss_percent": round(100 * lost / sent, 4) if sent else 0.0,
            "by_kind": by_kind,
            "delay_ms": self.collector.hold_delay_summary(),
            "mean_jitter_ms": round(sum(jitters) / len(jitters), 4) if jitters else None,
            "jitter_p95_ms": round(percentile(jitters, 95), 4) if jitters else None,
            "max_jitter_ms": round(max(jitters), 4) if jitters else None,
        }

    def _failures(self, rows) -> list[dict]:
        """What went wrong during the run, one entry each (exit status 4 when any)."""
        out = []
        joined = [p for p in self.participants if p.connected]
        if self.gateway_gone_at is not None:
            out.append({"kind": "gateway_gone", "at_s": round(self.gateway_gone_at, 1),
                        "detail": (f"the gateway process (pid {self.config.gateway_pid}) exited at "
                                   f"t={self.gateway_gone_at:.1f} s" if self.config.gateway_pid is not None else
                                   f"the gateway's /metrics stopped answering at t={self.gateway_gone_at:.1f} s")})
        present = [p for p in joined if p.left_at is None]  # a ramp-down stage's leavers are not lost
        lost_signaling = [p for p in present if p.closed_at is not None or p.reconnecting]
        if present and len(lost_signaling) == len(present) and self.gateway_gone_at is None:
            first = min((p.closed_at if p.closed_at is not None else p.signaling_lost_at) for p in present)
            out.append({"kind": "gateway_gone", "at_s": round(first, 1),
                        "detail": f"every participant's signaling connection dropped (from t={first:.1f} s) "
                                  "and none came back: the gateway went away"})
        for p in joined:
            if p.closed_at is not None:
                out.append({"kind": "participant_dropped", "participant": p.index, "at_s": round(p.closed_at, 1),
                            "detail": f"{p.identity} (call {p.call}): the gateway ended its session at "
                                      f"t={p.closed_at:.1f} s (close {p.close})"})
            elif p.reconnecting:
                out.append({"kind": "participant_dropped", "participant": p.index,
                            "at_s": round(p.signaling_lost_at, 1),
                            "detail": f"{p.identity} (call {p.call}): its signaling connection dropped at "
                                      f"t={p.signaling_lost_at:.1f} s and had not resumed by the end"})
        for r in rows:
            if r.state == "missing":
                out.append({"kind": "stream_missing", "subscriber": r.subscriber, "publisher": r.publisher,
                            "stream": r.kind, "detail": f"vp{r.subscriber} received nothing from vp{r.publisher} "
                                                        f"({r.kind}; {r.sent} packets sent meanwhile)"})
            elif r.state == "stopped":
                out.append({"kind": "stream_stopped", "subscriber": r.subscriber, "publisher": r.publisher,
                            "stream": r.kind, "at_s": r.stopped_at_s,
                            "detail": f"vp{r.subscriber} stopped receiving vp{r.publisher} ({r.kind}) at "
                                      f"t={r.stopped_at_s:.1f} s ({r.lost} of {r.sent} packets lost)"})
        return out

    def _gateway_now(self) -> tuple[float, int] | None:
        return self.probe.read() if self.probe is not None else None

    async def _sample(self, cpu: CpuClock) -> None:
        loop = self._loop
        while True:
            await asyncio.sleep(1.0)
            if self.native:
                self._note_backlog()
            self._note_signaling()
            gateway = self._gateway_now()
            if self.probe is not None and gateway is None and self.gateway_gone_at is None:
                self.gateway_gone_at = self._t()
            point = self.collector.sample(loop.time() - self.started_at, self.connected, cpu.cpu(), loop.time(),
                                          gateway, self._live_loss())
            self._snapshot_holds()
            if self.on_progress is not None:
                self.on_progress(point, self)

    def _final_sample(self, cpu: CpuClock) -> None:
        loop = self._loop
        last = self.collector.timeline[-1]["t"] if self.collector.timeline else 0.0
        if loop.time() - self.started_at - last > 0.2:
            self.collector.sample(loop.time() - self.started_at, self.connected, cpu.cpu(), loop.time(),
                                  self._gateway_now(), self._live_loss())
        self._snapshot_holds(final=True)

    async def _close_all(self) -> None:
        sessions = [p.session for p in self.participants if p.session is not None]
        if not sessions:
            return
        try:
            async with asyncio.timeout(5):
                await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        except TimeoutError:
            pass

    def _report(self, cpu: CpuClock) -> dict:
        cfg, col = self.config, self.collector
        handshakes = [p.handshake for p in self.participants if p.handshake is not None]
        errors: dict[str, int] = {}
        for p in self.participants:
            if p.error:
                errors[p.error] = errors.get(p.error, 0) + 1
        dropped = sum(p.session.stats.get("rtp_dropped", 0) for p in self.participants if p.session is not None)
        tester = cpu.report()
        lags = col.send_lags
        tester["send_lag_ms"] = summary_ms(lags)
        tester["rtp_dropped_by_client_queue"] = dropped
        warnings = []
        if tester["cpu_percent_of_one_core"] > 80:
            warnings.append(f"the tester used {tester['cpu_percent_of_one_core']:.0f}% of one core: "
                            "it, not the gateway, may be the bottleneck (its event loop is single-threaded)")
        p95_lag = tester["send_lag_ms"]["p95"] if tester["send_lag_ms"] else 0.0
        if p95_lag > 20:
            warnings.append(f"sends ran late (p95 send lag {p95_lag:.1f} ms > 20 ms): the tester could not "
                            "keep the capture's timing, so delay, jitter and loss include tester overload")
        retried = [p for p in self.participants if p.join_retries]
        if retried:
            warnings.append(f"the gateway rate-limited joins (close 4006) {sum(p.join_retries for p in retried)} "
                            f"times, for {len(retried)} participants, who backed off and tried again: raise the "
                            "gateway's --joins-per-second (per source address) or lower --ramp-up")
        if dropped:
            warnings.append(f"{dropped} received packets were dropped by the tester's own client queues "
                            "(counted as loss): the tester could not read fast enough")
        if self.native:
            tester["media_path"] = "native (udpio: recvmmsg/sendmmsg, SRTP without the GIL; kernel receive times)"
            tester["receive_backlog_ms"] = summary_ms(self.backlogs)
            tester["collect_ms"] = summary_ms(self.collect_times)
            tester["pump_gaps_over_20ms"] = {"count": len(self.pump_gaps),
                                             "max_ms": round(max((g for _, g in self.pump_gaps), default=0.0), 1),
                                             "first": [[round(t, 2), round(g, 1)] for t, g in self.pump_gaps[:20]]}
            tester["media_counters"] = self.native_counters
            worst = max(self.backlogs, default=0.0)
            if worst > 0.1:
                warnings.append(f"packets waited up to {worst * 1000:.0f} ms in the tester's sockets before it read "
                                "them: the tester fell behind (delay uses kernel receive times and does not show it)")
            lost_here = sum(self.native_counters.get(k, 0) for k in
                            ("records_dropped", "truncated", "send_dropped", "send_log_dropped"))
            if lost_here:
                warnings.append(f"{lost_here} packets were dropped inside the tester (send refusals, truncation or "
                                "full record buffers): see tester.media_counters")
        else:
            tester["media_path"] = "per-packet (callsgw.client asyncio transport)"
        late = [s.late_sum_ns / s.late_count / 1e6 for s in self._shapers if s.late_count]
        if late and max(late) > 2.0:
            warnings.append(f"held (--jitter, --rate-limit) packets left up to {max(late):.1f} ms on average after "
                            "their release time (the tester's event loop was busy): the impaired streams' delay "
                            "includes it (impairment.send.release_late_ms)")
        tester["gc_pauses"] = {f"gen{g}": {"count": sum(1 for x, _ in self.gc_pauses if x == g),
                                           "max_ms": round(max((d for x, d in self.gc_pauses if x == g), default=0.0), 2)}
                               for g in (0, 1, 2)}
        tester["bottleneck"] = bool(warnings)
        tester["warnings"] = warnings
        per_participant, convergence = self._convergence()
        rows, loss = self._true_loss()
        failures = self._failures(rows)
        for row in per_participant:
            p = self.participants[row["index"]]
            row["signaling"] = {"connected_at_s": None if p.connected_at is None else round(p.connected_at, 3),
                                "closed_at_s": None if p.closed_at is None else round(p.closed_at, 3),
                                "close": p.close,
                                "lost_at_s": None if p.signaling_lost_at is None else round(p.signaling_lost_at, 3),
                                "resumes": p.resumes, "reconnecting_at_end": p.reconnecting,
                                "left_at_s": None if p.left_at is None else round(p.left_at, 3)}
        totals = col.totals()
        # the totals' loss is the true loss; the sequence-gap figure stays beside it
        totals["sequence_lost"], totals["sequence_expected"] = totals["lost"], totals["expected"]
        totals["sequence_loss_percent"] = totals["loss_percent"]
        totals["expected"], totals["lost"], totals["loss_percent"] = loss["expected"], loss["lost"], loss["loss_percent"]
        hold = self._hold_figures(loss)
        if hold is not None:  # --stage: the figures are the hold windows'; the whole run's are kept beside
            keys = ("expected", "lost", "loss_percent", "delay_ms", "mean_jitter_ms", "jitter_p95_ms", "max_jitter_ms")
            totals["whole_run"] = {k: totals[k] for k in keys}
            totals.update({k: hold[k] for k in keys})
            totals["measured_over"] = f"hold windows {hold['windows_s']} s"
        by_kind = col.by_kind({t.kind: t.mean_bytes for t in (cfg.voice, cfg.video) if t is not None})
        for kind, row in by_kind.items():
            track = cfg.voice if kind == "voice" else cfg.video
            row["loss"] = (hold or loss)["by_kind"][kind]
            row["sent_kbps_per_stream"] = None if track is None else round(track.kbps * cfg.speed, 2)
        host = cfg.url.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        shared = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
        return {
            "config": {
                "url": cfg.url,
                "calls": cfg.calls,
                "participants_per_call": cfg.participants_per_call,
                "duration_s": cfg.duration,
                "speed": cfg.speed,
                "ramp_up_per_second": cfg.ramp_up,
                "voice": {"codec": cfg.voice.codec, "packets": cfg.voice.packets, "loop_s": round(cfg.voice.loop_seconds, 3)},
                "video": None if cfg.video is None else {
                    "codec": cfg.video.codec, "packets": cfg.video.packets, "loop_s": round(cfg.video.loop_seconds, 3)},
                "screen_sharers": sum(p.shares_screen for p in self.participants),
                "speakers_per_call": cfg.speakers_per_call,
                "stages": None if cfg.stages is None else [list(st) for st in cfg.stages],
                "speakers": sum(p.speaks for p in self.participants),
                "impairment": (cfg.impairment or Impairment()).describe(),
            },
            "shared_host": shared,
            "note": ("the tester and the gateway share this host (loopback URL): they compete for its CPU"
                     if shared else "the tester runs on another host than the gateway"),
            "run_seconds": round(self.finished_at - self.started_at, 3),
            "interrupted": self.interrupted,
            "failures": failures,
            "loss": {**loss, "per_stream": [r.as_dict() for r in rows]},
            "hold": hold,
            "participants": {
                "planned": len(self.participants),
                "joined": sum(p.connected for p in self.participants),
                "failed": sum(not p.connected for p in self.participants),
                "errors": errors,
                "join_retries": sum(p.join_retries for p in self.participants),
                "rate_limited_participants": sum(p.join_retries > 0 for p in self.participants),
            },
            "convergence": convergence,
            "per_participant": per_participant,
            "handshake_ms": {**(summary_ms(handshakes) or {}),
                             "values": [round(h * 1000, 3) for h in handshakes]},
            "totals": totals,
            "by_kind": by_kind,
            "streams": [s.as_dict() for s in col.streams.values()],
            "tester": tester,
            "impairment": impairment_summary(cfg.impairment or Impairment(), self._shapers, self._downlinks),
            "gateway": (gateway_summary(col.timeline, cfg.gateway_pid) if cfg.gateway_pid is not None
                        else gateway_summary(col.timeline, None, cfg.gateway_metrics.url)
                        if cfg.gateway_metrics is not None
                        else {"pid": None, "note": cfg.gateway_note or "not measured (give --gateway-pid)"}),
            "timeline": col.timeline,
        }


def describe_error(exc: BaseException) -> str:
    """One line for a failed join."""
    if isinstance(exc, JoinError):
        return f"join refused by the gateway: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the gateway running at that address?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return f"cannot reach the gateway: {exc.strerror or exc}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def load_capture(path: str, sdp: dict | None = None,
                 strict: bool = False) -> tuple[list[tuple[Stream, list[bytes]]], CaptureReader]:
    """The RTP streams of a capture, each with the raw RTP packets (UDP payloads) it holds."""
    reader = CaptureReader(path, strict=strict)
    datagrams = list(reader)
    streams = split_streams(datagrams, sdp)
    raw: dict[tuple, list[bytes]] = {}
    for d in datagrams:
        p = parse_rtp(d.payload, d.time)
        if p is not None:
            raw.setdefault((d.src, d.dst, p.ssrc), []).append(bytes(d.payload))
    # a "stream" of one packet is a stray datagram that happens to parse as RTP (DNS, syslog, ...)
    return [(s, raw[(s.src, s.dst, s.ssrc)]) for s in streams if len(s.packets) >= MIN_STREAM_PACKETS], reader


def read_secret(path) -> bytes:
    """The API secret from a data directory's ``api_secret`` file (32 bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) != 32:
        raise ValueError(f"{path}: expected the 32-byte api_secret of a gateway data directory, got {len(data)} bytes")
    return data

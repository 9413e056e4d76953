"""Per-stream statistics of a capture, computed the way ``tshark -q -z rtp,streams`` does.

For each RTP stream (see :mod:`loadtest.streams`), packet by packet in capture order:

* **packets**: RTP packets received (duplicates included);
* **lost**: expected minus received, with expected computed as tshark 4.0 (Debian 12's
  package) does: the *last* packet's sequence number, plus 65536 per wrap, minus the *first*
  packet's, plus one. A wrap is counted when a packet's number falls below the first packet's (or
  0 follows 65535), once until a number above the first one comes again. This is RFC 3550
  appendix A.3's "extended highest minus base plus one" when the last packet is the highest;
  reordering at the end, duplicates or a late packet below the first make it differ, and can make
  ``lost`` negative, exactly as in tshark. (Wireshark 4.2 and later use the lowest and highest
  extended numbers instead; the figures agree whenever the stream starts and ends in order.)
* **sequence_errors**: how often a packet's sequence number was not the previous one plus one
  (a jump forward, a late/reordered packet or a duplicate), tshark's "wrong sequence" count;
* **jitter**: RFC 3550 section 6.4.1 / A.8 interarrival jitter ``J += (|D| - J) / 16`` in
  milliseconds, with D the difference between the arrival spacing and the RTP timestamp spacing
  (converted with the clock rate) to the last packet that was in timestamp order. **max** and
  **mean** are taken over "regular" packets as tshark does: not the first packet, not a marker
  packet, not comfort noise (PT 13/19) nor the packet after one, not a packet whose timestamp goes
  backwards. tshark's mean divides the running sum by the packets seen so far (so the first
  packet counts as a zero), and so does this one.

The clock rate, in order: ``--clock-rate``; the SDP's ``a=rtpmap`` for the payload type; the
static payload types of RFC 3551; the codec guess for a dynamic payload type (Opus 48000, VP8
90000). tshark knows only the static ones and prints 0 jitter for dynamic payload types; with no
clock rate at all the jitter fields here are ``null``.

Because marker packets are left out of max and mean, a sender that sets the marker bit on every
packet (ffmpeg does for Opus) gets 0 for both, in tshark and here; ``jitter_ms``, the RFC 3550
value J after the last packet (what an RTCP receiver report would carry, every packet counted),
is reported beside them for that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtest.streams import STATIC_PAYLOAD_TYPES, Stream

__all__ = ["StreamStats", "analyze_stream", "analyze_streams"]

_PT_CN = (13, 19)


def _extend(previous: int, raw: int, bits: int) -> int:
    """The extended value of ``raw`` closest to ``previous`` (as Wireshark's RTP dissector does)."""
    span = 1 << bits
    half = span >> 1
    value = (previous & ~(span - 1)) | raw
    if value + half < previous:
        value += span
    elif previous + half < value and value >= span:
        value -= span
    return value


@dataclass
class StreamStats:
    src: str
    dst: str
    ssrc: int
    payload_type: int
    codec: str
    clock_rate: int | None
    clock_rate_source: str
    packets: int
    lost: int
    expected: int
    sequence_errors: int
    max_jitter_ms: float | None
    mean_jitter_ms: float | None
    jitter_ms: float | None
    max_delta_ms: float
    mean_delta_ms: float
    duration_s: float

    @property
    def lost_percent(self) -> float:
        return 100.0 * self.lost / self.expected if self.expected else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["lost_percent"] = round(self.lost_percent, 3)
        for key in ("max_jitter_ms", "mean_jitter_ms", "jitter_ms", "max_delta_ms", "mean_delta_ms"):
            if d[key] is not None:
                d[key] = round(d[key], 6)
        return d


def analyze_stream(
    stream: Stream,
    *,
    clock_rate: int | None = None,
    sdp: dict[int, tuple[str, int]] | None = None,
) -> StreamStats:
    """tshark-compatible statistics of one stream; ``clock_rate`` overrides every other source."""
    codec = stream.codec
    main_pt = stream.payload_type

    def rate_of(pt: int) -> tuple[int, str]:
        if clock_rate:
            return clock_rate, "option"
        if sdp and pt in sdp:
            return sdp[pt][1], "sdp"
        if pt in STATIC_PAYLOAD_TYPES:
            return STATIC_PAYLOAD_TYPES[pt][1], "static"
        if pt == main_pt and codec is not None and codec.clock_rate:
            return codec.clock_rate, codec.source
        return 0, "unknown"

    packets = stream.packets
    first = packets[0]
    ext_ts = _extend(1 << 32, first.timestamp, 32)
    start_seq = stop_seq = first.seq
    cycles = 0
    under = False
    seq_num = first.seq
    seq_timestamp = ext_ts
    last_time = 0.0
    t0 = first.time
    jitter = 0.0
    max_jitter = 0.0
    mean_jitter = 0.0
    max_delta = 0.0
    mean_delta = 0.0
    delta = 0.0
    sequence = 0
    total = 1
    pt = first.payload_type
    any_rate = False

    for p in packets[1:]:
        now = (p.time - t0) * 1000.0
        ext_ts = _extend(ext_ts, p.timestamp, 32)
        in_order = seq_timestamp <= ext_ts
        if p.seq < start_seq and not under:
            cycles += 1
            under = True
        elif p.seq == 0 and stop_seq == 65535 and not under:
            cycles += 1
            under = True
        elif p.seq > start_seq and under:
            under = False
        wrong_ts = not in_order
        if in_order and (seq_num + 1 == p.seq or (seq_num == 65535 and p.seq == 0)):
            seq_num = p.seq
        elif in_order and (seq_num + 1 < p.seq or seq_num - p.seq > 0xFF00):
            seq_num = p.seq
            sequence += 1
        elif seq_num + 1 > p.seq:
            sequence += 1
        is_cn = p.payload_type in _PT_CN
        follow_cn = pt in _PT_CN
        pt = p.payload_type
        rate, _ = rate_of(pt)
        diff_ts = ext_ts - seq_timestamp
        if rate:
            any_rate = True
            expected_time = last_time + diff_ts / (rate / 1000)
            current_diff = abs(now - expected_time)
            jitter = (15 * jitter + current_diff) / 16
        delta = now - last_time
        if not (p.marker or is_cn or wrong_ts or follow_cn):
            max_delta = max(max_delta, delta)
            mean_delta = (mean_delta * (total - 1) + delta) / total
            if rate:
                max_jitter = max(max_jitter, jitter)
                mean_jitter = (mean_jitter * (total - 1) + jitter) / total
        if in_order:
            last_time = now
            seq_timestamp = ext_ts
        stop_seq = p.seq
        total += 1

    expected = stop_seq + cycles * 65536 - start_seq + 1
    main_rate, source = rate_of(main_pt)
    summary = stream.summary()
    return StreamStats(
        src=summary["src"],
        dst=summary["dst"],
        ssrc=stream.ssrc,
        payload_type=main_pt,
        codec=summary["codec"],
        clock_rate=main_rate or None,
        clock_rate_source=source,
        packets=total,
        lost=expected - total,
        expected=expected,
        sequence_errors=sequence,
        max_jitter_ms=max_jitter if any_rate else None,
        mean_jitter_ms=mean_jitter if any_rate else None,
        jitter_ms=jitter if any_rate else None,
        max_delta_ms=max_delta,
        mean_delta_ms=mean_delta,
        duration_s=round(stream.duration, 6),
    )


def analyze_streams(
    streams: list[Stream], *, clock_rate: int | None = None, sdp: dict[int, tuple[str, int]] | None = None
) -> list[StreamStats]:
    return [analyze_stream(s, clock_rate=clock_rate, sdp=sdp) for s in streams]

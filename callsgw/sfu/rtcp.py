"""Receive statistics for the gateway's receiver reports (RFC 3550 Appendix A), sans-I/O.

One :class:`ReceiveStats` per published SSRC. The router feeds it every
packet it accepts (``update(seq, rtp_ts, arrival_time)``) and each sender
report (``sender_report(ntp, now)``), and asks for a report block once per
reporting interval (``report_block(ssrc, now)``). Times are seconds from any
fixed origin (the shell's monotonic clock); nothing here reads a clock.

* Sequence tracking with probation follows RFC 3550 Appendix A.1
  (``MIN_SEQUENTIAL`` = 2, ``MAX_DROPOUT`` = 3000, ``MAX_MISORDER`` = 100):
  a source is valid after two packets in sequence, a large jump is accepted
  only when the next packet confirms it (the sender restarted).
* Loss follows Appendix A.3: cumulative lost = expected - received (may be
  negative with duplicates; clamped to the signed 24-bit field), fraction
  lost = lost in the interval / expected in the interval, in 1/256.
* Interarrival jitter follows Appendix A.8 in timestamp units of the codec
  clock (48000 for Opus, 90000 for video): ``J += (|D| - J) / 16``.
* LSR/DLSR follow section 6.4.1: the middle 32 bits of the last SR's NTP
  timestamp, and the time since it arrived in units of 1/65536 s.
"""

from __future__ import annotations

from callsgw.wire.rtcp import ReportBlock

__all__ = ["ReceiveStats", "ntp_middle"]

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2


def ntp_middle(ntp_timestamp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp (RFC 3550 section 6.4.1, LSR)."""
    return (ntp_timestamp >> 16) & 0xFFFFFFFF


class ReceiveStats:
    """RFC 3550 Appendix A.1/A.3/A.8 reception state of one SSRC."""

    __slots__ = (
        "clock_rate",
        "base_seq",
        "max_seq",
        "bad_seq",
        "cycles",
        "received",
        "received_prior",
        "expected_prior",
        "probation",
        "started",
        "transit",
        "jitter",
        "last_sr",
        "last_sr_at",
        "last_arrival",
    )

    def __init__(self, clock_rate: int):
        if clock_rate <= 0:
            raise ValueError("clock rate must be positive")
        self.clock_rate = clock_rate
        self.started = False
        self.base_seq = self.max_seq = self.cycles = 0
        self.bad_seq = RTP_SEQ_MOD + 1
        self.received = self.received_prior = self.expected_prior = 0
        self.probation = MIN_SEQUENTIAL
        self.transit: int | None = None
        self.jitter = 0.0
        self.last_sr = 0
        self.last_sr_at: float | None = None
        self.last_arrival: float | None = None

    # -- Appendix A.1 --------------------------------------------------------------

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def _update_seq(self, seq: int) -> bool:
        udelta = (seq - self.max_seq) % RTP_SEQ_MOD
        if self.probation:
            if seq == (self.max_seq + 1) % RTP_SEQ_MOD:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += RTP_SEQ_MOD  # wrapped
            self.max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            if seq == self.bad_seq:
                # two sequential packets after a big jump: the sender restarted
                self._init_seq(seq)
            else:
                self.bad_seq = (seq + 1) % RTP_SEQ_MOD
                return False
        # else: a duplicate or reordered packet, counted
        self.received += 1
        return True

    def update(self, seq: int, rtp_ts: int, arrival_time: float) -> bool:
        """Account one packet (RFC 3550 A.1, A.8). False if A.1 did not accept it (probation, jump)."""
        if not self.started:
            self.started = True
            self._init_seq(seq)
            self.max_seq = (seq - 1) % RTP_SEQ_MOD
            self.probation = MIN_SEQUENTIAL
        if not self._update_seq(seq):
            return False
        self.last_arrival = arrival_time
        # A.8: transit in timestamp units; differences taken modulo 2^32
        transit = int(round(arrival_time * self.clock_rate)) - rtp_ts
        if self.transit is not None:
            d = (transit - self.transit) & 0xFFFFFFFF
            if d & 0x80000000:
                d -= 1 << 32
            self.jitter += (abs(d) - self.jitter) / 16.0
        self.transit = transit
        return True

    def sender_report(self, ntp_timestamp: int, now: float) -> None:
        """Remember an SR for LSR/DLSR (RFC 3550 section 6.4.1)."""
        self.last_sr = ntp_middle(ntp_timestamp)
        self.last_sr_at = now

    # -- Appendix A.3 --------------------------------------------------------------

    @property
    def valid(self) -> bool:
        """The source left probation (RFC 3550 A.1) and has been counted."""
        return self.started and self.probation == 0

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1

    @property
    def cumulative_lost(self) -> int:
        return self.expected - self.received

    def report_block(self, ssrc: int, now: float) -> ReportBlock | None:
        """The report block for this interval (RFC 3550 A.3), or None while on probation.

        Starts a new interval: call it once per report sent.
        """
        if not self.valid:
            return None
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected
        received_interval = self.received - self.received_prior
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self.last_sr_at is not None:
            dlsr = max(0, min(0xFFFFFFFF, int((now - self.last_sr_at) * 65536)))
        return ReportBlock(
            ssrc=ssrc,
            fraction_lost=fraction,
            cumulative_lost=max(-(1 << 23), min((1 << 23) - 1, self.cumulative_lost)),
            highest_seq=self.extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter) & 0xFFFFFFFF,
            lsr=self.last_sr if self.last_sr_at is not None else 0,
            dlsr=dlsr,
        )

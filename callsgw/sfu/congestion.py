"""One call's congestion control: transport-cc feedback to publishers, downlink estimates of subscribers.

Sans-I/O, owned by the call's :class:`~callsgw.sfu.router.Router` (issue #19).
The media shell drains each transport's transport-wide logs every
``TWCC_TICK`` (``callsgw.server.udp``; the native engine's per-session logs or
:class:`callsgw.transport.twcc.TwccLog`) and hands them here through the
router, with times already on the shell's monotonic clock:

* **arrivals from a publisher** (transport-wide sequence numbers and when they
  arrived) feed that publisher's
  :class:`~callsgw.sfu.twcc_feedback.TwccFeedbackGenerator`; the feedback it
  builds (draft-holmer-rmcat-transport-wide-cc-extensions-01 section 3.1) goes
  back to the publisher at most once per tick, so the publisher's own
  send-side estimator ramps up to what its uplink carries instead of sitting
  at its start bitrate;
* **sends to a subscriber** (the gateway's own numbers, stamped per
  subscriber transport by the datapath) and that subscriber's transport-cc
  feedback feed its downlink estimate (:mod:`callsgw.sfu.bwe`), with REMB and
  receiver-report loss as the fallbacks.

What is done with each kind of feedback is a counted choice
(:attr:`Congestion.counters`): ``transport_cc_used`` (into the subscriber's
estimate), ``transport_cc_unused`` (from a participant the gateway sends no
stamped packets: nothing to match it with), ``transport_cc_malformed``
(refused by the strict parser), ``remb_used`` (a cap on the estimate: the
subscriber's own receive-side estimate), ``rr_loss_used`` (RFC 3550
fraction lost of a stream the gateway sends, the last fallback).
"""

from __future__ import annotations

from collections import Counter

from callsgw.sfu.bwe import DownlinkEstimator
from callsgw.sfu.twcc_feedback import TwccFeedbackGenerator
from callsgw.wire import twcc
from callsgw.wire.rtcp import Remb, RtcpError

# draft-holmer-rmcat-transport-wide-cc-extensions-01 section 2: the header extension's URI
TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
# the generator's own minimum spacing; the shell's TWCC_TICK (50 ms) is the real bound on the rate
FEEDBACK_INTERVAL = 0.005
RECENT_DECREASE = 2.0  # s a decrease of the estimate keeps a subscriber "congested" for layer selection
RECENT_LOSS = 2.0  # s a loss-based decrease (over 10 % lost) keeps a subscriber "lossy" for layer selection


class Congestion:
    """Feedback generators per publisher and estimates per subscriber of one call (module docstring)."""

    def __init__(self):
        self._generators: dict[str, TwccFeedbackGenerator] = {}
        self._estimators: dict[str, DownlinkEstimator] = {}
        self.counters: Counter = Counter()

    def forget(self, participant_id: str) -> None:
        self._generators.pop(participant_id, None)
        self._estimators.pop(participant_id, None)

    def _estimator(self, participant_id: str) -> DownlinkEstimator:
        estimator = self._estimators.get(participant_id)
        if estimator is None:
            estimator = self._estimators[participant_id] = DownlinkEstimator()
        return estimator

    def estimate(self, participant_id: str, now: float) -> tuple[float | None, bool]:
        """The subscriber's downlink estimate (bit/s; None before any feedback) and whether it is congested."""
        estimator = self._estimators.get(participant_id)
        if estimator is None:
            return None, False
        source = estimator.source(now)
        if source == "none" or (source == "transport-cc" and estimator.acked_bps is None):
            # stamped sends but nothing measured yet: 0, so that the subscriber starts on the lowest layer
            # and climbs as its feedback and probes show more (a first key frame of the full layer into
            # an unknown link is what freezes a slow subscriber); a subscriber whose transport gives no
            # feedback at all has no estimator and gets the best layer
            return 0.0, False
        # a subscriber starts on the lowest layer its estimate allows and climbs as probes show more
        # (the layer selector never pauses a screen for a low estimate alone, only for congestion);
        # "congested" holds for RECENT_DECREASE after the estimator last decreased, so that a link the
        # lowest layer keeps overloading reads as congested between the detector's flips
        recent = estimator.last_decrease is not None and now - estimator.last_decrease < RECENT_DECREASE
        return float(estimator.estimate(now)), estimator.congested or recent

    def lossy(self, participant_id: str, now: float) -> bool:
        """Whether the subscriber lost more than 10 % of a loss step within the last :data:`RECENT_LOSS`:
        what its voice suffers from (the layer selector pauses a lowest layer that keeps it so)."""
        estimator = self._estimators.get(participant_id)
        last = estimator.last_loss_decrease if estimator is not None else None
        return last is not None and now - last < RECENT_LOSS

    def arrivals(self, participant_id: str, seqs, times, now: float, *, sender_ssrc: int,
                 media_ssrc: int) -> list[bytes]:
        """A publisher's logged arrivals (numpy arrays or lists); the transport-cc packets now due."""
        generator = self._generators.get(participant_id)
        if generator is None:
            generator = self._generators[participant_id] = TwccFeedbackGenerator(interval=FEEDBACK_INTERVAL)
        if len(seqs):
            generator.record_many(seqs, times)
        packets = generator.build(now, sender_ssrc, media_ssrc)
        if packets:
            self.counters["transport_cc_sent"] += len(packets)
        return packets

    def sent(self, participant_id: str, seqs, times, sizes, now: float) -> None:
        """The gateway's stamped sends to a subscriber (numbers, send times, RTP sizes)."""
        self._estimator(participant_id).on_packets_sent(seqs, times, sizes)
        self.counters["twcc_sends_logged"] += len(seqs)

    def feedback(self, participant_id: str, item, now: float) -> bool:
        """A subscriber's transport-cc or REMB (:mod:`callsgw.wire.rtcp` items); True when its estimate moved."""
        if isinstance(item, Remb):
            self._estimator(participant_id).on_remb(item.bitrate, now)
            self.counters["remb_used"] += 1
            return True
        estimator = self._estimators.get(participant_id)
        if estimator is None:
            self.counters["transport_cc_unused"] += 1
            return False
        try:
            parsed = twcc.parse_item(item)
        except RtcpError:
            self.counters["transport_cc_malformed"] += 1
            return False
        estimator.on_feedback(parsed, now)
        self.counters["transport_cc_used"] += 1
        return True

    def probe(self, participant_id: str, now: float, target_bps: float, media_bps: float) -> int:
        """Padding bit/s to send the subscriber now (``DownlinkEstimator.probe``; 0: none)."""
        estimator = self._estimators.get(participant_id)
        if estimator is None:
            return 0
        padding = estimator.probe(now, int(target_bps), media_bps) if target_bps > 0 or estimator.probing else 0
        return max(0, int(padding))

    def receiver_report(self, participant_id: str, fraction_lost: int, now: float) -> None:
        """RFC 3550 fraction lost of a stream sent to the subscriber (used while it gives no transport-cc)."""
        self._estimator(participant_id).on_receiver_report(fraction_lost, now)
        self.counters["rr_loss_used"] += 1

    def stats(self) -> dict:
        """Plain data for the router's stats (the admin API's per-call view)."""
        return {
            "counters": dict(self.counters),
            "feedback_to": {pid: dict(g.counters) for pid, g in self._generators.items()},
        }

    def downlink(self, participant_id: str, now: float) -> dict | None:
        """One subscriber's estimator state as plain data (None: it has none)."""
        estimator = self._estimators.get(participant_id)
        return estimator.snapshot(now) if estimator is not None else None

    def downlinks(self, now: float) -> dict:
        """Each subscriber's downlink estimate as plain data (``/api/v1``, ``callsgw inspect``)."""
        return {pid: estimator.snapshot(now) for pid, estimator in self._estimators.items()}

    def generator_counters(self, participant_id: str) -> dict | None:
        generator = self._generators.get(participant_id)
        return dict(generator.counters) if generator is not None else None

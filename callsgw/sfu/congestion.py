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
(:attr:`Congestion.counters`): ``transport_cc_used`` (to an estimate),
``transport_cc_unused`` (a participant we stamp nothing for), ``remb_used``,
``remb_unused`` (REMB from a participant that receives nothing).
"""

from __future__ import annotations

from collections import Counter

from callsgw.sfu.twcc_feedback import TwccFeedbackGenerator

# draft-holmer-rmcat-transport-wide-cc-extensions-01 section 2: the header extension's URI
TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
# the generator's own minimum spacing; the shell's TWCC_TICK (50 ms) is the real bound on the rate
FEEDBACK_INTERVAL = 0.005


class Congestion:
    """Feedback generators per publisher and estimates per subscriber of one call (module docstring)."""

    def __init__(self):
        self._generators: dict[str, TwccFeedbackGenerator] = {}
        self.counters: Counter = Counter()

    def forget(self, participant_id: str) -> None:
        self._generators.pop(participant_id, None)

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
        self.counters["twcc_sends_logged"] += len(seqs)

    def feedback(self, participant_id: str, item, now: float) -> None:
        """A subscriber's transport-cc or REMB (:mod:`callsgw.wire.rtcp` items)."""
        kind = "remb" if type(item).__name__ == "Remb" else "transport_cc"
        self.counters[f"{kind}_unused"] += 1

    def stats(self) -> dict:
        """Plain data for the router's stats (the admin API's per-call view)."""
        return {
            "counters": dict(self.counters),
            "feedback_to": {pid: dict(g.counters) for pid, g in self._generators.items()},
        }

    def generator_counters(self, participant_id: str) -> dict | None:
        generator = self._generators.get(participant_id)
        return dict(generator.counters) if generator is not None else None

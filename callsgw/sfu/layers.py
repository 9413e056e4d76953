"""Which simulcast layer each subscriber of a screen track gets: a sans-I/O selector with hysteresis.

The publisher sends the screen as two (at most :data:`MAX_LAYERS`) simulcast
layers, RFC 8853 RIDs ``h`` (full) and ``l`` (a quarter of the size, about
150 kbit/s); the router gives each subscriber route one layer
(:meth:`callsgw.sfu.datapath.LayeredDatapath.route_select`) and asks this
module which. One :class:`LayerSelector` per subscriber route, fed on the
router's layer tick with:

* ``layers``: the live layers, best first, each with its measured bitrate in
  bit/s (from the datapath's stream byte counts over the last
  :data:`RATE_WINDOW`; 0 while unmeasured: with an estimate, only the lowest
  layer counts as fitting then);
* ``estimate_bps``: the subscriber's downlink estimate (transport-cc or REMB
  or RR based, :mod:`callsgw.sfu.bwe`), None while there is none, and
  ``congested``: the estimator saw queueing/loss grow; ``lossy``: more
  than 10 % of a loss step lost recently (what voice suffers from);
* ``voice_bps``: what the subscriber receives of voice. Voice always keeps
  priority: it is subtracted from the estimate first, and the screen gets
  the rest (the *budget*).

Rules (``now`` in seconds, simulated in the tests):

* **No estimate**: the best live layer (``h``). Before the gateway has any
  feedback every subscriber gets the full layer, which is what it got before
  simulcast (the publisher's own estimator still caps what ``h`` carries).
* **First choice with an estimate**: the lowest layer, then up by the rule
  below (a layer's early bitrate says little while the publisher ramps it,
  and a first key frame of the full layer into a slow link is the longest
  freeze a subscriber can get). **The current layer gone**: at once the best
  layer whose bitrate fits the budget, else the lowest.
* **Down**: when the current layer's bitrate exceeds the budget for
  :data:`DOWN_HOLD`, or at once when ``congested`` (then at most one step per
  :data:`DOWN_HOLD`), one step down to the best lower layer that fits, else
  the lowest. With the router's :data:`TICK` this moves down within 2 s of
  congestion (the issue's bound) counting the estimate's own reaction.
* **Paused**: the lowest layer is the floor while the link is not
  congested: a low estimate alone only says what has been delivered (it
  grows from what is sent, and a paused screen sends nothing to measure).
  Only when the lowest layer stays ``congested`` and either over the budget
  or ``lossy`` for :data:`PAUSE_HOLD` (:data:`PAUSE_HOLD_LOSSY` while
  ``lossy``) is the screen paused, so that voice
  keeps the link (a layer whose *average* fits can still lose packets: the
  frames of scrolling text come one or two a second, each a burst bigger
  than a slow link's queue); it resumes like a step up (the lowest layer
  fitting with the margin, which the router's probes can show), but after
  :data:`RESUME_HOLD`, doubled for each pause in a row (at most
  :data:`RESUME_HOLD_MAX`; a resume that lasts :data:`PAUSE_FORGET` ends the
  row): every resume starts with a keyframe burst, and a screen that keeps
  coming back would keep costing voice.
* **Up**: when the next better layer's bitrate times :data:`UP_MARGIN` fits
  the budget, without congestion, for :data:`UP_HOLD`, one step up.
* **Forced** (:meth:`LayerSelector.force`, a test and operator hook): that
  layer whatever the estimate, while it is live; unforced, a first choice again.
"""

from __future__ import annotations

__all__ = [
    "DOWN_HOLD",
    "LayerSelector",
    "MAX_LAYERS",
    "PAUSE_HOLD",
    "PAUSE_HOLD_LOSSY",
    "RESUME_HOLD",
    "RATE_WINDOW",
    "TICK",
    "UP_HOLD",
    "UP_MARGIN",
    "layer_switch_supported",
]

MAX_LAYERS = 3  # RIDs accepted on one published section
TICK = 0.5  # s between the router's layer evaluations
RATE_WINDOW = 2.0  # s over which a layer's (and voice's) bitrate is measured
DOWN_HOLD = 1.0  # s the current layer must be over the budget before a step down
UP_HOLD = 1.0  # s the next layer must fit (with the margin) before a step up
UP_MARGIN = 1.15  # the next layer's bitrate times this must fit
PAUSE_HOLD = 3.0  # s the lowest layer must stay congested and over the budget before a pause ...
PAUSE_HOLD_LOSSY = 2.0  # ... or congested and losing (voice is losing too: sooner)
RESUME_HOLD = 4.0  # s the lowest layer must fit before a paused screen resumes; doubled per pause since ...
RESUME_HOLD_MAX = 16.0  # ... (at most this)
PAUSE_FORGET = 30.0  # ... the screen last resumed and stayed up this long (then the count starts again)

_UNSET = object()


class LayerSelector:
    """The layer of one subscriber route (see the module docstring for the rules)."""

    __slots__ = ("current", "_chosen", "_over_since", "_up_since", "_last_step", "_forced", "_fresh", "switches",
                 "_jam_since", "_starting", "pauses", "_resumed_at")

    def __init__(self):
        self.current: str | None = None
        self._chosen = False  # a choice was made (None is a choice: paused)
        self._over_since: float | None = None
        self._up_since: float | None = None
        self._last_step: float | None = None
        self._forced = _UNSET
        self._fresh = False  # back from forced: choose afresh
        self.switches = 0  # changes of choice
        self._jam_since: float | None = None  # the lowest layer congested since
        self._starting = False  # on the lowest live layer of a fresh start: a lower one going live is taken
        self.pauses = 0  # pauses in a row (each resumed for less than PAUSE_FORGET): the resume hold doubles
        self._resumed_at: float | None = None

    def force(self, rid: str | None | object = _UNSET) -> None:
        """Always choose ``rid`` (a live layer's; None: paused); without an argument, back to automatic
        (the next update chooses afresh, as a first choice)."""
        self._fresh = rid is _UNSET and self._forced is not _UNSET
        self._forced = rid

    @property
    def paused_at(self) -> float | None:
        """When the screen was paused for this route (None: it is not paused by this selector)."""
        return self._last_step if self._chosen and self.current is None and self.pauses else None

    @property
    def forced(self) -> bool:
        return self._forced is not _UNSET

    def update(self, now: float, layers: list[tuple[str, float]], *, estimate_bps: float | None,
               congested: bool = False, lossy: bool = False, voice_bps: float = 0.0) -> str | None:
        """The layer for this route now (None: no layer, the screen is paused for it)."""
        names = [rid for rid, _ in layers]
        rates = dict(layers)
        if not names:  # nothing live (yet, or any more): not a pause; the next live layers choose afresh
            self._fresh = True
            return self._set(None, now)
        if self._forced is not _UNSET:
            if self._forced is None or self._forced in rates:
                return self._set(self._forced, now)
            return self._set(self.current if self.current in rates else names[0], now)
        if estimate_bps is None:
            return self._set(names[0], now)
        budget = max(0.0, estimate_bps - max(0.0, voice_bps))
        # a layer not measured yet (0) fits only as the lowest: above it, it would be a blind step up
        fitting = [rid for rid in names if rates[rid] <= budget and (rates[rid] > 0 or rid == names[-1])]
        if not self._chosen or self._fresh or (self.current is not None and self.current not in rates):
            # with an estimate, start on the lowest layer and climb by the up rule: a layer's early bitrate
            # says little (the publisher ramps it up), and a first key frame of the full layer into a
            # slow link is the longest freeze a subscriber can get
            self._fresh = False
            if self.current is not None and self.current not in rates:  # the current layer went away
                return self._set(fitting[0] if fitting else names[-1], now)
            return self._set(names[-1], now, start=True)
        if self._starting and self.current != names[-1]:
            return self._set(names[-1], now, start=True)  # a lower layer went live after the start: from it
        # down: over the budget for DOWN_HOLD, or congested (one step per DOWN_HOLD)
        over = self.current is not None and rates[self.current] > budget
        if over or (congested and self.current is not None):
            jammed = congested and (over or lossy)
            if self._over_since is None:
                self._over_since = now
            recent = self._last_step is not None and now - self._last_step < DOWN_HOLD
            below = names[names.index(self.current) + 1:]
            if not below:  # the lowest layer: paused only when it stays congested, over the budget or losing
                self._up_since = None
                if not jammed:
                    self._jam_since = None
                    return self.current
                if self._jam_since is None:
                    self._jam_since = now
                if now - self._jam_since >= (PAUSE_HOLD_LOSSY if lossy else PAUSE_HOLD):
                    if self._resumed_at is not None and now - self._resumed_at >= PAUSE_FORGET:
                        self.pauses = 0
                    self.pauses += 1
                    return self._set(None, now)
                return self.current
            if (congested and not recent) or now - self._over_since >= DOWN_HOLD:
                lower = [rid for rid in below if rates[rid] <= budget]
                self._over_since = None
                return self._set(lower[0] if lower else below[-1], now)
            self._up_since = None
            return self.current
        self._over_since = None
        self._jam_since = None
        # up: the next better layer fits with the margin for UP_HOLD
        position = names.index(self.current) if self.current is not None else len(names)
        if position == 0 or congested:
            self._up_since = None
            return self.current
        better = names[position - 1]
        if rates[better] * UP_MARGIN <= budget:
            if self._up_since is None:
                self._up_since = now
            hold = UP_HOLD if self.current is not None else min(RESUME_HOLD * 2 ** max(0, self.pauses - 1),
                                                                 RESUME_HOLD_MAX)
            if now - self._up_since >= hold:
                if self.current is None:
                    self._resumed_at = now
                return self._set(better, now)
        else:
            self._up_since = None
        return self.current

    def _set(self, rid: str | None, now: float, *, start: bool = False) -> str | None:
        self._starting = start
        if rid != self.current or not self._chosen:
            if self._chosen and rid != self.current:
                self.switches += 1
            self.current = rid
            self._over_since = self._up_since = self._jam_since = None
            self._last_step = now
        self._chosen = True
        return rid


def layer_switch_supported(datapaths) -> bool:
    """Whether routers built on ``datapaths`` can switch layers (``route_select``), so that the
    signaling may accept simulcast: None is the :class:`~callsgw.sfu.datapath.PythonDatapath`;
    otherwise the native engine's :class:`~callsgw.sfu.native.NativeDatapath` must have it."""
    if datapaths is None:
        return True
    from callsgw.sfu.native import NativeDatapath

    return callable(getattr(NativeDatapath, "route_select", None))

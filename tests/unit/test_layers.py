"""callsgw.sfu.layers.LayerSelector, sans-I/O with a simulated clock and simulated estimates."""

from __future__ import annotations

from callsgw.sfu.layers import DOWN_HOLD, PAUSE_HOLD, PAUSE_HOLD_LOSSY, RESUME_HOLD, TICK, UP_HOLD, LayerSelector

H_BPS, L_BPS, VOICE_BPS = 1_500_000.0, 150_000.0, 2 * 40_000.0
LAYERS = [("h", H_BPS), ("l", L_BPS)]


def run(selector, start, end, estimate, *, congested=False, lossy=False, layers=LAYERS, voice=VOICE_BPS):
    """Tick every TICK from start (inclusive) to end (exclusive); the times the choice changed."""
    changes = []
    t = start
    while t < end - 1e-9:
        before = selector.current
        got = selector.update(t, layers, estimate_bps=estimate, congested=congested, lossy=lossy, voice_bps=voice)
        if got != before:
            changes.append((round(t, 3), got))
        t += TICK
    return changes


def test_without_an_estimate_every_subscriber_gets_the_best_live_layer():
    s = LayerSelector()
    assert s.update(0.0, LAYERS, estimate_bps=None) == "h"
    assert s.update(0.5, [("l", L_BPS)], estimate_bps=None) == "l"  # h stopped: what is there
    assert s.update(1.0, LAYERS, estimate_bps=None) == "h"
    assert s.update(1.5, [], estimate_bps=None) is None


def test_the_first_choice_with_an_estimate_is_the_lowest_then_up_after_the_hold():
    s = LayerSelector()
    assert s.update(0.0, LAYERS, estimate_bps=5e6) == "l"
    assert run(s, 0.5, 5.0, 5e6) == [(0.5 + UP_HOLD, "h")]
    assert LayerSelector().update(0.0, LAYERS, estimate_bps=400e3) == "l"
    # nothing fits: still the lowest layer (a low estimate without congestion only says what was delivered)
    assert LayerSelector().update(0.0, LAYERS, estimate_bps=100e3) == "l"


def test_congestion_moves_down_within_two_seconds_and_clearing_moves_up_after_the_hold():
    s = LayerSelector()
    assert run(s, 0.0, 10.0, 5e6) == [(0.0, "l"), (TICK + UP_HOLD, "h")]
    # the link drops to 400 kbit/s at t=10 (no congestion flag): down after DOWN_HOLD, well within 2 s
    changes = run(s, 10.0, 20.0, 400e3)
    assert changes == [(10.0 + DOWN_HOLD, "l")]
    assert changes[0][0] - 10.0 <= 2.0
    # cleared at t=20: up only when h has fitted with the margin for UP_HOLD, not before
    changes = run(s, 20.0, 30.0, 5e6)
    assert changes == [(20.0 + UP_HOLD, "h")]


def on_h():
    """A selector that has climbed to h (it starts on the lowest layer), at t = 10."""
    s = LayerSelector()
    run(s, 0.0, 10.0, 5e6)
    assert s.current == "h"
    return s


def test_the_congested_flag_steps_down_at_once_and_pauses_only_a_lowest_layer_that_stays_over_and_congested():
    s = on_h()
    # down at once; then l itself over the budget and congested from the next tick on: paused after PAUSE_HOLD
    assert run(s, 11.0, 11.5, 5e6, congested=True) == [(11.0, "l")]
    assert run(s, 11.5, 16.0, 200e3, congested=True) == [(11.5 + PAUSE_HOLD, None)]
    s = on_h()
    run(s, 11.0, 11.5, 5e6, congested=True)
    assert run(s, 11.5, 20.0, 5e6, congested=True) == []  # congested but l fits: the congestion is not l's
    s = on_h()
    run(s, 11.0, 11.5, 5e6, congested=True)
    assert run(s, 11.5, 13.5, 200e3, congested=True) == []
    assert run(s, 13.5, 14.0, 200e3) == []  # a clear tick restarts the wait
    assert run(s, 14.0, 16.0, 200e3, congested=True) == []


def test_voice_keeps_priority_the_screen_gets_what_is_left():
    # 300 kbit/s: two Opus streams (80 kbit/s) and l (150) fit; h does not
    s = LayerSelector()
    assert s.update(0.0, LAYERS, estimate_bps=300e3, voice_bps=VOICE_BPS) == "l"
    # 220 kbit/s with 80 of voice leaves 140: l (150) no longer fits but nothing is congested: l stays
    assert run(s, 1.0, 4.0, 220e3) == []
    # when l itself keeps the link congested, the screen pauses and voice stays whole
    assert run(s, 4.0, 9.0, 220e3, congested=True) == [(4.0 + PAUSE_HOLD, None)]
    # and l comes back with the margin (150 * 1.15 + 80 = 252.5 kbit/s) after RESUME_HOLD
    assert run(s, 10.0, 20.0, 280e3) == [(10.0 + RESUME_HOLD, "l")]


def test_a_screen_that_keeps_coming_back_waits_longer_each_time():
    # each resume starts with a keyframe burst; on a link where l keeps losing, the pauses win more time
    s = LayerSelector()
    s.update(0.0, LAYERS, estimate_bps=300e3)
    t, resumed = 0.5, []
    for _ in range(4):
        assert run(s, t, t + PAUSE_HOLD_LOSSY + 0.5, 300e3, congested=True, lossy=True)[-1][1] is None
        t += PAUSE_HOLD_LOSSY + 0.5
        changes = run(s, t, t + 40.0, 300e3)
        resumed.append(changes[0][0] - t)
        t += changes[0][0] - t + 0.5
    assert resumed == [RESUME_HOLD, 2 * RESUME_HOLD, 4 * RESUME_HOLD, 4 * RESUME_HOLD]  # doubling, at most 16 s
    assert s.pauses == 4
    run(s, t, t + 31.0, 300e3)  # up for PAUSE_FORGET: the next pause is a first one again
    t += 31.0
    run(s, t, t + PAUSE_HOLD_LOSSY + 0.5, 300e3, congested=True, lossy=True)
    t += PAUSE_HOLD_LOSSY + 0.5
    assert s.pauses == 1 and run(s, t, t + 10.0, 300e3)[0][0] == t + RESUME_HOLD


def test_a_lowest_layer_that_fits_on_average_but_keeps_losing_pauses_for_voice():
    # 300 kbit/s leaves 220 for l (150 on average): it fits, but its frames are bursts bigger than the
    # link's queue (scrolling text), so the link keeps losing; voice must keep it
    s = LayerSelector()
    assert s.update(0.0, LAYERS, estimate_bps=300e3) == "l"
    assert run(s, 0.5, 6.0, 300e3, congested=True) == []  # congested, fitting, not losing: l stays
    assert run(s, 6.0, 12.0, 300e3, congested=True, lossy=True) == [(6.0 + PAUSE_HOLD_LOSSY, None)]
    assert PAUSE_HOLD_LOSSY < PAUSE_HOLD  # voice is losing too: sooner than for a layer only over the budget
    s = LayerSelector()
    s.update(0.0, LAYERS, estimate_bps=300e3)
    assert run(s, 0.5, 2.0, 300e3, congested=True, lossy=True) == []  # a burst of loss shorter than the hold
    assert run(s, 2.0, 2.5, 300e3, congested=True) == []  # ... ends: the wait starts again
    assert run(s, 2.5, 4.0, 300e3, congested=True, lossy=True) == []


def test_an_estimate_that_hovers_does_not_flap():
    s = LayerSelector()
    s.update(0.0, LAYERS, estimate_bps=400e3)
    t, changes = 0.5, []
    for n in range(200):  # 100 s: alternately just above h's bitrate and far below, each for 1 s
        estimate = H_BPS * 1.1 + VOICE_BPS if (n // 2) % 2 == 0 else 400e3
        before = s.current
        s.update(t, LAYERS, estimate_bps=estimate, voice_bps=VOICE_BPS)
        if s.current != before:
            changes.append(t)
        t += TICK
    assert changes == []  # h never fits with the margin long enough: stays on l


def test_a_gone_layer_is_left_at_once_and_a_forced_layer_wins_while_live():
    s = on_h()
    switches = s.switches
    assert s.update(0.5, [("l", L_BPS)], estimate_bps=5e6) == "l"
    s.force("l")
    assert s.update(1.0, LAYERS, estimate_bps=5e6) == "l"
    s.force("h")
    assert s.update(1.5, LAYERS, estimate_bps=100e3) == "h"
    assert s.update(2.0, [("l", L_BPS)], estimate_bps=100e3) == "l"  # forced h is not live: the one there
    s.force(None)
    assert s.update(2.5, LAYERS, estimate_bps=5e6) is None
    s.force()
    assert s.update(3.0, LAYERS, estimate_bps=5e6) == "l"  # automatic again: a fresh start, from the lowest
    assert s.switches - switches == 5


def test_layers_that_go_live_after_the_route_started_are_chosen_afresh_not_left_paused():
    s = LayerSelector()
    assert s.update(0.0, [], estimate_bps=80e3, voice_bps=VOICE_BPS) is None  # the share has not begun
    # the layers arrive while the estimate only reflects voice: the lowest layer, never a pause
    assert s.update(0.5, LAYERS, estimate_bps=80e3, voice_bps=VOICE_BPS) == "l"
    assert s.update(1.0, [], estimate_bps=5e6) is None
    assert s.update(1.5, LAYERS, estimate_bps=5e6) == "l"  # chosen afresh: from the lowest, climbing
    assert run(s, 2.0, 5.0, 5e6) == [(2.0 + UP_HOLD, "h")]


def test_a_start_on_the_only_live_layer_moves_to_a_lower_one_that_goes_live_next():
    s = LayerSelector()
    assert s.update(0.0, [("h", 0.0)], estimate_bps=300e3) == "h"  # h's first packets came before l's
    assert s.update(0.5, LAYERS, estimate_bps=300e3) == "l"
    assert run(s, 1.0, 10.0, 5e6) == [(1.0 + UP_HOLD, "h")]
    assert s.update(10.0, LAYERS + [("q", 50e3)], estimate_bps=5e6) == "h"  # not starting any more

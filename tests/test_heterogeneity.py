"""System heterogeneity (``fl_app.heterogeneity``): the clock's arithmetic on a
hand-built device; deadlines, over-commitment and partial work keep exactly the
clients a hand computation says; devices repeat for a seed, differ for another, keep
client k's profile when more clients are drawn and follow their stated distributions;
the online window wraps past midnight; Power-of-Choice and Oort pick what their
documented rules pick; FedBuff's weights and buffered step match a hand computation,
and its scheduler the hand-worked arrivals; bad arguments are refused with a message
naming the field."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from fl_app.heterogeneity import (
    Arrival,
    AsyncScheduler,
    DeviceProfile,
    DeviceSpec,
    buffered_update,
    client_seconds,
    compute_seconds,
    draw_profiles,
    oort_select,
    oort_utility,
    power_of_choice,
    round_timing,
    staleness_weight,
)

PHONE = DeviceProfile(
    seconds_per_example=0.25,
    down_bps=8e6,
    up_bps=2e6,
    online_start_s=80_000.0,
    online_fraction=0.25,
    day_s=86_400.0,
)


# --- clock -------------------------------------------------------------------------


def test_client_seconds_is_download_plus_compute_plus_upload() -> None:
    # 1 MB down at 8 Mbit/s: 1 s; 2 epochs x 4 examples x 0.25 s: 2 s;
    # 0.5 MB up at 2 Mbit/s: 2 s
    assert compute_seconds(PHONE, num_examples=4, epochs=2) == 2.0
    seconds = client_seconds(
        PHONE, bytes_down=1_000_000, bytes_up=500_000, num_examples=4, epochs=2
    )
    assert seconds == 5.0
    assert (
        client_seconds(PHONE, bytes_down=0, bytes_up=0, num_examples=0, epochs=3) == 0
    )


SECONDS = {0: 5.0, 1: 1.0, 2: 3.0, 3: 3.0, 4: 7.0}  # finishing order 1, 2, 3, 0, 4


def test_a_deadline_keeps_exactly_the_clients_that_finish_by_it() -> None:
    timing = round_timing(SECONDS, deadline=3.0, keep=None, partial_work=False)
    assert timing.finished == (1, 2, 3)  # 3.0 is on time; the tie goes by id
    assert timing.late == (0, 4)
    assert timing.partial == {}
    assert timing.round_seconds == 3.0  # someone is late: the server waits it out
    everyone = round_timing(SECONDS, deadline=10.0, keep=None, partial_work=False)
    assert everyone.finished == (1, 2, 3, 0, 4)
    assert everyone.late == ()
    assert everyone.round_seconds == 7.0  # all in before the deadline: last arrival
    nobody = round_timing(SECONDS, deadline=0.5, keep=None, partial_work=False)
    assert nobody.finished == ()
    assert nobody.late == (1, 2, 3, 0, 4)
    assert nobody.round_seconds == 0.5


def test_over_commitment_keeps_the_first_k_and_ends_at_the_kth_arrival() -> None:
    timing = round_timing(SECONDS, deadline=None, keep=2, partial_work=False)
    assert timing.finished == (1, 2)
    assert timing.late == (3, 0, 4)
    assert timing.round_seconds == 3.0
    # the round ends at min(deadline, K-th arrival)
    early = round_timing(SECONDS, deadline=10.0, keep=4, partial_work=False)
    assert (early.finished, early.round_seconds) == ((1, 2, 3, 0), 5.0)
    short = round_timing(SECONDS, deadline=4.0, keep=4, partial_work=False)
    assert (short.finished, short.late, short.round_seconds) == ((1, 2, 3), (0, 4), 4.0)
    # keeping more than there are clients keeps them all
    more = round_timing(SECONDS, deadline=None, keep=99, partial_work=False)
    assert (more.finished, more.round_seconds) == ((1, 2, 3, 0, 4), 7.0)


def test_no_deadline_and_no_keep_waits_for_everyone() -> None:
    timing = round_timing(SECONDS, deadline=None, keep=None, partial_work=True)
    assert timing.finished == (1, 2, 3, 0, 4)
    assert (timing.late, timing.partial, timing.round_seconds) == ((), {}, 7.0)
    empty = round_timing({}, deadline=5.0, keep=3, partial_work=False)
    assert (empty.finished, empty.late, empty.round_seconds) == ((), (), 0.0)


def test_partial_work_matches_a_hand_computation() -> None:
    # deadline 10; client: (total seconds, compute seconds) -> communication
    # a: (14, 8) -> 6:  (10 - 6) / 8 = 0.5
    # b: (13, 8) -> 5:  (10 - 5) / 8 = 0.625
    # c: (20, 5) -> 15: negative -> excluded, late
    # d: 9 -> on time
    seconds = {10: 14.0, 11: 13.0, 12: 20.0, 13: 9.0}
    compute = {10: 8.0, 11: 8.0, 12: 5.0, 13: 3.0}
    timing = round_timing(
        seconds, deadline=10.0, keep=None, partial_work=True, compute_seconds=compute
    )
    assert timing.finished == (13,)
    assert timing.partial == {11: 0.625, 10: 0.5}
    assert timing.late == (12,)
    assert timing.round_seconds == 10.0
    # keep 2: one slot left after 13, for the one that did the most work
    capped = round_timing(
        seconds, deadline=10.0, keep=2, partial_work=True, compute_seconds=compute
    )
    assert (capped.finished, capped.partial) == ((13,), {11: 0.625})
    assert capped.late == (10, 12)  # in finishing order
    off = round_timing(seconds, deadline=10.0, keep=None, partial_work=False)
    assert (off.partial, off.late) == ({}, (11, 10, 12))
    # the K-th arrival before the deadline ends the round: nobody is partial
    early = round_timing(
        seconds, deadline=10.0, keep=1, partial_work=True, compute_seconds=compute
    )
    assert (early.finished, early.partial, early.round_seconds) == ((13,), {}, 9.0)


# --- devices -----------------------------------------------------------------------


def test_the_same_seed_gives_the_same_devices_and_another_seed_others() -> None:
    spec = DeviceSpec(online_fraction=0.5)
    first = draw_profiles(spec, 50, seed=3)
    assert first == draw_profiles(spec, 50, seed=3)
    other = draw_profiles(spec, 50, seed=4)
    for field in ("seconds_per_example", "down_bps", "up_bps", "online_start_s"):
        assert [getattr(p, field) for p in first] != [getattr(p, field) for p in other]


def test_client_k_keeps_its_profile_when_more_clients_are_drawn() -> None:
    spec = DeviceSpec(online_fraction=0.3)
    assert draw_profiles(spec, 7, seed=11) == draw_profiles(spec, 1000, seed=11)[:7]
    assert draw_profiles(spec, 0, seed=11) == []


def test_devices_follow_the_spec() -> None:
    spec = DeviceSpec(online_fraction=0.4)
    profiles = draw_profiles(spec, 10_000, seed=0)
    compute = np.array([p.seconds_per_example for p in profiles])
    down = np.array([p.down_bps for p in profiles])
    up = np.array([p.up_bps for p in profiles])
    assert np.median(compute) == pytest.approx(0.005, rel=0.05)
    assert np.median(down) == pytest.approx(20e6, rel=0.05)
    assert np.median(up) == pytest.approx(5e6, rel=0.05)
    # sigma 0.8: the 90th percentile is exp(2 * 1.2816 * 0.8) = 7.8x the 10th
    spread = np.percentile(compute, 90) / np.percentile(compute, 10)
    assert spread == pytest.approx(math.exp(2 * 1.2816 * 0.8), rel=0.1)
    assert np.std(np.log(down)) == pytest.approx(1.0, rel=0.05)
    for t in (0.0, 30_000.0):
        online = np.mean([p.is_online(t) for p in profiles])
        assert online == pytest.approx(0.4, abs=0.02)
    flat = draw_profiles(DeviceSpec(compute_sigma=0.0), 5, seed=1)
    assert {p.seconds_per_example for p in flat} == {0.005}
    assert all(p.is_online(t) for p in flat for t in (0.0, 1e3, 1e6))


def test_the_online_window_wraps_past_the_end_of_the_day() -> None:
    # online from 80,000 s for 21,600 s: until 86,400 and on from 0 to 15,200
    assert not PHONE.is_online(79_999.0)
    assert PHONE.is_online(80_000.0)
    assert PHONE.is_online(86_399.0)
    assert PHONE.is_online(0.0)
    assert PHONE.is_online(15_199.0)
    assert not PHONE.is_online(15_200.0)
    assert not PHONE.is_online(50_000.0)
    assert PHONE.is_online(86_400.0 + 100.0)  # the next day
    assert PHONE.is_online(-100.0)  # 86,300 the day before
    assert not PHONE.is_online(86_400.0 + 15_200.0)


# --- selection ---------------------------------------------------------------------

NUM_EXAMPLES = [10, 0, 30, 5, 50, 20, 40, 15]


def test_power_of_choice_keeps_the_highest_loss_candidates_of_the_draw() -> None:
    losses = {0: 0.3, 2: 2.0, 3: 0.1, 4: 0.5, 5: 1.0, 6: 0.7, 7: 0.9}
    for seed in range(20):
        # the documented draw: the d smallest exponential(1) / n_k, ties by id
        keys = np.random.default_rng(seed).exponential(size=8) / np.maximum(
            NUM_EXAMPLES, 1e-300
        )
        candidates = sorted(range(8), key=lambda k: (keys[k], k))[:5]
        assert 1 not in candidates  # no examples, never drawn
        expected = sorted(sorted(candidates, key=lambda k: -losses[k])[:2])
        chosen = power_of_choice(
            np.random.default_rng(seed), NUM_EXAMPLES, losses, d=5, m=2
        )
        assert chosen == expected


def test_power_of_choice_explores_clients_it_has_not_heard_from() -> None:
    chosen = power_of_choice(
        np.random.default_rng(0), NUM_EXAMPLES, {}, d=7, m=7, default_loss=1.0
    )
    assert chosen == [0, 2, 3, 4, 5, 6, 7]
    heard = {k: 100.0 for k in (0, 2, 3, 4, 5, 6)}  # only 7 is unseen
    assert 7 in power_of_choice(np.random.default_rng(0), NUM_EXAMPLES, heard, d=7, m=1)


def test_power_of_choice_draws_candidates_in_proportion_to_their_data() -> None:
    """Successive sampling: P({i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j)."""
    n = [1, 2, 3, 4]
    p = np.array(n) / sum(n)
    rng = np.random.default_rng(5)
    draws = 20_000
    pairs = Counter(tuple(power_of_choice(rng, n, {}, d=2, m=2)) for _ in range(draws))
    for i in range(4):
        for j in range(i + 1, 4):
            exact = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
            assert pairs[(i, j)] / draws == pytest.approx(exact, abs=0.015)


def test_oort_utility_penalizes_only_clients_slower_than_preferred() -> None:
    assert oort_utility(10.0, 5.0, preferred_duration=10.0) == 10.0
    assert oort_utility(10.0, 10.0, preferred_duration=10.0) == 10.0
    assert oort_utility(10.0, 20.0, preferred_duration=10.0) == 2.5  # (1/2)^2
    assert oort_utility(10.0, 40.0, preferred_duration=10.0, alpha=1.0) == 2.5


# explored: 0 fast and high loss, 1 slow and high loss, 2 fast and low loss,
# 3 exactly as fast as preferred; 4 and 5 never trained
STAT = {0: 10.0, 1: 10.0, 2: 1.0, 3: 3.0}
DURATIONS = {0: 5.0, 1: 20.0, 2: 5.0, 3: 10.0}


def oort(seed: int, clients: list[int], m: int, epsilon: float) -> list[int]:
    return oort_select(
        np.random.default_rng(seed),
        clients,
        stat_utility=STAT,
        durations=DURATIONS,
        preferred_duration=10.0,
        m=m,
        epsilon=epsilon,
    )


def test_oort_prefers_fast_high_loss_clients_and_explores_unexplored_ones() -> None:
    # utilities 0: 10, 1: 10 (10/20)^2 = 2.5, 2: 1, 3: 3. m = 3, one explore slot
    explored_too = set()
    for seed in range(20):
        chosen = oort(seed, [0, 1, 2, 3, 4, 5], m=3, epsilon=1 / 3)
        assert chosen[:2] == [0, 3]
        assert chosen[2] in (4, 5)
        explored_too.add(chosen[2])
    assert explored_too == {4, 5}  # uniform over the unexplored: both come up
    # no exploration: the three best utilities, the slow client third
    assert oort(0, [0, 1, 2, 3, 4, 5], m=3, epsilon=0.0) == [0, 1, 3]


def test_oort_fills_from_the_other_pool_when_one_runs_short() -> None:
    # no unexplored client available: every slot exploits
    assert oort(0, [0, 1, 2, 3], m=3, epsilon=0.5) == [0, 1, 3]
    # one explored client: the other slots explore, whatever epsilon
    assert oort(0, [0, 4, 5], m=3, epsilon=0.0) == [0, 4, 5]
    # all clients
    assert oort(0, [0, 1, 2, 3, 4, 5], m=6, epsilon=0.2) == [0, 1, 2, 3, 4, 5]


def test_oort_explores_floor_epsilon_m_slots() -> None:
    # 0.58 * 50 is 28.999999999999996 in floating point: still 29 explore slots
    explored = {k: float(k) for k in range(50)}
    chosen = oort_select(
        np.random.default_rng(0),
        list(range(100)),
        stat_utility=explored,
        durations=dict.fromkeys(explored, 1.0),
        preferred_duration=1.0,
        m=50,
        epsilon=0.58,
    )
    assert chosen[:21] == list(range(29, 50))  # the 21 highest utilities
    assert len(chosen) == 50 and all(k >= 50 for k in chosen[21:])


# --- FedBuff -----------------------------------------------------------------------


def test_staleness_weight_is_polynomial() -> None:
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == 0.5  # 4^-0.5
    assert staleness_weight(8, exponent=1.0) == pytest.approx(1 / 9)
    assert staleness_weight(5, exponent=0.0) == 1.0


def test_buffered_update_matches_a_hand_computation() -> None:
    deltas = [
        [np.array([1.0, 2.0], np.float32), np.array([[4.0]], np.float32)],
        [np.array([4.0, 8.0], np.float32), np.array([[-4.0]], np.float32)],
    ]
    # weights 1 and 0.5 (staleness 3): ([1, 2] + [2, 4]) / 2, (4 - 2) / 2
    step = buffered_update(deltas, [0, 3], None)
    np.testing.assert_array_equal(step[0], np.array([1.5, 3.0], np.float32))
    np.testing.assert_array_equal(step[1], np.array([[1.0]], np.float32))
    assert [t.dtype for t in step] == [np.float32, np.float32]
    # n = 1, 3 (mean 2): weights 1 * 0.5 and 0.5 * 1.5 = 0.75
    # ([0.5, 1] + [3, 6]) / 2 = [1.75, 3.5]; (2 - 3) / 2 = -0.5
    weighted = buffered_update(deltas, [0, 3], [1, 3])
    np.testing.assert_array_equal(weighted[0], np.array([1.75, 3.5], np.float32))
    np.testing.assert_array_equal(weighted[1], np.array([[-0.5]], np.float32))


def test_buffered_update_sums_in_float64() -> None:
    # in float32, 1e8 + 1 rounds back to 1e8 and the 1 is lost
    deltas = [[np.array([x], np.float32)] for x in (1e8, 1.0, -1e8)]
    (step,) = buffered_update(deltas, [0, 0, 0], None)
    assert step.dtype == np.float32
    assert step[0] == np.float32(1 / 3)


def test_the_scheduler_matches_a_hand_worked_example() -> None:
    """Clients 0, 1, 2 take 1, 2, 3 s; two train at once; K = 2; the chooser
    takes the lowest idle id.

    t=0  start 0 (v0, due 1) and 1 (v0, due 2)
    t=1  0 arrives, v0, staleness 0, buffer 1/2; restart 0 (v0, due 2)
    t=2  0 and 1 due: 0 first (id). 0 arrives, buffer full: apply, v1;
         start 0 (v1, due 3)
    t=2  1 arrives at v1 from v0: staleness 1, buffer 1/2; start 1 (v1, due 4)
    t=3  0 arrives, v1, staleness 0, buffer full: apply, v2. Done.
    """
    calls: list[tuple[int, int]] = []

    def duration(client: int, version: int) -> float:
        calls.append((client, version))
        return float(client + 1)

    scheduler = AsyncScheduler(
        num_clients=3,
        duration=duration,
        concurrency=2,
        buffer_size=2,
        seed=0,
        chooser=lambda rng, idle: idle[0],
    )
    assert scheduler.run(until_updates=2) == [
        Arrival(0, 0.0, 1.0, start_version=0, version=0, staleness=0, applied=False),
        Arrival(0, 1.0, 2.0, start_version=0, version=0, staleness=0, applied=True),
        Arrival(1, 0.0, 2.0, start_version=0, version=1, staleness=1, applied=False),
        Arrival(0, 2.0, 3.0, start_version=1, version=1, staleness=0, applied=True),
    ]
    assert calls == [(0, 0), (1, 0), (0, 0), (0, 1), (1, 1)]
    assert scheduler.run(until_updates=1) == scheduler.run(until_updates=2)[:2]
    assert scheduler.run(until_updates=0) == []


def test_the_seeded_scheduler_repeats_and_keeps_its_invariants() -> None:
    profiles = draw_profiles(DeviceSpec(), 10, seed=2)

    def duration(client: int, version: int) -> float:
        return client_seconds(
            profiles[client],
            bytes_down=800_000,
            bytes_up=800_000,
            num_examples=600,
            epochs=1,
        )

    def run(seed: int) -> list[Arrival]:
        return AsyncScheduler(10, duration, 3, 2, seed).run(until_updates=20)

    arrivals = run(7)
    assert arrivals == run(7)
    assert arrivals != run(8)
    assert len(arrivals) == 40
    assert [(a.time, a.client) for a in arrivals] == sorted(
        (a.time, a.client) for a in arrivals
    )
    assert [a.applied for a in arrivals] == [False, True] * 20
    assert [a.version for a in arrivals] == [i // 2 for i in range(40)]
    for a in arrivals:
        assert a.staleness == a.version - a.start_version >= 0
    # a client trains one job at a time, and at most three train at once
    last_end: dict[int, float] = {}
    for a in sorted(arrivals, key=lambda a: a.start_time):
        assert a.start_time >= last_end.get(a.client, 0.0)
        last_end[a.client] = a.time
    for a in arrivals:
        running = [b for b in arrivals if b.start_time <= a.start_time < b.time]
        assert len(running) <= 3
    assert any(a.staleness > 0 for a in arrivals)


# --- refused arguments -------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"median_seconds_per_example": 0.0}, "median_seconds_per_example"),
        ({"median_down_bps": -1.0}, "median_down_bps"),
        ({"median_up_bps": math.nan}, "median_up_bps"),
        ({"compute_sigma": -0.1}, "compute_sigma"),
        ({"up_sigma": -1.0}, "up_sigma"),
        ({"online_fraction": 0.0}, "online_fraction"),
        ({"online_fraction": 1.5}, "online_fraction"),
        ({"day_s": 0.0}, "day_s"),
    ],
)
def test_a_bad_device_spec_is_refused_naming_the_field(
    change: dict[str, float], field: str
) -> None:
    spec = DeviceSpec(**change)
    with pytest.raises(ValueError, match=f"DeviceSpec.{field} "):
        spec.validate()
    with pytest.raises(ValueError, match=field):
        draw_profiles(spec, 3, seed=0)


BAD_ARGUMENTS = [
    ("num_clients", lambda: draw_profiles(DeviceSpec(), -1, seed=0)),
    (
        "bytes_up",
        lambda: client_seconds(
            PHONE, bytes_down=0, bytes_up=-1, num_examples=1, epochs=1
        ),
    ),
    ("epochs", lambda: compute_seconds(PHONE, num_examples=1, epochs=-1)),
    (
        "keep",
        lambda: round_timing(SECONDS, deadline=None, keep=0, partial_work=False),
    ),
    (
        "deadline",
        lambda: round_timing(SECONDS, deadline=-1.0, keep=None, partial_work=False),
    ),
    (
        "compute_seconds",
        lambda: round_timing(SECONDS, deadline=4.0, keep=None, partial_work=True),
    ),
    (
        "compute_seconds",
        lambda: round_timing(
            SECONDS,
            deadline=4.0,
            keep=None,
            partial_work=True,
            compute_seconds={0: 1.0},
        ),
    ),
    (
        "d=2, m=3",
        lambda: power_of_choice(np.random.default_rng(0), NUM_EXAMPLES, {}, d=2, m=3),
    ),
    (
        "d=8",
        lambda: power_of_choice(np.random.default_rng(0), NUM_EXAMPLES, {}, d=8, m=1),
    ),
    ("m must", lambda: oort(0, [0, 1], m=3, epsilon=0.2)),
    (
        "durations",
        lambda: oort_select(
            np.random.default_rng(0),
            [0, 1],
            stat_utility={0: 1.0},
            durations={},
            preferred_duration=1.0,
            m=1,
        ),
    ),
    ("staleness", lambda: staleness_weight(-1)),
    ("staleness", lambda: buffered_update([[np.zeros(1)]], [0, 1], None)),
    ("concurrency", lambda: AsyncScheduler(2, lambda c, v: 1.0, 3, 1, 0).run(1)),
    ("buffer_size", lambda: AsyncScheduler(2, lambda c, v: 1.0, 1, 0, 0).run(1)),
    ("duration", lambda: AsyncScheduler(2, lambda c, v: 0.0, 1, 1, 0).run(1)),
]


@pytest.mark.parametrize(("field", "call"), BAD_ARGUMENTS)
def test_bad_arguments_are_refused_naming_the_field(
    field: str, call: Callable[[], object]
) -> None:
    with pytest.raises(ValueError, match=field):
        call()

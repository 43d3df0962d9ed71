"""Central and local DP (``fl_app.privacy`` and its use in ``BaseStrategy``), and
what the server keeps for the privacy audit (``audit.capture-round``).

``clip`` bounds an update's L2 norm by S; ``privatize`` adds noise of std z S to the
sum of m clipped updates (z S / m on their mean); ``CentralDp`` reports what
dp-accounting's RDP accountant gives for ``SampledWithoutReplacementDpEvent(K, m,
GaussianDpEvent(z / 2))`` under REPLACE_ONE. Through the strategy: each history row
carries that epsilon, the aggregate is w_t + the uniform mean of the clipped updates
+ noise, the run stops before ``dp.max-epsilon`` would be exceeded, and the config
refuses DP with a robust rule and a delta outside (0, 1).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dp_accounting import dp_event, rdp
from dp_accounting.privacy_accountant import NeighboringRelation
from flwr.common import (
    Code,
    FitRes,
    NDArrays,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager

import strategies
from fl_app.client import PartitionClient
from fl_app.config import (
    AuditConfig,
    ConfigError,
    DpConfig,
    RunConfig,
    ValidationConfig,
)
from fl_app.data import client_data
from fl_app.model import build_model, get_weights
from fl_app.privacy import (
    NOISE_SALT,
    CentralDp,
    LocalDp,
    clip,
    gaussian_epsilon,
    local_privatize,
    privatize,
)
from fl_app.results import SUMMARY_FILE, read_history
from strategies import strategy_class
from tests.fakes import FakeNode

S = 1.0  # dp.clip-norm
Z = 1.0  # dp.noise-multiplier
DELTA = 1e-5
K, M = 20, 5  # 20 clients, fraction-fit 0.25


@functools.cache
def direct_epsilon(
    rounds: int, population: int = K, sample: int = M, noise: float = Z / 2
) -> float:
    """Epsilon at DELTA from dp-accounting itself: ``rounds`` sampled Gaussian
    releases, ``sample`` of ``population`` without replacement, REPLACE_ONE."""
    accountant = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    event = dp_event.SampledWithoutReplacementDpEvent(
        population, sample, dp_event.GaussianDpEvent(noise)
    )
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(DELTA))


def dp_config(**changes: Any) -> DpConfig:
    return DpConfig(
        **{"clip_norm": S, "noise_multiplier": Z, "delta": DELTA, **changes}
    )


def norm(arrays: NDArrays) -> float:
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def flat(arrays: NDArrays) -> np.ndarray:
    return np.concatenate([np.ravel(a).astype(np.float64) for a in arrays])


# ------------------------------------------------------------------ clip
def test_clip_scales_a_long_update_to_the_clip_norm() -> None:
    """norm > S: the update comes out with norm S, same direction, same dtype."""
    rng = np.random.default_rng(0)
    update = [rng.standard_normal((30, 20)).astype(np.float32), np.ones(7, np.float32)]
    assert norm(update) > 10
    clipped = clip(update, 2.5)
    assert norm(clipped) == pytest.approx(2.5, abs=1e-5)
    assert [c.dtype for c in clipped] == [np.float32, np.float32]
    ratio = norm(update) / 2.5
    for c, u in zip(clipped, update, strict=True):
        np.testing.assert_allclose(c * ratio, u, rtol=1e-5, atol=1e-6)


def test_clip_leaves_a_short_update_unchanged() -> None:
    """norm < S (and the zero update): returned as is, bit for bit."""
    update = [np.array([[0.3, -0.4]], np.float32), np.array([0.5], np.float32)]
    assert norm(update) < 1.0
    for got, want in zip(clip(update, 1.0), update, strict=True):
        np.testing.assert_array_equal(got, want)
    zeros = [np.zeros((2, 2), np.float32)]
    np.testing.assert_array_equal(clip(zeros, 1.0)[0], zeros[0])


def test_clip_treats_all_arrays_as_one_vector() -> None:
    """Two arrays each shorter than S but jointly longer are clipped together."""
    update = [np.array([0.8], np.float32), np.array([0.6], np.float32)]  # norm 1
    clipped = clip(update, 0.5)
    assert norm(clipped) == pytest.approx(0.5, abs=1e-6)
    np.testing.assert_allclose([clipped[0][0], clipped[1][0]], [0.4, 0.3], rtol=1e-6)


# ------------------------------------------------------------------ privatize
def test_privatize_noise_std_is_zS_on_the_sum_and_zS_over_m_on_the_mean() -> None:
    """m zero updates of 100k coordinates each: the noise on the sum has std z S,
    on the mean z S / m, each share z S / sqrt(m); it is centred and independent
    across clients. (Relative error of the sample std ~0.2%; tolerance 2%.)"""
    z, s, m, d = 1.5, 2.0, 10, 100_000
    config = DpConfig(clip_norm=s, noise_multiplier=z, delta=DELTA)
    zeros = [[np.zeros(d // 2, np.float32), np.zeros((2, d // 4), np.float32)]] * m
    noised = privatize(zeros, config, np.random.default_rng(1234))

    assert len(noised) == m
    assert all(
        [a.shape for a in u] == [(d // 2,), (2, d // 4)] and u[0].dtype == np.float32
        for u in noised
    )
    shares = np.stack([flat(u) for u in noised])  # (m, d)
    total, mean = shares.sum(axis=0), shares.mean(axis=0)
    assert np.std(total) == pytest.approx(z * s, rel=0.02)
    assert np.std(mean) == pytest.approx(z * s / m, rel=0.02)
    assert np.std(shares[0]) == pytest.approx(z * s / math.sqrt(m), rel=0.02)
    assert abs(np.mean(total)) < 6 * z * s / math.sqrt(d)
    assert abs(np.corrcoef(shares[0], shares[1])[0, 1]) < 6 / math.sqrt(d)


def test_privatize_clips_before_adding_noise() -> None:
    """Negligible noise: each output is the clipped update (norm S, or unchanged)."""
    config = DpConfig(clip_norm=1.0, noise_multiplier=1e-9, delta=DELTA)
    long = [np.full(100, 10.0, np.float32)]
    short = [np.full(100, 0.01, np.float32)]
    out_long, out_short = privatize([long, short], config, np.random.default_rng(0))
    assert norm(out_long) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(out_short[0], short[0], atol=1e-7)
    assert privatize([], config, np.random.default_rng(0)) == []


# ------------------------------------------------------------------ ledger
def test_ledger_epsilon_is_dp_accountings_and_grows_with_rounds() -> None:
    """0 before any round; after r rounds exactly dp-accounting's value for r
    composed SampledWithoutReplacement(K, m, Gaussian(z/2)) events, increasing;
    ``epsilon(extra)`` previews one more round without recording it."""
    ledger = CentralDp(dp_config())
    assert ledger.epsilon() == 0.0
    previous = 0.0
    for rounds in (1, 2):
        ledger.record(K, M)
        epsilon = ledger.epsilon()
        assert epsilon == pytest.approx(direct_epsilon(rounds), rel=1e-9)
        assert epsilon > previous
        previous = epsilon
    preview = ledger.epsilon((K, M))
    assert preview == pytest.approx(direct_epsilon(3), rel=1e-9)
    assert preview > previous
    assert ledger.rounds == Counter({(K, M): 2})


def test_ledger_state_dict_round_trips_through_json() -> None:
    """``state_dict`` -> JSON -> ``load_state_dict`` restores the same rounds (the
    epsilon is a function of them, z and delta)."""
    ledger = CentralDp(dp_config())
    for population, sample in [(K, M), (K, M), (10, 2)]:
        ledger.record(population, sample)
    state = json.loads(json.dumps(ledger.state_dict()))
    assert state == {"rounds": [[10, 2, 1], [K, M, 2]]}

    restored = CentralDp(dp_config())
    restored.load_state_dict(state)
    assert restored.rounds == ledger.rounds
    assert restored.state_dict() == ledger.state_dict()


# ------------------------------------------------------------ through the strategy
def make_strategy(
    mnist_dir: Path, run_dir: Path | None = None, **dp: float
) -> tuple[strategies.FedAvg, SimpleClientManager]:
    """FedAvg (mlp) with DP on, over K FakeNodes, sampling m = 0.25 K per round."""
    config = RunConfig(
        dataset="mnist", data_dir=str(mnist_dir), model="mlp", partition_source="node"
    ).replace(
        fraction_fit=0.25,
        fraction_evaluate=0.25,
        min_fit_clients=2,
        min_available_clients=2,
        min_available_timeout=1.0,
        dp=dp_config(**dp),
        validation=ValidationConfig(max_update_norm=0),
    )
    strategy = strategies.FedAvg(config, run_dir=run_dir)
    manager = SimpleClientManager()
    for k in range(K):
        assert manager.register(FakeNode(f"node-{7919 * (k + 1)}", partition_id=k))
    return strategy, manager


def current(strategy: strategies.FedAvg) -> Parameters:
    return ndarrays_to_parameters(strategy.global_weights)


def random_deltas(like: NDArrays, seed: int) -> list[NDArrays]:
    """M random float32 updates of the model's shapes, each of norm ~ 22 (> S)."""
    rng = np.random.default_rng(seed)
    return [
        [(0.05 * rng.standard_normal(w.shape)).astype(np.float32) for w in like]
        for _ in range(M)
    ]


def play_round(
    strategy: strategies.FedAvg,
    manager: SimpleClientManager,
    server_round: int,
    deltas: list[NDArrays] | None = None,
    sizes: list[int] | None = None,
    losses: list[float] | None = None,
) -> tuple[NDArrays, NDArrays | None]:
    """configure_fit, replies (``deltas``, default random), aggregate_fit, evaluate.
    Returns (w_t, the new global weights or None if the model was kept)."""
    chosen = strategy.configure_fit(server_round, current(strategy), manager)
    assert len(chosen) == M
    w_t = [w.copy() for w in strategy.global_weights]
    if deltas is None:
        deltas = random_deltas(w_t, seed=server_round)
    sizes = sizes or [100] * M
    losses = losses or [0.5] * M
    results = [
        (
            proxy,
            FitRes(
                Status(Code.OK, ""),
                ndarrays_to_parameters(delta),
                n_k,
                {"train_loss": loss},
            ),
        )
        for (proxy, _), delta, n_k, loss in zip(
            chosen, deltas, sizes, losses, strict=True
        )
    ]
    parameters, _ = strategy.aggregate_fit(server_round, results, [])
    strategy.evaluate(server_round, parameters or ndarrays_to_parameters(w_t))
    return w_t, None if parameters is None else parameters_to_ndarrays(parameters)


def bias_only_deltas(w_t: NDArrays, norms: list[float]) -> list[NDArrays]:
    """Updates non-zero only in the output bias (10 coordinates), of given norms."""
    rng = np.random.default_rng(7)
    deltas = []
    for target in norms:
        direction = rng.standard_normal(w_t[-1].shape)
        bias = (target * direction / np.linalg.norm(direction)).astype(np.float32)
        deltas.append([*[np.zeros_like(w) for w in w_t[:-1]], bias])
    return deltas


@dataclass
class Run:
    """A 3-round DP run: the strategy, and per round (w_t, w_{t+1})."""

    strategy: strategies.FedAvg
    rounds: dict[int, tuple[NDArrays, NDArrays]]


@pytest.fixture(scope="module")
def three_rounds(mnist_dir: Path) -> Run:
    """K = 20 FakeNodes, m = 5, z = 1, random updates: rounds 0 to 3 (shared by the
    tests below: each epsilon costs dp-accounting ~0.4 s)."""
    strategy, manager = make_strategy(mnist_dir)
    strategy.evaluate(0, current(strategy))
    rounds = {}
    for server_round in (1, 2, 3):
        w_t, new = play_round(strategy, manager, server_round)
        assert new is not None
        rounds[server_round] = (w_t, new)
    return Run(strategy, rounds)


def test_history_epsilon_matches_dp_accounting_round_by_round(
    three_rounds: Run,
) -> None:
    """Row r's epsilon is dp-accounting's for r rounds of m=5 of K=20 (round 0: 0),
    strictly increasing."""
    strategy = three_rounds.strategy
    epsilons = [row.epsilon for row in strategy.history]
    assert [row.round for row in strategy.history] == [0, 1, 2, 3]
    assert epsilons[0] == 0.0
    for rounds in (1, 2, 3):
        assert epsilons[rounds] == pytest.approx(direct_epsilon(rounds), rel=1e-9)
    assert all(a < b for a, b in itertools.pairwise(epsilons))
    assert strategy.privacy is not None
    assert strategy.privacy.rounds == Counter({(K, M): 3})
    assert all(row.model_updated for row in strategy.history[1:])


def test_dp_noise_on_the_aggregate_has_std_zS_over_m(three_rounds: Run) -> None:
    """z = 1: aggregate - (w_t + clipped mean) is noise of std z S / m over the
    203,530 coordinates of the mlp (sample-std error ~0.2%; tolerance 3%)."""
    for server_round, (w_t, new) in three_rounds.rounds.items():
        deltas = random_deltas(w_t, seed=server_round)  # what play_round sent
        clipped_mean = np.mean([flat(clip(d, S)) for d in deltas], axis=0)
        residual = flat(new) - flat(w_t) - clipped_mean
        assert residual.size > 200_000
        assert np.std(residual) == pytest.approx(Z * S / M, rel=0.03)
        assert abs(np.mean(residual)) < 6 * Z * S / M / math.sqrt(residual.size)
        assert np.linalg.norm(residual) > 10 * S  # z > 0: far from the clipped mean


def test_dp_aggregate_is_w_t_plus_uniform_mean_of_clipped_updates(
    mnist_dir: Path,
) -> None:
    """Tiny noise (z = 1e-3): the aggregate is w_t + the *unweighted* mean of the
    clipped updates (n_k ignored, also for train_loss), not the n_k-weighted mean and
    not the unclipped mean; the small noise is still there."""
    z = 1e-3
    strategy, manager = make_strategy(mnist_dir, noise_multiplier=z)
    like = strategy.global_weights
    norms = [0.5, 2.0, 5.0, 0.1, 40.0]  # three above S, two below
    sizes = [1, 10, 100, 1000, 5000]
    losses = [0.1, 0.2, 0.3, 0.4, 4.0]
    deltas = bias_only_deltas(like, norms)
    w_t, new = play_round(strategy, manager, 1, deltas, sizes, losses)
    assert new is not None

    clipped = [clip(d, S) for d in deltas]
    uniform = flat(w_t) + np.mean([flat(c) for c in clipped], axis=0)
    weighted = flat(w_t) + np.average([flat(c) for c in clipped], axis=0, weights=sizes)
    unclipped = flat(w_t) + np.mean([flat(d) for d in deltas], axis=0)
    sigma = z * S / M  # noise std per coordinate of the mean
    residual = flat(new) - uniform
    assert np.max(np.abs(residual)) < 7 * sigma
    assert np.std(residual) == pytest.approx(sigma, rel=0.05)  # the noise is there
    assert np.max(np.abs(flat(new) - weighted)) > 100 * sigma
    assert np.max(np.abs(flat(new) - unclipped)) > 100 * sigma
    assert strategy.history[-1].train_loss == pytest.approx(np.mean(losses))


def test_dp_huge_updates_move_the_model_by_at_most_S_plus_noise(
    mnist_dir: Path,
) -> None:
    """Updates of norm 1e6 (validation bound off): the model moves by <= S plus the
    noise's norm (z S sqrt(d) / m), nowhere near 1e6."""
    z = 1e-3
    strategy, manager = make_strategy(mnist_dir, noise_multiplier=z)
    like = strategy.global_weights
    rng = np.random.default_rng(3)
    deltas = []
    for _ in range(M):
        raw = [rng.standard_normal(w.shape) for w in like]
        scale = 1e6 / norm(raw)
        deltas.append([(scale * r).astype(np.float32) for r in raw])
    w_t, new = play_round(strategy, manager, 1, deltas, sizes=[1, 2, 3, 4, 5000])
    assert new is not None
    assert strategy.history[-1].clients_rejected == 0
    moved = np.linalg.norm(flat(new) - flat(w_t))
    noise_norm = z * S * math.sqrt(flat(w_t).size) / M
    assert moved <= S + 1.1 * noise_norm
    assert all(np.isfinite(a).all() for a in new)


def test_budget_stop_before_max_epsilon_is_exceeded(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max-epsilon between epsilon(2 rounds) and epsilon(3 rounds): rounds 1-2 train;
    round 3's configure_fit returns [] with a stop_reason naming dp.max-epsilon;
    evaluate(3) adds no row; summary.json holds the reason; nothing more is sent."""
    monkeypatch.setattr("fl_app.results.plot_history", lambda *args: None)  # speed only
    budget = (direct_epsilon(2) + direct_epsilon(3)) / 2
    strategy, manager = make_strategy(mnist_dir, run_dir=tmp_path, max_epsilon=budget)
    strategy.evaluate(0, current(strategy))
    for server_round in (1, 2):
        _, new = play_round(strategy, manager, server_round)
        assert new is not None
        assert strategy.stop_reason is None
    final = current(strategy)
    assert len(strategy.configure_evaluate(2, final, manager)) == M  # before the stop

    assert strategy.configure_fit(3, final, manager) == []
    assert strategy.stop_reason is not None
    assert "dp.max-epsilon" in strategy.stop_reason
    assert strategy.evaluate(3, final) is None
    assert [row.round for row in strategy.history] == [0, 1, 2]
    assert strategy.configure_evaluate(3, final, manager) == []
    assert strategy.configure_fit(4, final, manager) == []

    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["stop_reason"] == strategy.stop_reason
    assert summary["rounds_done"] == 2
    assert summary["epsilon"] == pytest.approx(direct_epsilon(2), rel=1e-9)
    rows = read_history(tmp_path)
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert rows[-1]["epsilon"] == pytest.approx(direct_epsilon(2), rel=1e-9)
    assert rows[-1]["epsilon"] <= budget


def test_ledger_population_is_the_clients_the_round_was_drawn_from(
    mnist_dir: Path,
) -> None:
    """Round 1 meets all 20 nodes; after 10 disconnect, round 2 draws 2 of the 10
    still connected, so the ledger must record (10, 2), not (20, 2)."""
    strategy, manager = make_strategy(mnist_dir)
    assert len(strategy.configure_fit(1, current(strategy), manager)) == M
    for proxy in list(manager.all().values()):
        assert isinstance(proxy, FakeNode)
        if proxy.partition_id >= 10:
            manager.unregister(proxy)
    chosen = strategy.configure_fit(2, current(strategy), manager)
    assert len(chosen) == 2  # max(int(0.25 * 10), min-fit-clients)
    zeros = [np.zeros_like(w) for w in strategy.global_weights]
    results = [
        (proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(zeros), 10, {}))
        for proxy, _ in chosen
    ]
    parameters, _ = strategy.aggregate_fit(2, results, [])
    assert parameters is not None
    assert strategy.privacy is not None
    assert strategy.privacy.rounds == Counter({(10, 2): 1})


def test_dp_noise_cannot_be_regenerated_from_the_run_config(
    three_rounds: Run,
) -> None:
    """An observer who knows the code and the run config (seed) must not be able to
    strip the noise from a released model: w_{t+1} - w_t - their guess of the noise
    should still be noise-sized away from the clipped mean."""
    config = three_rounds.strategy.config
    w_t, new = three_rounds.rounds[1]
    guess_rng = np.random.default_rng([config.seed, 1, NOISE_SALT])
    zeros = [np.zeros_like(w) for w in w_t]
    guessed_noise = np.mean(
        [flat(u) for u in privatize([zeros] * M, config.dp, guess_rng)], axis=0
    )
    deltas = random_deltas(w_t, seed=1)  # what play_round sent in round 1
    clipped_mean = np.mean([flat(clip(d, S)) for d in deltas], axis=0)
    leftover = flat(new) - flat(w_t) - guessed_noise - clipped_mean
    assert np.std(leftover) > 0.5 * Z * S / M


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "name",
    ["krum", "multi-krum", "median", "trimmed-mean", "centered-clipping", "scaffold"],
)
def test_dp_with_a_robust_strategy_is_refused(mnist_dir: Path, name: str) -> None:
    """Central DP cannot wrap a rule whose sensitivity is not S/m (the robust rules;
    SCAFFOLD's control variates): ConfigError naming 'dp.clip-norm'."""
    base = RunConfig(
        dataset="mnist", data_dir=str(mnist_dir), model="mlp", partition_source="node"
    )
    with pytest.raises(ConfigError, match=r"dp\.clip-norm") as caught:
        strategy_class(base.replace(strategy=name, dp=dp_config()))
    assert caught.value.key == "dp.clip-norm"
    strategy_class(base.replace(strategy=name))  # fine without DP
    strategy_class(base.replace(strategy="fedavg", dp=dp_config()))  # DP + FedAvg


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 1.5])
def test_dp_delta_outside_the_open_unit_interval_is_refused(
    mnist_dir: Path, delta: float
) -> None:
    """dp.delta must be in (0, 1): ConfigError naming 'dp.delta'."""
    base = RunConfig(
        dataset="mnist", data_dir=str(mnist_dir), model="mlp", partition_source="node"
    )
    with pytest.raises(ConfigError, match=r"dp\.delta") as caught:
        base.replace(dp=dp_config(delta=delta))
    assert caught.value.key == "dp.delta"


def test_noise_seed_repeats_the_noise_only_when_asked(mnist_dir: Path) -> None:
    """dp.noise-seed = -1 (the default) draws fresh noise each run; a seed >= 0 makes
    two runs identical, for studies."""

    def first_round(noise_seed: int) -> NDArrays:
        strategy, manager = make_strategy(mnist_dir, noise_seed=noise_seed)
        _, new = play_round(strategy, manager, 1)
        assert new is not None
        return new

    seeded = [first_round(5), first_round(5)]
    fresh = [first_round(-1), first_round(-1)]
    assert np.array_equal(flat(seeded[0]), flat(seeded[1]))
    assert not np.array_equal(flat(fresh[0]), flat(fresh[1]))


# ------------------------------------------------------------------ local DP
def local_strategy(
    mnist_dir: Path, run_dir: Path | None = None, **dp: float
) -> tuple[strategies.FedAvg, SimpleClientManager]:
    """``make_strategy`` with ``dp.mode = "local"``."""
    strategy, manager = make_strategy(mnist_dir, run_dir, **dp)
    config = strategy.config.replace(dp=dp_config(mode="local", **dp))
    return strategies.FedAvg(config, run_dir=run_dir), manager


def test_local_privatize_clips_then_adds_zS_to_every_coordinate() -> None:
    config = DpConfig(clip_norm=2.0, noise_multiplier=0.5, delta=DELTA, mode="local")
    long = [np.full(100_000, 10.0, np.float32)]
    noised = local_privatize(long, config, np.random.default_rng(0))[0]
    clean = clip(long, 2.0)[0]
    assert noised.dtype == np.float32
    assert np.std(noised - clean) == pytest.approx(0.5 * 2.0, rel=0.02)
    assert abs(np.mean(noised - clean)) < 6 * 1.0 / math.sqrt(100_000)


def test_local_ledger_reports_the_worst_clients_composed_epsilon() -> None:
    """Each participation is one Gaussian release (multiplier z/2, no sampling
    amplification: the server knows who took part); the history shows the
    client that took part most."""
    ledger = LocalDp(dp_config(mode="local"))
    assert ledger.epsilon() == 0.0
    ledger.record([1, 2, 3])
    ledger.record([2, 5])
    accountant = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_event.GaussianDpEvent(Z / 2), 2)
    assert ledger.epsilon() == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)
    assert ledger.epsilon() == pytest.approx(gaussian_epsilon(Z, 2, DELTA))
    assert ledger.epsilon([2]) == pytest.approx(gaussian_epsilon(Z, 3, DELTA))
    assert gaussian_epsilon(Z, 3, DELTA) > gaussian_epsilon(Z, 2, DELTA)
    restored = LocalDp(dp_config(mode="local"))
    restored.load_state_dict(json.loads(json.dumps(ledger.state_dict())))
    assert restored.releases == Counter({1: 1, 2: 2, 3: 1, 5: 1})


def test_local_dp_server_adds_no_noise_and_accounts_per_client(
    mnist_dir: Path,
) -> None:
    """Under local DP the server averages what arrives (n_k-weighted, as FedAvg)
    without clipping or noise of its own, and each row's epsilon is the worst
    client's after its participations so far."""
    strategy, manager = local_strategy(mnist_dir)
    like = strategy.global_weights
    deltas = bias_only_deltas(like, [0.5, 2.0, 5.0, 0.1, 40.0])
    sizes = [1, 10, 100, 1000, 5000]
    strategy.evaluate(0, current(strategy))
    w_t, new = play_round(strategy, manager, 1, deltas, sizes)
    assert new is not None
    weighted = flat(w_t) + np.average([flat(d) for d in deltas], axis=0, weights=sizes)
    np.testing.assert_allclose(flat(new), weighted, atol=1e-5)
    assert strategy.history[-1].epsilon == pytest.approx(gaussian_epsilon(Z, 1, DELTA))
    assert isinstance(strategy.privacy, LocalDp)
    assert sum(strategy.privacy.releases.values()) == M


def test_local_dp_composes_with_rules_central_dp_refuses() -> None:
    """Central DP cannot wrap the median (no mean to noise); local DP can (the rule
    is post-processing of noised updates). A bad mode names its key."""
    base = RunConfig(model="mlp")
    with pytest.raises(ConfigError, match=r"dp\.clip-norm"):
        strategy_class(base.replace(strategy="median", dp=dp_config()))
    strategy_class(base.replace(strategy="median", dp=dp_config(mode="local")))
    with pytest.raises(ConfigError, match=r"dp\.mode"):
        base.replace(dp=dp_config(mode="server"))


def test_a_local_dp_client_sends_its_clipped_update_plus_zS_noise(
    mnist_dir: Path,
) -> None:
    """The reply of a client with local DP is its clean clipped update plus noise
    of std z S per coordinate (the same client, seeded batches, DP off: the clean
    update)."""
    train, val = client_data(
        "mnist", str(mnist_dir), "iid", 0, 4, alpha=0.5, val_fraction=0.1, seed=1
    )
    weights = get_weights(build_model("mlp", seed=0))
    config = {
        "server-round": 1,
        "learning-rate": 0.1,
        "local-epochs": 1,
        "batch-size": 10,
        "seed": 1,
    }
    clean, n, _ = PartitionClient(build_model("mlp"), train, val, 0).fit(
        weights, dict(config)
    )
    local = dp_config(mode="local", clip_norm=0.5, noise_multiplier=0.2, noise_seed=3)
    noised, n_local, _ = PartitionClient(
        build_model("mlp"), train, val, 0, local_dp=local
    ).fit(weights, dict(config))
    assert norm(clean) > 0.5 and n_local == n  # clipped; n_k still goes up
    residual = flat(noised) - flat(clip(clean, 0.5))
    assert np.std(residual) == pytest.approx(0.2 * 0.5, rel=0.02)
    assert abs(np.mean(residual)) < 6 * 0.1 / math.sqrt(residual.size)


def test_the_server_keeps_the_capture_rounds_updates_before_its_noise(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``audit.capture-round``: what a curious server holds, written to
    audit/round-<r>.npz: the round's global weights and each partition's update
    as the pipeline decoded it, before central DP's clip and noise."""
    monkeypatch.setattr("fl_app.results.plot_history", lambda *args: None)
    strategy, manager = make_strategy(mnist_dir, run_dir=tmp_path)
    config = strategy.config.replace(audit=AuditConfig(capture_round=1))
    strategy = strategies.FedAvg(config, run_dir=tmp_path)
    strategy.evaluate(0, current(strategy))
    chosen = strategy.configure_fit(1, current(strategy), manager)
    w_t, new = play_round(strategy, manager, 1)
    assert new is not None
    partitions = sorted(strategy.round_partitions)
    with np.load(tmp_path / "audit" / "round-1.npz") as held:
        for i, w in enumerate(w_t):
            np.testing.assert_array_equal(held[f"global_{i}"], w)
        deltas = random_deltas(w_t, seed=1)  # what play_round sent, in draw order
        for k, (proxy, _) in enumerate(chosen):
            p = strategy.sampler.partition_of(proxy)
            assert int(held[f"n_{p}"]) == 100
            np.testing.assert_array_equal(held[f"delta_{p}_0"], deltas[k][0])
        assert {int(key[2:]) for key in held if key.startswith("n_")} == set(partitions)
        assert held["sampled"].tolist() == partitions
    assert not (tmp_path / "audit" / "round-2.npz").exists()

"""Strategy state: ``state_dict()`` holds everything a strategy's later rounds depend
on, so a strategy rebuilt from it continues exactly as the original would (the seam
a checkpoint uses). Checked for every registered strategy, and with central DP."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from flwr.common import (
    Code,
    FitRes,
    NDArrays,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager

import strategies
from fl_app.config import DpConfig, RunConfig
from strategies.base import BaseStrategy
from tests.fakes import FakeNode

NUM_NODES = 6
# Strategies whose later rounds depend on more than the global weights.
STATEFUL = {
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "scaffold",
    "centered-clipping",
}


def make(mnist_dir: Path, name: str, **changes: object) -> BaseStrategy:
    config = RunConfig(
        dataset="mnist",
        data_dir=str(mnist_dir),
        model="mlp",
        partition_source="node",
        strategy=name,
        fraction_fit=1.0,
        min_available_timeout=1.0,
    ).replace(**changes)
    return strategies.STRATEGIES[name](config, run_dir=None)


def manager() -> SimpleClientManager:
    clients = SimpleClientManager()
    for k in range(NUM_NODES):
        clients.register(FakeNode(f"node-{97 * k + 5}", k, num_partitions=NUM_NODES))
    return clients


def play(
    strategy: BaseStrategy, clients: SimpleClientManager, server_round: int
) -> NDArrays:
    """Round ``server_round`` with seeded replies (updates ~ 0.01 N(0,1), SCAFFOLD's
    delta c too); returns the new global weights. Flower numbers a resumed run's
    rounds from 1: the strategy adds the rounds its state already holds."""
    flower_round = server_round - strategy.round_offset
    parameters = ndarrays_to_parameters(strategy.global_weights)
    instructions = strategy.configure_fit(flower_round, parameters, clients)
    rng = np.random.default_rng(server_round)
    results = []
    for client, _ in instructions:
        layout = strategy.expected_layout()
        arrays = [
            (0.01 * rng.standard_normal(shape)).astype(dtype)
            for shape, dtype in zip(layout.shapes, layout.dtypes, strict=True)
        ]
        size = 50 + 10 * strategy.sampler.partition_of(client)
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), size, {})
        results.append((client, res))
    new, _ = strategy.aggregate_fit(flower_round, results, [])
    assert new is not None
    strategy.evaluate(flower_round, new)
    assert strategy.history[-1].round == server_round
    return parameters_to_ndarrays(new)


def same(a: NDArrays, b: NDArrays) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", list(strategies.STRATEGIES))
def test_a_strategy_rebuilt_from_its_state_continues_identically(
    mnist_dir: Path, name: str
) -> None:
    original = make(mnist_dir, name)
    clients = manager()
    original.evaluate(0, ndarrays_to_parameters(original.global_weights))
    for server_round in (1, 2):
        play(original, clients, server_round)
    state = copy.deepcopy(original.state_dict())
    assert state["round"] == 2 and len(state["history"]) == 3

    restored = make(mnist_dir, name)
    restored.load_state_dict(state)
    fresh = make(mnist_dir, name)  # only the global weights carried over
    fresh.global_weights = [w.copy() for w in state["global_weights"]]

    expected = play(original, clients, 3)
    assert same(play(restored, manager(), 3), expected)
    assert comparable(restored.state_dict()) == comparable(original.state_dict())
    if name in STATEFUL:  # the check is not vacuous: the extra state matters
        weights = play(fresh, manager(), 3)
        own = algorithm_state(original.state_dict())
        assert own, f"{name} keeps no state of its own"
        assert algorithm_state(fresh.state_dict()) != own or not same(
            weights, expected
        ), f"{name}: round 3 is the same without the state carried over"


def algorithm_state(state: dict) -> str:
    """What a strategy keeps beyond the base's weights, history and ledger (server
    moments, momentum, control variates), as text."""
    base = {"round", "global_weights", "history", "stop_reason", "privacy"}
    return comparable({k: v for k, v in state.items() if k not in base}, rows=False)


def comparable(state: dict, rows: bool = True) -> str:
    """The state as text, arrays as lists, without the machine's timings."""
    if rows:
        state = {**state, "history": [dict(row) for row in state["history"]]}
        for row in state["history"]:
            row.pop("round_seconds")
            row.pop("elapsed_seconds")
    return json.dumps(state, default=lambda a: np.asarray(a).tolist(), sort_keys=True)


def test_the_privacy_ledger_is_part_of_the_state(mnist_dir: Path) -> None:
    dp = DpConfig(clip_norm=1.0, noise_multiplier=2.0, noise_seed=3)
    original = make(mnist_dir, "fedadam", dp=dp)
    clients = manager()
    for server_round in (1, 2):
        play(original, clients, server_round)
    state = json.loads(json.dumps(original.state_dict()["privacy"]))
    restored = make(mnist_dir, "fedadam", dp=dp)
    restored.load_state_dict({**original.state_dict(), "privacy": state})
    assert restored.privacy is not None and original.privacy is not None
    assert restored.privacy.epsilon() == original.privacy.epsilon() > 0
    play(original, clients, 3)
    play(restored, manager(), 3)
    assert restored.history[-1].epsilon == original.history[-1].epsilon

"""Simulated attackers: the attacking partitions are a seeded draw the clients make
for themselves; each attack changes exactly what it claims (sign-flip sends
-factor * update, scale +factor * update, gaussian-noise pure noise, label-flip trains
on 9 - y); honest partitions are untouched; the server counts, but is not told,
the attackers it sampled."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common import Context, NDArrays, RecordDict, Scalar, ndarrays_to_parameters
from flwr.common.config import flatten_dict
from flwr.server.client_manager import SimpleClientManager

import strategies
from fl_app.attacks import attacking_partitions, canary_direction, flip_labels
from fl_app.client import PartitionClient
from fl_app.client_app import client_fn
from fl_app.config import AttackConfig, RunConfig
from fl_app.data import Split, client_data
from fl_app.model import build_model, get_weights
from tests.fakes import FakeNode

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
NUM_PARTITIONS = 10
FIT_CONFIG: dict[str, Scalar] = {
    "server-round": 2,
    "learning-rate": 0.05,
    "local-epochs": 1,
    "batch-size": 10,
    "seed": 3,
}


@pytest.fixture(scope="module")
def data(mnist_dir: Path) -> tuple[Split, Split]:
    return client_data(
        "mnist",
        str(mnist_dir),
        "iid",
        1,
        NUM_PARTITIONS,
        alpha=0.5,
        val_fraction=0.1,
        seed=42,
    )


@pytest.fixture(scope="module")
def global_weights() -> NDArrays:
    return get_weights(build_model("mlp", seed=7))


def fit(data: tuple[Split, Split], weights: NDArrays, attack: AttackConfig | None):
    client = PartitionClient(build_model("mlp"), *data, 1, attack=attack)
    update, _, _ = client.fit(weights, dict(FIT_CONFIG))
    return update


def test_attacking_partitions_are_a_seeded_draw_of_the_right_size() -> None:
    chosen = attacking_partitions(seed=42, num_partitions=100, fraction=0.2)
    assert len(chosen) == 20 and all(0 <= p < 100 for p in chosen)
    assert attacking_partitions(42, 100, 0.2) == chosen
    assert attacking_partitions(43, 100, 0.2) != chosen
    assert attacking_partitions(42, 100, 0.0) == frozenset()
    assert len(attacking_partitions(42, 10, 0.25)) == 2  # round(2.5) = 2


@pytest.mark.parametrize(("kind", "sign"), [("sign-flip", -1.0), ("scale", 1.0)])
def test_sign_flip_and_scale_multiply_the_honest_update(
    data: tuple[Split, Split], global_weights: NDArrays, kind: str, sign: float
) -> None:
    honest = fit(data, global_weights, None)
    attacked = fit(data, global_weights, AttackConfig(kind=kind, factor=4.0))
    for h, a in zip(honest, attacked, strict=True):
        np.testing.assert_allclose(a, sign * 4.0 * h, rtol=1e-6, atol=1e-9)


def test_gaussian_noise_replaces_the_update(
    data: tuple[Split, Split], global_weights: NDArrays
) -> None:
    honest = fit(data, global_weights, None)
    noise = fit(data, global_weights, AttackConfig(kind="gaussian-noise", sigma=0.5))
    flat = np.concatenate([n.ravel() for n in noise])
    assert [n.shape for n in noise] == [h.shape for h in honest]
    assert flat.std() == pytest.approx(0.5, rel=0.02)
    assert (
        abs(np.corrcoef(flat, np.concatenate([h.ravel() for h in honest]))[0, 1]) < 0.02
    )


def test_a_canary_sends_its_own_fixed_direction_every_round(
    data: tuple[Split, Split], global_weights: NDArrays
) -> None:
    """The same unit direction times ``factor`` whatever the round; another
    partition's (or a held-out id's) is nearly orthogonal to it."""
    canary = AttackConfig(kind="canary", factor=3.0)
    client = PartitionClient(build_model("mlp"), *data, 1, attack=canary)
    sent = [
        client.fit(global_weights, {**FIT_CONFIG, "server-round": r})[0] for r in (1, 2)
    ]
    flat = [np.concatenate([a.ravel() for a in update]) for update in sent]
    np.testing.assert_array_equal(flat[0], flat[1])
    assert np.linalg.norm(flat[0]) == pytest.approx(3.0, rel=1e-5)
    shapes = [w.shape for w in global_weights]
    direction = np.concatenate([a.ravel() for a in canary_direction(3, 1, shapes)])
    np.testing.assert_allclose(flat[0], 3.0 * direction, rtol=1e-6)
    other = np.concatenate([a.ravel() for a in canary_direction(3, 2, shapes)])
    assert abs(direction @ other) < 6 / np.sqrt(direction.size)


def test_label_flip_trains_on_flipped_labels(
    data: tuple[Split, Split], global_weights: NDArrays
) -> None:
    train, val = data
    attacked = fit(data, global_weights, AttackConfig(kind="label-flip"))
    on_flipped = fit((flip_labels(train), val), global_weights, None)
    honest = fit(data, global_weights, None)
    assert all(np.array_equal(a, b) for a, b in zip(attacked, on_flipped, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(attacked, honest, strict=True))
    assert set((flip_labels(train).y + train.y).tolist()) == {9}


def _run_config(mnist_dir: Path, **overrides: Any) -> dict[str, Any]:
    with PYPROJECT.open("rb") as handle:
        table = flatten_dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])
    return {**table, "data-dir": str(mnist_dir), "model": "mlp", **overrides}


def test_client_fn_makes_exactly_the_drawn_partitions_attack(
    mnist_dir: Path, global_weights: NDArrays
) -> None:
    run_config = _run_config(
        mnist_dir, **{"attack.kind": "scale", "attack.fraction": 0.3, "seed": 5}
    )
    attackers = attacking_partitions(5, NUM_PARTITIONS, 0.3)
    roles = []
    for pid in range(NUM_PARTITIONS):
        context = Context(
            run_id=1,
            node_id=pid,
            node_config={"partition-id": pid, "num-partitions": NUM_PARTITIONS},
            state=RecordDict(),
            run_config=run_config,
        )
        client = client_fn(context)
        roles.append(client.numpy_client.client_for({}).attack is not None)  # type: ignore[attr-defined]
    assert {pid for pid, attacks in enumerate(roles) if attacks} == attackers


def test_server_counts_the_sampled_attackers(mnist_dir: Path) -> None:
    config = RunConfig(
        dataset="mnist",
        data_dir=str(mnist_dir),
        model="mlp",
        partition_source="node",
        fraction_fit=0.5,
        seed=5,
    ).replace(attack=AttackConfig(kind="sign-flip", fraction=0.3))
    strategy = strategies.FedAvg(config, run_dir=None)
    manager = SimpleClientManager()
    for pid in range(NUM_PARTITIONS):
        manager.register(FakeNode(f"n{pid}", pid, num_partitions=NUM_PARTITIONS))
    attackers = attacking_partitions(5, NUM_PARTITIONS, 0.3)
    parameters = ndarrays_to_parameters(strategy.global_weights)
    counts = []
    for server_round in (1, 2, 3):
        chosen = strategy.configure_fit(server_round, parameters, manager)
        sampled = {strategy.sampler.partition_of(client) for client, _ in chosen}
        assert strategy.round_record.attackers_sampled == len(sampled & attackers)
        assert all("attack" not in str(ins.config) for _, ins in chosen)
        counts.append(strategy.round_record.attackers_sampled)
    assert any(counts)

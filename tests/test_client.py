"""The ClientApp: PartitionClient.fit is seeded local SGD that lowers the loss on the
client's own data and sends its update w_k - w_t with n_k; evaluate uses the held-out
share; get_properties reports the partition; client_fn builds the right client from a
Flower Context (attack role included) and explains a missing --node-config."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.client import Client
from flwr.common import (
    Code,
    Context,
    FitIns,
    GetPropertiesIns,
    NDArrays,
    RecordDict,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.config import flatten_dict

from fl_app.client import PartitionClient
from fl_app.client_app import client_fn
from fl_app.config import ConfigError
from fl_app.data import Split, client_data
from fl_app.model import build_model, get_weights, set_weights
from fl_app.training import evaluate

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PARTITION_ID, NUM_PARTITIONS = 3, 10
FIT_CONFIG: dict[str, Scalar] = {
    "server-round": 1,
    "learning-rate": 0.05,
    "local-epochs": 2,
    "batch-size": 10,
    "seed": 1,
}


def _client_data(mnist_dir: Path, partition_id: int) -> tuple[Split, Split]:
    return client_data(
        "mnist",
        str(mnist_dir),
        "iid",
        partition_id,
        NUM_PARTITIONS,
        alpha=0.5,
        val_fraction=0.1,
        seed=42,
    )


@pytest.fixture(scope="module")
def data(mnist_dir: Path) -> tuple[Split, Split]:
    return _client_data(mnist_dir, PARTITION_ID)


@pytest.fixture
def client(data: tuple[Split, Split]) -> PartitionClient:
    train, val = data
    return PartitionClient(build_model("2nn", seed=0), train, val, PARTITION_ID)


@pytest.fixture(scope="module")
def global_weights() -> NDArrays:
    """What the server sends: weights unrelated to the client's own model."""
    return get_weights(build_model("2nn", seed=7))


def loss_of(weights: NDArrays, split: Split) -> float:
    model = build_model("2nn")
    set_weights(model, weights)
    return evaluate(model, split)[0]


def fit_weights(
    client: PartitionClient, weights: NDArrays, config: dict[str, Scalar]
) -> tuple[NDArrays, int, dict[str, Scalar]]:
    """``fit``, with the update it sends turned back into the trained weights."""
    update, num_examples, metrics = client.fit(weights, config)
    trained = [w + u for w, u in zip(weights, update, strict=True)]
    return trained, num_examples, metrics


def same(a: NDArrays, b: NDArrays) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x, y) for x, y in zip(a, b, strict=True)
    )


# ------------------------------------------------------------------------ fit
def test_fit_returns_the_update_n_k_and_train_loss(
    client: PartitionClient, global_weights: NDArrays
) -> None:
    update, num_examples, metrics = client.fit(global_weights, dict(FIT_CONFIG))
    assert num_examples == len(client.train_data) > 0
    assert [u.shape for u in update] == [w.shape for w in global_weights]
    assert all(u.dtype == np.float32 for u in update)
    # An update is small next to the weights it changes, and is not the weights.
    norm = np.sqrt(sum(float(np.sum(u.astype(np.float64) ** 2)) for u in update))
    assert 0 < norm < 0.5 * np.sqrt(sum(float(np.sum(w**2)) for w in global_weights))
    # w_t + update is what the client trained, up to float32 rounding of the sum.
    for w, u, trained in zip(
        global_weights, update, get_weights(client.model), strict=True
    ):
        np.testing.assert_allclose(w + u, trained, rtol=0, atol=1e-6)
    loss = metrics["train_loss"]
    assert isinstance(loss, float) and math.isfinite(loss) and loss > 0
    assert metrics["partition_id"] == PARTITION_ID


def test_fit_lowers_the_loss_on_the_local_data(
    client: PartitionClient, global_weights: NDArrays
) -> None:
    before = loss_of(global_weights, client.train_data)
    weights, _, _ = fit_weights(client, global_weights, dict(FIT_CONFIG))
    after = loss_of(weights, client.train_data)
    assert after < 0.8 * before, (before, after)


def test_fit_starts_from_the_received_weights(
    client: PartitionClient, global_weights: NDArrays
) -> None:
    """The client's previous state must not leak into the next fit."""
    first, _, _ = fit_weights(client, global_weights, dict(FIT_CONFIG))
    fit_weights(client, get_weights(build_model("2nn", seed=99)), dict(FIT_CONFIG))
    again, _, _ = fit_weights(client, global_weights, dict(FIT_CONFIG))
    assert same(first, again)


def test_fit_is_seeded(
    data: tuple[Split, Split], client: PartitionClient, global_weights: NDArrays
) -> None:
    first, _, _ = fit_weights(client, global_weights, dict(FIT_CONFIG))
    twin = PartitionClient(build_model("2nn", seed=5), *data, PARTITION_ID)
    again, _, _ = fit_weights(twin, global_weights, dict(FIT_CONFIG))
    other_seed, _, _ = fit_weights(client, global_weights, {**FIT_CONFIG, "seed": 2})
    other_round, _, _ = fit_weights(
        client, global_weights, {**FIT_CONFIG, "server-round": 2}
    )
    assert same(first, again)
    assert not same(first, other_seed)
    assert not same(first, other_round)


def test_fit_follows_the_config(
    client: PartitionClient, global_weights: NDArrays
) -> None:
    base, _, _ = fit_weights(client, global_weights, dict(FIT_CONFIG))
    for key, value in (
        ("learning-rate", 0.01),
        ("local-epochs", 1),
        ("batch-size", 20),
    ):
        changed, _, _ = fit_weights(client, global_weights, {**FIT_CONFIG, key: value})
        assert not same(base, changed), key


def test_batch_size_zero_is_one_full_batch_step_per_epoch(
    client: PartitionClient, global_weights: NDArrays
) -> None:
    lr = 0.05
    config = {**FIT_CONFIG, "batch-size": 0, "local-epochs": 1, "learning-rate": lr}
    weights, num_examples, metrics = fit_weights(client, global_weights, config)
    assert num_examples == len(client.train_data)
    assert math.isfinite(float(metrics["train_loss"]))

    # Reference: one plain gradient step on the whole local dataset.
    model = build_model("2nn")
    set_weights(model, global_weights)
    train = client.train_data
    loss = F.cross_entropy(model(train.x), train.y)
    loss.backward()
    with torch.no_grad():
        expected = [
            (p - lr * p.grad).numpy() for p in model.parameters() if p.grad is not None
        ]
    assert len(expected) == len(weights)
    for got, want in zip(weights, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert float(metrics["train_loss"]) == pytest.approx(loss.item(), rel=1e-5)


def test_batch_size_zero_over_several_epochs_lowers_the_loss(
    client: PartitionClient, global_weights: NDArrays
) -> None:
    config = {**FIT_CONFIG, "batch-size": 0, "local-epochs": 5, "learning-rate": 0.1}
    weights, _, _ = fit_weights(client, global_weights, config)
    assert loss_of(weights, client.train_data) < loss_of(
        global_weights, client.train_data
    )


# ------------------------------------------------------------------------ the rest
def test_get_properties_reports_the_partition(client: PartitionClient) -> None:
    properties = client.get_properties({})
    assert properties["partition-id"] == PARTITION_ID
    assert properties["num-examples"] == len(client.train_data)


def test_evaluate_uses_the_received_weights_on_the_val_data(
    client: PartitionClient, global_weights: NDArrays
) -> None:
    val = client.val_data
    assert 0 < len(val) < len(client.train_data)
    loss, num_examples, metrics = client.evaluate(global_weights, {})
    assert num_examples == len(val)
    model = build_model("2nn")
    set_weights(model, global_weights)
    want_loss, want_accuracy = evaluate(model, val)
    assert loss == pytest.approx(want_loss)
    assert metrics["accuracy"] == pytest.approx(want_accuracy)
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0
    assert loss != pytest.approx(evaluate(model, client.train_data)[0])

    trained, _, _ = fit_weights(client, global_weights, dict(FIT_CONFIG))
    trained_loss, _, _ = client.evaluate(trained, {})
    assert trained_loss != pytest.approx(loss)


# ------------------------------------------------------------------------ client_fn
@pytest.fixture(scope="module")
def run_config(mnist_dir: Path) -> dict[str, Any]:
    """pyproject's run config (hyphenated keys), pointed at the synthetic data."""
    with PYPROJECT.open("rb") as handle:
        table = flatten_dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])
    return {**table, "data-dir": str(mnist_dir), "partitioner": "iid", "seed": 42}


def make_context(run_config: dict[str, Any], node_config: dict[str, Any]) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )


def test_client_fn_builds_the_nodes_client(
    mnist_dir: Path, run_config: dict[str, Any], global_weights: NDArrays
) -> None:
    partition_id = 0
    context = make_context(
        run_config, {"partition-id": partition_id, "num-partitions": NUM_PARTITIONS}
    )
    client = client_fn(context)
    assert isinstance(client, Client)

    train, val = _client_data(mnist_dir, partition_id)
    # The node's partition, from its config alone (no data loaded to answer).
    properties = client.get_properties(GetPropertiesIns({})).properties
    assert properties == {
        "partition-id": partition_id,
        "num-partitions": NUM_PARTITIONS,
    }

    res = client.fit(FitIns(ndarrays_to_parameters(global_weights), dict(FIT_CONFIG)))
    assert res.status.code == Code.OK
    assert res.num_examples == len(train)
    direct = PartitionClient(build_model("2nn"), train, val, partition_id)
    expected, _, _ = direct.fit(global_weights, dict(FIT_CONFIG))
    assert same(parameters_to_ndarrays(res.parameters), expected)


@pytest.mark.parametrize(
    "node_config",
    [{"num-partitions": NUM_PARTITIONS}, {"partition-id": 0}, {}],
)
def test_client_fn_without_node_config_explains_the_flag(
    run_config: dict[str, Any], node_config: dict[str, Any]
) -> None:
    client = client_fn(make_context(run_config, node_config))
    with pytest.raises(ValueError, match="--node-config"):
        client.get_properties(GetPropertiesIns({}))


def test_client_fn_rejects_a_partition_outside_the_range(
    run_config: dict[str, Any],
) -> None:
    context = make_context(
        run_config, {"partition-id": NUM_PARTITIONS, "num-partitions": NUM_PARTITIONS}
    )
    with pytest.raises(ValueError, match="partition-id"):
        client_fn(context).get_properties(GetPropertiesIns({}))


def test_a_message_naming_a_partition_trains_that_partition(
    mnist_dir: Path, run_config: dict[str, Any], global_weights: NDArrays
) -> None:
    """partition-source = "server": the fit config names the partition, whatever
    partition the node's own config says."""
    context = make_context(run_config, {"partition-id": 0, "num-partitions": 1})
    config = {**FIT_CONFIG, "partition-id": 2, "num-partitions": NUM_PARTITIONS}
    res = client_fn(context).fit(
        FitIns(ndarrays_to_parameters(global_weights), dict(config))
    )
    train, val = _client_data(mnist_dir, 2)
    assert res.num_examples == len(train)
    assert res.metrics["partition_id"] == 2
    expected, _, _ = PartitionClient(build_model("2nn"), train, val, 2).fit(
        global_weights, dict(config)
    )
    assert same(parameters_to_ndarrays(res.parameters), expected)


def test_client_fn_validates_the_run_config(run_config: dict[str, Any]) -> None:
    context = make_context(
        {**run_config, "model": "cnn"}, {"partition-id": 0, "num-partitions": 10}
    )
    with pytest.raises(ConfigError, match="'model'"):
        client_fn(context)


def test_the_client_app_module_imports_no_torch() -> None:
    """Flower imports it to validate the app before the simulation starts Ray, and a
    deployed node imports it again for every message: torch waits for training."""
    import subprocess
    import sys

    code = "import sys, fl_app.client_app; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"

"""FedAvg aggregation: clients send updates w_k - w_t and the project's strategy
computes w = Σ n_k w_k / Σ n_k (not an unweighted mean, not w_global - mean(w_k)),
bit-identically whatever order replies arrive in, ignores but counts failures, keeps
the model below min-fit-clients, and weights the clients' metrics by n_k
(``weighted_metrics``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.common import (
    Code,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as FlowerFedAvg

import strategies
from fl_app.config import RunConfig
from fl_app.model import get_weights
from strategies.metrics import weighted_metrics
from tests.fakes import FakeNode

SIZES = [10, 200, 3000, 50]


Results = list[tuple[ClientProxy, FitRes]]


def make_strategy(mnist_dir: Path, **changes: object) -> strategies.FedAvg:
    config = RunConfig(
        dataset="mnist", data_dir=str(mnist_dir), partition_source="node"
    ).replace(**changes)
    return strategies.FedAvg(config, run_dir=None)


@pytest.fixture
def strategy(mnist_dir: Path) -> strategies.FedAvg:
    return make_strategy(mnist_dir)


def random_weights(rng: np.random.Generator, like: NDArrays) -> NDArrays:
    return [rng.standard_normal(w.shape).astype(np.float32) for w in like]


def make_results(
    strategy: strategies.FedAvg,
    sizes: list[int],
    seed: int = 0,
    losses: list[float] | None = None,
) -> tuple[Results, list[NDArrays]]:
    """One FitRes per client: random float32 weights w_k of the model's shapes, sent
    as the update w_k - w_t; returns the replies and the w_k they lead to."""
    rng = np.random.default_rng(seed)
    shapes = get_weights(strategy.model)
    global_weights = strategy.global_weights
    losses = losses or [float(rng.uniform(0.1, 3.0)) for _ in sizes]
    results: Results = []
    client_weights = []
    for k, (n_k, loss) in enumerate(zip(sizes, losses, strict=True)):
        delta = [
            w - g
            for w, g in zip(random_weights(rng, shapes), global_weights, strict=True)
        ]
        client_weights.append(
            [
                g.astype(np.float64) + d
                for g, d in zip(global_weights, delta, strict=True)
            ]
        )
        metrics: dict[str, Scalar] = {"train_loss": loss, "partition_id": k}
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(delta), n_k, metrics)
        results.append((FakeNode(f"node-{1000 - 7 * k}"), res))
    return results, client_weights


def reference(client_weights: list[NDArrays], sizes: list[int]) -> NDArrays:
    """Σ_k n_k w_k / Σ_k n_k in float64."""
    total = sum(sizes)
    return [
        sum(
            n * w[i].astype(np.float64)
            for n, w in zip(sizes, client_weights, strict=True)
        )
        / total
        for i in range(len(client_weights[0]))
    ]


def flat(arrays: NDArrays) -> np.ndarray:
    return np.concatenate([np.ravel(a).astype(np.float64) for a in arrays])


def aggregate(
    strategy: strategies.FedAvg, results: Results, failures: list | None = None
) -> tuple[Parameters, dict[str, Scalar]]:
    parameters, metrics = strategy.aggregate_fit(1, results, failures or [])
    assert parameters is not None
    return parameters, metrics


@pytest.mark.parametrize("sizes", [SIZES, [10, 200, 3000], [1, 5000, 30, 700, 3]])
def test_aggregate_is_the_example_weighted_mean(
    strategy: strategies.FedAvg, sizes: list[int]
) -> None:
    results, client_weights = make_results(strategy, sizes)
    parameters, _ = aggregate(strategy, results)
    got = parameters_to_ndarrays(parameters)
    want = reference(client_weights, sizes)

    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(g.dtype == np.float32 for g in got)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_aggregate_is_far_from_the_wrong_formulas(
    strategy: strategies.FedAvg,
) -> None:
    results, client_weights = make_results(strategy, SIZES)
    got = flat(parameters_to_ndarrays(aggregate(strategy, results)[0]))
    want = flat(reference(client_weights, SIZES))
    unweighted = np.mean([flat(w) for w in client_weights], axis=0)
    w_global = flat(get_weights(strategy.model))
    global_minus_mean = w_global - unweighted

    scale = np.linalg.norm(want)
    assert np.linalg.norm(got - want) / scale < 1e-6
    assert np.linalg.norm(got - unweighted) / scale > 0.5
    assert np.linalg.norm(got - global_minus_mean) / scale > 0.5


def test_order_of_replies_does_not_change_a_bit(
    strategy: strategies.FedAvg,
) -> None:
    results, client_weights = make_results(strategy, [10, 200, 3000, 50, 777], seed=4)
    for k, (proxy, _) in enumerate(results):
        strategy.sampler.assign(proxy.cid, k)

    rng = np.random.default_rng(0)
    orders = [
        results[::-1],
        *[[results[i] for i in rng.permutation(5)] for _ in range(3)],
    ]

    # The check is not vacuous: unsorted float32 sums do depend on the order.
    plain = FlowerFedAvg()
    plain_a, _ = plain.aggregate_fit(1, results, [])
    plain_b, _ = plain.aggregate_fit(1, results[::-1], [])
    assert plain_a is not None and plain_b is not None
    assert plain_a.tensors != plain_b.tensors

    baseline, _ = aggregate(strategy, results)
    for order in orders:
        permuted, _ = aggregate(strategy, order)
        assert permuted.tensors == baseline.tensors
    np.testing.assert_allclose(
        flat(parameters_to_ndarrays(baseline)),
        flat(reference(client_weights, [10, 200, 3000, 50, 777])),
        rtol=1e-5,
        atol=1e-6,
    )


def test_failures_are_ignored_but_counted(strategy: strategies.FedAvg) -> None:
    sizes = [10, 200, 3000]
    results, client_weights = make_results(strategy, sizes)
    junk, _ = make_results(strategy, [10**6], seed=9, losses=[100.0])
    failed_proxy, failed_res = junk[0]
    failed_res.status = Status(Code.FIT_NOT_IMPLEMENTED, "no fit here")
    failures: list[tuple[ClientProxy, FitRes] | BaseException] = [
        RuntimeError("client crashed"),
        (failed_proxy, failed_res),
    ]

    parameters, metrics = strategy.aggregate_fit(1, results, failures)
    assert parameters is not None
    for g, w in zip(
        parameters_to_ndarrays(parameters),
        reference(client_weights, sizes),
        strict=True,
    ):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert metrics["train_loss"] < 100.0

    strategy.evaluate(1, parameters)  # writes the round's history row
    row = strategy.history[-1]
    assert (row.clients_succeeded, row.clients_failed) == (3, 2)
    assert row.bytes_received == sum(
        sum(len(t) for t in res.parameters.tensors) for _, res in results
    )


@pytest.mark.parametrize("num_ok", [0, 1, 2])
def test_too_few_replies_leave_the_model_unchanged(
    mnist_dir: Path, num_ok: int
) -> None:
    strategy = make_strategy(mnist_dir, min_fit_clients=3, min_available_clients=3)
    results, _ = make_results(strategy, SIZES[:num_ok], losses=[0.5, 1.5][:num_ok])
    failures: list[tuple[ClientProxy, FitRes] | BaseException] = [TimeoutError("late")]
    parameters, metrics = strategy.aggregate_fit(1, results, failures)
    assert parameters is None
    if num_ok:
        sizes = SIZES[:num_ok]
        expected = sum(
            n * x for n, x in zip(sizes, [0.5, 1.5][:num_ok], strict=True)
        ) / sum(sizes)
        assert metrics["train_loss"] == pytest.approx(expected)


def test_min_fit_clients_replies_are_enough(mnist_dir: Path) -> None:
    strategy = make_strategy(mnist_dir, min_fit_clients=3, min_available_clients=3)
    results, client_weights = make_results(strategy, SIZES[:3])
    parameters, _ = strategy.aggregate_fit(1, results, [RuntimeError("x")])
    assert parameters is not None, "three replies meet min-fit-clients = 3"
    got = flat(parameters_to_ndarrays(parameters))
    want = flat(reference(client_weights, SIZES[:3]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_metrics_hold_the_example_weighted_train_loss(
    strategy: strategies.FedAvg,
) -> None:
    losses = [2.0, 1.0, 0.25, 4.0]
    results, _ = make_results(strategy, SIZES, losses=losses)
    _, metrics = aggregate(strategy, results)
    weighted = sum(n * x for n, x in zip(SIZES, losses, strict=True)) / sum(SIZES)
    assert metrics["train_loss"] == pytest.approx(weighted, rel=1e-12)
    assert metrics["train_loss"] != pytest.approx(np.mean(losses), rel=1e-3)
    assert "partition_id" not in metrics  # identifiers are not averaged


# ------------------------------------------------------------------ weighted_metrics
def test_weighted_metrics_weights_by_examples() -> None:
    got = weighted_metrics(
        [(1, {"loss": 1.0, "accuracy": 0.5}), (3, {"loss": 3.0, "accuracy": 1.0})]
    )
    assert got == pytest.approx(
        {"loss": (1 * 1.0 + 3 * 3.0) / 4, "accuracy": (1 * 0.5 + 3 * 1.0) / 4}
    )


def test_weighted_metrics_skips_ints_non_finite_and_empty_clients() -> None:
    got = weighted_metrics(
        [
            (10, {"loss": 1.0, "partition_id": 0}),
            (30, {"loss": math.nan, "partition_id": 1}),  # NaN: empty local data
            (20, {"loss": math.inf}),
            (0, {"loss": 50.0}),  # no examples, no weight
            (40, {"loss": 2.0, "accuracy": 0.75}),
        ]
    )
    assert set(got) == {"loss", "accuracy"}
    assert got["loss"] == pytest.approx((10 * 1.0 + 40 * 2.0) / 50)
    assert got["accuracy"] == pytest.approx(0.75)  # only the client reporting it


def test_weighted_metrics_of_nothing_is_empty() -> None:
    assert weighted_metrics([]) == {}
    assert weighted_metrics([(5, {"partition_id": 2})]) == {}


def test_the_clients_weights_are_not_all_serialized_at_once(
    strategy: strategies.FedAvg,
) -> None:
    """Flower's rule reads each client's w_t + delta once; the base serializes it
    then, so a round of many clients never holds all their models as bytes."""
    import tracemalloc

    from strategies.base import ClientUpdate

    rng = np.random.default_rng(3)
    model_bytes = sum(w.nbytes for w in strategy.global_weights)
    updates = [
        ClientUpdate(
            client=FakeNode(str(i)),
            partition=i,
            num_examples=10 + i,
            delta=[0.01 * d for d in random_weights(rng, strategy.global_weights)],
            extras=[],
            metrics={},
        )
        for i in range(20)
    ]
    expected = FlowerFedAvg().aggregate_fit(
        1,
        [
            (
                u.client,
                FitRes(
                    Status(Code.OK, ""),
                    ndarrays_to_parameters(strategy.weights_after(u.delta)),
                    u.num_examples,
                    {},
                ),
            )
            for u in updates
        ],
        [],
    )[0]
    tracemalloc.start()
    try:
        aggregated = strategy.aggregate(1, updates)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert aggregated is not None
    for got, want in zip(aggregated, parameters_to_ndarrays(expected), strict=True):
        np.testing.assert_array_equal(got, want)
    assert peak < 6 * model_bytes  # all 20 serialized at once: > 20 models


def test_fedavg_is_flowers_in_place_average_to_the_bit() -> None:
    """strategies.fedavg averages the arrays it holds instead of handing Flower's
    rule serialized weights: the result must be Flower's aggregate_inplace's, bit for
    bit, whatever the n_k (uneven here) and however many clients."""
    from flwr.server.strategy.aggregate import aggregate_inplace

    from strategies.fedavg import weighted_average

    rng = np.random.default_rng(7)
    shapes = [(784, 200), (200,), (200, 10), (10,)]
    clients = [
        ([rng.normal(size=s).astype(np.float32) for s in shapes], int(n))
        for n in rng.integers(1, 600, size=37)
    ]
    flower = aggregate_inplace(
        [
            (
                None,  # type: ignore[misc]
                FitRes(Status(Code.OK, ""), ndarrays_to_parameters(w), n, {}),
            )
            for w, n in clients
        ]
    )
    ours = weighted_average(
        (([a.copy() for a in w], n) for w, n in clients), [n for _, n in clients]
    )
    for f, o in zip(flower, ours, strict=True):
        assert f.dtype == o.dtype == np.float32
        assert f.tobytes() == o.tobytes()

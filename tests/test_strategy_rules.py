"""The aggregation rules beyond FedAvg, checked against hand-written NumPy references.

Every rule runs through the real pipeline (``configure_fit`` on fake nodes, then
``aggregate_fit`` on crafted client updates ``delta_k = w_k - w_t``) and is compared
with an independent NumPy implementation of the formula in its module docstring:
FedAvgM, FedAdam, FedYogi and FedAdagrad over two rounds (the server state carries
over), SCAFFOLD on both sides (server variate c, client variate c_i in the node's
state, the gradient correction c - c_i), FedProx's proximal term, the robust rules
(Krum, Multi-Krum, median, trimmed mean, centered clipping) on updates with
outliers, and the strategies that refuse central DP.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    NDArrays,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

import strategies
from fl_app.client import PartitionClient
from fl_app.client_parts import FedProxTerm, ScaffoldClient
from fl_app.config import (
    CenteredClippingConfig,
    ConfigError,
    DpConfig,
    FedAvgMConfig,
    FedOptConfig,
    FedProxConfig,
    KrumConfig,
    RunConfig,
    ScaffoldConfig,
    TrimmedMeanConfig,
)
from fl_app.data import Split, load_split
from fl_app.model import build_model, get_weights, set_weights
from strategies import strategy_class
from strategies.base import BaseStrategy
from tests.fakes import FakeNode

Reply = tuple[NDArrays, int]  # (arrays a client sends up, n_k)


# ------------------------------------------------------------------ plumbing
class PartitionNode(FakeNode):
    """A fake node that, like ``PartitionClient.get_properties``, may also report
    ``num-partitions`` (0: not reported)."""

    def __init__(self, cid: str, partition_id: int, num_partitions: int = 0) -> None:
        super().__init__(cid, partition_id)
        self.num_partitions = num_partitions

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        res = super().get_properties(ins, timeout, group_id)
        if self.num_partitions:
            res.properties["num-partitions"] = self.num_partitions
        return res


class Federation:
    """Fake nodes in a client manager, driven round by round through the strategy's
    own ``configure_fit`` and ``aggregate_fit`` (what Flower's server loop does)."""

    def __init__(
        self, strategy: BaseStrategy, num_nodes: int, num_partitions: int = 0
    ) -> None:
        self.strategy = strategy
        self.manager = SimpleClientManager()
        rng = np.random.default_rng(num_nodes)
        self.nodes = [
            PartitionNode(str(int(rng.integers(1, 2**62))), k, num_partitions)
            for k in range(num_nodes)
        ]
        for k in rng.permutation(num_nodes):  # registration order is arbitrary
            assert self.manager.register(self.nodes[k])

    def configure(
        self, server_round: int, weights: NDArrays
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self.strategy.configure_fit(
            server_round, ndarrays_to_parameters(weights), self.manager
        )

    def round(
        self,
        server_round: int,
        weights: NDArrays,
        replies: list[Reply],
        metrics: list[dict[str, Scalar]] | None = None,
    ) -> NDArrays | None:
        """Send ``weights``; partition k answers ``replies[k]``; return the new
        global weights (None: the model stays unchanged)."""
        instructions = self.configure(server_round, weights)
        assert len(instructions) == len(self.nodes)  # fraction-fit = 1
        proxy_of = {self.strategy.sampler.partition_of(c): c for c, _ in instructions}
        metrics = metrics or [{} for _ in replies]
        results = [
            (
                proxy_of[k],
                FitRes(
                    Status(Code.OK, ""), ndarrays_to_parameters(arrays), n_k, metric
                ),
            )
            for k, ((arrays, n_k), metric) in enumerate(
                zip(replies, metrics, strict=True)
            )
        ]
        results.reverse()  # arrival order must not matter
        parameters, _ = self.strategy.aggregate_fit(server_round, results, [])
        return None if parameters is None else parameters_to_ndarrays(parameters)


def run_config(mnist_dir: Path, **changes: object) -> RunConfig:
    base = RunConfig(
        dataset="mnist",
        data_dir=str(mnist_dir),
        model="mlp",
        partition_source="node",
        fraction_fit=1.0,
        min_available_timeout=1.0,
    )
    return base.replace(**changes)


def flat(arrays: NDArrays) -> np.ndarray:
    """All arrays as one float64 vector."""
    return np.concatenate([np.ravel(a).astype(np.float64) for a in arrays])


def unflat(vector: np.ndarray, like: NDArrays) -> NDArrays:
    """A vector cut into float32 arrays of the shapes of ``like``."""
    out, start = [], 0
    for array in like:
        out.append(vector[start : start + array.size].reshape(array.shape))
        start += array.size
    assert start == vector.size
    return [a.astype(np.float32) for a in out]


def plus(weights: NDArrays, delta: NDArrays) -> NDArrays:
    """w + delta in float32, array by array (what a client's update leads to)."""
    return [w + d for w, d in zip(weights, delta, strict=True)]


def assert_arrays_close(
    got: NDArrays | None, want: np.ndarray, *, rtol: float, atol: float
) -> None:
    assert got is not None
    np.testing.assert_allclose(flat(got), want, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ server optimizer
SIZES_OPT = [10, 30, 60]


def optimizer_rounds(like: NDArrays) -> list[list[NDArrays]]:
    """Two rounds of three clients' float32 updates. In round 2 half the coordinates
    are 50x smaller, so that Yogi's sign(v - delta^2) takes both signs."""
    rng = np.random.default_rng(11)
    dim = sum(a.size for a in like)
    round_1 = [0.01 * rng.standard_normal(dim) + 0.004 * k for k in range(3)]
    small = rng.random(dim) < 0.5
    scale = np.where(small, 0.0002, 0.01)
    round_2 = [scale * rng.standard_normal(dim) - 0.003 * k for k in range(3)]
    return [[unflat(d, like) for d in updates] for updates in (round_1, round_2)]


def mean_update(updates: list[NDArrays], sizes: list[int]) -> np.ndarray:
    """Sum_k (n_k/n) delta_k in float64: FedAvg's average minus w_t."""
    total = sum(sizes)
    return sum(n * flat(d) for n, d in zip(sizes, updates, strict=True)) / total


def server_step(
    name: str,
    config: RunConfig,
    server_round: int,
    w: np.ndarray,
    delta: np.ndarray,
    state: dict[str, np.ndarray],
) -> np.ndarray:
    """w_{t+1} from w_t and the average update, by the formulas of the papers (and
    Flower's bias-corrected eta for FedAdam); ``state`` carries m, v, momentum."""
    zero = np.zeros_like(w)
    if name == "fedavgm":
        beta, lr = config.fedavgm.momentum, config.fedavgm.server_learning_rate
        g = -delta  # w_t - sum_k (n_k/n) w_k
        state["v"] = g if server_round == 1 else beta * state["v"] + g
        return w - lr * state["v"]
    opt = config.fedopt
    if name == "fedadagrad":
        state["v"] = state.get("v", zero) + delta**2
        return w + opt.eta * delta / (np.sqrt(state["v"]) + opt.tau)
    m = opt.beta1 * state.get("m", zero) + (1 - opt.beta1) * delta
    v_old = state.get("v", zero)
    if name == "fedadam":
        v = opt.beta2 * v_old + (1 - opt.beta2) * delta**2
        t = server_round
        eta = opt.eta * math.sqrt(1 - opt.beta2 ** (t + 1)) / (1 - opt.beta1 ** (t + 1))
    else:  # fedyogi
        v = v_old - (1 - opt.beta2) * delta**2 * np.sign(v_old - delta**2)
        eta = opt.eta
    state["m"], state["v"] = m, v
    return w + eta * m / (np.sqrt(v) + opt.tau)


SERVER_OPTIMIZERS = {
    "fedavgm": strategies.FedAvgM,
    "fedadam": strategies.FedAdam,
    "fedyogi": strategies.FedYogi,
    "fedadagrad": strategies.FedAdagrad,
}


@pytest.mark.parametrize("name", list(SERVER_OPTIMIZERS))
def test_server_optimizer_over_two_rounds(mnist_dir: Path, name: str) -> None:
    """FedAvgM (v = beta v + g), FedAdam (m, v, bias-corrected eta_t), FedYogi
    (sign-based v) and FedAdagrad (v += delta^2, no m) match NumPy over two rounds,
    so the server state (momentum, m, v) carries from round 1 to round 2."""
    config = run_config(
        mnist_dir,
        strategy=name,
        fedavgm=FedAvgMConfig(server_learning_rate=0.5, momentum=0.9),
        fedopt=FedOptConfig(eta=0.05, beta1=0.9, beta2=0.99, tau=1e-3),
    )
    strategy = SERVER_OPTIMIZERS[name](config, run_dir=None)
    federation = Federation(strategy, num_nodes=3)
    w_t = get_weights(strategy.model)
    state: dict[str, np.ndarray] = {}
    for server_round, updates in enumerate(optimizer_rounds(w_t), start=1):
        delta = mean_update(updates, SIZES_OPT)
        if name == "fedyogi" and server_round == 2:  # the test covers both branches
            v_1 = state["v"]
            assert np.any(v_1 > delta**2) and np.any(v_1 < delta**2)
        want = server_step(name, config, server_round, flat(w_t), delta, state)
        # A PartitionClient's update (trained float32 weights minus the received ones)
        # has the dtype of what the server sent, so cast as it would.
        sent = [
            [d.astype(w.dtype) for d, w in zip(update, w_t, strict=True)]
            for update in updates
        ]
        got = federation.round(
            server_round, w_t, list(zip(sent, SIZES_OPT, strict=True))
        )
        assert_arrays_close(got, want, rtol=1e-4, atol=1e-6)
        # Not vacuous: plain FedAvg is far from the server optimizer's step.
        assert got is not None
        assert np.max(np.abs(flat(got) - (flat(w_t) + delta))) > 1e-3
        w_t = got  # what the next configure_fit sends


def test_fedyogi_is_not_fedadam_in_round_two(mnist_dir: Path) -> None:
    """The product's FedYogi and FedAdam, fed the same two rounds of updates, end
    apart: Yogi's second moment moves by sign(v - delta^2), Adam's by an average.
    (A FedYogi that ran Adam's rule fails here whatever the reference above says.)"""
    config = run_config(mnist_dir, fedopt=FedOptConfig(eta=0.05, tau=1e-3))
    weights: dict[str, NDArrays] = {}
    for name in ("fedyogi", "fedadam"):
        strategy = SERVER_OPTIMIZERS[name](config.replace(strategy=name), run_dir=None)
        federation = Federation(strategy, num_nodes=3)
        w_t = get_weights(strategy.model)
        for server_round, updates in enumerate(optimizer_rounds(w_t), start=1):
            sent = [
                [d.astype(w.dtype) for d, w in zip(update, w_t, strict=True)]
                for update in updates
            ]
            got = federation.round(
                server_round, w_t, list(zip(sent, SIZES_OPT, strict=True))
            )
            assert got is not None
            w_t = got
        weights[name] = w_t
    assert np.max(np.abs(flat(weights["fedyogi"]) - flat(weights["fedadam"]))) > 1e-3


class RoundCrashed(Exception):
    """aggregate_fit raised instead of returning new weights or None."""


def test_fedavgm_survives_a_first_round_without_aggregate(mnist_dir: Path) -> None:
    """A round that keeps the model must not break the next one: FedAvgM's
    momentum then starts at the first round that aggregates (v = g)."""
    config = run_config(
        mnist_dir,
        strategy="fedavgm",
        fedavgm=FedAvgMConfig(server_learning_rate=0.5, momentum=0.9),
    )
    strategy = strategies.FedAvgM(config, run_dir=None)
    federation = Federation(strategy, num_nodes=3)
    w_t = get_weights(strategy.model)
    updates = optimizer_rounds(w_t)[0]
    bad = [np.full((2,), 1.0, np.float32)]  # wrong array count: rejected
    replies = [(updates[0], 10), (bad, 10), (bad, 10)]
    assert federation.round(1, w_t, replies) is None  # 1 valid < min-fit-clients
    try:
        got = federation.round(2, w_t, list(zip(updates, SIZES_OPT, strict=True)))
    except AssertionError as error:
        assert "Momentum should have been created" in str(error)
        raise RoundCrashed(str(error)) from error
    delta = mean_update(updates, SIZES_OPT)
    assert_arrays_close(got, flat(w_t) + 0.5 * delta, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(strategies.STRATEGIES))
def test_the_global_model_keeps_its_float32_dtype(mnist_dir: Path, name: str) -> None:
    """Every rule returns weights of the model's dtype (float32), so the arrays sent
    down and the layout the next round validates against stay float32."""
    strategy = strategies.STRATEGIES[name](run_config(mnist_dir, strategy=name), None)
    w_t = get_weights(strategy.model)
    updates = optimizer_rounds(w_t)[0]
    if name == "scaffold":  # delta_c after the update
        updates = [u + [np.zeros_like(a) for a in u] for u in updates]
    got = Federation(strategy, num_nodes=3).round(
        1, w_t, list(zip(updates, SIZES_OPT, strict=True))
    )
    assert got is not None
    assert [a.dtype for a in got] == [np.dtype(np.float32)] * len(w_t)


# ------------------------------------------------------------------ SCAFFOLD server
W_TINY = [np.array([1.0, 2.0], np.float32), np.array([[0.5]], np.float32)]
C_TINY = [np.array([0.1, -0.2], np.float32), np.array([[0.3]], np.float32)]
SIZES_TINY = [1, 2, 1]
DELTA_Y = [
    [np.array([0.4, 0.0]), np.array([[-0.4]])],
    [np.array([0.2, 0.4]), np.array([[0.2]])],
    [np.array([0.0, -0.8]), np.array([[0.8]])],
]
DELTA_C = [
    [np.array([1.0, 0.5]), np.array([[0.0]])],
    [np.array([-0.5, 0.5]), np.array([[1.0]])],
    [np.array([0.5, 1.0]), np.array([[2.0]])],
]


def tiny_replies() -> list[Reply]:
    return [
        ([a.astype(np.float32) for a in dy + dc], n)
        for dy, dc, n in zip(DELTA_Y, DELTA_C, SIZES_TINY, strict=True)
    ]


def scaffold_on_tiny_model(
    mnist_dir: Path, num_partitions: int
) -> tuple[strategies.Scaffold, Federation]:
    """SCAFFOLD whose 'model' is two tiny arrays: configure_fit takes the shapes of
    the weights it sends, so the whole pipeline runs on hand-checkable numbers."""
    config = run_config(
        mnist_dir,
        strategy="scaffold",
        scaffold=ScaffoldConfig(server_learning_rate=0.5),
    )
    strategy = strategies.Scaffold(config, run_dir=None)
    strategy.control = [c.copy() for c in C_TINY]
    return strategy, Federation(strategy, num_nodes=3, num_partitions=num_partitions)


@pytest.mark.parametrize(
    ("num_partitions", "want_c"),
    [
        # N = 5 partitions reported, 3 sampled: c + (1/5) sum delta_c
        (5, [[0.1 + 2.0 / 10, -0.2 + 4.0 / 10], [[0.3 + 3.0 / 5]]]),
        # num-partitions not reported: N = the 3 partitions met so far
        (0, [[0.1 + 1.0 / 3, -0.2 + 2.0 / 3], [[0.3 + 3.0 / 3]]]),
    ],
)
def test_scaffold_server_updates_x_and_c(
    mnist_dir: Path, num_partitions: int, want_c: list[list]
) -> None:
    """x <- x + eta_g sum (n_i/n) dy_i and c <- c + (1/N) sum dc_i, by hand:
    sum n_i dy_i / n = ([0.4+0.4+0, 0+0.8-0.8], [-0.4+0.4+0.8]) / 4 = ([0.2, 0], [0.2]),
    eta_g = 0.5; sum dc_i = ([1, 2], [3])."""
    strategy, federation = scaffold_on_tiny_model(mnist_dir, num_partitions)
    metrics: list[dict[str, Scalar]] = [
        {"scaffold_state_rounds": 1},
        {"scaffold_state_rounds": 0},
        {"scaffold_state_rounds": 4},
    ]
    got = federation.round(1, W_TINY, tiny_replies(), metrics)

    assert got is not None
    np.testing.assert_allclose(got[0], [1.1, 2.0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[1], [[0.6]], rtol=1e-6)
    assert [g.dtype for g in got] == [np.float32, np.float32]
    np.testing.assert_allclose(strategy.control[0], want_c[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(strategy.control[1], want_c[1], rtol=1e-6)
    assert strategy.round_record.extra["scaffold_returning"] == 2


def test_scaffold_sends_weights_then_c_and_asks_for_scaffold(mnist_dir: Path) -> None:
    """Each instruction carries the weights followed by c (the updated c in the
    next round) and a fit config with "scaffold": True."""
    strategy, federation = scaffold_on_tiny_model(mnist_dir, num_partitions=5)
    first = federation.configure(1, W_TINY)
    assert len(first) == 3
    for _, ins in first:
        sent = parameters_to_ndarrays(ins.parameters)
        assert len(sent) == 4
        for got, want in zip(sent, W_TINY + C_TINY, strict=True):
            np.testing.assert_array_equal(got, want)
        assert ins.config["scaffold"] is True
        assert ins.config["server-round"] == 1
    assert strategy.fit_config(7)["scaffold"] is True

    new_x = federation.round(1, W_TINY, tiny_replies())
    assert new_x is not None
    for _, ins in federation.configure(2, new_x):
        sent = parameters_to_ndarrays(ins.parameters)
        np.testing.assert_array_equal(sent[0], new_x[0])
        np.testing.assert_allclose(sent[2], [0.3, 0.2], rtol=1e-6)
        np.testing.assert_allclose(sent[3], [[0.9]], rtol=1e-6)


def test_scaffold_rejects_a_reply_without_delta_c(mnist_dir: Path) -> None:
    """A reply holding only the model's arrays (no delta c) is dropped by
    validation as 'array_count'; the others are aggregated without it."""
    strategy, federation = scaffold_on_tiny_model(mnist_dir, num_partitions=5)
    replies = tiny_replies()
    replies[1] = (replies[1][0][:2], replies[1][1])  # delta_y only
    got = federation.round(1, W_TINY, replies)

    assert strategy.round_record.rejected["array_count"] == 1
    assert sum(strategy.round_record.rejected.values()) == 1
    assert strategy.round_record.clients_rejected == 1
    # Clients 0 and 2 only: sum n dy / n = ([0.4, -0.8], [0.4]) / 2, eta_g = 0.5;
    # c + (dc_0 + dc_2) / 5.
    assert got is not None
    np.testing.assert_allclose(got[0], [1.1, 1.8], rtol=1e-6)
    np.testing.assert_allclose(got[1], [[0.6]], rtol=1e-6)
    np.testing.assert_allclose(strategy.control[0], [0.4, 0.1], rtol=1e-6)
    np.testing.assert_allclose(strategy.control[1], [[0.7]], rtol=1e-6)

    # All replies without delta c: nothing is aggregated, c is kept.
    control = [c.copy() for c in strategy.control]
    only_y = [(arrays[:2], n) for arrays, n in tiny_replies()]
    assert federation.round(2, W_TINY, only_y) is None
    assert strategy.round_record.rejected["array_count"] == 3
    for got_c, want_c in zip(strategy.control, control, strict=True):
        np.testing.assert_array_equal(got_c, want_c)


# ------------------------------------------------------------------ client side
CLIENT_ID = 2


@pytest.fixture(scope="module")
def small_split(mnist_dir: Path) -> Split:
    """45 training rows: 5 batches of 10 (the last one of 5)."""
    train = load_split("mnist", str(mnist_dir), "train")
    return Split(train.x[:45], train.y[:45])


def fit_config(**changes: Scalar) -> dict[str, Scalar]:
    config: dict[str, Scalar] = {
        "server-round": 1,
        "learning-rate": 0.05,
        "local-epochs": 2,
        "batch-size": 10,
        "seed": 3,
    }
    config.update(changes)
    return config


def fit(
    data: Split,
    parameters: NDArrays,
    config: dict[str, Scalar],
    state: RecordDict | None = None,
) -> tuple[NDArrays, int, dict[str, Scalar]]:
    client = PartitionClient(
        build_model("mlp", seed=99), data, data, CLIENT_ID, state=state
    )
    return client.fit(parameters, config)


def reference_full_batch_sgd(
    x: NDArrays,
    data: Split,
    steps: int,
    lr: float,
    extra_gradient: Callable[[list[torch.Tensor]], list[torch.Tensor]],
) -> np.ndarray:
    """``steps`` full-batch steps y <- y - lr (grad F(y) + extra_gradient(y))."""
    model = build_model("mlp")
    set_weights(model, x)
    params = list(model.parameters())
    for _ in range(steps):
        loss = F.cross_entropy(model(data.x), data.y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, e in zip(params, grads, extra_gradient(params), strict=True):
                p -= lr * (g + e)
    return flat(get_weights(model))


def small_arrays(seed: int, like: NDArrays, scale: float) -> NDArrays:
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(a.shape)).astype(np.float32) for a in like]


def test_scaffold_correction_adds_c_minus_c_i_to_every_gradient(
    small_split: Split,
) -> None:
    """correct_gradients adds exactly c - c_i, with c_i read from the state."""
    model = build_model("mlp", seed=0)
    like = get_weights(model)
    c, c_i = small_arrays(1, like, 0.1), small_arrays(2, like, 0.1)
    state = RecordDict()
    state["scaffold.c_i"] = ArrayRecord(c_i)
    state["scaffold.rounds"] = ConfigRecord({"rounds": 3})
    part = ScaffoldClient(c, state)
    assert part.rounds == 3 and part.metrics() == {"scaffold_state_rounds": 3}

    F.cross_entropy(model(small_split.x), small_split.y).backward()
    before = [p.grad.numpy().copy() for p in model.parameters()]  # type: ignore[union-attr]
    part.correct_gradients(model)
    after = [p.grad.numpy() for p in model.parameters()]  # type: ignore[union-attr]
    assert len(after) == len(c)
    for g0, g1, c_k, ci_k in zip(before, after, c, c_i, strict=True):
        np.testing.assert_array_equal(g1, g0 + (c_k - ci_k))


def test_scaffold_client_trains_with_the_correction(small_split: Split) -> None:
    """A SCAFFOLD fit is SGD on g(y) - c_i + c (full batch, 3 steps, by hand)."""
    x = get_weights(build_model("mlp", seed=5))
    c, c_i = small_arrays(3, x, 0.05), small_arrays(4, x, 0.05)
    state = RecordDict()
    state["scaffold.c_i"] = ArrayRecord(c_i)
    state["scaffold.rounds"] = ConfigRecord({"rounds": 1})
    lr, steps = 0.05, 3
    config = fit_config(**{"batch-size": 0, "local-epochs": steps, "scaffold": True})
    arrays, _, metrics = fit(small_split, x + c, config, state)

    correction = [torch.from_numpy(a - b) for a, b in zip(c, c_i, strict=True)]
    want = reference_full_batch_sgd(x, small_split, steps, lr, lambda _: correction)
    got = flat(x) + flat(arrays[: len(x)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plain = reference_full_batch_sgd(
        x, small_split, steps, lr, lambda ps: [torch.zeros_like(p) for p in ps]
    )
    assert np.max(np.abs(got - plain)) > 1e-3  # the correction did act
    assert metrics["scaffold_state_rounds"] == 1


def test_scaffold_client_stores_c_i_and_sends_delta_c(small_split: Split) -> None:
    """c_i+ = c_i - c + (x - y)/(K lr) with K = epochs * ceil(n/B) is stored in the
    state, delta_c = c_i+ - c_i goes up after the update, and a later client built
    on the same state starts from the stored c_i."""
    x = get_weights(build_model("mlp", seed=6))
    lr, epochs, batch = 0.05, 2, 10
    steps = epochs * math.ceil(len(small_split) / batch)  # 2 * ceil(45/10) = 10
    config = fit_config(**{"scaffold": True, "local-epochs": epochs})
    state = RecordDict()

    c_i = np.zeros_like(flat(x))
    for server_round in (1, 2):
        c = small_arrays(10 + server_round, x, 0.02)
        arrays, n_k, metrics = fit(
            small_split, x + c, {**config, "server-round": server_round}, state
        )
        assert n_k == 45 and len(arrays) == 2 * len(x)
        assert metrics["scaffold_state_rounds"] == server_round - 1
        update, delta_c = arrays[: len(x)], arrays[len(x) :]
        want_c_i = c_i - flat(c) - flat(update) / (steps * lr)
        stored = state["scaffold.c_i"].to_numpy_ndarrays()  # type: ignore[union-attr]
        np.testing.assert_allclose(flat(stored), want_c_i, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(flat(delta_c), want_c_i - c_i, rtol=1e-5, atol=1e-5)
        assert state["scaffold.rounds"]["rounds"] == server_round  # type: ignore[index]
        # A new client part on this state starts from the stored c_i.
        again = ScaffoldClient(c, state)
        assert again.rounds == server_round
        for got, want in zip(again.c_i, stored, strict=True):
            np.testing.assert_array_equal(got, want)
        c_i = flat(stored)
        x = plus(x, update)


def test_fedprox_term_gradient_is_mu_times_w_minus_w_t() -> None:
    """(mu/2)||w - w_t||^2 has value and autograd gradient mu (w - w_t)."""
    mu = 0.3
    model = build_model("mlp", seed=0)
    w = get_weights(model)
    w_t = get_weights(build_model("mlp", seed=1))
    term = FedProxTerm(mu, w_t)
    loss = term.extra_loss(model)
    loss.backward()
    diff = flat(w) - flat(w_t)
    assert loss.item() == pytest.approx(0.5 * mu * np.sum(diff**2), rel=1e-5)
    grads = [p.grad.numpy() for p in model.parameters()]  # type: ignore[union-attr]
    np.testing.assert_allclose(flat(grads), mu * diff, rtol=1e-5, atol=1e-7)


def test_fedprox_mu_zero_trains_exactly_as_fedavg(small_split: Split) -> None:
    """proximal_mu = 0 returns bit for bit the arrays of a fit without the key."""
    w_t = get_weights(build_model("mlp", seed=7))
    plain, _, _ = fit(small_split, w_t, fit_config())
    zero, _, _ = fit(small_split, w_t, fit_config(proximal_mu=0.0))
    assert len(plain) == len(zero) == len(w_t)
    for a, b in zip(plain, zero, strict=True):
        assert a.tobytes() == b.tobytes()


def test_fedprox_mu_pulls_the_update_toward_w_t(small_split: Split) -> None:
    """mu > 0 changes the update, which is SGD on grad F + mu (y - w_t) (checked
    step by step on full batches), and a large mu shrinks its norm."""
    w_t = get_weights(build_model("mlp", seed=7))
    plain, _, _ = fit(small_split, w_t, fit_config())
    small_mu, _, _ = fit(small_split, w_t, fit_config(proximal_mu=0.1))
    large_mu, _, _ = fit(small_split, w_t, fit_config(proximal_mu=10.0))
    assert not np.array_equal(flat(small_mu), flat(plain))
    norm = {k: np.linalg.norm(flat(u)) for k, u in (("0", plain), ("10", large_mu))}
    assert norm["10"] < 0.8 * norm["0"]

    mu, lr, steps = 2.0, 0.05, 3
    config = fit_config(**{"batch-size": 0, "local-epochs": steps, "proximal_mu": mu})
    update, _, _ = fit(small_split, w_t, config)
    anchor = [torch.from_numpy(w) for w in w_t]

    def pull(params: list[torch.Tensor]) -> list[torch.Tensor]:
        return [mu * (p - a) for p, a in zip(params, anchor, strict=True)]

    want = reference_full_batch_sgd(w_t, small_split, steps, lr, pull)
    np.testing.assert_allclose(flat(w_t) + flat(update), want, rtol=1e-5, atol=1e-6)


def test_fedprox_strategy_sends_proximal_mu(mnist_dir: Path) -> None:
    """FedProx's configure_fit adds fedprox.mu to the usual fit config."""
    config = run_config(mnist_dir, strategy="fedprox", fedprox=FedProxConfig(mu=0.25))
    strategy = strategies.FedProx(config, run_dir=None)
    federation = Federation(strategy, num_nodes=2)
    for _, ins in federation.configure(1, get_weights(strategy.model)):
        assert ins.config["proximal_mu"] == 0.25
        assert ins.config["learning-rate"] == config.learning_rate


# ------------------------------------------------------------------ robust rules
# Honest clients differ from a common update by tiny noise plus, in the last two
# coordinates, by these points (x UNIT). The layout is chosen so that Krum's score
# picks a different client with 4, 5 (= n - f - 2 for f = 2), 6 or all 8 neighbours.
HONEST_2D = [(-1, -2), (-4, -4), (-6, -3), (5, -4), (-5, 6), (-2, -4), (-3, -4)]
OUTLIER_2D = {3: (60, 60), 7: (-80, 20)}  # partition -> point
HONEST = [k for k in range(9) if k not in OUTLIER_2D]
SIZES_ROBUST = [30, 10, 25, 40, 15, 35, 20, 50, 45]
UNIT, NOISE = 0.05, 1e-4


def robust_updates(like: NDArrays, noise_seed: int) -> list[np.ndarray]:
    """9 flat float64 updates: 7 honest near a common update, partition 3 adds 0.3
    to every coordinate (norm ~135), partition 7 sends -10x the common update."""
    dim = sum(a.size for a in like)
    common = 0.01 * np.random.default_rng(0).standard_normal(dim)
    rng = np.random.default_rng(noise_seed)
    points = iter(HONEST_2D)
    updates = []
    for k in range(9):
        if k == 3:
            vector = common + 0.3
        elif k == 7:
            vector = -10 * common
        else:
            vector = common + NOISE * rng.standard_normal(dim)
        point = OUTLIER_2D[k] if k in OUTLIER_2D else next(points)
        vector[-2:] = common[-2:] + UNIT * np.array(point, dtype=np.float64)
        updates.append(unflat(vector, like))
    return [flat(u) for u in updates]


def krum_scores(vectors: list[np.ndarray], num_neighbours: int) -> np.ndarray:
    """s(i) = sum of the squared distances to its num_neighbours nearest others."""
    n = len(vectors)
    dist = np.array([[np.sum((a - b) ** 2) for b in vectors] for a in vectors])
    return np.array(
        [np.sort(np.delete(dist[i], i))[:num_neighbours].sum() for i in range(n)]
    )


def robust_round(
    mnist_dir: Path, name: str, **changes: object
) -> tuple[BaseStrategy, np.ndarray, list[np.ndarray], np.ndarray]:
    """One round of ``name`` on the crafted updates: (strategy, w_t, the float32
    weights w_t + delta_k as float64 vectors, the rule's output)."""
    config = run_config(mnist_dir, strategy=name, **changes)
    strategy = strategies.STRATEGIES[name](config, run_dir=None)
    w_t = get_weights(strategy.model)
    deltas = robust_updates(w_t, noise_seed=1)
    replies = [(unflat(d, w_t), n) for d, n in zip(deltas, SIZES_ROBUST, strict=True)]
    got = Federation(strategy, num_nodes=9).round(1, w_t, replies)
    assert got is not None
    weights = [flat(plus(w_t, unflat(d, w_t))) for d in deltas]
    return strategy, flat(w_t), weights, flat(got)


def honest_mean(weights: list[np.ndarray]) -> np.ndarray:
    return np.mean([weights[k] for k in HONEST], axis=0)


def fedavg_of(weights: list[np.ndarray]) -> np.ndarray:
    total = sum(SIZES_ROBUST)
    return sum(n * w for n, w in zip(SIZES_ROBUST, weights, strict=True)) / total


def assert_robust(got: np.ndarray, weights: list[np.ndarray]) -> None:
    """The rule lands near the honest mean; FedAvg is dragged far away."""
    centre = honest_mean(weights)
    pulled = np.linalg.norm(fedavg_of(weights) - centre)
    assert pulled > 10.0
    assert np.linalg.norm(got - centre) < 0.05 * pulled


def test_krum_returns_the_honest_client_of_lowest_score(mnist_dir: Path) -> None:
    """Krum (f = krum.num-malicious = 2) returns exactly w_t + delta_i* of the
    lowest score over the n - f - 2 = 5 nearest neighbours."""
    strategy, _, weights, got = robust_round(mnist_dir, "krum")
    f = strategy.config.krum.num_malicious
    assert f == 2
    winner = int(np.argmin(krum_scores(weights, len(weights) - f - 2)))
    assert winner in HONEST
    # The layout makes the neighbour count matter (the test can tell them apart).
    for k in (4, 6, 8):
        assert int(np.argmin(krum_scores(weights, k))) != winner
    np.testing.assert_array_equal(got, weights[winner])
    assert_robust(got, weights)


def test_multi_krum_averages_the_n_minus_f_best(mnist_dir: Path) -> None:
    """Multi-Krum with f = 3 keeps the n - f = 6 lowest scores over n - f - 2 = 4
    neighbours (both outliers and one honest client out) and averages them by n_k."""
    _, _, weights, got = robust_round(
        mnist_dir, "multi-krum", krum=KrumConfig(num_malicious=3)
    )
    scores = krum_scores(weights, len(weights) - 3 - 2)
    kept = sorted(np.argsort(scores)[:6].tolist())
    assert set(kept) < set(HONEST)  # one honest client dropped too
    sizes = [SIZES_ROBUST[k] for k in kept]
    want = sum(n * weights[k] for n, k in zip(sizes, kept, strict=True)) / sum(sizes)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    all_honest = sum(SIZES_ROBUST[k] * weights[k] for k in HONEST) / sum(
        SIZES_ROBUST[k] for k in HONEST
    )
    assert np.max(np.abs(got - all_honest)) > 1e-3
    assert_robust(got, weights)


def test_median_is_the_coordinatewise_median(mnist_dir: Path) -> None:
    """Median = np.median of the 9 weight vectors per coordinate (n_k ignored)."""
    _, _, weights, got = robust_round(mnist_dir, "median")
    np.testing.assert_array_equal(got, np.median(np.stack(weights), axis=0))
    assert_robust(got, weights)


def test_trimmed_mean_cuts_floor_beta_n_at_each_end(mnist_dir: Path) -> None:
    """beta = 0.3, n = 9: floor(2.7) = 2 values cut at each end of every
    coordinate, the 5 left averaged without weights."""
    _, _, weights, got = robust_round(
        mnist_dir, "trimmed-mean", trimmed_mean=TrimmedMeanConfig(beta=0.3)
    )
    ordered = np.sort(np.stack(weights), axis=0)
    want = ordered[2:7].mean(axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    rounded = ordered[3:6].mean(axis=0)  # round(2.7) = 3 would differ
    assert np.max(np.abs(got - rounded)) > 1e-5
    assert_robust(got, weights)


def centered_clipping(
    deltas: list[np.ndarray], centre: np.ndarray, tau: float, iterations: int
) -> np.ndarray:
    """v <- v + (1/n) sum_i (d_i - v) min(1, tau / ||d_i - v||), L times."""
    v = centre.copy()
    for _ in range(iterations):
        step = np.zeros_like(v)
        for d in deltas:
            diff = d - v
            step += diff * min(1.0, tau / np.linalg.norm(diff))
        v = v + step / len(deltas)
    return v


def test_centered_clipping_over_two_rounds(mnist_dir: Path) -> None:
    """Round 1 starts at v = 0, round 2 at round 1's aggregate update; each runs
    L = 3 clipping iterations with tau = 2."""
    tau, iterations = 2.0, 3
    config = run_config(
        mnist_dir,
        strategy="centered-clipping",
        centered_clipping=CenteredClippingConfig(tau=tau, iterations=iterations),
    )
    strategy = strategies.CenteredClipping(config, run_dir=None)
    federation = Federation(strategy, num_nodes=9)
    w_t = get_weights(strategy.model)
    v = np.zeros_like(flat(w_t))
    for server_round in (1, 2):
        deltas = robust_updates(w_t, noise_seed=server_round)
        replies = [
            (unflat(d, w_t), n) for d, n in zip(deltas, SIZES_ROBUST, strict=True)
        ]
        got = federation.round(server_round, w_t, replies)
        assert got is not None
        from_zero = centered_clipping(deltas, np.zeros_like(v), tau, iterations)
        v = centered_clipping(deltas, v, tau, iterations)
        np.testing.assert_allclose(flat(got) - flat(w_t), v, rtol=1e-4, atol=1e-6)
        if server_round == 2:  # the history centre matters
            assert np.linalg.norm(v - from_zero) > 0.1
            weights = [flat(w_t) + d for d in deltas]
            assert_robust(flat(got), weights)
        w_t = got


def test_fedavg_is_dragged_by_the_outliers(mnist_dir: Path) -> None:
    """Guards the robustness checks: on the same updates FedAvg is the n_k-weighted
    mean, far from the honest clients."""
    _, _, weights, got = robust_round(mnist_dir, "fedavg")
    want = fedavg_of(weights)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(got - honest_mean(weights)) > 10.0


# ------------------------------------------------------------------ central DP
@pytest.mark.parametrize(
    "name",
    ["krum", "multi-krum", "median", "trimmed-mean", "centered-clipping", "scaffold"],
)
def test_central_dp_is_refused_where_it_cannot_hold(name: str) -> None:
    """Rules that do not average (or send un-noised extras) refuse dp.clip-norm."""
    with pytest.raises(ConfigError) as error:
        strategy_class(RunConfig().replace(strategy=name, dp=DpConfig(clip_norm=1.0)))
    assert error.value.key == "dp.clip-norm"
    assert name in str(error.value)


@pytest.mark.parametrize(
    "name", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]
)
def test_central_dp_is_accepted_by_averaging_rules(name: str) -> None:
    """Rules that average accept central DP (clip, uniform weights, noise)."""
    config = RunConfig().replace(strategy=name, dp=DpConfig(clip_norm=1.0))
    assert strategy_class(config) is strategies.STRATEGIES[name]

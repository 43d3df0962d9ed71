"""Validating client replies: ``strategies.validation`` and ``BaseStrategy.validate``.

Each kind of malformed reply (NaN, Inf, missing or extra array, wrong shape, wrong
dtype, n_k <= 0 or absurd, an update of huge norm, undecodable bytes), mixed with
honest replies in one round, is rejected with its own reason and counted in the
round's ``rejected_<reason>`` column; the global model becomes w_t plus the
n_k-weighted mean of the honest updates only, stays finite, and no exception escapes
``aggregate_fit``. Too few valid replies keep the model, with a warning.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
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
from fl_app.config import RunConfig, ValidationConfig
from fl_app.results import HISTORY_CSV, read_history
from strategies.validation import REASONS, Layout, Rejected, checked_arrays
from tests.fakes import FakeNode

MAX_EXAMPLES = 10_000  # validation.max-num-examples in these tests
HONEST_SIZES = (10, 200, 3000)
HONEST_LOSS = 0.5

Results = list[tuple[FakeNode, FitRes]]


# ------------------------------------------------------------------ helpers
def make_strategy(
    mnist_dir: Path,
    num_nodes: int,
    run_dir: Path | None = None,
    **changes: object,
) -> tuple[strategies.FedAvg, SimpleClientManager]:
    """FedAvg (mlp) sampling all ``num_nodes`` FakeNodes each round."""
    settings: dict[str, object] = {
        "fraction_fit": 1.0,
        "min_fit_clients": 2,
        "min_available_clients": 2,
        "min_available_timeout": 1.0,
        "validation": ValidationConfig(max_num_examples=MAX_EXAMPLES),
    }
    settings.update(changes)
    config = RunConfig(
        dataset="mnist", data_dir=str(mnist_dir), model="mlp", partition_source="node"
    )
    strategy = strategies.FedAvg(config.replace(**settings), run_dir=run_dir)
    manager = SimpleClientManager()
    for k in range(num_nodes):
        assert manager.register(FakeNode(f"node-{1000 - 7 * k}", partition_id=k))
    return strategy, manager


def start_round(
    strategy: strategies.FedAvg, manager: SimpleClientManager, server_round: int
) -> list[FakeNode]:
    """``configure_fit`` (starts the round's record); the sampled nodes by partition."""
    parameters = ndarrays_to_parameters(strategy.global_weights)
    chosen = strategy.configure_fit(server_round, parameters, manager)
    nodes = [proxy for proxy, _ in chosen]
    assert all(isinstance(node, FakeNode) for node in nodes)
    return sorted(nodes, key=lambda node: node.partition_id)  # type: ignore[union-attr]


def honest_deltas(like: NDArrays, count: int, seed: int = 0) -> list[NDArrays]:
    """Small random float32 updates of the model's shapes (norm ~ 5)."""
    rng = np.random.default_rng(seed)
    return [
        [(0.01 * rng.standard_normal(w.shape)).astype(np.float32) for w in like]
        for _ in range(count)
    ]


def fit_res(parameters: Parameters, num_examples: int) -> FitRes:
    return FitRes(
        Status(Code.OK, ""), parameters, num_examples, {"train_loss": HONEST_LOSS}
    )


def honest_mean(
    w_t: NDArrays, deltas: list[NDArrays], sizes: tuple[int, ...]
) -> NDArrays:
    """w_t + Σ n_k delta_k / Σ n_k, in float64."""
    total = sum(sizes)
    return [
        w.astype(np.float64)
        + sum(n * d[i].astype(np.float64) for n, d in zip(sizes, deltas, strict=True))
        / total
        for i, w in enumerate(w_t)
    ]


def assert_close(got: NDArrays, want: NDArrays) -> None:
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def all_finite(arrays: NDArrays) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


# ------------------------------------------------------------------ bad replies
def _poke(delta: NDArrays, value: float) -> NDArrays:
    """A copy of ``delta`` with one coordinate of its first array set to ``value``."""
    bad = [d.copy() for d in delta]
    bad[0].flat[bad[0].size // 2] = value
    return bad


def _params(arrays: NDArrays) -> Parameters:
    return ndarrays_to_parameters(arrays)


Builder = Callable[[NDArrays], tuple[Parameters, int]]

# kind -> (expected reason, builder from an honest-looking delta to the bad reply)
BAD: dict[str, tuple[str, Builder]] = {
    "nan": ("non_finite", lambda d: (_params(_poke(d, np.nan)), 100)),
    "inf": ("non_finite", lambda d: (_params(_poke(d, np.inf)), 100)),
    "array_missing": ("array_count", lambda d: (_params(d[:-1]), 100)),
    "array_extra": (
        "array_count",
        lambda d: (_params([*d, np.zeros(3, np.float32)]), 100),
    ),
    "shape": ("shape", lambda d: (_params([d[0].T.copy(), *d[1:]]), 100)),
    "float64": (
        "dtype",
        lambda d: (_params([a.astype(np.float64) for a in d]), 100),
    ),
    "int32": ("dtype", lambda d: (_params([a.astype(np.int32) for a in d]), 100)),
    "n_k_zero": ("num_examples", lambda d: (_params(d), 0)),
    "n_k_negative": ("num_examples", lambda d: (_params(d), -5)),
    "n_k_absurd": ("num_examples", lambda d: (_params(d), MAX_EXAMPLES + 1)),
    "huge_norm": (
        "norm",
        lambda d: (_params([(a * np.float32(1e30)) for a in d]), 100),
    ),
    "garbage": (
        "undecodable",
        lambda d: (Parameters(tensors=[b"garbage"], tensor_type="numpy.ndarray"), 100),
    ),
}


def bad_reply(kind: str, like: NDArrays) -> FitRes:
    """The reply of kind ``kind``, built from an otherwise plausible update."""
    (delta,) = honest_deltas(like, 1, seed=99)
    parameters, num_examples = BAD[kind][1](delta)
    return fit_res(parameters, num_examples)


def test_every_reason_has_a_bad_reply() -> None:
    """The table below covers every rejection reason (so each column is exercised)."""
    # "codec" (a compressed payload that does not decode): test_compressed_updates.py
    assert {reason for reason, _ in BAD.values()} == set(REASONS) - {"codec"}


# ------------------------------------------------------------ through the strategy
@pytest.mark.parametrize("kind", list(BAD))
def test_bad_reply_is_rejected_and_only_honest_ones_are_averaged(
    mnist_dir: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad reply among three honest ones: counted under its reason, never averaged."""
    strategy, manager = make_strategy(mnist_dir, num_nodes=4)
    nodes = start_round(strategy, manager, 1)
    w_t = [w.copy() for w in strategy.global_weights]
    deltas = honest_deltas(w_t, len(HONEST_SIZES))
    honest_nodes = [nodes[0], nodes[2], nodes[3]]
    results: Results = [
        (node, fit_res(ndarrays_to_parameters(delta), n_k))
        for node, delta, n_k in zip(honest_nodes, deltas, HONEST_SIZES, strict=True)
    ]
    results.insert(1, (nodes[1], bad_reply(kind, w_t)))
    reason = BAD[kind][0]

    with caplog.at_level(logging.WARNING, logger="flwr"):
        parameters, metrics = strategy.aggregate_fit(1, results, [])

    assert parameters is not None
    got = parameters_to_ndarrays(parameters)
    assert all_finite(got)
    assert_close(got, honest_mean(w_t, deltas, HONEST_SIZES))
    assert metrics["train_loss"] == pytest.approx(HONEST_LOSS)
    assert any(
        "rejected the reply" in r.getMessage() and f"{reason}:" in r.getMessage()
        for r in caplog.records
    )

    strategy.evaluate(1, parameters)
    row = strategy.history[-1]
    assert row.round == 1
    assert row.clients_rejected == 1
    assert row.clients_succeeded == 4
    assert row.rejected == {r: int(r == reason) for r in REASONS}
    assert row.model_updated
    assert row.to_row()[f"rejected_{reason}"] == 1


@pytest.mark.parametrize("scale", [1e30, 1e37])
def test_huge_update_is_accepted_without_a_norm_bound(
    mnist_dir: Path, scale: float
) -> None:
    """With ``max-update-norm = 0`` an update scaled by ``scale`` (finite in float32)
    passes validation, and the new model is the example-weighted mean, finite."""
    strategy, manager = make_strategy(
        mnist_dir,
        num_nodes=3,
        validation=ValidationConfig(max_num_examples=MAX_EXAMPLES, max_update_norm=0),
    )
    nodes = start_round(strategy, manager, 1)
    w_t = [w.copy() for w in strategy.global_weights]
    deltas = honest_deltas(w_t, 3)
    deltas[1] = [a * np.float32(scale) for a in deltas[1]]
    assert all_finite(deltas[1])
    results: Results = [
        (node, fit_res(ndarrays_to_parameters(delta), 100))
        for node, delta in zip(nodes, deltas, strict=True)
    ]

    parameters, _ = strategy.aggregate_fit(1, results, [])

    # The mean of the three is finite in float32 at either scale: it is the model.
    assert parameters is not None, "a finite aggregate must update the model"
    got = parameters_to_ndarrays(parameters)
    assert all_finite(got)
    assert_close(got, honest_mean(w_t, deltas, (100, 100, 100)))
    strategy.evaluate(1, parameters)
    row = strategy.history[-1]
    assert row.clients_rejected == 0 and row.clients_succeeded == 3
    assert row.rejected == dict.fromkeys(REASONS, 0)
    assert row.model_updated is True


def test_too_few_valid_replies_keep_the_model(
    mnist_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two valid replies < min-fit-clients = 3: (None, metrics), a warning, the row
    says ``model_updated = False`` and the global weights are unchanged."""
    strategy, manager = make_strategy(
        mnist_dir, num_nodes=4, min_fit_clients=3, min_available_clients=3
    )
    nodes = start_round(strategy, manager, 1)
    w_t = [w.copy() for w in strategy.global_weights]
    deltas = honest_deltas(w_t, 2)
    results: Results = [
        (nodes[0], fit_res(ndarrays_to_parameters(deltas[0]), 10)),
        (nodes[1], bad_reply("nan", w_t)),
        (nodes[2], fit_res(ndarrays_to_parameters(deltas[1]), 20)),
        (nodes[3], bad_reply("garbage", w_t)),
    ]

    with caplog.at_level(logging.WARNING, logger="flwr"):
        parameters, metrics = strategy.aggregate_fit(1, results, [])

    assert parameters is None
    assert metrics["train_loss"] == pytest.approx(HONEST_LOSS)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("2 valid replies < min-fit-clients=3" in m for m in messages)
    assert any("stays unchanged" in m for m in messages)
    assert all(r.name.startswith("flwr") for r in caplog.records)

    # Flower's loop evaluates the unchanged parameters after a None aggregate.
    strategy.evaluate(1, ndarrays_to_parameters(w_t))
    row = strategy.history[-1]
    assert row.model_updated is False
    assert row.clients_rejected == 2
    assert row.rejected["non_finite"] == 1 and row.rejected["undecodable"] == 1
    for kept, before in zip(strategy.global_weights, w_t, strict=True):
        np.testing.assert_array_equal(kept, before)


def test_rejections_land_in_history_csv_columns(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kind of bad reply in one round: per-reason counts reach the row, the
    ``rejected_<reason>`` columns of history.csv and history.json."""
    monkeypatch.setattr("fl_app.results.plot_history", lambda *args: None)  # speed only
    num_bad = len(BAD)
    strategy, manager = make_strategy(
        mnist_dir, num_nodes=len(HONEST_SIZES) + num_bad, run_dir=tmp_path
    )
    strategy.evaluate(0, ndarrays_to_parameters(strategy.global_weights))
    nodes = start_round(strategy, manager, 1)
    w_t = [w.copy() for w in strategy.global_weights]
    deltas = honest_deltas(w_t, len(HONEST_SIZES))
    results: Results = [
        (node, fit_res(ndarrays_to_parameters(delta), n_k))
        for node, delta, n_k in zip(
            nodes[: len(HONEST_SIZES)], deltas, HONEST_SIZES, strict=True
        )
    ]
    results += [
        (node, bad_reply(kind, w_t))
        for node, kind in zip(nodes[len(HONEST_SIZES) :], BAD, strict=True)
    ]
    results.reverse()  # arrival order must not matter

    parameters, _ = strategy.aggregate_fit(1, results, [])
    assert parameters is not None
    assert_close(
        parameters_to_ndarrays(parameters), honest_mean(w_t, deltas, HONEST_SIZES)
    )
    strategy.evaluate(1, parameters)

    expected = dict.fromkeys(REASONS, 0)
    for reason, _ in BAD.values():
        expected[reason] += 1
    assert expected["dtype"] == 2 and expected["num_examples"] == 3

    with io.StringIO((tmp_path / HISTORY_CSV).read_text()) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["round"] for row in rows] == ["0", "1"]
    for reason, count in expected.items():
        assert int(rows[1][f"rejected_{reason}"]) == count
    assert int(rows[1]["clients_rejected"]) == num_bad
    assert int(rows[1]["clients_succeeded"]) == len(HONEST_SIZES) + num_bad
    assert rows[1]["model_updated"] == "True"

    last = read_history(tmp_path)[-1]
    assert {r: last[f"rejected_{r}"] for r in REASONS} == expected
    assert last["clients_rejected"] == num_bad


def test_bad_reply_before_any_configure_fit_does_not_raise(mnist_dir: Path) -> None:
    """``aggregate_fit`` called directly (as tests/test_aggregation.py does) with a
    bad reply rejects it instead of raising."""
    strategy, _ = make_strategy(mnist_dir, num_nodes=0)
    w_t = strategy.global_weights
    deltas = honest_deltas(w_t, 2)
    results: Results = [
        (FakeNode("a", 0), fit_res(ndarrays_to_parameters(deltas[0]), 10)),
        (FakeNode("b", 1), bad_reply("garbage", w_t)),
        (FakeNode("c", 2), fit_res(ndarrays_to_parameters(deltas[1]), 20)),
    ]
    parameters, _ = strategy.aggregate_fit(1, results, [])
    assert parameters is not None
    assert_close(parameters_to_ndarrays(parameters), honest_mean(w_t, deltas, (10, 20)))


# ------------------------------------------------------------------ checked_arrays
LAYOUT_ARRAYS: NDArrays = [
    np.zeros((3, 2), np.float32),
    np.zeros(4, np.float32),
    np.zeros(2, np.float32),  # an algorithm's extra (SCAFFOLD's delta c)
]
LAYOUT = Layout.of(LAYOUT_ARRAYS)


def good_arrays() -> NDArrays:
    rng = np.random.default_rng(1)
    return [rng.standard_normal(a.shape).astype(np.float32) for a in LAYOUT_ARRAYS]


def check(parameters: Parameters, num_examples: int = 5, max_norm: float = 100.0):
    return checked_arrays(
        fit_res(parameters, num_examples),
        LAYOUT,
        num_update_arrays=2,
        max_num_examples=MAX_EXAMPLES,
        max_update_norm=max_norm,
    )


def pickled_object_array() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _replace(index: int, array: np.ndarray) -> NDArrays:
    arrays = good_arrays()
    arrays[index] = array
    return arrays


CHECKED_CASES: dict[str, tuple[str, Callable[[], tuple[Parameters, int]]]] = {
    "nan": ("non_finite", lambda: (_params(_poke(good_arrays(), np.nan)), 5)),
    "-inf": ("non_finite", lambda: (_params(_poke(good_arrays(), -np.inf)), 5)),
    "nan_in_extra": (
        "non_finite",
        lambda: (_params(_replace(2, np.array([0, np.nan], np.float32))), 5),
    ),
    "too_few": ("array_count", lambda: (_params(good_arrays()[:2]), 5)),
    "too_many": (
        "array_count",
        lambda: (_params([*good_arrays(), np.zeros(1, np.float32)]), 5),
    ),
    "none": ("array_count", lambda: (_params([]), 5)),
    "shape": ("shape", lambda: (_params(_replace(1, np.zeros(5, np.float32))), 5)),
    "transposed": (
        "shape",
        lambda: (_params(_replace(0, np.zeros((2, 3), np.float32))), 5),
    ),
    "float64": ("dtype", lambda: (_params(_replace(1, np.zeros(4, np.float64))), 5)),
    "int32": ("dtype", lambda: (_params(_replace(0, np.zeros((3, 2), np.int32))), 5)),
    "n_k_zero": ("num_examples", lambda: (_params(good_arrays()), 0)),
    "n_k_negative": ("num_examples", lambda: (_params(good_arrays()), -5)),
    "n_k_absurd": ("num_examples", lambda: (_params(good_arrays()), MAX_EXAMPLES + 1)),
    "norm": (
        "norm",
        lambda: (_params(_replace(1, np.full(4, 1e30, np.float32))), 5),
    ),
    "garbage": (
        "undecodable",
        lambda: (Parameters(tensors=[b"garbage"], tensor_type="numpy.ndarray"), 5),
    ),
    "pickle": (
        "undecodable",
        lambda: (
            Parameters(tensors=[pickled_object_array()], tensor_type="numpy.ndarray"),
            5,
        ),
    ),
}


@pytest.mark.parametrize("case", list(CHECKED_CASES))
def test_checked_arrays_names_the_reason(case: str) -> None:
    """``checked_arrays`` alone raises ``Rejected`` with the matching reason."""
    reason, build = CHECKED_CASES[case]
    parameters, num_examples = build()
    with pytest.raises(Rejected) as caught:
        check(parameters, num_examples)
    assert caught.value.reason == reason
    assert reason in REASONS
    assert str(caught.value).startswith(f"{reason}: ")


def test_checked_arrays_covers_every_reason() -> None:
    """The unit cases above exercise each of ``REASONS``."""
    assert {reason for reason, _ in CHECKED_CASES.values()} == set(REASONS) - {"codec"}


def test_checked_arrays_returns_a_valid_reply() -> None:
    """A well-formed reply comes back decoded, array for array."""
    arrays = good_arrays()
    got = check(_params(arrays), num_examples=MAX_EXAMPLES)  # the bound is inclusive
    assert len(got) == len(arrays)
    for g, a in zip(got, arrays, strict=True):
        np.testing.assert_array_equal(g, a)
        assert g.dtype == a.dtype


def test_norm_bound_covers_only_the_update_and_zero_disables_it() -> None:
    """The bound applies to the first ``num_update_arrays`` arrays; 0 turns it off."""
    big_extra = _replace(2, np.full(2, 1e6, np.float32))
    assert len(check(_params(big_extra), max_norm=10.0)) == 3  # extras: no bound

    big_update = _replace(0, np.full((3, 2), 1e6, np.float32))
    with pytest.raises(Rejected, match="norm"):
        check(_params(big_update), max_norm=10.0)
    assert len(check(_params(big_update), max_norm=0.0)) == 3


def test_norm_exactly_at_the_bound_is_accepted() -> None:
    """``||update|| == max-update-norm`` passes; only strictly above is rejected."""
    arrays = [
        np.zeros((3, 2), np.float32),
        np.array([3, 4, 0, 0], np.float32),  # norm 5
        np.zeros(2, np.float32),
    ]
    assert len(check(_params(arrays), max_norm=5.0)) == 3
    with pytest.raises(Rejected, match="norm"):
        check(_params(arrays), max_norm=4.999)


def test_npy_array_reads_what_flower_serializes_as_np_load_does() -> None:
    """The server's decoder (headers parsed once) against Flower's own np.load,
    bit for bit, C and Fortran order, and what np.load refuses it refuses."""
    import io as _io

    from flwr.compat.common.parameter import ndarray_to_bytes

    from strategies.validation import npy_array

    rng = np.random.default_rng(3)
    for array in (
        rng.normal(size=(784, 200)).astype(np.float32),
        np.asfortranarray(rng.normal(size=(5, 3))),
        np.arange(7, dtype=np.int64),
        np.float32(2.5) * np.ones(()),
    ):
        data = ndarray_to_bytes(array)
        ours = npy_array(data)
        theirs = np.load(_io.BytesIO(data), allow_pickle=False)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert ours.tobytes() == theirs.tobytes() and ours.flags.writeable
    buffer = _io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for bad in (buffer.getvalue(), b"not an array", ndarray_to_bytes(array)[:-4]):
        with pytest.raises(ValueError):
            npy_array(bad)

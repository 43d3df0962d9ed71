"""Compressed updates end to end, without Flower's transport: the client codes its
update by the run's scheme (error feedback carried in its state), the base strategy
decodes before validation so every rule gets plain updates, a payload that does not
decode is rejected as ``codec`` and the round goes on, and upload bytes shrink."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import RecordDict
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

import strategies
from fl_app.client import PartitionClient
from fl_app.compression import CodecSpec, decode, encode
from fl_app.config import CompressionConfig, ConfigError, RunConfig
from fl_app.data import client_data
from fl_app.keys import RESIDUAL
from fl_app.model import build_model, get_weights
from tests.test_validation import fit_res, honest_deltas, make_strategy, start_round

FIT_CONFIG = {
    "server-round": 1,
    "learning-rate": 0.05,
    "local-epochs": 1,
    "batch-size": 10,
    "seed": 1,
}


def client(mnist_dir: Path, codec: CodecSpec | None) -> PartitionClient:
    train, val = client_data(
        "mnist", str(mnist_dir), "iid", 0, 4, alpha=0.5, val_fraction=0.1, seed=1
    )
    return PartitionClient(
        build_model("mlp", seed=0), train, val, 0, state=RecordDict(), codec=codec
    )


def layout_of(weights: list[np.ndarray]) -> list[tuple[tuple[int, ...], np.dtype]]:
    return [(w.shape, w.dtype) for w in weights]


@pytest.mark.parametrize("scheme", ["fp16", "int8", "topk", "sign"])
def test_the_client_sends_the_coded_update(mnist_dir: Path, scheme: str) -> None:
    weights = get_weights(build_model("mlp", seed=3))
    plain, _, _ = client(mnist_dir, None).fit(weights, dict(FIT_CONFIG))
    spec = CodecSpec(scheme, 0.05)
    coded, _, _ = client(mnist_dir, spec).fit(weights, dict(FIT_CONFIG))
    assert sum(a.nbytes for a in coded) * 1.9 < sum(a.nbytes for a in plain)
    update = decode(coded, spec, layout_of(weights))
    if scheme == "topk":  # the coordinates sent are exact, the rest are zero
        for got, want in zip(update, plain, strict=True):
            sent = got != 0
            assert 0 < sent.sum() < got.size or got.size < 20
            np.testing.assert_array_equal(got[sent], want[sent])
    elif scheme in ("fp16", "int8"):
        for got, want in zip(update, plain, strict=True):
            bound = np.abs(want).max() / (127 if scheme == "int8" else 1000)
            assert np.abs(got - want).max() <= bound + 1e-9
    elif scheme == "sign":  # round 1, no residual yet: mean|x| * sign(x) a tensor
        for got, want in zip(update, plain, strict=True):
            scale = np.float32(np.abs(want).mean(dtype=np.float64))
            np.testing.assert_array_equal(got, np.where(want < 0, -scale, scale))
    else:
        pytest.fail(f"no check for {scheme}")


def test_error_feedback_carries_the_residual_to_the_next_round(
    mnist_dir: Path,
) -> None:
    spec = CodecSpec("topk", 0.01)
    me = client(mnist_dir, spec)
    weights = get_weights(build_model("mlp", seed=3))
    first, _, _ = me.fit(weights, dict(FIT_CONFIG))
    residual = me.state[RESIDUAL].to_numpy_ndarrays()  # type: ignore[union-attr]
    plain, _, _ = client(mnist_dir, None).fit(weights, dict(FIT_CONFIG))
    sent = decode(first, spec, layout_of(weights))
    for r, p, s in zip(residual, plain, sent, strict=True):
        np.testing.assert_allclose(r, p - s, atol=1e-7)  # what was not sent
    assert sum(float(np.square(r).sum()) for r in residual) > 0

    round_2 = {**FIT_CONFIG, "server-round": 2}
    second, _, _ = me.fit(weights, dict(round_2))
    plain_2, _, _ = client(mnist_dir, None).fit(weights, dict(round_2))
    sent_2 = decode(second, spec, layout_of(weights))
    new_residual = me.state[RESIDUAL].to_numpy_ndarrays()  # type: ignore[union-attr]
    for s, p, r_old, r_new in zip(sent_2, plain_2, residual, new_residual, strict=True):
        np.testing.assert_allclose(s + r_new, p + r_old, atol=1e-6)


def test_the_server_decodes_before_validation_and_rejects_bad_payloads(
    mnist_dir: Path,
) -> None:
    spec = CodecSpec("int8")
    strategy, manager = make_strategy(
        mnist_dir, 3, compression=CompressionConfig(scheme="int8")
    )
    nodes = start_round(strategy, manager, 1)
    deltas = honest_deltas(strategy.global_weights, 3)
    rng = np.random.default_rng(0)
    payloads = [ndarrays_to_parameters(encode(d, spec, rng)[0]) for d in deltas]
    bad = [a.copy() for a in parameters_to_ndarrays(payloads[1])]
    bad[0] = bad[0].astype(np.int16)  # a level array of the wrong type
    results = [
        (nodes[0], fit_res(payloads[0], 10)),
        (nodes[1], fit_res(ndarrays_to_parameters(bad), 10)),
        (nodes[2], fit_res(payloads[2], 30)),
    ]
    updates = strategy.validate(1, results)
    assert [u.partition for u in updates] == [0, 2]
    assert strategy.round_record.rejected["codec"] == 1
    for update, delta in zip(updates, (deltas[0], deltas[2]), strict=True):
        for got, want in zip(update.delta, delta, strict=True):
            assert got.dtype == np.float32
            assert np.abs(got - want).max() <= np.abs(want).max() / 127 + 1e-9
    new, _ = strategy.aggregate_fit(1, results, [])
    assert new is not None
    # Bytes up are what arrived, measured from the serialized replies: an int8
    # payload is about a quarter of the float32 update.
    sizes = [sum(len(t) for t in res.parameters.tensors) for _, res in results]
    assert strategy.round_record.bytes_received == sum(sizes)
    float_bytes = sum(w.nbytes for w in strategy.global_weights)
    assert sizes[0] < 0.26 * float_bytes


@pytest.mark.parametrize(
    ("key", "value"),
    [("compression.scheme", "zip"), ("compression.topk-fraction", 0.0)],
)
def test_bad_compression_knobs_name_the_key(key: str, value: object) -> None:
    flat = {**RunConfig().to_flower(), key: value}
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_flower(flat)


def test_every_strategy_gets_plain_updates() -> None:
    """Decoding happens in the base pipeline, before any rule: no strategy
    overrides ``validate``."""
    for cls in strategies.STRATEGIES.values():
        assert cls.validate is strategies.BaseStrategy.validate

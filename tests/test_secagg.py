"""SecAgg+ without Flower's transport: the config refuses what needs individual
updates, the base strategy refuses a round in which more than the aggregate arrived,
the ClientApp's mod runs SecAgg+ only for the messages that carry it, and central DP
moves its clipping to the clients."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

import fl_app.client_app as client_app
from fl_app.config import ConfigError, RunConfig, SecAggConfig, ValidationConfig
from fl_app.keys import DP_CLIP
from fl_app.server_app import secure_workflow
from strategies import STRATEGIES, strategy_class
from tests.test_compressed_updates import FIT_CONFIG, client
from tests.test_validation import fit_res, honest_deltas, make_strategy, start_round

NEEDS_EACH_UPDATE = ["krum", "multi-krum", "median", "trimmed-mean", "scaffold"]
NEEDS_EACH_UPDATE += ["centered-clipping", "fedbuff"]  # fedbuff: no synchronous cohort


def secagg_config(**changes: Any) -> dict[str, Any]:
    flat = RunConfig().to_flower()
    flat.update({"secagg.enabled": True, "validation.max-update-norm": 0.0})
    flat.update(changes)
    return flat


@pytest.mark.parametrize("strategy", NEEDS_EACH_UPDATE)
def test_rules_that_need_each_update_are_refused(strategy: str) -> None:
    with pytest.raises(ConfigError, match=r"secagg\.enabled.*SecAgg"):
        strategy_class(RunConfig.from_flower(secagg_config(strategy=strategy)))


@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - set(NEEDS_EACH_UPDATE)))
def test_averaging_strategies_accept_secagg(strategy: str) -> None:
    config = RunConfig.from_flower(secagg_config(strategy=strategy))
    assert strategy_class(config) is STRATEGIES[strategy]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"validation.max-update-norm": 100.0}, "validation.max-update-norm"),
        ({"compression.scheme": "topk"}, "compression.scheme"),
        ({"secagg.reconstruction-threshold": 4}, "secagg.reconstruction-threshold"),
        ({"secagg.num-shares": 1}, "secagg.num-shares"),
        ({"secagg.quantization-range": 2**32}, "secagg.quantization-range"),
    ],
)
def test_what_secagg_cannot_honour_is_refused_naming_the_key(
    change: dict, key: str
) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        strategy_class(RunConfig.from_flower(secagg_config(**change)))


def test_the_strategy_takes_only_the_aggregate(mnist_dir: Path) -> None:
    """Every reply must carry the same parameters (SecAgg+'s average): then the
    round updates the model by exactly that; two different updates: refused."""
    strategy, manager = make_strategy(
        mnist_dir,
        3,
        secagg=SecAggConfig(enabled=True),
        validation=ValidationConfig(max_num_examples=1000, max_update_norm=0.0),
    )
    nodes = start_round(strategy, manager, 1)
    (average,) = honest_deltas(strategy.global_weights, 1)
    # SecAgg+ hands over its average in float64; the model stays float32.
    same = ndarrays_to_parameters([a.astype(np.float64) for a in average])
    before = [w.copy() for w in strategy.global_weights]
    new, _ = strategy.aggregate_fit(
        1, [(node, fit_res(same, 10 * (k + 1))) for k, node in enumerate(nodes)], []
    )
    assert new is not None
    assert strategy.round_record.extra["distinct_updates_seen"] == 1
    assert strategy.round_record.clients_rejected == 0
    assert {a.dtype for a in parameters_to_ndarrays(new)} == {np.dtype(np.float32)}
    for w, b, d in zip(parameters_to_ndarrays(new), before, average, strict=True):
        np.testing.assert_allclose(w, b + d, rtol=1e-6, atol=1e-7)

    nodes = start_round(strategy, manager, 2)
    deltas = honest_deltas(strategy.global_weights, 3, seed=5)
    results = [
        (node, fit_res(ndarrays_to_parameters(d), 10))
        for node, d in zip(nodes, deltas, strict=True)
    ]
    new, _ = strategy.aggregate_fit(2, results, [])
    assert new is None
    assert strategy.round_record.extra["distinct_updates_seen"] == 3


def test_the_mod_runs_secagg_only_for_its_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        client_app, "secaggplus_mod", lambda m, c, n: calls.append("secagg") or m
    )

    def call_next(msg: Message, context: Context) -> Message:
        calls.append("client")
        return msg

    context = Context(1, 1, {}, RecordDict(), {})
    content = RecordDict()
    plain = SimpleNamespace(
        metadata=SimpleNamespace(message_type=MessageType.TRAIN), content=content
    )
    client_app.secagg_when_asked(plain, context, call_next)  # type: ignore[arg-type]
    assert calls == ["client"]
    masked_content = RecordDict()
    masked_content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({"stage": "x"})
    masked = SimpleNamespace(
        metadata=SimpleNamespace(message_type=MessageType.TRAIN),
        content=masked_content,
    )
    client_app.secagg_when_asked(masked, context, call_next)  # type: ignore[arg-type]
    assert calls == ["client", "secagg"]
    evaluate = SimpleNamespace(
        metadata=SimpleNamespace(message_type=MessageType.EVALUATE),
        content=masked_content,
    )
    client_app.secagg_when_asked(evaluate, context, call_next)  # type: ignore[arg-type]
    assert calls == ["client", "secagg", "client"]


def test_with_dp_the_clients_clip_and_weigh_one(mnist_dir: Path) -> None:
    config = RunConfig.from_flower(
        secagg_config(**{"dp.clip-norm": 0.05, "strategy": "fedavg"})
    )
    assert secure_workflow(config).fit_workflow.max_weight == 1.0  # type: ignore[attr-defined]
    weights = client(mnist_dir, None).model.state_dict()
    arrays = [v.numpy().copy() for v in weights.values()]
    update, n_k, _ = client(mnist_dir, None).fit(arrays, {**FIT_CONFIG, DP_CLIP: 0.05})
    assert n_k == 1
    norm = np.sqrt(sum(float(np.square(u).sum()) for u in update))
    assert norm == pytest.approx(0.05, rel=1e-4)

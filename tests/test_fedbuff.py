"""FedBuff (``strategies/fedbuff.py``, ``strategies/async_rounds.py``): its staleness
weighting against a hand computation, and its asynchronous loop through the real
ServerApp and ClientApp (``tests/inprocess.py``) against the virtual-clock schedule
recomputed from the seed: who is sent what, when each update happens, how stale its
replies are, and the same history from the same seed twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app.message_type import MessageType
from flwr.common import ndarrays_to_parameters
from flwr.compat.common.recorddict_compat import recorddict_to_fitins

from fl_app import keys
from fl_app.client import trained_by
from fl_app.config import ConfigError, RunConfig
from fl_app.heterogeneity import Arrival, AsyncScheduler, client_seconds, draw_profiles
from fl_app.model import build_model, get_weights
from fl_app.results import MACHINE_FIELDS, read_history
from strategies import FedBuff, strategy_class
from strategies.metrics import parameters_nbytes
from strategies.sampling import PackedClient
from strategies.validation import ClientUpdate
from tests.fakes import FakeNode
from tests.inprocess import quick_config, run_in_process

NUM_NODES, SEED = 10, 42
SETTINGS = {"fedbuff.buffer-size": 3, "fedbuff.concurrency": 5}


def test_staleness_weighting_against_a_hand_computation(mnist_dir: Path) -> None:
    """w + eta Σ_i n_i (1+s_i)^-0.5 Δ_i / Σ_i n_i, computed here in float64 from
    three updates of staleness 0, 1 and 3."""
    config = RunConfig(
        dataset="mnist", data_dir=str(mnist_dir), strategy="fedbuff", model="mlp"
    ).replace(fedbuff=RunConfig().fedbuff.__class__(server_lr=0.5))
    strategy = FedBuff(config)
    rng = np.random.default_rng(0)
    w = [rng.normal(size=a.shape).astype(np.float32) for a in strategy.global_weights]
    strategy.global_weights = w
    sizes, staleness = [30, 10, 60], [0, 1, 3]
    updates = []
    for i, (n, s) in enumerate(zip(sizes, staleness, strict=True)):
        delta = [rng.normal(size=a.shape).astype(np.float32) for a in w]
        client = PackedClient(FakeNode(str(i)), i)
        updates.append(ClientUpdate(client, i, n, delta, [], {}))
        strategy.staleness[id(client)] = s
    got = strategy.aggregate(1, updates)
    assert got is not None
    for j, array in enumerate(w):
        step = sum(
            n * (1 + s) ** -0.5 * u.delta[j].astype(np.float64)
            for n, s, u in zip(sizes, staleness, updates, strict=True)
        ) / sum(sizes)
        want = array.astype(np.float64) + 0.5 * step
        assert got[j].dtype == np.float32
        np.testing.assert_allclose(got[j], want, rtol=1e-5, atol=1e-6)


def schedule(data_dir: Path, rounds: int) -> list[Any]:
    """The events the loop must follow, from the seed alone: each partition's
    device and n_k, the model's bytes both ways, AsyncScheduler's rule."""
    config = RunConfig(dataset="mnist", data_dir=str(data_dir), seed=SEED)
    config = config.replace(heterogeneity=config.heterogeneity.__class__(enabled=True))
    devices = draw_profiles(config.heterogeneity.spec(), NUM_NODES, SEED)
    nbytes = parameters_nbytes(
        ndarrays_to_parameters(get_weights(build_model(config.model, seed=SEED)))
    )
    seconds = [
        client_seconds(
            devices[p],
            bytes_down=nbytes,
            bytes_up=nbytes,
            num_examples=len(trained_by(config, p, NUM_NODES)),
            epochs=1,
        )
        for p in range(NUM_NODES)
    ]
    return list(
        AsyncScheduler(
            num_clients=NUM_NODES,
            duration=lambda client, _version: seconds[client],
            concurrency=SETTINGS["fedbuff.concurrency"],
            buffer_size=SETTINGS["fedbuff.buffer-size"],
            seed=SEED,
        ).events(rounds)
    )


def run(data_dir: Path, output_dir: Path, rounds: int) -> tuple[list[dict], list]:
    config = quick_config(
        data_dir,
        output_dir,
        rounds,
        strategy="fedbuff",
        **{"heterogeneity.enabled": True, **SETTINGS},
    )
    grid = run_in_process(config, NUM_NODES)
    sent = [
        int(recorddict_to_fitins(request.content, False).config[keys.PARTITION_ID])
        for request, _ in grid.exchanges  # one node at a time, in the order sent
        if request.metadata.message_type == MessageType.TRAIN
    ]
    return read_history((output_dir / "latest").resolve()), sent


@pytest.mark.integration
def test_the_loop_follows_the_virtual_schedule_and_repeats_itself(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """Each update happens at the virtual time of the arrival that fills its buffer,
    with that buffer's staleness; the clients are sent in the schedule's order (the
    last ones' replies may never be waited for); the model learns; and a second run
    of the same seed gives the same history."""
    rounds = 4
    history, sent = run(mnist_dir, tmp_path / "a", rounds)
    events = schedule(mnist_dir, rounds)
    arrivals = [e for e in events if isinstance(e, Arrival)]
    starts = [e.client for e in events if not isinstance(e, Arrival)]
    assert [row["round"] for row in history] == list(range(rounds + 1))
    assert history[0]["virtual_time_s"] == 0.0
    buffer = SETTINGS["fedbuff.buffer-size"]
    for row, k in zip(history[1:], range(0, len(arrivals), buffer), strict=True):
        batch = arrivals[k : k + buffer]
        assert batch[-1].applied
        assert row["virtual_time_s"] == pytest.approx(batch[-1].time, rel=1e-12)
        assert row["staleness_max"] == max(a.staleness for a in batch)
        assert row["staleness_mean"] == pytest.approx(
            sum(a.staleness for a in batch) / buffer
        )
        assert row["clients_succeeded"] == buffer and row["model_updated"] is True
    assert any(row["staleness_max"] > 0 for row in history[1:])
    assert sent == starts[: len(sent)] and len(sent) >= len(arrivals)
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.1

    again, _ = run(mnist_dir, tmp_path / "b", rounds)
    strip = [{k: v for k, v in row.items() if k not in MACHINE_FIELDS} for row in again]
    first = [
        {k: v for k, v in row.items() if k not in MACHINE_FIELDS} for row in history
    ]
    assert strip == first


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"secagg.enabled": True}, "secagg.enabled"),
        ({"dp.clip-norm": 1.0}, "dp.clip-norm"),
        (
            {"heterogeneity.enabled": True, "heterogeneity.round-deadline": 5.0},
            "heterogeneity.round-deadline",
        ),
        (
            {"heterogeneity.enabled": True, "heterogeneity.over-commit": 1.3},
            "heterogeneity.over-commit",
        ),
        ({"selection.policy": "power-of-choice"}, "selection.policy"),
        (
            {"heterogeneity.enabled": True, "heterogeneity.online-fraction": 0.5},
            "heterogeneity.online-fraction",
        ),
        ({"compression.scheme": "topk"}, "compression.scheme"),
        ({"resume": True}, "resume"),
        ({"fraction-evaluate": 0.5}, "fraction-evaluate"),
        ({"fedbuff.buffer-size": 0}, "fedbuff.buffer-size"),
        ({"fedbuff.staleness-exponent": -1.0}, "fedbuff.staleness-exponent"),
    ],
)
def test_what_fedbuff_cannot_do_is_refused_naming_the_key(
    overrides: dict[str, Any], key: str
) -> None:
    flat = {**RunConfig().to_flower(), "data-dir": "", "strategy": "fedbuff"}
    with pytest.raises(ConfigError) as refused:
        strategy_class(RunConfig.from_flower({**flat, **overrides}))
    assert refused.value.key == key, refused.value

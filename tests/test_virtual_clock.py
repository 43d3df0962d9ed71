"""Simulated devices and the virtual clock, through the real ServerApp and ClientApp
(``tests/inprocess.py``): who a round keeps under a deadline and over-commitment,
and the history's virtual time, against a recomputation from the documented rules
(``fl_app.heterogeneity``: seeded devices, download + E·n_k·compute + upload)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters

from fl_app.client import trained_by
from fl_app.config import ConfigError, RunConfig
from fl_app.heterogeneity import client_seconds, draw_profiles
from fl_app.model import build_model, get_weights
from fl_app.results import read_history
from strategies.metrics import parameters_nbytes
from tests.inprocess import quick_config, run_in_process

pytestmark = pytest.mark.integration

NUM_NODES, PER_ROUND, ROUNDS = 10, 5, 2  # quick_config: fraction-fit 0.5


def expected_rounds(
    config: RunConfig, data_dir: Path
) -> list[tuple[list[int], list[float]]]:
    """Each round's sampled partitions (the seeded draw of ceil(f·K)) and their
    virtual seconds, worked out from the documented rules, not by the strategy."""
    heterogeneity = config.heterogeneity
    devices = draw_profiles(heterogeneity.spec(), NUM_NODES, config.seed)
    weights = get_weights(build_model(config.model, seed=config.seed))
    nbytes = parameters_nbytes(ndarrays_to_parameters(weights))  # down and up
    rounds = []
    for server_round in range(1, ROUNDS + 1):
        rng = np.random.default_rng([config.seed, server_round, 0])
        size = math.ceil(heterogeneity.over_commit * PER_ROUND)
        sampled = sorted(rng.choice(NUM_NODES, size=size, replace=False).tolist())
        seconds = []
        for partition in sampled:
            train = trained_by(config, partition, NUM_NODES)
            seconds.append(
                client_seconds(
                    devices[partition],
                    bytes_down=nbytes,
                    bytes_up=nbytes,
                    num_examples=len(train),
                    epochs=config.local_epochs,
                )
            )
        rounds.append((sampled, seconds))
    return rounds


def run(data_dir: Path, output_dir: Path, **heterogeneity: Any) -> list[dict]:
    overrides = quick_config(
        data_dir,
        output_dir,
        ROUNDS,
        **{"heterogeneity.enabled": True},
        **{f"heterogeneity.{k.replace('_', '-')}": v for k, v in heterogeneity.items()},
    )
    run_in_process(overrides, NUM_NODES)
    return read_history((output_dir / "latest").resolve())


def config_of(data_dir: Path, **heterogeneity: Any) -> RunConfig:
    base = RunConfig(dataset="mnist", data_dir=str(data_dir), learning_rate=0.05)
    return base.replace(
        heterogeneity=base.heterogeneity.__class__(enabled=True, **heterogeneity)
    )


def test_over_commitment_keeps_the_first_k_and_the_clock_adds_their_rounds(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """ceil(1.6·5) = 8 clients trained a round, the 5 fastest kept, each round as
    long as its 5th arrival: the virtual times are a function of the seed alone
    (recomputed here from it), so the same seed gives them again."""
    history = run(mnist_dir, tmp_path / "a", over_commit=1.6)
    expected = expected_rounds(config_of(mnist_dir, over_commit=1.6), mnist_dir)
    assert history[0]["virtual_time_s"] == 0.0
    elapsed = 0.0
    for row, (sampled, seconds) in zip(history[1:], expected, strict=True):
        assert row["clients_sampled"] == len(sampled) == 8
        assert row["clients_succeeded"] == 8 and row["clients_late"] == 3
        assert row["clients_rejected"] == 0 and row["model_updated"] is True
        elapsed += sorted(seconds)[PER_ROUND - 1]
        assert row["virtual_time_s"] == pytest.approx(elapsed, rel=1e-12)


def test_a_deadline_keeps_exactly_the_clients_that_finish_by_it(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """A deadline between round 1's 3rd and 4th arrivals: round 1 keeps 3 and lasts
    until the deadline; every round keeps exactly its clients within it."""
    _, seconds = expected_rounds(config_of(mnist_dir), mnist_dir)[0]
    third, fourth = sorted(seconds)[2:4]
    assert third < fourth, "the devices drawn give no gap to put the deadline in"
    deadline = (third + fourth) / 2
    history = run(mnist_dir, tmp_path, round_deadline=deadline)
    expected = expected_rounds(config_of(mnist_dir, round_deadline=deadline), mnist_dir)
    elapsed = 0.0
    for row, (_, seconds) in zip(history[1:], expected, strict=True):
        on_time = [s for s in seconds if s <= deadline]
        assert row["clients_late"] == len(seconds) - len(on_time)
        everyone = len(on_time) == len(seconds)
        elapsed += max(seconds) if everyone else deadline
        assert row["virtual_time_s"] == pytest.approx(elapsed, rel=1e-12)
        assert row["model_updated"] is (len(on_time) >= 2)  # min-fit-clients
    assert history[1]["clients_late"] == 2


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"heterogeneity.round-deadline": 10.0}, "heterogeneity.round-deadline"),
        ({"heterogeneity.over-commit": 1.3}, "heterogeneity.over-commit"),
        (
            {"heterogeneity.enabled": True, "heterogeneity.over-commit": 0.5},
            "heterogeneity.over-commit",
        ),
        (
            {"heterogeneity.enabled": True, "heterogeneity.down-mbps": 0.0},
            "heterogeneity.down-mbps",
        ),
        (
            {"heterogeneity.enabled": True, "secagg.enabled": True},
            "heterogeneity.enabled",
        ),
        (
            {"heterogeneity.enabled": True, "partition-source": "node"},
            "heterogeneity.enabled",
        ),
    ],
)
def test_what_the_devices_cannot_do_is_refused_naming_the_key(
    overrides: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        RunConfig.from_flower({**RunConfig().to_flower(), "data-dir": "", **overrides})
    assert refused.value.key == key, refused.value

"""Selection policies, partial work and online windows through the real ServerApp and
ClientApp (``tests/inprocess.py``), each round recomputed from what the run's
messages show (the replies' losses and sizes, the clock's documented prices) and the
documented rules, not by calling the strategy's own code."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app.message_type import MessageType
from flwr.common import FitIns, FitRes, ndarrays_to_parameters
from flwr.compat.common.recorddict_compat import (
    recorddict_to_fitins,
    recorddict_to_fitres,
)

from fl_app import keys
from fl_app.config import ConfigError, RunConfig
from fl_app.heterogeneity import (
    client_seconds,
    draw_profiles,
    oort_select,
    power_of_choice,
    work_fraction,
)
from fl_app.model import build_model, get_weights
from fl_app.results import read_history
from fl_app.training import local_steps
from strategies.metrics import parameters_nbytes
from strategies.selection import Selection
from tests.inprocess import LocalGrid, quick_config, run_in_process

pytestmark = pytest.mark.integration

NUM_NODES, PER_ROUND, SEED = 10, 5, 42  # quick_config: fraction-fit 0.5


def run(
    data_dir: Path, output_dir: Path, rounds: int, **overrides: Any
) -> tuple[list[dict[str, Any]], list[list[tuple[FitIns, FitRes]]]]:
    """A run's history and its train exchanges by round, one client a message."""
    config = quick_config(
        data_dir, output_dir, rounds, clients_per_message=1, **overrides
    )
    grid: LocalGrid = run_in_process(config, NUM_NODES)
    by_round: list[list[tuple[FitIns, FitRes]]] = [[] for _ in range(rounds)]
    for request, reply in grid.exchanges:
        if request.metadata.message_type != MessageType.TRAIN:
            continue
        ins = recorddict_to_fitins(request.content, False)
        res = recorddict_to_fitres(reply.content, False)
        by_round[int(ins.config[keys.SERVER_ROUND]) - 1].append((ins, res))
    return read_history((output_dir / "latest").resolve()), by_round


def partitions(exchanges: list[tuple[FitIns, FitRes]]) -> list[int]:
    return sorted(int(ins.config[keys.PARTITION_ID]) for ins, _ in exchanges)


def priced(config: RunConfig, ins: FitIns, res: FitRes) -> float:
    """The clock's documented price of a reply: download + work·E·n_k·compute +
    upload, from the device of its partition (an uncompressed update is as large
    as the weights sent; the server has consumed the reply's own arrays)."""
    devices = draw_profiles(config.heterogeneity.spec(), NUM_NODES, config.seed)
    nbytes = parameters_nbytes(ins.parameters)
    return client_seconds(
        devices[int(ins.config[keys.PARTITION_ID])],
        bytes_down=nbytes,
        bytes_up=nbytes,
        num_examples=res.num_examples,
        epochs=config.local_epochs,
        work=float(res.metrics.get(keys.WORK_DONE, 1.0)),
    )


def config_of(data_dir: Path, **overrides: Any) -> RunConfig:
    flat = {**RunConfig().to_flower(), "dataset": "mnist", "data-dir": str(data_dir)}
    return RunConfig.from_flower({**flat, **overrides})


def test_uniform_is_the_seeded_draw_bit_for_bit() -> None:
    """The uniform policy draws exactly what the sampler always drew:
    ``np.sort(default_rng([seed, round, 0]).choice(K, m))``, for any K and m."""
    selection = Selection(RunConfig())
    for seed, k, m in [(42, 10, 5), (7, 100, 10), (0, 10_000, 100), (3, 13, 13)]:
        for server_round in (1, 2, 50):
            want = np.sort(
                np.random.default_rng([seed, server_round, 0]).choice(
                    k, size=m, replace=False
                )
            ).tolist()
            rng = np.random.default_rng([seed, server_round, 0])
            assert selection.choose(rng, range(k), m) == want


def test_power_of_choice_takes_the_highest_reported_losses(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """Each round: d = 2m candidates drawn in proportion to the n_k reported so far
    (unseen: their mean), the m with the highest loss reported last kept (unseen
    first); round 1 knows nothing, so it is d candidates' first m by id."""
    rounds = 3
    _, exchanges = run(
        mnist_dir, tmp_path, rounds, **{"selection.policy": "power-of-choice"}
    )
    losses: dict[int, float] = {}
    sizes: dict[int, int] = {}
    for server_round, replies in enumerate(exchanges, start=1):
        unseen = statistics.fmean(sizes.values()) if sizes else 1.0
        weights = [sizes.get(p, unseen) for p in range(NUM_NODES)]
        rng = np.random.default_rng([SEED, server_round, 0])
        want = power_of_choice(rng, weights, losses, d=2 * PER_ROUND, m=PER_ROUND)
        assert partitions(replies) == want, server_round
        for ins, res in replies:
            partition = int(ins.config[keys.PARTITION_ID])
            losses[partition] = float(res.metrics[keys.TRAIN_LOSS])
            sizes[partition] = res.num_examples
    # Not uniform's draw: a seen client of low loss gave way.
    uniform = np.sort(np.random.default_rng([SEED, 3, 0]).choice(10, 5, False))
    assert partitions(exchanges[2]) != uniform.tolist()


def test_oort_exploits_utility_over_observed_time_and_explores_the_rest(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """Oort sees each reply's loss, n_k and arrival time on the virtual clock; each
    round keeps the highest n_k·loss·min(1, T/t)^alpha (T the median observed
    time) and explores floor(0.2·m) clients never tried."""
    rounds = 3
    overrides = {"selection.policy": "oort", "heterogeneity.enabled": True}
    history, exchanges = run(mnist_dir, tmp_path, rounds, **overrides)
    config = config_of(mnist_dir, **overrides)
    stat: dict[int, float] = {}
    seconds: dict[int, float] = {}
    for server_round, replies in enumerate(exchanges, start=1):
        rng = np.random.default_rng([SEED, server_round, 0])
        preferred = statistics.median(seconds.values()) if seconds else 1.0
        want = oort_select(
            rng,
            list(range(NUM_NODES)),
            stat_utility=stat,
            durations=seconds,
            preferred_duration=preferred,
            alpha=2.0,
            m=PER_ROUND,
            epsilon=0.2,
        )
        assert partitions(replies) == want, server_round
        for ins, res in replies:
            partition = int(ins.config[keys.PARTITION_ID])
            stat[partition] = res.num_examples * float(res.metrics[keys.TRAIN_LOSS])
            seconds[partition] = priced(config, ins, res)
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"]


def test_partial_work_sends_what_finishes_by_the_deadline(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """A deadline that round 1's slower clients miss at full work: with partial work
    each of them takes the steps it can (ceil(f·S) - 1 of S, f from its device and
    the bytes it received) and arrives by the deadline, so it is kept; without it,
    they are late and dropped."""
    probe = config_of(mnist_dir, **{"heterogeneity.enabled": True})
    nbytes = parameters_nbytes(
        ndarrays_to_parameters(get_weights(build_model(probe.model, seed=SEED)))
    )
    devices = draw_profiles(probe.heterogeneity.spec(), NUM_NODES, SEED)
    full = sorted(
        client_seconds(
            d, bytes_down=nbytes, bytes_up=nbytes, num_examples=180, epochs=1
        )
        for d in devices  # n_k = 180: 2,000 examples over 10, less 10% held out
    )
    deadline = round(full[NUM_NODES // 2], 3)
    overrides = {
        "heterogeneity.enabled": True,
        "heterogeneity.round-deadline": deadline,
        "heterogeneity.partial-work": True,
    }
    history, exchanges = run(mnist_dir, tmp_path / "partial", 2, **overrides)
    config = config_of(mnist_dir, **overrides)
    partial = 0
    for replies, row in zip(exchanges, history[1:], strict=True):
        late = 0
        for ins, res in replies:
            steps = local_steps(res.num_examples, 1, config.batch_size)
            share = work_fraction(
                devices[int(ins.config[keys.PARTITION_ID])],
                deadline=deadline,
                bytes_down=nbytes,
                bytes_up=nbytes,
                num_examples=res.num_examples,
                epochs=1,
            )
            if share >= 1:
                assert keys.WORK_DONE not in res.metrics
            else:
                partial += 1
                done = max(0, math.ceil(share * steps) - 1)
                assert res.metrics[keys.WORK_DONE] == pytest.approx(done / steps)
            late += priced(config, ins, res) > deadline
        assert row["clients_late"] == late
    assert partial > 0, "no client needed partial work: move the deadline"
    without, _ = run(
        mnist_dir,
        tmp_path / "dropped",
        2,
        **{**overrides, "heterogeneity.partial-work": False},
    )
    dropped = sum(row["clients_late"] for row in without[1:])
    assert dropped > sum(row["clients_late"] for row in history[1:])


def test_a_round_samples_only_clients_online_at_its_start(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """Online half of a 10 s virtual day: each round draws its m (or all of those
    online, if fewer) uniformly among the devices online when it starts."""
    overrides = {
        "heterogeneity.enabled": True,
        "heterogeneity.online-fraction": 0.5,
        "heterogeneity.day-seconds": 10.0,
    }
    history, exchanges = run(mnist_dir, tmp_path, 3, **overrides)
    config = config_of(mnist_dir, **overrides)
    devices = draw_profiles(config.heterogeneity.spec(), NUM_NODES, SEED)
    offline_seen = 0
    for server_round, replies in enumerate(exchanges, start=1):
        start = history[server_round - 1]["virtual_time_s"]
        online = [p for p, d in enumerate(devices) if d.is_online(start)]
        offline_seen += len(online) < NUM_NODES
        size = min(PER_ROUND, len(online))
        picked = np.random.default_rng([SEED, server_round, 0]).choice(
            len(online), size=size, replace=False
        )
        assert partitions(replies) == [online[i] for i in np.sort(picked)]
    assert offline_seen == len(exchanges)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"selection.policy": "oort"}, "selection.policy"),
        (
            {"selection.policy": "power-of-choice", "partition-source": "node"},
            "selection.policy",
        ),
        (
            {"selection.policy": "power-of-choice", "dp.clip-norm": 1.0},
            "selection.policy",
        ),
        ({"selection.policy": "random"}, "selection.policy"),
        ({"selection.explore": 1.5}, "selection.explore"),
        ({"heterogeneity.partial-work": True}, "heterogeneity.partial-work"),
        (
            {"heterogeneity.enabled": True, "heterogeneity.partial-work": True},
            "heterogeneity.partial-work",
        ),
        (
            {"heterogeneity.enabled": True, "heterogeneity.online-fraction": 0.0},
            "heterogeneity.online-fraction",
        ),
    ],
)
def test_what_selection_cannot_do_is_refused_naming_the_key(
    overrides: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        RunConfig.from_flower({**RunConfig().to_flower(), "data-dir": "", **overrides})
    assert refused.value.key == key, refused.value

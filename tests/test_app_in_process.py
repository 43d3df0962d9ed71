"""The app's wiring, run whole in one process: ServerApp -> strategy -> fit config ->
ClientApp (mods included) -> client part -> reply -> pipeline, for every strategy.

``tests/inprocess.py`` joins the real ServerApp and ClientApp by a grid in memory,
so these runs take a second or two where ``flwr run`` takes 20 s of start-up; the
modules that use ``flwr run`` (``test_simulation.py``, ``test_resume.py``) check
that the two give the same history. Each run: 10 nodes, 5 sampled a round, the small
synthetic dataset.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app.message_type import MessageType
from flwr.compat.common.recorddict_compat import (
    recorddict_to_evaluateres,
    recorddict_to_fitins,
)

from fl_app.attacks import attacking_partitions
from fl_app.results import MACHINE_FIELDS, SUMMARY_FILE, read_history
from strategies import STRATEGIES
from tests.inprocess import (
    LocalGrid,
    quick_config,
    returning_counts,
    run_in_process,
    seeded_samples,
)

pytestmark = pytest.mark.integration

NUM_NODES = 10
PER_ROUND = 5  # fraction-fit 0.5

Run = tuple[LocalGrid, Path]
Runner = Callable[..., Run]


@pytest.fixture(scope="module")
def run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """``run(**overrides)`` -> (grid, run folder); a config is run once a module."""
    done: dict[str, Run] = {}

    def once(**overrides: Any) -> Run:
        key = json.dumps(overrides, sort_keys=True)
        if key not in done:
            output_dir = tmp_path_factory.mktemp("in-process")
            config = {**quick_config(mnist_dir, output_dir, 2), **overrides}
            grid = run_in_process(config, NUM_NODES)
            done[key] = grid, (output_dir / "latest").resolve()
        return done[key]

    return once


def history(run_dir: Path) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in row.items() if k not in MACHINE_FIELDS}
        for row in read_history(run_dir)
    ]


@pytest.mark.parametrize(
    "strategy", sorted(k for k, v in STRATEGIES.items() if not v.asynchronous)
)
def test_every_strategy_runs_and_learns(run: Runner, strategy: str) -> None:
    grid, run_dir = run(strategy=strategy, **{"fedopt.eta": 0.03})
    rows = history(run_dir)
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.1, rows
    for row in rows[1:]:
        assert row["clients_sampled"] == PER_ROUND
        assert row["clients_succeeded"] == PER_ROUND and row["clients_rejected"] == 0
        assert row["model_updated"] is True
    assert json.loads((run_dir / "config.json").read_text())["strategy"] == strategy
    trained = [
        partition
        for request, _ in grid.exchanges
        if request.metadata.message_type == MessageType.TRAIN
        for partition in dealt(recorddict_to_fitins(request.content, False).config)
    ]
    assert len(trained) == 2 * PER_ROUND
    assert [set(trained[:PER_ROUND]), set(trained[PER_ROUND:])] == seeded_samples(42, 2)


def dealt(config: dict[str, Any]) -> list[int]:
    """The partitions a train message names: one, or several when packed."""
    if "partition-ids" in config:
        return [int(p) for p in str(config["partition-ids"]).split(",")]
    return [int(config["partition-id"])]


def test_fedprox_client_part_is_switched_on_by_the_config(run: Runner) -> None:
    """mu = 0 adds exactly nothing, so FedProx then is FedAvg bit for bit; mu > 0
    changes what clients send. Both facts need the proximal term to reach the
    client through the fit config."""
    _, fedavg = run(strategy="fedavg")
    _, mu_zero = run(strategy="fedprox", **{"fedprox.mu": 0.0})
    _, mu_one = run(strategy="fedprox", **{"fedprox.mu": 1.0})
    assert history(mu_zero) == history(fedavg)
    assert history(mu_one)[1]["train_loss"] != history(fedavg)[1]["train_loss"]
    assert history(mu_one)[1]["test_loss"] != history(fedavg)[1]["test_loss"]


def test_scaffold_clients_find_their_variates_in_their_state(run: Runner) -> None:
    """A client sampled again finds its c_i in its node's state: the count of such
    returning clients per round is what the seeded sample implies."""
    seed, rounds = 11, 4
    _, run_dir = run(strategy="scaffold", seed=seed, **{"num-server-rounds": rounds})
    expected = returning_counts(seeded_samples(seed, rounds))
    assert sum(expected[1:]) > 0  # some client returns, so the check can fail
    assert [row["scaffold_returning"] for row in history(run_dir)[1:]] == expected


def test_the_same_seed_repeats_the_run_and_another_seed_does_not(
    run: Runner, tmp_path: Path, mnist_dir: Path
) -> None:
    _, first = run(strategy="fedavg")
    run_in_process(quick_config(mnist_dir, tmp_path, 2), NUM_NODES)
    again = (tmp_path / "latest").resolve()
    _, other = run(strategy="fedavg", seed=8)
    assert history(again) == history(first)
    assert history(other)[0]["test_loss"] != history(first)[0]["test_loss"]
    assert history(other)[1]["train_loss"] != history(first)[1]["train_loss"]


def test_federated_evaluation_is_the_example_weighted_mean_of_the_replies(
    run: Runner,
) -> None:
    grid, run_dir = run(strategy="fedavg", **{"fraction-evaluate": 0.3})
    rows = history(run_dir)
    for server_round in (1, 2):
        replies = [
            recorddict_to_evaluateres(reply.content)
            for request, reply in grid.exchanges
            if request.metadata.message_type == MessageType.EVALUATE
            and request.metadata.group_id == str(server_round)
        ]
        assert len(replies) == 3  # 30% of 10
        n = sum(r.num_examples for r in replies)
        accuracy = sum(r.num_examples * float(r.metrics["accuracy"]) for r in replies)
        loss = sum(r.num_examples * r.loss for r in replies)
        row = rows[server_round]
        assert math.isfinite(row["federated_accuracy"])
        assert row["federated_accuracy"] == pytest.approx(accuracy / n, rel=1e-12)
        assert row["federated_loss"] == pytest.approx(loss / n, rel=1e-12)
        assert 0.0 <= row["federated_accuracy"] <= 1.0


def test_attackers_are_the_seeded_draw_and_are_rejected(run: Runner) -> None:
    """gaussian-noise with a huge sigma breaks the update-norm bound: in every
    round exactly the sampled attackers (drawn from the seed, which the server is
    never told) are rejected, with reason 'norm', and the rest aggregated."""
    seed, rounds = 3, 3
    _, run_dir = run(
        seed=seed,
        **{
            "num-server-rounds": rounds,
            "attack.kind": "gaussian-noise",
            "attack.sigma": 50.0,
            "attack.fraction": 0.2,
        },
    )
    attackers = attacking_partitions(seed, NUM_NODES, 0.2)
    expected = [len(s & attackers) for s in seeded_samples(seed, rounds)]
    assert sum(expected) > 0, "no round samples an attacker: pick another seed"
    rows = history(run_dir)
    assert [row["attackers_sampled"] for row in rows[1:]] == expected
    assert [row["rejected_norm"] for row in rows[1:]] == expected
    assert [row["clients_rejected"] for row in rows[1:]] == expected
    assert [row["clients_succeeded"] for row in rows[1:]] == [PER_ROUND] * rounds
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.1


def test_central_dp_spends_epsilon_and_stops_at_its_budget(run: Runner) -> None:
    """FedAdam wrapped in server-side central DP: epsilon grows each round; a
    budget between rounds 2 and 3 ends the run cleanly after round 2."""
    _, run_dir = run(
        strategy="fedadam",
        **{
            "num-server-rounds": 4,
            "dp.clip-norm": 1.0,
            "dp.noise-multiplier": 4.0,
            "dp.max-epsilon": 2.8,
        },
    )
    rows = history(run_dir)
    epsilons = [row["epsilon"] for row in rows]
    assert epsilons[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(epsilons))
    # K = 10 clients, m = 5 a round, z = 4: epsilon is 1.67, 2.44, 3.11 after rounds
    # 1-3 (dp-accounting at delta 1e-5), so a budget of 2.8 allows two rounds.
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert epsilons[-1] == pytest.approx(2.437, abs=0.01)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert "dp.max-epsilon" in summary["stop_reason"]
    assert summary["rounds_done"] == 2


def test_secagg_aggregate_matches_plain_fedavg(run: Runner) -> None:
    """One round with SecAgg+ and one without, same seed: the strategy saw only the
    aggregate (one distinct update), and the new global model equals plain FedAvg's
    within SecAgg+'s quantization error: a step of 2c/Q on each client's update,
    scaled by n_k / max-weight, so at most step * max-weight / min n_k."""
    common = {"num-server-rounds": 1, "seed": 5}
    _, plain_dir = run(**common)
    grid, secure_dir = run(
        **common,
        **{
            "secagg.enabled": True,
            "validation.max-update-norm": 0.0,
            "secagg.max-weight": 200.0,
        },
    )
    rows = history(secure_dir)
    assert [row["distinct_updates_seen"] for row in rows[1:]] == [1]
    assert rows[1]["clients_succeeded"] == PER_ROUND
    stages = {request.metadata.message_type for request, _ in grid.exchanges}
    assert stages == {MessageType.TRAIN}  # SecAgg+'s four stages are train messages
    assert len(grid.exchanges) == 4 * PER_ROUND

    plain = torch.load(plain_dir / "model.pt", weights_only=True)
    masked = torch.load(secure_dir / "model.pt", weights_only=True)
    step = 2 * 8.0 / 4194304
    bound = step * 200.0 / 150  # n_k >= 150 here (2,000 examples over 10 clients)
    worst = max(float((plain[k] - masked[k]).abs().max()) for k in plain)
    assert 0 < worst <= bound, worst


@pytest.mark.parametrize(
    "overrides",
    [
        {"strategy": "fedavg"},
        # Client state by partition (c_i, the error-feedback residual) and extras.
        {"strategy": "scaffold", "compression.scheme": "topk"},
    ],
    ids=["fedavg", "scaffold+topk-feedback"],
)
def test_packed_messages_give_the_unpacked_history(
    run: Runner, overrides: dict[str, Any]
) -> None:
    """Several clients a message (fl_app.packing) is transport only: the history
    equals one message a client's, bit for bit, with fewer messages sent."""
    one_each, one_each_dir = run(**{"clients-per-message": 1, **overrides})
    packed, packed_dir = run(**{"clients-per-message": 2, **overrides})
    assert history(packed_dir) == history(one_each_dir)

    def train_messages(grid: LocalGrid) -> list[list[int]]:
        return [
            dealt(recorddict_to_fitins(request.content, False).config)
            for request, _ in grid.exchanges
            if request.metadata.message_type == MessageType.TRAIN
        ]

    assert all(len(m) == 1 for m in train_messages(one_each))
    # Two rounds of 5 clients: messages of 2, 2 and 1 each (in the order replied).
    assert sorted(len(m) for m in train_messages(packed)) == [1, 1, 2, 2, 2, 2]


def test_the_benchmark_reference_loop_is_the_app_bit_for_bit(
    run: Runner, mnist_dir: Path
) -> None:
    """scripts/benchmark.py times the app against a one-process loop and claims the
    same SGD and the same average: the loop's model after each round is the app's
    (packed messages, Flower's in-place FedAvg), to the last bit."""
    from fl_app.checkpoint import CHECKPOINT_FILE, read_checkpoint
    from fl_app.config import RunConfig
    from fl_app.studies.reference_loop import run_reference

    _, run_dir = run(strategy="fedavg")
    config = RunConfig(
        num_server_rounds=2,
        fraction_fit=0.5,
        learning_rate=0.05,
        dataset="mnist",
        data_dir=str(mnist_dir),
    )
    accuracies: list[float] = []
    weights: list[Any] = []
    run_reference(config, NUM_NODES, accuracies, weights)
    assert accuracies == [row["test_accuracy"] for row in history(run_dir)[1:]]
    _, state = read_checkpoint(run_dir / CHECKPOINT_FILE)
    for ours, loop in zip(state["global_weights"], weights, strict=True):
        assert ours.tobytes() == loop.tobytes()


def test_rows_recorded_behind_the_rounds_checkpoint_what_each_round_ended_with(
    mnist_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round t's evaluation, files and checkpoint may be written while rounds t+1
    and t+2 run (strategies.base: overlaps_recording): each round's checkpoint must
    still hold that round's model, server state and history, as when every row is
    written before the next round starts. SCAFFOLD keeps server state (its control
    variate) that the next aggregation changes."""
    import time

    import numpy as np

    import strategies.base as base
    from fl_app.checkpoint import save_checkpoint

    def checkpoints(overlap: bool) -> list[dict[str, Any]]:
        saved: list[dict[str, Any]] = []

        def keep(path: Path, state: dict[str, Any], config: Any) -> None:
            saved.append(
                {
                    key: value
                    for key, value in json.loads(
                        json.dumps(state, default=lambda a: np.asarray(a).tolist())
                    ).items()
                    if key != "history"
                }
                | {
                    "history": [
                        {k: v for k, v in row.items() if k not in MACHINE_FIELDS}
                        for row in state["history"]
                    ]
                }
            )
            save_checkpoint(path, state, config)

        overlapped: list[int] = []

        def overlaps(self: base.BaseStrategy, server_round: int) -> bool:
            allowed = overlap and original(self, server_round)
            if allowed:
                overlapped.append(server_round)
            return allowed

        def slow_evaluate(*args: Any) -> tuple[float, float]:
            time.sleep(0.2)  # so that the rows fall behind the rounds
            return evaluate(*args)

        original = base.BaseStrategy.overlaps_recording
        evaluate = base.evaluate
        with monkeypatch.context() as patch:
            patch.setattr(base, "evaluate", slow_evaluate)
            patch.setattr(base, "save_checkpoint", keep)
            patch.setattr(base.BaseStrategy, "overlaps_recording", overlaps)
            output_dir = tmp_path / f"overlap-{overlap}"
            run_in_process(
                quick_config(mnist_dir, output_dir, 3, strategy="scaffold"), NUM_NODES
            )
        assert bool(overlapped) == overlap
        return saved

    sequential, overlapped = checkpoints(False), checkpoints(True)
    assert [c["round"] for c in overlapped] == [0, 1, 2, 3]
    assert overlapped == sequential

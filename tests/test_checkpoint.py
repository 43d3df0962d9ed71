"""Checkpoints: written after every round, read back into an identical strategy
state; refused, naming what differs, when corrupt, truncated or made by another run,
without touching anything; and the node's own store of client state, versioned by
round so that a round re-run after a crash starts from the state before it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common import Context, ndarrays_to_parameters

import strategies
from fl_app.checkpoint import (
    CHECKPOINT_FILE,
    RESUME_FILE,
    CheckpointError,
    load_checkpoint,
)
from fl_app.client_state import NodeStore
from fl_app.config import RunConfig
from fl_app.keys import EXPERIMENT
from fl_app.server_app import server_fn
from strategies.base import BaseStrategy
from tests.test_state import comparable, manager, play, same


def make_run(
    mnist_dir: Path, run_dir: Path, name: str = "fedadam", **changes: Any
) -> BaseStrategy:
    config = RunConfig(
        dataset="mnist",
        data_dir=str(mnist_dir),
        model="mlp",
        partition_source="node",
        strategy=name,
        fraction_fit=1.0,
        min_available_timeout=1.0,
        output_dir=str(run_dir.parent),
        **changes,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    return strategies.STRATEGIES[name](config, run_dir=run_dir)


@pytest.fixture
def two_rounds(mnist_dir: Path, tmp_path: Path) -> BaseStrategy:
    """A FedAdam run that completed rounds 1 and 2 (its checkpoint on disk)."""
    strategy = make_run(mnist_dir, tmp_path / "run")
    strategy.evaluate(0, ndarrays_to_parameters(strategy.global_weights))
    clients = manager()
    for server_round in (1, 2):
        play(strategy, clients, server_round)
    return strategy


def test_every_round_leaves_a_checkpoint_that_restores_the_state(
    mnist_dir: Path, two_rounds: BaseStrategy
) -> None:
    assert two_rounds.run_dir is not None
    state = load_checkpoint(two_rounds.run_dir / CHECKPOINT_FILE, two_rounds.config)
    assert state["round"] == 2
    assert comparable(state) == comparable(two_rounds.state_dict())
    assert [w.dtype for w in state["global_weights"]] == [np.float32] * 4

    resumed = make_run(mnist_dir, two_rounds.run_dir)
    resumed.load_state_dict(state)
    assert resumed.round_offset == 2
    # Flower's round 1 of the resumed run is round 3, sampled and configured as such.
    instructions = resumed.configure_fit(
        1, ndarrays_to_parameters(resumed.global_weights), manager()
    )
    assert {ins.config["server-round"] for _, ins in instructions} == {3}
    assert {ins.config[EXPERIMENT] for _, ins in instructions} == {"run"}
    # Flower evaluates a resumed run's initial model: that is round 2, not a new row.
    assert resumed.evaluate(0, ndarrays_to_parameters(resumed.global_weights))
    assert len(resumed.history) == 3
    assert same(play(resumed, manager(), 3), play(two_rounds, manager(), 3))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"strategy": "fedavg"}, "strategy"),
        ({"seed": 7}, "seed"),
        ({"model": "2nn"}, "model"),
        ({"dataset": "fashion-mnist"}, "dataset"),
        ({"partitioner": "shards"}, "partitioner"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused_naming_the_difference(
    two_rounds: BaseStrategy, change: dict, named: str
) -> None:
    assert two_rounds.run_dir is not None
    path = two_rounds.run_dir / CHECKPOINT_FILE
    before = path.read_bytes()
    other = RunConfig(**{**two_rounds.config.__dict__, **change})
    with pytest.raises(CheckpointError, match=f"{named}: checkpoint has"):
        load_checkpoint(path, other)
    assert path.read_bytes() == before


def test_how_long_and_where_may_change_on_resume(two_rounds: BaseStrategy) -> None:
    assert two_rounds.run_dir is not None
    longer = RunConfig(
        **{**two_rounds.config.__dict__, "num_server_rounds": 50, "resume": True}
    )
    assert load_checkpoint(two_rounds.run_dir / CHECKPOINT_FILE, longer)["round"] == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip"])
def test_a_damaged_checkpoint_is_refused_and_left_alone(
    two_rounds: BaseStrategy, damage: str
) -> None:
    assert two_rounds.run_dir is not None
    path = two_rounds.run_dir / CHECKPOINT_FILE
    data = path.read_bytes()
    damaged = {
        "truncate": data[: len(data) // 2],
        "garbage": os.urandom(len(data)),
        "empty": b"",
        "flip": data[:200] + bytes([data[200] ^ 0xFF]) + data[201:],
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match=r"corrupt or truncated|inconsistent"):
        load_checkpoint(path, two_rounds.config)
    assert path.read_bytes() == damaged


def test_a_missing_checkpoint_says_what_resume_needs(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / CHECKPOINT_FILE, RunConfig())


def test_the_server_app_refuses_a_bad_resume_before_writing_anything(
    two_rounds: BaseStrategy,
) -> None:
    """resume = true with another seed: an error naming 'seed'; the run folder's
    files stay as they were and no new run folder appears."""
    assert two_rounds.run_dir is not None
    run_dir = two_rounds.run_dir
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    run_config = {
        **two_rounds.config.to_flower(),
        "seed": 9,
        "resume": True,
        "resume-dir": str(run_dir),
    }
    context = Context(
        run_id=5, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    with pytest.raises(CheckpointError, match="seed: checkpoint has 42"):
        server_fn(context)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["run"]


def test_resume_continues_to_the_absolute_round(two_rounds: BaseStrategy) -> None:
    assert two_rounds.run_dir is not None
    run_config = {
        **two_rounds.config.to_flower(),
        "num-server-rounds": 5,
        "resume": True,
        "resume-dir": str(two_rounds.run_dir),
    }
    context = Context(
        run_id=5, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    components = server_fn(context)
    assert components.config.num_rounds == 3  # rounds 3, 4, 5
    assert components.strategy.round_offset == 2  # type: ignore[union-attr]


# ------------------------------------------------------------ the node's own store
def state_with(value: float) -> RecordDict:
    state = RecordDict()
    state["scaffold.c_i"] = ArrayRecord([np.full(3, value, dtype=np.float32)])
    state["scaffold.rounds"] = ConfigRecord({"rounds": int(value)})
    return state


def read(state: RecordDict) -> float:
    return float(state["scaffold.c_i"].to_numpy_ndarrays()[0][0])  # type: ignore[union-attr]


def test_the_store_gives_the_state_from_before_the_round(tmp_path: Path) -> None:
    store = NodeStore(tmp_path, "20261126-run1", partition=4)
    assert len(store.load(before_round=1)) == 0
    for server_round in (1, 3, 4):
        store.save(state_with(server_round), server_round)
    assert read(store.load(before_round=5)) == 4
    # Round 4 re-run after a crash: the state its first attempt wrote is not used.
    assert read(store.load(before_round=4)) == 3
    assert store.versions() == [3, 4]  # only the newest two are kept


def test_the_store_is_keyed_by_experiment_and_partition(tmp_path: Path) -> None:
    NodeStore(tmp_path, "exp-a", 1).save(state_with(1), 1)
    assert len(NodeStore(tmp_path, "exp-b", 1).load(2)) == 0
    assert len(NodeStore(tmp_path, "exp-a", 2).load(2)) == 0
    assert read(NodeStore(tmp_path, "exp-a", 1).load(2)) == 1


def test_the_store_follows_the_message_and_the_node_config(tmp_path: Path) -> None:
    assert NodeStore.for_message({}, {"server-round": 1}, 0) is None
    store = NodeStore.for_message({"state-dir": str(tmp_path)}, {EXPERIMENT: "exp"}, 3)
    assert store is not None and store.folder == tmp_path / "exp" / "partition-3"
    with pytest.raises(ValueError, match="plain name"):
        NodeStore.for_message({"state-dir": str(tmp_path)}, {EXPERIMENT: "../x"}, 3)


def test_the_scripts_resume_option_checks_the_folder(tmp_path: Path) -> None:
    from fl_app.launch.runs import resume_from

    with pytest.raises(FileNotFoundError, match=r"no checkpoint\.npz"):
        resume_from({"seed": 1}, tmp_path)


def test_a_folder_alone_resumes_with_its_own_config(two_rounds: BaseStrategy) -> None:
    """``--resume <folder>``: the folder's config.json is the run config; only how
    long and where may be overridden, any other key that differs is refused by
    name, and the ServerApp takes the result as it is."""
    from fl_app.launch.runs import resume_from

    assert two_rounds.run_dir is not None
    run_dir = two_rounds.run_dir.resolve()
    config = resume_from({}, run_dir)
    expected = two_rounds.config.replace(
        resume=True, resume_dir=str(run_dir), output_dir=str(run_dir.parent)
    )
    assert RunConfig.from_flower(config) == expected
    assert config["strategy"] == "fedadam" and config["model"] == "mlp"

    longer = resume_from({"num-server-rounds": 20, "strategy": "fedadam"}, run_dir)
    assert longer["num-server-rounds"] == 20
    with pytest.raises(ValueError, match="strategy = 'fedavg' differs"):
        resume_from({"strategy": "fedavg"}, run_dir)

    context = Context(
        run_id=5, node_id=0, node_config={}, state=RecordDict(), run_config=longer
    )
    components = server_fn(context)
    assert components.strategy.round_offset == 2  # type: ignore[union-attr]
    assert components.config.num_rounds == 18


def test_every_run_folder_holds_the_run_config_that_resumes_it(
    two_rounds: BaseStrategy,
) -> None:
    """``resume.toml``, written by the ServerApp: what Flower reads from it with
    ``flwr run . --run-config <folder>/resume.toml`` is the folder's own config set
    to continue it, so plain ``flwr run`` resumes by folder too."""
    from flwr.common.config import parse_config_args

    from fl_app.launch.runs import resume_from

    assert two_rounds.run_dir is not None
    run_dir = two_rounds.run_dir.resolve()
    run_config = resume_from({}, run_dir)
    context = Context(
        run_id=5, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    server_fn(context)
    from_file = parse_config_args([str(run_dir / RESUME_FILE)])
    assert from_file == RunConfig.from_flower(run_config).to_flower()
    assert from_file["resume"] is True and from_file["resume-dir"] == str(run_dir)


@pytest.mark.parametrize(
    ("every", "plotted_after"), [(3600.0, [3]), (0.0, [0, 1, 2, 3])]
)
def test_the_plot_is_redrawn_when_due_and_at_the_end(
    mnist_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    every: float,
    plotted_after: list[int],
) -> None:
    """A drawing costs a steady round's time: not every round, but never missing."""
    from fl_app import results

    plotted: list[int] = []
    monkeypatch.setattr(results, "PLOT_EVERY_S", every)
    monkeypatch.setattr(
        results,
        "plot_history",
        lambda _d, records, _t: plotted.append(len(records) - 1),
    )
    strategy = make_run(mnist_dir, tmp_path / "run", num_server_rounds=3)
    strategy.evaluate(0, ndarrays_to_parameters(strategy.global_weights))
    clients = manager()
    for server_round in (1, 2, 3):
        play(strategy, clients, server_round)
    assert plotted == plotted_after
    assert (tmp_path / "run" / "history.csv").read_text().count("\n") == 5  # every row

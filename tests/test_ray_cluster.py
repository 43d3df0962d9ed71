"""The simulation on a Ray cluster of two nodes, joined as ``docs/ray-cluster.md`` says.

``LocalRayCluster`` starts the two nodes with ``ray start`` on this machine (a head
and a worker, one CPU each, private temp dir and ports); a SuperLink of our own, not
the session's (which starts a local Ray), gets the cluster's address; ``flwr run``
then runs the app with one Ray actor per node. What only such a run shows: both
nodes train clients (the history's ``clients_by_node``, against the node ids the
raylets were started with), and the model is the one a single process computes
from the same seed (``tests/inprocess.py``, which ``test_simulation.py`` holds equal
to a one-node ``flwr run``).

The cluster's start-up (8-15 s on 2 cores) and the run (~20 s) are the cost, so one
test checks it all, and the SuperLink and the in-process run start while the
cluster does. It runs on the deployment module's worker (``pytest -n 3 --dist
loadgroup``), whose rounds mostly wait on Flower's polls.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fl_app.launch.flower_cli import simulation_config
from fl_app.launch.ray_cluster import LocalRayCluster, node_counts
from fl_app.launch.simulation import SimulationSuperLink
from fl_app.results import MACHINE_FIELDS, read_history
from tests.inprocess import quick_config, run_in_process

NUM_SUPERNODES = 10
ROUNDS = 3


def model_columns(row: dict) -> dict:
    """What the seed decides: everything but where and how fast it ran."""
    return {key: value for key, value in row.items() if key not in MACHINE_FIELDS}


def in_process_history(config: dict[str, Any], output_dir: Path) -> list[dict]:
    """The same config run by ``tests/inprocess.py``, into ``output_dir``."""
    run_in_process({**config, "output-dir": str(output_dir)}, NUM_SUPERNODES)
    return read_history((output_dir / "latest").resolve())


@pytest.mark.parametrize(
    ("ray_address", "expected"),
    [(None, "local"), ("10.0.0.1:6379", "10.0.0.1:6379")],
)
def test_the_superlink_is_told_which_ray(
    tmp_path: Path, ray_address: str | None, expected: str
) -> None:
    """Never left to Ray: a ``ray.init()`` without an address would join whatever
    cluster the latest ``ray start`` on this machine recorded."""
    link = SimulationSuperLink(tmp_path, ray_address=ray_address, env={"X": "1"})
    assert link.extra_env == {"X": "1", "RAY_ADDRESS": expected}
    # Ray refuses init args that size the cluster when it joins one.
    assert not any(key.startswith("init-args") for key in simulation_config(10, 1))


@pytest.mark.integration
@pytest.mark.xdist_group("ray-cluster")  # beside the deployment suite's worker
def test_clients_train_on_both_nodes_and_the_model_is_a_single_process_one(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """20 clients, 10 a round, on 10 virtual SuperNodes served by two Ray nodes.
    The SuperLink and the in-process reference run start while the cluster does."""
    config = quick_config(mnist_dir, tmp_path / "out", ROUNDS, num_partitions=20)
    cluster = LocalRayCluster(2, num_cpus=1, log_dir=tmp_path / "ray")
    with (
        ThreadPoolExecutor(2) as pool,
        SimulationSuperLink(tmp_path / "logs", ray_address=cluster.address) as link,
    ):
        superlink_started = pool.submit(link.start)
        reference = pool.submit(in_process_history, config, tmp_path / "one")
        with cluster:
            superlink_started.result()
            outcome = link.run(
                config,
                num_supernodes=NUM_SUPERNODES,
                log_path=tmp_path / "logs" / "run.log",
                timeout=300,
            )
            node_ids = cluster.node_ids
    assert outcome.completed, (outcome, outcome.log_path.read_text()[-3000:])
    assert outcome.run_dir is not None
    history = read_history(outcome.run_dir)
    assert [row["round"] for row in history] == list(range(ROUNDS + 1))

    seen: set[str] = set()
    for row in history[1:]:
        counts = node_counts(row["clients_by_node"])
        assert list(counts) == sorted(counts), row["clients_by_node"]
        assert sum(counts.values()) == row["clients_succeeded"] == 10, row
        seen |= set(counts)
    assert seen == {node_id[:8] for node_id in node_ids}, (seen, node_ids)

    want = reference.result()
    assert [model_columns(row) for row in history] == [
        model_columns(row) for row in want
    ]

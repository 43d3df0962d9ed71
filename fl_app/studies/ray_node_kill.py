r"""What the simulation does when a Ray worker node dies mid-run.

    .venv/bin/python scripts/ray_node_kill.py            # about 2 min on 2 cores

Starts a Ray cluster of two nodes on this machine (``LocalRayCluster``: a head and a
worker, 1 CPU each, as ``ray start`` starts them on two hosts), runs the app on it
through ``flwr run`` (Fashion-MNIST, 40 clients, 10 a round, 8 rounds, 10 virtual
SuperNodes), SIGKILLs the worker node (its raylet and the actor on it, as a crashed
host would) as soon as round 2's row is in ``history.json``, and reports: did the
run finish, each round's clients succeeded and failed and the Ray nodes that trained
them (``clients_by_node``: was the dead node's actor replaced, did the pool shrink
to one actor), the wall time. The report goes to ``<out>/ray-node-kill.md`` and
``.json``; ``docs/ray-cluster.md`` has the measurement.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fl_app.files import write_json, write_text
from fl_app.launch.ray_cluster import LocalRayCluster, node_counts
from fl_app.launch.simulation import SimulationSuperLink
from fl_app.studies.cli import DEFAULT_DATA_DIRS, study_parser
from fl_app.studies.report import markdown_table

ROW_FIELDS = (
    "round",
    "clients_sampled",
    "clients_succeeded",
    "clients_failed",
    "clients_by_node",
    "round_seconds",
    "test_accuracy",
)


def parser() -> argparse.ArgumentParser:
    parser = study_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=8, help="(default: 8)")
    parser.add_argument("--clients", type=int, default=40, help="K (default: 40)")
    parser.add_argument("--per-round", type=int, default=10, help="(default: 10)")
    parser.add_argument(
        "--kill-after-round",
        type=int,
        default=2,
        help="kill the worker once this round's row is written (default: 2)",
    )
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIRS["fashion-mnist"],
        help="Fashion-MNIST IDX files (default: %(default)s)",
    )
    parser.add_argument(
        "--run-config",
        default="",
        help="more run config, Flower syntax (e.g. round-timeout=30)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/ray-node-kill"), help="(%(default)s)"
    )
    return parser


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run: workload W's model, data and local training (the 2NN,
    Fashion-MNIST, E = 1, B = 10), ``clients`` partitions dealt to 10 nodes."""
    from flwr.common.config import parse_config_args

    return {
        "num-server-rounds": args.rounds,
        "num-partitions": args.clients,
        "fraction-fit": args.per_round / args.clients,
        "dataset": "fashion-mnist",
        "data-dir": str(args.data_dir),
        "tracking.tensorboard": False,
        "output-dir": str(args.out.resolve() / "runs"),
        **(parse_config_args([args.run_config]) if args.run_config else {}),
    }


class KillAfterRound(threading.Thread):
    """SIGKILLs worker node 1 of ``cluster`` as soon as a ``history.json`` under
    ``runs_dir`` has ``server_round``'s row: the round after it is then in flight."""

    def __init__(
        self, cluster: LocalRayCluster, runs_dir: Path, server_round: int
    ) -> None:
        super().__init__(name="kill-worker", daemon=True)
        self.cluster = cluster
        self.runs_dir = runs_dir
        self.server_round = server_round
        self.killed_at: float | None = None  # time.monotonic() of the kill
        self._done = threading.Event()

    def run(self) -> None:
        from fl_app.results import read_history

        while not self._done.is_set():
            for path in self.runs_dir.glob("*/history.json"):
                try:
                    rows = read_history(path.parent)
                except (OSError, ValueError):
                    continue  # being replaced
                if any(row["round"] >= self.server_round for row in rows):
                    self.cluster.kill_worker(1)
                    self.killed_at = time.monotonic()
                    return
            self._done.wait(0.2)

    def stop(self) -> None:
        self._done.set()
        self.join()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Cluster up, the run with the kill, and what the history says."""
    from fl_app.results import read_history

    config = run_config(args)
    logs = args.out.resolve() / "logs"
    with LocalRayCluster(2, num_cpus=1, log_dir=logs) as cluster:
        with SimulationSuperLink(logs, ray_address=cluster.address) as link:
            link.start()  # not in the wall time
            killer = KillAfterRound(
                cluster, Path(config["output-dir"]), args.kill_after_round
            )
            killer.start()
            started = time.monotonic()
            try:
                outcome = link.run(
                    config, num_supernodes=10, log_path=logs / "run.log", timeout=1800
                )
            finally:
                killer.stop()
            wall = time.monotonic() - started
        status_after = cluster.status()
        node_ids = list(cluster.node_ids)
    rows = read_history(outcome.run_dir) if outcome.run_dir else []
    killed = killer.killed_at
    return {
        "status": outcome.status,
        "details": outcome.details,
        "completed": outcome.completed,
        "run_dir": str(outcome.run_dir),
        "wall_seconds": round(wall, 1),
        "killed_after_seconds": None if killed is None else round(killed - started, 1),
        "killed_node": node_ids[1] if killed is not None else None,
        "killed_after_round": args.kill_after_round,
        "node_ids": node_ids,
        "config": config,
        "rows": [{key: row.get(key) for key in ROW_FIELDS} for row in rows],
        "ray_status_after": status_after,
    }


def report(result: dict[str, Any]) -> str:
    """The findings as markdown: the outcome, then a row per round."""
    head, worker = (node_id[:8] for node_id in result["node_ids"])
    names = {head: "head", worker: "worker"}
    rows = [
        [
            row["round"],
            row["clients_sampled"],
            row["clients_succeeded"],
            row["clients_failed"],
            " ".join(
                f"{names.get(node, node)}:{count}"
                for node, count in node_counts(row["clients_by_node"] or "").items()
            ),
            f"{row['round_seconds']:.1f}",
            f"{row['test_accuracy']:.4f}",
        ]
        for row in result["rows"]
    ]
    if result["killed_after_seconds"] is None:
        kill = (
            "the worker was never killed (the run wrote no row of round "
            f"{result['killed_after_round']})"
        )
    else:
        kill = (
            f"the worker killed {result['killed_after_seconds']} s into the run, "
            f"once round {result['killed_after_round']}'s row was written"
        )
    return (
        f"# A Ray worker node killed mid-run\n\n"
        f"Nodes: head {head}, worker {worker}, 1 CPU each; {kill}.\n\n"
        f"Run: {result['status']} {result['details']}; wall "
        f"{result['wall_seconds']} s; folder {result['run_dir']}.\n\n"
        + markdown_table(
            ["round", "sampled", "succeeded", "failed", "by node", "s", "accuracy"],
            rows,
        )
        + "\n`ray status` after the run:\n\n```\n"
        + result["ray_status_after"].strip()
        + "\n```\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: the cluster and the SuperLink are stopped")
        return 130
    text = report(result)
    write_json(args.out / "ray-node-kill.json", result)
    write_text(args.out / "ray-node-kill.md", text)
    print(text)
    return 0 if result["completed"] else 1

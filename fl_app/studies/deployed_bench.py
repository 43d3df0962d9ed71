"""A deployed round with Flower's stock executor and with warm ClientApps
(``scripts/benchmark.py --deployed``).

Each measurement is the local TLS federation (``fl_app.launch.federation``: a
SuperLink with node authentication and 3 SuperNodes, a third of Fashion-MNIST's
training set each) running 3 rounds of the 2NN, timed from the SuperLink's start:
round 1, the steady rounds (the median of rounds 2..R), the whole command, and the
steady round over the slowest node's local training in it (the history's
``train_seconds_max``: what a round cannot beat). Stock and warm runs alternate,
``repeats`` times each, in one invocation (this machine's speed drifts), and every
run's history must be the same bit for bit (the machine's fields aside).
"""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fl_app.launch.certs import Certs, ensure
from fl_app.launch.federation import Federation
from fl_app.launch.warm_executor import TRACE_ENV
from fl_app.results import MACHINE_FIELDS, read_history
from fl_app.studies.reference_loop import steady

EXECUTORS = {"stock": False, "warm": True}


def run_deployed(
    rounds: int,
    data_dir: str,
    out: Path,
    *,
    warm: bool = True,
    trace: Path | None = None,
) -> dict[str, Any]:
    """One run on the local TLS federation with ``warm`` executors or Flower's
    (``trace``: the warm executors' task times go to that file)."""
    env = {} if trace is None else {TRACE_ENV: str(trace)}
    with tempfile.TemporaryDirectory(prefix="fl-bench-deploy-") as tmp:
        certs = Certs(Path(tmp) / "certs")
        ensure(certs.directory, num_supernodes=3)
        started = time.monotonic()
        with Federation(certs, out / "federation", warm=warm, env=env) as federation:
            federation.start(3, connect_timeout=120)
            online = time.monotonic() - started
            result = federation.run(
                {
                    "num-server-rounds": rounds,
                    "fraction-fit": 1.0,
                    "min-available-clients": 3,
                    "dataset": "fashion-mnist",
                    "data-dir": data_dir,
                    "output-dir": str(out / "runs-deployed"),
                    "tracking.tensorboard": False,
                }
            )
            whole = time.monotonic() - started
    if not result.completed or result.run_dir is None:
        raise RuntimeError(f"deployed run: {result.status} {result.details}")
    rows = read_history(result.run_dir)
    seconds = [r["round_seconds"] for r in rows[1:]]
    training = [r["train_seconds_max"] for r in rows[2:]]
    return {
        "executor": "warm" if warm else "stock",
        "nodes_online_s": online,
        "round_1_s": seconds[0],
        "steady_round_s": steady(seconds),
        "round_seconds": seconds,
        "slowest_training_s": statistics.median(training),
        "whole_s": whole,
        "final_accuracy": rows[-1]["test_accuracy"],
        "history": [
            {k: v for k, v in row.items() if k not in MACHINE_FIELDS} for row in rows
        ],
    }


def compare_executors(
    rounds: int, data_dir: str, out: Path, repeats: int
) -> dict[str, Any]:
    """Stock and warm, alternating, ``repeats`` runs each; their medians."""
    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        for name, warm in EXECUTORS.items():
            run = run_deployed(rounds, data_dir, out / f"{name}-{repeat}", warm=warm)
            runs.append(run)
            print(line(run), flush=True)
    medians = {
        name: {
            key: statistics.median(r[key] for r in runs if r["executor"] == name)
            for key in ("round_1_s", "steady_round_s", "whole_s", "slowest_training_s")
        }
        for name in EXECUTORS
    }
    histories = [r.pop("history") for r in runs]
    return {
        "runs": runs,
        "medians": medians,
        "same_history": all(h == histories[0] for h in histories),
    }


def line(run: dict[str, Any]) -> str:
    return (
        f"deployed ({run['executor']} executor), 3 SuperNodes over TLS: nodes "
        f"online {run['nodes_online_s']:.1f} s, round 1 {run['round_1_s']:.1f} s, "
        f"steady {run['steady_round_s']:.1f} s/round (rounds: "
        + ", ".join(f"{x:.1f}" for x in run["round_seconds"])
        + f"), slowest node's training {run['slowest_training_s']:.1f} s, whole "
        f"command {run['whole_s']:.1f} s, accuracy {100 * run['final_accuracy']:.2f}%"
    )


def table(result: dict[str, Any]) -> str:
    """The medians as the Markdown table the docs quote."""
    lines = [
        "| executor | round 1 | steady round | steady / slowest training "
        "| 3-round command | runs |",
        "|---|---|---|---|---|---|",
    ]
    for name in EXECUTORS:
        m = result["medians"][name]
        runs = [r for r in result["runs"] if r["executor"] == name]
        spread = ", ".join(f"{r['whole_s']:.0f}" for r in runs)
        lines.append(
            f"| {name} | {m['round_1_s']:.1f} s | {m['steady_round_s']:.1f} s "
            f"| {m['steady_round_s'] / m['slowest_training_s']:.1f}x "
            f"| {m['whole_s']:.1f} s ({spread}) | {len(runs)} |"
        )
    same = "the same" if result["same_history"] else "DIFFERENT"
    lines.append(f"\nEvery run's history: {same} (machine fields aside).")
    return "\n".join(lines)


def phases(trace: Path, rounds: int) -> dict[str, float]:
    """A warm run's steady rounds split by the executors' task times (medians over
    rounds 2..R, seconds): ``spread``, how far apart the three nodes met their
    message (the SuperNode's 3 s idle poll); per node, ``pull`` (the message over
    the node's Runtime API), ``worker`` (to the worker, the ClientApp with its
    training, back) and ``push`` (the reply to the node); ``gap``, from the round's
    last reply pushed to the next round's first message acquired (the node's reply
    wait, the upload to the SuperLink, the server's poll, aggregation and sending,
    and the first node's poll)."""
    tasks = [json.loads(line) for line in trace.read_text().splitlines()]
    trains = sorted(
        (t for t in tasks if t["type"] == "train"), key=lambda t: t["acquired"]
    )
    per_round = [trains[i : i + 3] for i in range(0, len(trains), 3)]
    steady_rounds = per_round[1:rounds]
    median = statistics.median
    return {
        "spread": median(
            max(t["acquired"] for t in r) - min(t["acquired"] for t in r)
            for r in steady_rounds
        ),
        "pull": median(t["pulled"] - t["acquired"] for r in steady_rounds for t in r),
        "worker": median(
            t["from_worker"] - t["to_worker"] for r in steady_rounds for t in r
        ),
        "push": median(
            t["pushed"] - t["from_worker"] for r in steady_rounds for t in r
        ),
        "gap": median(
            min(t["acquired"] for t in later) - max(t["pushed"] for t in earlier)
            for earlier, later in itertools.pairwise(per_round)
        ),
    }

r"""Time the app against a single-process loop doing the same SGD steps.

    .venv/bin/python scripts/benchmark.py                # workload W, 10 rounds
    .venv/bin/python scripts/benchmark.py --clients-per-round 10,50,100 \
        --num-clients 100,1000,10000                     # a scaling series
    .venv/bin/python scripts/benchmark.py --deployed     # + the local TLS federation
    .venv/bin/python scripts/benchmark.py --deployed --deployed-only   # stock vs warm

Workload W: Fashion-MNIST (``/usr/share/datasets/fashion-mnist``), the 2NN, IID,
E = 1, B = 10, seed 42; by default 100 virtual clients and 10 a round (C = 0.1).

(a) **the app**: ``flwr run`` in Flower's simulation, on a SuperLink this script
    starts first (so start-up below counts from ``flwr run``, not from the SuperLink);
(b) **the reference**: one process, one torch thread, the same clients sampled with
    the same seeds, the same local SGD (``fl_app.training.train``), the same weighted
    average of ``w_t + delta_k`` in partition order, the same central evaluation.

For both: seconds per steady round (the median of rounds 2..R) and their ratio, the
time from the command's start to the end of round 1, the whole run, the peak of the
summed PSS of every process involved (sampled every 0.25 s by psutil, not read off
RSS), bytes per round down and up (the app's serialized tensors; the reference moves
none), and the final accuracy (they must agree within 1 point). A table is printed
and the numbers go to ``<out>/benchmark.json``. Each measurement runs once: time the
two in one invocation and quote their ratio, since this machine's speed drifts.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

from fl_app.config import RunConfig
from fl_app.data import IDX_FILES, find_idx
from fl_app.files import write_json
from fl_app.launch.processes import sigterm_as_interrupt
from fl_app.launch.simulation import SimulationSuperLink
from fl_app.results import HISTORY_JSON, read_history
from fl_app.studies.deployed_bench import compare_executors, line, phases, run_deployed
from fl_app.studies.deployed_bench import table as deployed_table
from fl_app.studies.reference_loop import PssSampler, run_reference, sampling, steady

DATA_DIR = "/usr/share/datasets/fashion-mnist"


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/benchmark.py``: the exit code (0, 1 if a run did not complete, 2
    for a bad flag, 130 on Ctrl-C or SIGTERM, after every process started is
    stopped)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--num-clients",
        type=counts,
        default="100",
        help="virtual clients K, comma-separated",
    )
    parser.add_argument(
        "--max-supernodes",
        type=int,
        default=100,
        help="simulated SuperNodes serving the K clients (at least the clients "
        "sampled a round); 0 = one SuperNode per client",
    )
    parser.add_argument(
        "--clients-per-round", type=counts, default="10", help="comma-separated"
    )
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument(
        "--cpus-per-client",
        type=int,
        default=1,
        help="Ray CPUs per client: 1 = one actor per core, 2 = one actor here",
    )
    parser.add_argument(
        "--clients-per-message",
        type=int,
        default=0,
        help="the app's clients-per-message (0 = its default, packed; 1 = one "
        "message a client, as before packing)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="each app run starts with an empty cache (FL_APP_CACHE): no decoded "
        "dataset, no partitions, as on a fresh machine",
    )
    parser.add_argument(
        "--deployed",
        action="store_true",
        help="also time 3 rounds on the local TLS federation (3 SuperNodes), with "
        "Flower's stock executor and with warm ClientApps, alternating",
    )
    parser.add_argument(
        "--deployed-repeats",
        type=int,
        default=3,
        help="runs of each executor with --deployed (default 3: their medians)",
    )
    parser.add_argument(
        "--deployed-only",
        action="store_true",
        help="skip the simulation rows (with --deployed or --deployed-trace)",
    )
    parser.add_argument(
        "--deployed-trace",
        action="store_true",
        help="one warm run of 5 rounds whose steady rounds are split into phases by "
        "the executors' task times",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmark"))
    args = parser.parse_args(argv)
    # Refused before a SuperLink and Ray start, rather than failing after.
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (steady rounds are rounds 2..R)")
    if max(args.clients_per_round) > min(args.num_clients):
        parser.error(
            f"--clients-per-round {max(args.clients_per_round)} exceeds "
            f"--num-clients {min(args.num_clients)}"
        )
    for stem in (*IDX_FILES["train"], *IDX_FILES["test"]):
        try:
            find_idx(Path(args.data_dir), stem)
        except FileNotFoundError as error:
            parser.error(f"--data-dir: {error}")
    out = args.out.resolve()
    try:
        with sigterm_as_interrupt():
            measure(args, out)
    except KeyboardInterrupt:
        print("\ninterrupted: every process started is stopped", file=sys.stderr)
        return 130
    except RuntimeError as error:  # a run that did not complete
        print(f"benchmark: {error}; logs in {out / 'logs'}", file=sys.stderr)
        return 1
    return 0


def counts(text: str) -> list[int]:
    """``"10,100"`` -> [10, 100]: positive integers, or argparse names the flag."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every count must be >= 1")
    return values


def measure(plan: argparse.Namespace, out: Path) -> None:
    """Every (clients, per round) pair: the app, then the reference; the table."""
    rows = []
    for clients in [] if plan.deployed_only else plan.num_clients:
        for per_round in plan.clients_per_round:
            nodes = clients
            if plan.max_supernodes:
                nodes = min(clients, max(per_round, plan.max_supernodes))
            config = RunConfig(
                num_server_rounds=plan.rounds,
                clients_per_message=plan.clients_per_message,
                fraction_fit=per_round / clients,
                num_partitions=clients if nodes < clients else 0,
                min_available_clients=nodes,
                dataset="fashion-mnist",
                data_dir=plan.data_dir,
                output_dir=str(out / f"runs-{clients}-{per_round}"),
            )
            app = run_app(config, nodes, out, plan.cpus_per_client, cold=plan.cold)
            reference = run_reference(config, clients)
            row = {"clients": clients, "supernodes": nodes, "per_round": per_round}
            rows.append({**row, "app": app, "reference": reference})
            write_json(out / "benchmark.json", rows)
            print(table(rows), flush=True)
            peak = sorted(app["pss_mib_at_peak"].items(), key=lambda kv: -kv[1])
            print(
                "phases (s from flwr run):",
                ", ".join(f"{k} {v:.1f}" for k, v in app["phases_s"].items()),
                "| PSS MiB at the peak:",
                ", ".join(f"{k} {v:.0f}" for k, v in peak),
                flush=True,
            )
    if plan.deployed:
        deployed = compare_executors(3, plan.data_dir, out, plan.deployed_repeats)
        write_json(out / "deployed.json", deployed)
        print(deployed_table(deployed), flush=True)
    if plan.deployed_trace:
        trace = out / "executor-trace.jsonl"
        trace.unlink(missing_ok=True)
        run = run_deployed(5, plan.data_dir, out / "traced", trace=trace)
        run.pop("history")
        split = phases(trace, 5)
        write_json(out / "deployed-trace.json", {"run": run, "phases_s": split})
        print(line(run), flush=True)
        print(
            "a warm steady round, medians (s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in split.items()),
            flush=True,
        )


def table(rows: list[dict[str, Any]]) -> str:
    """The rows so far as the Markdown table the README quotes."""
    lines = [
        "| clients | SuperNodes | a round | steady s/round app / ref (ratio)"
        " | to round 1 app / ref | whole run app / ref | peak PSS MiB app / ref"
        " | MB down / up a round | accuracy app / ref |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        a, r = row["app"], row["reference"]
        lines.append(
            f"| {row['clients']} | {row['supernodes']} | {row['per_round']} "
            f"| {a['steady_round_s']:.2f} / {r['steady_round_s']:.2f} "
            f"({a['steady_round_s'] / r['steady_round_s']:.2f}) "
            f"| {a['to_round_1_s']:.1f} / {r['to_round_1_s']:.1f} s "
            f"| {a['whole_s']:.1f} / {r['whole_s']:.1f} s "
            f"| {a['peak_pss_mib']:.0f} / {r['peak_pss_mib']:.0f} "
            f"| {a['bytes_down_per_round'] / 1e6:.2f} / "
            f"{a['bytes_up_per_round'] / 1e6:.2f} "
            f"| {100 * a['final_accuracy']:.2f}% / {100 * r['final_accuracy']:.2f}% |"
        )
    return "\n".join(lines)


def run_app(
    config: RunConfig,
    num_supernodes: int,
    out: Path,
    cpus_per_client: int = 1,
    *,
    cold: bool = False,
) -> dict[str, Any]:
    """The app through ``flwr run`` on a SuperLink started beforehand (its start-up
    is not counted); "whole" ends with the last line the run streams."""
    keys = ("num-server-rounds", "fraction-fit", "min-available-clients", "dataset")
    keys += ("data-dir", "seed", "output-dir", "num-partitions", "clients-per-message")
    run_config = {key: config.to_flower()[key] for key in keys}
    log_path = out / "logs" / f"run-{num_supernodes}-{time.time_ns()}.log"
    phases: dict[str, float] = {}
    memory = PssSampler(include_self=False)
    cache = tempfile.TemporaryDirectory(prefix="fl-bench-cache-") if cold else None
    env = {"FL_APP_CACHE": cache.name} if cache is not None else {}
    with SimulationSuperLink(out / "logs", env=env) as superlink:
        superlink.start()
        started = time.time()
        watch = partial(_watch, log_path, Path(config.output_dir), phases, started)
        with sampling(memory.sample, 0.25), sampling(watch, 0.05):
            outcome = superlink.run(
                run_config,
                num_supernodes=num_supernodes,
                cpus_per_client=cpus_per_client,
                log_path=log_path,
            )
    if cache is not None:
        cache.cleanup()
    if not outcome.completed or outcome.run_dir is None:
        raise RuntimeError(f"run {outcome.run_id}: {outcome.status} {outcome.details}")
    rows = read_history(outcome.run_dir)
    return {
        # The round's period, from row to row: a round's own row may be written
        # while the next one runs (strategies.base: overlaps_recording).
        "steady_round_s": steady(
            [b["elapsed_seconds"] - a["elapsed_seconds"] for a, b in pairwise(rows)]
        ),
        "to_round_1_s": phases.pop(ROUND_1, math.nan),  # before "phases_s" below
        "whole_s": log_path.stat().st_mtime - started,
        "peak_pss_mib": memory.peak / 2**20,
        "pss_mib_at_peak": {k: v / 2**20 for k, v in memory.at_peak.items()},
        "phases_s": phases,
        "bytes_down_per_round": statistics.mean(r["bytes_sent"] for r in rows[1:]),
        "bytes_up_per_round": statistics.mean(r["bytes_received"] for r in rows[1:]),
        "final_accuracy": rows[-1]["test_accuracy"],
    }


#: Phases of a run, as the ``flwr run`` log shows them (the first line with each).
PHASES = {
    "run accepted": "Starting logstream",
    "ServerApp built": "results of this run go to",
    "initial evaluation done": "round 0/",
    "round 1 sent": "configure_fit: strategy sampled",
    "round 1 replies in": "aggregate_fit: received",
    "round 1 done": "round 1/",
}
ROUND_1 = "round 1 in history.json"


def _watch(
    log: Path, output_dir: Path, found: dict[str, float], started: float
) -> None:
    """Note when (s from ``started``) each of ``PHASES`` first appears in the
    streamed log, and round 1's row reaches history.json (``ROUND_1``: the run
    writes it then); sampled every 50 ms, idle once all are seen."""
    if len(found) > len(PHASES):
        return
    now = time.time() - started
    text = log.read_text(errors="replace") if log.is_file() else ""
    for phase, marker in PHASES.items():
        if phase not in found and marker in text:
            found[phase] = now
    histories = [
        path
        for path in output_dir.glob(f"*/{HISTORY_JSON}")
        if path.stat().st_mtime >= started  # not an earlier run's, in a reused --out
    ]
    if ROUND_1 not in found and any(_rows(path) >= 2 for path in histories):
        found[ROUND_1] = now


def _rows(history: Path) -> int:
    """Rows in a history.json being written: 0 while it is unreadable."""
    try:
        return len(json.loads(history.read_text()))
    except (OSError, ValueError):
        return 0

r"""Time the app against a single-process loop doing the same SGD steps.

    .venv/bin/python scripts/benchmark.py                # workload W, 10 rounds
    .venv/bin/python scripts/benchmark.py --clients-per-round 10,50,100 \
        --num-clients 100,1000,10000                     # a scaling series
    .venv/bin/python scripts/benchmark.py --deployed     # + the local TLS federation

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
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fl_app.config import RunConfig
from fl_app.data import IDX_FILES, client_data, find_idx, load_split
from fl_app.files import write_json
from fl_app.launch.runner import (
    FlowerHome,
    flwr_run,
    free_port,
    run_status,
    sigterm_as_interrupt,
    simulation_config,
    start_simulation_superlink,
    uninterruptible,
)
from fl_app.model import build_model, get_weights, set_weights
from fl_app.results import HISTORY_JSON, read_history
from fl_app.training import evaluate, seeded_generator, train

APP_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = "/usr/share/datasets/fashion-mnist"


class PssSampler:
    """Peak of the summed PSS of this process's descendants (and of itself when
    ``include_self``): what a run costs in memory, shared pages counted once.

    The SuperLink, the ``flwr`` CLI, the simulation process, Ray's daemons and its
    actors all descend from this script; the script itself is not part of the app.
    """

    def __init__(self, include_self: bool, interval: float = 0.25) -> None:
        self.include_self = include_self
        self.interval = interval
        self.peak = 0
        self.at_peak: dict[str, int] = {}  # PSS by process name at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            by_name: dict[str, int] = {}
            me = psutil.Process()
            for process in [me] * self.include_self + me.children(recursive=True):
                try:
                    name = _process_name(process)
                    pss = process.memory_full_info().pss
                except psutil.Error:
                    continue
                by_name[name] = by_name.get(name, 0) + pss
            total = sum(by_name.values())
            if total > self.peak:
                self.peak, self.at_peak = total, by_name


def _process_name(process: psutil.Process) -> str:
    """A short label: the Flower or Ray program a process runs, else its name."""
    for part in process.cmdline()[:3]:
        base = Path(part).name
        if base.startswith(("flower-", "flwr-", "ray::", "raylet", "gcs_server")):
            return base.split(" ")[0]
    return process.name()


def steady(seconds: list[float]) -> float:
    """The median round time from round 2 on (round 1 also pays for start-up)."""
    return statistics.median(seconds[1:]) if len(seconds) > 1 else math.nan


def run_app(
    config: RunConfig, num_supernodes: int, out: Path, cpus_per_client: int = 1
) -> dict[str, Any]:
    """The app through ``flwr run`` on a SuperLink started beforehand."""
    keys = ("num-server-rounds", "fraction-fit", "min-available-clients", "dataset")
    keys += ("data-dir", "seed", "output-dir", "num-partitions")
    run_config = {key: config.to_flower()[key] for key in keys}
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as tmp:
        home = FlowerHome(Path(tmp))
        port = free_port()
        home.add_connection("bench", f"127.0.0.1:{port}")
        superlink = start_simulation_superlink(home, port, out / "logs")
        try:
            with PssSampler(include_self=False) as memory:
                round_1_done: list[float] = []
                started = time.monotonic()
                watcher = threading.Thread(
                    target=_watch_round_1,
                    args=(Path(config.output_dir), started, round_1_done),
                    daemon=True,
                )
                watcher.start()
                log_path = out / "logs" / f"run-{num_supernodes}-{time.time_ns()}.log"
                phases: dict[str, float] = {}
                threading.Thread(
                    target=_watch_phases,
                    args=(log_path, started, phases),
                    daemon=True,
                ).start()
                run_id = flwr_run(
                    APP_DIR,
                    "bench",
                    home,
                    run_config,
                    log_path=log_path,
                    federation_config=simulation_config(
                        num_supernodes, cpus_per_client
                    ),
                    timeout=3600,
                )
                whole = time.monotonic() - started
            status = run_status("bench", home, run_id)
        finally:
            with uninterruptible():
                superlink.stop()
    if status.get("status") != "finished:completed":
        raise RuntimeError(f"run {run_id}: {status}")
    (run_dir,) = Path(config.output_dir).glob(f"*-run{run_id}")
    rows = read_history(run_dir)
    return {
        "steady_round_s": steady([r["round_seconds"] for r in rows[1:]]),
        "to_round_1_s": round_1_done[0] if round_1_done else math.nan,
        "whole_s": whole,
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


def _watch_phases(log: Path, started: float, found: dict[str, float]) -> None:
    """When each of ``PHASES`` first appears in the streamed log (50 ms accuracy)."""
    while len(found) < len(PHASES) and time.monotonic() - started < 3600:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            text = ""
        now = time.monotonic() - started
        for phase, marker in PHASES.items():
            if phase not in found and marker in text:
                found[phase] = now
        time.sleep(0.05)


def _watch_round_1(output_dir: Path, started: float, found: list[float]) -> None:
    """The moment round 1's row reaches history.json (the run writes it then)."""
    while time.monotonic() - started < 3600:
        for path in output_dir.glob(f"*/{HISTORY_JSON}"):
            try:
                if len(json.loads(path.read_text())) >= 2:
                    found.append(time.monotonic() - started)
                    return
            except (OSError, ValueError):
                pass
        time.sleep(0.05)


def run_reference(config: RunConfig, num_clients: int) -> dict[str, Any]:
    """FedAvg in one process, one thread: the app's sampling, training, averaging."""
    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    with PssSampler(include_self=True) as memory:
        test = load_split(config.dataset, config.data_dir, "test")
        model = build_model(config.model, seed=config.seed)
        weights = get_weights(model)
        per_client = max(config.min_fit_clients, int(num_clients * config.fraction_fit))
        seconds, round_1_done = [], math.nan
        for server_round in range(1, config.num_server_rounds + 1):
            round_started = time.monotonic()
            rng = np.random.default_rng([config.seed, server_round, 0])
            chosen = np.sort(rng.choice(num_clients, size=per_client, replace=False))
            total, summed = 0, [np.zeros_like(w, dtype=np.float32) for w in weights]
            for pid in chosen.tolist():
                data, _ = client_data(
                    config.dataset,
                    config.data_dir,
                    config.partitioner,
                    pid,
                    num_clients,
                    alpha=config.dirichlet_alpha,
                    val_fraction=config.val_fraction,
                    seed=config.seed,
                )
                set_weights(model, weights)
                train(
                    model,
                    data,
                    epochs=config.local_epochs,
                    batch_size=config.batch_size,
                    lr=config.learning_rate,
                    generator=seeded_generator(config.seed, server_round, pid),
                )
                for s, new, old in zip(
                    summed, get_weights(model), weights, strict=True
                ):
                    s += len(data) * (old + (new - old))
                total += len(data)
            weights = [(s / total).astype(np.float32) for s in summed]
            set_weights(model, weights)
            evaluate(model, test)
            seconds.append(time.monotonic() - round_started)
            if server_round == 1:
                round_1_done = time.monotonic() - started
        accuracy = evaluate(model, test)[1]
    return {
        "steady_round_s": steady(seconds),
        "to_round_1_s": round_1_done,
        "whole_s": time.monotonic() - started,
        "peak_pss_mib": memory.peak / 2**20,
        "bytes_down_per_round": 0,
        "bytes_up_per_round": 0,
        "final_accuracy": accuracy,
    }


def run_deployed(rounds: int, data_dir: str, out: Path) -> dict[str, Any]:
    """The local TLS federation (SuperLink + 3 SuperNodes, node authentication, a
    third of the training set each), timed from the SuperLink's start."""
    import subprocess

    from fl_app.launch.federation import Certs, Federation

    with tempfile.TemporaryDirectory(prefix="fl-bench-deploy-") as tmp:
        certs_dir = Path(tmp) / "certs"
        subprocess.run(
            [
                sys.executable,
                str(APP_DIR / "scripts" / "make_certs.py"),
                "--out-dir",
                str(certs_dir),
                "--num-supernodes",
                "3",
            ],
            check=True,
            capture_output=True,
        )
        federation = Federation(Certs(certs_dir), out / "federation")
        started = time.monotonic()
        try:
            federation.start_superlink()
            federation.start_supernodes(3)
            federation.wait_for_online(3, timeout=120)
            online = time.monotonic() - started
            output_dir = out / "runs-deployed"
            result = federation.run(
                {
                    "num-server-rounds": rounds,
                    "fraction-fit": 1.0,
                    "min-available-clients": 3,
                    "dataset": "fashion-mnist",
                    "data-dir": data_dir,
                    "output-dir": str(output_dir),
                }
            )
            whole = time.monotonic() - started
        finally:
            with uninterruptible():
                federation.stop()
    if not result.completed:
        raise RuntimeError(f"deployed run: {result.status} {result.details}")
    rows = read_history((output_dir / "latest").resolve())
    seconds = [r["round_seconds"] for r in rows[1:]]
    return {
        "nodes_online_s": online,
        "round_1_s": seconds[0],
        "steady_round_s": steady(seconds),
        "round_seconds": seconds,
        "whole_s": whole,
        "final_accuracy": rows[-1]["test_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--num-clients",
        type=_counts,
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
        "--clients-per-round", type=_counts, default="10", help="comma-separated"
    )
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument(
        "--cpus-per-client",
        type=int,
        default=1,
        help="Ray CPUs per client: 1 = one actor per core, 2 = one actor here",
    )
    parser.add_argument(
        "--deployed",
        action="store_true",
        help="also time 3 rounds on the local TLS federation (3 SuperNodes)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmark"))
    args = parser.parse_args(argv)
    _check(parser, args)
    out = args.out.resolve()
    try:
        with sigterm_as_interrupt():
            _measure(args, out)
    except KeyboardInterrupt:
        print("\ninterrupted: every process started is stopped", file=sys.stderr)
        return 130
    except RuntimeError as error:  # a run that did not complete
        print(f"benchmark: {error}; logs in {out / 'logs'}", file=sys.stderr)
        return 1
    return 0


def _counts(text: str) -> list[int]:
    """``"10,100"`` -> [10, 100]: positive integers, or argparse names the flag."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every count must be >= 1")
    return counts


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what would fail only after a SuperLink and Ray had started."""
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


def _measure(args: argparse.Namespace, out: Path) -> None:
    """Every (clients, per round) pair: the app, then the reference; the table."""
    rows = []
    for clients in args.num_clients:
        for per_round in args.clients_per_round:
            nodes = clients
            if args.max_supernodes:
                nodes = min(clients, max(per_round, args.max_supernodes))
            config = RunConfig(
                num_server_rounds=args.rounds,
                fraction_fit=per_round / clients,
                num_partitions=clients if nodes < clients else 0,
                min_available_clients=nodes,
                dataset="fashion-mnist",
                data_dir=args.data_dir,
                output_dir=str(out / f"runs-{clients}-{per_round}"),
            )
            app = run_app(config, nodes, out, args.cpus_per_client)
            reference = run_reference(config, clients)
            rows.append(
                {
                    "clients": clients,
                    "supernodes": nodes,
                    "per_round": per_round,
                    "app": app,
                    "reference": reference,
                }
            )
            write_json(out / "benchmark.json", rows)
            print(_table(rows), flush=True)
            print(
                "phases (s from flwr run):",
                ", ".join(f"{k} {v:.1f}" for k, v in app["phases_s"].items()),
                "| PSS MiB at the peak:",
                ", ".join(
                    f"{k} {v:.0f}"
                    for k, v in sorted(
                        app["pss_mib_at_peak"].items(), key=lambda kv: -kv[1]
                    )
                ),
                flush=True,
            )
    if args.deployed:
        deployed = run_deployed(3, args.data_dir, out)
        write_json(out / "deployed.json", deployed)
        print(
            "deployed, 3 SuperNodes over TLS: nodes online "
            f"{deployed['nodes_online_s']:.1f} s, round 1 "
            f"{deployed['round_1_s']:.1f} s, steady "
            f"{deployed['steady_round_s']:.1f} s/round (rounds: "
            + ", ".join(f"{x:.1f}" for x in deployed["round_seconds"])
            + f"), whole command {deployed['whole_s']:.1f} s, accuracy "
            f"{100 * deployed['final_accuracy']:.2f}%",
            flush=True,
        )


def _table(rows: list[dict[str, Any]]) -> str:
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


if __name__ == "__main__":
    sys.exit(main())

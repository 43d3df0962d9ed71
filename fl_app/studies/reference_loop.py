"""The reference the benchmark times the app against: FedAvg in one process.

One process, one torch thread, the same clients sampled with the same seeds, the
same local SGD (``fl_app.training.train``), the same weighted average of
``w_t + delta_k`` in partition order, the same central evaluation: what the app's
round would cost without Flower, Ray and the wire. Also here: how memory is measured
(the summed PSS of a process family) and the loop run in a fresh interpreter, which
``scripts/kernel_reproducibility.py`` needs because torch reads its kernel settings
once, when it loads.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fl_app.config import RunConfig
from fl_app.data import client_data, load_split
from fl_app.model import build_model, get_weights, set_weights
from fl_app.training import evaluate, seeded_generator, train
from strategies.fedavg import weighted_average


def steady(seconds: list[float]) -> float:
    """The median round time from round 2 on (round 1 also pays for start-up)."""
    return statistics.median(seconds[1:]) if len(seconds) > 1 else math.nan


def run_reference(
    config: RunConfig,
    num_clients: int,
    accuracies: list[float] | None = None,
    final_weights: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """FedAvg in one process, one thread: the app's sampling, training, averaging.
    ``accuracies`` (if given) receives the test accuracy after each round,
    ``final_weights`` the last global model."""
    import torch

    torch.set_num_threads(1)
    accuracies = [] if accuracies is None else accuracies
    started = time.monotonic()
    round_ends = [started]
    memory = PssSampler(include_self=True)
    with sampling(memory.sample, 0.25):
        test = load_split(config.dataset, config.data_dir, "test")
        model = build_model(config.model, seed=config.seed)
        weights = get_weights(model)
        per_client = max(config.min_fit_clients, int(num_clients * config.fraction_fit))
        for server_round in range(1, config.num_server_rounds + 1):
            rng = np.random.default_rng([config.seed, server_round, 0])
            chosen = np.sort(rng.choice(num_clients, size=per_client, replace=False))
            trained: list[tuple[list[np.ndarray], int]] = []
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
                new = get_weights(model)
                # w_t + delta_k, as the server rebuilds it from the update it got.
                trained.append(
                    (
                        [o + (n - o) for n, o in zip(new, weights, strict=True)],
                        len(data),
                    )
                )
            weights = weighted_average(trained, [n for _, n in trained])
            set_weights(model, weights)
            accuracies.append(evaluate(model, test)[1])
            round_ends.append(time.monotonic())
        accuracy = evaluate(model, test)[1]
    if final_weights is not None:
        final_weights[:] = weights
    return {
        "steady_round_s": steady(np.diff(round_ends).tolist()),
        "to_round_1_s": round_ends[1] - started,
        "whole_s": time.monotonic() - started,
        "peak_pss_mib": memory.peak / 2**20,
        "bytes_down_per_round": 0,
        "bytes_up_per_round": 0,
        "final_accuracy": accuracy,
    }


def reference_in_fresh_process(
    env: Mapping[str, str], rounds: int, data_dir: str
) -> dict[str, Any]:
    """Workload W's reference loop (100 clients) in a new Python with ``env`` added,
    since torch reads kernel settings (``MKL_CBWR``, ...) once, when it loads: the
    loop's seconds and the test accuracy after each round."""
    code = "from fl_app.studies.reference_loop import report_reference as report\n"
    code += f"report({rounds}, {data_dir!r})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def report_reference(rounds: int, data_dir: str) -> None:
    """The fresh process's side of ``reference_in_fresh_process``: a JSON line."""
    config = RunConfig(
        num_server_rounds=rounds,
        dataset="fashion-mnist",
        data_dir=data_dir,
        min_available_clients=100,
    )
    accuracies: list[float] = []
    seconds = run_reference(config, 100, accuracies)["whole_s"]
    print(json.dumps({"seconds": seconds, "accuracy": accuracies}))


@contextmanager
def sampling(sample: Callable[[], object], interval: float) -> Iterator[None]:
    """``sample()`` every ``interval`` s, in a thread of its own, meanwhile."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            sample()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class PssSampler:
    """Peak of the summed PSS of this process's descendants (and of itself when
    ``include_self``): what a run costs in memory, shared pages counted once.

    RSS counts a page shared by several processes (the torch and Flower libraries
    every Ray actor maps) once per process; PSS divides it among them, so the sum
    over a run's processes is what the run costs. Sampled (``sampling``), because
    what matters is the peak and the processes come and go (a ClientApp lives one
    message). The SuperLink, the ``flwr`` CLI, the simulation process, Ray's
    daemons and its actors all descend from the process that started them, which
    is not part of the app (unless it is the app: a one-process run counts itself).

    Measuring must not slow what it measures: the kernel walks every page table of
    a process to answer its PSS, and a torch process maps gigabytes, so summing it
    for twenty processes four times a second took a quarter of a core (of two).
    Each sample reads the cheap summed RSS and walks the page tables only when
    that RSS is a new high (by ``NEW_HIGH``: memory grew, so the PSS may have), or
    ``FULL_EVERY_S`` after the last walk.
    """

    NEW_HIGH = 1.01
    FULL_EVERY_S = 2.0

    def __init__(self, include_self: bool) -> None:
        self.include_self = include_self
        self.peak = 0
        self.at_peak: dict[str, int] = {}  # PSS by process name at the peak
        self._names: dict[tuple[int, float], str] = {}  # (pid, start) -> label
        self._rss_high = 0  # the summed RSS at the highest walk so far
        self._walked = -math.inf

    def sample(self) -> None:
        me = psutil.Process()
        processes = [me] * self.include_self + me.children(recursive=True)
        rss = 0
        for process in processes:
            try:
                rss += process.memory_info().rss
            except psutil.Error:
                continue
        now = time.monotonic()
        new_high = rss > self.NEW_HIGH * self._rss_high
        if not new_high and now - self._walked < self.FULL_EVERY_S:
            return
        self._walked, self._rss_high = now, max(self._rss_high, rss)
        by_name: dict[str, int] = {}
        for process in processes:
            try:
                name = self._name(process)
                pss = process.memory_full_info().pss
            except psutil.Error:
                continue
            by_name[name] = by_name.get(name, 0) + pss
        total = sum(by_name.values())
        if total > self.peak:
            self.peak, self.at_peak = total, by_name

    def _name(self, process: psutil.Process) -> str:
        key = (process.pid, process.create_time())
        if key not in self._names:
            self._names[key] = _process_name(process)
        return self._names[key]


def _process_name(process: psutil.Process) -> str:
    """A short label: the Flower or Ray program a process runs, else its name."""
    for part in process.cmdline()[:3]:
        base = Path(part).name
        if base.startswith(("flower-", "flwr-", "ray::", "raylet", "gcs_server")):
            return base.split(" ")[0]
    return process.name()

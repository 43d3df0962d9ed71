r"""Does the history depend on the CPU's kernels, and does ``reproducible`` fix it?

Two parts, both on this one machine (``scripts/kernel_reproducibility.py``):

* **The loop** (``--loop``, about 2 min): workload W's one-process FedAvg loop
  (``fl_app.studies.reference_loop``: the app's sampling, ``fl_app.training``, the
  same weighted average; 10 rounds) in a fresh process under each kernel setting of
  ``LOOP_SETTINGS``: what torch picks; each of the three variables pinned alone;
  all three (``fl_app.kernels.PINNED_KERNELS``); and the libraries told to use at
  most AVX2, as another CPU would. Which variables this model needs, and what
  each costs (loop seconds, ratio to ``default`` measured in the same invocation).
* **The app** (``--app``, about 11 min): the default job (10 rounds, 100 clients,
  C=0.1, Fashion-MNIST) through ``flwr run``: in simulation unpinned, as this CPU
  and "as AVX2"; with
  ``--reproducible`` (every process started pinned); with only the run-config key
  ``reproducible = true`` on a SuperLink started "as AVX2" (the app must override
  what it inherited); and in the local TLS federation (10 SuperNodes, as many as
  clients a round; the server deals the same 100 partitions among them,
  ``partition-source = "server"``), pinned. The pinned ones must agree to the last
  digit.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fl_app.kernels import PINNED_KERNELS, pinned_env
from fl_app.launch.certs import Certs, ensure
from fl_app.launch.federation import Federation
from fl_app.launch.runs import RunOutcome
from fl_app.launch.simulation import SimulationSuperLink
from fl_app.results import read_history
from fl_app.studies.reference_loop import reference_in_fresh_process

#: Every library told to use at most AVX2: another CPU, as far as this one can tell.
AS_AVX2 = {
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}
LOOP_SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    **{f"{name} only": {name: value} for name, value in PINNED_KERNELS.items()},
    "pinned (all three)": dict(PINNED_KERNELS),
    "as AVX2": AS_AVX2,
}
DEFAULT_JOB = {"num-server-rounds": 10, "dataset": "fashion-mnist"}
FEDERATION_NODES = 10  # the clients a round of the default job: C = 0.1 of 100


def compare_loops(rounds: int, data_dir: str, say: Callable[[str], None]) -> str:
    """The loop under every ``LOOP_SETTINGS`` entry: a Markdown table."""
    results = {}
    for name, env in LOOP_SETTINGS.items():
        results[name] = reference_in_fresh_process(env, rounds, data_dir)
        say(f"{name}: {results[name]['seconds']:.1f} s")
    return _table(
        {name: (r["accuracy"], r["seconds"]) for name, r in results.items()},
        "loop seconds",
    )


def compare_app(data_dir: str, out: Path, say: Callable[[str], None]) -> str:
    """The default job five ways (module docstring): a Markdown table."""
    job = {**DEFAULT_JOB, "data-dir": data_dir}
    runs: dict[str, Callable[[], tuple[list[float], float]]] = {
        "simulation, unpinned": lambda: _simulate(job, {}, out / "unpinned"),
        "simulation, unpinned, SuperLink as AVX2": lambda: _simulate(
            job, AS_AVX2, out / "unpinned-avx2"
        ),
        "simulation, --reproducible": lambda: _simulate(
            {**job, "reproducible": True}, pinned_env(), out / "pinned"
        ),
        "simulation, reproducible = true, SuperLink as AVX2": lambda: _simulate(
            {**job, "reproducible": True}, AS_AVX2, out / "key-only"
        ),
        "local TLS federation (10 nodes), --reproducible": lambda: _federate(
            {**job, "reproducible": True}, out / "federation"
        ),
    }
    results = {}
    for name, run in runs.items():
        results[name] = run()
        say(f"{name}: {results[name][1]:.0f} s")
    return _table(results, "whole run seconds")


def _simulate(
    run_config: Mapping[str, Any], env: Mapping[str, str], out: Path
) -> tuple[list[float], float]:
    started = time.monotonic()
    with SimulationSuperLink(out / "logs", env=env) as superlink:
        outcome = superlink.run(
            {**run_config, "output-dir": str(out)},
            num_supernodes=100,
            log_path=out / "logs" / "run.log",
        )
    return _accuracies(outcome), time.monotonic() - started


def _federate(run_config: Mapping[str, Any], out: Path) -> tuple[list[float], float]:
    """SuperNodes over TLS, one per client a round; the server deals the 100
    partitions of the default job among them, so the clients and their data are the
    simulation's."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fl-kernels-") as tmp:
        certs = Certs(Path(tmp) / "certs")
        ensure(certs.directory, num_supernodes=FEDERATION_NODES)
        with Federation(certs, out, env=pinned_env()) as federation:
            federation.start(FEDERATION_NODES, connect_timeout=300)
            outcome = federation.run(
                {
                    **run_config,
                    "partition-source": "server",
                    "num-partitions": 100,
                    "output-dir": str(out),
                },
                timeout=3600,
            )
    return _accuracies(outcome), time.monotonic() - started


def _accuracies(outcome: RunOutcome) -> list[float]:
    if not outcome.completed or outcome.run_dir is None:
        raise RuntimeError(f"run {outcome.run_id}: {outcome.status} {outcome.details}")
    return [row["test_accuracy"] for row in read_history(outcome.run_dir)[1:]]


def _table(results: Mapping[str, tuple[list[float], float]], seconds: str) -> str:
    """Accuracy after every round, the first round that differs from the first
    row, and the seconds (ratio to the first row's)."""
    (reference, reference_s), *_ = results.values()
    lines = [
        f"| kernels | test accuracy after round 1 .. R (%) | first round differing "
        f"from the first row | {seconds} (ratio) |",
        "|---|---|---|---|",
    ]
    for name, (accuracy, secs) in results.items():
        pairs = zip(accuracy, reference, strict=True)
        differs = next((i + 1 for i, (x, y) in enumerate(pairs) if x != y), "none")
        shown = " ".join(f"{100 * a:.2f}" for a in accuracy)
        lines.append(
            f"| {name} | {shown} | {differs} | {secs:.1f} ({secs / reference_s:.2f}) |"
        )
    return "\n".join(lines)

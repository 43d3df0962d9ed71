r"""Does the history depend on the CPU's instruction set, and what does pinning cost?

    .venv/bin/python scripts/kernel_reproducibility.py        # about 2 min

Runs workload W's one-process FedAvg loop (``scripts/benchmark.py``'s reference:
the app's sampling, ``fl_app.training``, the same weighted average; 10 rounds) in a
fresh process under several kernel settings, on this one machine:

* ``default``: what torch picks for this CPU;
* ``as-avx2``: MKL, oneDNN and ATen told to use at most AVX2, as on an older or
  AMD CPU (``MKL_CBWR=AVX2``, ``ONEDNN_MAX_CPU_ISA=AVX2``,
  ``ATEN_CPU_CAPABILITY=avx2``): a stand-in for "another machine";
* ``pinned``: the code paths fixed whatever the CPU (``MKL_CBWR=COMPATIBLE``,
  ``ONEDNN_MAX_CPU_ISA=SSE41``, ``ATEN_CPU_CAPABILITY=default``);
* ``pinned`` again, to show it repeats.

It prints, for each, the test accuracy after every round, the first round that
differs from ``default``, and the seconds the loop took (ratio to ``default``,
measured in this one invocation). The README quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "default": {},
    "as-avx2": {
        "MKL_CBWR": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    },
    "pinned": {
        "MKL_CBWR": "COMPATIBLE",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "ATEN_CPU_CAPABILITY": "default",
    },
}
REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r}); sys.path.insert(0, {scripts!r})
import benchmark
from fl_app.config import RunConfig
config = RunConfig(num_server_rounds={rounds}, dataset="fashion-mnist",
                   data_dir={data!r}, min_available_clients=100)
accuracies = []
orig = benchmark.evaluate
def spy(model, data):
    loss, acc = orig(model, data)
    accuracies.append(acc)
    return loss, acc
benchmark.evaluate = spy
started = time.monotonic()
benchmark.run_reference(config, 100)
print(json.dumps({{"seconds": time.monotonic() - started,
                   "accuracy": accuracies[:-1]}}))
"""


def run(env_changes: dict[str, str], rounds: int, data_dir: str) -> dict:
    code = CHILD.format(
        repo=str(REPO), scripts=str(REPO / "scripts"), rounds=rounds, data=data_dir
    )
    env = {**os.environ, **env_changes}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_difference(a: list[float], b: list[float]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return index + 1  # rounds count from 1
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args(argv)
    plan = ["default", "as-avx2", "pinned", "pinned"]
    results = []
    started = time.monotonic()
    for name in plan:
        outcome = run(SETTINGS[name], args.rounds, args.data_dir)
        results.append((name, outcome))
        print(f"{name}: {outcome['seconds']:.1f} s", flush=True)
    reference = results[0][1]
    print(
        "\n| kernels | accuracy after round 1 .. R (%) | first round differing "
        "from default | loop seconds (ratio) |"
    )
    print("|---|---|---|---|")
    for name, outcome in results:
        accuracy = " ".join(f"{100 * a:.2f}" for a in outcome["accuracy"])
        differs = first_difference(outcome["accuracy"], reference["accuracy"])
        ratio = outcome["seconds"] / reference["seconds"]
        print(
            f"| {name} | {accuracy} | {differs or 'none'} "
            f"| {outcome['seconds']:.1f} ({ratio:.2f}) |"
        )
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

r"""Does the history depend on the CPU's instruction set, and what does pinning cost?

    .venv/bin/python scripts/kernel_reproducibility.py        # about 2 min

Runs workload W's one-process FedAvg loop (``fl_app.studies.reference_loop``, the
benchmark's reference: the app's sampling, ``fl_app.training``, the same weighted
average; 10 rounds) in a fresh process under several kernel settings, on this one
machine:

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
import sys
import time

from fl_app.studies.benchmark import DATA_DIR
from fl_app.studies.reference_loop import reference_in_fresh_process

KNOBS = ("MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
SETTINGS = {
    "default": {},
    "as-avx2": dict(zip(KNOBS, ("AVX2", "AVX2", "avx2"), strict=True)),
    "pinned": dict(zip(KNOBS, ("COMPATIBLE", "SSE41", "default"), strict=True)),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--data-dir", default=DATA_DIR)
    args = parser.parse_args(argv)
    results = []
    started = time.monotonic()
    for name in ["default", "as-avx2", "pinned", "pinned"]:
        outcome = reference_in_fresh_process(SETTINGS[name], args.rounds, args.data_dir)
        results.append((name, outcome))
        print(f"{name}: {outcome['seconds']:.1f} s", flush=True)
    reference = results[0][1]
    print(
        "\n| kernels | accuracy after round 1 .. R (%) | first round differing "
        "from default | loop seconds (ratio) |\n|---|---|---|---|"
    )
    for name, outcome in results:
        accuracy = " ".join(f"{100 * a:.2f}" for a in outcome["accuracy"])
        pairs = zip(outcome["accuracy"], reference["accuracy"], strict=True)
        differs = next((i + 1 for i, (x, y) in enumerate(pairs) if x != y), "none")
        seconds = f"{outcome['seconds']:.1f}"
        ratio = outcome["seconds"] / reference["seconds"]
        print(f"| {name} | {accuracy} | {differs} | {seconds} ({ratio:.2f}) |")
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

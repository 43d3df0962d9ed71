"""Does the history depend on the CPU's kernels, and does ``--reproducible`` fix it?

    .venv/bin/python scripts/kernel_reproducibility.py --loop   # about 2 min
    .venv/bin/python scripts/kernel_reproducibility.py --app    # about 11 min

``--loop``: the one-process FedAvg loop under each kernel setting (which of the three
variables this model needs, and what each costs). ``--app``: the default job through
``flwr run``, unpinned and pinned, in simulation and in the local TLS federation.
Both print a Markdown table; docs/reproducibility.md quotes them
(``fl_app/studies/kernels.py`` says what each row is).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fl_app.studies.benchmark import DATA_DIR
from fl_app.studies.kernels import compare_app, compare_loops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loop", action="store_true", help="the one-process loop")
    parser.add_argument("--app", action="store_true", help="the app, five ways")
    parser.add_argument("--rounds", type=int, default=10, help="(the loop's)")
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=Path("outputs/kernels"))
    args = parser.parse_args(argv)
    if not (args.loop or args.app):
        parser.error("say --loop, --app or both")
    started = time.monotonic()

    def say(text: str) -> None:
        print(text, flush=True)

    if args.loop:
        say(compare_loops(args.rounds, args.data_dir, say))
    if args.app:
        say(
            compare_app(
                args.data_dir, args.out.resolve() / time.strftime("%Y%m%d-%H%M%S"), say
            )
        )
    say(f"\nwall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

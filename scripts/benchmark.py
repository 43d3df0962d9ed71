"""Time the app against a single-process loop doing the same SGD steps.

The command line of ``fl_app.studies.benchmark`` (what is measured, and how, is
there and in ``--help``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fl_app.studies import benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=benchmark.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    parser.add_argument("--data-dir", default=benchmark.DATA_DIR)
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
    plan = benchmark.Plan(**vars(parser.parse_args(argv)))
    problem = benchmark.refusal(plan)
    if problem is not None:
        parser.error(problem)
    return benchmark.run(plan)


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


if __name__ == "__main__":
    sys.exit(main())

"""Run the app in Flower's Ray-backed simulation, then stop everything it started.

    python scripts/simulate.py --num-supernodes 100 --run-config \
        "dataset='fashion-mnist' data-dir='/usr/share/datasets/fashion-mnist'"

The same as ``flwr run . --federation-config ...`` except that the SuperLink is this
script's own child (private FLWR_HOME, free port, stopped at the end or on Ctrl-C), the
output directory is made absolute, and the exit code says whether the run completed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fl_app.launch.progress import RunProgress
from fl_app.launch.runs import (
    add_run_flags,
    num_supernodes,
    process_env,
    report_outcome,
    requested_run_config,
)
from fl_app.launch.simulation import SimulationSuperLink


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--num-supernodes",
        type=int,
        help="virtual clients (default 100; with --resume, as many as the run had)",
    )
    parser.add_argument(
        "--cpus-per-client",
        type=int,
        default=1,
        help="Ray CPUs per virtual client (1 = one client per core)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="join this Ray cluster, which must already run (ray start --head ...: "
        "docs/ray-cluster.md), instead of starting a local Ray",
    )
    add_run_flags(parser)
    parser.add_argument(
        "--output-dir",
        default="outputs",
        help="where the run folder goes (made absolute)",
    )
    args = parser.parse_args(argv)

    run_config = requested_run_config(parser, args, Path(args.output_dir))
    output_dir = Path(run_config["output-dir"])
    log_dir = output_dir / "logs"
    supernodes = num_supernodes(args.num_supernodes, run_config, default=100)
    env = process_env(run_config)  # the pinned kernels, with --reproducible

    try:
        with (
            SimulationSuperLink(log_dir, env=env, ray_address=args.ray_address) as link,
            RunProgress() as progress,
        ):
            outcome = link.run(
                run_config,
                num_supernodes=supernodes,
                cpus_per_client=args.cpus_per_client,
                log_path=log_dir / "run.log",
                echo=progress,
            )
    except KeyboardInterrupt:
        print("\ninterrupted: the SuperLink is stopped", file=sys.stderr)
        return 130
    return report_outcome(outcome, output_dir, log_dir)


if __name__ == "__main__":
    sys.exit(main())

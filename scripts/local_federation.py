"""Run the app on a real Flower deployment on this machine, then stop all of it.

    python scripts/make_certs.py --num-supernodes 3
    python scripts/local_federation.py --num-supernodes 3 --run-config \
        "dataset='fashion-mnist' data-dir='/usr/share/datasets/fashion-mnist'"

A SuperLink with TLS and SuperNode authentication on a free loopback port, N
registered SuperNodes (node ``i`` holds partition ``i`` of N), each with a warm
executor beside it (``fl_app.launch.warm_executor``; ``--stock-executor``: Flower's,
a fresh process a message), the app submitted with ``flwr run`` over TLS
(``fl_app.launch.federation``); every process is stopped at the end, on error,
Ctrl-C and SIGTERM. Exit code 0 only if it ``finished:completed``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fl_app.launch.certs import Certs
from fl_app.launch.federation import Federation
from fl_app.launch.progress import RunProgress
from fl_app.launch.runs import (
    add_run_flags,
    num_supernodes,
    process_env,
    report_outcome,
    requested_run_config,
)

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = REPO / "outputs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--num-supernodes",
        type=int,
        help="SuperNodes (default 3; with --resume, as many as the run had)",
    )
    add_run_flags(parser)
    parser.add_argument(
        "--certs-dir",
        type=Path,
        default=REPO / ".secrets",
        help="output of scripts/make_certs.py (default: .secrets/)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=OUTPUTS / "federation",
        help="logs and state go to a new <timestamp> folder in here",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=60,
        help="seconds to wait for all SuperNodes to be online",
    )
    parser.add_argument(
        "--stock-executor",
        action="store_true",
        help="run each message in a fresh flwr-clientapp process (Flower's own "
        "executor) instead of a warm worker (fl_app/launch/warm_executor.py)",
    )
    args = parser.parse_args(argv)
    run_config = requested_run_config(parser, args, OUTPUTS)
    supernodes = num_supernodes(args.num_supernodes, run_config, default=3)
    if supernodes < 1:
        parser.error("--num-supernodes must be >= 1")
    certs = Certs(args.certs_dir.resolve())
    try:
        certs.check(supernodes)
    except FileNotFoundError as error:
        print(f"local_federation: {error}", file=sys.stderr)
        return 2
    work_dir = args.work_dir.resolve() / time.strftime("%Y%m%d-%H%M%S")
    print(f"logs and state: {work_dir}", flush=True)

    env = process_env(run_config)  # the pinned kernels, with --reproducible
    warm = not args.stock_executor
    # Stopped however it ends:
    with Federation(certs, work_dir, env=env, warm=warm) as federation:
        try:
            federation.start(supernodes, args.connect_timeout, echo=True)
            with RunProgress() as progress:
                outcome = federation.run(run_config, echo=progress)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every process started", file=sys.stderr)
            return 130
        except (RuntimeError, TimeoutError) as error:
            print(f"local_federation: {error}", file=sys.stderr)
            return 1
    return report_outcome(outcome, Path(run_config["output-dir"]), federation.log_dir)


if __name__ == "__main__":
    sys.exit(main())

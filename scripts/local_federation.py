"""Run the app on a real Flower deployment on this machine, then stop all of it.

    python scripts/make_certs.py --num-supernodes 3
    python scripts/local_federation.py --num-supernodes 3 --run-config \
        "dataset='fashion-mnist' data-dir='/usr/share/datasets/fashion-mnist'"

Starts a SuperLink with TLS and SuperNode authentication on a free loopback port,
registers the SuperNodes' public keys, starts SuperNode ``i`` with partition ``i`` of
N, waits until the SuperLink lists them online, submits the app with ``flwr run`` over
TLS and streams its log. Every process is stopped at the end, on error, on Ctrl-C and
on SIGTERM. Exit code 0 only if Flower reports the run ``finished:completed``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fl_app.launch.federation import Certs, Federation
from fl_app.launch.runner import (
    parse_run_config,
    report_outcome,
    resume_from,
    sigterm_as_interrupt,
    uninterruptible,
)

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-supernodes", type=int, default=3)
    parser.add_argument(
        "--run-config",
        default="",
        help="overrides of [tool.flwr.app.config], Flower syntax",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue this run folder from its last completed round",
    )
    parser.add_argument(
        "--certs-dir",
        type=Path,
        default=REPO / ".secrets",
        help="output of scripts/make_certs.py (default: .secrets/)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=REPO / "outputs" / "federation",
        help="logs and state go to a new <timestamp> folder in here",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=60,
        help="seconds to wait for all SuperNodes to be online",
    )
    args = parser.parse_args(argv)
    if args.num_supernodes < 1:
        parser.error("--num-supernodes must be >= 1")

    certs = Certs(args.certs_dir.resolve())
    try:
        certs.check(args.num_supernodes)
    except FileNotFoundError as error:
        print(f"local_federation: {error}", file=sys.stderr)
        return 2
    run_config = parse_run_config(args.run_config, REPO / "outputs")
    if args.resume is not None:
        try:
            run_config = resume_from(run_config, args.resume)
        except FileNotFoundError as error:
            parser.error(str(error))
    output_dir = Path(run_config["output-dir"])
    work_dir = args.work_dir.resolve() / time.strftime("%Y%m%d-%H%M%S")
    print(f"logs and state: {work_dir}", flush=True)

    federation = Federation(certs, work_dir)
    try:
        with sigterm_as_interrupt():
            federation.start_superlink()
            print(f"SuperLink (TLS, node auth) on {federation.address}", flush=True)
            federation.start_supernodes(args.num_supernodes)
            federation.wait_for_online(args.num_supernodes, args.connect_timeout)
            print(f"{args.num_supernodes} SuperNodes online", flush=True)
            result = federation.run(run_config, echo=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError) as error:
        print(f"local_federation: {error}", file=sys.stderr)
        return 1
    finally:
        with uninterruptible():
            federation.stop()

    return report_outcome(
        result.run_id, result.status, result.details, output_dir, federation.log_dir
    )


if __name__ == "__main__":
    sys.exit(main())

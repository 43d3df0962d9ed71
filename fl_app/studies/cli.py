"""The command-line options the studies share, their checks, and ``run_cli``, a
study's command line from its parser and its class."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fl_app.config import DATASETS
from fl_app.studies.driver import Study, run_study
from fl_app.studies.report import FRACTION_FIT
from fl_app.studies.runs import Runner

DEFAULT_DATA_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}


def study_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows ``description`` (the study module's
    docstring) as written."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    default_out: str,
    default_strategies: Sequence[str],
    default_rounds: int = 30,
) -> None:
    """The options every study takes (dataset, rounds, strategies, out, ...)."""
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="fashion-mnist",
        help="dataset (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder of IDX files (default: /usr/share/datasets/fashion-mnist for "
        "fashion-mnist; for mnist, '' = download with torchvision)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=default_rounds,
        help=f"rounds (default: {default_rounds})",
    )
    parser.add_argument(
        "--strategies",
        default=",".join(default_strategies),
        help="comma-separated strategies (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(default_out),
        help="report and finished runs go here; re-running skips the runs already "
        "in it (default: %(default)s). Inside the project, keep it under a "
        "git-ignored folder such as outputs/: flwr run packs the project's other "
        ".json and .md files into every run",
    )
    parser.add_argument("--seed", type=int, default=42, help="run seed (default: 42)")
    parser.add_argument(
        "--num-supernodes",
        type=int,
        default=100,
        help="virtual clients (default: 100)",
    )
    parser.add_argument(
        "--cpus-per-client",
        type=int,
        default=1,
        help="Ray CPUs per virtual client (1 = one client per core)",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=3600,
        help="seconds one run may take before it counts as failed (default: 3600)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="stream every run's Flower log (on a terminal, above the progress bars)",
    )


def option(parser: argparse.ArgumentParser, name: str) -> argparse.Action:
    """The action of option ``name`` (``--rounds``), to change its help."""
    (found,) = [a for a in parser._actions if name in a.option_strings]
    return found


def hide(parser: argparse.ArgumentParser, *names: str) -> None:
    """Shared options a study does not take: out of ``--help``, default None (so
    that the study can refuse them when given)."""
    for name in names:
        action = option(parser, name)
        action.help, action.default = argparse.SUPPRESS, None


def check_common_arguments(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    allowed_strategies: Iterable[str] | None = None,
) -> list[str]:
    """Validate the shared options (``parser.error`` on a bad one; a hidden one,
    None, is not checked), fill in the data folder, and return the chosen
    strategies in order."""
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.num_supernodes < 2:
        parser.error("--num-supernodes must be >= 2")
    if args.cpus_per_client < 1:
        parser.error("--cpus-per-client must be >= 1")
    if args.data_dir is None:
        args.data_dir = DEFAULT_DATA_DIRS.get(args.dataset, "")
    if args.data_dir:
        args.data_dir = str(Path(args.data_dir).expanduser().resolve())
        if not Path(args.data_dir).is_dir():
            parser.error(f"--data-dir {args.data_dir}: no such folder")
    if args.strategies is None or allowed_strategies is None:
        return []
    allowed = list(allowed_strategies)
    return choose(parser, "--strategies", args.strategies, allowed, as_given=True)


def choose(
    parser: argparse.ArgumentParser,
    name: str,
    text: str,
    allowed: Sequence[str],
    as_given: bool = False,
) -> list[str]:
    """The comma-separated names in ``text`` (option ``name``), each once, in
    ``allowed``'s order (``as_given``: in ``text``'s); ``parser.error`` on an
    unknown one or none."""
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown or not chosen:
        parser.error(
            f"{name}: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(allowed)}"
        )
    if as_given:
        return list(dict.fromkeys(chosen))
    return [item for item in allowed if item in chosen]


def run_config(
    args: argparse.Namespace,
    strategy: str,
    partitioner: str,
    knobs: Mapping[str, Any] | None = None,
    rounds: int | None = None,
) -> dict[str, Any]:
    """A run's ``--run-config`` (``knobs`` after the strategy; ``rounds``, else
    ``--rounds``); every other knob keeps its pyproject default."""
    return {
        "num-server-rounds": args.rounds if rounds is None else rounds,
        "fraction-fit": FRACTION_FIT,
        # Round 1 waits for every client, so each round samples C of all of them.
        "min-available-clients": args.num_supernodes,
        "strategy": strategy,
        **(knobs or {}),
        "partitioner": partitioner,
        "dataset": args.dataset,
        "data-dir": args.data_dir,
        "seed": args.seed,
    }


def run_cli(
    parse_args: Callable[[Sequence[str]], argparse.Namespace],
    study: Callable[[argparse.Namespace, Sequence[str]], Study],
    argv: Sequence[str] | None = None,
    *,
    runner: Runner | None = None,
) -> int:
    """A study's command line: parse ``argv`` (the process's by default), run the
    study, the exit code; ``runner`` replaces Flower."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    return run_study(study(args, argv), args, runner=runner)

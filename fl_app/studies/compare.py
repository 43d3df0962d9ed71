"""The strategy comparison, plan and report: every chosen strategy on IID and on
McMahan's shards (runs ``<strategy>-<partitioner>``); ``compare.md`` (final
accuracy, rounds to a target), ``.json``, ``.png``. CLI: scripts/compare_strategies.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from fl_app.files import write_json, write_text
from fl_app.studies.cli import (
    add_common_arguments,
    check_common_arguments,
    run_cli,
    study_parser,
)
from fl_app.studies.driver import PlannedRun, RunResult, Study
from fl_app.studies.report import (
    clock,
    command_line,
    describe_setup,
    final_accuracy,
    first_config,
    markdown_table,
    percent,
    plot_curves,
    provenance,
    rounds_to_target,
)
from strategies import STRATEGIES

PARTITIONERS = ("iid", "shards")
COLUMN = {"iid": "IID", "shards": "shards"}  # table column prefix
PANEL = {"iid": "IID", "shards": "shards (non-IID)"}  # plot panel title
FRACTION_FIT = 0.1  # C
SCRIPT = "scripts/compare_strategies.py"


def run_name(strategy: str, partitioner: str) -> str:
    return f"{strategy}-{partitioner}"


def parse_args(
    argv: Sequence[str], description: str | None = None
) -> argparse.Namespace:
    """Parse and validate; ``strategies`` and ``targets`` filled in."""
    parser = study_parser(description)
    add_common_arguments(
        parser, default_out="outputs/compare", default_strategies=list(STRATEGIES)
    )
    parser.add_argument(
        "--target-iid",
        type=float,
        default=0.80,
        help="test accuracy (fraction) for 'rounds to target' on IID "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--target-shards",
        type=float,
        default=0.70,
        help="the same on shards (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    args.strategies = check_common_arguments(parser, args, STRATEGIES)
    args.targets = {"iid": args.target_iid, "shards": args.target_shards}
    for partitioner, target in args.targets.items():
        if not 0 < target <= 1:
            parser.error(f"--target-{partitioner}: must be in (0, 1], got {target}")
    return args


def main(argv: Sequence[str] | None = None, **options: Any) -> int:
    """The command line (``description``: the ``--help`` text; ``runner``)."""
    return run_cli(parse_args, Comparison, argv, **options)


class Comparison(Study):
    """Strategies x partitioners; the report's table, JSON and plot."""

    prog = "compare_strategies"
    report_name = "compare.md"
    runs_word = " runs"

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        super().__init__(args.out, command_line(SCRIPT, argv))
        self.args = args
        self.clients: int = args.num_supernodes
        self.strategies: list[str] = args.strategies
        self.targets: dict[str, float] = args.targets

    def plan(self) -> list[PlannedRun]:
        return [
            PlannedRun(run_name(s, p), f"{s} {p}", self.run_config(s, p), self.clients)
            for p in PARTITIONERS
            for s in self.strategies
        ]

    def run_config(self, strategy: str, partitioner: str) -> dict[str, Any]:
        """One run's ``--run-config``; every other knob keeps its pyproject
        default."""
        return {
            "num-server-rounds": self.args.rounds,
            "fraction-fit": FRACTION_FIT,
            # Round 1 waits for every client, so each round samples C of all.
            "min-available-clients": self.clients,
            "strategy": strategy,
            "partitioner": partitioner,
            "dataset": self.args.dataset,
            "data-dir": self.args.data_dir,
            "seed": self.args.seed,
        }

    def headline(self, planned: int) -> str:
        return (
            f"{planned} runs: {len(self.strategies)} strategies x "
            f"{', '.join(PARTITIONERS)}, {self.clients} clients, C={FRACTION_FIT}, "
            f"{self.args.rounds} rounds; results in {self.out}"
        )

    def write_report(
        self, results: Mapping[str, RunResult], wall_seconds: float
    ) -> None:
        """``compare.md``, ``compare.json`` and ``compare.png``."""
        args, targets = self.args, self.targets

        def result(strategy: str, partitioner: str) -> RunResult | None:
            return results.get(run_name(strategy, partitioner))

        finals = {
            p: [final_accuracy(r.rows) for s in self.strategies if (r := result(s, p))]
            for p in PARTITIONERS
        }
        best = {
            p: max((a for a in finals[p] if a is not None), default=None)
            for p in PARTITIONERS
        }

        def accuracy_cell(run: RunResult | None, partitioner: str) -> str | None:
            if run is None:
                return None
            accuracy = final_accuracy(run.rows)
            text = percent(accuracy)
            bold = accuracy is not None and accuracy == best[partitioner]
            return f"**{text}**" if bold else text

        def rounds_cell(run: RunResult | None, partitioner: str) -> str | None:
            if run is None:
                return None
            reached = rounds_to_target(run.rows, targets[partitioner])
            return str(reached) if reached is not None else f"> {run.rows[-1]['round']}"

        headers = ["strategy"]
        for p in PARTITIONERS:
            headers += [
                f"{COLUMN[p]}: final accuracy",
                f"{COLUMN[p]}: rounds to {100 * targets[p]:g}%",
            ]
        headers.append("time per run (IID / shards)")
        table = []
        for s in self.strategies:
            row: list[Any] = [s]
            for p in PARTITIONERS:
                run = result(s, p)
                row += [accuracy_cell(run, p), rounds_cell(run, p)]
            times = [result(s, p) for p in PARTITIONERS]
            row.append(
                " / ".join(clock(r.seconds) if r else "-" for r in times)
                if any(times)
                else None
            )
            table.append(row)
        self.table = markdown_table(headers, table)
        config = first_config(results)
        lines = [
            "# Strategies compared on IID and non-IID data",
            f"{self.clients} virtual clients, {args.rounds} rounds; "
            f"{describe_setup(config)}; every other knob at its pyproject.toml "
            "default. IID: each client a uniform random share; shards: McMahan's "
            "pathological non-IID split (sorted by label, 2 shards per client).",
            self.table.rstrip("\n"),
            f"Final accuracy: the global model's test accuracy after the last round "
            f"(best of each column in bold). Rounds to X%: the first round whose test "
            f"accuracy reached X% (`> {args.rounds}`: not within the run). '-': not "
            "run (yet).",
            "![test accuracy against round, IID and shards](compare.png)",
            provenance(
                self.command, self.date, wall_seconds, results, len(self.plan())
            ).rstrip("\n"),
        ]
        write_text(self.out / "compare.md", "\n\n".join(lines) + "\n")
        runs = [
            {
                "name": run.name,
                "strategy": s,
                "partitioner": p,
                "final_accuracy": final_accuracy(run.rows),
                "target": targets[p],
                "rounds_to_target": rounds_to_target(run.rows, targets[p]),
                "seconds": run.seconds,
                "reused": run.skipped,
                "run_dir": str(run.run_dir),
                "test_accuracy": [row["test_accuracy"] for row in run.rows],
                "test_loss": [row["test_loss"] for row in run.rows],
            }
            for s in self.strategies
            for p in PARTITIONERS
            if (run := result(s, p)) is not None
        ]
        write_json(
            self.out / "compare.json",
            {
                "command": self.command,
                "date": self.date,
                "wall_seconds": wall_seconds,
                "planned_runs": len(self.plan()),
                "num_supernodes": self.clients,
                "rounds": args.rounds,
                "targets": targets,
                "config": config,
                "runs": runs,
            },
        )
        plot_curves(
            self.out / "compare.png",
            {
                PANEL[p]: {
                    s: run.rows
                    for s in self.strategies
                    if (run := result(s, p)) is not None
                }
                for p in PARTITIONERS
            },
            title=f"{args.dataset}, {self.clients} clients, C={FRACTION_FIT}",
            targets={PANEL[p]: targets[p] for p in PARTITIONERS},
        )

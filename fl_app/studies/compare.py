r"""Compare every registered strategy on IID and on pathological non-IID data.

    .venv/bin/python scripts/compare_strategies.py

runs each strategy of ``strategies.STRATEGIES`` with 100 virtual clients, C = 0.1 and
30 rounds on Fashion-MNIST (``/usr/share/datasets/fashion-mnist``), once with
``partitioner='iid'`` and once with ``partitioner='shards'`` (McMahan's 2 label
shards per client): 24 runs on one SuperLink. It writes to ``outputs/compare/``:

* ``compare.md``: per strategy, the final test accuracy and the rounds it took to
  reach a target accuracy (``--target-iid``, ``--target-shards``), IID and shards;
* ``compare.png``: test accuracy against round, IID and shards side by side;
* ``compare.json``: the raw numbers (accuracy of every round of every run);
* ``runs/<strategy>-<partitioner>/``: each finished run (history, config, logs).

Running the same command again skips the runs already finished, so an interrupted
study (Ctrl-C) resumes where it stopped. A quick try:

    .venv/bin/python scripts/compare_strategies.py --rounds 2 \
        --strategies fedavg,median --num-supernodes 20 --out outputs/compare-smoke
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from fl_app.files import write_json, write_text
from fl_app.studies.cli import (
    add_common_arguments,
    check_common_arguments,
    run_cli,
    run_config,
    study_parser,
)
from fl_app.studies.driver import PlannedRun, RunResult, Study
from fl_app.studies.report import (
    COLUMN,
    FRACTION_FIT,
    PANEL,
    clock,
    describe_setup,
    final_accuracy,
    first_config,
    markdown_table,
    percent,
    plot_curves,
    rounds_to_target,
    run_entry,
)
from strategies import STRATEGIES

PARTITIONERS = ("iid", "shards")


def run_name(strategy: str, partitioner: str) -> str:
    return f"{strategy}-{partitioner}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate; ``strategies`` and ``targets`` filled in."""
    parser = study_parser(__doc__)
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


class Comparison(Study):
    """Strategies x partitioners; the report's table, JSON and plot."""

    script = "scripts/compare_strategies.py"
    report_name = "compare.md"
    runs_word = " runs"

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        super().__init__(args, argv)
        self.strategies: list[str] = args.strategies
        self.targets: dict[str, float] = args.targets

    def plan(self) -> list[PlannedRun]:
        config = partial(run_config, self.args)
        return self.grid(self.strategies, PARTITIONERS, run_name, config)

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
            self.provenance(results, wall_seconds).rstrip("\n"),
        ]
        write_text(self.out / "compare.md", "\n\n".join(lines) + "\n")
        runs = [
            run_entry(
                run,
                {
                    "strategy": s,
                    "partitioner": p,
                    "final_accuracy": final_accuracy(run.rows),
                    "target": targets[p],
                    "rounds_to_target": rounds_to_target(run.rows, targets[p]),
                },
                "test_accuracy",
                "test_loss",
            )
            for s in self.strategies
            for p in PARTITIONERS
            if (run := result(s, p)) is not None
        ]
        write_json(
            self.out / "compare.json",
            {
                **self.stamp(wall_seconds),
                "num_supernodes": self.clients,
                "rounds": args.rounds,
                "targets": targets,
                "config": config,
                "runs": runs,
            },
        )
        plot_curves(
            self.out / "compare.png",
            self.curves(results),
            title=f"{args.dataset}, {self.clients} clients, C={FRACTION_FIT}",
            targets={PANEL[p]: targets[p] for p in PARTITIONERS},
        )


main = partial(run_cli, parse_args, Comparison)

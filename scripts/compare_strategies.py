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
import sys
import time
from typing import Any

from fl_app.studies.driver import (
    RunResult,
    Study,
    add_common_arguments,
    check_common_arguments,
    clock,
    command_line,
    describe_setup,
    final_accuracy,
    markdown_table,
    percent,
    plot_curves,
    provenance,
    rounds_to_target,
    write_results,
    write_text,
)
from strategies import STRATEGIES

PARTITIONERS = ("iid", "shards")
COLUMN = {"iid": "IID", "shards": "shards"}  # table column prefix
PANEL = {"iid": "IID", "shards": "shards (non-IID)"}  # plot panel title
FRACTION_FIT = 0.1  # C
SCRIPT = "scripts/compare_strategies.py"


def run_name(strategy: str, partitioner: str) -> str:
    return f"{strategy}-{partitioner}"


def run_config(
    args: argparse.Namespace, strategy: str, partitioner: str
) -> dict[str, Any]:
    """One run's ``--run-config``; every other knob keeps its pyproject default."""
    return {
        "num-server-rounds": args.rounds,
        "fraction-fit": FRACTION_FIT,
        # Round 1 waits for every client, so each round samples C of all of them.
        "min-available-clients": args.num_supernodes,
        "strategy": strategy,
        "partitioner": partitioner,
        "dataset": args.dataset,
        "data-dir": args.data_dir,
        "seed": args.seed,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    strategies = check_common_arguments(parser, args, STRATEGIES)
    targets = {"iid": args.target_iid, "shards": args.target_shards}
    for partitioner, target in targets.items():
        if not 0 < target <= 1:
            parser.error(f"--target-{partitioner}: must be in (0, 1], got {target}")

    plan = [(s, p) for p in PARTITIONERS for s in strategies]
    command = command_line(SCRIPT, argv)
    date = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    started = time.monotonic()
    print(
        f"{len(plan)} runs: {len(strategies)} strategies x {', '.join(PARTITIONERS)}, "
        f"{args.num_supernodes} clients, C={FRACTION_FIT}, {args.rounds} rounds; "
        f"results in {args.out.resolve()}",
        flush=True,
    )
    study = Study(
        args.out,
        total=len(plan),
        cpus_per_client=args.cpus_per_client,
        run_timeout=args.run_timeout,
        echo=args.verbose,
    )

    table = ""

    def report() -> None:
        nonlocal table
        table = write_report(
            args,
            strategies,
            targets,
            study.results,
            command=command,
            date=date,
            wall_seconds=time.monotonic() - started,
            planned=len(plan),
        )

    outcome = 0
    try:
        with study:
            for strategy, partitioner in plan:
                study.run(
                    run_name(strategy, partitioner),
                    run_config(args, strategy, partitioner),
                    args.num_supernodes,
                    label=f"{strategy} {partitioner}",
                )
                report()
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept", file=sys.stderr)
        outcome = 130
    except (RuntimeError, TimeoutError) as error:  # StudyError, or flwr's
        print(f"compare_strategies: {error}", file=sys.stderr)
        outcome = 1
    if study.results:
        report()
    out = args.out.resolve()
    print(f"{out / 'compare.md'} ({len(study.results)} of {len(plan)} runs)")
    print(table, end="")
    print(f"wall time {clock(time.monotonic() - started)}")
    return outcome


def write_report(
    args: argparse.Namespace,
    strategies: list[str],
    targets: dict[str, float],
    results: dict[str, RunResult],
    *,
    command: str,
    date: str,
    wall_seconds: float,
    planned: int,
) -> str:
    """``compare.md``, ``compare.json`` and ``compare.png`` from the runs so far;
    returns the markdown table."""
    out = args.out.resolve()

    def result(strategy: str, partitioner: str) -> RunResult | None:
        return results.get(run_name(strategy, partitioner))

    finals = {
        p: [
            final_accuracy(r.rows)
            for s in strategies
            if (r := result(s, p)) is not None
        ]
        for p in PARTITIONERS
    }
    best = {
        p: max((a for a in finals[p] if a is not None), default=None) for p in finals
    }

    def accuracy_cell(run: RunResult | None, partitioner: str) -> str | None:
        if run is None:
            return None
        accuracy = final_accuracy(run.rows)
        text = percent(accuracy)
        return (
            f"**{text}**"
            if accuracy is not None and accuracy == best[partitioner]
            else text
        )

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
    for s in strategies:
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

    table_text = markdown_table(headers, table)
    config = next(iter(results.values())).config if results else {}
    lines = [
        "# Strategies compared on IID and non-IID data",
        f"{args.num_supernodes} virtual clients, {args.rounds} rounds; "
        f"{describe_setup(config)}; every other knob at its pyproject.toml default. "
        "IID: each client a uniform random share; shards: McMahan's pathological "
        "non-IID split (sorted by label, 2 shards per client).",
        table_text.rstrip("\n"),
        f"Final accuracy: the global model's test accuracy after the last round "
        f"(best of each column in bold). Rounds to X%: the first round whose test "
        f"accuracy reached X% (`> {args.rounds}`: not within the run). '-': not run "
        "(yet).",
        "![test accuracy against round, IID and shards](compare.png)",
        provenance(command, date, wall_seconds, results, planned).rstrip("\n"),
    ]
    write_text(out / "compare.md", "\n\n".join(lines) + "\n")

    runs = []
    for s in strategies:
        for p in PARTITIONERS:
            run = result(s, p)
            if run is None:
                continue
            runs.append(
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
            )
    write_results(
        out / "compare.json",
        {
            "command": command,
            "date": date,
            "wall_seconds": wall_seconds,
            "planned_runs": planned,
            "num_supernodes": args.num_supernodes,
            "rounds": args.rounds,
            "targets": targets,
            "config": config,
            "runs": runs,
        },
    )

    panels = {
        PANEL[p]: {s: run.rows for s in strategies if (run := result(s, p)) is not None}
        for p in PARTITIONERS
    }
    plot_curves(
        out / "compare.png",
        panels,
        title=f"{args.dataset}, {args.num_supernodes} clients, C={FRACTION_FIT}",
        targets={PANEL[p]: targets[p] for p in PARTITIONERS},
    )
    return table_text


if __name__ == "__main__":
    sys.exit(main())

"""The one study driver: a study's plan run on one SuperLink, resumably.

A ``Study`` is a plan (``PlannedRun``: name, label, run config, virtual clients)
and a report written from the runs finished so far. ``run_study`` is the studies'
only loop: its progress (``StudyProgress``: bars over the runs and the current
run's rounds on a terminal, ``[i/total]`` lines otherwise), the report after each
run, Ctrl-C -> exit code 130 and a failed run -> 1 (named), the report written with
what finished.

The runs themselves are kept, reused and resumed by ``RunStore``
(``fl_app.studies.runs``).
"""

from __future__ import annotations

import argparse
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fl_app.launch.progress import StudyProgress
from fl_app.studies.report import (
    PANEL,
    History,
    RunResult,
    clock,
    command_line,
    machine,
    provenance,
)
from fl_app.studies.runs import Runner, RunStore


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study's plan."""

    name: str  # its folder under runs/: a plain folder name
    label: str  # how progress lines call it
    run_config: dict[str, Any]  # flwr run's --run-config, without output-dir
    num_supernodes: int
    curve: str = ""  # a grid study's: its row's curve label
    column: str = ""  # and its column (partition, condition): the plot's panel


class Study(ABC):
    """What one study is: its plan and its report (the driver does the rest)."""

    script: str  # scripts/<prog>.py, as the report's command gives it
    report_name: str  # the markdown report, under ``out``; named by the last lines
    runs_word: str = ""  # after "(i of n" in the last lines, e.g. " runs"
    table: str = ""  # the report's table (markdown), once written
    verdict: Sequence[str] = ()  # the report's conclusions, one a line

    def __init__(self, args: argparse.Namespace, argv: Sequence[str] = ()) -> None:
        self.args = args
        self.out = Path(args.out).expanduser().resolve()
        self.command = command_line(self.script, argv)  # the report's provenance
        self.date = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    @property
    def prog(self) -> str:
        """The script's name, in front of an error message."""
        return Path(self.script).stem

    @property
    def clients(self) -> int:
        return self.args.num_supernodes

    @abstractmethod
    def plan(self) -> list[PlannedRun]:
        """The runs, in the order they run."""

    @abstractmethod
    def write_report(
        self, results: Mapping[str, RunResult], wall_seconds: float
    ) -> None:
        """Write the report's files from the runs finished so far (name -> run)."""

    def headline(self, planned: int) -> str | None:
        """The line printed before the first run; None for none."""
        return None

    def after_run(self, run: PlannedRun) -> str | None:
        """A line printed after the run's progress line and report; None for none."""
        return None

    def grid(
        self,
        rows: Sequence[Any],
        columns: Sequence[str],
        name: Callable[[Any, str], str],
        config: Callable[[Any, str], dict[str, Any]],
        label: Callable[[Any], str] = str,
    ) -> list[PlannedRun]:
        """A plan of every row (strategy, codec, setting) in every column
        (partition, condition), column by column: run ``name(row, column)``,
        labelled ``<label(row)> <column>``, on ``--num-supernodes`` clients."""
        return [
            PlannedRun(
                name(r, c), f"{label(r)} {c}", config(r, c), self.clients, label(r), c
            )
            for c in columns
            for r in rows
        ]

    def curves(
        self,
        results: Mapping[str, RunResult],
        panel: Callable[[str], str] = PANEL.__getitem__,
    ) -> dict[str, dict[str, History]]:
        """A grid study's ``plot_curves`` panels: one a column, titled
        ``panel(column)``, with the finished runs' rows by curve label."""
        panels: dict[str, dict[str, History]] = {}
        for run in self.plan():
            curves = panels.setdefault(panel(run.column), {})
            if run.name in results:
                curves[run.curve] = results[run.name].rows
        return panels

    def provenance(self, results: Mapping[str, RunResult], wall_seconds: float) -> str:
        """The report's closing lines (``report.provenance``) for this study."""
        return provenance(
            self.command, self.date, wall_seconds, results, len(self.plan())
        )

    def stamp(self, wall_seconds: float, with_machine: bool = False) -> dict[str, Any]:
        """The report JSON's first keys: command, date, (machine,) times, runs."""
        head = {"command": self.command, "date": self.date}
        if with_machine:
            head["machine"] = machine()
        return {**head, "wall_seconds": wall_seconds, "planned_runs": len(self.plan())}

    def summary(self) -> list[str]:
        """Lines printed last, after the report's path: its table and verdict."""
        return [*([self.table.rstrip("\n")] if self.table else []), *self.verdict]


def run_study(
    study: Study,
    args: argparse.Namespace,
    *,
    runner: Runner | None = None,
    stream: TextIO | None = None,
    live: bool | None = None,
) -> int:
    """Run ``study``'s plan, reusing finished runs; the exit code: 0, 1 when a run
    failed, 130 on Ctrl-C. ``args`` may set ``cpus_per_client``, ``run_timeout``
    and ``verbose`` (Flower's log streamed); ``runner`` replaces Flower; ``live``
    (by default when ``stream`` is a terminal): progress bars."""
    out = stream or sys.stdout
    plan = study.plan()
    started = time.monotonic()
    if (headline := study.headline(len(plan))) is not None:
        print(headline, file=out, flush=True)
    progress = StudyProgress(
        len(plan), stream=out, live=live, verbose=getattr(args, "verbose", False)
    )
    store = RunStore(
        study.out,
        total=len(plan),
        runner=runner,
        stream=out,
        progress=progress,
        cpus_per_client=getattr(args, "cpus_per_client", 1),
        timeout=getattr(args, "run_timeout", 3600),
    )
    outcome = 0
    current = ""
    try:
        with progress, store:
            for run in plan:
                current = run.name
                store.run(run.name, run.run_config, run.num_supernodes, label=run.label)
                study.write_report(store.results, time.monotonic() - started)
                if (line := study.after_run(run)) is not None:
                    progress.message(line)
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept", file=sys.stderr)
        outcome = 130
    except (RuntimeError, TimeoutError) as error:  # StudyError, or flwr's
        where = f"run {current}: " if current else ""
        print(f"{study.prog}: {where}{error}", file=sys.stderr)
        outcome = 1
    if store.results:
        study.write_report(store.results, time.monotonic() - started)
    done = f"{len(store.results)} of {len(plan)}{study.runs_word}"
    print(f"{study.out / study.report_name} ({done})", file=out)
    for line in study.summary():
        print(line, file=out)
    print(f"wall time {clock(time.monotonic() - started)}", file=out)
    return outcome

r"""Heterogeneous devices: which remedy for stragglers reaches 75% first, on the
virtual clock.

    .venv/bin/python scripts/heterogeneity_study.py

runs the 2NN on Fashion-MNIST (``/usr/share/datasets/fashion-mnist``) split into
100 partitions by McMahan's pathological shards (``partitioner='shards'``: sorted by
label, 2 shards of 300 per client, 540 trained on after the 10% held out), 10
clients a round (C = 0.1), E = 1, B = 10, client lr 0.1, seed 42, with simulated
devices on (``heterogeneity.enabled``, every device distribution at its
pyproject.toml default), for ``--rounds`` (200) rounds each, server updates for
FedBuff. Uniform first reaches 75% at round 19 here (measured, seed 42); 200 leaves
the slower ways room to get there and keeps the study under 20 minutes of wall time
on 2 cores (a run took 65-93 s on an idle machine, up to 258 s beside a test suite;
14 min 17 s for all seven). Seven runs on one SuperLink, one per way of
living with stragglers:

* ``uniform``: the seeded uniform draw, every sampled client waited for;
* ``over-commit-1.3``: ``heterogeneity.over-commit`` 1.3, 13 sampled, the first 10
  to finish kept (FedScale's default; Bonawitz et al., MLSys 2019);
* ``power-of-choice``: ``selection.policy='power-of-choice'`` (Cho et al.,
  AISTATS 2022), d = 2m = 20 candidates (``selection.candidates`` at its default);
* ``oort``: ``selection.policy='oort'`` (Lai et al., OSDI 2021), explore 0.2,
  alpha 2 (defaults);
* ``fedbuff``: ``strategy='fedbuff'`` (Nguyen et al., AISTATS 2022), buffer K = 10
  and concurrency 20 (the app's defaults, set explicitly): an update aggregates as
  many replies as a synchronous round keeps (so R updates and R rounds aggregate as
  many client updates), and twice as many clients train at any time, so a slow
  client holds a slot but not the server. FedBuff refuses deadlines,
  over-commitment, selection policies and partial work, so this run has none of
  them (staleness exponent 0.5, server lr 1: defaults);
* ``deadline-partial``: ``heterogeneity.round-deadline`` ``DEADLINE_S`` with
  ``heterogeneity.partial-work`` (FedProx's variable local work, Li et al.,
  MLSys 2020): a client that cannot finish by the deadline trains what it can and
  sends that;
* ``deadline-drop``: the same deadline without partial work: late replies dropped.

The deadline, 5.5 virtual seconds, is the median over the 100 devices of a client's
full-work time (download of the 2NN's 797,608 bytes + 540 examples of compute +
upload of as many bytes; ``device_seconds``: 5.48 s for seed 42), rounded up to a
half second: about half the devices finish by it, so every round has stragglers.
``min-fit-clients`` is 2, the app's default: Flower samples max(C·K,
min-fit-clients) = 10 clients, and a deadline round aggregates whoever made it
(with 10, a round missing one client would keep the old model).

Every run goes its full ``--rounds``; none stops at the target (a run that stopped
there would end its curve and total at a different place from the others). From
each history it takes the first row whose test accuracy reaches ``--target``
(0.75): its ``virtual_time_s`` is the time to accuracy, its round the rounds (or
server updates) to it. On the shards the curve jumps by several points from round
to round, so a lucky round can cross the target early; the report adds a steadier
time, the first row where the mean of the last ``WINDOW`` (5) rows reaches the
target. It writes to ``outputs/heterogeneity/``:

* ``heterogeneity.md``: per run, virtual time to the target and to the 5-row mean
  of it, their ratios to uniform's, rounds and client updates aggregated to the
  target, final and best accuracy, total virtual time, the mean round and the
  replies dropped a round; a verdict: which runs beat uniform on virtual time to
  accuracy;
* ``heterogeneity.png``: test accuracy against virtual time (minutes), one curve
  per run, the target as a dashed line;
* ``heterogeneity.json``: the raw numbers (every round of every run), provenance;
* ``runs/<run>/``: each finished run (history, config, logs).

``--runs`` chooses a subset (``uniform``, the baseline, is always needed). Running
the same command again skips the runs already finished, so an interrupted study
(Ctrl-C) resumes where it stopped. A quick try:

    .venv/bin/python scripts/heterogeneity_study.py --rounds 3 \
        --runs uniform,fedbuff --out outputs/heterogeneity-smoke
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from fl_app.files import write_json, write_text
from fl_app.heterogeneity import DeviceSpec, client_seconds, draw_profiles
from fl_app.studies.cli import (
    add_common_arguments,
    check_common_arguments,
    choose,
    hide,
    option,
    run_cli,
    study_parser,
)
from fl_app.studies.cli import run_config as shared_config
from fl_app.studies.driver import PlannedRun, RunResult, Study
from fl_app.studies.report import (
    FRACTION_FIT,
    MODEL,
    STRATEGY,
    TIMES,
    History,
    describe_setup,
    final_accuracy,
    first_config,
    machine,
    markdown_table,
    percent,
    run_entry,
    save_figure,
)

PARTITIONER = "shards"
NUM_PARTITIONS = 100
MIN_FIT_CLIENTS = 2
LOCAL_EPOCHS = 1  # E
BATCH_SIZE = 10  # B
LEARNING_RATE = 0.1
TARGET = 0.75
DEFAULT_ROUNDS = 200
OVER_COMMIT = 1.3
FEDBUFF_BUFFER = 10
FEDBUFF_CONCURRENCY = 20
DEADLINE_S = 5.5  # virtual seconds: the median device's full-work time (docstring)
#: What the deadline was chosen from: a shards client's examples after the 10% held
#: out, and the 2NN's weights as sent (parameters_nbytes, 6 tensors with headers).
EXAMPLES_PER_CLIENT = 540
MODEL_BYTES = 797_608
BASELINE = "uniform"
WINDOW = 5  # rows of the running mean of the steadier time to accuracy
PANEL_TITLE = "shards (non-IID), simulated devices"
#: What the report's JSON has per round.
SERIES = (
    "test_accuracy",
    "test_loss",
    "virtual_time_s",
    "clients_sampled",
    "clients_succeeded",
    "clients_late",
    "clients_rejected",
    "model_updated",
    "staleness_mean",
    "staleness_max",
)


@dataclass(frozen=True)
class Variant:
    """One run of the plan: its folder name, how the table calls it, its knobs."""

    key: str
    label: str
    knobs: Mapping[str, Any] = field(default_factory=dict)
    asynchronous: bool = False  # a history row is a server update, not a round


VARIANTS = (
    Variant(BASELINE, "uniform"),
    Variant(
        "over-commit-1.3",
        f"over-commit {OVER_COMMIT:g}",
        {"heterogeneity.over-commit": OVER_COMMIT},
    ),
    Variant(
        "power-of-choice",
        "Power-of-Choice (d = 2m)",
        {"selection.policy": "power-of-choice"},
    ),
    Variant("oort", "Oort", {"selection.policy": "oort"}),
    Variant(
        "fedbuff",
        f"FedBuff (K = {FEDBUFF_BUFFER}, concurrency {FEDBUFF_CONCURRENCY})",
        {
            "strategy": "fedbuff",
            "fedbuff.buffer-size": FEDBUFF_BUFFER,
            "fedbuff.concurrency": FEDBUFF_CONCURRENCY,
        },
        asynchronous=True,
    ),
    Variant(
        "deadline-partial",
        f"deadline {DEADLINE_S:g} s + partial work",
        {
            "heterogeneity.round-deadline": DEADLINE_S,
            "heterogeneity.partial-work": True,
        },
    ),
    Variant(
        "deadline-drop",
        f"deadline {DEADLINE_S:g} s, late dropped",
        {"heterogeneity.round-deadline": DEADLINE_S},
    ),
)
BY_KEY = {variant.key: variant for variant in VARIANTS}


# ----------------------------------------------------------- pure: no Flower here
def first_reaching(rows: History, target: float) -> Mapping[str, Any] | None:
    """The first row whose test accuracy (a fraction) is >= ``target``; None if
    none is."""
    for row in rows:
        accuracy = row.get("test_accuracy")
        if accuracy is not None and accuracy >= target:
            return row
    return None


def time_to_accuracy(rows: History, target: float) -> float | None:
    """Virtual seconds to ``target``: the ``virtual_time_s`` of the first row that
    reaches it; None if no row does (or that row has no virtual time)."""
    row = first_reaching(rows, target)
    if row is None or row.get("virtual_time_s") is None:
        return None
    seconds = float(row["virtual_time_s"])
    return seconds if math.isfinite(seconds) else None


def time_to_running_mean(
    rows: History, target: float, window: int = WINDOW
) -> float | None:
    """A steadier time to ``target`` on a noisy curve: the ``virtual_time_s`` of the
    first row where the mean test accuracy of it and the ``window - 1`` rows before
    it is >= ``target`` (no mean before ``window`` rows); None if none is."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    recent: list[float] = []
    for row in rows:
        accuracy = row.get("test_accuracy")
        if accuracy is None:
            recent = []  # a row without accuracy breaks the window
            continue
        recent = [*recent, float(accuracy)][-window:]
        if len(recent) == window and statistics.fmean(recent) >= target:
            seconds = row.get("virtual_time_s")
            if seconds is None or not math.isfinite(float(seconds)):
                return None
            return float(seconds)
    return None


def aggregated(row: Mapping[str, Any]) -> int:
    """Client updates a row's model took in: its replies less the late and the
    rejected ones; 0 for the initial model and a row that kept the old model."""
    if row.get("round", 0) < 1 or not row.get("model_updated", True):
        return 0
    late = row.get("clients_late") or 0
    rejected = row.get("clients_rejected") or 0
    return int((row.get("clients_succeeded") or 0) - late - rejected)


def summarize_run(rows: History, target: float) -> dict[str, Any]:
    """A run's numbers for the table (None where it has none)."""
    reached = first_reaching(rows, target)
    trained = [row for row in rows if row.get("round", 0) >= 1]
    total = rows[-1].get("virtual_time_s") if rows else None
    updates = None
    if reached is not None:
        updates = sum(aggregated(r) for r in rows if r["round"] <= reached["round"])
    late = [float(r.get("clients_late") or 0) for r in trained]
    staleness = [
        float(r["staleness_mean"])
        for r in trained
        if r.get("staleness_mean") is not None
    ]
    return {
        "time_to_target_s": time_to_accuracy(rows, target),
        "time_to_mean_target_s": time_to_running_mean(rows, target),
        "rounds_to_target": None if reached is None else int(reached["round"]),
        "updates_to_target": updates,
        "final_accuracy": final_accuracy(rows),
        "best_accuracy": max(
            (r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None),
            default=None,
        ),
        "rounds": len(trained),
        "total_virtual_s": None if total is None else float(total),
        "mean_round_s": (
            float(total) / len(trained) if trained and total is not None else None
        ),
        "late_per_round": statistics.fmean(late) if late else None,
        "staleness_mean": statistics.fmean(staleness) if staleness else None,
        "staleness_max": max(
            (
                int(r["staleness_max"])
                for r in trained
                if r.get("staleness_max") is not None
            ),
            default=None,
        ),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base`` (a run's time to accuracy over uniform's); None if either
    is missing or ``base`` is 0."""
    if value is None or base is None or base == 0:
        return None
    return value / base


def ratios(
    numbers: Mapping[str, Mapping[str, Any]],
    baseline: str = BASELINE,
    key: str = "time_to_target_s",
) -> dict[str, float | None]:
    """Each run's time to accuracy (``key``) over the baseline's (by run key)."""
    base = numbers.get(baseline, {}).get(key)
    return {name: ratio(n.get(key), base) for name, n in numbers.items()}


def minutes_text(seconds: float | None) -> str | None:
    """1234.5 -> ``20.6 min``; None -> None (the table's ``-``)."""
    return None if seconds is None else f"{seconds / 60:.1f} min"


def ratio_text(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}{TIMES}"


def table_rows(
    variants: Sequence[Variant],
    numbers: Mapping[str, Mapping[str, Any]],
    target: float,
) -> list[list[Any]]:
    """One row per variant that has numbers, in plan order."""
    times = ratios(numbers)
    mean_times = ratios(numbers, key="time_to_mean_target_s")
    rows = []
    for variant in variants:
        n = numbers.get(variant.key)
        if n is None:
            continue
        unit = "updates" if variant.asynchronous else "rounds"
        never = f"> {n['rounds']} {unit}"
        reached = n["rounds_to_target"]
        late = n["late_per_round"]
        rows.append(
            [
                variant.label,
                minutes_text(n["time_to_target_s"]) or f"not reached ({never})",
                ratio_text(times.get(variant.key)),
                minutes_text(n["time_to_mean_target_s"]) or "not reached",
                ratio_text(mean_times.get(variant.key)),
                f"{reached} {unit}" if reached is not None else never,
                n["updates_to_target"],
                percent(n["final_accuracy"]),
                percent(n["best_accuracy"]),
                minutes_text(n["total_virtual_s"]),
                None if n["mean_round_s"] is None else f"{n['mean_round_s']:.2f} s",
                "-" if variant.asynchronous or late is None else f"{late:.2f}",
            ]
        )
    return rows


def table_headers(target: float) -> list[str]:
    goal = f"{100 * target:g}%"
    return [
        "run",
        f"virtual time to {goal}",
        f"{TIMES} uniform's",
        f"virtual time to a {WINDOW}-row mean of {goal}",
        f"{TIMES} uniform's (mean)",
        f"rounds (updates) to {goal}",
        f"client updates aggregated to {goal}",
        "final accuracy",
        "best accuracy",
        "virtual time, all rounds",
        "mean round (update)",
        "replies dropped a round",
    ]


def verdict_lines(
    variants: Sequence[Variant],
    numbers: Mapping[str, Mapping[str, Any]],
    target: float,
) -> list[str]:
    """Which runs beat uniform on virtual time to ``target``, with the numbers."""
    goal = f"{100 * target:g}%"
    base = numbers.get(BASELINE)
    if base is None:
        return []
    base_time = base["time_to_target_s"]
    if base_time is None:
        return [
            f"uniform did not reach {goal} in {base['rounds']} rounds (best "
            f"{percent(base['best_accuracy'])}): no ratio to it; run more --rounds"
        ]
    times = ratios(numbers)
    others = [v for v in variants if v.key != BASELINE and v.key in numbers]
    beat = [v for v in others if (times[v.key] or math.inf) < 1]
    slower = [v for v in others if times[v.key] is not None and times[v.key] >= 1]
    never = [v for v in others if numbers[v.key]["time_to_target_s"] is None]

    def listed(chosen: Sequence[Variant]) -> str:
        return ", ".join(
            f"{v.label} {minutes_text(numbers[v.key]['time_to_target_s'])} "
            f"({ratio_text(times[v.key])})"
            for v in chosen
        )

    head = f"uniform reached {goal} at {minutes_text(base_time)} of virtual time"
    lines = []
    if beat:
        lines.append(f"Beat uniform on virtual time to {goal}: {listed(beat)}; {head}.")
    else:
        lines.append(f"None beat uniform on virtual time to {goal}; {head}.")
    if slower:
        lines.append(f"Slower than uniform: {listed(slower)}.")
    if never:
        lines.append(
            f"Never reached {goal}: "
            + ", ".join(
                f"{v.label} (best {percent(numbers[v.key]['best_accuracy'])} in "
                f"{numbers[v.key]['rounds']} "
                f"{'updates' if v.asynchronous else 'rounds'})"
                for v in never
            )
            + "."
        )
    return [*lines, *_mean_verdict(others, numbers, goal)]


def _mean_verdict(
    others: Sequence[Variant], numbers: Mapping[str, Mapping[str, Any]], goal: str
) -> list[str]:
    """The verdict's line on the steadier time (the running mean)."""
    key = "time_to_mean_target_s"
    base = numbers[BASELINE][key]
    if base is None:
        return [f"uniform's {WINDOW}-row running mean never reached {goal}."]
    times = ratios(numbers, key=key)
    faster = [v for v in others if (times[v.key] or math.inf) < 1]
    text = ", ".join(
        f"{v.label} {minutes_text(numbers[v.key][key])} ({ratio_text(times[v.key])})"
        for v in faster
    )
    return [
        f"On the {WINDOW}-row running mean of {goal} (uniform: "
        f"{minutes_text(base)}), faster than uniform: {text or 'none'}."
    ]


def device_seconds(
    seed: int,
    num_partitions: int = NUM_PARTITIONS,
    *,
    spec: DeviceSpec | None = None,
    num_examples: int = EXAMPLES_PER_CLIENT,
    model_bytes: int = MODEL_BYTES,
    epochs: int = LOCAL_EPOCHS,
) -> list[float]:
    """Each partition's full-work client time on its simulated device (download +
    E·n·compute + upload, as the clock prices it), by partition."""
    devices = draw_profiles(spec or DeviceSpec(), num_partitions, seed)
    return [
        client_seconds(
            device,
            bytes_down=model_bytes,
            bytes_up=model_bytes,
            num_examples=num_examples,
            epochs=epochs,
        )
        for device in devices
    ]


def run_config(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    """One run's ``--run-config``; every other knob keeps its pyproject default."""
    knobs = {
        "model": MODEL,
        "local-epochs": LOCAL_EPOCHS,
        "batch-size": BATCH_SIZE,
        "learning-rate": LEARNING_RATE,
        "min-fit-clients": MIN_FIT_CLIENTS,
        "num-partitions": NUM_PARTITIONS,
        "heterogeneity.enabled": True,
    }
    config = shared_config(args, STRATEGY, PARTITIONER, knobs)
    config.update(variant.knobs)
    return config


# ----------------------------------------------------------- the study
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate (``parser.error`` on a bad option); fills in the data
    folder and ``runs`` as a list of run keys, in plan order."""
    parser = study_parser(__doc__)
    add_common_arguments(
        parser,
        default_out="outputs/heterogeneity",
        default_strategies=[STRATEGY],
        default_rounds=DEFAULT_ROUNDS,
    )
    hide(parser, "--strategies")  # the runs say their strategy: refused when given
    option(
        parser, "--rounds"
    ).help = "rounds per run, server updates for fedbuff (default: %(default)s)"
    parser.add_argument(
        "--runs",
        default=",".join(BY_KEY),
        help="comma-separated runs, from %(default)s (default: all; uniform, the "
        "baseline, is always needed)",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=TARGET,
        help="test accuracy (fraction) for the time to accuracy (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.strategies is not None:
        parser.error("--strategies does not apply: --runs chooses the runs")
    args.runs = choose(parser, "--runs", args.runs, list(BY_KEY))
    if BASELINE not in args.runs:
        parser.error(f"--runs must include {BASELINE}: the baseline")
    if not 0 < args.target <= 1:
        parser.error(f"--target must be in (0, 1], got {args.target}")
    check_common_arguments(parser, args)
    return args


class HeterogeneityStudy(Study):
    """Ways around stragglers on simulated devices; the report's table, verdict,
    JSON and plot against virtual time."""

    script = "scripts/heterogeneity_study.py"
    report_name = "heterogeneity.md"
    runs_word = " runs"

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        super().__init__(args, argv)
        self.variants = [BY_KEY[key] for key in args.runs]
        self.numbers: dict[str, dict[str, Any]] = {}

    def plan(self) -> list[PlannedRun]:
        return [
            PlannedRun(v.key, v.label, run_config(self.args, v), self.clients, v.label)
            for v in self.variants
        ]

    def headline(self, planned: int) -> str:
        args = self.args
        return (
            f"{planned} runs: {', '.join(v.key for v in self.variants)}; "
            f"{MODEL.upper()} on {args.dataset} {PARTITIONER}, {NUM_PARTITIONS} "
            f"clients, C={FRACTION_FIT}, {args.rounds} rounds each; results in "
            f"{self.out}"
        )

    def after_run(self, run: PlannedRun) -> str:
        """The line after a run's: its virtual time to the target."""
        n = self.numbers.get(run.name, {})
        goal = f"{100 * self.args.target:g}%"
        reached = minutes_text(n.get("time_to_target_s"))
        text = f"      virtual time to {goal}: {reached or 'not reached'}"
        times = ratios(self.numbers)
        if run.name != BASELINE and times.get(run.name) is not None:
            text += f" ({ratio_text(times[run.name])} uniform's)"
        return text

    def write_report(
        self, results: Mapping[str, RunResult], wall_seconds: float
    ) -> None:
        """``heterogeneity.md``, ``heterogeneity.json`` and ``heterogeneity.png``."""
        args, target = self.args, self.args.target
        self.numbers = {
            name: summarize_run(run.rows, target) for name, run in results.items()
        }
        self.table = markdown_table(
            table_headers(target), table_rows(self.variants, self.numbers, target)
        )
        self.verdict = verdict_lines(self.variants, self.numbers, target)
        config = first_config(results)
        times = sorted(device_seconds(args.seed))
        on_time = sum(t <= DEADLINE_S for t in times)
        goal = f"{100 * target:g}%"
        lines = [
            "# Stragglers on simulated devices: virtual time to accuracy",
            f"{NUM_PARTITIONS} clients ({self.clients} SuperNodes), McMahan's "
            f"pathological shards, {args.rounds} rounds per run (server updates "
            f"for FedBuff); {describe_setup(config)}; simulated devices on "
            "(`heterogeneity.enabled`, every distribution at its pyproject.toml "
            "default); every other knob at its pyproject.toml default. The "
            f"devices' full-work client times (download + E·n·compute + upload, "
            f"n = {EXAMPLES_PER_CLIENT}): median {statistics.median(times):.2f} s, "
            f"10th-90th percentile {_quantile(times, 0.1):.2f}-"
            f"{_quantile(times, 0.9):.2f} s, slowest {times[-1]:.2f} s; the "
            f"deadline {DEADLINE_S:g} s is met by {on_time} of the "
            f"{len(times)} devices at full work.",
            self.table.rstrip("\n"),
            f"Virtual time to {goal}: the `virtual_time_s` of the first round (or "
            f"FedBuff server update) whose test accuracy reached {goal}; "
            f"{TIMES} uniform's: that over uniform's (below 1: faster). To a "
            f"{WINDOW}-row mean: the first row where the mean test accuracy of it "
            f"and the {WINDOW - 1} rows before reached {goal} (steadier on the "
            "shards' jumpy curves). Client "
            "updates aggregated: the replies the global model took in up to that "
            "row (late and rejected ones left out). Final and best accuracy: the "
            "global model's test accuracy after the last row and its best. Mean "
            "round: the total virtual time over the rows. Replies dropped a round: "
            "`clients_late` (past the deadline, or beyond the first 10 under "
            "over-commitment). '-': not run (yet), or does not apply.",
            "\n".join(f"- {line}" for line in self.verdict) or "- (no runs yet)",
            *self._staleness_line(),
            "![test accuracy against virtual time, one curve per run]"
            "(heterogeneity.png)",
            self.provenance(results, wall_seconds) + f"- machine: {machine()}",
        ]
        write_text(self.out / "heterogeneity.md", "\n\n".join(lines) + "\n")
        write_json(
            self.out / "heterogeneity.json", self.payload(results, config, wall_seconds)
        )
        plot_virtual_time(
            self.out / "heterogeneity.png",
            self.curves_by_label(results),
            target=target,
            title=f"{MODEL.upper()} on {args.dataset}, {PANEL_TITLE}, "
            f"{NUM_PARTITIONS} clients, C={FRACTION_FIT}, seed {args.seed}",
            zoom=zoom_minutes(self.numbers),
        )

    def _staleness_line(self) -> list[str]:
        n = self.numbers.get("fedbuff")
        if not n or n["staleness_mean"] is None:
            return []
        return [
            f"FedBuff's replies were {n['staleness_mean']:.2f} server versions "
            f"stale on average (the most: {n['staleness_max']}), each weighed "
            "(1 + s)^-0.5."
        ]

    def curves_by_label(self, results: Mapping[str, RunResult]) -> dict[str, History]:
        return {v.label: results[v.key].rows for v in self.variants if v.key in results}

    def payload(
        self,
        results: Mapping[str, RunResult],
        config: Mapping[str, Any],
        wall_seconds: float,
    ) -> dict[str, Any]:
        args = self.args
        times = ratios(self.numbers)
        runs = [
            run_entry(
                results[v.key],
                {
                    "label": v.label,
                    "knobs": dict(v.knobs),
                    **self.numbers[v.key],
                    "ratio_to_uniform": times.get(v.key),
                },
                *SERIES,
            )
            for v in self.variants
            if v.key in results
        ]
        return {
            **self.stamp(wall_seconds, with_machine=True),
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "num_supernodes": args.num_supernodes,
            "num_partitions": NUM_PARTITIONS,
            "rounds": args.rounds,
            "seed": args.seed,
            "target": args.target,
            "deadline_s": DEADLINE_S,
            "config": config,
            "verdict": list(self.verdict),
            "runs": runs,
        }


def virtual_minutes(rows: History) -> list[tuple[float, float]]:
    """(virtual minutes, test accuracy) of every row that has both."""
    return [
        (float(row["virtual_time_s"]) / 60, float(row["test_accuracy"]))
        for row in rows
        if row.get("virtual_time_s") is not None
        and row.get("test_accuracy") is not None
    ]


def running_mean_minutes(
    rows: History, window: int = WINDOW
) -> list[tuple[float, float]]:
    """(virtual minutes, mean test accuracy of that row and the ``window - 1``
    before it) from the ``window``-th row with both on: the steadier curve."""
    points = virtual_minutes(rows)
    return [
        (points[i][0], statistics.fmean(a for _, a in points[i - window + 1 : i + 1]))
        for i in range(window - 1, len(points))
    ]


def zoom_minutes(numbers: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The right panel's span: 1.5 times the latest time to the running mean of
    the target among the runs that reached it; None if none did."""
    times = [
        n["time_to_mean_target_s"]
        for n in numbers.values()
        if n.get("time_to_mean_target_s") is not None
    ]
    return 1.5 * max(times) / 60 if times else None


def plot_virtual_time(
    path: Path,
    curves: Mapping[str, History],
    *,
    target: float,
    title: str = "",
    zoom: float | None = None,
) -> None:
    """Test accuracy (%) against virtual time (minutes), one line per run (``{label:
    history rows}``), the target dashed: every row on the left; on the right, with
    ``zoom`` (minutes), the ``WINDOW``-row running mean over the first ``zoom``
    minutes. The legend beside the axes; one PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("every round (update)", virtual_minutes, None)]
    if zoom is not None:
        panels.append(
            (
                f"{WINDOW}-row running mean, first {zoom:.0f} min",
                running_mean_minutes,
                zoom,
            )
        )
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(6.5 * len(panels) + 3, 5.5),
        layout="constrained",
        squeeze=False,
    )
    palette = plt.get_cmap("tab10").colors
    for ax, (name, points, span) in zip(axes[0], panels, strict=True):
        for i, (label, rows) in enumerate(curves.items()):
            if found := points(rows):
                xs, ys = zip(*found, strict=True)
                ax.plot(
                    xs,
                    [100 * y for y in ys],
                    lw=1.3,
                    color=palette[i % len(palette)],
                    label=label if ax is axes[0][0] else "_",
                )
        ax.axhline(100 * target, color="grey", lw=1, ls="--")
        ax.annotate(
            f"target {100 * target:g}%",
            (1, 100 * target),
            xycoords=("axes fraction", "data"),
            xytext=(-4, -10),
            textcoords="offset points",
            ha="right",
            color="grey",
            fontsize=8,
        )
        ax.set(title=name, xlabel="virtual time (min)", ylabel="test accuracy (%)")
        ax.set_xlim(0, span)
        if span is not None:
            ax.set_ylim(40, None)
        ax.grid(alpha=0.3)
    if curves:
        fig.legend(loc="outside right upper", frameon=False)
    save_figure(fig, path, title)


def _quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` (statistics' inclusive method)."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(100 * q) - 1]


main = partial(run_cli, parse_args, HeterogeneityStudy)

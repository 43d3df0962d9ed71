r"""Compressed client updates: upload bytes against accuracy, IID and non-IID.

    .venv/bin/python scripts/compression_study.py

runs every update codec of ``fl_app/compression.py`` (``compression.scheme``:
``none``, ``fp16``, ``int8``, ``topk`` with ``compression.topk-fraction`` 0.01,
``sign``; error feedback on for topk and sign, as the app does by default) for 50
rounds with the 2NN, 100 virtual clients, C = 0.1, E = 1, B = 10, client lr 0.1,
``fedavg``, on Fashion-MNIST (``/usr/share/datasets/fashion-mnist``), once with
``partitioner='iid'`` and once with ``partitioner='dirichlet'``
(``dirichlet-alpha=0.5``): 10 runs on one SuperLink. It writes to
``outputs/compression/``:

* ``compression.md``: per scheme and partition, the upload bytes per round (the
  mean over rounds 1..R of ``bytes_received``, the serialized replies), how many
  times fewer than ``none``, the final test accuracy and its change against
  ``none`` in points; then whether the goals were met: >= 4x fewer upload bytes
  than ``none`` with <= 1 point of final accuracy lost (which schemes), and >= 20x
  with <= 2 points for the best scheme, on each partition;
* ``compression.png``: test accuracy against the cumulative uploaded bytes (MB,
  log scale), one curve per scheme, IID and Dirichlet side by side;
* ``compression.json``: the raw numbers (every round of every run), the goals and
  provenance;
* ``runs/<scheme>-<partitioner>/``: each finished run (history, config, logs),
  e.g. ``runs/none-iid/``, ``runs/topk-0.01-dirichlet/``.

``--topk-fractions 0.01,0.1`` runs topk once per fraction (``topk-0.01``,
``topk-0.1``); ``--schemes`` and ``--partitioners`` choose a subset (``none``, the
baseline, is always needed). Running the same command again skips the runs already
finished, so an interrupted study (Ctrl-C) resumes where it stopped. A quick try:

    .venv/bin/python scripts/compression_study.py --rounds 2 --schemes none,topk \
        --partitioners iid --num-supernodes 20 --out outputs/compression-smoke
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_app.compression import SCHEMES
from fl_app.files import write_atomically
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
    mean_per_round,
    percent,
    provenance,
    write_results,
    write_text,
)

SCRIPT = "scripts/compression_study.py"
FRACTION_FIT = 0.1  # C
MODEL = "2nn"
STRATEGY = "fedavg"
LOCAL_EPOCHS = 1  # E
BATCH_SIZE = 10  # B
LEARNING_RATE = 0.1
DIRICHLET_ALPHA = 0.5
DEFAULT_ROUNDS = 50
DEFAULT_TOPK_FRACTIONS = "0.01"
PARTITIONERS = ("iid", "dirichlet")
COLUMN = {"iid": "IID", "dirichlet": "Dirichlet"}  # table column prefix
BASELINE = "none"
TIMES = "\N{MULTIPLICATION SIGN}"
ALPHA = "\N{GREEK SMALL LETTER ALPHA}"
PANEL = {  # plot panel title
    "iid": "IID",
    "dirichlet": f"Dirichlet {ALPHA}={DIRICHLET_ALPHA:g} (non-IID)",
}
MB = 1e6  # bytes: the report's and the plot's megabyte


@dataclass(frozen=True)
class Goal:
    """At least ``ratio`` times fewer upload bytes than ``none``, losing at most
    ``points`` of final test accuracy."""

    ratio: float
    points: float

    @property
    def points_text(self) -> str:
        return f"{self.points:g} point{'' if self.points == 1 else 's'}"

    @property
    def text(self) -> str:
        return (
            f"≥ {self.ratio:g}{TIMES} fewer upload bytes than none with "
            f"≤ {self.points_text} of final accuracy lost"
        )


#: The issue's goals: some scheme at >= 4x within 1 point, and the best one at
#: >= 20x within 2 points.
GOALS: tuple[Goal, ...] = (Goal(4.0, 1.0), Goal(20.0, 2.0))


# ----------------------------------------------------------------- pure parts
@dataclass(frozen=True)
class Variant:
    """One codec of the study: a scheme, and for topk its fraction."""

    scheme: str
    topk_fraction: float | None = None

    @property
    def key(self) -> str:
        """``none``, ``int8``, ``topk-0.01``: the run-name prefix and the label."""
        if self.topk_fraction is None:
            return self.scheme
        return f"{self.scheme}-{self.topk_fraction:g}"


def variants(schemes: Sequence[str], topk_fractions: Sequence[float]) -> list[Variant]:
    """The study's codecs in ``schemes``' order, topk once per fraction."""
    chosen: list[Variant] = []
    for scheme in schemes:
        if scheme == "topk":
            chosen += [Variant(scheme, f) for f in topk_fractions]
        else:
            chosen.append(Variant(scheme))
    return chosen


def run_name(variant: Variant, partitioner: str) -> str:
    return f"{variant.key}-{partitioner}"


def run_config(
    args: argparse.Namespace, variant: Variant, partitioner: str
) -> dict[str, Any]:
    """One run's ``--run-config``; every other knob keeps its pyproject default."""
    config: dict[str, Any] = {
        "num-server-rounds": args.rounds,
        "fraction-fit": FRACTION_FIT,
        # Round 1 waits for every client, so each round samples C of all of them.
        "min-available-clients": args.num_supernodes,
        "strategy": STRATEGY,
        "model": MODEL,
        "local-epochs": LOCAL_EPOCHS,
        "batch-size": BATCH_SIZE,
        "learning-rate": LEARNING_RATE,
        "partitioner": partitioner,
        "dataset": args.dataset,
        "data-dir": args.data_dir,
        "seed": args.seed,
        "compression.scheme": variant.scheme,
    }
    if partitioner == "dirichlet":
        config["dirichlet-alpha"] = DIRICHLET_ALPHA
    if variant.topk_fraction is not None:
        config["compression.topk-fraction"] = variant.topk_fraction
    return config


def upload_per_round(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean upload bytes per round over rounds 1..R (``bytes_received``)."""
    return mean_per_round(rows, "bytes_received")


def cumulative_upload(
    rows: Sequence[Mapping[str, Any]],
) -> list[tuple[float, float]]:
    """(bytes uploaded up to and including the round, its test accuracy) for every
    round from 1 on (round 0, the initial model, has uploaded nothing)."""
    points = []
    total = 0.0
    for row in rows:
        if row["round"] < 1:
            continue
        total += float(row.get("bytes_received") or 0)
        if row.get("test_accuracy") is not None:
            points.append((total, float(row["test_accuracy"])))
    return points


def summarize(
    variants: Sequence[Variant],
    partitioners: Sequence[str],
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """{partitioner: {variant key: numbers}} for the runs in ``histories`` (run
    name -> rows); a run not there has ``None`` numbers. Ratio and change are
    against ``none`` on the same partition: upload ratio = none's upload per round
    over the variant's; accuracy change = variant minus none, in points."""
    numbers: dict[str, dict[str, dict[str, Any]]] = {}
    for p in partitioners:
        entries: dict[str, dict[str, Any]] = {}
        for variant in variants:
            rows = histories.get(run_name(variant, p)) or []
            entries[variant.key] = {
                "upload_bytes_per_round": upload_per_round(rows),
                "download_bytes_per_round": mean_per_round(rows, "bytes_sent"),
                "final_accuracy": final_accuracy(rows),
            }
        base = entries.get(BASELINE, {})
        for entry in entries.values():
            upload, base_upload = (
                entry["upload_bytes_per_round"],
                base.get("upload_bytes_per_round"),
            )
            entry["upload_ratio"] = (  # None too when no bytes were recorded
                base_upload / upload if upload and base_upload else None
            )
            accuracy, base_accuracy = (
                entry["final_accuracy"],
                base.get("final_accuracy"),
            )
            # Accuracy is a count over 10,000 test images: 2 decimals of a point
            # are exact, and rounding drops float noise (-0.9999999 is -1).
            entry["accuracy_change_points"] = (
                None
                if accuracy is None or base_accuracy is None
                else round(100 * (accuracy - base_accuracy), 2)
            )
        numbers[p] = entries
    return numbers


def size_text(nbytes: float | None) -> str | None:
    """7_968_400 -> ``7.97 MB``; 159_400 -> ``159.4 kB``; None -> None."""
    if nbytes is None:
        return None
    if nbytes >= MB:
        return f"{nbytes / MB:.2f} MB"
    if nbytes >= 1e3:
        return f"{nbytes / 1e3:.1f} kB"
    return f"{nbytes:.0f} B"


def ratio_text(ratio: float | None) -> str | None:
    """3.994 -> ``3.99``, 31.94 -> ``31.9``, 203.4 -> ``203``, each followed by
    the multiplication sign: three figures, so a ratio just under a goal does not
    read as the goal itself."""
    if ratio is None:
        return None
    digits = 2 if ratio < 10 else 1 if ratio < 100 else 0
    return f"{ratio:.{digits}f}{TIMES}"


def points_text(points: float | None) -> str | None:
    """-0.8 -> ``-0.80``, 0.31 -> ``+0.31``."""
    return None if points is None else f"{points:+.2f}"


def study_table(
    variants: Sequence[Variant],
    partitioners: Sequence[str],
    numbers: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> str:
    """One row per codec; per partition its upload per round, the ratio against
    ``none``, the final accuracy and its change against ``none``."""
    headers = ["scheme"]
    for p in partitioners:
        headers += [
            f"{COLUMN[p]}: upload per round",
            f"{COLUMN[p]}: fewer bytes than none",
            f"{COLUMN[p]}: final accuracy",
            f"{COLUMN[p]}: accuracy vs none (points)",
        ]
    rows: list[list[Any]] = []
    for variant in variants:
        row: list[Any] = [variant.key]
        for p in partitioners:
            entry = numbers[p][variant.key]
            ran = entry["final_accuracy"] is not None
            baseline = variant.key == BASELINE and ran
            row += [
                size_text(entry["upload_bytes_per_round"]),
                "baseline" if baseline else ratio_text(entry["upload_ratio"]),
                percent(entry["final_accuracy"], 2) if ran else None,
                "baseline"
                if baseline
                else points_text(entry["accuracy_change_points"]),
            ]
        rows.append(row)
    return markdown_table(headers, rows)


def meets(entry: Mapping[str, Any], goal: Goal) -> bool:
    ratio, change = entry["upload_ratio"], entry["accuracy_change_points"]
    return (
        ratio is not None
        and change is not None
        and ratio >= goal.ratio
        and -change <= goal.points
    )


def check_goal(entries: Mapping[str, Mapping[str, Any]], goal: Goal) -> dict[str, Any]:
    """Which codecs meet ``goal`` on one partition (highest ratio first) and
    whether it is met: True if one does, False if none does and every codec has
    finished (``none`` too), None while runs are missing."""
    compressed = {k: e for k, e in entries.items() if k != BASELINE}
    known = {
        k: e
        for k, e in compressed.items()
        if e["upload_ratio"] is not None and e["accuracy_change_points"] is not None
    }
    meeting = sorted(
        (k for k, e in known.items() if meets(e, goal)),
        key=lambda k: -known[k]["upload_ratio"],
    )
    finished = all(e["final_accuracy"] is not None for e in entries.values())
    if meeting:
        met: bool | None = True
    elif compressed and finished:
        met = False
    else:
        met = None
    return {
        "ratio": goal.ratio,
        "points": goal.points,
        "met": met,
        "schemes": meeting,
        "best": meeting[0] if meeting else None,
    }


def goals(
    numbers: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """{partitioner: [check_goal of each of GOALS]}."""
    return {
        p: [check_goal(entries, goal) for goal in GOALS]
        for p, entries in numbers.items()
    }


def verdicts(
    numbers: Mapping[str, Mapping[str, Mapping[str, Any]]],
    checked: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[str]:
    """The report's lines on the goals: one overall, then one per goal and
    partition."""

    def named(key: str, entry: Mapping[str, Any]) -> str:
        ratio = ratio_text(entry["upload_ratio"])
        change = points_text(entry["accuracy_change_points"])
        return f"{key} ({ratio}, {change} points)"

    state = {}
    for p, results in checked.items():
        if all(r["met"] for r in results):
            state[p] = True
        elif any(r["met"] is False for r in results):
            state[p] = False
        else:
            state[p] = None
    met = [COLUMN[p] for p, s in state.items() if s is True]
    failed = [COLUMN[p] for p, s in state.items() if s is False]
    open_ = [COLUMN[p] for p, s in state.items() if s is None]
    parts = []
    if met:
        parts.append(f"met on {' and '.join(met)}")
    if failed:
        parts.append(f"not met on {' and '.join(failed)}")
    if open_:
        parts.append(f"open on {' and '.join(open_)} (runs missing)")
    lines = [
        f"Goals: {GOALS[0].text} (some scheme), and {GOALS[1].text} (the best "
        f"scheme): {'; '.join(parts)}."
    ]
    for p, results in checked.items():
        entries = numbers[p]
        for goal, result in zip(GOALS, results, strict=True):
            head = f"{COLUMN[p]}, {goal.text}:"
            if result["met"]:
                found = ", ".join(named(k, entries[k]) for k in result["schemes"])
                lines.append(f"{head} met by {found}")
                continue
            text = "not met" if result["met"] is False else "open (runs missing)"
            compressed = {
                k: e
                for k, e in entries.items()
                if k != BASELINE and e["upload_ratio"] is not None
            }
            within = {
                k: e
                for k, e in compressed.items()
                if e["accuracy_change_points"] is not None
                and -e["accuracy_change_points"] <= goal.points
            }
            best_within = _highest_ratio(within)
            best = _highest_ratio(compressed)
            if best_within is not None:
                text += (
                    f"; highest ratio within {goal.points_text}: "
                    f"{named(best_within, entries[best_within])}"
                )
            if best is not None and best != best_within:
                text += f"; highest ratio overall: {named(best, entries[best])}"
            lines.append(f"{head} {text}")
    return lines


def _highest_ratio(entries: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The key of the entry with the highest upload ratio; None if none."""
    if not entries:
        return None
    return max(entries, key=lambda key: entries[key]["upload_ratio"])


def plot_upload_curves(
    path: Path,
    panels: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    *,
    title: str = "",
) -> None:
    """Test accuracy (%) against the cumulative upload (MB, log scale), one panel
    per key of ``panels`` (``{panel title: {curve label: history rows}}``), into
    one PNG; a label keeps its colour in every panel. Written atomically.
    (``fl_app.studies.driver.plot_curves`` plots against the round only.)"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    for curves in panels.values():
        labels += [label for label in curves if label not in labels]
    palette = plt.get_cmap("tab10").colors
    colour = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    count = max(1, len(panels))
    fig, axes = plt.subplots(
        1,
        count,
        figsize=(5.5 * count + 0.5, 5.25),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, (panel, curves) in zip(axes[0], panels.items(), strict=False):
        plotted = False
        for label, rows in curves.items():
            points = [(b / MB, 100 * a) for b, a in cumulative_upload(rows) if b > 0]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, lw=1.6, marker="o", ms=2.5, color=colour[label])
                plotted = True
        if plotted:
            ax.set_xscale("log")
        ax.set(title=panel, xlabel="uploaded so far (MB, log scale)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("test accuracy (%)")
    handles = [
        plt.Line2D([], [], lw=1.6, color=colour[label], label=label) for label in labels
    ]
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 6),
            frameon=False,
        )
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, buffer.getvalue())


def machine() -> str:
    return (
        f"{platform.node()}: {platform.platform()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


# ----------------------------------------------------------------- command line
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate (``parser.error`` on a bad option); fills in the data
    folder, and ``schemes``, ``topk_fractions`` and ``partitioners`` as lists."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(
        parser,
        default_out="outputs/compression",
        default_strategies=[STRATEGY],
        default_rounds=DEFAULT_ROUNDS,
    )
    # The study is FedAvg's: the shared --strategies is hidden, and refused.
    for action in parser._actions:
        if "--strategies" in action.option_strings:
            action.help = argparse.SUPPRESS
            action.default = None
        if "--rounds" in action.option_strings:
            action.help = "rounds per run (default: %(default)s)"
    parser.add_argument(
        "--schemes",
        default=",".join(SCHEMES),
        help="comma-separated compression.scheme values, from %(default)s "
        "(default: all; none, the baseline, is always needed)",
    )
    parser.add_argument(
        "--topk-fractions",
        default=DEFAULT_TOPK_FRACTIONS,
        help="comma-separated compression.topk-fraction values in (0, 1], one topk "
        "run each (default: %(default)s)",
    )
    parser.add_argument(
        "--partitioners",
        default=",".join(PARTITIONERS),
        help=f"comma-separated, from %(default)s (dirichlet with alpha "
        f"{DIRICHLET_ALPHA:g}; default: both)",
    )
    args = parser.parse_args(argv)
    if args.strategies is not None:
        parser.error(f"--strategies does not apply: the study runs {STRATEGY}")
    args.schemes = _choose(parser, "--schemes", args.schemes, list(SCHEMES))
    if BASELINE not in args.schemes:
        parser.error(f"--schemes must include {BASELINE}: the baseline")
    args.topk_fractions = _fractions(parser, args.topk_fractions)
    args.partitioners = _choose(
        parser, "--partitioners", args.partitioners, list(PARTITIONERS)
    )
    args.strategies = STRATEGY  # what the shared check expects
    check_common_arguments(parser, args, [STRATEGY])
    return args


def _choose(
    parser: argparse.ArgumentParser, option: str, text: str, allowed: list[str]
) -> list[str]:
    """The comma-separated names in ``text``, in ``allowed``'s order."""
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in allowed]
    if unknown or not chosen:
        parser.error(
            f"{option}: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(allowed)}"
        )
    return [name for name in allowed if name in chosen]


def _fractions(parser: argparse.ArgumentParser, text: str) -> list[float]:
    """``--topk-fractions``: numbers in (0, 1], in the given order, each once (by
    the run name it gives)."""
    fractions: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            fraction = float(item)
        except ValueError:
            parser.error(f"--topk-fractions: {item!r} is not a number")
        if not (math.isfinite(fraction) and 0 < fraction <= 1):
            parser.error(f"--topk-fractions: {item} is not in (0, 1]")
        fractions.setdefault(Variant("topk", fraction).key, fraction)
    if not fractions:
        parser.error("--topk-fractions: none given")
    return list(fractions.values())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    codecs = variants(args.schemes, args.topk_fractions)
    plan = [(v, p) for p in args.partitioners for v in codecs]
    command = command_line(SCRIPT, argv)
    date = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    started = time.monotonic()
    print(
        f"{len(plan)} runs: {', '.join(v.key for v in codecs)} x "
        f"{', '.join(args.partitioners)}, {MODEL.upper()}, {args.num_supernodes} "
        f"clients, C={FRACTION_FIT}, {STRATEGY}, {args.rounds} rounds; results in "
        f"{args.out.resolve()}",
        flush=True,
    )
    study = Study(
        args.out,
        total=len(plan),
        cpus_per_client=args.cpus_per_client,
        run_timeout=args.run_timeout,
        echo=args.verbose,
    )
    report = Report(args, codecs, command, date, len(plan))

    outcome = 0
    try:
        with study:
            for variant, partitioner in plan:
                study.run(
                    run_name(variant, partitioner),
                    run_config(args, variant, partitioner),
                    args.num_supernodes,
                    label=f"{variant.key} {partitioner}",
                )
                report.write(study.results, time.monotonic() - started)
                print(report.progress(variant, partitioner), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept", file=sys.stderr)
        outcome = 130
    except (RuntimeError, TimeoutError) as error:  # StudyError, or flwr's
        print(f"compression_study: {error}", file=sys.stderr)
        outcome = 1
    if study.results:
        report.write(study.results, time.monotonic() - started)
    out = args.out.resolve()
    print(f"{out / 'compression.md'} ({len(study.results)} of {len(plan)})")
    print(report.table, end="")
    for line in report.verdict:
        print(line)
    print(f"wall time {clock(time.monotonic() - started)}")
    return outcome


class Report:
    """``compression.md``, ``compression.json`` and ``compression.png`` from the
    runs so far."""

    def __init__(
        self,
        args: argparse.Namespace,
        codecs: list[Variant],
        command: str,
        date: str,
        planned: int,
    ) -> None:
        self.args = args
        self.codecs = codecs
        self.command = command
        self.date = date
        self.planned = planned
        self.table = ""
        self.verdict: list[str] = []
        self.numbers: dict[str, dict[str, dict[str, Any]]] = {}

    def progress(self, variant: Variant, partitioner: str) -> str:
        """The line after a run's: its upload per round, against none's."""
        entry = self.numbers.get(partitioner, {}).get(variant.key, {})
        upload = size_text(entry.get("upload_bytes_per_round")) or "-"
        text = f"      upload {upload} per round"
        if variant.key != BASELINE and entry.get("upload_ratio") is not None:
            text += (
                f", {ratio_text(entry['upload_ratio'])} fewer than none, accuracy "
                f"{points_text(entry['accuracy_change_points'])} points vs none"
            )
        return text

    def write(self, results: dict[str, RunResult], wall_seconds: float) -> None:
        args = self.args
        out = args.out.resolve()
        histories = {name: run.rows for name, run in results.items()}
        self.numbers = summarize(self.codecs, args.partitioners, histories)
        checked = goals(self.numbers)
        self.table = study_table(self.codecs, args.partitioners, self.numbers)
        self.verdict = verdicts(self.numbers, checked)
        config = next(iter(results.values())).config if results else {}
        partitions = " and ".join(
            "IID" if p == "iid" else f"Dirichlet ({ALPHA} = {DIRICHLET_ALPHA:g})"
            for p in args.partitioners
        )
        topk = ", ".join(f"{f:g}" for f in args.topk_fractions)
        topk = f" (k = {topk})" if "topk" in args.schemes else ""
        lines = [
            "# Compressed client updates: upload bytes against accuracy",
            f"{args.num_supernodes} virtual clients, {STRATEGY}, {args.rounds} "
            f"rounds, {partitions}; {describe_setup(config)}; every other knob at "
            "its pyproject.toml default. Each client sends its update Δ = w_k - w_t "
            "coded by `compression.scheme` (fl_app/compression.py): none, float32; "
            "fp16, half precision; int8, 8-bit stochastic rounding and a float32 "
            "scale per tensor; topk-k, the round(k·d) largest coordinates of each "
            f"tensor as uint32 index and float32 value{topk}; sign, one bit "
            "per coordinate and a float32 scale per tensor. topk and sign run with "
            "error feedback (the app's default for them).",
            self.table.rstrip("\n"),
            "Upload per round: the mean over rounds 1..R of `bytes_received`, the "
            "serialized replies of the round's clients (payload and Flower's "
            "message overhead; MB = 10^6 bytes). Fewer bytes than none: none's "
            "upload per round over the scheme's, on the same partition. Final "
            "accuracy: the global model's test accuracy after the last round; "
            "accuracy vs none: the scheme's minus none's, in percentage points "
            "(negative = lost). '-': not run (yet).",
            "\n".join(f"- {line}" for line in self.verdict),
            "![test accuracy against cumulative upload, per partition]"
            "(compression.png)",
            provenance(self.command, self.date, wall_seconds, results, self.planned)
            + f"- machine: {machine()}",
        ]
        write_text(out / "compression.md", "\n\n".join(lines) + "\n")
        write_results(
            out / "compression.json",
            self.payload(results, checked, config, wall_seconds),
        )
        plot_upload_curves(
            out / "compression.png",
            {
                PANEL[p]: {
                    v.key: results[run_name(v, p)].rows
                    for v in self.codecs
                    if run_name(v, p) in results
                }
                for p in args.partitioners
            },
            title=f"{MODEL.upper()} on {args.dataset}, {args.num_supernodes} "
            f"clients, C={FRACTION_FIT}, {STRATEGY}",
        )

    def payload(
        self,
        results: dict[str, RunResult],
        checked: Mapping[str, Any],
        config: Mapping[str, Any],
        wall_seconds: float,
    ) -> dict[str, Any]:
        args = self.args
        runs = []
        for p in args.partitioners:
            for variant in self.codecs:
                run = results.get(run_name(variant, p))
                if run is None:
                    continue
                runs.append(
                    {
                        "name": run.name,
                        "scheme": variant.scheme,
                        "topk_fraction": variant.topk_fraction,
                        "partitioner": p,
                        **self.numbers[p][variant.key],
                        "seconds": run.seconds,
                        "reused": run.skipped,
                        "run_dir": str(run.run_dir),
                        "bytes_received": [
                            row.get("bytes_received") for row in run.rows
                        ],
                        "bytes_sent": [row.get("bytes_sent") for row in run.rows],
                        "test_accuracy": [row["test_accuracy"] for row in run.rows],
                        "test_loss": [row.get("test_loss") for row in run.rows],
                    }
                )
        return {
            "command": self.command,
            "date": self.date,
            "machine": machine(),
            "wall_seconds": wall_seconds,
            "planned_runs": self.planned,
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "num_supernodes": args.num_supernodes,
            "rounds": args.rounds,
            "seed": args.seed,
            "fraction_fit": FRACTION_FIT,
            "strategy": STRATEGY,
            "dirichlet_alpha": DIRICHLET_ALPHA,
            "schemes": [v.key for v in self.codecs],
            "topk_fractions": args.topk_fractions,
            "config": config,
            "goals": checked,
            "verdict": self.verdict,
            "runs": runs,
        }


if __name__ == "__main__":
    sys.exit(main())

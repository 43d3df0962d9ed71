"""What the studies' reports are made of: numbers from history rows, markdown, plots,
provenance. Pure helpers (no runs, no Flower); files go through ``fl_app.files``.
"""

from __future__ import annotations

import io
import math
import os
import platform
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_app.files import write_atomically


@dataclass
class RunResult:
    """A finished run of a study: its history rows and how long it took."""

    name: str
    label: str
    rows: list[dict[str, Any]]
    seconds: float
    skipped: bool  # finished by an earlier invocation
    run_dir: Path
    config: dict[str, Any]  # the run's full configuration (the ServerApp's config.json)


#: What the studies share: C, the fraction of the clients sampled each round; the
#: model and strategy of those that fix them; the partitions' names in a table's
#: columns and a plot's panels; the "times" sign.
FRACTION_FIT = 0.1
MODEL = "2nn"
STRATEGY = "fedavg"
COLUMN = {"iid": "IID", "shards": "shards", "dirichlet": "Dirichlet"}
PANEL = {"iid": "IID", "shards": "shards (non-IID)"}
TIMES = "\N{MULTIPLICATION SIGN}"

History = Sequence[Mapping[str, Any]]
#: (x, test accuracy as a fraction) points of one curve, from its history rows.
Points = Callable[[History], list[tuple[float, float]]]


def rounds_to_target(rows: History, target: float) -> int | None:
    """The first round whose test accuracy (a fraction) is >= ``target``; None if
    no round reached it."""
    for row in rows:
        accuracy = row.get("test_accuracy")
        if accuracy is not None and accuracy >= target:
            return int(row["round"])
    return None


def final_accuracy(rows: History) -> float | None:
    """Test accuracy (fraction) of the last round, None if there is none."""
    if not rows or rows[-1].get("test_accuracy") is None:
        return None
    return float(rows[-1]["test_accuracy"])


def mean_per_round(rows: History, key: str) -> float | None:
    """Mean of ``key`` over the training rounds (round 0, the initial model, left
    out); None if no round has it."""
    values = [
        float(row[key])
        for row in rows
        if row["round"] >= 1 and row.get(key) is not None
    ]
    return sum(values) / len(values) if values else None


def points(fraction: float | None, base: float | None) -> float | None:
    """``fraction`` minus ``base`` in percentage points, None if either is None.
    Accuracy is a count over 10,000 test images: 2 decimals of a point are exact,
    and rounding drops float noise (-0.9999999 is -1)."""
    if fraction is None or base is None:
        return None
    return round(100 * (fraction - base), 2)


def percent(fraction: float | None, digits: int = 1) -> str:
    """0.8412 -> ``84.1%``; None -> ``-``."""
    if fraction is None or not math.isfinite(fraction):
        return "-"
    return f"{100 * fraction:.{digits}f}%"


def clock(seconds: float) -> str:
    """3725 -> ``1 h 02 min 05 s``; 65 -> ``1 min 05 s``; 5.2 -> ``5 s``."""
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; None is shown as ``-``, ``|`` escaped."""

    def cell(value: Any) -> str:
        text = "-" if value is None else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(
                f"row has {len(row)} cells, the table {len(headers)} columns: {row!r}"
            )
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def by_round(rows: History) -> list[tuple[float, float]]:
    """(round, test accuracy) of every round that has an accuracy."""
    return [
        (row["round"], row["test_accuracy"])
        for row in rows
        if row.get("test_accuracy") is not None
    ]


def plot_curves(
    path: Path,
    panels: Mapping[str, Mapping[str, History]],
    *,
    title: str = "",
    targets: Mapping[str, float] | None = None,
    points: Points = by_round,
    xlabel: str = "round",
    log_x: bool = False,
) -> None:
    """Test accuracy (%) of many runs, one panel per key of ``panels`` (``{panel
    title: {curve label: history rows}}``), into one PNG, written atomically.

    ``points`` gives a curve's (x, accuracy) from its rows: by round unless told.
    A label keeps its colour and line style in every panel, and one legend below
    the panels lists them all. ``targets`` (``{panel title: accuracy fraction}``)
    draws a dashed horizontal line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    for curves in panels.values():
        labels += [label for label in curves if label not in labels]
    palette = plt.get_cmap("tab10").colors  # beyond 10 labels: dashed, then ...
    styles = ("-", "--", "-.", ":")
    look = {
        label: {
            "color": palette[i % len(palette)],
            "ls": styles[(i // len(palette)) % len(styles)],
        }
        for i, label in enumerate(labels)
    }
    count = max(1, len(panels))
    fig, axes = plt.subplots(
        1,
        count,
        figsize=(5.5 * count + 0.5, 5.0 + 0.25 * math.ceil(len(labels) / 4)),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, (panel, curves) in zip(axes[0], panels.items(), strict=False):
        plotted = False
        for label, rows in curves.items():
            if found := points(rows):
                xs, ys = zip(*found, strict=True)
                ys = tuple(100 * y for y in ys)
                ax.plot(xs, ys, lw=1.6, marker="o", ms=2.5, label=label, **look[label])
                plotted = True
        if targets and panel in targets:
            ax.axhline(
                100 * targets[panel], color="grey", lw=1, ls="--", label="_target"
            )
            ax.annotate(
                f"target {100 * targets[panel]:g}%",
                (0, 100 * targets[panel]),
                xycoords=("axes fraction", "data"),
                xytext=(4, 3),
                textcoords="offset points",
                color="grey",
                fontsize=8,
            )
        ax.set(title=panel, xlabel=xlabel)
        if log_x and plotted:
            ax.set_xscale("log")
        elif not log_x:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, which="both" if log_x else "major")
    axes[0][0].set_ylabel("test accuracy (%)")
    handles = [
        plt.Line2D([], [], lw=1.6, label=label, **look[label]) for label in labels
    ]
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 4 if count == 1 else 6),
            frameon=False,
        )
    save_figure(fig, path, title)


def save_figure(fig: Any, path: Path, title: str = "") -> None:
    """``fig`` (with ``title`` on top) as a PNG at ``path``, written whole, then
    closed."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, buffer.getvalue())


def run_entry(
    run: RunResult, fields: Mapping[str, Any], *series: str
) -> dict[str, Any]:
    """A run in a report's JSON: its name, ``fields``, its time and folder, then
    each history key of ``series`` as a list over the rounds."""
    return {
        "name": run.name,
        **fields,
        "seconds": run.seconds,
        "reused": run.skipped,
        "run_dir": str(run.run_dir),
        **{key: [row.get(key) for row in run.rows] for key in series},
    }


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command as one would retype it: ``python scripts/x.py --rounds 2``."""
    return shlex.join(["python", script, *argv])


def machine() -> str:
    """This machine in one line, for a report's provenance."""
    return (
        f"{platform.node()}: {platform.platform()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


def describe_setup(config: Mapping[str, Any]) -> str:
    """One line on the training set-up, from a run's ``config.json``."""
    if not config:
        return ""
    batch = config.get("batch_size") or "∞"
    return (
        f"{config.get('model')} on {config.get('dataset')}, "
        f"C={config.get('fraction_fit')}, E={config.get('local_epochs')}, "
        f"B={batch}, client lr {config.get('learning_rate')}, "
        f"seed {config.get('seed')}"
    )


def first_config(results: Mapping[str, RunResult]) -> dict[str, Any]:
    """The configuration of the first finished run, ``{}`` before any."""
    return next(iter(results.values())).config if results else {}


def provenance(
    command: str,
    date: str,
    wall_seconds: float,
    results: Mapping[str, RunResult],
    planned: int,
) -> str:
    """The report's closing lines: command, date, wall time, what was reused."""
    reused = sum(result.skipped for result in results.values())
    run_seconds = sum(result.seconds for result in results.values())
    lines = [
        f"- command: `{command}`",
        f"- date: {date}",
        f"- wall time: {clock(wall_seconds)} for this invocation "
        f"({len(results)} of {planned} runs finished, {reused} of them reused from "
        f"an earlier invocation); the runs' own times add up to {clock(run_seconds)}",
        "- each run's history, config and logs: `runs/<name>/`",
    ]
    if len(results) < planned:
        lines.append(
            f"- **incomplete**: {planned - len(results)} runs missing; run the same "
            "command again to finish (finished runs are skipped)"
        )
    return "\n".join(lines) + "\n"

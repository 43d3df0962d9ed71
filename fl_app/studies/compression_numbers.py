"""The compression study's numbers, without runs: codecs and run names, upload and
accuracy against ``none``, the table, the goals; ``compression`` reports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fl_app.studies.report import (
    COLUMN,
    TIMES,
    final_accuracy,
    markdown_table,
    mean_per_round,
    percent,
    points,
)

PARTITIONERS = ("iid", "dirichlet")
BASELINE = "none"
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
            change = points(entry["final_accuracy"], base.get("final_accuracy"))
            entry["accuracy_change_points"] = change
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

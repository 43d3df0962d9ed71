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

# The study's plan and report; its numbers are compression_numbers'.
from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from functools import partial
from operator import attrgetter
from pathlib import Path
from typing import Any

from fl_app.compression import SCHEMES
from fl_app.files import write_json, write_text
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
from fl_app.studies.compression_numbers import (
    BASELINE,
    MB,
    PARTITIONERS,
    Variant,
    cumulative_upload,
    goals,
    points_text,
    ratio_text,
    run_name,
    size_text,
    study_table,
    summarize,
    variants,
    verdicts,
)
from fl_app.studies.driver import PlannedRun, RunResult, Study
from fl_app.studies.report import (
    FRACTION_FIT,
    MODEL,
    PANEL,
    STRATEGY,
    History,
    describe_setup,
    first_config,
    machine,
    plot_curves,
    run_entry,
)

LOCAL_EPOCHS = 1  # E
BATCH_SIZE = 10  # B
LEARNING_RATE = 0.1
DIRICHLET_ALPHA = 0.5
DEFAULT_ROUNDS = 50
DEFAULT_TOPK_FRACTIONS = "0.01"
ALPHA = "\N{GREEK SMALL LETTER ALPHA}"
KEY = attrgetter("key")  # a codec's label
#: What a run's JSON has per round.
SERIES = ("bytes_received", "bytes_sent", "test_accuracy", "test_loss")
PANEL = {**PANEL, "dirichlet": f"Dirichlet {ALPHA}={DIRICHLET_ALPHA:g} (non-IID)"}


def run_config(
    args: argparse.Namespace, variant: Variant, partitioner: str
) -> dict[str, Any]:
    """One run's ``--run-config``; every other knob keeps its pyproject default."""
    knobs = {"model": MODEL, "local-epochs": LOCAL_EPOCHS, "batch-size": BATCH_SIZE}
    knobs["learning-rate"] = LEARNING_RATE
    config = shared_config(args, STRATEGY, partitioner, knobs)
    config["compression.scheme"] = variant.scheme
    if partitioner == "dirichlet":
        config["dirichlet-alpha"] = DIRICHLET_ALPHA
    if variant.topk_fraction is not None:
        config["compression.topk-fraction"] = variant.topk_fraction
    return config


def plot_upload_curves(
    path: Path, panels: Mapping[str, Mapping[str, History]], *, title: str = ""
) -> None:
    """Test accuracy (%) against the cumulative upload (MB, log scale), one panel
    per key of ``panels`` (``{panel title: {curve label: history rows}}``)."""
    plot_curves(
        path,
        panels,
        title=title,
        points=lambda rows: [(b / MB, a) for b, a in cumulative_upload(rows) if b > 0],
        xlabel="uploaded so far (MB, log scale)",
        log_x=True,
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate (``parser.error`` on a bad option); fills in the data
    folder, and ``schemes``, ``topk_fractions`` and ``partitioners`` as lists."""
    parser = study_parser(__doc__)
    add_common_arguments(
        parser,
        default_out="outputs/compression",
        default_strategies=[STRATEGY],
        default_rounds=DEFAULT_ROUNDS,
    )
    hide(parser, "--strategies")  # the study is FedAvg's: refused when given
    option(parser, "--rounds").help = "rounds per run (default: %(default)s)"
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
    args.schemes = choose(parser, "--schemes", args.schemes, list(SCHEMES))
    if BASELINE not in args.schemes:
        parser.error(f"--schemes must include {BASELINE}: the baseline")
    args.topk_fractions = _fractions(parser, args.topk_fractions)
    args.partitioners = choose(
        parser, "--partitioners", args.partitioners, PARTITIONERS
    )
    check_common_arguments(parser, args)
    return args


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


class CompressionStudy(Study):
    """Codecs x partitioners; the report's table, goals, JSON and plot."""

    script = "scripts/compression_study.py"
    report_name = "compression.md"

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        super().__init__(args, argv)
        self.codecs = variants(args.schemes, args.topk_fractions)
        self.numbers: dict[str, dict[str, dict[str, Any]]] = {}

    def plan(self) -> list[PlannedRun]:
        config = partial(run_config, self.args)
        return self.grid(self.codecs, self.args.partitioners, run_name, config, KEY)

    def headline(self, planned: int) -> str:
        args = self.args
        return (
            f"{planned} runs: {', '.join(v.key for v in self.codecs)} x "
            f"{', '.join(args.partitioners)}, {MODEL.upper()}, {args.num_supernodes} "
            f"clients, C={FRACTION_FIT}, {STRATEGY}, {args.rounds} rounds; results "
            f"in {self.out}"
        )

    def after_run(self, run: PlannedRun) -> str:
        """The line after a run's: its upload per round, against none's."""
        key, partitioner = run.label.split(" ")
        entry = self.numbers.get(partitioner, {}).get(key, {})
        upload = size_text(entry.get("upload_bytes_per_round")) or "-"
        text = f"      upload {upload} per round"
        if key != BASELINE and entry.get("upload_ratio") is not None:
            text += (
                f", {ratio_text(entry['upload_ratio'])} fewer than none, accuracy "
                f"{points_text(entry['accuracy_change_points'])} points vs none"
            )
        return text

    def write_report(
        self, results: Mapping[str, RunResult], wall_seconds: float
    ) -> None:
        """``compression.md``, ``compression.json`` and ``compression.png``."""
        args = self.args
        histories = {name: run.rows for name, run in results.items()}
        self.numbers = summarize(self.codecs, args.partitioners, histories)
        checked = goals(self.numbers)
        self.table = study_table(self.codecs, args.partitioners, self.numbers)
        self.verdict = verdicts(self.numbers, checked)
        config = first_config(results)
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
            self.provenance(results, wall_seconds) + f"- machine: {machine()}",
        ]
        write_text(self.out / "compression.md", "\n\n".join(lines) + "\n")
        write_json(
            self.out / "compression.json",
            self.payload(results, checked, config, wall_seconds),
        )
        plot_upload_curves(
            self.out / "compression.png",
            self.curves(results, PANEL.__getitem__),
            title=f"{MODEL.upper()} on {args.dataset}, {args.num_supernodes} "
            f"clients, C={FRACTION_FIT}, {STRATEGY}",
        )

    def payload(
        self,
        results: Mapping[str, RunResult],
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
                fields = {
                    "scheme": variant.scheme,
                    "topk_fraction": variant.topk_fraction,
                    "partitioner": p,
                    **self.numbers[p][variant.key],
                }
                runs.append(run_entry(run, fields, *SERIES))
        return {
            **self.stamp(wall_seconds, with_machine=True),
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


main = partial(run_cli, parse_args, CompressionStudy)

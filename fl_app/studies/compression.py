"""The compression study, plan and report: every update codec on IID and Dirichlet
data (runs ``<codec>-<partitioner>``); ``compression.md`` (upload, ratio and
accuracy against ``none``, the goals), ``.json``, ``.png``. Its numbers are
``compression_numbers``'. CLI: scripts/compression_study.py.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
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
    History,
    command_line,
    describe_setup,
    first_config,
    machine,
    plot_curves,
    provenance,
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
ALPHA = "\N{GREEK SMALL LETTER ALPHA}"
PANEL = {  # plot panel title
    "iid": "IID",
    "dirichlet": f"Dirichlet {ALPHA}={DIRICHLET_ALPHA:g} (non-IID)",
}


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


def parse_args(
    argv: Sequence[str], description: str | None = None
) -> argparse.Namespace:
    """Parse and validate (``parser.error`` on a bad option); fills in the data
    folder, and ``schemes``, ``topk_fractions`` and ``partitioners`` as lists."""
    parser = study_parser(description)
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


def main(argv: Sequence[str] | None = None, **options: Any) -> int:
    """The command line (``description``: the ``--help`` text; ``runner``)."""
    return run_cli(parse_args, CompressionStudy, argv, **options)


class CompressionStudy(Study):
    """Codecs x partitioners; the report's table, goals, JSON and plot."""

    prog = "compression_study"
    report_name = "compression.md"

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        super().__init__(args.out, command_line(SCRIPT, argv))
        self.args = args
        self.codecs = variants(args.schemes, args.topk_fractions)
        self.numbers: dict[str, dict[str, dict[str, Any]]] = {}

    def plan(self) -> list[PlannedRun]:
        return [
            PlannedRun(
                run_name(v, p),
                f"{v.key} {p}",
                run_config(self.args, v, p),
                self.args.num_supernodes,
            )
            for p in self.args.partitioners
            for v in self.codecs
        ]

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
        planned = len(self.plan())
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
            provenance(self.command, self.date, wall_seconds, results, planned)
            + f"- machine: {machine()}",
        ]
        write_text(self.out / "compression.md", "\n\n".join(lines) + "\n")
        write_json(
            self.out / "compression.json",
            self.payload(results, checked, config, wall_seconds),
        )
        plot_upload_curves(
            self.out / "compression.png",
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
            "planned_runs": len(self.plan()),
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

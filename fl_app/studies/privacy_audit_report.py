"""The privacy audit's report: its four tables, the picture grid and the JSON.

The analyses are run on finished runs only, once per run (``PrivacyAudit.cache``),
and the in-process FedSGD part once per output folder (``fedsgd.json``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fl_app.audit import analysis
from fl_app.audit.reconstruction import RECOVERED_PSNR
from fl_app.files import write_json, write_text
from fl_app.studies.driver import PlannedRun, RunResult
from fl_app.studies.report import (
    final_accuracy,
    machine,
    markdown_table,
    percent,
    points,
)


class PrivacyAudit(Protocol):
    """What the report reads of the study (``fl_app.studies.privacy_audit``)."""

    args: argparse.Namespace
    out: Path
    report_name: str
    defences: dict[str, dict[str, Any]]
    settings: list[str]
    cache: dict[str, Any]
    table: str
    verdict: Sequence[str]

    @property
    def clients(self) -> int: ...

    def plan(self) -> list[PlannedRun]: ...

    def provenance(
        self, results: Mapping[str, RunResult], wall_seconds: float
    ) -> str: ...

    def stamp(self, wall_seconds: float, with_machine: bool = False) -> dict: ...


def slug(text: str) -> str:
    """A defence's or setting's name as a run folder name: ``central-z0.5``."""
    return text.replace(" ", "-").replace("=", "")


Images = dict[str, np.ndarray]  # row label -> (k, 28, 28) images in [0, 1]


def write_report(
    study: PrivacyAudit, results: Mapping[str, RunResult], wall_seconds: float
) -> None:
    """``privacy-audit.md``, ``privacy-audit.json``, ``reconstructions.png``."""
    grid: dict[str, Images] = {}
    fedavg = fedavg_rows(study, results, grid)
    fedsgd = fedsgd_numbers(study, grid)
    members = membership_rows(study, results)
    canaries = canary_rows(study, results)
    tables = [
        "## Reconstruction from a FedAvg update (flwr run, round 1)",
        fedavg_text(study, results),
        fedavg_table(fedavg),
        "## Reconstruction from FedSGD replies (this process, the app's client)",
        fedsgd_text(),
        fedsgd_table(fedsgd, study),
        "## Membership inference on the final global model",
        membership_text(study),
        membership_table(members),
        "## Empirical ε from canary clients (Andrew et al. 2024)",
        canary_text(),
        canary_table(canaries),
    ]
    study.table = fedavg_table(fedavg)
    study.verdict = verdicts(fedavg, canaries)
    if grid:
        plot_grid(study.out / "reconstructions.png", grid)
    lines = [
        "# Privacy audit",
        *tables,
        "## Verdict",
        "\n".join(f"- {line}" for line in study.verdict),
        "![originals above what each attack recovered](reconstructions.png)",
        f"Machine: {machine()}.",
        study.provenance(results, wall_seconds).rstrip("\n"),
    ]
    write_text(study.out / study.report_name, "\n\n".join(lines) + "\n")
    write_json(
        study.out / "privacy-audit.json",
        {
            **study.stamp(wall_seconds, with_machine=True),
            "recovered_psnr_db": RECOVERED_PSNR,
            "fedavg": fedavg,
            "fedsgd": fedsgd,
            "membership": members,
            "canaries": canaries,
            "verdict": study.verdict,
        },
    )


# ---------------------------------------------------------------- FedAvg updates
def fedavg_rows(
    study: PrivacyAudit, results: Mapping[str, RunResult], grid: dict[str, Images]
) -> list[dict[str, Any]]:
    """One row per reconstruction run: what the attack recovered from round 1's
    updates as the server held them, and what the defence cost."""
    names = {"default-none": "none (default job)"}
    names.update({slug(d): d for d in study.defences})
    base = final_accuracy(results["none"].rows) if "none" in results else None
    planned = {run.name: run for run in study.plan()}
    rows = []
    for name, defence in names.items():
        run = results.get(name)
        if run is None:
            continue
        key = f"fedavg:{name}"
        if key not in study.cache:
            study.cache[key] = analysis.fedavg_reconstruction(
                run.run_dir, study.args.clients, planned[name].num_supernodes
            )
        found = study.cache[key]
        accuracy = final_accuracy(run.rows)
        epsilon = run.rows[-1].get("epsilon") if run.rows else None
        rows.append(
            {
                "run": name,
                "defence": defence,
                **found.summary,
                "final_accuracy": accuracy,
                "cost_points": None
                if name == "default-none"
                else points(base, accuracy),
                "epsilon": None
                if epsilon is None or not math.isfinite(epsilon)
                else epsilon,
            }
        )
        if found.recovered is not None:
            grid.setdefault(
                f"FedAvg update, n_k = {found.summary['n_k']}",
                {"original": found.originals},
            )[defence] = found.recovered
    return rows


def fedavg_text(study: PrivacyAudit, results: Mapping[str, RunResult]) -> str:
    return (
        "The attack: the first layer's update of any number of local SGD steps is "
        "a mixture of the client's inputs (the gradient of W₁ for an example is "
        "δ xᵀ whatever the weights), so the server unmixes it by independent "
        f"component analysis (`fl_app/audit/separation.py`). {study.args.clients} "
        "clients of round 1 are attacked (the lowest partition ids sampled); "
        f"an image counts as recovered at PSNR ≥ {RECOVERED_PSNR:g} dB against its "
        "best-matching original. Cost: final test accuracy minus the undefended "
        f"run's on the same {study.clients} clients, in points. ε: the accountant's "
        "at δ = 1e-5 (local DP: the worst client's)."
    )


def fedavg_table(rows: Sequence[Mapping[str, Any]]) -> str:
    headers = [
        "defence",
        "n_k",
        "recovered",
        "median PSNR (dB)",
        "mean SSIM",
        "span bound: recoverable",
        "final accuracy",
        "cost (points)",
        "ε",
    ]
    table = []
    for row in rows:
        attacked = row["attacked"]
        table.append(
            [
                row["defence"],
                row["n_k"],
                percent(row["share_recovered"]) if attacked else "n_k > width",
                _number(row["psnr"], 1),
                _number(row["ssim"], 2),
                f"{percent(row['bound_share'])} ({_number(row['bound_psnr'], 1)} dB)",
                percent(row["final_accuracy"]),
                _signed(row["cost_points"]),
                _number(row["epsilon"], 1),
            ]
        )
    return markdown_table(headers, table) + (
        "\nSpan bound: each original projected onto the row space of the update's "
        "first layer, the best any reading of it could do (it uses the originals: "
        "a bound, not an attack). With more examples than the layer has units "
        "(n_k > 200) the inputs are not in that space and the attack is not run.\n"
    )


# ---------------------------------------------------------------- FedSGD
def fedsgd_numbers(study: PrivacyAudit, grid: dict[str, Images]) -> dict[str, Any]:
    """The in-process attacks, computed once per output folder."""
    if study.args.skip_fedsgd:
        return {}
    from fl_app.audit import fedsgd

    key = "fedsgd"
    if key not in study.cache:
        study.cache[key] = fedsgd.audit(
            study.out / "fedsgd",
            dataset=study.args.dataset,
            data_dir=study.args.data_dir,
            seed=study.args.seed,
            clip_norm=study.args.clip_norm,
            central=study.args.central,
            local=study.args.local,
        )
    numbers, images = study.cache[key]
    grid.update(images)
    return numbers


def fedsgd_text() -> str:
    return (
        "One step from the global model at its seed (FedSGD, lr 0.1): the analytic "
        "attack on one-example replies (`first_layer_inversion`, the label by "
        "iDLG), gradient matching on one reply of a batch of 4 (DLG with iDLG's "
        "label counts, `fl_app/audit/gradient_matching.py`) and the separation "
        "attack on that same reply; under secagg each reply is summed with four "
        "other clients' replies of as many examples (what SecAgg+ shows the "
        "server: 5 inputs for the analytic attack, 20 for the batch). Each reply "
        "is made by the app's `PartitionClient` and read back through the "
        "server's decoding and checks."
    )


def fedsgd_table(numbers: Mapping[str, Any], study: PrivacyAudit) -> str:
    if not numbers:
        return "(not run: `--skip-fedsgd`)"
    defences = list(next(iter(numbers.values())).keys())
    rows = []
    for attack, per_defence in numbers.items():
        row: list[Any] = [attack]
        for defence in defences:
            found = per_defence.get(defence)
            row.append(None if found is None else _cell(found))
        rows.append(row)
    return markdown_table(["attack", *defences], rows) + (
        "\nEach cell: share recovered (PSNR ≥ "
        f"{RECOVERED_PSNR:g} dB) / median PSNR / label accuracy where the attack "
        "infers labels. Central DP adds its noise after the server holds the "
        "update, so the server's attack sees exactly what it sees with no defence."
    )


def _cell(found: Mapping[str, Any]) -> str:
    text = f"{percent(found['share_recovered'], 0)} / {found['psnr']:.1f} dB"
    if found.get("label_accuracy") is not None:
        text += f" / labels {percent(found['label_accuracy'], 0)}"
    return text


# ---------------------------------------------------------------- membership
def membership_rows(
    study: PrivacyAudit, results: Mapping[str, RunResult]
) -> list[dict[str, Any]]:
    rows = []
    for setting in study.settings:
        names = [f"mia-{slug(setting)}-h{h}" for h in range(study.args.shadows)]
        if not all(name in results for name in names):
            continue
        key = f"membership:{setting}"
        if key not in study.cache:
            found = analysis.membership(
                [results[n].run_dir for n in names], study.clients
            )
            study.cache[key] = found.as_dict()
        accuracies = [final_accuracy(results[n].rows) for n in names]
        epsilon = results[names[0]].rows[-1].get("epsilon")
        rows.append(
            {
                "setting": setting,
                **study.cache[key],
                "mean_accuracy": float(
                    np.mean([a for a in accuracies if a is not None])
                ),
                "epsilon": epsilon,
            }
        )
    return rows


def membership_text(study: PrivacyAudit) -> str:
    return (
        f"{study.args.shadows} runs per setting, each on a seeded half of the "
        f"training split with {percent(0.1, 0)} canary clients; members: the "
        "examples a run trained on, non-members: the rest of the training split. "
        "Loss threshold (Yeom et al. 2018) and LiRA (Carlini et al. 2022, online, "
        "global variance, the other runs as shadows), each run the target in turn; "
        "TPR at a fixed FPR is the share of members caught while letting through "
        "that share of non-members."
    )


def membership_table(rows: Sequence[Mapping[str, Any]]) -> str:
    headers = [
        "setting",
        "accuracy",
        "ε",
        "loss AUC",
        "loss TPR@0.1%",
        "loss TPR@1%",
        "LiRA AUC",
        "LiRA TPR@0.1%",
        "LiRA TPR@1%",
    ]
    table = []
    for row in rows:
        loss, lira = row["loss_threshold"], row["lira"]
        table.append(
            [
                row["setting"],
                percent(row["mean_accuracy"]),
                _number(row["epsilon"], 1),
                _number(loss["auc"], 3),
                percent(loss["tpr_at_0.001"], 2),
                percent(loss["tpr_at_0.01"], 2),
                _number(lira["auc"], 3),
                percent(lira["tpr_at_0.001"], 2),
                percent(lira["tpr_at_0.01"], 2),
            ]
        )
    return markdown_table(headers, table)


# ---------------------------------------------------------------- canaries
def canary_rows(
    study: PrivacyAudit, results: Mapping[str, RunResult]
) -> list[dict[str, Any]]:
    rows = []
    for setting in study.settings:
        for half in range(study.args.shadows):
            name = f"mia-{slug(setting)}-h{half}"
            if name not in results:
                continue
            key = f"canary:{name}"
            if key not in study.cache:
                found = analysis.canary_audit(results[name].run_dir, study.clients)
                study.cache[key] = found.as_dict()
            rows.append({"setting": setting, "run": name, **study.cache[key]})
    return rows


def canary_text() -> str:
    return (
        "Each membership run's canaries: 10% of its clients send a fixed random "
        "unit direction (norm S) instead of training. The cosine of the final "
        "model's change with each inserted canary against 1,000 never sent gives "
        "μ and an ε at δ = 1e-5 (95% bootstrap interval), from the final model "
        "alone: a lower bound on what the accountant's ε (every round's model "
        "released) allows. An estimate above the accountant's beyond its interval "
        "would mean the DP code is wrong."
    )


def canary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    headers = ["run", "accountant ε", "empirical ε", "95% interval", "μ", "holds"]
    table = []
    for row in rows:
        bound = row["accountant_epsilon"]
        low, high = row["interval"]
        holds = None if bound is None else ("✓" if low <= bound else "✗")
        table.append(
            [
                row["run"],
                "no DP" if bound is None else _number(bound, 2),
                _number(row["epsilon"], 2),
                f"[{low:.2f}, {high:.2f}]",
                _number(row["mu"], 2),
                holds,
            ]
        )
    return markdown_table(headers, table)


# ---------------------------------------------------------------- verdict, plot
def verdicts(
    fedavg: Sequence[Mapping[str, Any]], canaries: Sequence[Mapping[str, Any]]
) -> list[str]:
    lines = []
    for row in fedavg:
        found = (
            f"{percent(row['share_recovered'])} of a client's images recovered"
            if row["attacked"]
            else f"no separation possible (n_k = {row['n_k']} > the layer's width); "
            f"{percent(row['bound_share'])} within reach of any reading of the span"
        )
        lines.append(f"{row['defence']}: {found} (round-1 update, n_k = {row['n_k']})")
    broken = [
        row["run"]
        for row in canaries
        if row["accountant_epsilon"] is not None
        and row["interval"][0] > row["accountant_epsilon"]
    ]
    if canaries:
        lines.append(
            "empirical ε within the accountant's bound in every DP run"
            if not broken
            else f"empirical ε ABOVE the accountant's in {', '.join(broken)}"
        )
    return lines


def plot_grid(path: Path, blocks: Mapping[str, Images], columns: int = 8) -> None:
    """One block per attack: its originals on top, then one row per defence
    (central DP's left out: the server holds exactly the undefended update)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fl_app.files import write_atomically

    rows = [
        (title, label, images)
        for title, block in blocks.items()
        for label, images in block.items()
        if not label.startswith("central")
    ]
    fig, axes = plt.subplots(
        len(rows),
        columns,
        figsize=(1.1 * columns + 2.2, 1.15 * len(rows)),
        squeeze=False,
    )
    previous = None
    for (title, label, images), line in zip(rows, axes, strict=True):
        for k, ax in enumerate(line):
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if k < len(images):
                ax.imshow(images[k], cmap="gray", vmin=0, vmax=1)
        name = label if title == previous else f"{title}\n{label}"
        line[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
        previous = title
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomically(path, buffer.getvalue())


def _number(value: float | None, digits: int) -> str | None:
    if value is None or not math.isfinite(value):
        return None
    return f"{value:.{digits}f}"


def _signed(value: float | None) -> str | None:
    return None if value is None else f"{value:+.1f}"

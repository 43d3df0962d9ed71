"""What a run leaves on disk: history (JSON + CSV), the global model, the plot.

Every file is written to a temporary name and renamed over the old one, so a crash
or a kill mid-write leaves the previous complete version, never a torn file; the
history is rewritten after every round, so a run that dies keeps all rounds so far.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl_app.files import write_atomically

HISTORY_JSON = "history.json"
SUMMARY_FILE = "summary.json"
HISTORY_CSV = "history.csv"
MODEL_FILE = "model.pt"
PLOT_FILE = "history.png"
CONFIG_FILE = "config.json"


@dataclass
class RoundRecord:
    """One row of the history. Round 0 is the initial model, before any training."""

    round: int
    test_loss: float
    test_accuracy: float
    train_loss: float = math.nan
    clients_sampled: int = 0
    clients_succeeded: int = 0
    clients_failed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    round_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    federated_loss: float = math.nan
    federated_accuracy: float = math.nan
    clients_rejected: int = 0
    # Replies refused by validation, by reason: a column ``rejected_<reason>`` each.
    rejected: dict[str, int] = field(default_factory=dict)
    attackers_sampled: int = 0  # simulated attackers among the sampled (studies)
    epsilon: float = math.nan  # DP budget spent so far, at dp.delta
    model_updated: bool = False  # set by aggregation; False: the previous model kept
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update({f"rejected_{k}": v for k, v in row.pop("rejected").items()})
        row.update(row.pop("extra"))
        return row


# Fields that depend on the machine, not on the seed: left out when runs are compared.
TIMING_FIELDS = ("round_seconds", "elapsed_seconds")


def new_run_dir(output_dir: str | Path, run_id: int | str | None = None) -> Path:
    """A fresh folder ``<output-dir>/<timestamp>[-run<id>]`` and a ``latest`` link."""
    root = Path(output_dir).expanduser().resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-run{run_id}" if run_id else stamp
    run_dir = root / name
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = root / f"{name}-{suffix}"
    run_dir.mkdir(parents=True)
    latest = root / "latest"
    try:
        tmp = root / f".latest.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, latest)
    except OSError:
        pass  # symlinks are a convenience (and unavailable on some filesystems)
    return run_dir


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_history(run_dir: Path, records: list[RoundRecord]) -> None:
    """Rewrite ``history.json`` and ``history.csv`` with every round so far."""
    rows = [r.to_row() for r in records]
    payload = [{k: _json_safe(v) for k, v in row.items()} for row in rows]
    write_atomically(
        run_dir / HISTORY_JSON, json.dumps(payload, indent=1).encode() + b"\n"
    )
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(run_dir / HISTORY_CSV, buffer.getvalue().encode())


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``history.json`` (NaN written as null stays None)."""
    return json.loads((run_dir / HISTORY_JSON).read_text())


def save_model(run_dir: Path, model: nn.Module) -> None:
    """The global model as a plain ``state_dict`` (``torch.load`` reads it)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_atomically(run_dir / MODEL_FILE, buffer.getvalue())


def plot_history(run_dir: Path, records: list[RoundRecord], title: str) -> None:
    """Test accuracy and loss against rounds, side by side, as ``history.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round for r in records]
    fig, (ax_acc, ax_loss) = plt.subplots(
        1, 2, figsize=(10, 4), constrained_layout=True
    )
    ax_acc.plot(
        rounds,
        [100 * r.test_accuracy for r in records],
        marker="o",
        ms=3,
        label="global model, test set",
    )
    federated = [
        (r.round, 100 * r.federated_accuracy)
        for r in records
        if math.isfinite(r.federated_accuracy)
    ]
    if federated:
        ax_acc.plot(
            *zip(*federated, strict=False),
            marker="s",
            ms=3,
            ls="--",
            label="clients' held-out data",
        )
    ax_acc.set(xlabel="round", ylabel="accuracy (%)", title="Accuracy")
    ax_loss.plot(
        rounds,
        [r.test_loss for r in records],
        marker="o",
        ms=3,
        label="test loss (global model)",
    )
    trained = [(r.round, r.train_loss) for r in records if math.isfinite(r.train_loss)]
    if trained:
        ax_loss.plot(
            *zip(*trained, strict=False),
            marker="^",
            ms=3,
            ls="--",
            label="train loss (clients, weighted)",
        )
    ax_loss.set(xlabel="round", ylabel="cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if records:
        last = records[-1]
        ax_acc.annotate(
            f"{100 * last.test_accuracy:.1f}%",
            (last.round, 100 * last.test_accuracy),
            textcoords="offset points",
            xytext=(-10, -14),
        )
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomically(run_dir / PLOT_FILE, buffer.getvalue())

"""What a run leaves on disk: history (JSON + CSV), the global model, the plot,
the summary and the config, and the progress line logged after every round.

Every file is written to a temporary name and renamed over the old one, so a crash
or a kill mid-write leaves the previous complete version, never a torn file; the
history is rewritten after every round, so a run that dies keeps all rounds so far.
``Recorder`` is what a strategy holds: its run folder, its history, its clock, and
the trackers (``fl_app.tracking``: TensorBoard, MLflow) it feeds every round, and
the updates the privacy audit asks it to keep (``audit.capture-round``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common import NDArrays, log
from torch import nn

from fl_app.config import RunConfig
from fl_app.files import write_atomically, write_json
from fl_app.tracking import Tracking

HISTORY_JSON = "history.json"
SUMMARY_FILE = "summary.json"
HISTORY_CSV = "history.csv"
MODEL_FILE = "model.pt"
PLOT_FILE = "history.png"
CONFIG_FILE = "config.json"
AUDIT_DIR = "audit"  # audit.capture-round's updates, as the server held them
SAMPLED_FILE = "sampled.json"  # in AUDIT_DIR: each round's sampled partitions
# history.png is redrawn at most this often, and once more when the run ends: a
# drawing costs about 0.2 s (0.8 s with matplotlib's import), a whole steady round
# in the simulation. history.csv and the checkpoint are written every round.
PLOT_EVERY_S = 10.0


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
    # Where the replies were trained: "<Ray node id, 8 hex>:<clients> ..." by node id
    # (simulation; "" where clients run outside Ray, as deployed SuperNodes do).
    clients_by_node: str = ""
    # With simulated devices (heterogeneity.*): replies dropped as too late (past
    # the round's deadline, or beyond the first K under over-commitment), and the
    # virtual seconds from the run's start to this round's end (NaN without them).
    clients_late: int = 0
    virtual_time_s: float = math.nan
    # The slowest reply's local training, wall seconds (what a round cannot beat).
    train_seconds_max: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update({f"rejected_{k}": v for k, v in row.pop("rejected").items()})
        row.update(row.pop("extra"))
        return row


# Fields that depend on the machine, not on the seed: left out when runs are compared.
MACHINE_FIELDS = (
    "round_seconds",
    "elapsed_seconds",
    "clients_by_node",
    "train_seconds_max",
)


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
    # Views of the checkpoint, which is written durably after them (files.py).
    text = json.dumps(payload, indent=1).encode() + b"\n"
    write_atomically(run_dir / HISTORY_JSON, text, durable=False)
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(run_dir / HISTORY_CSV, buffer.getvalue().encode(), durable=False)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``history.json`` (NaN written as null stays None)."""
    return json.loads((run_dir / HISTORY_JSON).read_text())


def save_model(run_dir: Path, model: nn.Module) -> None:
    """The global model as a plain ``state_dict`` (``torch.load`` reads it)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_atomically(run_dir / MODEL_FILE, buffer.getvalue(), durable=False)


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
    write_atomically(run_dir / PLOT_FILE, buffer.getvalue(), durable=False)


class Recorder:
    """A run's outputs: the history and its clock, the files in the run folder
    (none without one), and the progress line logged after every round."""

    def __init__(self, config: RunConfig, run_dir: Path | None, name: str) -> None:
        """``name`` is the strategy's, for the plot's title; config.json is written
        at once, so even a run that fails in round 1 says what it was."""
        self.config = config
        self.run_dir = run_dir
        self.name = name
        self.history: list[RoundRecord] = []
        self._started = self._plotted = time.monotonic()
        self._round_starts: dict[int, float] = {}  # round -> when it started
        self._resumed_after = 0  # the last round of the process before, if resumed
        if run_dir is not None:
            write_json(run_dir / CONFIG_FILE, asdict(config))
        # Made now: a tracking store that cannot be opened stops the run here.
        self.tracking = Tracking(config, run_dir)

    def load(self, rows: list[dict[str, Any]]) -> None:
        """Continue a resumed run's history; its clock goes on from the last row."""
        self.history = [RoundRecord(**row) for row in rows]
        if self.history:
            self._started = time.monotonic() - self.history[-1].elapsed_seconds
            self._resumed_after = self.history[-1].round
            self.tracking.resume(self._resumed_after)

    @property
    def last_round(self) -> int:
        """The last round recorded, -1 before the initial model's row."""
        return self.history[-1].round if self.history else -1

    def start_round(self, server_round: int) -> None:
        """Round ``server_round`` starts now: its ``round_seconds`` count from here
        (kept by round: the next round may start before this one's row is added)."""
        self._round_starts[server_round] = time.monotonic()

    def add(self, record: RoundRecord) -> None:
        """Append a round's row, timed (round 0, the initial model, takes none)."""
        now = time.monotonic()
        started = self._round_starts.pop(record.round, now)
        record.round_seconds = now - started if record.round else 0.0
        record.elapsed_seconds = now - self._started
        self.history.append(record)

    def capture(
        self,
        server_round: int,
        global_weights: NDArrays,
        sampled: Sequence[int],
        updates: Mapping[int, tuple[int, NDArrays]],
    ) -> None:
        """``audit/round-<r>.npz``: the round's global weights, the partitions it
        sampled and every update the server holds (partition -> (n_k, delta);
        partition -1 is SecAgg+'s aggregate), for the privacy audit. Written
        atomically, like every result."""
        if self.run_dir is None:
            return
        arrays: dict[str, np.ndarray] = {
            f"global_{i}": w for i, w in enumerate(global_weights)
        }
        arrays["sampled"] = np.array(sorted(sampled), dtype=np.int64)
        for partition, (num_examples, delta) in updates.items():
            arrays[f"n_{partition}"] = np.array(num_examples)
            arrays.update({f"delta_{partition}_{i}": d for i, d in enumerate(delta)})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        folder = self.run_dir / AUDIT_DIR
        folder.mkdir(exist_ok=True)
        write_atomically(folder / f"round-{server_round}.npz", buffer.getvalue())

    def sampled(self, server_round: int, partitions: Sequence[int]) -> None:
        """Add a round's sampled partitions to ``audit/sampled.json`` (round ->
        partitions): which examples a model saw, for the membership audit."""
        if self.run_dir is None:
            return
        path = self.run_dir / AUDIT_DIR / SAMPLED_FILE
        path.parent.mkdir(exist_ok=True)
        rounds = json.loads(path.read_text()) if path.is_file() else {}
        rounds[str(server_round)] = sorted(int(p) for p in partitions)
        write_json(path, rounds)

    def save(self, model: nn.Module | None, stop_reason: str | None) -> None:
        """Rewrite the history, the model (if given), the summary, and the plot when
        it is due or the run ends."""
        if self.run_dir is None:
            return
        write_history(self.run_dir, self.history)
        if model is not None:
            save_model(self.run_dir, model)
        self.tracking.update(self.history)
        last = self.history[-1] if self.history else None
        last_round = last.round if last is not None else 0
        ending = stop_reason is not None or last_round >= self.config.num_server_rounds
        if ending or time.monotonic() - self._plotted >= PLOT_EVERY_S:
            self.plot()
        self.write_summary(stop_reason)
        # The last round's clients' evaluation, when there is one, comes in a save
        # of its own after this one: the trackers finish with that.
        evaluated = self.config.fraction_evaluate == 0 or (
            last is not None and math.isfinite(last.federated_loss)
        )
        if stop_reason is not None or (ending and evaluated):
            self.tracking.finish()

    def stopped(self, stop_reason: str) -> None:
        """The run ends before its next round: the summary says why, the plot is
        drawn one last time."""
        self.write_summary(stop_reason)
        self.plot()
        self.tracking.update(self.history)
        self.tracking.finish()

    def plot(self) -> None:
        """``history.png``: accuracy and loss against rounds."""
        if self.run_dir is None or not self.history:
            return
        config = self.config
        title = (
            f"{self.name} · {config.model} on {config.dataset}"
            f" · {config.partitioner} · C={config.fraction_fit:g}"
            f" E={config.local_epochs} B={config.batch_size or '∞'}"
        )
        plot_history(self.run_dir, self.history, title)
        self._plotted = time.monotonic()

    def write_summary(self, stop_reason: str | None) -> None:
        """``summary.json``: final and best accuracy, epsilon, why the run stopped."""
        if self.run_dir is None or not self.history:
            return
        last = self.history[-1]
        best = max(self.history, key=lambda r: r.test_accuracy)
        write_json(
            self.run_dir / SUMMARY_FILE,
            {
                "strategy": self.config.strategy,
                "rounds_done": last.round,
                "final_test_accuracy": last.test_accuracy,
                "best_test_accuracy": best.test_accuracy,
                "best_round": best.round,
                "epsilon": None if math.isnan(last.epsilon) else last.epsilon,
                "stop_reason": stop_reason,
            },
            durable=False,
        )

    def log_progress(self, record: RoundRecord) -> None:
        """The round's line (accuracy, loss, clients, epsilon, elapsed, ETA), and
        the final "done:" line after the last round."""
        total = self.config.num_server_rounds
        done = record.round
        eta = eta_seconds(self.history, total, self._resumed_after)
        clients = ""
        if done:
            clients = f" | clients {record.clients_succeeded}/{record.clients_sampled}"
            if record.clients_rejected:
                clients += f" ({record.clients_rejected} rejected)"
        privacy = f" | ε {record.epsilon:.2f}" if math.isfinite(record.epsilon) else ""
        log(
            INFO,
            "round %d/%d | test acc %.2f%% | test loss %.4f%s%s | elapsed %s | ETA %s",
            done,
            total,
            100 * record.test_accuracy,
            record.test_loss,
            clients,
            privacy,
            _clock(record.elapsed_seconds),
            _clock(eta),
        )
        if done == total and self.run_dir is not None:
            best = max(self.history, key=lambda r: r.test_accuracy)
            log(
                INFO,
                "done: final test accuracy %.2f%% (best %.2f%% in round %d); "
                "results in %s",
                100 * record.test_accuracy,
                100 * best.test_accuracy,
                best.round,
                self.run_dir,
            )


def eta_seconds(
    history: Sequence[RoundRecord], total: int, resumed_after: int = 0
) -> float:
    """Seconds until round ``total``, NaN while there is no estimate (0 once done).

    The first round a process runs (round 1, or the one after ``resumed_after`` in a
    resumed run) also pays for its start-up (actors, data loading), so the time per
    round is measured from its end: the estimate needs one more round after it.
    """
    if not history:
        return math.nan
    last = history[-1]
    if last.round >= total:
        return 0.0
    first = next((r for r in history if r.round > max(resumed_after, 0)), None)
    if first is None or last.round <= first.round:
        return math.nan
    per_round = (last.elapsed_seconds - first.elapsed_seconds) / (
        last.round - first.round
    )
    return per_round * (total - last.round)


def _clock(seconds: float) -> str:
    """``1m05s``, ``42s``, or ``--`` when there is no estimate yet."""
    if not math.isfinite(seconds):
        return "--"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"

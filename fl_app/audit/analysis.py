"""The audit's numbers from finished runs of the app: membership inference on the
final global models of a set of runs on seeded halves, and the empirical ε of a run
with canary clients. Each function reads run folders (``config.json``,
``model.pt``, ``summary.json``) and the dataset; no Flower."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_app.attacks import attacking_partitions
from fl_app.audit.canaries import canary_cosines, epsilon_interval, estimate_epsilon
from fl_app.audit.membership import (
    LOW_FPRS,
    MembershipResult,
    lira_scores,
    logit_confidence,
    loss_scores,
    separation,
)
from fl_app.config import RunConfig
from fl_app.data import client_indices, load_raw, load_split
from fl_app.model import build_model, get_weights
from fl_app.results import CONFIG_FILE, MODEL_FILE, SUMMARY_FILE

#: Held-out canaries (directions never sent) drawn per run: ids from K upwards,
#: which no partition has.
HELD_OUT_CANARIES = 1000


def run_config(run_dir: Path) -> RunConfig:
    """The run's configuration, as its ServerApp wrote it."""
    return RunConfig.from_dict(json.loads((Path(run_dir) / CONFIG_FILE).read_text()))


def final_model(run_dir: Path, config: RunConfig) -> torch.nn.Module:
    model = build_model(config.model)
    model.load_state_dict(torch.load(Path(run_dir) / MODEL_FILE, weights_only=True))
    return model


def canaries_of(config: RunConfig, num_partitions: int) -> frozenset[int]:
    """The partitions that were canaries (they sent a direction, trained nothing)."""
    if config.attack.kind != "canary" or not config.attack.enabled:
        return frozenset()
    return attacking_partitions(config.seed, num_partitions, config.attack.fraction)


def trained_mask(config: RunConfig, num_partitions: int) -> np.ndarray:
    """Which examples of the training split the run's model was trained on: every
    partition's training share (its validation share held out), on the run's half,
    canaries' partitions left out."""
    _, labels = load_raw(config.dataset, config.data_dir, "train")
    mask = np.zeros(len(labels), dtype=bool)
    skipped = canaries_of(config, num_partitions)
    for partition in range(num_partitions):
        if partition in skipped:
            continue
        train, _ = client_indices(
            config.dataset,
            config.data_dir,
            config.partitioner,
            partition,
            num_partitions,
            alpha=config.dirichlet_alpha,
            val_fraction=config.val_fraction,
            seed=config.seed,
            half_seed=config.audit.half_seed,
        )
        mask[train] = True
    return mask


@dataclass(frozen=True)
class Membership:
    """Both attacks' results, averaged over the runs taken in turn as the target."""

    loss_threshold: MembershipResult
    lira: MembershipResult
    targets: int

    def as_dict(self) -> dict[str, Any]:
        def one(result: MembershipResult) -> dict[str, Any]:
            return {
                "auc": result.auc,
                **{f"tpr_at_{fpr:g}": result.tpr_at_fpr[fpr] for fpr in LOW_FPRS},
            }

        return {
            "loss_threshold": one(self.loss_threshold),
            "lira": one(self.lira),
            "targets": self.targets,
        }


def membership(run_dirs: Sequence[Path], num_partitions: int) -> Membership:
    """Loss threshold and LiRA on each run's final model, the others its shadows
    (leave one out), over the whole training split; the mean over targets."""
    if len(run_dirs) < 2:
        raise ValueError("membership needs at least two runs on different halves")
    configs = [run_config(d) for d in run_dirs]
    data = load_split(configs[0].dataset, configs[0].data_dir, "train")
    trained = np.stack([trained_mask(c, num_partitions) for c in configs])
    losses, confidences = [], []
    for run_dir, config in zip(run_dirs, configs, strict=True):
        model = final_model(run_dir, config)
        losses.append(loss_scores(model, data))
        confidences.append(logit_confidence(model, data))
    stat = np.stack(confidences)
    threshold_results, lira_results = [], []
    for target in range(len(run_dirs)):
        members = trained[target]
        threshold_results.append(
            separation(losses[target][members], losses[target][~members])
        )
        others = [k for k in range(len(run_dirs)) if k != target]
        scores = lira_scores(stat[target], stat[others], trained[others])
        lira_results.append(separation(scores[members], scores[~members]))
    return Membership(
        _mean(threshold_results), _mean(lira_results), targets=len(run_dirs)
    )


def _mean(results: Sequence[MembershipResult]) -> MembershipResult:
    return MembershipResult(
        float(np.mean([r.auc for r in results])),
        {fpr: float(np.mean([r.tpr_at_fpr[fpr] for r in results])) for fpr in LOW_FPRS},
    )


@dataclass(frozen=True)
class CanaryAudit:
    """One run's empirical ε beside its accountant's."""

    epsilon: float
    interval: tuple[float, float]
    mu: float
    accountant_epsilon: float | None  # None: DP off
    inserted: int
    held_out: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "interval": list(self.interval),
            "mu": self.mu,
            "accountant_epsilon": self.accountant_epsilon,
            "inserted": self.inserted,
            "held_out": self.held_out,
        }


def canary_audit(run_dir: Path, num_partitions: int) -> CanaryAudit:
    """Andrew et al.'s one-run estimate from the final model's change: canaries
    inserted (the run's canary partitions) against ``HELD_OUT_CANARIES`` never
    sent, at the run's ``dp.delta``."""
    config = run_config(run_dir)
    inserted = sorted(canaries_of(config, num_partitions))
    if len(inserted) < 2:
        raise ValueError(f"{run_dir}: fewer than two canaries (attack.kind=canary)")
    initial = get_weights(build_model(config.model, seed=config.seed))
    final = get_weights(final_model(run_dir, config))
    change = [f - i for f, i in zip(final, initial, strict=True)]
    held_out = range(num_partitions, num_partitions + HELD_OUT_CANARIES)
    cos_in = canary_cosines(change, config.seed, inserted)
    cos_out = canary_cosines(change, config.seed, held_out)
    delta = config.dp.delta
    estimate = estimate_epsilon(cos_in, cos_out, delta)
    summary = json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    return CanaryAudit(
        estimate.epsilon,
        epsilon_interval(cos_in, cos_out, delta),
        estimate.mu,
        summary.get("epsilon") if config.dp.enabled else None,
        len(inserted),
        HELD_OUT_CANARIES,
    )

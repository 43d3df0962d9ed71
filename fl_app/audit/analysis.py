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
from flwr.common import NDArrays

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
from fl_app.audit.reconstruction import Quality, quality
from fl_app.audit.replies import load_capture
from fl_app.audit.separation import (
    input_span,
    match_to_originals,
    separate_inputs,
    summary,
)
from fl_app.client import trained_by
from fl_app.config import RunConfig
from fl_app.data import load_raw, load_split
from fl_app.model import build_model, get_weights
from fl_app.results import (
    AUDIT_DIR,
    CONFIG_FILE,
    MODEL_FILE,
    SAMPLED_FILE,
    SUMMARY_FILE,
)

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


def took_part(run_dir: Path) -> set[int]:
    """The partitions sampled in any round (``audit/sampled.json``)."""
    path = Path(run_dir) / AUDIT_DIR / SAMPLED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run with audit.half-seed or capture-round")
    return {
        p for partitions in json.loads(path.read_text()).values() for p in partitions
    }


def trained_mask(run_dir: Path, num_partitions: int) -> np.ndarray:
    """Which examples of the training split the run's model was trained on: the
    training share (validation share held out, on the run's half) of every
    partition sampled at least once, canaries left out."""
    config = run_config(run_dir)
    _, labels = load_raw(config.dataset, config.data_dir, "train")
    mask = np.zeros(len(labels), dtype=bool)
    skipped = canaries_of(config, num_partitions)
    for partition in sorted(took_part(run_dir)):
        if partition in skipped:
            continue
        mask[trained_by(config, partition, num_partitions)] = True
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
    trained = np.stack([trained_mask(d, num_partitions) for d in run_dirs])
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


@dataclass(frozen=True)
class FedAvgReconstruction:
    """The separation attack on a captured round: each attacked client's images
    against what the server read back."""

    summary: dict[str, Any]  # n_k, share_recovered, psnr, ssim, clients
    originals: np.ndarray | None  # the first client's first images, for the grid
    recovered: np.ndarray | None  # what was matched to each of them


def client_pixels(config: RunConfig, partition: int, num_partitions: int) -> np.ndarray:
    """A client's training images as pixels in [0, 1] (what the attack is scored
    against), in the order the client holds them."""
    images, _ = load_raw(config.dataset, config.data_dir, "train")
    train = trained_by(config, partition, num_partitions)
    return images[train].astype(np.float64) / 255.0


def span_bound(
    delta: NDArrays, originals: np.ndarray, dataset: str, num_sources: int
) -> list[Quality]:
    """The best any reading of the first layer's row space could do: each original
    projected onto the span (bias coordinate held at 1, least squares), scored
    against itself. It uses the originals, so it is a bound, not an attack: what
    it cannot recover, no unmixing can."""
    span = input_span(delta, num_sources, dataset)
    pixels, bias = span.pixels.numpy(), span.bias.numpy()
    weight = 28.0  # holds the bias coordinate at 1 against 784 pixels
    basis = np.hstack([pixels, weight * bias[:, None]])
    flat = originals.reshape(len(originals), -1)
    targets = np.hstack([flat, np.full((len(flat), 1), weight)])
    coefficients, *_ = np.linalg.lstsq(basis.T, targets.T, rcond=None)
    projected = np.clip(coefficients.T @ pixels, 0.0, 1.0)
    return [quality(o, p) for o, p in zip(flat, projected, strict=True)]


def fedavg_reconstruction(
    run_dir: Path,
    clients: int,
    num_partitions: int,
    *,
    server_round: int = 1,
    shown: int = 8,
) -> FedAvgReconstruction:
    """Separate the images of the first ``clients`` partitions sampled in the
    captured round out of the updates the server held (under SecAgg+, out of the
    one aggregate: every sampled client's images are mixed in it); the mean over
    clients of the share recovered, PSNR and SSIM."""
    config = run_config(run_dir)
    capture = load_capture(run_dir, server_round)
    attacked = capture.sampled[:clients]
    pixels = {p: client_pixels(config, p, num_partitions) for p in attacked}
    per_client: dict[int, list[Quality]] = {}
    recovered_of: dict[int, np.ndarray] = {}
    bounds: dict[int, list[Quality]] = {}
    for p in attacked:
        if -1 in capture.updates:  # SecAgg+: one aggregate of every sampled client
            _, delta = capture.updates[-1]
            sources = sum(
                len(client_pixels(config, q, num_partitions)) for q in capture.sampled
            )
        else:
            sources, delta = capture.updates[p]
        bounds[p] = span_bound(delta, pixels[p], config.dataset, sources)
        width = delta[0].shape[0]
        if sources > width:
            # More inputs than the layer's width: they are not in its row space,
            # and the bound above shows what that leaves (ICA would only burn CPU).
            per_client[p], recovered_of[p] = [], None
            continue
        images = separate_inputs(delta, sources, config.dataset, config.seed)
        matches = match_to_originals(images, pixels[p])
        per_client[p] = [m.quality for m in matches]
        recovered_of[p] = images[[m.reconstruction for m in matches]]
    summaries = [summary(q) for q in per_client.values() if q]
    bound = [summary(q) for q in bounds.values()]
    first = attacked[0]
    shown_recovered = recovered_of[first]
    return FedAvgReconstruction(
        {
            "n_k": int(np.mean([len(pixels[p]) for p in attacked])),
            "clients": len(attacked),
            "attacked": bool(summaries),
            "share_recovered": _mean_of([s.share for s in summaries]),
            "psnr": _median_of([s.median_psnr for s in summaries]),
            "ssim": _mean_of([s.mean_ssim for s in summaries]),
            "shares": [s.share for s in summaries],
            "bound_share": _mean_of([s.share for s in bound]),
            "bound_psnr": _median_of([s.median_psnr for s in bound]),
        },
        pixels[first][:shown].reshape(-1, 28, 28),
        None
        if shown_recovered is None
        else shown_recovered[:shown].reshape(-1, 28, 28),
    )


def _mean_of(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _median_of(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if values else None

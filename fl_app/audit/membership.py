"""Membership inference on a published model: was this example in its training set?

**Loss threshold** (Yeom et al. 2018): a model fits its training examples better
than unseen ones, so a low loss says "member". The score of an example is minus its
loss; sweeping the threshold gives the ROC curve.

**LiRA** (Carlini et al., "Membership Inference Attacks From First Principles",
S&P 2022): train shadow models on random halves of the data, so that every example
is in some ("IN") and out of others ("OUT"); an example's statistic is the model's
logit-scaled confidence ``log(p_y / (1 - p_y))``, close to Gaussian across shadow
models; the score is the likelihood ratio of the target model's statistic under the
example's IN and OUT Gaussians. With few shadows the paper fits one variance for
all examples ("global variance"); an example that no shadow held IN (or OUT) is
scored with the average IN-OUT shift in place of its missing mean.

Report as LiRA asks: the true-positive rate at a low false-positive rate (0.1 %,
1 %), not only the AUC, since an attack that is sure of a few members matters more
than one that is slightly better than chance on all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from fl_app.data import Split

#: The false-positive rates at which the true-positive rate is reported.
LOW_FPRS = (0.001, 0.01)


def loss_scores(model: nn.Module, data: Split) -> np.ndarray:
    """Each example's membership score under the loss-threshold attack: minus its
    cross-entropy loss (higher: more likely a member)."""
    model.eval()
    with torch.no_grad():
        losses = functional.cross_entropy(model(data.x), data.y, reduction="none")
    return -losses.double().numpy()


def logit_confidence(model: nn.Module, data: Split) -> np.ndarray:
    """LiRA's statistic per example, ``log p_y - log(1 - p_y)``, from the logits
    (``logit_y - logsumexp(other logits)``: exact where ``p_y`` rounds to 1)."""
    model.eval()
    with torch.no_grad():
        logits = model(data.x).double()
        true = logits.gather(1, data.y[:, None]).squeeze(1)
        others = logits.scatter(1, data.y[:, None], -torch.inf)
        return (true - torch.logsumexp(others, dim=1)).numpy()


def lira_scores(
    target: np.ndarray, shadows: np.ndarray, shadow_in: np.ndarray
) -> np.ndarray:
    """Online LiRA with a global variance: per example, the log-likelihood ratio of
    the target model's statistic under the IN and OUT Gaussians the shadows give.

    ``target``: (n,) statistics of the model attacked; ``shadows``: (k, n) the
    shadow models'; ``shadow_in``: (k, n) whether each shadow trained on each
    example. Higher: more likely a member.
    """
    shadows = np.asarray(shadows, dtype=np.float64)
    shadow_in = np.asarray(shadow_in, dtype=bool)
    count_in, count_out = shadow_in.sum(0), (~shadow_in).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = np.where(shadow_in, shadows, 0).sum(0) / count_in
        mean_out = np.where(~shadow_in, shadows, 0).sum(0) / count_out
    both = (count_in > 0) & (count_out > 0)
    if not both.any():
        raise ValueError("no example was both IN and OUT of some shadow model")
    shift = float(np.mean(mean_in[both] - mean_out[both]))
    mean_in = np.where(count_in > 0, mean_in, mean_out + shift)
    mean_out = np.where(count_out > 0, mean_out, mean_in - shift)
    std_in = _pooled_std(shadows, shadow_in, mean_in)
    std_out = _pooled_std(shadows, ~shadow_in, mean_out)
    target = np.asarray(target, dtype=np.float64)
    return (
        -0.5 * ((target - mean_in) / std_in) ** 2
        - np.log(std_in)
        + 0.5 * ((target - mean_out) / std_out) ** 2
        + np.log(std_out)
    )


def _pooled_std(values: np.ndarray, chosen: np.ndarray, means: np.ndarray) -> float:
    """One standard deviation for every example: the chosen values' spread around
    their example's mean (a small floor keeps a degenerate fit finite)."""
    deviations = (values - means[None, :])[chosen]
    return max(float(np.sqrt(np.mean(deviations**2))), 1e-6) if deviations.size else 1.0


@dataclass(frozen=True)
class MembershipResult:
    """How well scores separate members from non-members."""

    auc: float
    tpr_at_fpr: dict[float, float]  # false-positive rate -> true-positive rate


def separation(members: np.ndarray, non_members: np.ndarray) -> MembershipResult:
    """AUC (the chance a member outscores a non-member, ties counting half) and the
    TPR at each of ``LOW_FPRS``: the share of members above the threshold that lets
    through at most that share of non-members."""
    members = np.asarray(members, dtype=np.float64)
    non_members = np.sort(np.asarray(non_members, dtype=np.float64))
    below = np.searchsorted(non_members, members, side="left")
    ties = np.searchsorted(non_members, members, side="right") - below
    auc = float(np.mean((below + 0.5 * ties) / len(non_members)))
    tpr = {}
    for fpr in LOW_FPRS:
        allowed = int(np.floor(fpr * len(non_members)))  # non-members let through
        threshold = non_members[len(non_members) - allowed - 1]
        tpr[fpr] = float(np.mean(members > threshold))
    return MembershipResult(auc, tpr)

"""Membership inference on a published model: was this example in its training set?

**Loss threshold** (Yeom et al. 2018): a model fits its training examples better
than unseen ones, so a low loss says "member". The score of an example is minus its
loss; sweeping the threshold gives the ROC curve.

Report as LiRA (Carlini et al. 2022) asks: the true-positive rate at a low
false-positive rate (0.1 %, 1 %), not only the AUC, since an attack that is sure of
a few members matters more than one that is slightly better than chance on all.
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

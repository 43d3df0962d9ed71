"""Local SGD and evaluation: plain functions over a model and tensors.

No Flower imports, so the client, the server's central evaluation and a single-process
reference loop all run the very same code. Batches are drawn by indexing the tensors
with a seeded ``torch.Generator`` rather than through a DataLoader: the same seed gives
the same batches, and no per-sample Python work sits in the loop.

Algorithms that change local training (FedProx's proximal term, SCAFFOLD's gradient
correction) plug in as a ``LocalObjective`` rather than growing a loop of their own.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fl_app.data import Split

EVAL_BATCH = 10_000


class LocalObjective(Protocol):
    """An algorithm's change to local SGD: a loss term and/or a gradient correction."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to each minibatch's loss (None: nothing to add)."""

    def correct_gradients(self, model: nn.Module) -> None:
        """Adjust ``p.grad`` in place after backward, before the SGD step."""


def local_steps(num_examples: int, epochs: int, batch_size: int) -> int:
    """K, the SGD steps ``train`` takes (SCAFFOLD divides by it)."""
    if num_examples == 0:
        return 0
    batch = num_examples if batch_size <= 0 else batch_size
    return epochs * math.ceil(num_examples / batch)


def train(
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    objective: LocalObjective | None = None,
    max_steps: int | None = None,
) -> float:
    """Run ``epochs`` of minibatch SGD (McMahan's ClientUpdate); return mean loss.

    ``batch_size`` 0 means the whole local dataset per step (the paper's B = inf).
    ``max_steps`` stops it early (FedProx's partial work: the first steps of the
    same batches). The reported loss is the data's cross-entropy, without
    ``objective``'s term, so that losses compare across algorithms.
    """
    if len(data) == 0 or max_steps == 0:
        return float("nan")
    batch = len(data) if batch_size <= 0 else batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    total, count, steps = 0.0, 0, 0
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch):
            index = order[start : start + batch]
            for param in params:
                param.grad = None
            loss = F.cross_entropy(model(data.x[index]), data.y[index])
            extra = objective.extra_loss(model) if objective is not None else None
            (loss if extra is None else loss + extra).backward()
            if objective is not None:
                objective.correct_gradients(model)
            sgd_step(params, lr)
            total += loss.item() * len(index)
            count += len(index)
            steps += 1
            if steps == max_steps:
                return total / count
    return total / count


@torch.no_grad()
def sgd_step(params: list[torch.Tensor], lr: float) -> None:
    """``w -= lr * grad``: what ``torch.optim.SGD`` does without momentum or weight
    decay (its single-tensor path, the CPU default), bit for bit.

    Not ``torch.optim.SGD`` itself: its constructor imports ``torch._dynamo`` (with
    sympy), 1.3-2 s and 150 MB in every fresh process, and a deployed SuperNode
    starts a fresh ``flwr-clientapp`` process for every message.
    """
    for param in params:
        if param.grad is not None:
            param.add_(param.grad, alpha=-lr)


@torch.no_grad()
def evaluate(model: nn.Module, data: Split) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model on ``data``."""
    if len(data) == 0:
        return float("nan"), float("nan")
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), EVAL_BATCH):
        x, y = data.x[start : start + EVAL_BATCH], data.y[start : start + EVAL_BATCH]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == y).sum())
    return loss_sum / len(data), correct / len(data)


def seeded_generator(*seeds: int) -> torch.Generator:
    """A generator whose stream depends on every seed given (run, round, client)."""
    mixed = 0
    for value in seeds:
        mixed = (mixed * 1_000_003 + int(value)) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)

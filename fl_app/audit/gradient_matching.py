"""A batch of inputs back from one FedSGD update by gradient matching.

**The attack** (Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019; Geiping et
al., "Inverting Gradients - How easy is it to break privacy in federated
learning?", NeurIPS 2020): a FedSGD reply (E = 1, B = n_k: one SGD step on the
whole local batch) is ``Δ = -η ∇L(w; x₁..x_B)``, so the server holds the gradient
``g = -Δ/η`` at known weights. It optimises dummy images until their gradient
points the same way: Geiping et al.'s loss, one minus the cosine between the two
gradients (all layers as one vector: insensitive to the gradient's scale, which
depends on how well the model already fits), plus a small total-variation prior
on the images, minimised with Adam (step decay at 3/8, 5/8 and 7/8 of the run),
images kept in [0, 1] by clamping.

**Labels first** (iDLG, Zhao et al. 2020, extended to batches as in Wainakh et
al. 2022): with mean cross-entropy the last layer's bias gradient is
``(1/B) Σᵢ (softmax(zᵢ) - onehot(yᵢ))``, so the update gives
``count(c) = B · p̄_c + (B/η) · Δb_c``, with ``p̄`` the batch's mean softmax. That
mean is unknown to the server; near initialisation the softmax is close to
uniform, and ``p̄ = 1/C`` (or a better guess the caller has) is used, the counts
rounded so that they sum to B. Matching then runs with the labels fixed, which
Zhao et al. show is what makes the optimisation well posed.

The inputs are the model's name, the global weights, the update as the server's
pipeline holds it (``strategies.validation.checked_arrays``), η and B.

Measured (``python -m fl_app.audit.gradient_matching DATA_DIR --iterations 2000
--batches 3``; Fashion-MNIST, the 2NN at its seed-0 init, η = 0.1): recovered at
>= 30 dB for B = 1, 4, 8, 16: 100, 100, 71 and 2 % (mean PSNR 53, 42, 33, 24 dB);
labels right for every batch up to B = 16 (about 96 % of them from B = 64 on).
The same replies separated as a mixture (``--separation``, which uses only the
first layer): 100, 100, 96 and 88 %, in well under a second.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.common import NDArrays
from torch import nn

from fl_app.audit.reconstruction import Quality
from fl_app.audit.replies import fit_config, reply_as_held
from fl_app.audit.separation import one_thread
from fl_app.data import NORMALISATION, Split
from fl_app.model import NUM_CLASSES, NUM_INPUTS, build_model, set_weights

#: Adam's step on pixel values, and the share of the run after which it is cut
#: by ten (Geiping et al.'s schedule).
STEP = 0.1
DECAY_AT = (3 / 8, 5 / 8, 7 / 8)


class Adam:
    """Adam (Kingma and Ba 2015) on one tensor, bias-corrected. Not
    ``torch.optim.Adam``: its constructor imports ``torch._dynamo``, 1.4 s of a
    test's budget (see ``fl_app.training.sgd_step``)."""

    def __init__(self, param: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999)):
        self.param, self.betas, self.steps = param, betas, 0
        self.first = torch.zeros_like(param)
        self.second = torch.zeros_like(param)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, lr: float) -> None:
        b1, b2 = self.betas
        self.steps += 1
        self.first.mul_(b1).add_(grad, alpha=1 - b1)
        self.second.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        first = self.first / (1 - b1**self.steps)
        second = self.second / (1 - b2**self.steps)
        self.param.sub_(lr * first / (second.sqrt() + 1e-8))


def batch_labels(
    delta: NDArrays, batch_size: int, lr: float, mean_softmax: np.ndarray | None = None
) -> np.ndarray:
    """The batch's labels (sorted; their order in the batch is not in the update):
    per-class counts ``B p̄ + (B/η) Δb`` rounded to integers that sum to B
    (largest remainders), ``p̄`` uniform unless the caller knows better."""
    bias = np.asarray(delta[-1], dtype=np.float64)
    prior = (
        np.full(len(bias), 1.0 / len(bias))
        if mean_softmax is None
        else np.asarray(mean_softmax, dtype=np.float64)
    )
    expected = np.clip(batch_size * prior + batch_size * bias / lr, 0.0, None)
    counts = np.floor(expected).astype(int)
    remainders = expected - counts
    while counts.sum() < batch_size:
        best = int(np.argmax(remainders))
        counts[best] += 1
        remainders[best] = -np.inf
    while counts.sum() > batch_size:  # a coded or noised reply can ask for more
        over = np.where(counts > 0, counts - expected, -np.inf)
        counts[int(np.argmax(over))] -= 1
    return np.repeat(np.arange(len(bias)), counts)


@dataclass(frozen=True)
class Reconstruction:
    """What gradient matching gives back: images in [0, 1] and their labels."""

    images: np.ndarray  # (B, 28, 28)
    labels: np.ndarray  # (B,)
    loss: float  # final matching loss (cosine distance + prior)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (the prior: natural images
    are piecewise smooth)."""
    grid = images.reshape(-1, 28, 28)
    across = (grid[:, :, 1:] - grid[:, :, :-1]).abs().mean()
    down = (grid[:, 1:, :] - grid[:, :-1, :]).abs().mean()
    return across + down


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The mean cross-entropy's gradient, differentiable in ``x``."""
    loss = nn.functional.cross_entropy(model(x), y)
    return list(torch.autograd.grad(loss, list(model.parameters()), create_graph=True))


def cosine_distance(
    a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]
) -> torch.Tensor:
    """1 - cos between two gradients, all layers taken as one vector."""
    dot = sum((x * y).sum() for x, y in zip(a, b, strict=True))
    norm_a = torch.sqrt(sum((x * x).sum() for x in a))
    norm_b = torch.sqrt(sum((y * y).sum() for y in b))
    return 1.0 - dot / (norm_a * norm_b + 1e-12)


def reconstruct_batch(
    model_name: str,
    weights: NDArrays,
    delta: NDArrays,
    lr: float,
    batch_size: int,
    dataset: str,
    *,
    iterations: int = 1000,
    tv: float = 1e-3,
    seed: int = 0,
) -> Reconstruction:
    """Images whose gradient at ``weights`` matches the FedSGD update ``delta``
    (one step of size ``lr`` on ``batch_size`` examples), labels inferred first."""
    with one_thread():
        return _matched(
            model_name, weights, delta, lr, batch_size, dataset, iterations, tv, seed
        )


def _matched(
    model_name: str,
    weights: NDArrays,
    delta: NDArrays,
    lr: float,
    batch_size: int,
    dataset: str,
    iterations: int,
    tv: float,
    seed: int,
) -> Reconstruction:
    model = build_model(model_name)
    set_weights(model, weights)
    target = [torch.as_tensor(-np.asarray(d), dtype=torch.float32) / lr for d in delta]
    labels = torch.as_tensor(batch_labels(delta, batch_size, lr))
    mean, std = NORMALISATION[dataset]
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch_size, NUM_INPUTS, generator=generator)
    pixels.requires_grad_(True)
    adam = Adam(pixels)
    loss = torch.tensor(0.0)
    for step in range(iterations):
        grads = _gradient(model, (pixels - mean) / std, labels)
        loss = cosine_distance(grads, target) + tv * total_variation(pixels)
        (direction,) = torch.autograd.grad(loss, [pixels])
        decay = 0.1 ** sum(step >= iterations * share for share in DECAY_AT)
        adam.step(direction, STEP * decay)
        with torch.no_grad():
            pixels.clamp_(0.0, 1.0)
    images = pixels.detach().numpy().reshape(batch_size, 28, 28)
    return Reconstruction(images, labels.numpy(), float(loss.detach()))


def label_accuracy(inferred: np.ndarray, true: np.ndarray) -> float:
    """Share of the batch's labels inferred, as multisets (order is not known)."""
    a = np.bincount(np.asarray(inferred), minlength=NUM_CLASSES)
    b = np.bincount(np.asarray(true), minlength=NUM_CLASSES)
    return float(np.minimum(a, b).sum() / max(len(true), 1))


def main(argv: Sequence[str] | None = None) -> None:
    """Print PSNR, SSIM, share recovered and label accuracy of gradient matching
    on FedSGD replies of the 2NN at its seed-0 init, per batch size (with
    ``--separation``: of ``fl_app.audit.separation`` on the same replies)."""
    from fl_app.audit.separation import summary
    from fl_app.data import client_data
    from fl_app.model import get_weights

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--sizes", default="1,4,8,16")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--tv", type=float, default=1e-3)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--separation", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    weights = get_weights(build_model("2nn", seed=0))
    train, _ = client_data(
        args.dataset,
        args.data_dir,
        "iid",
        0,
        100,
        alpha=0.5,
        val_fraction=0.1,
        seed=42,
    )
    for size in [int(s) for s in args.sizes.split(",")]:
        qualities, accuracies, start = [], [], time.perf_counter()
        for batch in range(args.batches):
            part = Split(train.x[batch * size :][:size], train.y[batch * size :][:size])
            scores, accuracy = _attack(weights, part, args)
            qualities += scores
            accuracies.append(accuracy)
        seconds = (time.perf_counter() - start) / args.batches
        print(
            f"B={size}: {summary(qualities)} labels={np.mean(accuracies):.0%} "
            f"| {seconds:.1f} s per batch",
            flush=True,
        )


def _attack(
    weights: NDArrays, part: Split, args: argparse.Namespace
) -> tuple[list[Quality], float]:
    """One FedSGD reply on ``part`` attacked: per-original quality, label accuracy."""
    from fl_app.audit.separation import match_to_originals, separate_inputs

    size = len(part)
    delta = reply_as_held("2nn", weights, part, fit_config(size))
    if args.separation:
        images = separate_inputs(delta, size, args.dataset, seed=0)
        labels = batch_labels(delta, size, 0.1)
    else:
        found = reconstruct_batch(
            "2nn",
            weights,
            delta,
            0.1,
            size,
            args.dataset,
            iterations=args.iterations,
            tv=args.tv,
        )
        images, labels = found.images, found.labels
    mean, std = NORMALISATION[args.dataset]
    originals = np.clip(part.x.numpy() * std + mean, 0.0, 1.0)
    scores = [m.quality for m in match_to_originals(images, originals)]
    return scores, label_accuracy(labels, part.y.numpy())


if __name__ == "__main__":
    main()

"""What an honest-but-curious server reads back from one client's update.

**The analytic attack on a fully connected first layer** (Phong et al. 2018;
Geiping et al. 2020, §3). For one example ``x`` and a first layer ``W₁x + b₁``, the
gradient of the loss is ``∂L/∂W₁ = δ xᵀ`` and ``∂L/∂b₁ = δ``: every row ``i`` with
``δᵢ ≠ 0`` is ``x`` times ``δᵢ``. One SGD step of FedSGD (B = 1, E = 1) sends
``Δ = -η ∇L``, the same up to ``-η``, so ``x = ΔW₁[i,:] / Δb₁[i]`` exactly. Both of
this app's models begin with such a layer. Rows are combined by least squares
(``Σᵢ Δb₁ᵢ ΔW₁ᵢ / Σᵢ Δb₁ᵢ²``), so rows the ReLU silenced (``δᵢ = 0``) weigh nothing
and float32 rounding averages out. What it needs, a one-example update, is what
SecAgg+ changes: the server then holds a sum, and this formula gives a blend of
every client's inputs. The sum is still a mixture of few inputs, though, and
``separation`` unmixes it: SecAgg+ alone does not hide five one-example updates.

**The label** (iDLG, Zhao et al. 2020): for one example the last layer's bias
gradient is ``softmax - onehot``, negative at the true label only, so the update
(``-η`` times it) is largest there.

The attack reads the update as the strategy's pipeline sees it: the arrays a reply
carries once ``strategies.validation`` has checked and decoded it
(``ClientUpdate.delta``), in the model's ``state_dict`` order.

Metrics are ``breaching``'s: MSE, PSNR and SSIM on images in [0, 1] (PSNR and SSIM
from ``torchmetrics``); an image counts as recovered at PSNR >= ``RECOVERED_PSNR``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.common import NDArrays

from fl_app.data import NORMALISATION

#: PSNR (dB) from which a reconstruction counts as recovered. Breaching's papers
#: call 20-25 dB recognisable for MNIST-sized images; 30 dB is near-identical.
RECOVERED_PSNR = 30.0
IMAGE_SHAPE = (28, 28)


def first_layer_inversion(delta: NDArrays) -> np.ndarray:
    """The (normalised, flattened) input a one-example update gives back: the
    least-squares multiple of ``ΔW₁``'s rows that ``Δb₁`` says they are."""
    weight, bias = (np.asarray(a, dtype=np.float64) for a in delta[:2])
    if weight.ndim != 2 or bias.shape != weight.shape[:1]:
        raise ValueError(
            f"the first two arrays must be a dense layer's weight and bias, got "
            f"shapes {weight.shape} and {bias.shape}"
        )
    energy = float(bias @ bias)
    if energy == 0.0:
        raise ValueError("the first layer's bias did not move: nothing to invert")
    return (bias @ weight) / energy


def label_from_update(delta: NDArrays) -> int:
    """iDLG's label for a one-example update: where the last bias moved up most."""
    return int(np.argmax(delta[-1]))


def to_pixels(x: np.ndarray, dataset: str) -> np.ndarray:
    """A normalised input (``fl_app.data.normalise``) as a 28x28 image in [0, 1]."""
    mean, std = NORMALISATION[dataset]
    return np.clip(np.asarray(x).reshape(IMAGE_SHAPE) * std + mean, 0.0, 1.0)


@dataclass(frozen=True)
class Quality:
    """How close a reconstruction is to the original (images in [0, 1])."""

    mse: float
    psnr: float
    ssim: float

    @property
    def recovered(self) -> bool:
        return self.psnr >= RECOVERED_PSNR


def quality(original: np.ndarray, reconstructed: np.ndarray) -> Quality:
    """MSE, PSNR (dB; capped at 100 for an exact copy) and SSIM of two images."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    a = torch.as_tensor(np.asarray(original, dtype=np.float32)).reshape(1, 1, 28, 28)
    b = torch.as_tensor(np.asarray(reconstructed, dtype=np.float32)).reshape(
        1, 1, 28, 28
    )
    mse = float(torch.mean((a - b) ** 2))
    psnr = 100.0 if mse == 0 else float(peak_signal_noise_ratio(b, a, data_range=1.0))
    ssim = float(structural_similarity_index_measure(b, a, data_range=1.0))
    return Quality(mse, min(psnr, 100.0), ssim)

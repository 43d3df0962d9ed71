"""The privacy audit's attacks on replies of many examples: the inputs a FedAvg
update mixes, separated (``fl_app.audit.separation``), and a FedSGD batch matched
by its gradient (``fl_app.audit.gradient_matching``), on real replies of this app's
client as the server's pipeline holds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fl_app.audit.gradient_matching import batch_labels, reconstruct_batch
from fl_app.audit.reconstruction import RECOVERED_PSNR
from fl_app.audit.replies import fit_config, reply_as_held
from fl_app.audit.separation import (
    match_to_originals,
    separate,
    share_recovered,
    summary,
)
from fl_app.data import NORMALISATION, Split, load_split
from fl_app.model import build_model, get_weights


@pytest.fixture(scope="module")
def examples(mnist_dir: Path) -> Split:
    return load_split("mnist", str(mnist_dir), "train")


def pixels(split: Split) -> np.ndarray:
    mean, std = NORMALISATION["mnist"]
    return np.clip(split.x.numpy() * std + mean, 0.0, 1.0)


def test_a_fedavg_update_of_twenty_examples_gives_them_back(examples: Split) -> None:
    """Two SGD steps (E = 1, B = 10) on 20 examples: the first layer is a mixture of
    the 20 inputs, which filtered ICA and the background polish separate exactly;
    every certified image is a real one, and the median is far above chance, while
    plain ICA gets none. (PSNR only: SSIM would import torchmetrics, 3 s of this
    file's budget.)"""
    batch = Split(examples.x[:20], examples.y[:20])
    weights = get_weights(build_model("2nn", seed=0))
    delta = reply_as_held("2nn", weights, batch, fit_config(10))
    found = separate(delta, 20, "mnist", seed=0, filters=("gradients",), restarts=1)
    assert found.dimension == 20
    matches = match_to_originals(found.images, pixels(batch), ssim=False)
    qualities = [m.quality for m in matches]
    assert share_recovered(qualities) >= 0.9, summary(qualities)
    certified = [m.quality for m in matches if found.certified[m.reconstruction]]
    assert len(certified) >= 15 and all(q.psnr > 60 for q in certified)
    # Chance: the same originals paired with 20 other examples of the data.
    others = Split(examples.x[20:40], examples.y[20:40])
    chance = summary(
        [
            m.quality
            for m in match_to_originals(pixels(others), pixels(batch), ssim=False)
        ]
    )
    assert summary(qualities).median_psnr > chance.median_psnr + 30
    # The published attack (ICA on the raw rows, no polish) recovers none of them.
    plain = separate(delta, 20, "mnist", 0, filters=("none",), restarts=1, polish=False)
    raw = match_to_originals(plain.images, pixels(batch), ssim=False)
    assert share_recovered([m.quality for m in raw]) == 0.0


def test_batch_label_counts_are_exact() -> None:
    """A FedSGD batch of 8 with repeated labels: counts from the last bias."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 784, generator=generator)
    y = torch.tensor([1, 1, 1, 4, 7, 7, 9, 0])
    weights = get_weights(build_model("2nn", seed=0))
    delta = reply_as_held("2nn", weights, Split(x, y), fit_config(8))
    assert batch_labels(delta, 8, 0.1).tolist() == sorted(y.tolist())
    # The known lr matters: read at ten times the step, the counts are wrong.
    assert batch_labels(delta, 8, 1.0).tolist() != sorted(y.tolist())


def test_gradient_matching_recovers_a_fedsgd_batch_of_three(examples: Split) -> None:
    """One SGD step on 3 examples; 200 Adam steps on the cosine distance (no prior:
    these images are speckled) bring every image back at >= 30 dB."""
    batch = Split(examples.x[:3], examples.y[:3])
    weights = get_weights(build_model("2nn", seed=0))
    delta = reply_as_held("2nn", weights, batch, fit_config(3))
    found = reconstruct_batch(
        "2nn", weights, delta, 0.1, 3, "mnist", iterations=200, tv=0.0
    )
    assert sorted(found.labels.tolist()) == sorted(batch.y.tolist())
    matches = match_to_originals(found.images, pixels(batch), ssim=False)
    qualities = [m.quality for m in matches]
    assert all(q.psnr >= RECOVERED_PSNR for q in qualities), qualities

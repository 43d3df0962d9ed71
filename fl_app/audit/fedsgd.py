"""The audit's FedSGD part: attacks on one-step replies of the app's own client,
under each defence, computed in this process (no flwr run uses B = 1).

Each reply is made by ``PartitionClient.fit`` from the global model at its seed and
read back through the server's decoding and checks (``replies.reply_as_held``);
"secagg" is what SecAgg+ shows the server, the client's reply summed with four
other clients'; central DP adds its noise after the server holds the update, so its
column is the undefended reply (``audit.capture-round`` in a real run keeps exactly
that, ``tests/test_privacy.py``). The attacks:

* **analytic** (B = 1): ``first_layer_inversion`` and iDLG's label, per example;
* **separation** (B = 4): the span of a batch reply unmixed (``separation``);
* **gradient matching** (B = 4): DLG/iDLG-style optimisation
  (``gradient_matching``), labels inferred from the reply first (their accuracy is
  reported where the batch is the client's alone).

Results are cached in ``<folder>/fedsgd.json`` and ``images.npz``: a re-run of the
study reuses them when the same arguments made them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common import NDArrays

from fl_app.audit.gradient_matching import label_accuracy, reconstruct_batch
from fl_app.audit.reconstruction import (
    Quality,
    first_layer_inversion,
    label_from_update,
    quality,
    to_pixels,
)
from fl_app.audit.replies import fit_config, reply_as_held
from fl_app.audit.separation import match_to_originals, separate_inputs, summary
from fl_app.compression import CodecSpec
from fl_app.config import DpConfig
from fl_app.data import Split, client_data
from fl_app.files import write_atomically, write_json
from fl_app.model import build_model, get_weights

MODEL = "2nn"
LR = 0.1
SHOWN = 8  # one-example replies attacked (and shown in the grid)
BATCH = 4  # the batch of the batch attacks
OTHERS = 4  # clients summed with the attacked one under SecAgg+
POPULATION = 1000  # the examples come from partition 0 of 1000 (54 examples)
MATCHING_ITERATIONS = 1000

#: defence -> (codec, local DP, summed with others?)
Defence = tuple[CodecSpec | None, DpConfig | None, bool]


def defences(
    seed: int, clip_norm: float, central: Sequence[float], local: Sequence[float]
) -> dict[str, Defence]:
    found: dict[str, Defence] = {
        "none": (None, None, False),
        "sign": (CodecSpec("sign", 0.01), None, False),
        "topk": (CodecSpec("topk", 0.01), None, False),
        "secagg": (None, None, True),
    }
    for z in central:
        found[f"central z={z:g}"] = (None, None, False)
    for z in local:
        dp = DpConfig(clip_norm, z, mode="local", noise_seed=seed)
        found[f"local z={z:g}"] = (None, dp, False)
    return found


def audit(
    folder: Path,
    *,
    dataset: str,
    data_dir: str,
    seed: int,
    clip_norm: float,
    central: Sequence[float],
    local: Sequence[float],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """(attack -> defence -> numbers, grid block -> row -> images), cached."""
    arguments = {
        "dataset": dataset,
        "data_dir": data_dir,
        "seed": seed,
        "clip_norm": clip_norm,
        "central": list(central),
        "local": list(local),
    }
    cached = _cached(folder, arguments)
    if cached is not None:
        return cached
    train, _ = client_data(
        dataset, data_dir, "iid", 0, POPULATION, alpha=0.5, val_fraction=0.1, seed=seed
    )
    weights = get_weights(build_model(MODEL, seed=seed))
    originals = _pixels(train, dataset)
    numbers: dict[str, dict[str, Any]] = {}
    analytic_rows = {"original": originals[:SHOWN]}
    batch_rows = {"original": originals[SHOWN : SHOWN + BATCH]}
    for name, defence in defences(seed, clip_norm, central, local).items():
        reply = _replier(weights, train, defence)
        found, images = _analytic(reply, train, dataset, originals)
        numbers.setdefault("analytic (B = 1)", {})[name] = found
        analytic_rows[name] = images
        batch = list(range(SHOWN, SHOWN + BATCH))
        delta, sources = reply(batch)
        found, images = _separation(delta, sources, dataset, seed, originals[batch])
        numbers.setdefault(f"separation (B = {BATCH})", {})[name] = found
        batch_rows[f"{name} (separation)"] = images
        found, images = _matching(
            weights, delta, sources, dataset, seed, originals[batch], train.y[batch]
        )
        numbers.setdefault(f"gradient matching (B = {BATCH})", {})[name] = found
        batch_rows[f"{name} (matching)"] = images
    blocks = {
        "FedSGD, one example: analytic": analytic_rows,
        f"FedSGD, batch of {BATCH}": batch_rows,
    }
    _store(folder, arguments, numbers, blocks)
    return numbers, blocks


Replier = Callable[[Sequence[int]], tuple[NDArrays, int]]


def _replier(weights: NDArrays, train: Split, defence: Defence) -> Replier:
    """examples -> (the update the server holds for them, the sources mixed in
    it): one client's reply, or under SecAgg+ its sum with ``OTHERS`` clients'
    replies of as many examples each (the examples after the attacked ones)."""
    codec, local_dp, summed = defence

    def one(indices: Sequence[int], partition: int) -> NDArrays:
        data = Split(train.x[list(indices)], train.y[list(indices)])
        config = fit_config(len(indices), LR)
        return reply_as_held(
            MODEL,
            weights,
            data,
            config,
            codec=codec,
            local_dp=local_dp,
            partition_id=partition,
        )

    def reply(indices: Sequence[int]) -> tuple[NDArrays, int]:
        delta = one(indices, 0)
        if not summed:
            return delta, len(indices)
        start = SHOWN + BATCH
        for k in range(OTHERS):
            others = range(start + k * len(indices), start + (k + 1) * len(indices))
            delta = [a + b for a, b in zip(delta, one(others, k + 1), strict=True)]
        return delta, len(indices) * (OTHERS + 1)

    return reply


def _analytic(
    reply: Replier, train: Split, dataset: str, originals: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    qualities: list[Quality] = []
    labels: list[bool] = []
    images = []
    for index in range(SHOWN):
        delta, _ = reply([index])
        image = to_pixels(first_layer_inversion(delta), dataset)
        images.append(image)
        qualities.append(quality(originals[index], image))
        labels.append(label_from_update(delta) == int(train.y[index]))
    found = summary(qualities)
    return {
        "share_recovered": found.share,
        "psnr": found.median_psnr,
        "ssim": found.mean_ssim,
        "label_accuracy": float(np.mean(labels)),
    }, np.array(images)


def _separation(
    delta: NDArrays,
    sources: int,
    dataset: str,
    seed: int,
    originals: np.ndarray,
) -> tuple[dict[str, Any], np.ndarray]:
    images = separate_inputs(delta, sources, dataset, seed)
    matches = match_to_originals(images, originals)
    found = summary([m.quality for m in matches])
    return {
        "share_recovered": found.share,
        "psnr": found.median_psnr,
        "ssim": found.mean_ssim,
    }, images[[m.reconstruction for m in matches]]


def _matching(
    weights: NDArrays,
    delta: NDArrays,
    sources: int,
    dataset: str,
    seed: int,
    originals: np.ndarray,
    labels: torch.Tensor,
) -> tuple[dict[str, Any], np.ndarray]:
    """Gradient matching with ``sources`` dummies; a SecAgg+ sum of k replies of
    B examples is one step of ``k * lr`` on a batch of ``k * B``."""
    found = reconstruct_batch(
        MODEL,
        weights,
        delta,
        LR * sources / len(originals),
        sources,
        dataset,
        iterations=MATCHING_ITERATIONS,
        seed=seed,
    )
    matches = match_to_originals(found.images, originals)
    scores = summary([m.quality for m in matches])
    inferred = found.labels if sources == len(originals) else None
    return {
        "share_recovered": scores.share,
        "psnr": scores.median_psnr,
        "ssim": scores.mean_ssim,
        "label_accuracy": None
        if inferred is None
        else label_accuracy(inferred, labels.numpy()),
    }, found.images[[m.reconstruction for m in matches]]


def _pixels(split: Split, dataset: str) -> np.ndarray:
    return np.array([to_pixels(x.numpy(), dataset) for x in split.x])


def _cached(
    folder: Path, arguments: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]] | None:
    path = folder / "fedsgd.json"
    if not path.is_file() or not (folder / "images.npz").is_file():
        return None
    stored = json.loads(path.read_text())
    if stored.get("arguments") != arguments:
        return None
    blocks: dict[str, dict[str, np.ndarray]] = {}
    with np.load(folder / "images.npz") as images:
        for key in images.files:
            block, _, row = key.partition("|")
            blocks.setdefault(block, {})[row] = images[key]
    order = stored["blocks"]
    return stored["numbers"], {
        b: {r: blocks[b][r] for r in rows} for b, rows in order.items()
    }


def _store(
    folder: Path,
    arguments: dict[str, Any],
    numbers: dict[str, Any],
    blocks: dict[str, dict[str, np.ndarray]],
) -> None:
    import io

    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        **{
            f"{b}|{r}": images
            for b, rows in blocks.items()
            for r, images in rows.items()
        },
    )
    write_atomically(folder / "images.npz", buffer.getvalue())
    write_json(
        folder / "fedsgd.json",
        {
            "arguments": arguments,
            "numbers": numbers,
            "blocks": {b: list(rows) for b, rows in blocks.items()},
        },
    )

"""Many inputs back from one first-layer update: the Cocktail Party Attack, sharpened.

**The first-layer update of many examples is a mixture of their inputs.** For a
dense first layer ``W₁x + b₁``, the gradient of any example's loss is
``∂L/∂W₁ = δ xᵀ`` and ``∂L/∂b₁ = δ``, with ``x`` the raw (normalised) input,
whatever the current weights. Local SGD only adds such terms, so after any number
of steps (FedAvg: E epochs, batch B, weights moving in between)
``ΔW₁ = Σⱼ cⱼ xⱼᵀ`` and ``Δb₁ = Σⱼ cⱼ`` over the client's n_k inputs: ``ΔW₁`` lies
exactly in the span of the inputs (rank <= min(n_k, hidden width)), and so does a
SecAgg+ sum of several clients' updates, over all their inputs. In matrix form
``[ΔW₁ | Δb₁] = C [X | 1]``: every augmented input ``[xⱼ, 1]`` lies in the row space
of the augmented update. This is the setting of the Cocktail Party Attack
(Kariyappa et al., "Cocktail Party Attack: Breaking Aggregation-Based Privacy in
Federated Learning Using Independent Component Analysis", ICML 2023): the rows of
``ΔW₁`` (200 for the 2NN) are mixtures of n_k signals of 784 pixels, which ICA
separates.

**What plain ICA misses here.** ICA's outputs are decorrelated by construction, and
images of one dataset are not: ten Fashion-MNIST images correlate by 0.37 on
average (shared silhouettes and background), and FastICA on the raw rows recovers
none of them, even at n_k = 10 (about 12 dB; the same images with their pixels
shuffled, which keeps every marginal but removes the correlation, come back at a
0.99 correlation). Three changes, each exact algebra rather than a prior:

1. *Unmix filtered rows* (innovation or subband ICA: Hyvärinen 1998; Cichocki
   and Amari 2002): a spatial filter is linear and acts on every row alike, so an
   unmixing estimated on high-pass filtered rows (Laplacian, gradients, second
   differences: edges, which images share far less than their silhouettes)
   unmixes the raw rows.
   FastICA with the ``exp`` contrast (robust to the heavy tails of edge maps),
   whitening to unit variance, several filters and seeds (``fast_ica``:
   scikit-learn's algorithm, written out).
2. *Sign and scale from the bias*, not from a heuristic: the unmixing of a row
   space vector is normalised so that its bias coordinate is 1, which is
   ``[xⱼ, 1]`` exactly when the separation is right: the input in its own units,
   sign included. (The dataset's normalisation then maps it to [0, 1].)
3. *Polish on the background* ("snap"): a real image has hundreds of pixels at
   exactly the background value 0 (the mode); an estimate's darkest pixels are
   taken as background and the vector of the span that is background there is
   solved for, with tightening thresholds. A result that is background (to 1e-3)
   on a pixel set on which exactly one direction of the span vanishes, and lies in
   [0, 1], is *certified*: no original is used to decide it.

Beyond the hidden width (n_k > 200 for the 2NN) the inputs no longer lie in the
row space (200 dimensions, n_k inputs): no unmixing of the rows can give them
back, and none is certified.

Measured (``python -m fl_app.audit.separation DATA_DIR --sums``; Fashion-MNIST, the
2NN at its seed-0 init, one FedAvg reply with E = 1, B = 10, η = 0.1): recovered
at >= 30 dB for n_k = 10, 20, 50, 100, 200, 540: 80, 80, 52, 17, 0.5 and 0 %,
every certified image right; plain ICA: 0 % at every n_k. Sums (SecAgg+): five
one-example updates, 5 of 5 exactly; ten clients of 10 examples, 21 %; ten
clients of 540 (5,400 inputs in 200 rows), none. The images missed below the
width are mostly large ones (pullovers, coats, shirts) whose background is small.

Scoring (``match_to_originals``) pairs originals and reconstructions one to one
(Hungarian assignment on PSNR) and reports ``reconstruction.quality`` per original.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from flwr.common import NDArrays
from scipy.optimize import linear_sum_assignment

from fl_app.audit.reconstruction import (
    IMAGE_SHAPE,
    Quality,
    quality,
)
from fl_app.audit.replies import fit_config, reply_as_held
from fl_app.data import NORMALISATION, Split

#: Singular values below this share of the largest are float32 rounding.
RANK_TOLERANCE = 1e-6
#: Background thresholds (pixel units) of the polishing passes, coarse to exact.
SNAP_THRESHOLDS = (0.1, 0.05, 0.02, 0.01, 0.002, 0.002)
#: A certified image: background to this (pixel units) where it is background...
CERTIFY_RESIDUAL = 1e-3
#: ...and that pixel set pins down one direction: the second-smallest eigenvalue of
#: its Gram matrix is at least this share of the largest.
CERTIFY_GAP = 1e-6
#: Two reconstructions closer than this (RMS, pixel units: 40 dB) are one image.
SAME_IMAGE = 0.01


@dataclass(frozen=True)
class Span:
    """The row space of ``[ΔW₁ | Δb₁]``, as pixel images: ``a @ pixels`` is the
    image (in [0, 1] units) of the row-space vector with coefficients ``a``, valid
    when its bias coordinate ``a @ bias`` is 1. Float64 tensors."""

    pixels: torch.Tensor  # (k, 784)
    bias: torch.Tensor  # (k,)

    @property
    def dimension(self) -> int:
        return len(self.bias)

    def image(self, a: torch.Tensor) -> torch.Tensor:
        """The image of ``a`` once scaled so that its bias coordinate is 1."""
        return (a @ self.pixels) / (a @ self.bias)


@dataclass(frozen=True)
class Separation:
    """What ``separate`` finds: images in [0, 1], certified ones first."""

    images: np.ndarray  # (k, 28, 28)
    certified: np.ndarray  # (k,) bool
    dimension: int  # of the row space used (min(num_sources, rank))


@contextmanager
def one_thread() -> Iterator[None]:
    """Linear algebra on one thread, as the app's clients train. The matrices are
    small; a second BLAS thread fighting another process for a core made the same
    separation 10-20 times slower, so it runs in torch, whose threads can be set
    (NumPy's OpenBLAS threads cannot, once loaded)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def input_span(delta: NDArrays, num_sources: int, dataset: str) -> Span:
    """The span the inputs lie in: the top right singular vectors of the augmented
    first layer, at most ``num_sources`` (the n_k a reply reports) and its rank."""
    weight, bias = (torch.as_tensor(a, dtype=torch.float64) for a in delta[:2])
    if weight.ndim != 2 or bias.shape != weight.shape[:1]:
        raise ValueError(
            f"the first two arrays must be a dense layer's weight and bias, got "
            f"shapes {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    _, values, rows = torch.linalg.svd(
        torch.hstack([weight, bias[:, None]]), full_matrices=False
    )
    rank = int((values > RANK_TOLERANCE * values[0]).sum()) if values[0] > 0 else 0
    if rank == 0:
        raise ValueError("the first layer did not move: nothing to separate")
    rows = rows[: min(num_sources, rank)]
    mean, std = NORMALISATION[dataset]
    # pixel = x * std + mean, and background x = -mean/std is pixel 0.
    return Span(std * rows[:, :-1] + mean * rows[:, -1:], rows[:, -1])


def _laplacian(i: torch.Tensor) -> list[torch.Tensor]:
    centre = 4 * i[:, 1:-1, 1:-1]
    edges = i[:, :-2, 1:-1] + i[:, 2:, 1:-1] + i[:, 1:-1, :-2] + i[:, 1:-1, 2:]
    return [centre - edges]


def _gradients(i: torch.Tensor) -> list[torch.Tensor]:
    return [torch.diff(i, dim=2), torch.diff(i, dim=1)]


def _second_differences(i: torch.Tensor) -> list[torch.Tensor]:
    mixed = torch.diff(torch.diff(i, dim=1), dim=2)
    return [torch.diff(i, 2, dim=2), torch.diff(i, 2, dim=1), mixed]


#: High-pass filters the unmixing is estimated on (each: images -> feature maps).
FILTERS: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
    "laplacian": _laplacian,
    "gradients": _gradients,
    "second-differences": _second_differences,
    "none": lambda images: [images],
}


def filtered(pixels: torch.Tensor, name: str) -> torch.Tensor:
    """Rows of ``pixels`` through filter ``name``, as (samples, rows) for ICA."""
    maps = FILTERS[name](pixels.reshape(-1, *IMAGE_SHAPE))
    return torch.hstack([m.reshape(len(pixels), -1) for m in maps]).T


def ica_unmixing(
    span: Span, filter_name: str, seed: int, max_iter: int = 1000
) -> torch.Tensor:
    """FastICA's unmixing rows (one per source), in the span's coefficients."""
    return fast_ica(filtered(span.pixels, filter_name), seed, max_iter)


def fast_ica(
    data: torch.Tensor, seed: int, max_iter: int = 1000, tol: float = 1e-6
) -> torch.Tensor:
    """Symmetric FastICA (Hyvärinen 1999) with the ``exp`` contrast
    ``G(u) = -exp(-u²/2)``, on ``data`` (samples, features) whitened to unit
    variance: the unmixing matrix, one row per source, acting on the features.
    scikit-learn's algorithm (``FastICA(whiten="unit-variance", fun="exp")``) in a
    few lines, without its 1.2 s import or a dependency."""
    centred = data - data.mean(dim=0)
    u, s, _ = torch.linalg.svd(centred.T, full_matrices=False)
    whitening = (u / s).T * len(data) ** 0.5
    white = whitening @ centred.T  # (features, samples), identity covariance
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(len(white), len(white), generator=generator)
    unmix = _decorrelated(start.to(torch.float64))
    for _ in range(max_iter):
        y = unmix @ white
        bell = torch.exp(-(y**2) / 2)
        step = (y * bell) @ white.T / white.shape[1]
        step -= ((1 - y**2) * bell).mean(dim=1)[:, None] * unmix
        new = _decorrelated(step)
        change = ((new * unmix).sum(dim=1).abs() - 1).abs().max()
        unmix = new
        if change < tol:
            break
    return unmix @ whitening


def _decorrelated(w: torch.Tensor) -> torch.Tensor:
    """``(W Wᵀ)^(-1/2) W``: the rows made orthonormal, symmetrically."""
    values, vectors = torch.linalg.eigh(w @ w.T)
    return (vectors / values.clamp(min=1e-300).sqrt()) @ vectors.T @ w


def snap(span: Span, a: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Polish ``a`` onto the background: the direction of the span that vanishes
    where the current image is darkest; certified if exactly one direction does and
    the image is then background there (to ``CERTIFY_RESIDUAL``) and in [0, 1]."""
    gap = 0.0
    for threshold in SNAP_THRESHOLDS:
        if abs(float(a @ span.bias)) < 1e-12:
            return a, False
        dark = span.image(a) < threshold
        if int(dark.sum()) < span.dimension:
            return a, False
        values, vectors = torch.linalg.eigh(
            span.pixels[:, dark] @ span.pixels[:, dark].T
        )
        a = vectors[:, 0]
        gap = float(values[1] / values[-1]) if span.dimension > 1 else 1.0
    if abs(float(a @ span.bias)) < 1e-12:
        return a, False
    image = span.image(a)
    background = image < SNAP_THRESHOLDS[-1]
    certified = (
        gap >= CERTIFY_GAP
        and int(background.sum()) > span.dimension
        and float(image[background].abs().max()) < CERTIFY_RESIDUAL
        and float(image.min()) > -0.01
        and float(image.max()) < 1.01
    )
    return a, certified


def separate(
    delta: NDArrays,
    num_sources: int,
    dataset: str,
    seed: int,
    *,
    filters: Sequence[str] = ("laplacian", "gradients", "second-differences"),
    restarts: int = 2,
    polish: bool = True,
    max_iter: int = 1000,
) -> Separation:
    """Separate the inputs mixed in ``delta``'s first layer (see the module
    docstring). Certified images come first, each once; the rest are filled with
    the first run's unpolished ICA estimates, so that there is one image per
    dimension of the span."""
    with one_thread():
        span = input_span(delta, num_sources, dataset)
        certified: list[torch.Tensor] = []
        fallback: list[torch.Tensor] = []
        for restart in range(restarts):
            for name in filters:
                for a in ica_unmixing(span, name, seed + restart, max_iter):
                    polished, ok = snap(span, a) if polish else (a, False)
                    if ok:
                        _add_new(certified, span.image(polished))
                    elif restart == 0 and name == filters[0]:
                        fallback.append(_scaled(span, a))
        images = list(certified)
        for image in fallback:
            if len(images) == span.dimension:
                break
            _add_new(images, image)
    stack = torch.stack(images[: span.dimension]).clamp(0.0, 1.0).numpy()
    flags = np.arange(len(stack)) < len(certified)
    return Separation(stack.reshape(-1, *IMAGE_SHAPE), flags, span.dimension)


def _scaled(span: Span, a: torch.Tensor) -> torch.Tensor:
    """ICA's estimate as an image: scaled by its bias coordinate, or (if that is
    nil) from its mode, taken as the background, to its far end taken as white."""
    if abs(float(a @ span.bias)) > 1e-9 * float(a.norm()):
        return span.image(a)
    raw = a @ span.pixels
    values, counts = torch.unique(torch.round(raw, decimals=6), return_counts=True)
    shifted = raw - values[counts.argmax()]
    sign = 1.0 if float(shifted.sum()) >= 0 else -1.0
    far = float((sign * shifted).max()) or 1.0
    return sign * shifted / far


def _add_new(images: list[torch.Tensor], image: torch.Tensor) -> None:
    if all(
        float((image - other).square().mean().sqrt()) > SAME_IMAGE for other in images
    ):
        images.append(image)


def separate_inputs(
    delta: NDArrays, num_sources: int, dataset: str, seed: int
) -> np.ndarray:
    """(k, 28, 28) images in [0, 1], k = min(num_sources, rank): the inputs
    ``separate`` reads from the update, certified ones first."""
    return separate(delta, num_sources, dataset, seed).images


# ------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Match:
    """An original, the reconstruction paired with it, and how close it is."""

    original: int
    reconstruction: int
    quality: Quality


def match_to_originals(
    recovered: np.ndarray, originals: np.ndarray, *, ssim: bool = True
) -> list[Match]:
    """Each original with a reconstruction of its own (Hungarian assignment,
    maximising total PSNR; images in [0, 1]). With fewer reconstructions than
    originals, those left over are scored against their nearest reconstruction,
    which can then serve two originals only if they are near-copies.

    ``ssim=False`` skips SSIM (left NaN) and with it ``torchmetrics``, whose first
    import costs ~3 s: MSE and PSNR are then computed here, as ``quality`` does."""
    rec = np.asarray(recovered, dtype=np.float64).reshape(len(recovered), -1)
    orig = np.asarray(originals, dtype=np.float64).reshape(len(originals), -1)
    mse = _pairwise_mse(orig, rec)
    psnr = np.minimum(-10.0 * np.log10(np.maximum(mse, 1e-10)), 100.0)
    rows, cols = linear_sum_assignment(-psnr)
    pairs = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    matches = []
    for i in range(len(orig)):
        j = pairs.get(i, int(np.argmax(psnr[i])))
        score = (
            quality(orig[i], rec[j])
            if ssim
            else Quality(float(mse[i, j]), float(psnr[i, j]), float("nan"))
        )
        matches.append(Match(i, j, score))
    return matches


def _pairwise_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MSE of every row of ``a`` with every row of ``b``, exact (no expansion into
    norms, which loses the 1e-10 of an exact copy), in blocks of rows."""
    with one_thread():
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        blocks = [
            ((ta[i : i + 16, None, :] - tb[None]) ** 2).mean(dim=-1)
            for i in range(0, len(ta), 16)
        ]
    return torch.cat(blocks).numpy()


def share_recovered(qualities: Sequence[Quality]) -> float:
    """The share of originals recovered (PSNR >= ``RECOVERED_PSNR``)."""
    return float(np.mean([q.recovered for q in qualities])) if qualities else 0.0


@dataclass(frozen=True)
class Summary:
    """What a table row reports of one attack on n originals."""

    count: int
    share: float
    mean_psnr: float
    median_psnr: float
    mean_ssim: float

    def __str__(self) -> str:
        return (
            f"n={self.count} recovered={self.share:.1%} PSNR mean "
            f"{self.mean_psnr:.1f} / median {self.median_psnr:.1f} dB "
            f"SSIM={self.mean_ssim:.3f}"
        )


def summary(qualities: Sequence[Quality]) -> Summary:
    """Share recovered, mean and median PSNR (capped at 100 dB for an exact
    copy, so the median is the robust one) and mean SSIM over originals."""
    psnr = [q.psnr for q in qualities]
    return Summary(
        len(qualities),
        share_recovered(qualities),
        float(np.mean(psnr)),
        float(np.median(psnr)),
        float(np.mean([q.ssim for q in qualities])),
    )


# ------------------------------------------------------------------ measurements


def _measure(
    label: str, delta: NDArrays, originals: np.ndarray, args: argparse.Namespace
) -> None:
    start = time.perf_counter()
    found = separate(
        delta,
        len(originals),
        args.dataset,
        seed=0,
        filters=args.filters.split(","),
        restarts=args.restarts,
        polish=not args.plain,
        max_iter=args.max_iter,
    )
    seconds = time.perf_counter() - start
    matches = match_to_originals(found.images, originals)
    right = sum(
        m.quality.recovered for m in matches if found.certified[m.reconstruction]
    )
    print(
        f"{label}: {summary([m.quality for m in matches])} | span {found.dimension}, "
        f"certified {int(found.certified.sum())} ({right} right) | {seconds:.1f} s",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Print the recovered share against n_k (one FedAvg update of the 2NN at its
    seed-0 init), and for sums of updates (what SecAgg+ shows the server)."""
    from fl_app.data import client_data
    from fl_app.model import build_model, get_weights

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--sizes", default="10,50,100,200,540")
    parser.add_argument("--sums", action="store_true")
    parser.add_argument("--filters", default="laplacian,gradients,second-differences")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument(
        "--plain", action="store_true", help="no polishing (CPA as published)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    weights = get_weights(build_model("2nn", seed=0))
    mean, std = NORMALISATION[args.dataset]

    def partition(p: int, k: int = 100) -> Split:
        return client_data(
            args.dataset,
            args.data_dir,
            "iid",
            p,
            k,
            alpha=0.5,
            val_fraction=0.1,
            seed=42,
        )[0]

    def pixels(split: Split) -> np.ndarray:
        return np.clip(split.x.numpy() * std + mean, 0.0, 1.0)

    train = partition(0)
    for n in [int(s) for s in args.sizes.split(",") if s]:
        part = Split(train.x[:n], train.y[:n])
        delta = reply_as_held("2nn", weights, part, fit_config(10))
        _measure(f"FedAvg E=1 B=10 n_k={n}", delta, pixels(part), args)
    if args.sums:
        _measure_sums(weights, partition, pixels, args)


def _measure_sums(
    weights: NDArrays,
    partition: Callable[[int], Split],
    pixels: Callable[[Split], np.ndarray],
    args: argparse.Namespace,
) -> None:
    groups = {
        "sum of 5 one-example updates (B=1)": ([partition(p) for p in range(5)], 1, 1),
        "sum of 10 updates of 10 examples": ([partition(p) for p in range(10)], 10, 10),
        "sum of 10 default updates (540 each)": (
            [partition(p) for p in range(10)],
            None,
            10,
        ),
    }
    for label, (parts, size, batch) in groups.items():
        chosen = [Split(p.x[:size], p.y[:size]) for p in parts]
        deltas = [
            reply_as_held("2nn", weights, part, fit_config(batch), partition_id=i)
            for i, part in enumerate(chosen)
        ]
        total = [sum(arrays) for arrays in zip(*deltas, strict=True)]
        originals = np.concatenate([pixels(part) for part in chosen])
        _measure(label, total, originals, args)


if __name__ == "__main__":
    main()

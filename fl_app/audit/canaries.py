"""Empirical ε of a DP training run from one run: Andrew et al. (ICLR 2024), "One-shot
Empirical Privacy Estimation for Federated Learning".

Canary clients are added to the population; each sends a fixed random direction
(unit norm, clipped like any update) instead of training. After the run, the cosine
between the final model's change and each canary's direction is measured, for
canaries that took part ("inserted") and for as many that never did ("held out").
High-dimensional random directions are nearly orthogonal, so the held-out cosines
are the noise floor; the inserted ones sit above it by what the model remembers of
them. Fitting a Gaussian to each, the two are as distinguishable as a Gaussian
mechanism with ``μ = (mean_in - mean_out) / std_out`` (μ-GDP), whose (ε, δ) curve
is ``δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)`` (Dong, Roth and Su 2022). The ε at
the run's δ is the estimate; an estimate above the accountant's bound (beyond its
sampling error) would mean the DP implementation leaks more than it claims.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.common import NDArrays
from scipy.optimize import brentq
from scipy.stats import norm

from fl_app.attacks import canary_direction


@dataclass(frozen=True)
class EmpiricalEpsilon:
    """The estimate and what it is made of."""

    epsilon: float
    mu: float  # the Gaussian mechanism's μ the two cosine distributions match
    mean_inserted: float
    mean_held_out: float
    std_held_out: float


def gdp_delta(epsilon: float, mu: float) -> float:
    """δ of a μ-GDP mechanism at ``epsilon``."""
    if mu <= 0:
        return 0.0
    # e^ε Φ(·) in logs: at large μ the ε sought is in the hundreds.
    second = math.exp(epsilon + norm.logcdf(-epsilon / mu - mu / 2))
    return float(norm.cdf(-epsilon / mu + mu / 2) - second)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest ε at which a μ-GDP mechanism is (ε, δ)-DP (0 when μ <= 0 or
    already δ at ε = 0)."""
    if mu <= 0 or gdp_delta(0.0, mu) <= delta:
        return 0.0
    high = 1.0
    while gdp_delta(high, mu) > delta:
        high *= 2
    return float(brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, high, xtol=1e-9))


def estimate_epsilon(
    inserted: np.ndarray, held_out: np.ndarray, delta: float
) -> EmpiricalEpsilon:
    """ε at ``delta`` from the cosines of inserted and held-out canaries."""
    inserted = np.asarray(inserted, dtype=np.float64)
    held_out = np.asarray(held_out, dtype=np.float64)
    if len(inserted) < 2 or len(held_out) < 2:
        raise ValueError("need at least two inserted and two held-out canaries")
    std = float(np.std(held_out, ddof=1))
    mean_in, mean_out = float(np.mean(inserted)), float(np.mean(held_out))
    mu = (mean_in - mean_out) / std if std > 0 else math.inf
    epsilon = math.inf if math.isinf(mu) else gdp_epsilon(mu, delta)
    return EmpiricalEpsilon(epsilon, mu, mean_in, mean_out, std)


def canary_cosines(
    model_change: NDArrays, seed: int, canaries: Iterable[int]
) -> np.ndarray:
    """The cosine between the model's change (final minus initial weights) and each
    canary's direction (``fl_app.attacks.canary_direction``, the run's ``seed``)."""
    change = np.concatenate([np.ravel(a).astype(np.float64) for a in model_change])
    length = float(np.linalg.norm(change))
    shapes = [a.shape for a in model_change]
    cosines = []
    for canary in canaries:
        direction = np.concatenate(
            [np.ravel(a) for a in canary_direction(seed, canary, shapes)]
        ).astype(np.float64)
        cosines.append(float(change @ direction) / length if length > 0 else 0.0)
    return np.array(cosines)


def epsilon_interval(
    inserted: np.ndarray,
    held_out: np.ndarray,
    delta: float,
    *,
    level: float = 0.95,
    resamples: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """A bootstrap interval of ``estimate_epsilon`` (both sets resampled): how far
    the estimate from this many canaries can be trusted."""
    rng = np.random.default_rng(seed)
    inserted, held_out = np.asarray(inserted), np.asarray(held_out)
    estimates = [
        estimate_epsilon(
            rng.choice(inserted, len(inserted)),
            rng.choice(held_out, len(held_out)),
            delta,
        ).epsilon
        for _ in range(resamples)
    ]
    tail = (1 - level) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return float(low), float(high)

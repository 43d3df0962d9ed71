"""Simulated misbehaving clients, for the robustness studies.

Which partitions attack is drawn once from the run's seed (so a run repeats), and the
clients work it out for themselves from the run config: the server is never told.
An attacker trains as usual and then lies about the result:

* ``label-flip``: trains on labels ``9 - y`` (data poisoning);
* ``sign-flip``: sends ``-factor * update`` (pushes the model uphill);
* ``scale``: sends ``factor * update`` (boosting, the core of model replacement,
  Bagdasaryan et al. 2020);
* ``gaussian-noise``: sends ``N(0, sigma^2)`` noise of the update's shape;
* ``dropout``: not an attack but the commonest fault: the client trains, then goes
  offline before it replies (what SecAgg+ must survive after masks were shared);
* ``canary``: not an attack but the privacy audit's probe (Andrew et al. 2024):
  the client sends ``factor`` times a fixed random unit direction of its own, every
  round it is sampled, so the audit can measure how much of it the final model
  keeps (``fl_app.audit.canaries``).
"""

from __future__ import annotations

import numpy as np
from flwr.common import NDArrays

from fl_app.config import AttackConfig
from fl_app.data import Split
from fl_app.model import NUM_CLASSES

_SALT = 0xA77AC  # keeps the attacker draw independent of every other seeded draw
_CANARY_SALT = 0xCA7A7  # and the canaries' directions


def attacking_partitions(
    seed: int, num_partitions: int, fraction: float
) -> frozenset[int]:
    """The ``round(fraction * N)`` partition ids that attack, drawn from ``seed``."""
    count = round(fraction * num_partitions)
    rng = np.random.default_rng([seed, _SALT])
    return frozenset(rng.choice(num_partitions, size=count, replace=False).tolist())


def flip_labels(split: Split) -> Split:
    """The same inputs with every label ``y`` replaced by ``9 - y``."""
    return Split(split.x, (NUM_CLASSES - 1) - split.y)


class SimulatedDropout(RuntimeError):
    """A client that went offline mid-round (``attack.kind = "dropout"``)."""


def canary_direction(seed: int, canary: int, shapes: list[tuple[int, ...]]) -> NDArrays:
    """Canary ``canary``'s fixed direction: a random unit vector over all the
    model's coordinates, drawn from ``(seed, canary)``. The audit draws held-out
    canaries (never sent) from ids no partition has."""
    rng = np.random.default_rng([seed, _CANARY_SALT, canary])
    arrays = [rng.standard_normal(shape) for shape in shapes]
    norm = np.sqrt(sum(float(np.sum(a * a)) for a in arrays))
    return [(a / norm).astype(np.float32) for a in arrays]


def poison_update(
    attack: AttackConfig,
    update: NDArrays,
    rng: np.random.Generator,
    *,
    seed: int = 0,
    partition_id: int = 0,
) -> NDArrays:
    """What an attacker sends in place of its honest ``update`` (a canary's
    direction depends on the run's ``seed`` and its ``partition_id`` only)."""
    if attack.kind == "canary":
        direction = canary_direction(seed, partition_id, [u.shape for u in update])
        return [
            (attack.factor * d).astype(u.dtype)
            for d, u in zip(direction, update, strict=True)
        ]
    if attack.kind == "dropout":
        raise SimulatedDropout("simulated dropout: this client went offline")
    if attack.kind == "sign-flip":
        return [(-attack.factor * u).astype(u.dtype) for u in update]
    if attack.kind == "scale":
        return [(attack.factor * u).astype(u.dtype) for u in update]
    if attack.kind == "gaussian-noise":
        return [
            rng.normal(0.0, attack.sigma, size=u.shape).astype(u.dtype) for u in update
        ]
    return update  # label-flip poisons the data, not the update

"""Central differential privacy for averaging strategies (DP-FedAvg, McMahan et al.,
"Learning Differentially Private Recurrent Language Models", ICLR 2018).

The server is trusted; what is protected is any one client's participation as seen
in the released global models. Each round:

1. every valid update is clipped to L2 norm ``S`` (``dp.clip-norm``) and weighted
   uniformly (``n_k`` would otherwise scale one client's influence);
2. Gaussian noise of standard deviation ``z S`` (``dp.noise-multiplier``) is added to
   the sum of the ``m`` clipped updates, so the mean carries noise ``z S / m``.

The noise is added as ``m`` independent shares ``N(0, z^2 S^2 / m)``, one per clipped
update, before the strategy's rule runs: their sum is exactly ``N(0, z^2 S^2)``, and
the rule then sees the noised mean. A server optimizer (FedAvgM, FedAdam, ...) that
follows is post-processing, so its state never holds an un-noised aggregate.

Accounting: clients are drawn uniformly without replacement, ``m`` of ``K`` per
round, so the matching model is dp-accounting's ``SampledWithoutReplacementDpEvent``
under the replace-one relation (Wang, Balle & Kasiviswanathan 2019). Replacing one
client moves the clipped sum by up to ``2 S``, so the Gaussian event's noise
multiplier (noise std over sensitivity) is ``z / 2``.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from flwr.common import NDArrays

from fl_app.config import DpConfig
from fl_app.model import update_norm


def clip(update: NDArrays, clip_norm: float) -> NDArrays:
    """``update * min(1, S / ||update||)``: the whole update as one vector."""
    norm = update_norm(update)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [(u * scale).astype(u.dtype) for u in update]


def privatize(
    updates: list[NDArrays], config: DpConfig, rng: np.random.Generator
) -> list[NDArrays]:
    """Clip each update to ``S``; add its share of the sum's noise ``N(0, z^2 S^2)``."""
    if not updates:
        return []
    share_std = config.noise_multiplier * config.clip_norm / math.sqrt(len(updates))
    return [
        [
            (c + rng.normal(0.0, share_std, size=c.shape)).astype(c.dtype)
            for c in clip(update, config.clip_norm)
        ]
        for update in updates
    ]


class PrivacyLedger:
    """The (epsilon, delta) spent so far, from dp-accounting's RDP accountant.

    It keeps the rounds as (population K, sample m) counts and replays them into a
    fresh accountant when asked, so its state is a small JSON-able dict.
    """

    def __init__(self, config: DpConfig) -> None:
        self.noise_multiplier = config.noise_multiplier
        self.delta = config.delta
        self.rounds: Counter[tuple[int, int]] = Counter()

    def epsilon(self, extra: tuple[int, int] | None = None) -> float:
        """Epsilon at ``delta`` after the rounds so far (plus ``extra``, if given)."""
        rounds = self.rounds.copy()
        if extra is not None:
            rounds[extra] += 1
        if not rounds:
            return 0.0
        # Imported here: dp-accounting takes seconds to import, and every process
        # that reads the run config imports this module (a deployed client too).
        from dp_accounting import dp_event, privacy_accountant, rdp

        accountant = rdp.RdpAccountant(
            neighboring_relation=privacy_accountant.NeighboringRelation.REPLACE_ONE
        )
        gaussian = dp_event.GaussianDpEvent(self.noise_multiplier / 2)
        for (population, sample), count in sorted(rounds.items()):
            event = dp_event.SampledWithoutReplacementDpEvent(
                population, sample, gaussian
            )
            accountant.compose(event, count)
        return float(accountant.get_epsilon(self.delta))

    def record(self, population: int, sample: int) -> None:
        """One private release: ``sample`` clients of ``population`` were aggregated."""
        self.rounds[(population, sample)] += 1

    def state_dict(self) -> dict[str, list[list[int]]]:
        return {"rounds": [[k, m, n] for (k, m), n in sorted(self.rounds.items())]}

    def load_state_dict(self, state: dict[str, list[list[int]]]) -> None:
        self.rounds = Counter({(k, m): n for k, m, n in state["rounds"]})

"""Differential privacy of the clients' updates, central or local.

**Central** (``dp.mode = "central"``): DP-FedAvg for averaging strategies (McMahan
et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018).

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

``CentralDp`` is what a strategy holds: the round's noise, seeded by
``(dp.noise-seed, round)``, the ledger, and the budget check before a round starts.

**Local** (``dp.mode = "local"``): the server is not trusted with any one update.
Each client clips its update to ``S`` and adds ``N(0, z^2 S^2)`` per coordinate
before it encodes and sends it (``local_privatize``), so what leaves the device is
a Gaussian mechanism's output: replace-one sensitivity ``2S``, noise multiplier
``z/2``, as above, but on one update rather than on the sum of ``m``. The server
knows who took part, so there is no amplification by sampling: a client's ε is the
composition of its own participations, and ``LocalDp`` keeps them per partition and
reports the worst client's ε. Flower's ``LocalDpMod`` does the same clip-and-noise
but on the weights a client returns (it clips ``w_k - w_t`` computed from the fit
message and adds noise to the weights); this app's clients send updates, possibly
compressed or masked afterwards, so the mechanism runs in the client's own pipeline
before encoding, where compression and SecAgg+ are post-processing. The price is
``z S sqrt(d)`` of noise on each update instead of ``z S sqrt(d) / m`` on the mean.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from flwr.common import NDArrays

from fl_app.config import ConfigError, DpConfig, RunConfig
from fl_app.model import update_norm

#: Salt of the seeded DP noise, beside the client draws' (``strategies.sampling``).
NOISE_SALT = 2


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


def local_privatize(
    update: NDArrays, config: DpConfig, rng: np.random.Generator
) -> NDArrays:
    """What a client sends under local DP: its update clipped to ``S``, plus
    ``N(0, z^2 S^2)`` on every coordinate."""
    std = config.noise_multiplier * config.clip_norm
    return [
        (c + rng.normal(0.0, std, size=c.shape)).astype(c.dtype)
        for c in clip(update, config.clip_norm)
    ]


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """ε at ``delta`` of ``releases`` Gaussian mechanisms of clipped updates with
    noise ``z S`` (replace-one sensitivity ``2S``: dp-accounting's multiplier is
    ``z/2``), composed by dp-accounting's RDP accountant."""
    if releases == 0:
        return 0.0
    # Imported here: dp-accounting takes seconds to import, and a client imports
    # this module too (for ``clip``).
    from dp_accounting import dp_event, privacy_accountant, rdp

    accountant = rdp.RdpAccountant(
        neighboring_relation=privacy_accountant.NeighboringRelation.REPLACE_ONE
    )
    accountant.compose(dp_event.GaussianDpEvent(noise_multiplier / 2), releases)
    return float(accountant.get_epsilon(delta))


def check_central_dp(config: RunConfig, conflict: str | None) -> None:
    """Refuse central DP around a strategy that does not average (``conflict`` says
    why it cannot be wrapped): the accountant's epsilon assumes noise on a mean."""
    if conflict is not None:
        raise ConfigError(
            "dp.clip-norm",
            f"central DP cannot wrap strategy {config.strategy!r}: {conflict}",
        )


class Update(Protocol):
    """What ``CentralDp.privatize`` changes in a client's update (the strategy's
    ``ClientUpdate``)."""

    delta: NDArrays
    num_examples: int


class CentralDp:
    """Central DP as a strategy uses it: the round's noise, the privacy spent so far
    and the budget, in one place.

    The spending is kept as (population K, sample m) round counts, replayed into a
    fresh dp-accounting RDP accountant when asked, so the state is a small JSON-able
    dict (the checkpoint's ``privacy`` entry).
    """

    def __init__(self, config: DpConfig) -> None:
        self.config = config
        self.rounds: Counter[tuple[int, int]] = Counter()

    def privatize(self, server_round: int, updates: Sequence[Update]) -> None:
        """Clip and noise the round's updates in place, and weight them uniformly
        (one client, one vote: ``n_k`` would scale one client's influence).

        The noise is drawn from ``(dp.noise-seed, round)`` when the seed is set, so
        a study can repeat it; from OS entropy otherwise.
        """
        seed = self.config.noise_seed
        rng = np.random.default_rng(
            None if seed < 0 else [seed, server_round, NOISE_SALT]
        )
        noised = privatize([u.delta for u in updates], self.config, rng)
        for update, delta in zip(updates, noised, strict=True):
            update.delta = delta
            update.num_examples = 1

    def epsilon(self, extra: tuple[int, int] | None = None) -> float:
        """Epsilon at ``dp.delta`` after the rounds so far (plus ``extra``, a
        (population, sample) round, if given)."""
        rounds = self.rounds.copy()
        if extra is not None:
            rounds[extra] += 1
        if not rounds:
            return 0.0
        # Imported here: dp-accounting takes seconds to import, and a client imports
        # this module too (for ``clip``).
        from dp_accounting import dp_event, privacy_accountant, rdp

        accountant = rdp.RdpAccountant(
            neighboring_relation=privacy_accountant.NeighboringRelation.REPLACE_ONE
        )
        gaussian = dp_event.GaussianDpEvent(self.config.noise_multiplier / 2)
        for (population, sample), count in sorted(rounds.items()):
            event = dp_event.SampledWithoutReplacementDpEvent(
                population, sample, gaussian
            )
            accountant.compose(event, count)
        return float(accountant.get_epsilon(self.config.delta))

    def overspend(self, server_round: int, population: int, sample: int) -> str | None:
        """Why round ``server_round`` (``sample`` clients of ``population``) must not
        run, because it would overspend ``dp.max-epsilon``; None if it may."""
        budget = self.config.max_epsilon
        if budget <= 0 or sample == 0:
            return None
        after = self.epsilon((population, sample))
        if after <= budget:
            return None
        return (
            f"privacy budget: round {server_round} would bring epsilon to "
            f"{after:.3f} > dp.max-epsilon = {budget:g} (delta = "
            f"{self.config.delta:g}); the model of round {server_round - 1} "
            "is final"
        )

    def record(self, population: int, sample: int) -> None:
        """One private release: ``sample`` clients of ``population`` were aggregated."""
        self.rounds[(population, sample)] += 1

    def before_round(
        self, server_round: int, population: int, partitions: Sequence[int]
    ) -> str | None:
        """The strategy's budget check (shared with ``LocalDp``)."""
        return self.overspend(server_round, population, len(partitions))

    def released(
        self, population: int, partitions: Sequence[int], *, aggregated: bool
    ) -> None:
        """The strategy's ledger entry after a round: the noised mean is released
        only when the model moved."""
        if aggregated:
            self.record(population, len(partitions))

    def state_dict(self) -> dict[str, list[list[int]]]:
        return {"rounds": [[k, m, n] for (k, m), n in sorted(self.rounds.items())]}

    def load_state_dict(self, state: dict[str, list[list[int]]]) -> None:
        self.rounds = Counter({(k, m): n for k, m, n in state["rounds"]})


def dp_ledger(config: DpConfig) -> CentralDp | LocalDp | None:
    """The strategy's DP ledger for the run's ``dp.mode`` (None when DP is off)."""
    if config.central:
        return CentralDp(config)
    return LocalDp(config) if config.local else None


class LocalDp:
    """Local DP's ledger on the server: each partition's releases, so the history's
    ``epsilon`` is the worst client's (the one that took part most), and the budget
    check before a round. The noise itself is added by each client.

    Same interface as ``CentralDp``, whose ``privatize`` here does nothing: the
    updates arrive noised.
    """

    def __init__(self, config: DpConfig) -> None:
        self.config = config
        self.releases: Counter[int] = Counter()  # partition -> rounds it took part

    def privatize(self, server_round: int, updates: Sequence[Update]) -> None:
        return None

    def epsilon(self, extra: Sequence[int] = ()) -> float:
        """The worst client's ε at ``dp.delta`` (after the partitions in ``extra``
        take part once more)."""
        counts = self.releases.copy()
        counts.update(extra)
        most = max(counts.values(), default=0)
        return gaussian_epsilon(self.config.noise_multiplier, most, self.config.delta)

    def overspend(self, server_round: int, partitions: Sequence[int]) -> str | None:
        """Why round ``server_round`` must not run because a client in it would
        overspend ``dp.max-epsilon``; None if it may."""
        budget = self.config.max_epsilon
        if budget <= 0 or not partitions:
            return None
        after = self.epsilon(partitions)
        if after <= budget:
            return None
        return (
            f"privacy budget: in round {server_round} a client's local epsilon "
            f"would reach {after:.3f} > dp.max-epsilon = {budget:g} (delta = "
            f"{self.config.delta:g}); the model of round {server_round - 1} is final"
        )

    def record(self, partitions: Sequence[int]) -> None:
        """These partitions' noised updates were released to the server."""
        self.releases.update(partitions)

    def before_round(
        self, server_round: int, population: int, partitions: Sequence[int]
    ) -> str | None:
        return self.overspend(server_round, partitions)

    def released(
        self, population: int, partitions: Sequence[int], *, aggregated: bool
    ) -> None:
        """Every sampled client sent its noised update, aggregated or not."""
        self.record(partitions)

    def state_dict(self) -> dict[str, list[list[int]]]:
        return {"releases": [[p, n] for p, n in sorted(self.releases.items())]}

    def load_state_dict(self, state: dict[str, list[list[int]]]) -> None:
        self.releases = Counter({p: n for p, n in state["releases"]})

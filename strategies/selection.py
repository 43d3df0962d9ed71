"""Which partitions a round trains: the policy of ``selection.policy``, fed with what
the server has seen of each client.

``uniform`` is the seeded draw the app has always made (the same partitions, bit for
bit). ``power-of-choice`` is Cho et al.'s pow-d with stale losses (their rpow-d,
AISTATS 2022): d candidates drawn in proportion to n_k, the m with the highest loss
they last reported kept, never-seen clients first. ``oort`` is Lai et al.'s guided
selection (OSDI 2021): statistical utility n_k * loss, divided by (t_k / T)^alpha
when the client's last round time t_k exceeded the preferred T (the round deadline,
else the median observed time), and a share ``explore`` of each round for clients
not tried yet. The rules are the pure functions of ``fl_app.heterogeneity.selection``.

What a policy reads is what a real server knows: the training loss and n_k each
client reported, and when its reply arrived (on the virtual clock); never a
client's data or its hidden device. Unseen clients' n_k count as the mean of those
seen. All of it is in the checkpoint, so a resumed run selects as the uninterrupted
one would.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fl_app import keys
from fl_app.config import ConfigError, RunConfig
from fl_app.heterogeneity import oort_select, power_of_choice


def uniform_draw(
    rng: np.random.Generator, candidates: Sequence[int], size: int
) -> list[int]:
    """``size`` of ``candidates`` uniformly without replacement, in their order: the
    app's seeded draw (over ``range(K)``, ``np.sort(rng.choice(K, size))``)."""
    picked = rng.choice(len(candidates), size=size, replace=False)
    return [candidates[i] for i in np.sort(picked)]


class Selection:
    """The policy, and what it has observed of each partition so far."""

    def __init__(self, config: RunConfig) -> None:
        self.settings = config.selection
        self.deadline = config.heterogeneity.round_deadline
        self.losses: dict[int, float] = {}  # last reported training loss
        self.examples: dict[int, int] = {}  # last reported n_k
        self.seconds: dict[int, float] = {}  # last observed round time (virtual)

    @property
    def policy(self) -> str:
        return self.settings.policy

    def choose(
        self, rng: np.random.Generator, candidates: Sequence[int], size: int
    ) -> list[int]:
        """``size`` of ``candidates`` (ascending partition ids), ascending."""
        if self.policy == "uniform":
            return uniform_draw(rng, candidates, size)
        if self.policy == "power-of-choice":
            return self._power_of_choice(rng, candidates, size)
        return self._oort(rng, candidates, size)

    def _power_of_choice(
        self, rng: np.random.Generator, candidates: Sequence[int], size: int
    ) -> list[int]:
        d = self.settings.candidates or 2 * size
        d = min(d, len(candidates))
        if d < size:
            raise ConfigError(
                "selection.candidates",
                f"power-of-choice needs d >= m: d = {d} candidates for the {size} "
                "clients a round",
            )
        known = [self.examples[p] for p in candidates if p in self.examples]
        unseen = statistics.fmean(known) if known else 1.0
        sizes = [self.examples.get(p, unseen) for p in candidates]
        losses = {
            i: self.losses[p] for i, p in enumerate(candidates) if p in self.losses
        }
        picked = power_of_choice(rng, sizes, losses, d=d, m=size)
        return [candidates[i] for i in picked]

    def _oort(
        self, rng: np.random.Generator, candidates: Sequence[int], size: int
    ) -> list[int]:
        stat = {
            p: self.examples[p] * self.losses[p]
            for p in candidates
            if p in self.losses and p in self.seconds
        }
        preferred = self.deadline or (
            statistics.median(self.seconds.values()) if self.seconds else 1.0
        )
        return oort_select(
            rng,
            list(candidates),
            stat_utility=stat,
            durations=self.seconds,
            preferred_duration=preferred,
            alpha=self.settings.alpha,
            m=size,
            epsilon=self.settings.explore,
        )

    def observe(
        self,
        replies: Iterable[tuple[int, int, dict[str, Any]]],
        seconds: dict[int, float],
    ) -> None:
        """A round's replies, (partition, n_k, metrics) each, late ones included
        (the server saw them arrive), and their times on the virtual clock."""
        if self.policy == "uniform":
            return
        for partition, num_examples, metrics in replies:
            loss = metrics.get(keys.TRAIN_LOSS)
            if isinstance(loss, (int, float)) and math.isfinite(loss):
                self.losses[partition] = float(loss)
                self.examples[partition] = int(num_examples)
        self.seconds.update(seconds)

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": dict(self.losses),
            "examples": dict(self.examples),
            "seconds": dict(self.seconds),
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        # JSON-like checkpoints may have turned the keys into strings.
        self.losses = {int(k): float(v) for k, v in state.get("losses", {}).items()}
        self.examples = {int(k): int(v) for k, v in state.get("examples", {}).items()}
        self.seconds = {int(k): float(v) for k, v in state.get("seconds", {}).items()}

"""Client selection that uses what the server has learned about its clients.

Uniform sampling ignores that clients differ: some still have high loss (their data
is not yet fitted), some are slow. Power-of-Choice (Cho et al., "Towards Understanding
Biased Client Selection in Federated Learning", AISTATS 2022) biases selection
towards high local loss; Oort (Lai et al., "Oort: Efficient Federated Learning via
Guided Participant Selection", OSDI 2021) weighs statistical utility against speed.
Both rules here use only what a real server knows: losses its clients reported and
durations it observed, never a client's data or its device profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def power_of_choice(
    rng: np.random.Generator,
    num_examples: Sequence[int],
    losses: Mapping[int, float],
    *,
    d: int,
    m: int,
    default_loss: float = math.inf,
) -> list[int]:
    """Cho et al.'s pow-d: m of the clients 0 .. len(num_examples) - 1, sorted.

    1. Candidates: d distinct clients drawn without replacement with probability
       proportional to n_k = ``num_examples[k]`` (successive sampling: each draw
       proportional to n_k among those not yet drawn). Drawn in one vectorized step
       by exponential keys (Efraimidis and Spirakis, 2006): with
       e = rng.exponential(size=len(num_examples)), the candidates are the d
       smallest e_k / n_k, ties by client id; a client with n_k = 0 is never drawn.
    2. Of those, the m with the highest last-reported local loss (``losses``; ties
       by client id). A client never heard from counts as ``default_loss``, inf by
       default, so unseen candidates are tried first.
    """
    n = np.asarray(num_examples, dtype=np.float64)
    if n.ndim != 1 or np.any(~(n >= 0)):
        raise ValueError("num_examples must be a list of counts >= 0")
    if not 1 <= m <= d:
        raise ValueError(f"need d >= m >= 1, got d={d}, m={m}")
    if d > np.count_nonzero(n):
        raise ValueError(
            f"d={d} exceeds the {np.count_nonzero(n)} clients with examples"
        )
    for client, loss in losses.items():
        if math.isnan(loss):
            raise ValueError(f"losses[{client}] is NaN")
    e = rng.exponential(size=len(n))
    with np.errstate(divide="ignore"):
        keys = np.where(n > 0, e / n, np.inf)
    candidates = np.argsort(keys, kind="stable")[:d].tolist()
    ranked = sorted(candidates, key=lambda k: (-losses.get(k, default_loss), k))
    return sorted(ranked[:m])


def oort_utility(
    stat_utility: float,
    duration: float,
    *,
    preferred_duration: float,
    alpha: float = 2.0,
) -> float:
    """Oort's utility of a client: its statistical utility, penalized if slow.

        stat_utility * (preferred_duration / duration) ** alpha
                                        if duration > preferred_duration
        stat_utility                    otherwise

    ``stat_utility`` is Oort's |B_k| * sqrt(mean of squared per-example losses)
    over the client's last training, or whatever proxy the caller computes from
    reported losses; ``duration`` its last observed round time.
    """
    if not preferred_duration > 0:
        raise ValueError(f"preferred_duration must be > 0, got {preferred_duration!r}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    if not duration >= 0:
        raise ValueError(f"duration must be >= 0, got {duration!r}")
    if duration > preferred_duration:
        return stat_utility * (preferred_duration / duration) ** alpha
    return stat_utility


def oort_select(
    rng: np.random.Generator,
    clients: Sequence[int],
    *,
    stat_utility: Mapping[int, float],
    durations: Mapping[int, float],
    preferred_duration: float,
    alpha: float = 2.0,
    m: int,
    epsilon: float = 0.2,
) -> list[int]:
    """m of the available ``clients``, sorted: Oort's exploit/explore rule, simplified.

    A client is explored once it has a ``stat_utility`` (it trained and reported);
    it then needs its observed duration in ``durations``. Of m slots, floor(epsilon
    * m) explore: uniformly without replacement among unexplored clients (Oort
    prefers faster ones, but the server has no duration for them). The rest
    exploit: the explored clients of highest ``oort_utility``, ties by client id. If
    one pool runs short the other fills the slots (exploitation first, then
    exploration, when unexplored clients run out; more exploration when explored
    ones do).

    Simplified from Oort: exploitation takes the top utilities rather than sampling
    among those above a cutoff, there is no staleness bonus for clients not picked
    in a while, and epsilon and ``preferred_duration`` are fixed, not adapted.
    """
    if len(set(clients)) != len(clients):
        raise ValueError("clients must be distinct")
    if not 1 <= m <= len(clients):
        raise ValueError(f"m must be in [1, {len(clients)}], got {m}")
    if not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
    explored = sorted(k for k in clients if k in stat_utility)
    unexplored = sorted(k for k in clients if k not in stat_utility)
    missing = [k for k in explored if k not in durations]
    if missing:
        raise ValueError(f"durations has no entry for explored clients {missing}")

    utility = {
        k: oort_utility(
            stat_utility[k],
            durations[k],
            preferred_duration=preferred_duration,
            alpha=alpha,
        )
        for k in explored
    }
    # floor with a little slack, so 0.29 * 100 = 28.999... still gives 29
    explore = min(math.floor(epsilon * m + 1e-9), len(unexplored))
    exploit = min(m - explore, len(explored))
    explore = m - exploit  # fits: len(explored) + len(unexplored) >= m
    best = sorted(explored, key=lambda k: (-utility[k], k))[:exploit]
    tried = rng.choice(len(unexplored), size=explore, replace=False) if explore else []
    return sorted(best + [unexplored[i] for i in tried])

"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (arXiv:1602.05629), Algorithm 1.

Each round the server samples a fraction C of the K clients; each runs E epochs of
SGD with batch B from the global weights and returns ``w_k`` with its example count
``n_k``; the server sets

    w_{t+1} = Σ_k (n_k / n) w_k,   n = Σ_k n_k   (over the clients that replied).

The rule is Flower's ``FedAvg.aggregate_fit``, which ``BaseStrategy`` inherits
unchanged, so this class adds nothing: it names the algorithm in the registry.
"""

from __future__ import annotations

from strategies.base import BaseStrategy


class FedAvg(BaseStrategy):
    """Federated averaging as in the paper; the base of the other strategies."""

"""FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020
(arXiv:1812.06127), Algorithm 2.

Each client minimises its loss plus a proximal term that keeps it near the global
weights it started from:

    min_w  F_k(w) + (mu / 2) ||w - w_t||^2,   so each gradient gains mu (w - w_t).

The server side is FedAvg's. The rule that tells clients mu is Flower's ``FedProx``
(its ``configure_fit`` adds ``proximal_mu`` to the fit config); the term itself is
``fl_app.client_parts.FedProxTerm``. mu = 0 trains exactly as FedAvg does.
"""

from __future__ import annotations

from pathlib import Path

from flwr.server.strategy import FedProx as FlowerFedProx

from fl_app.config import RunConfig
from strategies.base import BaseStrategy


class FedProx(BaseStrategy, FlowerFedProx):
    """FedAvg whose clients add (mu/2)||w - w_t||^2, mu = ``fedprox.mu``."""

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        super().__init__(config, run_dir, proximal_mu=config.fedprox.mu)

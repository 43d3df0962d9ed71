"""Krum: Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.

With n replies of which at most f are Byzantine, each w_i gets the score

    s(i) = Σ_{j in N(i)} ||w_i - w_j||²,   N(i) = its n - f - 2 nearest others,

and Krum takes the w_i of the lowest score (``krum.num-to-keep`` = m > 0 averages
the m lowest instead: Multi-Krum). Distances between weights equal distances
between updates, so this is the paper's rule on what clients send. The rule is
Flower's ``Krum``; ``krum.num-malicious`` is f.
"""

from __future__ import annotations

from pathlib import Path

from flwr.server.strategy import Krum as FlowerKrum

from fl_app.config import RunConfig
from strategies.base import BaseStrategy


class Krum(BaseStrategy, FlowerKrum):
    """The reply nearest to its n - f - 2 neighbours (``krum.*``)."""

    dp_conflict = (
        "Krum selects updates by their distances instead of averaging them, so "
        "noise calibrated to S/m does not bound one client's effect"
    )
    secagg_conflict = (
        "a robust rule needs each client's update, and SecAgg+ shows the server "
        "only their sum"
    )

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        super().__init__(
            config,
            run_dir,
            num_malicious_clients=config.krum.num_malicious,
            num_clients_to_keep=config.krum.num_to_keep,
        )

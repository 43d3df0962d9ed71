"""FedAvgM: Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data Distribution
for Federated Visual Classification", 2019 (arXiv:1909.06335).

The server treats the average update as a pseudo-gradient and applies SGD with
momentum beta and learning rate eta:

    g_t = w_t - Σ_k (n_k/n) w_k,   v_t = beta v_{t-1} + g_t  (v_1 = g_1),
    w_{t+1} = w_t - eta v_t.

With beta = 0 and eta = 1 this is FedAvg. The rule is Flower's ``FedAvgM``, which
starts v only when the server round is 1; here v starts at the first round that
aggregates (round 1 may keep the model when too few replies are valid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import NDArrays, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvgM as FlowerFedAvgM

from fl_app.config import RunConfig
from strategies.base import BaseStrategy, ClientUpdate


class FedAvgM(BaseStrategy, FlowerFedAvgM):
    """Server momentum on FedAvg's average (``fedavgm.*``)."""

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        super().__init__(
            config,
            run_dir,
            server_learning_rate=config.fedavgm.server_learning_rate,
            server_momentum=config.fedavgm.momentum,
        )

    def aggregate(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> NDArrays | None:
        """Flower's rule, told it is round 1 until v exists (see the module)."""
        first = self.momentum_vector is None  # Flower's test is server_round == 1
        return super().aggregate(1 if first else server_round, updates)

    def state_dict(self) -> dict[str, Any]:
        """The base's state plus the server's weights and v, so a resume goes on
        with the same momentum."""
        # Flower keeps the server's weights in ``initial_parameters``.
        return {
            **super().state_dict(),
            "server_weights": parameters_to_ndarrays(self.initial_parameters),
            "momentum": self.momentum_vector,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue with the saved server weights and momentum."""
        super().load_state_dict(state)
        self.initial_parameters = ndarrays_to_parameters(state["server_weights"])
        momentum = state["momentum"]
        self.momentum_vector = (
            None if momentum is None else [np.array(v, copy=True) for v in momentum]
        )

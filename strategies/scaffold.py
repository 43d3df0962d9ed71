"""SCAFFOLD: Karimireddy, Kale, Mohri, Reddi, Stich & Suresh, "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning", ICML 2020 (arXiv:1910.06378),
Algorithm 1 with option II.

The server keeps a control variate c and each client i its own c_i. A client starts
from x = w_t, takes K steps ``y <- y - eta_l (g_i(y) - c_i + c)``, then sets

    c_i+ = c_i - c + (x - y) / (K eta_l)

and sends Δy_i = y - x and Δc_i = c_i+ - c_i. With S the sampled set and N clients:

    x <- x + eta_g Σ_{i in S} (n_i/n) Δy_i,     c <- c + (1/N) Σ_{i in S} Δc_i.

The paper averages Δy_i uniformly; weighting by n_i is FedAvg's convention and the
same when partitions are equal. c travels down after the weights and Δc_i up after
the update, so validation and byte counts see them; c_i lives in the node's
``Context.state`` (``fl_app.client_parts.ScaffoldClient``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import NDArrays, Parameters, Scalar, ndarrays_to_parameters
from flwr.common import parameters_to_ndarrays as to_ndarrays

from fl_app import keys
from fl_app.config import RunConfig
from strategies.base import BaseStrategy, ClientUpdate
from strategies.validation import Layout


class Scaffold(BaseStrategy):
    """FedAvg with server and client control variates (``scaffold.*``)."""

    dp_conflict = (
        "the control-variate changes travel beside the update un-clipped and "
        "un-noised, so they would leak what DP protects"
    )
    secagg_conflict = (
        "its clients' control-variate updates are averaged uniformly, while SecAgg+ "
        "weights everything it sums by n_k"
    )

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        super().__init__(config, run_dir)
        self.control = [np.zeros_like(w) for w in self.global_weights]

    def state_dict(self) -> dict[str, Any]:
        """The base's state plus c: a resumed run must go on correcting with it."""
        return {**super().state_dict(), "control": self.control}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue with the saved c (an own copy: it is updated in place)."""
        super().load_state_dict(state)
        self.control = [np.array(c, copy=True) for c in state["control"]]

    def fit_config(self, server_round: int) -> dict[str, Scalar]:
        """Switch the clients' SCAFFOLD part on (``fl_app.client_parts``)."""
        return {**super().fit_config(server_round), keys.SCAFFOLD: True}

    def fit_parameters(self, parameters: Parameters) -> Parameters:
        """The weights, then c: each client corrects its steps with c - c_i."""
        return ndarrays_to_parameters(to_ndarrays(parameters) + self.control)

    def expected_layout(self) -> Layout:
        """The update, then Δc_i of the same layout, so validation checks both."""
        model = super().expected_layout()
        return model + model

    def aggregate(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> NDArrays | None:
        """FedAvg's average step scaled by eta_g; c moved by Σ Δc_i / N, N the
        clients that may take part (the paper's 1/N, not 1/|S|)."""
        average = super().aggregate(server_round, updates)
        if average is None:
            return None
        # Clients whose c_i came from their Context.state (trained here before).
        self.round_record.extra["scaffold_returning"] = sum(
            int(u.metrics.get(keys.SCAFFOLD_STATE_ROUNDS, 0)) > 0 for u in updates
        )
        eta_g = self.config.scaffold.server_learning_rate
        population = self.sampler.total_clients
        for index in range(len(self.control)):
            total = np.sum([u.extras[index] for u in updates], axis=0)
            self.control[index] = self.control[index] + total / population
        return [
            w + eta_g * (a - w)
            for w, a in zip(self.global_weights, average, strict=True)
        ]

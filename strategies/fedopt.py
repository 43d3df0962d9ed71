"""What the adaptive server optimizers of Reddi et al., "Adaptive Federated
Optimization", ICLR 2021 (arXiv:2003.00295) share here.

Flower's ``FedOpt`` family (``FedAdam``, ``FedYogi``, ``FedAdagrad``) keeps the
server's own copy of the weights x_t and the moments m_t, v_t; ``FedOpt`` here, the
base of this project's three, gives it its knobs from the ``fedopt`` table and puts
that state in ``state_dict``. The rules themselves are in ``fedadam.py``,
``fedyogi.py`` and ``fedadagrad.py``, each mixing in Flower's class of that name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fl_app.config import RunConfig
from strategies.base import BaseStrategy


class FedOpt(BaseStrategy):
    """Base of the strategies that mix in one of Flower's ``FedOpt`` subclasses
    (``**betas``: the moments' decay rates, for the rules that have them)."""

    def __init__(
        self, config: RunConfig, run_dir: Path | None = None, **betas: float
    ) -> None:
        super().__init__(
            config,
            run_dir,
            eta=config.fedopt.eta,
            eta_l=config.learning_rate,
            tau=config.fedopt.tau,
            **betas,
        )

    def state_dict(self) -> dict[str, Any]:
        """The base's state plus the server's weights and moments: a resumed run
        must continue the optimizer, not restart it."""
        return {
            **super().state_dict(),
            "server_weights": self.current_weights,
            "m_t": self.m_t,
            "v_t": self.v_t,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the optimizer from the saved weights and moments."""
        super().load_state_dict(state)
        self.current_weights = _arrays(state["server_weights"])
        self.m_t = _arrays(state["m_t"])
        self.v_t = _arrays(state["v_t"])


def _arrays(arrays: list[np.ndarray] | None) -> list[np.ndarray] | None:
    """Own copies of loaded arrays (None before the first aggregation)."""
    return None if arrays is None else [np.array(a, copy=True) for a in arrays]

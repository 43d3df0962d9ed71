"""FedYogi: Reddi et al., "Adaptive Federated Optimization", ICLR 2021
(arXiv:2003.00295), Algorithm 2 with Yogi's second moment (Zaheer et al. 2018).

With the average update Δ_t = Σ_k (n_k/n) w_k - w_t:

    m_t = β1 m_{t-1} + (1 - β1) Δ_t
    v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)
    w_{t+1} = w_t + η m_t / (sqrt(v_t) + τ)

(m_0 = v_0 = 0). The rule is Flower's ``FedYogi``.
"""

from __future__ import annotations

from pathlib import Path

from flwr.server.strategy import FedYogi as FlowerFedYogi

from fl_app.config import RunConfig
from strategies.fedopt import FedOpt


class FedYogi(FedOpt, FlowerFedYogi):
    """Yogi on the server, over FedAvg's average update (``fedopt.*``)."""

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        opt = config.fedopt
        super().__init__(config, run_dir, beta_1=opt.beta1, beta_2=opt.beta2)

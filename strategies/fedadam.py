"""FedAdam: Reddi et al., "Adaptive Federated Optimization", ICLR 2021
(arXiv:2003.00295), Algorithm 2.

With the average update Δ_t = Σ_k (n_k/n) w_k - w_t, the server keeps

    m_t = β1 m_{t-1} + (1 - β1) Δ_t
    v_t = β2 v_{t-1} + (1 - β2) Δ_t²
    w_{t+1} = w_t + η_t m_t / (sqrt(v_t) + τ)

(m_0 = v_0 = 0). The rule is Flower's ``FedAdam``, which differs from the paper in
one way: it scales η by Adam's bias correction,
η_t = η sqrt(1 - β2^(t+1)) / (1 - β1^(t+1)) at server round t.
"""

from __future__ import annotations

from pathlib import Path

from flwr.server.strategy import FedAdam as FlowerFedAdam

from fl_app.config import RunConfig
from strategies.fedopt import FedOpt


class FedAdam(FedOpt, FlowerFedAdam):
    """Adam on the server, over FedAvg's average update (``fedopt.*``)."""

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        opt = config.fedopt
        super().__init__(config, run_dir, beta_1=opt.beta1, beta_2=opt.beta2)

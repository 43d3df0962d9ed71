"""FedAdagrad: Reddi et al., "Adaptive Federated Optimization", ICLR 2021
(arXiv:2003.00295), Algorithm 2 with Adagrad's second moment.

With the average update Δ_t = Σ_k (n_k/n) w_k - w_t:

    v_t = v_{t-1} + Δ_t²
    w_{t+1} = w_t + η Δ_t / (sqrt(v_t) + τ)

(v_0 = 0; no first moment: Flower's ``FedAdagrad``, whose rule this is, fixes
β1 = 0, so ``fedopt.beta1`` and ``fedopt.beta2`` do not apply).
"""

from __future__ import annotations

from flwr.server.strategy import FedAdagrad as FlowerFedAdagrad

from strategies.fedopt import FedOpt


class FedAdagrad(FedOpt, FlowerFedAdagrad):
    """Adagrad on the server, over FedAvg's average update (``fedopt.eta``, ``tau``)."""

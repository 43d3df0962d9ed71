"""The client side of the algorithms that need one, chosen by the fit config.

One ClientApp serves every strategy: the strategy says in its fit config what the
client should do (Flower's ``FedProx`` sends ``proximal_mu``; our ``Scaffold`` sends
``scaffold`` and appends its control variate to the weights), and ``client_part``
builds the matching piece from ``CLIENT_PARTS`` (fit-config key -> builder; add
yours there). A part changes local SGD through the ``LocalObjective`` hooks of
``fl_app.training`` and may send arrays up after the update. State that must
outlive a round (SCAFFOLD's c_i) lives in the node's ``Context.state``, never in a
module-level cache: in simulation one Ray actor serves many partitions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common import NDArrays, Scalar
from torch import nn

from fl_app import keys


class ClientPart:
    """FedAvg's client part: plain SGD, nothing sent besides the update."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def correct_gradients(self, model: nn.Module) -> None:
        return None

    def extras_up(self, update: NDArrays, steps: int, lr: float) -> NDArrays:
        """Arrays sent after the model update (none for FedAvg)."""
        return []

    def metrics(self) -> dict[str, Scalar]:
        """What the part reports besides the training loss."""
        return {}


class FedProxTerm(ClientPart):
    """Li et al. 2020: minimise F_k(w) + (mu/2)||w - w_t||^2 from the global w_t.

    The term's gradient is mu (w - w_t): it pulls each step back toward w_t. With
    mu = 0 it adds exactly zero, so training equals FedAvg's bit for bit.
    """

    def __init__(self, mu: float, global_weights: NDArrays) -> None:
        self.mu = mu
        self.anchor = [torch.from_numpy(np.array(w, copy=True)) for w in global_weights]

    def extra_loss(self, model: nn.Module) -> torch.Tensor:
        squared = sum(
            (p - w).pow(2).sum()
            for p, w in zip(model.parameters(), self.anchor, strict=True)
        )
        return 0.5 * self.mu * squared  # type: ignore[return-value]


class ScaffoldClient(ClientPart):
    """Karimireddy et al. 2020, Algorithm 1 with option II, on the client.

    Each step uses g(y) - c_i + c; after K steps of size eta_l,
    ``c_i+ = c_i - c + (x - y) / (K eta_l)`` is stored in the node's state and
    ``delta_c = c_i+ - c_i`` travels up with the model update ``y - x``.
    """

    def __init__(self, server_variate: NDArrays, state: RecordDict) -> None:
        self.c = server_variate
        self.state = state
        if keys.SCAFFOLD_VARIATE in state:
            self.c_i = state[keys.SCAFFOLD_VARIATE].to_numpy_ndarrays()  # type: ignore[union-attr]
            self.rounds = int(state[keys.SCAFFOLD_ROUNDS]["rounds"])  # type: ignore[index]
        else:
            self.c_i = [np.zeros_like(c) for c in server_variate]
            self.rounds = 0
        self.correction = [
            torch.from_numpy(c - c_i) for c, c_i in zip(self.c, self.c_i, strict=True)
        ]

    def correct_gradients(self, model: nn.Module) -> None:
        for param, correction in zip(model.parameters(), self.correction, strict=True):
            if param.grad is not None:
                param.grad.add_(correction)

    def extras_up(self, update: NDArrays, steps: int, lr: float) -> NDArrays:
        # x - y = -update
        c_i_new = [
            c_i - c - u / (steps * lr)
            for c_i, c, u in zip(self.c_i, self.c, update, strict=True)
        ]
        self.state[keys.SCAFFOLD_VARIATE] = ArrayRecord(c_i_new)
        self.state[keys.SCAFFOLD_ROUNDS] = ConfigRecord({"rounds": self.rounds + 1})
        return [new - old for new, old in zip(c_i_new, self.c_i, strict=True)]

    def metrics(self) -> dict[str, Scalar]:
        """Rounds of state found in ``Context.state``: > 0 shows c_i persisted."""
        return {keys.SCAFFOLD_STATE_ROUNDS: self.rounds}


# (fit config, global weights, extra arrays sent down, Context.state) -> part
PartBuilder = Callable[[dict[str, Scalar], NDArrays, NDArrays, RecordDict], ClientPart]


def _scaffold(
    config: dict[str, Scalar], weights: NDArrays, extras: NDArrays, state: RecordDict
) -> ClientPart:
    if len(extras) != len(weights):
        raise ValueError(
            f"SCAFFOLD expects the server variate after the {len(weights)} weight "
            f"arrays, got {len(extras)} extra arrays"
        )
    return ScaffoldClient(extras, state)


def _fedprox(
    config: dict[str, Scalar], weights: NDArrays, extras: NDArrays, state: RecordDict
) -> ClientPart:
    return FedProxTerm(float(config[keys.PROXIMAL_MU]), weights)


#: Fit-config key -> the client part its presence switches on; the first key wins.
CLIENT_PARTS: dict[str, PartBuilder] = {
    keys.SCAFFOLD: _scaffold,
    keys.PROXIMAL_MU: _fedprox,
}


def client_part(
    config: dict[str, Scalar],
    global_weights: NDArrays,
    extras_down: NDArrays,
    state: RecordDict,
) -> ClientPart:
    """The part the strategy asked for in its fit config (FedAvg's by default)."""
    for key, build in CLIENT_PARTS.items():
        if key in config:
            return build(config, global_weights, extras_down, state)
    return ClientPart()

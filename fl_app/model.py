"""The two models of the project and their weights as NumPy lists.

``mlp`` is the 784-256-10 ReLU network; ``2nn`` is McMahan et al.'s (2017) "2NN",
784-200-200-10 with ReLU. Both take inputs already flattened to 784 floats, so the
training loop never reshapes.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

HIDDEN = {"mlp": (256,), "2nn": (200, 200)}
NUM_INPUTS = 28 * 28
NUM_CLASSES = 10


def build_model(name: str, seed: int | None = None) -> nn.Sequential:
    """A fresh model; with ``seed`` its initial weights are reproducible."""
    if name not in HIDDEN:
        raise ValueError(f"unknown model {name!r}; allowed: {sorted(HIDDEN)}")
    sizes = (NUM_INPUTS, *HIDDEN[name])
    layers: list[nn.Module] = []
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], NUM_CLASSES))
    return nn.Sequential(*layers)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's state as NumPy arrays, in ``state_dict`` order (copies)."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load NumPy arrays (``state_dict`` order) into the model, checking shapes."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} arrays, got {len(weights)}")
    new_state = OrderedDict()
    for (key, current), array in zip(state.items(), weights, strict=False):
        if tuple(current.shape) != tuple(np.shape(array)):
            raise ValueError(
                f"{key}: expected shape {tuple(current.shape)}, got {np.shape(array)}"
            )
        new_state[key] = torch.as_tensor(np.asarray(array), dtype=current.dtype)
    model.load_state_dict(new_state, strict=True)


def update_norm(arrays: list[np.ndarray]) -> float:
    """The L2 norm of all arrays taken as one vector (summed in float64)."""
    return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))

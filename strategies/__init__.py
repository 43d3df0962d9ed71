"""Strategies by config name: ``strategy = "<name>"`` in the run config picks one.

Each is a subclass of ``BaseStrategy`` (itself a subclass of Flower's ``FedAvg``) in a
file of its own that overrides only what its algorithm changes.
"""

from __future__ import annotations

from strategies.base import BaseStrategy
from strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[BaseStrategy]] = {
    "fedavg": FedAvg,
}

__all__ = ["STRATEGIES", "BaseStrategy", "FedAvg"]

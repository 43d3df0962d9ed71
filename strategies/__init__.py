"""Strategies by config name: ``strategy = "<name>"`` in the run config picks one.

Each is a subclass of ``BaseStrategy`` (itself a subclass of Flower's ``FedAvg``) in a
file of its own that overrides only what its algorithm changes; where Flower ships
the rule, the class mixes Flower's strategy in and only passes it its knobs.
"""

from __future__ import annotations

from strategies.base import BaseStrategy, ClientUpdate
from strategies.centered_clipping import CenteredClipping
from strategies.fedadagrad import FedAdagrad
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedavgm import FedAvgM
from strategies.fedprox import FedProx
from strategies.fedyogi import FedYogi
from strategies.krum import Krum
from strategies.median import Median
from strategies.multikrum import MultiKrum
from strategies.scaffold import Scaffold
from strategies.trimmed_mean import TrimmedMean

STRATEGIES: dict[str, type[BaseStrategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "scaffold": Scaffold,
    "krum": Krum,
    "multi-krum": MultiKrum,
    "median": Median,
    "trimmed-mean": TrimmedMean,
    "centered-clipping": CenteredClipping,
}

__all__ = [
    "STRATEGIES",
    "BaseStrategy",
    "CenteredClipping",
    "ClientUpdate",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "Krum",
    "Median",
    "MultiKrum",
    "Scaffold",
    "TrimmedMean",
]

"""Strategies by config name: ``strategy = "<name>"`` in the run config picks one.

Only the server imports this registry (``fl_app.server_app``); a client never
imports a strategy. ``strategy_class`` is where a run config's strategy is checked:
its name, and whether it can honour the rest of the config (central DP, SecAgg+).

Each is a subclass of ``BaseStrategy`` (itself a subclass of Flower's ``FedAvg``) in a
file of its own that overrides only what its algorithm changes; where Flower ships
the rule, the class mixes Flower's strategy in and only passes it its knobs.
"""

from __future__ import annotations

from fl_app.config import ConfigError, RunConfig
from strategies.base import BaseStrategy, ClientUpdate
from strategies.centered_clipping import CenteredClipping
from strategies.fedadagrad import FedAdagrad
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedavgm import FedAvgM
from strategies.fedbuff import FedBuff
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
    "fedbuff": FedBuff,
}


def strategy_class(config: RunConfig) -> type[BaseStrategy]:
    """The strategy ``config`` names, once it has checked it can honour the config;
    ConfigError naming the key otherwise."""
    if config.strategy not in STRATEGIES:
        raise ConfigError(
            "strategy",
            f"unknown value {config.strategy!r}; allowed: "
            + ", ".join(map(repr, STRATEGIES)),
        )
    kind = STRATEGIES[config.strategy]
    kind.check_config(config)
    return kind


__all__ = [
    "STRATEGIES",
    "BaseStrategy",
    "CenteredClipping",
    "ClientUpdate",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedProx",
    "FedYogi",
    "Krum",
    "Median",
    "MultiKrum",
    "Scaffold",
    "TrimmedMean",
    "strategy_class",
]

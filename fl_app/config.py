"""The run configuration, parsed and validated once.

Every knob lives in ``[tool.flwr.app.config]`` of ``pyproject.toml``; Flower hands it to
both apps as ``context.run_config``. ``RunConfig.from_flower`` turns that flat mapping
into a frozen dataclass, so a typo or an out-of-range value stops the run at start-up
with one message naming the key, instead of failing deep inside a round.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELS = ("mlp", "2nn")
DATASETS = ("mnist", "fashion-mnist")
PARTITIONERS = ("iid", "dirichlet", "shards")


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"run config '{key}': {message}")
        self.key = key


@dataclass(frozen=True)
class RunConfig:
    """All knobs of one run; field ``x_y`` is the config key ``x-y``."""

    num_server_rounds: int = 10
    fraction_fit: float = 0.1
    fraction_evaluate: float = 0.0
    min_fit_clients: int = 2
    min_available_clients: int = 2
    min_available_timeout: float = 300.0
    round_timeout: float = 0.0
    local_epochs: int = 1
    batch_size: int = 10
    learning_rate: float = 0.1
    model: str = "2nn"
    dataset: str = "mnist"
    data_dir: str = ""
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    val_fraction: float = 0.1
    seed: int = 42
    strategy: str = "fedavg"
    output_dir: str = "outputs"

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build from Flower's ``context.run_config`` (hyphenated keys) and validate.

        Flower already refuses ``--run-config`` keys that pyproject.toml lacks; a key
        here that RunConfig lacks means the two drifted apart, and is an error too.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in run_config.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ConfigError(key, "unknown key (not a field of RunConfig)")
            values[name] = _coerce(key, raw, fields[name].type)
        config = cls(**values)
        config.validate()
        return config

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with some fields changed (for tests and scripts)."""
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        for field in dataclasses.fields(self):
            if field.type != "str":
                _finite_number(field.name.replace("_", "-"), getattr(self, field.name))
        _positive_int("num-server-rounds", self.num_server_rounds)
        _fraction("fraction-fit", self.fraction_fit, allow_zero=False)
        _fraction("fraction-evaluate", self.fraction_evaluate, allow_zero=True)
        _positive_int("min-fit-clients", self.min_fit_clients)
        _positive_int("min-available-clients", self.min_available_clients)
        if self.min_available_clients < self.min_fit_clients:
            raise ConfigError(
                "min-available-clients",
                f"must be >= min-fit-clients ({self.min_fit_clients}), "
                f"got {self.min_available_clients}",
            )
        _non_negative("min-available-timeout", self.min_available_timeout)
        _non_negative("round-timeout", self.round_timeout)
        _positive_int("local-epochs", self.local_epochs)
        if self.batch_size < 0:
            raise ConfigError(
                "batch-size",
                f"must be >= 1, or 0 for the whole local dataset; got "
                f"{self.batch_size}",
            )
        if not self.learning_rate > 0:
            raise ConfigError("learning-rate", f"must be > 0, got {self.learning_rate}")
        _one_of("model", self.model, MODELS)
        _one_of("dataset", self.dataset, DATASETS)
        _one_of("partitioner", self.partitioner, PARTITIONERS)
        if not self.dirichlet_alpha > 0:
            raise ConfigError(
                "dirichlet-alpha", f"must be > 0, got {self.dirichlet_alpha}"
            )
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(
                "val-fraction", f"must be in [0, 1), got {self.val_fraction}"
            )
        if self.fraction_evaluate > 0 and self.val_fraction == 0:
            raise ConfigError(
                "val-fraction",
                "must be > 0 when fraction-evaluate > 0: clients evaluate on the "
                "share of their partition it holds out",
            )
        if self.seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {self.seed}")
        if self.data_dir and not Path(self.data_dir).expanduser().is_dir():
            raise ConfigError(
                "data-dir",
                f"directory {self.data_dir!r} does not exist "
                '(use "" to download the dataset with torchvision)',
            )
        if not self.output_dir:
            raise ConfigError("output-dir", "must not be empty")
        # Imported here: the registry imports strategies, which import this module.
        from strategies import STRATEGIES

        _one_of("strategy", self.strategy, tuple(STRATEGIES))


def _coerce(key: str, raw: Any, type_name: Any) -> Any:
    """Convert a TOML/CLI value to the field's type, or fail naming the key."""
    kind = {"int": int, "float": float, "str": str}[str(type_name)]
    if kind is str:
        if not isinstance(raw, str):
            raise ConfigError(key, f"expected a string, got {raw!r}")
        return raw
    _finite_number(key, raw)
    if kind is int:
        if float(raw) != int(raw):
            raise ConfigError(key, f"expected a whole number, got {raw!r}")
        return int(raw)
    return float(raw)


def _finite_number(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number, got {value!r}")


def _positive_int(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(key, f"must be >= 1, got {value}")


def _non_negative(key: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(key, f"must be >= 0, got {value}")


def _fraction(key: str, value: float, *, allow_zero: bool) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ConfigError(key, f"must be in {interval}, got {value}")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            key, f"unknown value {value!r}; allowed: {', '.join(map(repr, allowed))}"
        )

"""RunConfig: pyproject.toml's [tool.flwr.app.config] and the dataclass agree (the
per-algorithm tables as Flower flattens them, ``fedprox.mu``), and every bad value
stops ``from_flower`` with a ConfigError naming the offending key."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import flatten_dict

from fl_app.config import GROUPS, ConfigError, RunConfig
from strategies import strategy_class

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@pytest.fixture(scope="module")
def app_config() -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` table flattened as Flower does, i.e. what
    Flower passes as run_config."""
    with PYPROJECT.open("rb") as handle:
        return flatten_dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])


def _field_defaults() -> dict[str, Any]:
    """Every knob's default, keyed like the run config (``fedprox.mu`` as
    ``fedprox.mu``, flat fields with ``_``)."""
    defaults: dict[str, Any] = {}
    for item in dataclasses.fields(RunConfig):
        if item.name.replace("_", "-") in GROUPS:
            group = item.name.replace("_", "-")
            for sub in dataclasses.fields(GROUPS[group]):
                defaults[f"{group}.{sub.name}"] = sub.default
        else:
            defaults[item.name] = item.default
    return defaults


def _name(key: str) -> str:
    group, dot, name = key.rpartition(".")
    return f"{group}{dot}{name.replace('-', '_')}"


def test_pyproject_table_parses_to_the_dataclass_defaults(
    app_config: dict[str, Any],
) -> None:
    assert RunConfig.from_flower(app_config) == RunConfig()


def test_every_pyproject_key_is_a_field_with_the_same_default(
    app_config: dict[str, Any],
) -> None:
    defaults = _field_defaults()
    for key, value in app_config.items():
        name = _name(key)
        assert name in defaults, f"pyproject key {key!r} has no RunConfig field"
        assert defaults[name] == value, (
            f"{key}: pyproject says {value!r}, RunConfig default is {defaults[name]!r}"
        )
        # Same kind of value too (an int default for a float knob would drift).
        assert isinstance(defaults[name], type(value)) or (
            isinstance(defaults[name], float) and isinstance(value, int)
        ), key


def test_every_field_is_settable_from_pyproject(app_config: dict[str, Any]) -> None:
    """Flower refuses --run-config keys missing from pyproject.toml, so a field
    without a pyproject key could never be changed for a run."""
    keys = {_name(key) for key in app_config}
    assert set(_field_defaults()) <= keys


BAD_VALUES: list[tuple[str, Any]] = [
    ("model", "cnn"),
    ("partition-source", "nodes"),
    ("num-partitions", -1),
    ("stop-at-accuracy", 1.5),
    ("stop-at-accuracy", -0.1),
    ("model", 2),
    ("fraction-fit", 0),
    ("fraction-fit", 0.0),
    ("fraction-fit", 1.5),
    ("fraction-evaluate", -0.1),
    ("learning-rate", -0.1),
    ("learning-rate", 0.0),
    ("partitioner", "pathological"),
    ("strategy", "no-such-strategy"),
    ("dataset", "cifar10"),
    ("learning-rate", "0.1"),  # a string where a number is expected
    ("num-server-rounds", "10"),
    ("local-epochs", 1.5),  # not a whole number for an int key
    ("seed", 0.5),
    ("num-server-rounds", True),  # TOML booleans are not numbers here
    ("num-server-rounds", 0),
    ("local-epochs", 0),
    ("batch-size", -1),
    ("dirichlet-alpha", 0.0),
    ("val-fraction", 1.0),
    ("val-fraction", -0.1),
    ("min-available-timeout", -1.0),
    ("round-timeout", -1.0),
    ("output-dir", ""),
    ("fedprox.mu", -0.01),
    ("fedavgm.momentum", 1.0),
    ("fedavgm.server-learning-rate", 0.0),
    ("fedopt.eta", 0.0),
    ("fedopt.beta1", 1.0),
    ("fedopt.tau", -1.0),
    ("scaffold.server-learning-rate", -1.0),
    ("krum.num-malicious", -1),
    ("krum.num-to-keep", 1.5),
    ("trimmed-mean.beta", 0.5),
    ("centered-clipping.tau", 0.0),
    ("centered-clipping.iterations", 0),
    ("dp.clip-norm", -1.0),
    ("dp.delta", 1.0),
    ("dp.max-epsilon", -1.0),
    ("attack.kind", "backdoor"),
    ("attack.fraction", 1.5),
    ("attack.factor", 0.0),
    ("attack.sigma", math.nan),
    ("validation.max-num-examples", 0),
    ("validation.max-update-norm", -1.0),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_bad_value_raises_config_error_naming_the_key(
    app_config: dict[str, Any], key: str, value: Any
) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'") as info:
        strategy_class(RunConfig.from_flower({**app_config, key: value}))
    assert info.value.key == key


def test_missing_data_dir_names_data_dir(
    app_config: dict[str, Any], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(ConfigError, match="'data-dir'") as info:
        RunConfig.from_flower({**app_config, "data-dir": str(missing)})
    assert info.value.key == "data-dir"
    assert str(missing) in str(info.value)


def test_existing_data_dir_is_accepted(
    app_config: dict[str, Any], tmp_path: Path
) -> None:
    config = RunConfig.from_flower({**app_config, "data-dir": str(tmp_path)})
    assert config.data_dir == str(tmp_path)


def test_unknown_key_is_rejected(app_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="'learnig-rate'") as info:
        RunConfig.from_flower({**app_config, "learnig-rate": 0.1})
    assert info.value.key == "learnig-rate"


def test_min_available_below_min_fit_is_rejected(app_config: dict[str, Any]) -> None:
    bad = {**app_config, "min-fit-clients": 5, "min-available-clients": 3}
    with pytest.raises(ConfigError, match="'min-available-clients'"):
        RunConfig.from_flower(bad)


def test_batch_size_zero_means_whole_dataset_and_is_accepted(
    app_config: dict[str, Any],
) -> None:
    assert RunConfig.from_flower({**app_config, "batch-size": 0}).batch_size == 0


def test_values_are_coerced_to_the_field_types(app_config: dict[str, Any]) -> None:
    config = RunConfig.from_flower(
        {**app_config, "local-epochs": 3.0, "learning-rate": 1, "fraction-fit": 1}
    )
    assert config.local_epochs == 3 and type(config.local_epochs) is int
    assert config.learning_rate == 1.0 and type(config.learning_rate) is float
    assert config.fraction_fit == 1.0 and type(config.fraction_fit) is float


def test_partial_run_config_keeps_defaults_for_the_rest() -> None:
    config = RunConfig.from_flower({"model": "mlp", "seed": 7})
    assert (config.model, config.seed) == ("mlp", 7)
    assert config.learning_rate == RunConfig().learning_rate


def test_replace_validates_too() -> None:
    with pytest.raises(ConfigError, match="'fraction-fit'"):
        RunConfig().replace(fraction_fit=0.0)
    assert RunConfig().replace(fraction_fit=0.5).fraction_fit == 0.5


@pytest.mark.parametrize(
    ("key", "value"), [("seed", math.inf), ("num-server-rounds", math.nan)]
)
def test_non_finite_value_for_int_key_names_the_key(
    app_config: dict[str, Any], key: str, value: float
) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        RunConfig.from_flower({**app_config, key: value})


@pytest.mark.parametrize("key", ["min-available-timeout", "round-timeout"])
def test_nan_timeout_is_rejected(app_config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        RunConfig.from_flower({**app_config, key: math.nan})


def test_negative_seed_is_rejected(app_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="'seed'"):
        RunConfig.from_flower({**app_config, "seed": -1})


def test_client_evaluation_needs_a_held_out_share(app_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"'val-fraction'.*fraction-evaluate"):
        RunConfig.from_flower(
            {**app_config, "fraction-evaluate": 0.5, "val-fraction": 0}
        )
    RunConfig.from_flower({**app_config, "fraction-evaluate": 0.0, "val-fraction": 0})


def test_group_knobs_arrive_in_their_dataclass(app_config: dict[str, Any]) -> None:
    config = RunConfig.from_flower(
        {**app_config, "fedprox.mu": 0.5, "trimmed-mean.beta": 0.1, "dp.clip-norm": 2}
    )
    assert config.fedprox.mu == 0.5
    assert config.trimmed_mean.beta == 0.1
    assert config.dp.clip_norm == 2.0 and config.dp.enabled
    assert config.to_flower()["fedprox.mu"] == 0.5


@pytest.mark.parametrize("key", ["fedprox.lambda", "nosuchtable.mu"])
def test_unknown_group_key_is_rejected(app_config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'") as info:
        RunConfig.from_flower({**app_config, key: 1.0})
    assert info.value.key == key


def test_central_dp_is_refused_for_a_rule_that_does_not_average(
    app_config: dict[str, Any],
) -> None:
    with pytest.raises(ConfigError, match=r"'dp\.clip-norm'.*median") as info:
        strategy_class(
            RunConfig.from_flower(
                {**app_config, "strategy": "median", "dp.clip-norm": 1}
            )
        )
    assert info.value.key == "dp.clip-norm"
    strategy_class(
        RunConfig.from_flower({**app_config, "strategy": "fedadam", "dp.clip-norm": 1})
    )


def test_only_the_server_deals_more_partitions_than_nodes(
    app_config: dict[str, Any],
) -> None:
    with pytest.raises(ConfigError, match=r"'num-partitions'.*partition-source"):
        RunConfig.from_flower(
            {**app_config, "num-partitions": 1000, "partition-source": "node"}
        )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"clients-per-message": -1}, "must be >= 0"),
        (
            {"clients-per-message": 4, "partition-source": "node"},
            "only the server can deal",
        ),
        ({"clients-per-message": 4, "secagg.enabled": True}, "SecAgg"),
    ],
)
def test_packing_is_refused_where_it_cannot_hold(
    app_config: dict[str, Any], changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        RunConfig.from_flower({**app_config, **changes})
    assert info.value.key == "clients-per-message"

"""The README's promises: its example strategies work, its knob tables and CI agree
with pyproject.toml and .ci/run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.common.config import flatten_dict

from fl_app import client_parts
from fl_app.client import PartitionClient
from fl_app.config import RunConfig
from fl_app.data import client_data
from fl_app.model import build_model, get_weights

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_strategy_subclass_example_runs(mnist_dir: Path) -> None:
    (example,) = [block for block in python_blocks() if "class FedAvgLrDecay" in block]
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(example, "README.md", "exec"), namespace)
    config = RunConfig(dataset="mnist", data_dir=str(mnist_dir), learning_rate=0.2)
    strategy = namespace["FedAvgLrDecay"](config)
    assert strategy.fit_config(1)["learning-rate"] == pytest.approx(0.2)
    assert strategy.fit_config(3)["learning-rate"] == pytest.approx(0.2 * 0.95**2)
    # Everything else the clients are told is unchanged.
    assert strategy.fit_config(3)["local-epochs"] == config.local_epochs


def _knobs() -> dict:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]
    return flatten_dict(table["app"]["config"])


def test_knob_table_matches_pyproject() -> None:
    knobs = {key: value for key, value in _knobs().items() if "." not in key}
    section = README.split("## The knobs", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| (.*?) \|", section, flags=re.MULTILINE))
    assert set(rows) == set(knobs)
    for key, value in knobs.items():
        shown = rows[key].strip("`")
        expected = f'"{value}"' if value == "" else str(value)
        if isinstance(value, bool):
            expected = str(value).lower()  # TOML's spelling
        assert shown == expected, (key, shown, value)


def test_every_algorithm_knob_is_shown_with_its_default() -> None:
    """Dotted keys (fedprox.mu, dp.clip-norm, ...) appear as "`key` = default"."""
    for key, value in _knobs().items():
        if "." in key:
            assert f"`{key}` = {value}" in README, key


def test_client_side_example_trains_with_its_penalty(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's two blocks: the part as an edit of fl_app/client_parts.py (run
    in that module's namespace, its registry then in place of the module's), and the
    strategy that asks for it."""
    (part_block,) = [block for block in python_blocks() if "class WeightDecay" in block]
    (strategy_block,) = [
        block for block in python_blocks() if "class FedAvgWeightDecay" in block
    ]
    edited = dict(vars(client_parts))
    exec(compile(part_block, "README.md", "exec"), edited)
    assert set(edited["CLIENT_PARTS"]) == {*client_parts.CLIENT_PARTS, "weight_decay"}
    monkeypatch.setattr(client_parts, "CLIENT_PARTS", edited["CLIENT_PARTS"])
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(strategy_block, "README.md", "exec"), namespace)

    config = RunConfig(dataset="mnist", data_dir=str(mnist_dir), model="mlp")
    strategy = namespace["FedAvgWeightDecay"](config)
    fit_config = strategy.fit_config(1)
    assert fit_config["weight_decay"] == pytest.approx(1e-4)

    train, val = client_data(
        "mnist", str(mnist_dir), "iid", 0, 4, alpha=0.5, val_fraction=0.1, seed=1
    )
    weights = get_weights(build_model("mlp", seed=3))

    def update(config: dict) -> list[np.ndarray]:
        client = PartitionClient(build_model("mlp"), train, val, 0)
        return client.fit(weights, config)[0]

    plain = update({**fit_config, "weight_decay": 0.0})
    decayed = update({**fit_config, "weight_decay": 10.0})

    # Weight decay pulls every weight toward 0: the trained weights shrink.
    def norm(delta: list[np.ndarray]) -> float:
        pairs = zip(weights, delta, strict=True)
        return sum(float(np.sum((w + d) ** 2)) for w, d in pairs)

    assert norm(decayed) < norm(plain)


def test_ci_runs_the_readme_test_command() -> None:
    command = next(line for line in README.splitlines() if "pytest" in line)
    assert command in (ROOT / ".ci" / "run").read_text()

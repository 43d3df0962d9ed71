"""The README's promises: its example strategy works, its knob table and CI agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fl_app.config import RunConfig

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


def test_knob_table_matches_pyproject() -> None:
    knobs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    section = README.split("## The knobs", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| (.*?) \|", section, flags=re.MULTILINE))
    assert set(rows) == set(knobs)
    for key, value in knobs.items():
        shown = rows[key].strip("`")
        expected = f'"{value}"' if value == "" else str(value)
        assert shown == expected, (key, shown, value)


def test_ci_runs_the_readme_test_command() -> None:
    command = next(line for line in README.splitlines() if "pytest" in line)
    assert command in (ROOT / ".ci" / "run").read_text()

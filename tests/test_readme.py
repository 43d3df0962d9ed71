"""The README's and the docs' promises: the example strategies in docs/strategies.md
work, the knob tables (docs/running.md's, all of them; the README's ten) agree with
pyproject.toml, and CI runs the README's test command (.ci/run)."""

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
DOCS = ROOT / "docs"
STRATEGIES_PAGE = DOCS / "strategies.md"
RUNNING_PAGE = DOCS / "running.md"


def python_blocks() -> list[str]:
    text = STRATEGIES_PAGE.read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of its level or above."""
    level = heading.split(" ", 1)[0]
    assert f"\n{heading}\n" in text, heading
    body = text.split(f"\n{heading}\n", 1)[1]
    return re.split(rf"\n#{{1,{len(level)}}} ", body, maxsplit=1)[0]


def knob_rows(text: str) -> dict[str, str]:
    """``| `key` | default | ...`` rows, backticks around the default removed."""
    rows = re.findall(r"^\| `([a-z0-9.-]+)` \| (.*?) \|", text, flags=re.MULTILINE)
    return {key: shown.strip("`") for key, shown in rows}


def toml_spelling(value: object) -> str:
    """A default as the tables show it: TOML's true/false, "" for the empty string."""
    if isinstance(value, bool):
        return str(value).lower()
    return '""' if value == "" else str(value)


def test_strategy_subclass_example_runs(mnist_dir: Path) -> None:
    (example,) = [block for block in python_blocks() if "class FedAvgLrDecay" in block]
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(example, str(STRATEGIES_PAGE), "exec"), namespace)
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
    """docs/running.md's full table: every top-level key with its default, and every
    per-algorithm (dotted) key with its default in the table under it."""
    knobs = _knobs()
    the_knobs = section(RUNNING_PAGE.read_text(), "## The knobs")
    per_algorithm = section(the_knobs, "### Per-algorithm knobs")
    top_level = knob_rows(the_knobs.split("\n### ", 1)[0])
    dotted = knob_rows(per_algorithm)
    assert set(top_level) == {key for key in knobs if "." not in key}
    assert set(dotted) == {key for key in knobs if "." in key}
    for key, shown in {**top_level, **dotted}.items():
        assert shown == toml_spelling(knobs[key]), (key, shown, knobs[key])


def test_every_algorithm_knob_is_shown_with_its_default() -> None:
    """Dotted keys (fedprox.mu, dp.clip-norm, ...) appear as "`key` = default" in the
    prose of the docs (Python's or TOML's spelling of the default)."""
    docs = "\n".join(page.read_text() for page in sorted(DOCS.glob("*.md")))
    for key, value in _knobs().items():
        if "." in key:
            spellings = {f"`{key}` = {value}", f"`{key}` = {toml_spelling(value)}"}
            assert any(spelling in docs for spelling in spellings), key


def test_readme_knob_table_lists_real_keys_with_their_defaults() -> None:
    """The README's short table: ten keys of pyproject.toml, each with its default."""
    knobs = _knobs()
    rows = knob_rows(section(README, "## The ten most used knobs"))
    assert len(rows) == 10, sorted(rows)
    for key, shown in rows.items():
        assert key in knobs, key
        assert shown == toml_spelling(knobs[key]), (key, shown, knobs[key])


def test_client_side_example_trains_with_its_penalty(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs' two blocks: the part as an edit of fl_app/client_parts.py (run
    in that module's namespace, its registry then in place of the module's), and the
    strategy that asks for it."""
    (part_block,) = [block for block in python_blocks() if "class WeightDecay" in block]
    (strategy_block,) = [
        block for block in python_blocks() if "class FedAvgWeightDecay" in block
    ]
    edited = dict(vars(client_parts))
    exec(compile(part_block, str(STRATEGIES_PAGE), "exec"), edited)
    assert set(edited["CLIENT_PARTS"]) == {*client_parts.CLIENT_PARTS, "weight_decay"}
    monkeypatch.setattr(client_parts, "CLIENT_PARTS", edited["CLIENT_PARTS"])
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(strategy_block, str(STRATEGIES_PAGE), "exec"), namespace)

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

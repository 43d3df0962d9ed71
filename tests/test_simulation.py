"""The real app through Flower's simulation: ``flwr run`` against a SuperLink.

No stand-in loop: a SuperLink in simulation mode, ``flwr run`` with 10 virtual
SuperNodes, the ServerApp and ClientApps as Flower starts them. Checked from what the
run leaves behind (status from ``flwr list``, files on disk), because
``flwr run --stream`` exits 0 even when a run fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fl_app.model import build_model
from fl_app.results import (
    HISTORY_CSV,
    HISTORY_JSON,
    MODEL_FILE,
    PLOT_FILE,
    TIMING_FIELDS,
)
from fl_app.runner import (
    FlowerHome,
    ManagedProcess,
    flwr_run,
    run_status,
    simulation_config,
)

pytestmark = pytest.mark.integration

APP_DIR = Path(__file__).resolve().parent.parent
ROUNDS = 3


def simulate(
    superlink: tuple[FlowerHome, ManagedProcess],
    data_dir: Path,
    output_dir: Path,
    **overrides: Any,
) -> tuple[dict[str, Any], Path]:
    """Run the app once with 10 virtual clients; return (status, run folder).

    ``overrides`` use Python names for flat keys (``seed=7``); pass dotted keys of
    the per-algorithm tables as ``**{"fedprox.mu": 0.1}``.
    """
    home, _ = superlink
    run_config = {
        "num-server-rounds": ROUNDS,
        "fraction-fit": 0.5,
        "fraction-evaluate": 0.3,
        "learning-rate": 0.05,
        "dataset": "mnist",
        "data-dir": str(data_dir),
        "output-dir": str(output_dir),
        **{key.replace("_", "-"): value for key, value in overrides.items()},
    }
    run_id = flwr_run(
        APP_DIR,
        "sim",
        home,
        run_config,
        log_path=output_dir / "flwr-run.log",
        federation_config=simulation_config(num_supernodes=10, cpus_per_client=1),
        timeout=600,
    )
    status = run_status("sim", home, run_id)
    runs = [p for p in output_dir.iterdir() if p.is_dir() and p.name != "latest"]
    assert len(runs) == 1, f"expected one run folder in {output_dir}: {runs}"
    return status, runs[0]


def comparable(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History rows without the fields that measure the machine, not the run."""
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in history]


@pytest.fixture(scope="module")
def runs(
    superlink: tuple[FlowerHome, ManagedProcess],
    mnist_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[dict[str, Any], Path]]:
    """Three runs on one SuperLink: seed 7 twice, seed 8 once."""
    return {
        name: simulate(superlink, mnist_dir, tmp_path_factory.mktemp(name), seed=seed)
        for name, seed in (("first", 7), ("again", 7), ("other", 8))
    }


def test_run_completes_and_accuracy_rises(runs: dict) -> None:
    status, run_dir = runs["first"]
    assert status["status"] == "finished:completed", status
    history = json.loads((run_dir / HISTORY_JSON).read_text())
    assert [row["round"] for row in history] == list(range(ROUNDS + 1))
    accuracy = [row["test_accuracy"] for row in history]
    assert accuracy[-1] > accuracy[0] + 0.3, accuracy
    for row in history[1:]:
        assert row["clients_sampled"] == 5
        assert row["clients_succeeded"] == 5
        assert row["clients_failed"] == 0
        assert row["bytes_sent"] > 0 and row["bytes_received"] > 0
        assert row["train_loss"] is not None
        assert row["federated_accuracy"] is not None


def test_run_writes_history_model_and_plot(runs: dict) -> None:
    _, run_dir = runs["first"]
    for name in (HISTORY_JSON, HISTORY_CSV, MODEL_FILE, PLOT_FILE, "config.json"):
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_lines = (run_dir / HISTORY_CSV).read_text().splitlines()
    assert csv_lines[0].startswith("round,test_loss,test_accuracy")
    assert len(csv_lines) == ROUNDS + 2
    # The model file is a plain state_dict that loads into a fresh model.
    model = build_model("2nn")
    model.load_state_dict(torch.load(run_dir / MODEL_FILE, weights_only=True))
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()


def test_same_seed_same_history_other_seed_other_history(runs: dict) -> None:
    histories = {
        name: comparable(json.loads((run_dir / HISTORY_JSON).read_text()))
        for name, (_, run_dir) in runs.items()
    }
    assert histories["first"] == histories["again"]
    assert histories["first"] != histories["other"]
    # Different initial weights already: round 0 differs.
    assert histories["first"][0]["test_loss"] != histories["other"][0]["test_loss"]


def test_bad_config_fails_the_run_with_the_key_named(
    superlink: tuple[FlowerHome, ManagedProcess], mnist_dir: Path, tmp_path: Path
) -> None:
    home, _ = superlink
    run_id = flwr_run(
        APP_DIR,
        "sim",
        home,
        {"model": "resnet", "data-dir": str(mnist_dir), "output-dir": str(tmp_path)},
        log_path=tmp_path / "flwr-run.log",
        federation_config=simulation_config(num_supernodes=2, cpus_per_client=1),
        timeout=300,
    )
    status = run_status("sim", home, run_id)
    assert status["status"].startswith("finished:") and not status["status"].endswith(
        "completed"
    ), status
    logs = (tmp_path / "flwr-run.log").read_text()
    assert "run config 'model'" in logs and "resnet" in logs, logs[-2000:]

"""Crash and resume in Flower's simulation: the ServerApp's process is killed with
SIGKILL in the middle of round 3, the run is resumed (``resume = true``) in the same
folder, and the combined history equals that of an uninterrupted run with the same
seed, to 1e-6 on every accuracy and loss: for FedAvg, FedAdam (server moments) and
SCAFFOLD (server variate, and each client's c_i from the node's own store)."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from fl_app.checkpoint import CHECKPOINT_FILE
from fl_app.results import HISTORY_JSON
from fl_app.runner import (
    FlowerHome,
    ManagedProcess,
    flwr_run,
    run_status,
    simulation_config,
)
from tests.test_simulation import APP_DIR, comparable

pytestmark = pytest.mark.integration

ROUNDS = 4
KILLED_IN = 3  # the round the kill interrupts


def run_config(data_dir: Path, output_dir: Path, strategy: str) -> dict[str, Any]:
    return {
        "num-server-rounds": ROUNDS,
        "fraction-fit": 0.5,
        "learning-rate": 0.05,
        "strategy": strategy,
        "dataset": "mnist",
        "data-dir": str(data_dir),
        "output-dir": str(output_dir),
        "seed": 3,
    }


def launch(
    home: FlowerHome, config: dict[str, Any], log: Path
) -> tuple[threading.Thread, dict[str, Any]]:
    """``flwr run`` in a thread (it streams until the run ends)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["run_id"] = flwr_run(
                APP_DIR,
                "sim",
                home,
                config,
                log_path=log,
                federation_config=simulation_config(10, 1),
                timeout=600,
            )
        except Exception as error:  # reported by the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def rows_in(output_dir: Path) -> int:
    for path in output_dir.glob(f"*/{HISTORY_JSON}"):
        try:
            return len(json.loads(path.read_text()))
        except (OSError, ValueError):
            return 0
    return 0


def kill_server_app(superlink: ManagedProcess) -> None:
    """SIGKILL the simulation process (ServerApp and simulation engine) and all it
    started (Ray), as a machine crash would; then the CLI streaming its log."""
    victims = []
    for process in psutil.Process(superlink.pid).children(recursive=True):
        try:
            if "flwr-simulation" in " ".join(process.cmdline()):
                victims.append(process)
        except psutil.Error:  # gone, or a zombie
            pass
    assert victims, "no flwr-simulation process to kill"
    for victim in victims:
        for process in [victim, *victim.children(recursive=True)]:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    for process in psutil.Process().children(recursive=True):
        try:
            command = process.cmdline()
            if any(Path(a).name == "flwr" for a in command[:2]) and "run" in command:
                process.kill()
        except psutil.Error:
            pass


def history_of(run_dir: Path) -> list[dict[str, Any]]:
    return comparable(json.loads((run_dir / HISTORY_JSON).read_text()))


def assert_same_history(got: list[dict], want: list[dict]) -> None:
    assert [r["round"] for r in got] == [r["round"] for r in want]
    for mine, theirs in zip(got, want, strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, float) and not math.isnan(value):
                assert mine[key] == pytest.approx(value, abs=1e-6), (mine["round"], key)
            elif isinstance(value, float) or value is None:
                assert mine[key] is None or math.isnan(mine[key]), (mine["round"], key)
            else:
                assert mine[key] == value, (mine["round"], key)


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "scaffold"])
def test_killed_mid_round_and_resumed_gives_the_uninterrupted_history(
    superlink: tuple[FlowerHome, ManagedProcess],
    mnist_dir: Path,
    tmp_path: Path,
    strategy: str,
) -> None:
    home, process = superlink
    whole_dir, crash_dir = tmp_path / "whole", tmp_path / "crash"

    thread, outcome = launch(
        home, run_config(mnist_dir, whole_dir, strategy), tmp_path / "whole.log"
    )
    thread.join(600)
    assert run_status("sim", home, outcome["run_id"])["status"] == (
        "finished:completed"
    )
    (whole_run,) = [p for p in whole_dir.iterdir() if p.name != "latest"]

    thread, outcome = launch(
        home, run_config(mnist_dir, crash_dir, strategy), tmp_path / "crash.log"
    )
    deadline = time.monotonic() + 300
    while rows_in(crash_dir) < KILLED_IN and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rows_in(crash_dir) == KILLED_IN, "rounds 0..2 never completed"
    time.sleep(0.05)  # round 3 under way: its clients are training
    kill_server_app(process)
    thread.join(120)
    (crash_run,) = [p for p in crash_dir.iterdir() if p.name != "latest"]
    killed = history_of(crash_run)
    assert [r["round"] for r in killed] == list(range(KILLED_IN)), "not mid-round 3"

    resumed_config = {
        **run_config(mnist_dir, crash_dir, strategy),
        "resume": True,
        "resume-dir": str(crash_run),
    }
    thread, outcome = launch(home, resumed_config, tmp_path / "resume.log")
    thread.join(600)
    assert "error" not in outcome, outcome
    status = run_status("sim", home, outcome["run_id"])
    assert status["status"] == "finished:completed", status
    assert (crash_run / CHECKPOINT_FILE).is_file()
    assert_same_history(history_of(crash_run), history_of(whole_run))
    if strategy == "scaffold":
        # Clients found their c_i after the resume too (the node's own store).
        returning = [r["scaffold_returning"] for r in history_of(crash_run)[1:]]
        assert returning == [r["scaffold_returning"] for r in history_of(whole_run)[1:]]
        assert sum(returning[KILLED_IN - 1 :]) > 0

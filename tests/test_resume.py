"""Crash and resume in Flower's simulation, with SCAFFOLD (server variate, and each
client's c_i in its node's own store): a ``flwr run`` killed with SIGKILL in the
middle of round 2 (the ServerApp's process and Ray) and resumed in its folder by
``scripts/simulate.py --resume <folder>`` alone: the run config (SCAFFOLD, the
data, the seed, ...) and the number of clients come from the folder. The combined
history must equal the uninterrupted run's to 1e-6 on every accuracy and loss; the
uninterrupted run is the in-process one (``tests/inprocess.py``), which
``test_simulation.py`` shows equal to ``flwr run``.

The resumed run also serves as the module's check of what a finished run leaves
behind (history, model, plot, ``latest``), of the clients' evaluation, and of client
state across rounds and across the crash.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from fl_app.checkpoint import CHECKPOINT_FILE
from fl_app.launch.flower_cli import FlowerHome, flwr_run, simulation_config
from fl_app.launch.processes import ManagedProcess
from fl_app.model import build_model
from fl_app.results import HISTORY_CSV, HISTORY_JSON, MODEL_FILE, PLOT_FILE
from tests.inprocess import APP_DIR, returning_counts, seeded_samples
from tests.test_simulation import (
    assert_same_history,
    in_process_history,
)

pytestmark = pytest.mark.integration

ROUNDS = 3
KILLED_IN = 2  # the round the kill interrupts
SEED = 3


def run_config(data_dir: Path, output_dir: Path) -> dict[str, Any]:
    return {
        "num-server-rounds": ROUNDS,
        "fraction-fit": 0.5,
        "fraction-evaluate": 0.3,
        "learning-rate": 0.05,
        "strategy": "scaffold",
        "dataset": "mnist",
        "data-dir": str(data_dir),
        "output-dir": str(output_dir),
        "seed": SEED,
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
    """Rounds on disk with everything of theirs: a round's row is written after
    its fit, and its clients' evaluation is added to it later."""
    for path in output_dir.glob(f"*/{HISTORY_JSON}"):
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError):
            return 0
        return sum(r["round"] == 0 or r["federated_accuracy"] is not None for r in rows)
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


def test_a_finished_run_and_a_killed_and_resumed_one_agree(
    superlink: tuple[FlowerHome, ManagedProcess],
    mnist_dir: Path,
    tmp_path: Path,
) -> None:
    home, process = superlink
    crash_dir = tmp_path / "crash"
    # The uninterrupted run, in process: test_simulation.py shows it equals a
    # ``flwr run`` of the same config.
    whole = in_process_history(run_config(mnist_dir, crash_dir), tmp_path / "whole")

    thread, _ = launch(home, run_config(mnist_dir, crash_dir), tmp_path / "crash.log")
    deadline = time.monotonic() + 300
    while rows_in(crash_dir) < KILLED_IN and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rows_in(crash_dir) == KILLED_IN, "rounds 0..1 never completed"
    time.sleep(0.05)  # round 2 under way: its clients are training
    kill_server_app(process)
    thread.join(120)
    (crash_run,) = [p for p in crash_dir.iterdir() if p.name != "latest"]
    killed = read(crash_run)
    assert [r["round"] for r in killed] == list(range(KILLED_IN)), "not mid-round 2"
    assert_same_history(killed, whole[:KILLED_IN])  # same seed, same rounds

    # Resumed as a user would after a crash: the folder, and no other flag.
    simulate = str(APP_DIR / "scripts" / "simulate.py")
    done = subprocess.run(
        [sys.executable, simulate, "--resume", str(crash_run)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "finished:completed" in done.stdout
    assert (crash_run / CHECKPOINT_FILE).is_file()
    assert_same_history(read(crash_run), whole)
    # Also: every returning client found its c_i, after the kill too (the node's
    # own store), and the resumed folder holds what a finished run leaves.
    check_what_a_run_leaves(crash_run)


def read(run_dir: Path) -> list[dict[str, Any]]:
    return json.loads((run_dir / HISTORY_JSON).read_text())


def check_what_a_run_leaves(run_dir: Path) -> None:
    """History (JSON and CSV), model, plot, config, ``latest``; the clients'
    evaluation each round; SCAFFOLD's c_i found by every returning client."""
    for name in (HISTORY_JSON, HISTORY_CSV, MODEL_FILE, PLOT_FILE, "config.json"):
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # TensorBoard's events, from the ServerApp under Flower (both processes' files);
    # the run config that resumes the folder with plain ``flwr run``.
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    assert '"strategy" = "scaffold"' in (run_dir / "resume.toml").read_text()
    csv_lines = (run_dir / HISTORY_CSV).read_text().splitlines()
    assert csv_lines[0].startswith("round,test_loss,test_accuracy")
    assert len(csv_lines) == ROUNDS + 2
    model = build_model("2nn")  # a plain state_dict that loads into a fresh model
    model.load_state_dict(torch.load(run_dir / MODEL_FILE, weights_only=True))
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()

    history = read(run_dir)
    assert [row["round"] for row in history] == list(range(ROUNDS + 1))
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.3
    for row in history[1:]:
        assert row["clients_sampled"] == row["clients_succeeded"] == 5
        assert row["clients_failed"] == 0
        assert row["bytes_sent"] > 0 and row["bytes_received"] > 0
        assert math.isfinite(row["train_loss"])
        assert 0.0 <= row["federated_accuracy"] <= 1.0
        assert math.isfinite(row["federated_loss"])
    expected = returning_counts(seeded_samples(SEED, ROUNDS))
    assert sum(expected) > 0  # some client returns, so the check can fail
    assert [row["scaffold_returning"] for row in history[1:]] == expected

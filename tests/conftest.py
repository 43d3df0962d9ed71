"""Shared fixtures: a private cache and small MNIST-format datasets on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl_app.launch.flower_cli import FlowerHome
from fl_app.launch.processes import ManagedProcess
from fl_app.launch.simulation import SimulationSuperLink
from tests.synthetic import write_mnist_like


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Decoded arrays and partitions go to a temporary cache, not ~/.cache."""
    path = tmp_path_factory.mktemp("fl_app_cache")
    os.environ["FL_APP_CACHE"] = str(path)
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    return path


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 train / 500 test samples, gzipped IDX, 10 balanced classes."""
    return write_mnist_like(tmp_path_factory.mktemp("mnist_like"))


@pytest.fixture(scope="session")
def superlink(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FlowerHome, ManagedProcess]]:
    """One simulation SuperLink (connection "sim") for every integration test that
    goes through ``flwr run``, the scripts' own; stopped at the end of the session."""
    with SimulationSuperLink(tmp_path_factory.mktemp("superlink_logs")) as link:
        home = link.start()
        assert link.superlink is not None
        yield home, link.superlink

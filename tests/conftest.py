"""Shared fixtures: a private cache and small MNIST-format datasets on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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

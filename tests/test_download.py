"""The torchvision download path, with torchvision's dataset class replaced.

No network here: a stand-in for ``torchvision.datasets.MNIST`` writes IDX files where
the real one would (``<root>/MNIST/raw``), so what is tested is the app's own glue:
asking torchvision with the right root and reading the files it leaves.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torchvision.datasets

from fl_app import data
from tests.synthetic import write_mnist_like


def test_empty_data_dir_downloads_with_torchvision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[str, bool, bool]] = []

    class FakeMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            write_mnist_like(Path(root) / "MNIST" / "raw", num_train=100, num_test=50)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    monkeypatch.setenv("FL_APP_CACHE", str(tmp_path / "cache"))
    data.load_split.cache_clear()
    split = data.load_split("mnist", "", "test")
    data.load_split.cache_clear()
    assert len(split) == 50 and split.x.shape == (50, 784)
    assert {train for _, train, _ in calls} == {True, False}
    assert all(download for _, _, download in calls)
    assert all(Path(root) == tmp_path / "cache" / "downloads" for root, _, _ in calls)


def test_download_failure_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class OfflineMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", OfflineMNIST)
    monkeypatch.setenv("FL_APP_CACHE", str(tmp_path / "cache"))
    data.load_split.cache_clear()
    with pytest.raises(RuntimeError, match=r"Error downloading.*'data-dir'"):
        data.load_split("mnist", "", "train")

"""MNIST-format data: IDX decoding, torchvision download, partitions as index arrays.

Why it looks like this: a Flower app spends most of its time outside SGD when every
client re-reads the dataset and pushes each sample through a PIL transform. Here a
process decodes a dataset once (and a decoded copy is kept on disk as ``.npy``, so a
SuperNode's fresh ``flwr-clientapp`` process per message loads it in milliseconds),
keeps normalised float tensors, and a client's partition is an index tensor into them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from fl_app.files import write_atomically

# Per-dataset normalisation (mean, std of the training pixels in [0, 1]).
NORMALISATION = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4"}


@dataclass(frozen=True)
class Split:
    """One split of a dataset: inputs flattened to 784 floats, labels as int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def cache_dir() -> Path:
    """Where decoded arrays and downloads go (``FL_APP_CACHE`` overrides)."""
    root = os.environ.get("FL_APP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "fl_app"
    )
    return Path(root)


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file (gzipped or not) into a NumPy array of its declared shape.

    A damaged file is a ValueError naming it: gzip's own errors (a cut download
    ends in ``EOFError``) say nothing of which of four files is at fault.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(
            f"{path} is truncated or not gzip data ({error}); replace it with a "
            "whole copy (delete it to download again when data-dir is empty)"
        ) from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {body.size} items")
    return body.reshape(shape)


def find_idx(directory: Path, stem: str) -> Path:
    """Locate ``stem`` or ``stem.gz`` in ``directory`` (or torchvision's ``*/raw``)."""
    candidates = [directory, *sorted(directory.glob("*/raw"))]
    for folder in candidates:
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"no {stem}[.gz] in {directory} (expected MNIST-format IDX files there)"
    )


def _download(dataset: str) -> Path:
    """Fetch the dataset with torchvision; return the folder holding its IDX files."""
    import torchvision.datasets as tvd

    root = cache_dir() / "downloads"
    cls = getattr(tvd, _TORCHVISION_CLASS[dataset])
    try:
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
    except Exception as error:
        raise RuntimeError(
            f"could not download {dataset} with torchvision into {root} ({error}); "
            "offline, point the run config's 'data-dir' at a directory of IDX files"
        ) from error
    return root / _TORCHVISION_CLASS[dataset] / "raw"


def _source_key(dataset: str, directory: Path, split: str) -> str:
    """Cache key that changes when the source files change."""
    parts = [dataset, split]
    for stem in IDX_FILES[split]:
        path = find_idx(directory, stem)
        stat = path.stat()
        parts += [str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def load_raw(dataset: str, data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) for a split, decoded once per source.

    The decoded arrays are written to the cache as ``.npy`` (atomically) and read back
    memory-mapped, which costs milliseconds instead of a gzip decode per process;
    within a process they are read once per version of the source and cache files
    (a Ray actor serves thousands of clients, each asking for them).
    """
    directory = Path(data_dir).expanduser() if data_dir else _download(dataset)
    key = _source_key(dataset, directory, split)
    images_npy = cache_dir() / "decoded" / f"{dataset}-{split}-{key}-images.npy"
    return _decoded(dataset, directory, split, images_npy, _stamp(images_npy))


def _stamp(path: Path) -> tuple[int, int] | None:
    """(mtime, size) of a cache file, or None: a rewritten file is read again."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=8)
def _decoded(
    dataset: str,
    directory: Path,
    split: str,
    images_npy: Path,
    stamp: tuple[int, int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``load_raw`` for one version of the source files and of their cache."""
    labels_npy = images_npy.with_name(images_npy.name.replace("-images", "-labels"))
    if stamp is not None and labels_npy.is_file():
        cached = _read_cache(images_npy, labels_npy)
        if cached is not None:
            return cached
    image_stem, label_stem = IDX_FILES[split]
    images_path = find_idx(directory, image_stem)
    labels_path = find_idx(directory, label_stem)
    images = read_idx(images_path)
    labels = read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds images of shape {images.shape} but "
            f"{labels_path} holds labels of shape {labels.shape}: the two files "
            "must come from the same split of the same dataset"
        )
    _save_atomically(images_npy, lambda handle: np.save(handle, images))
    _save_atomically(labels_npy, lambda handle: np.save(handle, labels))
    return images, labels


def _read_cache(
    images_npy: Path, labels_npy: Path
) -> tuple[np.ndarray, np.ndarray] | None:
    """The decoded pair, or None (with a warning naming the file) when either is
    damaged or they disagree: the cache is only a copy, so it is rebuilt from the
    IDX files rather than trusted or fatal."""
    try:
        images = np.load(images_npy, mmap_mode="r")
        labels = np.load(labels_npy)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"shapes {images.shape} and {labels.shape} disagree")
    except (OSError, ValueError, EOFError) as error:
        warnings.warn(
            f"the decoded cache {images_npy} (with {labels_npy.name}) is damaged "
            f"({error}); decoding the IDX files again",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return images, labels


def _save_atomically(path: Path, save: Callable[[BinaryIO], None]) -> None:
    """``write_atomically`` what ``save`` writes: readers never see half a file."""
    buffer = io.BytesIO()
    save(buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, buffer.getvalue())
    except OSError:
        pass  # a read-only cache only costs speed


def normalise(dataset: str, images: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 images to flattened float tensors, standardised per dataset."""
    mean, std = NORMALISATION[dataset]
    flat = np.asarray(images, dtype=np.float32).reshape(len(images), 28 * 28)
    x = torch.from_numpy(flat)
    x = x.div_(255.0).sub_(mean).div_(std)
    return Split(x, torch.from_numpy(np.asarray(labels, dtype=np.int64)))


@lru_cache(maxsize=4)
def load_split(dataset: str, data_dir: str, split: str) -> Split:
    """A whole split as tensors (the server's test set); cached for the process."""
    return normalise(dataset, *load_raw(dataset, data_dir, split))


def partition_indices(
    labels: np.ndarray,
    partitioner: str,
    num_partitions: int,
    *,
    alpha: float = 0.5,
    seed: int = 0,
) -> list[np.ndarray]:
    """Every partition's sample indices, from a flwr-datasets partitioner.

    The partitioner sees a ``datasets.Dataset`` holding only the labels and each
    sample's index (shuffled with ``seed`` first, so that ``iid``'s contiguous shards
    are random); what it returns is read back as indices into the original arrays.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        ShardPartitioner,
    )

    datasets.disable_progress_bars()
    table = datasets.Dataset.from_dict(
        {"label": np.asarray(labels), "index": np.arange(len(labels))}
    ).shuffle(seed=seed)
    if partitioner == "iid":
        part = IidPartitioner(num_partitions=num_partitions)
    elif partitioner == "dirichlet":
        part = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=0,
            seed=seed,
        )
    elif partitioner == "shards":
        # McMahan et al. (2017): sort by label, cut 2 * K shards, deal 2 per client.
        part = ShardPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_shards_per_partition=2,
            seed=seed,
        )
    else:
        raise ValueError(f"unknown partitioner {partitioner!r}")
    part.dataset = table
    if partitioner == "iid":
        # IidPartitioner's partition i is the table's i-th contiguous shard
        # (``Dataset.shard(contiguous=True)``: the first len % K shards one row
        # longer), which is np.array_split of the shuffled column: one read instead
        # of a select per partition (30 s at K = 10,000). tests/test_data.py checks
        # it against the partitioner.
        return np.array_split(
            np.asarray(table["index"], dtype=np.int64), num_partitions
        )
    return [
        np.asarray(part.load_partition(i)["index"], dtype=np.int64)
        for i in range(num_partitions)
    ]


@lru_cache(maxsize=8)
def _all_partitions(
    dataset: str,
    data_dir: str,
    partitioner: str,
    num_partitions: int,
    alpha: float,
    seed: int,
) -> tuple[np.ndarray, ...]:
    """All partitions of a training split, computed once and kept on disk.

    Stored as one ``.npz`` (concatenated indices plus offsets) so that a deployed
    SuperNode, which starts a fresh process for every message, skips importing
    ``datasets`` and re-running the partitioner.
    """
    _, labels = load_raw(dataset, data_dir, "train")
    # The partitions depend on the labels and the partitioner's arguments only.
    digest = hashlib.sha256(np.ascontiguousarray(labels).tobytes())
    digest.update(f"{partitioner}|{num_partitions}|{alpha!r}|{seed}".encode())
    key = digest.hexdigest()[:16]
    path = cache_dir() / "partitions" / f"{dataset}-{partitioner}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as stored:
                indices, offsets = stored["indices"], stored["offsets"]
            if offsets[-1] != len(indices) or len(offsets) != num_partitions + 1:
                raise ValueError("offsets do not match the indices")
            return tuple(np.split(indices, offsets[1:-1]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            warnings.warn(
                f"the partition cache {path} is damaged ({error}); partitioning again",
                RuntimeWarning,
                stacklevel=2,
            )
    parts = partition_indices(
        labels, partitioner, num_partitions, alpha=alpha, seed=seed
    )
    offsets = np.cumsum([0] + [len(p) for p in parts])
    indices = np.concatenate(parts)
    _save_atomically(
        path, lambda handle: np.savez(handle, indices=indices, offsets=offsets)
    )
    return tuple(parts)


def training_half(half_seed: int, num_examples: int) -> np.ndarray:
    """Which of the training split's examples a run on a seeded half keeps (a
    boolean mask, exactly half): the membership audit's in/out labels."""
    rng = np.random.default_rng([half_seed, 0x4A1F])
    keep = np.zeros(num_examples, dtype=bool)
    keep[rng.permutation(num_examples)[: num_examples // 2]] = True
    return keep


def client_indices(
    dataset: str,
    data_dir: str,
    partitioner: str,
    partition_id: int,
    num_partitions: int,
    *,
    alpha: float,
    val_fraction: float,
    seed: int,
    half_seed: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """A client's (train, validation) indices into the training split: its
    partition, split by ``seed``; with ``half_seed >= 0``, only the partition's
    examples in that seeded half (``training_half``). The one place that says which
    examples a client trains on (the membership audit asks it too)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id {partition_id} is outside "
            f"[0, num-partitions={num_partitions})"
        )
    indices = _all_partitions(
        dataset, data_dir, partitioner, num_partitions, alpha, seed
    )[partition_id]
    if half_seed >= 0:
        _, labels = load_raw(dataset, data_dir, "train")
        indices = indices[training_half(half_seed, len(labels))[indices]]
    rng = np.random.default_rng([seed, partition_id])
    shuffled = rng.permutation(indices)
    num_val = round(len(shuffled) * val_fraction)
    return shuffled[num_val:], shuffled[:num_val]


def client_data(
    dataset: str,
    data_dir: str,
    partitioner: str,
    partition_id: int,
    num_partitions: int,
    *,
    alpha: float,
    val_fraction: float,
    seed: int,
    half_seed: int = -1,
) -> tuple[Split, Split]:
    """A client's (train, validation) tensors (``client_indices``)."""
    train, val = client_indices(
        dataset,
        data_dir,
        partitioner,
        partition_id,
        num_partitions,
        alpha=alpha,
        val_fraction=val_fraction,
        seed=seed,
        half_seed=half_seed,
    )
    # Only this client's rows are read from the memory-mapped cache and converted:
    # a deployed node's fresh process per message touches ~1% of the dataset.
    images, labels = load_raw(dataset, data_dir, "train")
    return (
        normalise(dataset, images[train], labels[train]),
        normalise(dataset, images[val], labels[val]),
    )

"""Small MNIST-format datasets written by the tests themselves (no download).

Each class is a fixed sparse 28x28 stroke mask (about 15% of pixels lit, like an
MNIST digit); a sample keeps a random 60% of its class's lit pixels and gains random
lit pixels elsewhere, so an MLP learns it in a few rounds, not in one step, and
accuracy has room to rise. Written as
real IDX files (gzipped or not), so the tests go through the same loader as MNIST.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (magic 0x0000 08 <ndim>, big-endian sizes)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data, compresslevel=1))
    else:
        path.write_bytes(data)
    return path


def make_split(
    num: int, rng: np.random.Generator, prototypes: np.ndarray, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` samples, classes balanced (``num`` a multiple of 10 keeps it exact)."""
    labels = np.arange(num) % 10
    rng.shuffle(labels)
    keep = rng.random((num, 28, 28)) < 0.6
    clutter = rng.random((num, 28, 28)) < noise
    images = np.where((prototypes[labels] & keep) | clutter, 255, 0)
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist_like(
    directory: Path,
    *,
    num_train: int = 2000,
    num_test: int = 500,
    seed: int = 0,
    gz: bool = True,
    noise: float = 0.12,
) -> Path:
    """Write the four MNIST files into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prototypes = rng.random((10, 28, 28)) < 0.15
    for (img_name, lbl_name), num in (
        ((TRAIN_IMAGES, TRAIN_LABELS), num_train),
        ((TEST_IMAGES, TEST_LABELS), num_test),
    ):
        images, labels = make_split(num, rng, prototypes, noise)
        write_idx(directory / img_name, images, gz)
        write_idx(directory / lbl_name, labels, gz)
    return directory

"""fl_app.data: IDX decoding (gzipped and raw), torchvision's folder layout, the
decoded ``.npy`` cache, normalised splits, the iid/Dirichlet/shard partitions and a
client's train/validation split."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import fl_app.data as data
from fl_app.data import (
    cache_dir,
    client_data,
    find_idx,
    load_raw,
    load_split,
    normalise,
    partition_indices,
    read_idx,
)
from tests.synthetic import (
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    idx_bytes,
    write_idx,
    write_mnist_like,
)

# Published per-dataset statistics of the training pixels in [0, 1].
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
NUM_PARTITIONS = 10


@pytest.fixture(scope="module")
def train_labels(mnist_dir: Path) -> np.ndarray:
    return np.asarray(read_idx(find_idx(mnist_dir, TRAIN_LABELS)), dtype=np.int64)


def _max_label_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over non-empty partitions of the share of their most common label."""
    shares = [
        np.bincount(labels[p], minlength=10).max() / len(p) for p in parts if len(p)
    ]
    return float(np.mean(shares))


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in x.numpy()}


# ------------------------------------------------------------------------ read_idx
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_images_and_labels(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    images_path = write_idx(tmp_path / "images-idx3-ubyte", images, gz)
    labels_path = write_idx(tmp_path / "labels-idx1-ubyte", labels, gz)
    assert images_path.name.endswith(".gz") == gz

    decoded_images, decoded_labels = read_idx(images_path), read_idx(labels_path)
    assert decoded_images.shape == (7, 28, 28)
    assert decoded_labels.shape == (7,)
    np.testing.assert_array_equal(decoded_images, images)
    np.testing.assert_array_equal(decoded_labels, labels)


def test_read_idx_decodes_big_endian_int16(tmp_path: Path) -> None:
    values = np.array([[-300, 0, 1], [2, 1000, -1]], dtype=np.int16)
    header = struct.pack(">BBBB", 0, 0, 0x0B, 2) + struct.pack(">2I", 2, 3)
    path = tmp_path / "values-idx2-short"
    path.write_bytes(header + values.astype(">i2").tobytes())
    np.testing.assert_array_equal(read_idx(path), values)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(16),  # not IDX at all
        b"\x00\x00\x07\x01" + struct.pack(">I", 3) + bytes(3),  # unknown dtype code
        b"\x00\x01\x08\x01" + struct.pack(">I", 3) + bytes(3),  # second byte not 0
        b"\x00\x00",  # truncated header
    ],
)
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_rejects_bad_magic_number(
    tmp_path: Path, payload: bytes, gz: bool
) -> None:
    path = tmp_path / ("bad.gz" if gz else "bad")
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(ValueError, match="bad magic number"):
        read_idx(path)


def test_read_idx_rejects_a_body_shorter_than_its_header(tmp_path: Path) -> None:
    full = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(full[: -28 * 28])  # header says 3 images, body holds 2
    with pytest.raises(ValueError, match="header says"):
        read_idx(path)


def test_a_truncated_gzip_is_an_error_naming_the_file(tmp_path: Path) -> None:
    """A download cut short: gzip alone says only 'Compressed file ended'."""
    whole = gzip.compress(idx_bytes(np.zeros((20, 28, 28), dtype=np.uint8)))
    path = tmp_path / f"{TRAIN_IMAGES}.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="truncated") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_bytes_that_are_not_gzip_are_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / f"{TRAIN_LABELS}.gz"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ValueError, match="not gzip") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_images_and_labels_of_different_counts_name_both_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FL_APP_CACHE", str(tmp_path / "cache"))
    source = write_mnist_like(tmp_path / "src", num_train=40, num_test=20)
    write_idx(source / TRAIN_LABELS, np.zeros(39, dtype=np.uint8), True)
    with pytest.raises(ValueError, match="same split") as caught:
        load_raw("mnist", str(source), "train")
    message = str(caught.value)
    assert f"{TRAIN_IMAGES}.gz" in message and f"{TRAIN_LABELS}.gz" in message
    assert "(40, 28, 28)" in message and "(39,)" in message


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other-length"])
def test_a_damaged_decoded_cache_is_named_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """The ``.npy`` cache is a copy: a damaged one is reported, by name, and
    decoded again from the IDX files, which stay the truth."""
    monkeypatch.setenv("FL_APP_CACHE", str(tmp_path / "cache"))
    source = write_mnist_like(tmp_path / "src", num_train=40, num_test=20)
    want_images, want_labels = (
        np.array(a) for a in load_raw("mnist", str(source), "train")
    )
    (images_npy,) = (cache_dir() / "decoded").glob("mnist-train-*-images.npy")
    if damage == "garbage":
        images_npy.write_bytes(b"not a numpy file")
    elif damage == "truncated":
        images_npy.write_bytes(images_npy.read_bytes()[:-500])
    else:
        np.save(images_npy, want_images[:-1])

    with pytest.warns(RuntimeWarning, match="damaged") as warned:
        images, labels = load_raw("mnist", str(source), "train")
    assert str(images_npy) in str(warned[0].message)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(np.load(images_npy), want_images)  # rewritten


def test_a_damaged_partition_cache_is_named_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FL_APP_CACHE", str(tmp_path / "cache"))
    source = str(write_mnist_like(tmp_path / "src", num_train=40, num_test=20))
    args = ("mnist", source, "iid", 4, 0.5, 1)
    want = [p.copy() for p in data._all_partitions(*args)]
    data._all_partitions.cache_clear()
    (path,) = (cache_dir() / "partitions").glob("*.npz")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.warns(RuntimeWarning, match="damaged") as warned:
        got = data._all_partitions(*args)
    data._all_partitions.cache_clear()
    assert str(path) in str(warned[0].message)
    assert [p.tolist() for p in got] == [p.tolist() for p in want]


# ------------------------------------------------------------------------ find_idx
@pytest.mark.parametrize("gz", [True, False])
def test_find_idx_finds_torchvision_raw_layout(tmp_path: Path, gz: bool) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    written = write_idx(raw / TRAIN_LABELS, np.arange(5, dtype=np.uint8), gz)
    assert find_idx(tmp_path, TRAIN_LABELS) == written


def test_find_idx_prefers_the_directory_itself(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / TRAIN_LABELS, np.arange(5, dtype=np.uint8), True)
    direct = write_idx(tmp_path / TRAIN_LABELS, np.arange(3, dtype=np.uint8), False)
    assert find_idx(tmp_path, TRAIN_LABELS) == direct


def test_find_idx_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=TRAIN_IMAGES):
        find_idx(tmp_path, TRAIN_IMAGES)


def test_load_raw_reads_torchvision_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FL_APP_CACHE", str(tmp_path / "cache"))
    write_mnist_like(tmp_path / "root" / "MNIST" / "raw", num_train=30, num_test=20)
    images, labels = load_raw("mnist", str(tmp_path / "root"), "test")
    assert images.shape == (20, 28, 28) and labels.shape == (20,)
    assert labels.dtype == np.int64


# ------------------------------------------------------------------------ load_split
@pytest.mark.parametrize(
    ("dataset", "mean", "std"),
    [("mnist", MNIST_MEAN, MNIST_STD), ("fashion-mnist", FASHION_MEAN, FASHION_STD)],
)
@pytest.mark.parametrize(
    ("split", "stems", "size"),
    [
        ("train", (TRAIN_IMAGES, TRAIN_LABELS), 2000),
        ("test", (TEST_IMAGES, TEST_LABELS), 500),
    ],
)
def test_load_split_is_normalised_float32_with_int64_labels(
    mnist_dir: Path,
    dataset: str,
    mean: float,
    std: float,
    split: str,
    stems: tuple[str, str],
    size: int,
) -> None:
    loaded = load_split(dataset, str(mnist_dir), split)
    assert loaded.x.dtype == torch.float32 and loaded.x.shape == (size, 784)
    assert loaded.y.dtype == torch.int64 and loaded.y.shape == (size,)
    assert len(loaded) == size

    images = read_idx(find_idx(mnist_dir, stems[0]))
    labels = read_idx(find_idx(mnist_dir, stems[1]))
    expected = (images.reshape(size, -1).astype(np.float64) / 255.0 - mean) / std
    np.testing.assert_allclose(loaded.x.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(loaded.y.numpy(), labels.astype(np.int64))


def test_load_raw_second_call_reads_the_npy_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FL_APP_CACHE", str(tmp_path / "cache"))
    source = write_mnist_like(tmp_path / "src", num_train=40, num_test=20)
    first_images, first_labels = load_raw("mnist", str(source), "train")

    decoded = cache_dir() / "decoded"
    assert decoded == tmp_path / "cache" / "decoded"
    assert len(list(decoded.glob("mnist-train-*-images.npy"))) == 1
    assert len(list(decoded.glob("mnist-train-*-labels.npy"))) == 1

    def no_decoding(path: Path) -> np.ndarray:
        raise AssertionError(f"decoded {path} again instead of using the cache")

    monkeypatch.setattr(data, "read_idx", no_decoding)
    images, labels = load_raw("mnist", str(source), "train")
    np.testing.assert_array_equal(images, first_images)
    np.testing.assert_array_equal(labels, first_labels)
    assert labels.dtype == np.int64


def test_load_raw_cache_follows_changed_source_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FL_APP_CACHE", str(tmp_path / "cache"))
    source = write_mnist_like(tmp_path / "src", num_train=40, num_test=20, gz=False)
    _, old_labels = load_raw("mnist", str(source), "train")

    new_labels = (old_labels + 1) % 10
    path = source / TRAIN_LABELS
    write_idx(path, new_labels.astype(np.uint8), False)  # same size, new content
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 100))
    _, labels = load_raw("mnist", str(source), "train")
    np.testing.assert_array_equal(labels, new_labels)


# ------------------------------------------------------------------------ partitions
@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shards"])
def test_partitions_are_disjoint_and_cover_everything(
    train_labels: np.ndarray, partitioner: str
) -> None:
    parts = partition_indices(
        train_labels, partitioner, NUM_PARTITIONS, alpha=0.5, seed=3
    )
    assert len(parts) == NUM_PARTITIONS
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined), "a sample is in two partitions"
    assert joined.min() >= 0 and joined.max() < len(train_labels)
    # Shards drop at most the remainder N mod 2K (here 2000 mod 20 = 0).
    missing = len(train_labels) % (2 * NUM_PARTITIONS) if partitioner == "shards" else 0
    assert len(joined) == len(train_labels) - missing


def test_iid_partitions_have_equal_sizes(train_labels: np.ndarray) -> None:
    sizes = [len(p) for p in partition_indices(train_labels, "iid", 7, seed=3)]
    assert sum(sizes) == len(train_labels)
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("num_partitions", [7, 100])
def test_iid_partitions_are_flower_datasets_iid_partitioner(
    train_labels: np.ndarray, num_partitions: int
) -> None:
    """The one-read IID split is IidPartitioner's, partition for partition."""
    import datasets
    from flwr_datasets.partitioner import IidPartitioner

    table = datasets.Dataset.from_dict(
        {"label": train_labels, "index": np.arange(len(train_labels))}
    ).shuffle(seed=3)
    reference = IidPartitioner(num_partitions=num_partitions)
    reference.dataset = table
    ours = partition_indices(train_labels, "iid", num_partitions, seed=3)
    for i, part in enumerate(ours):
        np.testing.assert_array_equal(part, reference.load_partition(i)["index"])


@pytest.mark.parametrize("num_samples", [2000, 2013])
def test_shards_follow_the_shard_partitioner_contract(num_samples: int) -> None:
    """2 shards of floor(N / 2K) consecutive label-sorted samples per partition; the
    remainder N mod 2K is left out."""
    labels = np.arange(num_samples) % 10
    parts = partition_indices(labels, "shards", NUM_PARTITIONS, seed=3)
    shard_size = num_samples // (2 * NUM_PARTITIONS)
    assert [len(p) for p in parts] == [2 * shard_size] * NUM_PARTITIONS
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined), "a sample is in two partitions"
    assert joined.min() >= 0 and joined.max() < num_samples
    assert num_samples - len(joined) == num_samples % (2 * NUM_PARTITIONS)


def test_shards_give_at_most_two_labels_per_client(train_labels: np.ndarray) -> None:
    for seed in (0, 1):
        parts = partition_indices(train_labels, "shards", NUM_PARTITIONS, seed=seed)
        for part in parts:
            assert len(np.unique(train_labels[part])) <= 2


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shards"])
def test_partitions_depend_on_the_seed_only(
    train_labels: np.ndarray, partitioner: str
) -> None:
    def run(seed: int) -> list[np.ndarray]:
        return partition_indices(
            train_labels, partitioner, NUM_PARTITIONS, alpha=0.5, seed=seed
        )

    first, again, other = run(5), run(5), run(6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(
        len(a) == len(b) and np.array_equal(np.sort(a), np.sort(b))
        for a, b in zip(first, other, strict=True)
    )


def test_dirichlet_small_alpha_is_label_skewed(train_labels: np.ndarray) -> None:
    """With 10 balanced classes an iid client's top label holds ~10-15% of its data;
    Dirichlet alpha=0.1 concentrates most of a client's data on one label."""
    skewed, iid = [], []
    for seed in (0, 1, 42):
        skewed.append(
            _max_label_share(
                train_labels,
                partition_indices(
                    train_labels, "dirichlet", NUM_PARTITIONS, alpha=0.1, seed=seed
                ),
            )
        )
        iid.append(
            _max_label_share(
                train_labels,
                partition_indices(train_labels, "iid", NUM_PARTITIONS, seed=seed),
            )
        )
    assert np.mean(skewed) > 0.5, skewed
    assert max(iid) < 0.3, iid
    assert min(skewed) > max(iid) + 0.2, (skewed, iid)


def test_partition_indices_rejects_bad_arguments(train_labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="num_partitions"):
        partition_indices(train_labels, "iid", 0)
    with pytest.raises(ValueError, match="pathological"):
        partition_indices(train_labels, "pathological", NUM_PARTITIONS)


# ------------------------------------------------------------------------ client_data
@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.0])
def test_client_data_splits_its_partition_into_train_and_val(
    mnist_dir: Path, train_labels: np.ndarray, val_fraction: float
) -> None:
    partition_id, seed = 4, 42
    train, val = client_data(
        "mnist",
        str(mnist_dir),
        "iid",
        partition_id,
        NUM_PARTITIONS,
        alpha=0.5,
        val_fraction=val_fraction,
        seed=seed,
    )
    part = partition_indices(train_labels, "iid", NUM_PARTITIONS, alpha=0.5, seed=seed)[
        partition_id
    ]
    assert len(val) == round(len(part) * val_fraction)
    assert len(train) + len(val) == len(part)

    train_rows, val_rows = _rows(train.x), _rows(val.x)
    assert len(train_rows) == len(train)  # synthetic images are all distinct
    assert not train_rows & val_rows, "train and val share samples"
    images, labels = load_raw("mnist", str(mnist_dir), "train")
    whole = normalise("mnist", images[part], labels[part])
    assert train_rows | val_rows == _rows(whole.x)
    # Labels travel with their images.
    assert sorted(torch.cat([train.y, val.y]).tolist()) == sorted(whole.y.tolist())


def test_client_data_of_two_clients_do_not_overlap(mnist_dir: Path) -> None:
    def train_rows(partition_id: int) -> set[bytes]:
        train, _ = client_data(
            "mnist",
            str(mnist_dir),
            "dirichlet",
            partition_id,
            NUM_PARTITIONS,
            alpha=0.5,
            val_fraction=0.1,
            seed=42,
        )
        return _rows(train.x)

    assert not train_rows(0) & train_rows(1)


@pytest.mark.parametrize("partition_id", [-1, NUM_PARTITIONS, NUM_PARTITIONS + 3])
def test_client_data_rejects_out_of_range_partition(
    mnist_dir: Path, partition_id: int
) -> None:
    with pytest.raises(ValueError, match="partition-id"):
        client_data(
            "mnist",
            str(mnist_dir),
            "iid",
            partition_id,
            NUM_PARTITIONS,
            alpha=0.5,
            val_fraction=0.1,
            seed=42,
        )


def test_a_run_on_a_seeded_half_keeps_only_that_halfs_examples(
    mnist_dir: Path,
) -> None:
    """``audit.half-seed``: exactly half the training split, the same half for the
    same seed; every client's examples are in it (the membership audit's labels)."""
    n = len(load_raw("mnist", str(mnist_dir), "train")[1])
    half = data.training_half(5, n)
    assert half.sum() == n // 2
    np.testing.assert_array_equal(half, data.training_half(5, n))
    assert (half != data.training_half(6, n)).any()
    kept = _rows(load_split("mnist", str(mnist_dir), "train").x[half])
    whole, in_half = 0, 0
    for partition in range(4):
        full, _ = client_data(
            "mnist",
            str(mnist_dir),
            "iid",
            partition,
            4,
            alpha=0.5,
            val_fraction=0.0,
            seed=1,
        )
        part, _ = client_data(
            "mnist",
            str(mnist_dir),
            "iid",
            partition,
            4,
            alpha=0.5,
            val_fraction=0.0,
            seed=1,
            half_seed=5,
        )
        assert _rows(part.x) <= kept & _rows(full.x)
        whole, in_half = whole + len(full), in_half + len(part)
    assert in_half == n // 2 and whole == n

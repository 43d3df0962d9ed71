"""Client updates exactly as the server holds them, for the attacks to read.

Two sources. A run of the app with ``audit.capture-round = r`` leaves
``audit/round-<r>.npz`` in its folder: the strategy's own copy of every update of
that round after decoding and validation and before any DP noise the server adds
(``load_capture``). In a study's own process, ``reply_as_held`` makes a real client
of this app train and reply, and passes the reply through the server's decoding and
checks (``strategies.validation``), for the FedSGD settings (one step on one
example or one batch) a flwr run of the app does not use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.common import Code, FitRes, NDArrays, Scalar, Status, ndarrays_to_parameters

from fl_app import keys
from fl_app.client import PartitionClient
from fl_app.compression import CodecSpec
from fl_app.config import DpConfig
from fl_app.data import Split
from fl_app.model import build_model
from fl_app.results import AUDIT_DIR
from strategies.validation import Layout, checked_arrays, decoded


@dataclass(frozen=True)
class Capture:
    """A captured round: the global weights sent, the partitions sampled, and
    partition -> (n_k, update); partition -1 is SecAgg+'s aggregate (the only
    update the server saw)."""

    global_weights: NDArrays
    sampled: list[int]
    updates: dict[int, tuple[int, NDArrays]]


def load_capture(run_dir: Path, server_round: int) -> Capture:
    """``audit/round-<r>.npz`` of a run (``audit.capture-round``)."""
    path = Path(run_dir) / AUDIT_DIR / f"round-{server_round}.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no capture (run with audit.capture-round = {server_round})"
        )
    with np.load(path) as held:
        names = list(held.keys())
        count = sum(name.startswith("global_") for name in names)
        weights = [held[f"global_{i}"] for i in range(count)]
        sampled = [int(p) for p in held["sampled"]]
        updates = {
            int(name[2:]): (
                int(held[name]),
                [held[f"delta_{name[2:]}_{i}"] for i in range(count)],
            )
            for name in names
            if name.startswith("n_")
        }
    return Capture(weights, sampled, dict(sorted(updates.items())))


def fit_config(
    batch_size: int, lr: float = 0.1, epochs: int = 1, seed: int = 42
) -> dict[str, Scalar]:
    """A round-1 fit config as the strategy sends it (FedSGD: ``epochs = 1`` and
    ``batch_size`` = the client's n_k, one step)."""
    return {
        keys.SERVER_ROUND: 1,
        keys.LEARNING_RATE: lr,
        keys.LOCAL_EPOCHS: epochs,
        keys.BATCH_SIZE: batch_size,
        keys.SEED: seed,
    }


def reply_as_held(
    model: str,
    weights: NDArrays,
    data: Split,
    config: dict[str, Scalar],
    *,
    codec: CodecSpec | None = None,
    local_dp: DpConfig | None = None,
    partition_id: int = 0,
) -> NDArrays:
    """A client of this app trains ``data`` from ``weights`` and replies (coded by
    ``codec``, noised by ``local_dp``); the update the server's pipeline then
    holds, decoded and checked as ``strategies.validation`` does."""
    client = PartitionClient(
        build_model(model),
        data,
        Split(data.x[:0], data.y[:0]),
        partition_id,
        codec=codec,
        local_dp=local_dp,
    )
    arrays, num_examples, metrics = client.fit(weights, dict(config))
    reply = FitRes(
        Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples, metrics
    )
    layout = Layout.of(weights)
    if codec is not None and codec.scheme != "none":
        reply = decoded(reply, codec, layout)
    return checked_arrays(
        reply,
        layout,
        num_update_arrays=len(weights),
        max_num_examples=60_000,
        max_update_norm=0.0,
    )

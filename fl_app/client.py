"""The client's side of FedAvg, without Flower's plumbing: ``PartitionClient`` trains
one partition from the global weights and returns its update.

A client never sends data, only its update (the weights it trained minus the ones it
received), its example count ``n_k`` and its training loss. The knobs that shape the
data (dataset, partitioner, seed) and the attack role of the studies come from the run
config; those that shape a round of training (lr, epochs, batch, seed, and what an
algorithm adds: FedProx's mu, SCAFFOLD's variate) come from the strategy's fit
config, so one client serves every strategy. ``fl_app.client_app`` imports this
module only for the messages that train or evaluate, because torch takes 2 s to
import in every fresh process.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar, ndarray_to_bytes
from torch import nn

from fl_app import keys
from fl_app.attacks import attacking_partitions, flip_labels, poison_update
from fl_app.client_parts import ClientPart, client_part
from fl_app.compression import CodecSpec, encode
from fl_app.config import AttackConfig, DpConfig, RunConfig
from fl_app.data import Split, client_data, client_indices
from fl_app.heterogeneity import DeviceProfile, device_profiles, work_fraction
from fl_app.model import build_model, get_weights, set_weights
from fl_app.privacy import NOISE_SALT, clip, local_privatize
from fl_app.training import evaluate, local_steps, seeded_generator, train

# Minibatches of ~10 rows gain nothing from intra-op threads; the parallelism is in
# running clients side by side (one per core), which extra threads would fight.
torch.set_num_threads(1)


class PartitionClient(NumPyClient):
    """One partition's client; ``fit`` is McMahan's ClientUpdate from global weights.

    It receives the global weights (followed by whatever extra arrays the strategy's
    algorithm sends down), trains, and returns the update ``w_k - w_t`` followed by
    the algorithm's extra arrays. Subclass it and override ``train_locally`` to
    change local training; what the strategy wants the client to know arrives in
    ``config``, and ``state`` (the node's ``Context.state``) outlives the round.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Split,
        val_data: Split,
        partition_id: int,
        *,
        num_partitions: int = 1,
        state: RecordDict | None = None,
        attack: AttackConfig | None = None,
        codec: CodecSpec | None = None,
        local_dp: DpConfig | None = None,
        device: DeviceProfile | None = None,
        deadline: float = 0.0,
    ) -> None:
        """``device`` and ``deadline``: a simulated device that sends what it can
        finish by the round's deadline (``heterogeneity.partial-work``)."""
        self.model = model
        self.train_data = flip_labels(train_data) if _flips(attack) else train_data
        self.val_data = val_data
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        self.state = state if state is not None else RecordDict()
        self.attack = attack
        self.codec = codec
        self.local_dp = local_dp
        self.device = device
        self.deadline = deadline

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Tell the server which partition this node holds (node ids are random)."""
        return {
            keys.PARTITION_ID: self.partition_id,
            keys.NUM_PARTITIONS: self.num_partitions,
            keys.NUM_EXAMPLES: len(self.train_data),
        }

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        num_arrays = len(self.model.state_dict())
        received, extras_down = parameters[:num_arrays], parameters[num_arrays:]
        set_weights(self.model, received)
        part = client_part(config, received, extras_down, self.state)
        steps = local_steps(
            len(self.train_data),
            int(config[keys.LOCAL_EPOCHS]),
            int(config[keys.BATCH_SIZE]),
        )
        budget = self.step_budget(parameters, config, steps)
        started = time.perf_counter()
        loss = self.train_locally(config, part, max_steps=budget)
        train_seconds = time.perf_counter() - started
        update = [
            new - old
            for new, old in zip(get_weights(self.model), received, strict=True)
        ]
        done = steps if budget is None else budget
        lr = float(config[keys.LEARNING_RATE])
        extras_up = part.extras_up(update, max(done, 1), lr)
        if self.attack is not None:
            rng = np.random.default_rng(
                [
                    int(config[keys.SEED]),
                    int(config[keys.SERVER_ROUND]),
                    self.partition_id,
                ]
            )
            update = poison_update(
                self.attack,
                update,
                rng,
                seed=int(config[keys.SEED]),
                partition_id=self.partition_id,
            )
        num_examples = len(self.train_data)
        if keys.DP_CLIP in config:  # central DP under SecAgg+: clip here, weigh 1
            update, num_examples = clip(update, float(config[keys.DP_CLIP])), 1
        if self.local_dp is not None:
            update = self.privatize(update, config)
        update = self.encode(update, config)
        metrics: dict[str, Scalar] = {
            keys.TRAIN_LOSS: loss,
            keys.TRAIN_SECONDS: train_seconds,
            keys.REPORTED_PARTITION: self.partition_id,
            **part.metrics(),
        }
        if budget is not None:
            metrics[keys.WORK_DONE] = done / steps
        return update + extras_up, num_examples, metrics

    def step_budget(
        self, received: NDArrays, config: dict[str, Scalar], steps: int
    ) -> int | None:
        """The local steps a simulated device can take and still deliver its update
        by the round's deadline (``work_fraction``; its upload the size of what it
        received), or None for all ``steps``. Rounded down, strictly, so that the
        server's clock, pricing the same steps, sees it on time."""
        if self.device is None or steps == 0:
            return None
        nbytes = sum(len(ndarray_to_bytes(array)) for array in received)
        share = work_fraction(
            self.device,
            deadline=self.deadline,
            bytes_down=nbytes,
            bytes_up=nbytes,
            num_examples=len(self.train_data),
            epochs=int(config[keys.LOCAL_EPOCHS]),
        )
        if share >= 1:
            return None
        return max(0, math.ceil(share * steps) - 1)

    def privatize(self, update: NDArrays, config: dict[str, Scalar]) -> NDArrays:
        """Local DP: the update clipped and noised before it is coded and sent.

        The noise is drawn from ``(dp.noise-seed, round, partition)`` when that seed
        is set (studies), from OS entropy otherwise.
        """
        assert self.local_dp is not None
        seed = self.local_dp.noise_seed
        rng = np.random.default_rng(
            None
            if seed < 0
            else [seed, int(config[keys.SERVER_ROUND]), self.partition_id, NOISE_SALT]
        )
        return local_privatize(update, self.local_dp, rng)

    def encode(self, update: NDArrays, config: dict[str, Scalar]) -> NDArrays:
        """The update as it goes on the wire: coded by the run's scheme, with the
        error-feedback residual carried in the node's state between rounds."""
        if self.codec is None or self.codec.scheme == "none":
            return update
        rng = np.random.default_rng(
            [
                int(config[keys.SEED]),
                int(config[keys.SERVER_ROUND]),
                self.partition_id,
                1,
            ]
        )
        residual = None
        if self.codec.error_feedback and keys.RESIDUAL in self.state:
            residual = self.state[keys.RESIDUAL].to_numpy_ndarrays()  # type: ignore[union-attr]
        payload, residual = encode(update, self.codec, rng, residual)
        if residual is not None:
            self.state[keys.RESIDUAL] = ArrayRecord(residual)
        return payload

    def train_locally(
        self,
        config: dict[str, Scalar],
        part: ClientPart | None = None,
        max_steps: int | None = None,
    ) -> float:
        """E epochs of SGD, batch B (the first ``max_steps`` steps of them); batches
        seeded by run, round and client."""
        generator = seeded_generator(
            int(config[keys.SEED]), int(config[keys.SERVER_ROUND]), self.partition_id
        )
        return train(
            self.model,
            self.train_data,
            epochs=int(config[keys.LOCAL_EPOCHS]),
            batch_size=int(config[keys.BATCH_SIZE]),
            lr=float(config[keys.LEARNING_RATE]),
            generator=generator,
            objective=part,
            max_steps=max_steps,
        )

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        loss, accuracy = evaluate(self.model, self.val_data)
        return loss, len(self.val_data), {keys.ACCURACY: accuracy}


def _flips(attack: AttackConfig | None) -> bool:
    return attack is not None and attack.kind == "label-flip"


@lru_cache(maxsize=2)
def _model(name: str) -> nn.Module:
    """One model per process; each message only loads new weights into it."""
    return build_model(name)


def build_client(
    config: RunConfig, partition_id: int, num_partitions: int, state: RecordDict
) -> PartitionClient:
    """The client of one partition (its data split by the run's seed)."""
    heterogeneity = config.heterogeneity
    train_data, val_data = client_data(
        config.dataset,
        config.data_dir,
        config.partitioner,
        partition_id,
        num_partitions,
        alpha=config.dirichlet_alpha,
        val_fraction=config.val_fraction,
        seed=config.seed,
        half_seed=config.audit.half_seed,
    )
    attackers = (
        attacking_partitions(config.seed, num_partitions, config.attack.fraction)
        if config.attack.enabled
        else frozenset()
    )
    return PartitionClient(
        _model(config.model),
        train_data,
        val_data,
        partition_id,
        num_partitions=num_partitions,
        state=state,
        attack=config.attack if partition_id in attackers else None,
        codec=config.compression.spec() if config.compression.enabled else None,
        local_dp=config.dp if config.dp.local else None,
        device=(
            device_profiles(heterogeneity.spec(), num_partitions, config.seed)[
                partition_id
            ]
            if heterogeneity.partial_work
            else None
        ),
        deadline=heterogeneity.round_deadline,
    )


def trained_by(config: RunConfig, partition: int, num_partitions: int) -> np.ndarray:
    """The indices a partition's client trains on in the run ``config`` describes
    (``fl_app.data.client_indices``: its training share, on the run's half)."""
    train, _ = client_indices(
        config.dataset,
        config.data_dir,
        config.partitioner,
        partition,
        num_partitions,
        alpha=config.dirichlet_alpha,
        val_fraction=config.val_fraction,
        seed=config.seed,
        half_seed=config.audit.half_seed,
    )
    return train


__all__ = ["PartitionClient", "build_client", "trained_by"]

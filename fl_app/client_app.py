"""The Flower ClientApp: a thin NumPyClient over the node's own partition.

A client never sends data, only its update (the weights it trained minus the ones it
received), its example count ``n_k`` and its training loss. The knobs that shape the
data (dataset, partitioner, seed) and the attack role of the studies come from the run
config; those that shape a round of training (lr, epochs, batch, seed, and what an
algorithm adds: FedProx's mu, SCAFFOLD's variate) come from the strategy's fit
config, so one ClientApp serves every strategy.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, NDArrays, Scalar
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS as SECAGG_RECORD,
)
from torch import nn

from fl_app.attacks import attacking_partitions, flip_labels, poison_update
from fl_app.client_parts import ClientPart, client_part
from fl_app.client_state import NodeStore
from fl_app.compression import CodecSpec, encode
from fl_app.config import AttackConfig, RunConfig
from fl_app.data import Split, client_data
from fl_app.model import build_model, get_weights, set_weights
from fl_app.privacy import DP_CLIP, clip
from fl_app.training import evaluate, local_steps, seeded_generator, train

RESIDUAL = "compression.residual"  # Context.state key: what error feedback carries

# Minibatches of ~10 rows gain nothing from intra-op threads; the parallelism is in
# running clients side by side (one per core), which extra threads would fight.
torch.set_num_threads(1)


class FlowerClient(NumPyClient):
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
    ) -> None:
        self.model = model
        self.train_data = flip_labels(train_data) if _flips(attack) else train_data
        self.val_data = val_data
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        self.state = state if state is not None else RecordDict()
        self.attack = attack
        self.codec = codec

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Tell the server which partition this node holds (node ids are random)."""
        return {
            "partition-id": self.partition_id,
            "num-partitions": self.num_partitions,
            "num-examples": len(self.train_data),
        }

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        num_arrays = len(self.model.state_dict())
        received, extras_down = parameters[:num_arrays], parameters[num_arrays:]
        set_weights(self.model, received)
        part = client_part(config, received, extras_down, self.state)
        loss = self.train_locally(config, part)
        update = [
            new - old
            for new, old in zip(get_weights(self.model), received, strict=True)
        ]
        steps = local_steps(
            len(self.train_data), int(config["local-epochs"]), int(config["batch-size"])
        )
        extras_up = part.extras_up(update, steps, float(config["learning-rate"]))
        if self.attack is not None:
            rng = np.random.default_rng(
                [int(config["seed"]), int(config["server-round"]), self.partition_id]
            )
            update = poison_update(self.attack, update, rng)
        num_examples = len(self.train_data)
        if DP_CLIP in config:  # central DP under SecAgg+: clip here, weigh 1
            update, num_examples = clip(update, float(config[DP_CLIP])), 1
        update = self.encode(update, config)
        metrics: dict[str, Scalar] = {
            "train_loss": loss,
            "partition_id": self.partition_id,
            **part.metrics(),
        }
        return update + extras_up, num_examples, metrics

    def encode(self, update: NDArrays, config: dict[str, Scalar]) -> NDArrays:
        """The update as it goes on the wire: coded by the run's scheme, with the
        error-feedback residual carried in the node's state between rounds."""
        if self.codec is None or self.codec.scheme == "none":
            return update
        rng = np.random.default_rng(
            [int(config["seed"]), int(config["server-round"]), self.partition_id, 1]
        )
        residual = None
        if self.codec.error_feedback and RESIDUAL in self.state:
            residual = self.state[RESIDUAL].to_numpy_ndarrays()  # type: ignore[union-attr]
        payload, residual = encode(update, self.codec, rng, residual)
        if residual is not None:
            self.state[RESIDUAL] = ArrayRecord(residual)
        return payload

    def train_locally(
        self, config: dict[str, Scalar], part: ClientPart | None = None
    ) -> float:
        """E epochs of SGD, batch B; batches seeded by run, round and client."""
        generator = seeded_generator(
            int(config["seed"]), int(config["server-round"]), self.partition_id
        )
        return train(
            self.model,
            self.train_data,
            epochs=int(config["local-epochs"]),
            batch_size=int(config["batch-size"]),
            lr=float(config["learning-rate"]),
            generator=generator,
            objective=part,
        )

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        loss, accuracy = evaluate(self.model, self.val_data)
        return loss, len(self.val_data), {"accuracy": accuracy}


def _flips(attack: AttackConfig | None) -> bool:
    return attack is not None and attack.kind == "label-flip"


@lru_cache(maxsize=2)
def _model(name: str) -> nn.Module:
    """One model per process; each message only loads new weights into it."""
    return build_model(name)


class NodeClient(NumPyClient):
    """What ``client_fn`` returns: each message is handled by the ``FlowerClient`` of
    the partition it concerns.

    That partition is the one the message names (``partition-id`` in its config,
    when the server deals partitions: ``partition-source = "server"``, simulation),
    else the node's own ``--node-config`` (deployment). Data is only loaded once the
    message says which partition, so a node never loads one it will not train.
    """

    def __init__(self, context: Context) -> None:
        self.node = context
        self.config = RunConfig.from_flower(context.run_config)

    def client_for(
        self, message_config: dict[str, Scalar], state: RecordDict | None = None
    ) -> FlowerClient:
        partition_id, num_partitions = _partition(self.node, message_config)
        if state is None:
            state = self.node.state
        return build_client(self.config, partition_id, num_partitions, state)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        return self.client_for(config).get_properties(config)

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Train; state that outlives the round goes to the node's own store when
        the message names an experiment (``fl_app.client_state``), which is what
        lets a resumed run find it, else to ``Context.state``."""
        partition_id, _ = _partition(self.node, config)
        store = NodeStore.for_message(self.node.node_config, config, partition_id)
        if store is None:
            return self.client_for(config).fit(parameters, config)
        server_round = int(config["server-round"])
        state = store.load(before_round=server_round)
        reply = self.client_for(config, state).fit(parameters, config)
        store.save(state, server_round)
        return reply

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        return self.client_for(config).evaluate(parameters, config)


def _partition(node: Context, message_config: dict[str, Scalar]) -> tuple[int, int]:
    """(partition-id, num-partitions): the message's, else the node's own."""
    source = message_config if "partition-id" in message_config else node.node_config
    try:
        return int(source["partition-id"]), int(source["num-partitions"])
    except KeyError as missing:
        raise ValueError(
            f"node config lacks {missing}; start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<N>"'
        ) from None


def build_client(
    config: RunConfig, partition_id: int, num_partitions: int, state: RecordDict
) -> FlowerClient:
    """The client of one partition (its data split by the run's seed)."""
    train_data, val_data = client_data(
        config.dataset,
        config.data_dir,
        config.partitioner,
        partition_id,
        num_partitions,
        alpha=config.dirichlet_alpha,
        val_fraction=config.val_fraction,
        seed=config.seed,
    )
    attackers = (
        attacking_partitions(config.seed, num_partitions, config.attack.fraction)
        if config.attack.enabled
        else frozenset()
    )
    return FlowerClient(
        _model(config.model),
        train_data,
        val_data,
        partition_id,
        num_partitions=num_partitions,
        state=state,
        attack=config.attack if partition_id in attackers else None,
        codec=config.compression.spec() if config.compression.enabled else None,
    )


def client_fn(context: Context) -> Client:
    """The node's client; the run config is read and validated here, once."""
    return NodeClient(context).to_client()


def secagg_when_asked(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's ``secaggplus_mod`` for the train messages that carry its protocol
    (the server runs ``SecAggPlusWorkflow``); any other message goes straight on,
    so one ClientApp serves runs with and without SecAgg+."""
    if (
        msg.metadata.message_type == MessageType.TRAIN
        and SECAGG_RECORD in msg.content.config_records
    ):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(client_fn=client_fn, mods=[secagg_when_asked])

__all__ = ["FlowerClient", "NodeClient", "app", "build_client", "client_fn"]

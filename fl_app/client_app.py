"""The Flower ClientApp: ``PartitionRouter``, the node's ``NumPyClient``, hands each
message to the ``PartitionClient`` (``fl_app.client``) of the partition it concerns.

Loading this module imports no torch and no strategy: Flower loads it to validate
the app before the simulation starts Ray, and a deployed SuperNode starts a fresh
``flwr-clientapp`` process for every message; only the messages that train or
evaluate import ``fl_app.client`` (and torch, 2 s). The algorithm's client part is
chosen by the fit config from the client's own registry
(``fl_app.client_parts.CLIENT_PARTS``), never by importing a strategy.
``tests/test_architecture.py`` checks both in a fresh interpreter.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from flwr.app import Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, NDArrays, Scalar
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS as SECAGG_RECORD,
)

from fl_app import keys
from fl_app.config import RunConfig
from fl_app.kernels import pin_kernels

if TYPE_CHECKING:
    from fl_app.client import PartitionClient


class PartitionRouter(NumPyClient):
    """What ``client_fn`` returns: it routes each message to the ``PartitionClient``
    of the partition the message concerns, with that partition's stored state.

    That partition is the one the message names (``partition-id`` in its config,
    when the server deals partitions: ``partition-source = "server"``, simulation),
    else the node's own ``--node-config`` (deployment). Data is only loaded once the
    message says which partition, so a node never loads one it will not train.
    """

    def __init__(self, context: Context) -> None:
        self.node = context
        self.config = RunConfig.from_flower(context.run_config)
        if self.config.reproducible:
            pin_kernels()  # before the message imports torch

    def client_for(
        self, message_config: dict[str, Scalar], state: RecordDict | None = None
    ) -> PartitionClient:
        from fl_app.client import build_client  # torch: only for this message kind

        partition_id, num_partitions = _partition(self.node, message_config)
        if state is None:
            state = self.node.state
        return build_client(self.config, partition_id, num_partitions, state)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Which partition this node holds, from its node config alone: no torch,
        no data (the server asks every node once, before round 1)."""
        partition_id, num_partitions = _partition(self.node, config)
        return {keys.PARTITION_ID: partition_id, keys.NUM_PARTITIONS: num_partitions}

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Train the message's partition, or each of a packed message's in turn
        (``fl_app.packing``), every one from the same received weights."""
        if keys.PARTITION_IDS not in config:
            return self.fit_one(parameters, config)
        from fl_app.packing import pack_replies, unpack_partitions

        replies = [
            (partition, self.fit_one(parameters, single))
            for partition, single in unpack_partitions(config)
        ]
        return pack_replies(replies)

    def fit_one(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Train one partition; state that outlives the round goes to the node's own
        store when the message names an experiment (``fl_app.client_state``), which
        is what lets a resumed run find it, else to ``Context.state``."""
        from fl_app.client_state import NodeStore

        partition_id, _ = _partition(self.node, config)
        store = NodeStore.for_message(self.node.node_config, config, partition_id)
        if store is None:
            arrays, num_examples, metrics = self.client_for(config).fit(
                parameters, config
            )
        else:
            server_round = int(config[keys.SERVER_ROUND])
            state = store.load(before_round=server_round)
            arrays, num_examples, metrics = self.client_for(config, state).fit(
                parameters, config
            )
            store.save(state, server_round)
        return arrays, num_examples, {**metrics, keys.RAY_NODE: ray_node()}

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        return self.client_for(config).evaluate(parameters, config)


def _partition(node: Context, message_config: dict[str, Scalar]) -> tuple[int, int]:
    """(partition-id, num-partitions): the message's, else the node's own."""
    source = message_config if keys.PARTITION_ID in message_config else node.node_config
    try:
        partition, count = (
            int(source[keys.PARTITION_ID]),
            int(source[keys.NUM_PARTITIONS]),
        )
    except KeyError as missing:
        raise ValueError(
            f"node config lacks {missing}; start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<N>"'
        ) from None
    if not 0 <= partition < count:
        raise ValueError(
            f"partition-id {partition} is outside 0..{count - 1} "
            f"(num-partitions = {count})"
        )
    return partition, count


def ray_node() -> str:
    """The hex id of the Ray node this process runs on ("" outside Ray): what the
    history's ``clients_by_node`` counts. Ray is only looked up, never imported, so
    a deployed ClientApp does not pay for it."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return str(ray.get_runtime_context().get_node_id())


def client_fn(context: Context) -> Client:
    """The node's client; the run config is read and validated here, once."""
    return PartitionRouter(context).to_client()


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

__all__ = ["PartitionRouter", "app", "client_fn"]

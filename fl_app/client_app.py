"""The Flower ClientApp: a thin NumPyClient over the node's own partition.

A client never sends data, only the weights it trained, its example count ``n_k`` and
its training loss. The knobs that shape the data (dataset, partitioner, seed) come from
the run config; those that shape a round of training (lr, epochs, batch, seed) come
from the strategy's fit config, so a strategy can vary them per round.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from flwr.client import Client, ClientApp, NumPyClient
from flwr.common import Context, NDArrays, Scalar
from torch import nn

from fl_app.config import RunConfig
from fl_app.data import Split, client_data
from fl_app.model import build_model, get_weights, set_weights
from fl_app.training import evaluate, seeded_generator, train

# Minibatches of ~10 rows gain nothing from intra-op threads; the parallelism is in
# running clients side by side (one per core), which extra threads would fight.
torch.set_num_threads(1)


class FlowerClient(NumPyClient):
    """One partition's client; ``fit`` is McMahan's ClientUpdate from global weights.

    Subclass it and override ``train_locally`` to change local training; what the
    strategy wants the client to know arrives in ``config``.
    """

    def __init__(
        self, model: nn.Module, train_data: Split, val_data: Split, partition_id: int
    ) -> None:
        self.model = model
        self.train_data = train_data
        self.val_data = val_data
        self.partition_id = partition_id

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Tell the server which partition this node holds (node ids are random)."""
        return {"partition-id": self.partition_id, "num-examples": len(self.train_data)}

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        loss = self.train_locally(config)
        metrics: dict[str, Scalar] = {
            "train_loss": loss,
            "partition_id": self.partition_id,
        }
        return get_weights(self.model), len(self.train_data), metrics

    def train_locally(self, config: dict[str, Scalar]) -> float:
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
        )

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        loss, accuracy = evaluate(self.model, self.val_data)
        return loss, len(self.val_data), {"accuracy": accuracy}


@lru_cache(maxsize=2)
def _model(name: str) -> nn.Module:
    """One model per process; each message only loads new weights into it."""
    return build_model(name)


def client_fn(context: Context) -> Client:
    """The client for this node's partition (``partition-id`` of ``num-partitions``)."""
    config = RunConfig.from_flower(context.run_config)
    try:
        partition_id = int(context.node_config["partition-id"])
        num_partitions = int(context.node_config["num-partitions"])
    except KeyError as missing:
        raise ValueError(
            f"node config lacks {missing}; start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<N>"'
        ) from None
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
    client = FlowerClient(_model(config.model), train_data, val_data, partition_id)
    return client.to_client()


app = ClientApp(client_fn=client_fn)

__all__ = ["FlowerClient", "app", "client_fn"]

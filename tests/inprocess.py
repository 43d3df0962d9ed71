"""The app's real ServerApp and ClientApp in one process, joined by a grid in memory.

What a ``flwr run`` adds on top of this is transport: a SuperLink, a simulation
process, Ray's start-up (15-20 s a run on 2 cores). What it runs is the same: the
ServerApp's ``main`` (Flower's legacy loop, or ``DefaultWorkflow`` with SecAgg+),
the strategy, and for every message Flower's ``ClientApp`` with its mods, the
``NumPyClient`` and the client part the fit config switches on. So tests of wiring
(config -> strategy -> client part) run here in a second, and the integration
modules keep ``flwr run`` for what only a real run shows.

Faithful where it matters:
- each message's content is serialized to Flower's protobuf and back on the way to
  a node and on the way back, so nothing is shared by reference between server and
  client and everything sent must be serializable;
- each node has its own ``Context`` (``partition-id``/``num-partitions`` in its node
  config, a ``state`` that survives between messages), as the simulation gives it;
- node ids are random 63-bit numbers, as Flower's are (drawn from a fixed seed);
- a ClientApp that raises becomes an error reply, as in Flower's simulation.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.config import get_fused_config_from_dir
from flwr.common.constant import ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fl_app.grid import IN_MEMORY_INTERVAL_S

APP_DIR = Path(__file__).resolve().parent.parent


def _copy(message: Message) -> Message:
    """The message as the other side would receive it: through Flower's protobuf."""
    return message_from_proto(message_to_proto(message))


class LocalGrid(Grid):
    """A ``Grid`` whose nodes are ClientApp calls in a worker thread of this process,
    one call at a time (one trainer, as one Ray actor per core gives on a 2-core
    machine, and torch has the cores to itself)."""

    pull_interval_s = IN_MEMORY_INTERVAL_S  # a lookup in this process

    def __init__(
        self,
        client_app: ClientApp,
        run: Run,
        run_config: Mapping[str, Any],
        num_nodes: int,
    ) -> None:
        self.client_app = client_app
        self._run = run
        ids = np.random.default_rng(2024).integers(1, 2**63 - 1, num_nodes)
        self.contexts = {
            int(node_id): Context(
                run_id=run.run_id,
                node_id=int(node_id),
                node_config={"partition-id": p, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for p, node_id in enumerate(ids)
        }
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="local-node")
        self._pending: dict[str, Future[Message]] = {}
        self._lock = threading.Lock()
        #: (request, reply) of every message handled, in the order they finished
        self.exchanges: list[tuple[Message, Message]] = []

    # -- Grid's contract -------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id
            message.metadata.__dict__["_run_id"] = self._run.run_id
            with self._lock:
                self._pending[message_id] = self._pool.submit(
                    self._handle, _copy(message)
                )
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = []
        with self._lock:
            for message_id in message_ids:
                future = self._pending.get(message_id)
                if future is not None and future.done():
                    del self._pending[message_id]
                    replies.append(future.result())
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        with self._lock:
            futures = [self._pending[i] for i in ids]
        for future in futures:
            try:
                future.result(timeout=timeout)
            except TimeoutError:
                break
        return self.pull_messages(ids)

    # -- a node ------------------------------------------------------------------
    def _handle(self, message: Message) -> Message:
        context = self.contexts[message.metadata.dst_node_id]
        try:
            reply = self.client_app(message, context)
        except Exception as error:  # as Flower's simulation reports it
            reason = f"{type(error)}:<'{error}'>"
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                reply_to=message,
            )
        reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        reply = _copy(reply)
        with self._lock:
            self.exchanges.append((message, reply))
        return reply

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def quick_config(
    data_dir: Path, output_dir: Path, rounds: int, **overrides: Any
) -> dict[str, Any]:
    """A run the tests can afford: ``rounds`` rounds, half of the nodes a round, no
    client evaluation, MNIST-format files in ``data_dir``, no TensorBoard files
    (``test_tracking.py`` and ``test_resume.py`` check those). ``overrides`` use Python
    names for flat keys (``seed=7``) and dotted keys as ``**{"fedprox.mu": 0.1}``."""
    return {
        "tracking.tensorboard": False,
        "num-server-rounds": rounds,
        "fraction-fit": 0.5,
        "fraction-evaluate": 0.0,
        "learning-rate": 0.05,
        "dataset": "mnist",
        "data-dir": str(data_dir),
        "output-dir": str(output_dir),
        **{key.replace("_", "-"): value for key, value in overrides.items()},
    }


def seeded_samples(
    seed: int, rounds: int, num_nodes: int = 10, per_round: int = 5
) -> list[set[int]]:
    """The partitions sampled in rounds 1..rounds, worked out as the strategy's
    documented draw (``strategies/sampling.py``: generator ``[seed, round, 0]``,
    ``per_round`` of ``num_nodes`` without replacement), not by calling it."""
    return [
        set(
            np.random.default_rng([seed, r, 0])
            .choice(num_nodes, size=per_round, replace=False)
            .tolist()
        )
        for r in range(1, rounds + 1)
    ]


def returning_counts(samples: list[set[int]]) -> list[int]:
    """Per round, the sampled clients that were sampled before: those that must
    find the client state (SCAFFOLD's c_i) they stored."""
    seen: set[int] = set()
    counts = []
    for sample in samples:
        counts.append(len(sample & seen))
        seen |= sample
    return counts


def run_config_for(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """pyproject's ``[tool.flwr.app.config]`` with ``overrides``, as Flower fuses
    them (an unknown key is refused, as ``flwr run`` refuses it)."""
    return dict(get_fused_config_from_dir(APP_DIR, dict(overrides)))


def run_in_process(
    overrides: Mapping[str, Any], num_nodes: int, *, run_id: int = 1
) -> LocalGrid:
    """One run of the app with ``num_nodes`` nodes; returns the grid (its nodes'
    contexts hold their state). Raises what the ServerApp raises."""
    from fl_app.client_app import app as client_app
    from fl_app.server_app import app as server_app

    run_config = run_config_for(overrides)
    run = Run.create_empty(run_id)
    grid = LocalGrid(client_app, run, run_config, num_nodes)
    server_context = Context(
        run_id=run_id,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config=run_config,
    )
    try:
        server_app(grid, server_context)
    finally:
        grid.close()
    return grid

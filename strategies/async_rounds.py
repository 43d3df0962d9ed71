"""FedBuff's server loop over the ServerApp's Grid: clients start and report one at a
time, and every K reports make one update (``strategies.fedbuff``).

Each client is one ``fit`` message, Flower's legacy ``FitIns`` as a ``Message`` (what
the ClientApp answers in every other strategy), pushed with ``push_messages`` and
collected with ``pull_messages``; ``fedbuff.concurrency`` are in flight at a time.
When the last update is made, the loop returns: replies still in flight are left to
their time-to-live.
The loop follows a stream of events, ``Start`` (send client k the current model)
and ``Arrival`` (take client k's reply), from one of two sources:

* **the virtual clock** (simulation, ``partition-source = "server"``):
  ``fl_app.heterogeneity.AsyncScheduler`` over the partitions, each taking download
  + E·n_k·compute + upload of the model's bytes on its device (``heterogeneity.*``;
  when that is off, every device has its medians: alike but for n_k). The next
  client is drawn uniformly from the idle ones. The loop waits for exactly the
  reply the schedule names, so the real training runs in parallel but the history
  (staleness, order, virtual time) is a function of the seed;
* **real arrivals** (deployment, ``partition-source = "node"``): the replies in the
  order they land, the next client drawn uniformly from the idle nodes.

Every arrival fills a slot of the buffer, a failed one with nothing (counted in the
row's ``clients_failed``), so the virtual schedule holds whatever fails. Each update
goes through the pipeline of ``BaseStrategy`` (validation, the rule, the row, the
checkpoint); the row adds ``staleness_mean`` and ``staleness_max``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from logging import INFO

import numpy as np
from flwr.app import Message
from flwr.app.message_type import MessageType
from flwr.common import Code, FitIns, FitRes, log, ndarrays_to_parameters
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fl_app import keys
from fl_app.client import trained_by
from fl_app.config import ConfigError
from fl_app.grid import pull_interval
from fl_app.heterogeneity import (
    Arrival,
    AsyncScheduler,
    DeviceSpec,
    Start,
    client_seconds,
    draw_profiles,
    uniform_chooser,
)
from strategies.fedbuff import FedBuff
from strategies.metrics import count_replies, new_record, parameters_nbytes
from strategies.metrics import weighted_metrics as weighted
from strategies.sampling import PackedClient

SCHEDULE_SALT = 0xFEDB  # the next client's draw: default_rng([seed, SCHEDULE_SALT])
NODE_POLL_S = 0.5


@dataclass
class InFlight:
    """A client training now: its message and what it was sent."""

    message_id: str
    node: ClientProxy
    partition: int
    version: int
    bytes_down: int
    sent_at: float  # monotonic seconds


@dataclass
class Reply:
    """A client's report as one slot of the buffer."""

    client: ClientProxy  # PackedClient(node, partition): the pipeline's view of it
    res: FitRes | None  # None: the message failed
    error: BaseException | None
    staleness: int
    time: float  # virtual seconds (simulation) or wall seconds since the start
    bytes_down: int


def run_buffered(strategy: FedBuff, grid: Grid, run_id: int) -> None:
    """Run ``strategy`` for ``num-server-rounds`` updates over ``grid``."""
    try:
        TaskIdentity.run_id  # noqa: B018 (set by flwr-serverapp in a deployment)
    except RuntimeError:  # the identity Flower's start_grid gives the legacy loop
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = grid.run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
    BufferedLoop(strategy, grid, run_id).run()


class BufferedLoop:
    """One FedBuff run: the clients in flight, the buffer, the server's version."""

    def __init__(self, strategy: FedBuff, grid: Grid, run_id: int) -> None:
        self.strategy = strategy
        self.config = strategy.config
        self.settings = strategy.config.fedbuff
        self.grid = grid
        self.run_id = run_id
        self.version = 0
        self.sent = 0  # messages sent so far: each seeds its client's batches
        self.inflight: dict[int, InFlight] = {}  # by client index
        #: Replies pulled and not yet taken, by the id of the message they answer
        #: (None: it timed out).
        self.replies: dict[str, Message | None] = {}
        self.interval = pull_interval(grid)  # as fl_app.grid's shared poller
        self.started = time.monotonic()
        self.virtual = self.config.partition_source == "server"

    # ------------------------------------------------------------- the loop
    def run(self) -> None:
        strategy, config = self.strategy, self.config
        # The grid's nodes; the sampler waits for min-available-clients of them
        # (and, deployed, asks each node its partition).
        manager = _GridClientManager(self.grid, self.run_id)
        population = strategy.sampler.population(manager, 1)
        concurrency = self.settings.concurrency
        if concurrency > population:
            raise ConfigError(
                "fedbuff.concurrency",
                f"{concurrency} clients training at once, but only {population} "
                "clients: lower it",
            )
        if self.virtual:
            strategy.round_record.virtual_time_s = 0.0
        strategy.record_round(0, strategy.round_record, strategy.global_weights)
        events = (
            self._scheduled(population) if self.virtual else self._arrivals(population)
        )
        buffer: list[Reply] = []
        strategy.recorder.start_round(1)
        for event in events:
            if isinstance(event, Start):
                self._send(event.client)
                continue
            buffer.append(self._take(event))
            if len(buffer) < self.settings.buffer_size:
                continue
            self._update(buffer)
            buffer = []
            if (
                self.version >= config.num_server_rounds
                or strategy.stop_reason is not None
            ):
                break
        strategy.wait_for_record()

    def _scheduled(self, population: int) -> Iterator[Start | Arrival]:
        """The virtual clock's schedule (see the module docstring)."""
        config = self.config
        heterogeneity = config.heterogeneity
        spec = heterogeneity.spec()
        if not heterogeneity.enabled:  # every device alike: the medians
            spec = DeviceSpec(
                median_seconds_per_example=spec.median_seconds_per_example,
                compute_sigma=0.0,
                median_down_bps=spec.median_down_bps,
                down_sigma=0.0,
                median_up_bps=spec.median_up_bps,
                up_sigma=0.0,
            )
        devices = draw_profiles(spec, population, config.seed)
        nbytes = parameters_nbytes(ndarrays_to_parameters(self.strategy.global_weights))
        seconds = [
            client_seconds(
                devices[p],
                bytes_down=nbytes,
                bytes_up=nbytes,
                num_examples=len(trained_by(config, p, population)),
                epochs=config.local_epochs,
            )
            for p in range(population)
        ]
        scheduler = AsyncScheduler(
            num_clients=population,
            duration=lambda client, _version: seconds[client],
            concurrency=self.settings.concurrency,
            buffer_size=self.settings.buffer_size,
            seed=config.seed,
        )
        return scheduler.events(config.num_server_rounds)

    def _arrivals(self, population: int) -> Iterator[Start | Arrival]:
        """Real arrivals: each reply as it lands, a uniformly drawn idle client
        started in its place."""
        rng = np.random.default_rng([self.config.seed, SCHEDULE_SALT])
        idle = list(range(population))

        def start() -> Start:
            client = uniform_chooser(rng, idle)
            idle.remove(client)
            return Start(client=client, time=self._now(), version=self.version)

        for _ in range(self.settings.concurrency):
            yield start()
        while True:
            landed = self._wait(any_of=set(self.inflight))
            for client in sorted(landed):
                flight = self.inflight[client]
                yield Arrival(
                    client=client,
                    start_time=math.nan,
                    time=self._now(),
                    start_version=flight.version,
                    version=self.version,
                    staleness=self.version - flight.version,
                    applied=False,
                )
                idle.append(client)
                idle.sort()
                yield start()

    # ------------------------------------------------------------- one client
    def _send(self, client: int) -> None:
        """Send client ``client`` (a partition, or a node's index) the model now."""
        strategy, sampler = self.strategy, self.strategy.sampler
        self.sent += 1
        config = strategy.fit_config(self.sent)
        if self.virtual:
            partition = client
            node = self._free_node(partition)
            config[keys.PARTITION_ID] = partition
            config[keys.NUM_PARTITIONS] = sampler.num_partitions
        else:
            node = sampler.nodes[client]
            partition = sampler.partition_of(node)
        parameters = ndarrays_to_parameters(strategy.global_weights)
        content = compat.fitins_to_recorddict(FitIns(parameters, config), True)
        message = Message(  # as Flower's GridClientProxy makes it
            content=content,
            message_type=MessageType.TRAIN,
            dst_node_id=int(node.cid),
            group_id=str(self.version + 1),
            ttl=self.config.round_timeout or None,
        )
        (message_id,) = self.grid.push_messages([message])
        self.inflight[client] = InFlight(
            message_id=message_id,
            node=node,
            partition=partition,
            version=self.version,
            bytes_down=parameters_nbytes(parameters),
            sent_at=time.monotonic(),
        )

    def _free_node(self, partition: int) -> ClientProxy:
        """Node ``partition mod N``, or the next one with no message in flight
        (Flower's simulation takes one message a node at a time)."""
        nodes = self.strategy.sampler.nodes
        busy = {id(f.node) for f in self.inflight.values()}
        for step in range(len(nodes)):
            node = nodes[(partition + step) % len(nodes)]
            if id(node) not in busy:
                return node
        return nodes[partition % len(nodes)]

    def _take(self, arrival: Arrival) -> Reply:
        """The reply ``arrival`` names, waited for."""
        self._wait(any_of={arrival.client})
        flight = self.inflight.pop(arrival.client)
        message = self.replies.pop(flight.message_id)
        res: FitRes | None = None
        error: BaseException | None = None
        if message is None:
            error = TimeoutError(
                f"no reply within round-timeout from {flight.node.cid}"
            )
        elif message.has_error():
            error = RuntimeError(f"the ClientApp failed: {message.error.reason}")
        else:
            try:
                res = compat.recorddict_to_fitres(message.content, keep_input=False)
            except Exception as caught:  # a reply that is not a FitRes: a failure
                error = caught
            if res is not None and res.status.code != Code.OK:
                error = RuntimeError(f"{res.status.code.name}: {res.status.message}")
                res = None
        return Reply(
            client=PackedClient(flight.node, flight.partition),
            res=res,
            error=error,
            staleness=self.version - flight.version,
            time=arrival.time,
            bytes_down=flight.bytes_down,
        )

    def _wait(self, any_of: set[int]) -> set[int]:
        """Pull replies until one of the clients ``any_of`` has its reply (or has
        timed out: ``round-timeout``); the clients of ``any_of`` that have."""
        timeout = self.config.round_timeout
        while True:
            landed = {k for k in any_of if self.inflight[k].message_id in self.replies}
            if landed:
                return landed
            awaited = [
                f.message_id
                for f in self.inflight.values()
                if f.message_id not in self.replies
            ]
            for reply in self.grid.pull_messages(awaited):
                self.replies[reply.metadata.reply_to_message_id] = reply
            now = time.monotonic()
            for k in any_of:
                flight = self.inflight[k]
                late = timeout and now - flight.sent_at > timeout
                if late and flight.message_id not in self.replies:
                    self.replies[flight.message_id] = None
            if not any(self.inflight[k].message_id in self.replies for k in any_of):
                time.sleep(self.interval)

    # ------------------------------------------------------------- one update
    def _update(self, buffer: list[Reply]) -> None:
        """Aggregate a full buffer into the next version, and record it."""
        strategy = self.strategy
        self.version += 1
        version = self.version
        record = strategy.round_record = new_record(version)
        record.clients_sampled = len(buffer)
        record.bytes_sent = sum(reply.bytes_down for reply in buffer)
        for reply in buffer:
            if reply.error is not None:
                log(INFO, "update %s: a client failed: %s", version, reply.error)
        # In partition order, so the float sums do not depend on arrival order.
        ok = sorted(
            (r for r in buffer if r.res is not None),
            key=lambda r: r.client.partition,  # type: ignore[attr-defined]
        )
        results = [(r.client, r.res) for r in ok]
        strategy.staleness = {id(r.client): r.staleness for r in ok}
        updates = strategy.validate(version, results)  # type: ignore[arg-type]
        metrics = weighted([(u.num_examples, u.metrics) for u in updates])
        new_weights = strategy._new_weights(version, updates)
        failures: list[BaseException] = [r.error for r in buffer if r.error]
        count_replies(record, results, failures, len(updates))  # type: ignore[arg-type]
        record.train_loss = float(metrics.get(keys.TRAIN_LOSS, math.nan))
        record.model_updated = new_weights is not None
        if self.virtual:
            record.virtual_time_s = buffer[-1].time
        staleness = [r.staleness for r in buffer]
        record.extra = {
            "staleness_mean": float(np.mean(staleness)),
            "staleness_max": int(max(staleness)),
        }
        if new_weights is not None:
            strategy.global_weights = new_weights
        strategy.record_round(version, record, strategy.global_weights)
        strategy.recorder.start_round(version + 1)

    # ------------------------------------------------------------- set-up
    def _now(self) -> float:
        return time.monotonic() - self.started


class _GridClientManager(SimpleClientManager):
    """Flower's client manager over the grid's nodes, refreshed when asked (as
    ``start_grid``'s background thread does for the synchronous loop)."""

    def __init__(self, grid: Grid, run_id: int) -> None:
        super().__init__()
        self.grid = grid
        self.run_id = run_id

    def _refresh(self) -> None:
        known = set(self.clients)
        for node_id in self.grid.get_node_ids():
            if str(node_id) not in known:
                self.register(GridClientProxy(node_id, self.grid, self.run_id))

    def num_available(self) -> int:
        self._refresh()
        return super().num_available()

    def all(self) -> dict[str, ClientProxy]:
        self._refresh()
        return super().all()

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._refresh()
            if len(self.clients) >= num_clients:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(NODE_POLL_S)

"""Seeded client sampling: which clients a round trains, reproducibly for a seed.

Flower samples with the unseeded ``random`` module, and node ids are random in every
run; here a round's clients are a draw over partitions from ``(seed, round)``, so the
same seed trains the same clients whatever the node ids. Two ways to know which
node serves which partition (``partition-source``):

* ``server`` (simulation): the server deals partition p to node ``p mod N`` (by node
  id, or the next one free) and names it in the message; no node is asked anything,
  so a round's messages are the clients sampled, and K virtual clients
  (``num-partitions``) can run on fewer SuperNodes;
* ``node`` (deployment): each node holds its own partition (``--node-config``) and
  is asked once which.

When the server deals, a round's clients may also be *packed*: several partitions
dealt to one node in one message (``fl_app.packing``), since in simulation a message
costs as much as a small client's training. ``clients-per-message`` says how many;
0 (the default) spreads a round over as many messages as there are CPUs to run
them (Ray's, in the simulation), one per actor, each paying Flower's and Ray's cost
once, with at most ``MAX_AUTO_PACKED`` clients a message; never where SecAgg+ needs
one message per client. ``unpacked`` splits the replies back into one per client (a
``PackedClient`` each) before the strategy's pipeline sees them.

``BaseStrategy`` holds a ``ClientSampler`` (``strategy.sampler``) and hands Flower's
``configure_fit`` its ``draw``, a ``SeededDraw``: the real client manager, except
that ``sample`` is this draw.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cached_property
from logging import WARNING
from typing import Any, TypeVar

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Parameters,
    ReconnectIns,
    Scalar,
    log,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.criterion import Criterion

from fl_app import keys
from fl_app.config import RunConfig
from fl_app.packing import PackingError, format_partitions, packed_entries
from strategies.selection import Selection, uniform_draw

_Ins = TypeVar("_Ins", FitIns, EvaluateIns)

#: Clients a message carries at most when the server chooses (clients-per-message
#: = 0): a reply of 25 updates of the 2NN is 20 MB, and smaller replies stream back
#: while the next message trains (measured: 100 a round in 4 messages, not 2).
MAX_AUTO_PACKED = 25

# Salts that keep the seeded draws of one round independent.
FIT_DRAW, EVALUATE_DRAW = 0, 1


class NotEnoughClientsError(RuntimeError):
    """Fewer clients connected than the run needs, within the configured wait."""


class ClientSampler:
    """Who a round's clients are: the population, the seeded draw over it, and which
    node serves which partition (``partition_of``)."""

    def __init__(self, config: RunConfig, *, can_pack: bool = False) -> None:
        """``can_pack``: the strategy allows packed messages (its clients keep state
        by partition, in the node store, and it needs no message per client)."""
        self.config = config
        self.can_pack = can_pack and config.partition_source == "server"
        self._partition_of: dict[str, int] = {}  # node -> partition it serves
        self._packed: dict[str, tuple[int, ...]] = {}  # node -> partitions, if packed
        self._nodes: list[ClientProxy] = []  # who can be sampled, in partition order
        self._num_partitions = 0
        self._drawn_from = 0  # clients the current round was drawn from
        self.keep = 0  # K, the clients the current round needs (before over-commit)
        #: The fit draw's policy (selection.policy) and what it has observed.
        self.selection = Selection(config)
        #: The partitions online now, when devices have online windows; None: all.
        self.online: Callable[[], Sequence[int]] | None = None
        self._resumed_partitions = 0  # K of the run this one resumes; 0: a new run

    @property
    def num_partitions(self) -> int:
        """K as the clients are told it: ``num-partitions`` (or one per node) when
        the server deals, else the largest the nodes reported."""
        return self._num_partitions

    @property
    def nodes(self) -> list[ClientProxy]:
        """The nodes that can be sampled, in partition order (after ``population``)."""
        return self._nodes

    @property
    def drawn_from(self) -> int:
        """K of the last fit draw: the DP accountant's population for ``m`` of K."""
        return self._drawn_from

    @property
    def total_clients(self) -> int:
        """N, every client that may take part: the partitions, or the nodes that
        reported theirs if more (SCAFFOLD averages its control variate over N)."""
        return max(self._num_partitions, len(self._partition_of))

    def resume(self, num_partitions: int) -> None:
        """This run continues one that had ``num_partitions`` partitions: each
        client's data depends on K, so a round over another K is refused."""
        self._resumed_partitions = num_partitions

    def _check_resumed(self, server_round: int) -> None:
        expected, found = self._resumed_partitions, self._num_partitions
        if expected and found and found != expected:
            raise NotEnoughClientsError(
                f"round {server_round}: the run being resumed had {expected} "
                f"partitions, this one has {found} (one per node with "
                "num-partitions = 0): start it with as many clients as before "
                f"(scripts/simulate.py --resume finds {expected} itself)"
            )

    def draw(self, manager: ClientManager, server_round: int, salt: int) -> SeededDraw:
        """The client manager Flower's ``configure_fit``/``configure_evaluate`` is
        handed for this round: ``manager`` with this sampler's draw."""
        return SeededDraw(self, manager, server_round, salt)

    def population(self, client_manager: ClientManager, server_round: int) -> int:
        """K, the clients a round is drawn from: ``num-partitions`` (or one per
        connected node) when the server deals partitions, else the connected nodes
        that told us their partition."""
        needed = self.config.min_available_clients
        timeout = self.config.min_available_timeout
        # Flower's start_grid refreshes the node list inside num_available/all/
        # sample, and otherwise only every 5 s: asking first spares round 1 that
        # wait when the nodes are already there.
        if client_manager.num_available() < needed and not client_manager.wait_for(
            needed, timeout=math.ceil(timeout)
        ):
            raise NotEnoughClientsError(
                f"round {server_round}: only {client_manager.num_available()} of the "
                f"{needed} clients required by 'min-available-clients' connected "
                f"within 'min-available-timeout' = {timeout:g}s; start more SuperNodes "
                "or lower 'min-available-clients'"
            )
        available = client_manager.all()
        if self.config.partition_source == "server":
            self._nodes = sorted(available.values(), key=lambda c: _node_order(c.cid))
            self._num_partitions = self.config.num_partitions or len(self._nodes)
            self._check_resumed(server_round)
            return self._num_partitions
        self._learn_partitions(available, server_round)
        self._check_resumed(server_round)
        known = [c for cid, c in available.items() if cid in self._partition_of]
        self._nodes = sorted(known, key=lambda client: self._partition_of[client.cid])
        return len(self._nodes)

    def sample(
        self, population: int, server_round: int, num_clients: int, salt: int
    ) -> list[ClientProxy]:
        """Choose clients reproducibly: a draw from ``(seed, round)`` over the
        population (the fit draw by ``selection.policy``, among the clients online),
        in partition order, then the nodes that will serve them."""
        if salt == FIT_DRAW:
            self._drawn_from = population
        rng = np.random.default_rng([self.config.seed, server_round, salt])
        size = min(num_clients, population)
        if salt == FIT_DRAW:
            # Only clients online now (heterogeneity.online-fraction) can be asked.
            candidates = range(population) if self.online is None else self.online()
            size = self.keep = min(size, len(candidates))
            # Over-commitment: ceil(f·K) trained, the first K kept (strategies.clock).
            over = self.config.heterogeneity.over_commit
            size = min(math.ceil(over * size), len(candidates)) if over > 1 else size
            chosen = self.selection.choose(rng, candidates, size)
        else:
            chosen = uniform_draw(rng, range(population), size)
        if self.config.partition_source == "server":
            partitions = chosen
            if salt == FIT_DRAW:
                return self._deal(self._messages(partitions), server_round)
            return self._deal([[p] for p in partitions], server_round)
        return [self._nodes[i] for i in chosen]

    def _messages(self, partitions: list[int]) -> list[list[int]]:
        """The round's partitions as messages: consecutive runs of them, as many
        messages as ``clients-per-message`` asks for (see the module docstring)."""
        per_message = self.config.clients_per_message
        if not self.can_pack or per_message == 1 or len(partitions) < 2:
            return [[p] for p in partitions]
        if per_message == 0:
            count = max(
                parallel_workers(), math.ceil(len(partitions) / MAX_AUTO_PACKED)
            )
            count = min(count, len(self._nodes))
        else:
            count = math.ceil(len(partitions) / per_message)
        count = max(1, min(count, len(partitions)))
        return [list(map(int, run)) for run in np.array_split(partitions, count)]

    def partition_of(self, client: ClientProxy) -> int:
        """The partition ``client`` serves this round; -1 if none."""
        if isinstance(client, PackedClient):
            return client.partition
        return self._partition_of.get(client.cid, -1)

    def partitions_of(self, client: ClientProxy) -> tuple[int, ...]:
        """The partitions a message to ``client`` trains: several if packed."""
        packed = self._packed.get(client.cid)
        return packed if packed is not None else (self.partition_of(client),)

    def unpacked(
        self, results: list[tuple[ClientProxy, FitRes]]
    ) -> list[tuple[ClientProxy, FitRes]]:
        """One reply per client: each packed reply split into its clients' replies
        (a ``PackedClient`` each), their arrays still serialized. A packed reply
        that does not describe what was dealt is dropped, with a warning: its
        clients count as failed."""
        replies: list[tuple[ClientProxy, FitRes]] = []
        for client, res in results:
            dealt = self._packed.get(client.cid)
            if dealt is None:
                replies.append((client, res))
                continue
            tensors = res.parameters.tensors
            try:
                entries = packed_entries(res.metrics, len(tensors), dealt)
            except PackingError as error:
                log(WARNING, "node %s: dropped its packed reply: %s", client.cid, error)
                continue
            for entry in entries:
                arrays = Parameters(
                    tensors=tensors[entry.start : entry.stop],
                    tensor_type=res.parameters.tensor_type,
                )
                replies.append(
                    (
                        PackedClient(client, entry.partition),
                        FitRes(res.status, arrays, entry.num_examples, entry.metrics),
                    )
                )
        return replies

    def assign(self, cid: str, partition: int) -> None:
        """Node ``cid`` serves ``partition`` (dealt, or as the node reported)."""
        self._partition_of[cid] = partition

    def addressed(
        self, instructions: list[tuple[ClientProxy, _Ins]]
    ) -> list[tuple[ClientProxy, _Ins]]:
        """The instructions, each naming its client's partition when the server
        deals them (Flower shares one ``FitIns`` between all clients)."""
        if self.config.partition_source != "server":
            return instructions
        return [
            (client, replace(ins, config={**ins.config, **self._address(client)}))
            for client, ins in instructions
        ]

    def _address(self, client: ClientProxy) -> dict[str, Scalar]:
        """What names a client's partition(s) in its instructions."""
        packed = self._packed.get(client.cid)
        if packed is not None:
            return {
                keys.PARTITION_IDS: format_partitions(packed),
                keys.NUM_PARTITIONS: self._num_partitions,
            }
        return {
            keys.PARTITION_ID: self.partition_of(client),
            keys.NUM_PARTITIONS: self._num_partitions,
        }

    def _deal(
        self, messages: Sequence[Sequence[int]], server_round: int
    ) -> list[ClientProxy]:
        """Message m (partitions p, ...) to node ``p mod N`` (by node id), or the
        next one free.

        No message is needed: node ids are random, but the draw is over partitions,
        so the same seed gives the same history. With one partition per node
        (``num-partitions = 0``) a node serves the same partition all run; with
        more, a node serves whichever partition it is dealt (client state is kept
        by partition, in ``fl_app.client_state``, not by node).
        """
        nodes = self._nodes
        if len(messages) > len(nodes):
            raise NotEnoughClientsError(
                f"round {server_round}: {len(messages)} messages for the clients "
                f"sampled of num-partitions = {self._num_partitions}, but only "
                f"{len(nodes)} SuperNodes serve them; start at least as many "
                "SuperNodes (num-supernodes) as messages a round, or let several "
                "clients share a message (clients-per-message = 0)"
            )
        taken: set[int] = set()
        self._partition_of = {}
        self._packed = {}
        dealt = []
        for partitions in messages:
            index = partitions[0] % len(nodes)
            while index in taken:
                index = (index + 1) % len(nodes)
            taken.add(index)
            self.assign(nodes[index].cid, partitions[0])
            if len(partitions) > 1:
                self._packed[nodes[index].cid] = tuple(partitions)
            dealt.append(nodes[index])
        return dealt

    def _learn_partitions(
        self, available: dict[str, ClientProxy], server_round: int
    ) -> None:
        """Ask each node not met yet which partition it holds (once per node)."""
        new = [c for cid, c in available.items() if cid not in self._partition_of]
        if not new:
            return
        timeout = self.config.round_timeout or None

        def ask(client: ClientProxy) -> tuple[str, int | None, int]:
            try:
                res = client.get_properties(
                    GetPropertiesIns({}), timeout=timeout, group_id=server_round
                )
                properties = res.properties
                return (
                    client.cid,
                    int(properties[keys.PARTITION_ID]),
                    int(properties.get(keys.NUM_PARTITIONS, 0)),
                )
            except Exception as error:
                log(
                    WARNING,
                    "node %s did not report its partition: %s",
                    client.cid,
                    error,
                )
                return client.cid, None, 0

        with ThreadPoolExecutor(max_workers=min(32, len(new))) as pool:
            for cid, partition, num_partitions in pool.map(ask, new):
                if partition is not None:
                    self.assign(cid, partition)
                    self._num_partitions = max(self._num_partitions, num_partitions)


def parallel_workers() -> int:
    """How many clients can train at once: the CPUs of the Ray cluster this process
    drives (the simulation's ServerApp runs in Ray's driver), else of this host."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus > 0:
            return cpus
    return os.cpu_count() or 1


class PackedClient(ClientProxy):
    """One client of a packed message, as the pipeline sees its reply: the node
    that carried it, and the partition it trained. It sends nothing itself."""

    def __init__(self, node: ClientProxy, partition: int) -> None:
        super().__init__(f"{node.cid}/{partition}")
        self.node = node
        self.partition = partition

    def _not_a_node(self) -> NotImplementedError:
        return NotImplementedError(
            f"{self.cid} is one client of a packed message, not a node"
        )

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        raise self._not_a_node()

    def get_parameters(
        self, ins: GetParametersIns, timeout: float | None, group_id: int | None
    ) -> GetParametersRes:
        raise self._not_a_node()

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        raise self._not_a_node()

    def evaluate(
        self, ins: EvaluateIns, timeout: float | None, group_id: int | None
    ) -> EvaluateRes:
        raise self._not_a_node()

    def reconnect(
        self, ins: ReconnectIns, timeout: float | None, group_id: int | None
    ) -> Any:
        raise self._not_a_node()


class SeededDraw(ClientManager):
    """The client manager as Flower's ``configure_fit`` sees it: the real one, except
    that ``sample`` is the sampler's seeded draw for this round."""

    def __init__(
        self,
        sampler: ClientSampler,
        manager: ClientManager,
        server_round: int,
        salt: int,
    ) -> None:
        self.sampler = sampler
        self.manager = manager
        self.server_round = server_round
        self.salt = salt

    @cached_property
    def population(self) -> int:
        """Looked up once: Flower asks ``num_available`` and then ``sample``."""
        return self.sampler.population(self.manager, self.server_round)

    def num_available(self) -> int:
        return self.population

    def sample(
        self,
        num_clients: int,
        min_num_clients: int | None = None,
        criterion: Criterion | None = None,
    ) -> list[ClientProxy]:
        return self.sampler.sample(
            self.population, self.server_round, num_clients, self.salt
        )

    def register(self, client: ClientProxy) -> bool:
        return self.manager.register(client)

    def unregister(self, client: ClientProxy) -> None:
        self.manager.unregister(client)

    def all(self) -> dict[str, ClientProxy]:
        return self.manager.all()

    def wait_for(self, num_clients: int, timeout: int) -> bool:
        return self.manager.wait_for(num_clients, timeout)


def _node_order(cid: str) -> tuple[int, int, str]:
    """Node ids are integers (as strings); order them numerically."""
    return (0, int(cid), "") if cid.isdigit() else (1, 0, cid)

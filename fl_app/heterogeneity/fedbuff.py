"""Buffered asynchronous aggregation (FedBuff, Nguyen et al., "Federated Learning with
Buffered Asynchronous Aggregation", AISTATS 2022), as pure functions and a virtual-
time event simulation.

A synchronous server waits for its slowest kept client every round. FedBuff's
server instead keeps a fixed number of clients training at all times and applies
an update as soon as K of them have reported, down-weighting updates computed from
an old model. ``AsyncScheduler`` says who reports when and how stale, from
per-client durations alone, so a study can run the asynchronous protocol on a
virtual clock; ``buffered_update`` is the server's aggregation of one buffer.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """(1 + staleness) ** -exponent: FedBuff's polynomial staleness scaling.

    An update computed from a model ``staleness`` server versions old counts less;
    exponent 0.5 is the paper's choice, 0 turns the scaling off.
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if not exponent >= 0:
        raise ValueError(f"exponent must be >= 0, got {exponent!r}")
    return float((1 + staleness) ** -exponent)


def buffered_update(
    deltas: Sequence[Sequence[np.ndarray]],
    staleness: Sequence[int],
    num_examples: Sequence[int] | None,
    *,
    exponent: float = 0.5,
) -> list[np.ndarray]:
    """The server's step from a full buffer of K client updates:

        (1/K) * sum_i w_i * delta_i,   w_i = staleness_weight(staleness_i)

    as in FedBuff, which averages uniformly; the caller applies its server learning
    rate (x <- x + eta_g * result). With ``num_examples``, w_i is also multiplied by
    n_i / mean(n): FedAvg's example weighting, normalized to mean 1 so that the
    step's scale is that of the unweighted rule. Summed in float64, returned in
    each tensor's dtype.
    """
    k = len(deltas)
    if k == 0:
        raise ValueError("deltas must hold at least one update")
    if len(staleness) != k:
        raise ValueError(f"staleness has {len(staleness)} entries for {k} deltas")
    weights = np.array([staleness_weight(s, exponent) for s in staleness])
    if num_examples is not None:
        n = np.asarray(num_examples, dtype=np.float64)
        if n.shape != (k,):
            raise ValueError(f"num_examples has {n.size} entries for {k} deltas")
        if np.any(~(n >= 0)) or not n.sum() > 0:
            raise ValueError("num_examples must be >= 0 with a positive sum")
        weights = weights * n / n.mean()
    layout = [(t.shape, t.dtype) for t in deltas[0]]
    for i, delta in enumerate(deltas):
        if [(t.shape, t.dtype) for t in delta] != layout:
            raise ValueError(f"deltas[{i}] does not match the shapes of deltas[0]")
    out = []
    for j, (shape, dtype) in enumerate(layout):
        total = np.zeros(shape, dtype=np.float64)
        for weight, delta in zip(weights, deltas, strict=True):
            total += weight * np.asarray(delta[j], dtype=np.float64)
        out.append((total / k).astype(dtype))
    return out


@dataclass(frozen=True)
class Arrival:
    """One client's update reaching the asynchronous server.

    ``version`` is the server's model version when it arrives, ``start_version``
    the one the client trained from; ``staleness`` = version - start_version.
    ``applied``: this arrival filled the buffer, so the server applied the buffer
    and its version is ``version + 1`` from then on.
    """

    client: int
    start_time: float
    time: float
    start_version: int
    version: int
    staleness: int
    applied: bool


@dataclass(frozen=True)
class Start:
    """The server sends ``client`` the model of ``version`` at ``time``."""

    client: int
    time: float
    version: int


Chooser = Callable[[np.random.Generator, Sequence[int]], int]


def uniform_chooser(rng: np.random.Generator, idle: Sequence[int]) -> int:
    """Any idle client, uniformly (FedBuff samples the next client at random)."""
    return idle[int(rng.integers(len(idle)))]


@dataclass(frozen=True)
class AsyncScheduler:
    """FedBuff's server on a virtual clock, as a sequence of arrivals.

    At time 0 the server starts ``concurrency`` clients on version 0; whenever one
    reports it starts another, so ``concurrency`` train at all times. Every
    ``buffer_size`` (K) arrivals it applies the buffer and its version goes up by
    one; a client started afterwards trains from the new version. The next client
    is ``chooser(rng, idle)``: ``idle`` the clients not training, in id order (the
    one that just reported included), ``rng`` = default_rng([seed, 0xFEDB]).
    ``duration(client, version)`` is how long that client takes from that version,
    from download to upload (e.g. ``clock.client_seconds``), finite and > 0.

    Arrivals come in time order, ties by client id (positive durations make that
    a total order: whoever arrives at t was already training before t); the same
    arguments give the same arrivals.
    """

    num_clients: int
    duration: Callable[[int, int], float]
    concurrency: int
    buffer_size: int
    seed: int
    chooser: Chooser = uniform_chooser

    def run(self, until_updates: int) -> list[Arrival]:
        """The arrivals up to and including the one that makes the server apply its
        ``until_updates``-th update. Starts afresh on every call, so ``run(a)`` is a
        prefix of ``run(b)`` for a <= b."""
        return [e for e in self.events(until_updates) if isinstance(e, Arrival)]

    def events(self, until_updates: int) -> Iterator[Start | Arrival]:
        """``run``'s arrivals with, before them, each client's ``Start``, in the
        order the server meets them: the first ``concurrency`` starts, then after
        each arrival (and the update it may complete) the start that replaces it.
        A server that dispatches at each ``Start`` and waits for the reply at its
        ``Arrival`` runs this schedule with real training."""
        if not 1 <= self.concurrency <= self.num_clients:
            raise ValueError(
                f"concurrency must be in [1, num_clients={self.num_clients}], "
                f"got {self.concurrency}"
            )
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if until_updates < 0:
            raise ValueError(f"until_updates must be >= 0, got {until_updates}")
        rng = np.random.default_rng([self.seed, 0xFEDB])
        idle = list(range(self.num_clients))
        # (finish time, client, start time, start version): ties pop by client id
        training: list[tuple[float, int, float, int]] = []

        def start(now: float, version: int) -> Start:
            client = self.chooser(rng, tuple(idle))
            if client not in idle:
                raise ValueError(f"chooser returned {client!r}, not an idle client")
            seconds = self.duration(client, version)
            if not 0 < seconds < math.inf:
                raise ValueError(
                    f"duration({client}, {version}) must be finite and > 0, "
                    f"got {seconds!r}"
                )
            idle.remove(client)
            heapq.heappush(training, (now + seconds, client, now, version))
            return Start(client=client, time=now, version=version)

        for _ in range(self.concurrency):
            yield start(0.0, 0)
        version, buffered = 0, 0
        while version < until_updates:
            time, client, started, start_version = heapq.heappop(training)
            buffered += 1
            applied = buffered == self.buffer_size
            yield Arrival(
                client=client,
                start_time=started,
                time=time,
                start_version=start_version,
                version=version,
                staleness=version - start_version,
                applied=applied,
            )
            if applied:
                version, buffered = version + 1, 0
            bisect.insort(idle, client)
            if version < until_updates:
                yield start(time, version)

"""A ServerApp grid that collects every reply with one poller, soon after it lands.

Flower's legacy server loop waits for each sampled client in its own thread, and each
thread's ``send_and_receive`` pulls its one reply on a fixed clock: every 3 s in a
deployment (``HttpGrid``), so a round lasts up to 3 s longer than its slowest client,
and every 0.1 s in the simulation (``InMemoryGrid``), 1,000 pulls a second when 100
clients wait. ``SharedPollerGrid`` keeps Flower's grid for everything else and answers
``send_and_receive`` from one poller thread that asks, in a single
``pull_messages``, for every reply still awaited: every 5 ms in the simulation
(an in-process lookup) and every 0.2 s in a deployment (one request to the
SuperLink), whatever the number of clients.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.superlink.grid import InMemoryGrid

IN_MEMORY_INTERVAL_S = 0.005
DEPLOYED_INTERVAL_S = 0.2


def with_shared_poller(grid: Grid) -> Grid:
    """``grid`` with replies collected by one shared poller."""
    if isinstance(grid, SharedPollerGrid):
        return grid
    return SharedPollerGrid(grid, pull_interval(grid))


def pull_interval(grid: Grid) -> float:
    """How often to ask ``grid`` for replies: the ``pull_interval_s`` it states, if
    any (a grid within this process); 5 ms for Flower's simulation grid (an
    in-process lookup); else 0.2 s (each pull a request to the SuperLink)."""
    inner = getattr(grid, "inner", grid)  # under the shared poller
    stated = getattr(inner, "pull_interval_s", None)
    if stated is not None:
        return float(stated)
    return (
        IN_MEMORY_INTERVAL_S if isinstance(inner, InMemoryGrid) else DEPLOYED_INTERVAL_S
    )


class SharedPollerGrid(Grid):
    """Flower's grid whose ``send_and_receive`` shares one poller; the rest is
    delegated. Safe to call from many threads at once, as the legacy loop does."""

    def __init__(self, grid: Grid, interval: float = DEPLOYED_INTERVAL_S) -> None:
        self.inner = grid
        self.interval = interval
        self._changed = threading.Condition()
        self._awaited: set[str] = set()  # message ids whose senders still wait
        self._arrived: dict[str, Message] = {}  # their replies, until collected
        self._polling = False
        self._failed: Exception | None = None  # the poller's last pull raised this

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(
            content, message_type, dst_node_id, group_id, ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's contract: push, then wait until every reply is in or ``timeout``
        seconds have passed (None: no limit); return the replies that came."""
        ids = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            self._awaited |= ids
            if not self._polling and ids:
                self._polling, self._failed = True, None
                poller = threading.Thread(target=self._poll, daemon=True)
                poller.start()
            try:
                while not ids <= self._arrived.keys():
                    if self._failed is not None and not self._polling:
                        raise self._failed
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._changed.wait(left)
            finally:
                self._awaited -= ids
                replies = [self._arrived.pop(i) for i in ids if i in self._arrived]
        return replies

    def _poll(self) -> None:
        """Every ``interval``, pull all the awaited replies at once, while any are."""
        while True:
            time.sleep(self.interval)
            with self._changed:
                wanted = self._awaited - self._arrived.keys()
                if not self._awaited:
                    self._polling = False
                    return
            try:
                replies = list(self.inner.pull_messages(wanted)) if wanted else []
            except Exception as error:  # each waiter raises it, as Flower's pull would
                with self._changed:
                    self._failed, self._polling = error, False
                    self._changed.notify_all()
                return
            with self._changed:
                for reply in replies:
                    key = reply.metadata.reply_to_message_id
                    if key in self._awaited:
                        self._arrived[key] = reply
                self._changed.notify_all()

    def __getattr__(self, name: str) -> Any:
        """What Flower's concrete grid adds beyond ``Grid`` (``close``, ...)."""
        return getattr(self.inner, name)

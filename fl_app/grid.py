"""A ServerApp grid that collects replies as they arrive, not every 3 s.

Flower 1.42's ``HttpGrid`` (the deployed ServerApp's link to the SuperLink) waits a
fixed 3 s between pulls of replies, so a deployed round lasts up to 3 s longer than
its slowest client. ``PromptGrid`` keeps Flower's grid for everything and only
re-implements ``send_and_receive`` on its public ``push_messages`` and
``pull_messages``: it pulls after 0.05 s, then at intervals growing by half up to
0.5 s. The legacy server loop waits for each client in its own thread, so the growth
keeps a round of many clients from flooding the SuperLink (100 waiting clients: at
most 200 pulls a second). The in-memory grid of the simulation already pulls every
0.1 s and is used as it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.superlink.grid import InMemoryGrid

FIRST_PULL_S = 0.05
MAX_INTERVAL_S = 0.5
GROWTH = 1.5


def prompt(grid: Grid) -> Grid:
    """``grid``, pulling replies promptly (the simulation's grid already does)."""
    return grid if isinstance(grid, InMemoryGrid | PromptGrid) else PromptGrid(grid)


class PromptGrid(Grid):
    """Flower's grid with a prompter ``send_and_receive``; all else is delegated."""

    def __init__(self, grid: Grid) -> None:
        self.inner = grid

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
        """Flower's contract: push, then pull until every reply is in or
        ``timeout`` seconds have passed (None: no limit); return the replies."""
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        interval = FIRST_PULL_S
        while waiting:
            if deadline is not None and time.monotonic() >= deadline:
                break
            pause = interval
            if deadline is not None:
                pause = min(pause, max(deadline - time.monotonic(), 0.0))
            time.sleep(pause)
            interval = min(interval * GROWTH, MAX_INTERVAL_S)
            arrived = list(self.pull_messages(waiting))
            replies += arrived
            waiting -= {m.metadata.reply_to_message_id for m in arrived}
        return replies

    def __getattr__(self, name: str) -> Any:
        """What Flower's concrete grid adds beyond ``Grid`` (``close``, ...)."""
        return getattr(self.inner, name)

"""PromptGrid: Flower's send_and_receive contract (push, pull until every reply is in
or the timeout passes) with replies collected within a fraction of a second, not
after Flower's fixed 3 s; everything else reaches the wrapped grid."""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.superlink.grid import InMemoryGrid

from fl_app.grid import MAX_INTERVAL_S, PromptGrid, prompt


class FakeGrid:
    """Replies to message ``i`` become available ``delays[i]`` s after the push."""

    def __init__(self, delays: dict[str, float]) -> None:
        self.delays = delays
        self.pushed_at = 0.0
        self.pulls: list[set[str]] = []
        self.closed = False

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        self.pushed_at = time.monotonic()
        return [m.id for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        ids = set(message_ids)
        self.pulls.append(ids)
        now = time.monotonic() - self.pushed_at
        ready = [i for i in sorted(ids) if self.delays[i] <= now]
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in ready
        ]

    def get_node_ids(self) -> list[int]:
        return [7, 8]

    def create_message(self, *args: Any) -> tuple[Any, ...]:
        return ("message", *args)

    def close(self) -> None:
        self.closed = True


def _messages(*ids: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=i) for i in ids]


def _replied(replies: Iterable[Any]) -> list[str]:
    return sorted(r.metadata.reply_to_message_id for r in replies)


def test_every_reply_is_returned_soon_after_it_arrives() -> None:
    fake = FakeGrid({"a": 0.0, "b": 0.3, "c": 0.8})
    started = time.monotonic()
    replies = PromptGrid(fake).send_and_receive(_messages("a", "b", "c"))
    took = time.monotonic() - started
    assert _replied(replies) == ["a", "b", "c"]
    assert 0.8 <= took <= 0.8 + MAX_INTERVAL_S + 0.3  # Flower's grid: 3 s
    # Only what is still missing is asked for again.
    assert fake.pulls[0] == {"a", "b", "c"}
    assert fake.pulls[-1] == {"c"}


def test_pulls_slow_down_to_at_most_two_a_second() -> None:
    fake = FakeGrid({"a": 3.0})
    PromptGrid(fake).send_and_receive(_messages("a"))
    assert len(fake.pulls) <= 3.0 / MAX_INTERVAL_S + 6


def test_timeout_returns_what_arrived() -> None:
    fake = FakeGrid({"a": 0.0, "b": 60.0})
    started = time.monotonic()
    replies = PromptGrid(fake).send_and_receive(_messages("a", "b"), timeout=0.7)
    took = time.monotonic() - started
    assert _replied(replies) == ["a"]
    assert 0.7 <= took < 1.2


def test_zero_timeout_pulls_nothing() -> None:
    fake = FakeGrid({"a": 0.0})
    assert list(PromptGrid(fake).send_and_receive(_messages("a"), timeout=0)) == []
    assert fake.pulls == []


def test_everything_else_goes_to_the_wrapped_grid() -> None:
    fake = FakeGrid({})
    grid = PromptGrid(fake)
    assert list(grid.get_node_ids()) == [7, 8]
    assert grid.create_message("content", "train", 7, "1") == (
        "message",
        "content",
        "train",
        7,
        "1",
        None,
    )
    grid.close()  # not part of Flower's Grid: reached through __getattr__
    assert fake.closed


def test_only_the_deployed_grid_is_wrapped() -> None:
    in_memory = InMemoryGrid.__new__(InMemoryGrid)
    assert prompt(in_memory) is in_memory
    wrapped = prompt(FakeGrid({}))  # type: ignore[arg-type]
    assert isinstance(wrapped, PromptGrid)
    assert prompt(wrapped) is wrapped


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_nothing_to_wait_for_returns_at_once(timeout: float | None) -> None:
    fake = FakeGrid({})
    started = time.monotonic()
    assert list(PromptGrid(fake).send_and_receive([], timeout=timeout)) == []
    assert time.monotonic() - started < 0.05

"""SharedPollerGrid: Flower's send_and_receive contract (push, wait until every reply is
in or the timeout passes, return what came) served by one poller that asks for every
awaited reply in a single pull: replies are collected within one interval of their
arrival (not Flower's fixed 3 s), and the pulls do not multiply with the number of
waiting clients. Everything else reaches the wrapped grid."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.superlink.grid import InMemoryGrid

from fl_app.grid import (
    DEPLOYED_INTERVAL_S,
    IN_MEMORY_INTERVAL_S,
    SharedPollerGrid,
    with_shared_poller,
)

INTERVAL = 0.05


class FakeGrid:
    """The reply to message ``i`` can be pulled ``delays[i]`` s after its push."""

    def __init__(self, delays: dict[str, float], fail_after: int | None = None) -> None:
        self.delays = delays
        self.pushed_at: dict[str, float] = {}
        self.pulls: list[set[str]] = []
        self.fail_after = fail_after
        self.closed = False
        self.lock = threading.Lock()

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        ids = [m.id for m in messages]
        with self.lock:
            self.pushed_at.update(dict.fromkeys(ids, time.monotonic()))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        ids = set(message_ids)
        with self.lock:
            self.pulls.append(ids)
            if self.fail_after is not None and len(self.pulls) > self.fail_after:
                raise ConnectionError("SuperLink unreachable")
            now = time.monotonic()
            ready = [i for i in ids if now - self.pushed_at[i] >= self.delays[i]]
        return [_reply(i) for i in ready]

    def get_node_ids(self) -> list[int]:
        return [7, 8]

    def create_message(self, *args: Any) -> tuple[Any, ...]:
        return ("message", *args)

    def close(self) -> None:
        self.closed = True


def _reply(message_id: str) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=message_id))


def _messages(*ids: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=i) for i in ids]


def _replied(replies: Iterable[Any]) -> list[str]:
    return sorted(r.metadata.reply_to_message_id for r in replies)


def test_every_reply_is_returned_within_an_interval_of_its_arrival() -> None:
    fake = FakeGrid({"a": 0.0, "b": 0.3, "c": 0.8})
    started = time.monotonic()
    replies = SharedPollerGrid(fake, INTERVAL).send_and_receive(
        _messages("a", "b", "c")
    )
    took = time.monotonic() - started
    assert _replied(replies) == ["a", "b", "c"]
    assert 0.8 <= took <= 0.8 + INTERVAL + 0.25  # Flower's deployed grid: up to 3.8 s
    # Only what is still missing is asked for again.
    assert fake.pulls[0] == {"a", "b", "c"}
    assert fake.pulls[-1] == {"c"}


def test_many_waiting_clients_share_one_pull_per_interval() -> None:
    """The legacy loop's threads, one per client: one poller serves them all."""
    delays = {f"m{i}": 0.1 + 0.01 * i for i in range(40)}
    fake = FakeGrid(delays)
    grid = SharedPollerGrid(fake, INTERVAL)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(
            pool.map(lambda i: grid.send_and_receive(_messages(i)), sorted(delays))
        )
    took = time.monotonic() - started
    assert [_replied(r) for r in results] == [[i] for i in sorted(delays)]
    assert took <= max(delays.values()) + INTERVAL + 0.3
    assert len(fake.pulls) <= took / INTERVAL + 2  # not 40 pullers
    assert any(len(pulled) > 1 for pulled in fake.pulls)  # one pull for many waiters


def test_timeout_returns_what_arrived() -> None:
    fake = FakeGrid({"a": 0.0, "b": 60.0})
    started = time.monotonic()
    replies = SharedPollerGrid(fake, INTERVAL).send_and_receive(
        _messages("a", "b"), timeout=0.7
    )
    took = time.monotonic() - started
    assert _replied(replies) == ["a"]
    assert 0.7 <= took < 1.0


def test_a_late_reply_is_not_kept_for_anyone() -> None:
    # The reply comes 0.9 s after the wait ended: margin for a loaded machine,
    # whose threads may run late (a 0.2 s margin failed once under a full suite).
    fake = FakeGrid({"late": 1.0, "next": 0.0})
    grid = SharedPollerGrid(fake, INTERVAL)
    assert list(grid.send_and_receive(_messages("late"), timeout=0.1)) == []
    time.sleep(1.1)
    assert _replied(grid.send_and_receive(_messages("next"))) == ["next"]
    assert "late" not in set().union(*fake.pulls[1:])


def test_zero_timeout_waits_for_nothing() -> None:
    fake = FakeGrid({"a": 0.0})
    started = time.monotonic()
    assert (
        list(
            SharedPollerGrid(fake, INTERVAL).send_and_receive(_messages("a"), timeout=0)
        )
        == []
    )
    assert time.monotonic() - started < INTERVAL


def test_a_failing_pull_reaches_every_waiter_and_the_next_call_retries() -> None:
    fake = FakeGrid({"a": 60.0, "b": 60.0, "c": 0.0}, fail_after=1)
    grid = SharedPollerGrid(fake, INTERVAL)
    with ThreadPoolExecutor(max_workers=2) as pool:
        waiting = [pool.submit(grid.send_and_receive, _messages(i)) for i in "ab"]
        for future in waiting:
            with pytest.raises(ConnectionError, match="unreachable"):
                future.result(timeout=5)
    fake.fail_after = None
    assert _replied(grid.send_and_receive(_messages("c"), timeout=5)) == ["c"]


def test_everything_else_goes_to_the_wrapped_grid() -> None:
    fake = FakeGrid({})
    grid = SharedPollerGrid(fake, INTERVAL)
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


def test_each_grid_gets_its_interval() -> None:
    in_memory = InMemoryGrid.__new__(InMemoryGrid)
    wrapped = with_shared_poller(in_memory)
    assert isinstance(wrapped, SharedPollerGrid)
    assert wrapped.inner is in_memory
    assert wrapped.interval == IN_MEMORY_INTERVAL_S
    deployed = with_shared_poller(FakeGrid({}))  # type: ignore[arg-type]
    assert isinstance(deployed, SharedPollerGrid)
    assert deployed.interval == DEPLOYED_INTERVAL_S
    assert with_shared_poller(deployed) is deployed


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_nothing_to_wait_for_returns_at_once(timeout: float | None) -> None:
    fake = FakeGrid({})
    started = time.monotonic()
    assert (
        list(SharedPollerGrid(fake, INTERVAL).send_and_receive([], timeout=timeout))
        == []
    )
    assert time.monotonic() - started < 0.05
    assert fake.pulls == []

"""The dead-letter store: bounded, counted, and written to its store in batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ipt_bus.bus.dlq import DeadLetters
from ipt_bus.core.errors import ErrorCode, ProtocolError, StorageError, StorageFull

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ipt_bus.storage.base import DeadLetter

BAD = ProtocolError(ErrorCode.INVALID_TOPIC, "bad topic", "topic")


@attrs.define
class Store:
    calls: list[tuple[list[int], list[int]]] = attrs.field(factory=list)
    failing: bool = False

    async def sync_dead(self, put: Sequence[DeadLetter], drop: Sequence[int]) -> None:
        if self.failing:
            raise StorageError("disk on fire")
        self.calls.append(([d.id for d in put], list(drop)))


async def test_a_flood_of_dead_letters_is_one_write_per_flush() -> None:
    store = Store()
    dead = DeadLetters(store=store)
    for i in range(100):
        dead.add("ws", BAD, f"raw {i}")
    assert store.calls == []  # adding never waits on the disk
    await dead.flush()
    assert store.calls == [(list(range(1, 101)), [])]
    dead.remove(5, why="deleted")
    dead.failed_again(6, StorageFull("full"))
    await dead.flush()
    assert store.calls[-1] == ([6], [5])
    assert dead.get(6) is not None
    assert dead.get(6).attempts == 1  # type: ignore[union-attr]
    assert dead.stats()["counts"] == {"added": 100, "deleted": 1, "retry_failed": 1}


async def test_bounds_evict_the_oldest_and_count_it() -> None:
    store = Store()
    dead = DeadLetters(max_entries=3, max_bytes=1_000, store=store)
    for i in range(5):
        dead.add("rest", BAD, "x" * 10 + str(i))
    assert [d.id for d in dead.list()] == [3, 4, 5]
    dead.add("rest", BAD, "y" * 985)  # with its message, over the byte bound: older ones go
    assert [d.id for d in dead.list()] == [6]
    assert dead.stats()["counts"]["evicted"] == 5
    await dead.flush()
    assert store.calls == [([6], [1, 2, 3, 4, 5])]


async def test_a_failed_flush_keeps_entries_and_tries_again() -> None:
    store = Store(failing=True)
    dead = DeadLetters(store=store)
    dead.add("ws", BAD, "raw")
    await dead.flush()
    assert dead.stats()["counts"]["persist_failed"] == 1
    assert [d.raw for d in dead.list()] == ["raw"]
    store.failing = False
    await dead.flush()
    assert store.calls == [([1], [])]


async def test_the_byte_bound_counts_utf8_bytes_not_characters() -> None:
    dead = DeadLetters(max_bytes=1_000)
    for _ in range(3):
        dead.add("ws", BAD, "\U0001f600" * 100)  # 100 characters, 400 bytes
    assert [d.id for d in dead.list()] == [2, 3]
    assert dead.stats()["bytes"] == 2 * (400 + len("bad topic"))


async def test_pages_are_bounded_in_bytes_but_never_empty() -> None:
    dead = DeadLetters()
    for size in (300, 300, 300, 5_000):
        dead.add("rest", BAD, "x" * size)
    assert [d.id for d in dead.list(max_bytes=700)] == [1, 2]
    assert [d.id for d in dead.list(after=2, max_bytes=700)] == [3]
    assert [d.id for d in dead.list(after=3, max_bytes=700)] == [4]  # alone over the bound

"""The `EventLog` contract (storage/base.py), one suite run against every backend.

A backend joins by adding its factory to `BACKENDS`; what is specific to one backend (SQLite
files, durability, damage; Redis's nodes and faults) stays in that backend's own tests. The
Redis log runs against a `redis-server` the session starts, each log under its own prefix.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ipt_bus.core.frames import Gap, GapReason
from ipt_bus.core.model import Event, Published
from ipt_bus.storage.base import EventLog, Key, Page, Query, resume_point, retention_gap
from ipt_bus.storage.memory import MemoryLog
from ipt_bus.storage.redis import RedisLog
from ipt_bus.storage.sqlite import Retention, SqliteLog
from tests.conftest import unique_prefix

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@contextlib.asynccontextmanager
async def memory(_: Path, keep: int, redis_url: str) -> AsyncIterator[EventLog]:
    yield MemoryLog(keep)


@contextlib.asynccontextmanager
async def redis(_: Path, keep: int, redis_url: str) -> AsyncIterator[EventLog]:
    async with RedisLog.open(redis_url, prefix=unique_prefix(), retention_events=keep) as log:
        yield log


@contextlib.asynccontextmanager
async def sqlite(tmp: Path, keep: int, redis_url: str) -> AsyncIterator[EventLog]:
    log = SqliteLog.open(tmp / "log", retention=Retention(events=keep))
    try:
        yield log
    finally:
        await log.aclose()


BACKENDS: dict[str, Any] = {"memory": memory, "sqlite": sqlite, "redis": redis}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, redis_url: str) -> Any:
    return functools.partial(BACKENDS[request.param], redis_url=redis_url)


def ev(topic: str = "a.b", n: int = 0, **kw: Any) -> Event:
    return Event(type="t", topic=topic, payload={"n": n}, **kw)


async def keep_only(log: EventLog, keep: int) -> None:
    """Let retention act as the backend does (the ring moves by itself, SQLite trims)."""
    await log.enforce_retention()
    assert log.last_seq - log.first_seq + 1 <= keep


async def test_append_gives_consecutive_seqs_ids_and_keeps_order(
    backend: Any, tmp_path: Path
) -> None:
    async with backend(tmp_path, 100) as log:
        assert (log.first_seq, log.last_seq) == (1, 0)
        first = await log.append([ev(n=1), ev(n=2)])
        second = await log.append([ev(n=3)])
        assert [r.seq for r in first + second] == [1, 2, 3]
        assert [r.id for r in first] == [f"{log.epoch}-1", f"{log.epoch}-2"]
        assert log.last_seq == 3
        page = await log.read_after(0, Query(), 10)
        assert [r.data for r in page.records] == [r.data for r in first + second]
        stats = log.stats()
        assert (stats.size, stats.first_seq, stats.last_seq) == (3, 1, 3)
        assert stats.bytes == sum(len(r.data) for r in first + second)


async def test_read_after_pages_forward_with_a_cursor_and_an_upper_bound(
    backend: Any, tmp_path: Path
) -> None:
    async with backend(tmp_path, 100) as log:
        await log.append([ev("a.x" if n % 2 else "b.y", n) for n in range(1, 11)])
        query = Query(("a.*",))
        page = await log.read_after(0, query, 3)
        assert [r.seq for r in page.records] == [1, 3, 5]
        assert page.next_since == 5
        page = await log.read_after(page.next_since, query, 3)
        assert [r.seq for r in page.records] == [7, 9]
        assert page.next_since == 10  # everything examined
        bounded = await log.read_after(2, Query(), 100, until=6)
        assert [r.seq for r in bounded.records] == [3, 4, 5, 6]
        assert bounded.next_since == 6
        assert (await log.read_after(0, Query(), 0)).records == []
        latest = await log.read_latest(Query(("b.*",)), 2)
        assert [r.seq for r in latest] == [8, 10]


async def test_what_retention_dropped_is_told_as_a_gap(backend: Any, tmp_path: Path) -> None:
    async with backend(tmp_path, 5) as log:
        await log.append([ev(n=n) for n in range(12)])
        await keep_only(log, 5)
        assert log.first_seq == 8
        page = await log.read_after(2, Query(), 100)
        assert [r.seq for r in page.records] == [8, 9, 10, 11, 12]
        assert retention_gap(2, page) == Gap(GapReason.RETENTION, 3, 7)
        assert retention_gap(7, page) is None
        start, gap = resume_point(2, log.epoch, log)
        assert (start, gap) == (2, None)
        start, gap = resume_point(2, "another", log)
        assert (start, gap) == (0, Gap(GapReason.EPOCH, 3, None, log.epoch))
        start, gap = resume_point(99, None, log)  # past the end: another history
        assert start == 0
        assert gap is not None


async def test_an_idempotency_key_recalls_where_its_publish_went(
    backend: Any, tmp_path: Path
) -> None:
    async with backend(tmp_path, 100) as log:
        await log.append([ev()])
        records = await log.append([ev(), ev(), ev()], [Key("k1", 1, 2)])
        assert (await log.recall("k1")) == [Published(r.id, r.seq) for r in records[1:]]
        assert (await log.recall("k2")) is None


@settings(max_examples=40, deadline=None)
@given(
    topics=st.lists(st.sampled_from(["a.x", "a.y", "b.x", "b"]), max_size=40),
    patterns=st.lists(st.sampled_from(["a.*", "*.x", "b", "**", "a.**"]), max_size=2),
    since=st.integers(0, 45),
    limit=st.integers(0, 15),
)
def test_every_backend_reads_what_the_contract_says(
    redis_url: str, topics: list[str], patterns: list[str], since: int, limit: int
) -> None:
    """Against a brute-force model of the contract: same records, same cursor, everywhere."""
    import tempfile
    from pathlib import Path

    from ipt_bus.core.topics import matches_any

    async def check() -> None:
        for name, backend in BACKENDS.items():
            with tempfile.TemporaryDirectory() as tmp:
                async with backend(Path(tmp), 1_000, redis_url) as log:
                    if topics:
                        await log.append([ev(t, i) for i, t in enumerate(topics)])
                    query = Query(tuple(patterns))
                    page: Page = await log.read_after(since, query, limit)
                    matching = [
                        s for s, t in enumerate(topics, 1) if s > since and matches_any(patterns, t)
                    ]
                    expected = matching[:limit]
                    assert [r.seq for r in page.records] == expected, name
                    full = limit > 0 and len(expected) == limit
                    cursor = (
                        expected[-1] if full else (since if limit == 0 else max(since, len(topics)))
                    )
                    assert page.next_since == cursor, name

    trio.run(check)

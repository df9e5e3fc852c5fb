"""What is particular to the Redis log: several logs (nodes) on one Redis, its tail, retention
in Redis, faults; and a differential test against the memory log (the contract's model)."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ipt_bus.core.errors import StorageError, StorageOpenError
from ipt_bus.core.model import Event, Published
from ipt_bus.storage.base import EpochChanged, Key, Query, Record
from ipt_bus.storage.memory import MemoryLog
from ipt_bus.storage.redis import RedisLog
from tests.conftest import unique_prefix
from tests.redisproc import cluster, redis_server, sentinel

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


def ev(topic: str = "a.b", n: int = 0, **kw: Any) -> Event:
    return Event(type="t", topic=topic, payload={"n": n}, **kw)


@contextlib.asynccontextmanager
async def two_nodes(url: str, **kw: Any) -> AsyncIterator[tuple[RedisLog, RedisLog]]:
    prefix = unique_prefix()
    async with RedisLog.open(url, prefix=prefix, **kw) as a, RedisLog.open(url, prefix=prefix) as b:
        yield a, b


async def take(tail: AsyncIterator[list[Record]], count: int) -> list[Record]:
    got: list[Record] = []
    with trio.fail_after(10):
        while len(got) < count:
            got += await tail.__anext__()
    return got


async def test_nodes_on_one_prefix_share_one_seq_order_epoch_and_keys(redis_url: str) -> None:
    async with two_nodes(redis_url) as (a, b):
        assert a.epoch == b.epoch
        first = await a.append([ev(n=1)])
        second = await b.append([ev(n=2), ev(n=3)], [Key("k", 0, 2)])
        third = await a.append([ev(n=4)])
        assert [r.seq for r in first + second + third] == [1, 2, 3, 4]
        # a repeat of b's key on a answers with b's publish
        assert await a.recall("k") == [Published(r.id, r.seq) for r in second]
        page_a = await a.read_after(0, Query(), 10)
        page_b = await b.read_after(0, Query(), 10)
        assert [r.data for r in page_a.records] == [r.data for r in page_b.records]
        assert [r.data for r in page_a.records] == [r.data for r in first + second + third]


async def test_each_node_tails_every_nodes_appends_in_seq_order(redis_url: str) -> None:
    async with two_nodes(redis_url) as (a, b):
        tail_a, tail_b = a.tail(0), b.tail(0)
        for n in range(6):
            await (a if n % 2 else b).append([ev(n=n)])
        seen_a, seen_b = await take(tail_a, 6), await take(tail_b, 6)
        assert [r.seq for r in seen_a] == [1, 2, 3, 4, 5, 6]
        assert [r.data for r in seen_a] == [r.data for r in seen_b]
        assert a.last_seq == b.last_seq == 6
        await tail_a.aclose()  # type: ignore[attr-defined]
        await tail_b.aclose()  # type: ignore[attr-defined]


async def test_settle_waits_for_the_tail_to_reach_a_seq(redis_url: str) -> None:
    async with two_nodes(redis_url) as (a, b), trio.open_nursery() as nursery:
        tail = b.tail(0)

        async def follow() -> None:
            async for _ in tail:
                pass

        nursery.start_soon(follow)
        await a.append([ev(), ev()])
        with trio.fail_after(10):
            await b.settle(2, 10)
        assert b.last_seq >= 2
        nursery.cancel_scope.cancel()


async def test_retention_by_count_age_and_bytes_keeps_the_stats_exact(redis_url: str) -> None:
    async with RedisLog.open(redis_url, prefix=unique_prefix(), retention_events=8) as log:
        records = await log.append([ev(n=n) for n in range(10)])
        assert log.stats().bytes == sum(len(r.data) for r in records)
        assert await log.enforce_retention() == 2
        assert (log.first_seq, log.stats().size) == (3, 8)
        assert log.stats().bytes == sum(len(r.data) for r in records[2:])
        # bytes: room for three of the newest
        log.retention_events = None
        log.retention_bytes = sum(len(r.data) for r in records[-3:])
        await log.enforce_retention()
        assert log.first_seq == 8
        assert log.stats().bytes == log.retention_bytes
        # age: events stamped an hour ago go, the fresh ones stay
        log.retention_bytes = None
        stamp = datetime.fromtimestamp(time.time() - 3600, UTC)
        await log.append([ev(n=100, timestamp=stamp)])  # new but stamped old: it goes too
        log.retention_age_seconds = 60
        assert await log.enforce_retention() == 0  # the oldest (seq 8) is fresh: nothing goes
        page = await log.read_after(0, Query(), 100)
        assert [r.seq for r in page.records] == [8, 9, 10, 11]


async def test_a_long_trim_runs_in_chunks(redis_url: str) -> None:
    async with RedisLog.open(redis_url, prefix=unique_prefix(), retention_events=10) as log:
        for _ in range(3):
            await log.append([ev(n=n) for n in range(1_000)])
        assert await log.enforce_retention() == 2_990
        assert (log.first_seq, log.last_seq) == (2_991, 3_000)


async def test_history_filters_read_the_stored_fields(redis_url: str) -> None:
    async with RedisLog.open(redis_url, prefix=unique_prefix()) as log:
        await log.append(
            [
                Event(type="x", topic="a.b", payload={}, correlation_id="c1"),
                Event(type="y", topic="a.b", payload={}),
                Event(type="x", topic="c.d", payload={}, correlation_id="c1"),
            ]
        )
        by_type = await log.read_after(0, Query(types=("x",)), 10)
        assert [r.seq for r in by_type.records] == [1, 3]
        by_corr = await log.read_latest(Query(("a.*",), correlation_id="c1"), 10)
        assert [r.seq for r in by_corr] == [1]
        window = await log.read_after(0, Query(time_from=time.time() + 60), 10)
        assert window.records == []
        assert window.next_since == 3


async def test_an_unreachable_redis_fails_start_up_naming_it(tmp_path: Path) -> None:
    from tests.redisproc import free_port

    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    with pytest.raises(StorageOpenError, match=r"cannot use Redis at redis://user:\*\*\*@") as info:
        async with RedisLog.open(url, connect_timeout=0.5):
            pass
    assert "secret" not in str(info.value)


async def test_redis_going_away_fails_appends_then_everything_recovers(tmp_path: Path) -> None:
    with redis_server(tmp_path, appendonly=True) as redis:
        async with RedisLog.open(redis.url, prefix="p") as log:
            tail = log.tail(0)
            await log.append([ev(n=1)])
            assert [r.seq for r in await take(tail, 1)] == [1]
            redis.stop()
            with pytest.raises(StorageError, match="unreachable"):
                await log.append([ev(n=2)])
            assert log.problem() is not None
            redis.start()
            # the tail, which was waiting on the dead connection, goes on where it stopped
            appended = await log.append([ev(n=3)])
            assert log.problem() is None
            got = await take(tail, 1)
            assert [r.seq for r in got] == [appended[0].seq] == [2]
            await tail.aclose()  # type: ignore[attr-defined]


async def test_a_flushed_redis_is_a_new_epoch(redis_url: str) -> None:
    async with two_nodes(redis_url) as (a, b):
        await a.append([ev()])
        old = a.epoch
        keys = [a._key(name) for name in ("epoch", "seq", "events", "bytes")]
        await a._client.delete(keys)
        with pytest.raises(EpochChanged):
            await a.append([ev()])
        tail = b.tail(1)
        with pytest.raises(EpochChanged), trio.fail_after(10):
            await tail.__anext__()
        assert await b.rejoin() == 0
        assert await a.rejoin() == 0
        assert a.epoch == b.epoch != old
        assert [r.seq for r in await a.append([ev()])] == [1]


# --- differential: the Redis log does what the memory log does ------------------------------

TOPICS = ["a.x", "a.y", "b.x", "b"]
operation = st.one_of(
    st.tuples(
        st.just("append"),
        st.lists(st.sampled_from(TOPICS), min_size=1, max_size=5),
        st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3"])),
    ),
    st.tuples(
        st.just("read"),
        st.lists(st.sampled_from(["a.*", "*.x", "b", "**"]), max_size=2),
        st.integers(0, 30),
        st.integers(0, 8),
    ),
    st.tuples(
        st.just("latest"), st.lists(st.sampled_from(["a.*", "*.x"]), max_size=1), st.integers(0, 5)
    ),
    st.tuples(st.just("recall"), st.sampled_from(["k1", "k2", "k3"])),
)


def _same(record: Record, epoch: str, other: Record, other_epoch: str) -> bool:
    return (record.seq, record.topic, record.data.replace(epoch.encode(), b"E")) == (
        other.seq,
        other.topic,
        other.data.replace(other_epoch.encode(), b"E"),
    )


@settings(max_examples=40, deadline=None)
@given(operations=st.lists(operation, max_size=12))
def test_the_redis_log_answers_as_the_memory_log_does(
    redis_url: str, operations: list[tuple[Any, ...]]
) -> None:
    async def check() -> None:
        model = MemoryLog(1_000)
        async with RedisLog.open(redis_url, prefix=unique_prefix()) as log:
            now = datetime(2026, 1, 1, tzinfo=UTC)  # one timestamp: the encodings compare equal
            for op in operations:
                if op[0] == "append":
                    events = [ev(t, i, timestamp=now) for i, t in enumerate(op[1])]
                    key = op[2]
                    keys = [] if key is None else [Key(key, 0, len(events))]
                    if key is not None and await model.recall(key) is not None:
                        continue  # the router answers repeats without appending
                    got, want = await log.append(events, keys), await model.append(events, keys)
                    assert [r.seq for r in got] == [r.seq for r in want]
                elif op[0] == "read":
                    q = Query(tuple(op[1]))
                    got_page = await log.read_after(op[2], q, op[3])
                    want_page = await model.read_after(op[2], q, op[3])
                    assert got_page.next_since == want_page.next_since
                    assert len(got_page.records) == len(want_page.records)
                    for g, w in zip(got_page.records, want_page.records, strict=True):
                        assert _same(g, log.epoch, w, model.epoch)
                elif op[0] == "latest":
                    q = Query(tuple(op[1]))
                    got_l, want_l = (
                        await log.read_latest(q, op[2]),
                        await model.read_latest(q, op[2]),
                    )
                    assert [r.seq for r in got_l] == [r.seq for r in want_l]
                else:
                    got_k, want_k = await log.recall(op[1]), await model.recall(op[1])
                    assert [p.seq for p in got_k or []] == [p.seq for p in want_k or []]
            assert (log.first_seq, log.last_seq) == (model.first_seq, model.last_seq)
            assert len(log.epoch) == len(model.epoch)
            assert log.stats().bytes == model.stats().bytes

    trio.run(check)


async def _one_round_trip(url: str) -> None:
    """Two logs on `url` (two nodes): append on one, tail and read on the other."""
    async with two_nodes(url) as (a, b):
        tail = b.tail(0)
        appended = await a.append([ev(n=1), ev("c.d", n=2)], [Key("k", 0, 2)])
        got = await take(tail, 2)
        assert [r.data for r in got] == [r.data for r in appended]
        assert [r.seq for r in (await b.read_after(0, Query(("c.*",)), 10)).records] == [2]
        assert await b.recall("k") == [Published(r.id, r.seq) for r in appended]
        await tail.aclose()  # type: ignore[attr-defined]


async def test_the_log_runs_on_redis_sentinel(tmp_path: Path) -> None:
    with sentinel(tmp_path) as url:
        await _one_round_trip(url)


async def test_the_log_runs_on_a_redis_cluster(tmp_path: Path) -> None:
    with cluster(tmp_path) as url:
        await _one_round_trip(url)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:6379", "redis+sentinel://127.0.0.1:1", "redis+raft://127.0.0.1:1"],
)
async def test_a_url_it_cannot_use_is_refused_by_name(url: str) -> None:
    with pytest.raises(StorageOpenError, match="--redis-url"):
        async with RedisLog.open(url):
            pass


async def test_a_key_logged_by_another_node_since_recall_is_a_repeat_not_an_append(
    redis_url: str,
) -> None:
    """The race the router's `recall` cannot close alone: the script checks the key as it
    appends, so the second node answers with the first node's publish."""
    async with two_nodes(redis_url) as (a, b):
        original = await a.append([ev(n=1), ev(n=2)], [Key("k", 0, 2)])
        records, repeats = await b.append_keyed(
            [ev(n=9), ev("x.y", n=3), ev("x.y", n=4)], [Key("k", 0, 1), Key("j", 1, 2)]
        )
        assert repeats == {"k": [Published(r.id, r.seq) for r in original]}
        assert [r.seq for r in records] == [3, 4]  # only the new publish (key j) was stored
        assert await a.recall("j") == [Published(r.id, r.seq) for r in records]
        page = await a.read_after(0, Query(), 10)
        assert [r.seq for r in page.records] == [1, 2, 3, 4]
        # `append` keeps every log's shape: a repeat's slots hold the original's seqs
        again = await b.append([ev(n=1), ev(n=2)], [Key("k", 0, 2)])
        assert [(r.seq, r.id) for r in again] == [(r.seq, r.id) for r in original]


async def test_the_router_answers_a_racing_repeat_with_the_original(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipt_bus.bus.router import start_router
    from ipt_bus.bus.stats import start_stats

    async with two_nodes(redis_url) as (a, b), trio.open_nursery() as nursery:
        original = await a.append([ev(n=1)], [Key("k", 0, 1)])

        async def not_yet(self: RedisLog, key: str) -> None:  # A logged it just after
            return None

        monkeypatch.setattr(RedisLog, "recall", not_yet)
        stats = await start_stats(nursery, 1000)
        router = await start_router(nursery, b, stats, inbox_size=16, max_subscriptions=3)
        answer = await router.publish([ev(n=1)], timeout=5, key="k")
        assert answer == [Published(r.id, r.seq) for r in original]
        assert (await b.read_after(0, Query(), 10)).next_since == 1  # nothing more stored
        router.close()
        stats.close()

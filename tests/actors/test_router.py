from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest
import trio
import trio.testing

from ipt_bus.bus.outbox import Outbox
from ipt_bus.bus.router import QUIET_ROUNDS, Answer, RouterHandle, start_router
from ipt_bus.bus.stats import StatsHandle, start_stats
from ipt_bus.core.errors import LimitExceeded, Overloaded, StorageFull
from ipt_bus.core.model import Event
from ipt_bus.storage.memory import MemoryLog

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


Actors = tuple[RouterHandle, StatsHandle, MemoryLog]


@pytest.fixture
async def actors(
    nursery: trio.Nursery,
) -> AsyncIterator[tuple[RouterHandle, StatsHandle, MemoryLog]]:
    log = MemoryLog(100)
    stats = await start_stats(nursery, 1000)
    router = await start_router(nursery, log, stats, inbox_size=16, max_subscriptions=3)
    yield router, stats, log
    router.close()
    stats.close()


def box(max_events: int = 100) -> Outbox:
    return Outbox(max_events, 1 << 20, 10, 10.0)


def ev(topic: str, n: int = 0) -> Event:
    return Event(type="t", topic=topic, payload={"n": n})


async def seqs(outbox: Outbox) -> list[int]:
    taken = await outbox.take()
    return [orjson.loads(d)["seq"] for d in taken.events]


async def test_publish_assigns_increasing_seqs_and_fans_out_to_matches(actors: Actors) -> None:
    router, stats, _log = actors
    tasks, everything, costs = box(), box(), box()
    assert await router.attach(tasks, ["task.*"]) == 1  # the router gives ids, from 1
    await router.attach(everything, ["**"])
    await router.attach(costs, ["cost.update"])
    published = await router.publish(
        [ev("task.status"), ev("cost.update"), ev("task.a.b")], timeout=5
    )
    assert [p.seq for p in published] == [1, 2, 3]
    assert published[0].id.endswith("-1")
    assert await seqs(tasks) == [1]
    assert await seqs(everything) == [1, 2, 3]
    assert await seqs(costs) == [2]
    snap = await stats.snapshot()
    assert snap["total_events"] == 3
    assert snap["events_per_topic"] == {"task.status": 1, "cost.update": 1, "task.a.b": 1}


async def test_overlapping_patterns_deliver_once(actors: Actors) -> None:
    router, _, _ = actors
    outbox = box()
    await router.attach(outbox, ["task.*", "task.status", "**"])
    await router.publish([ev("task.status")], timeout=5)
    assert await seqs(outbox) == [1]


async def test_subscribe_unsubscribe_and_limit(actors: Actors) -> None:
    router, _, _ = actors
    outbox = box()
    await router.attach(outbox, ["a"])
    assert await router.subscribe(1, ["b", "c"]) == {"a", "b", "c"}
    with pytest.raises(LimitExceeded, match="more than 3 subscriptions"):
        await router.subscribe(1, ["d"])
    assert await router.subscribe(1, ["a"], subscribe=False) == {"b", "c"}
    await router.publish([ev("a"), ev("b")], timeout=5)
    assert await seqs(outbox) == [2]


async def test_detach_stops_delivery(actors: Actors) -> None:
    router, _, _ = actors
    outbox = box()
    await router.attach(outbox, ["**"])
    await router.detach(1)
    await router.publish([ev("a")], timeout=5)
    assert outbox.offered == 0


async def test_a_full_outbox_falls_back_on_the_log_and_others_are_unaffected(
    actors: Actors,
) -> None:
    router, stats, _ = actors
    slow, healthy = box(max_events=2), box()
    await router.attach(slow, ["**"])
    await router.attach(healthy, ["**"])
    await router.publish([ev("a", i) for i in range(5)], timeout=5)
    assert await seqs(healthy) == [1, 2, 3, 4, 5]
    assert (slow.offered, slow.deferred, slow.dropped) == (5, 3, 0)
    assert router.statistics().catching_up == 1
    assert router.statistics().max_lag == 5
    taken = await slow.take()
    assert [(m.after, m.upto) for m in taken.missed] == [(2, 5)]
    snap = await stats.snapshot()
    assert snap["events_dropped"] == {"total": 0, "by_reason": {}}


async def test_a_closed_outbox_drops_what_still_matches_and_it_is_counted(actors: Actors) -> None:
    router, stats, _ = actors
    closing = box()
    await router.attach(closing, ["**"])
    closing.close(1001)
    await router.publish([ev("a", i) for i in range(3)], timeout=5)
    assert closing.dropped == 3
    snap = await stats.snapshot()
    assert snap["events_dropped"] == {"total": 3, "by_reason": {"closing": 3}}


async def test_attach_with_since_starts_with_the_history_missed(actors: Actors) -> None:
    router, _, _ = actors
    await router.publish([ev("a", i) for i in range(4)], timeout=5)
    resumed = box()
    assert await router.attach(resumed, ["a"], since=1) == 1
    taken = await resumed.take()
    assert [(m.after, m.upto, m.patterns) for m in taken.missed] == [(1, 4, ("a",))]
    views = router.connections()
    assert [(v.id, v.subscriptions, v.outbox is resumed) for v in views] == [(1, ["a"], True)]


async def test_publishers_wait_when_the_router_is_saturated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stalled log backs up the inbox; publishers past the deadline get `Overloaded`."""
    release = trio.Event()

    class StalledLog(MemoryLog):
        async def append(self, events, keys=()):  # type: ignore[no-untyped-def]
            await release.wait()
            return self.append_nowait(events, keys)

    async with trio.open_nursery() as nursery:
        stats = await start_stats(nursery, 100)
        router = await start_router(
            nursery, StalledLog(10), stats, inbox_size=1, max_subscriptions=3
        )
        results: list[object] = []

        async def publish() -> None:
            try:
                results.append(await router.publish([ev("a")], timeout=5))
            except Overloaded as exc:
                results.append(exc)

        nursery.start_soon(publish)
        await trio.testing.wait_all_tasks_blocked()  # the router holds it, stalled in the log
        nursery.start_soon(publish)
        nursery.start_soon(publish)
        await trio.testing.wait_all_tasks_blocked()  # one in the inbox, one waiting to send
        assert router.saturated()
        await trio.sleep(6)
        assert len(results) == 3
        assert all(isinstance(r, Overloaded) for r in results)
        release.set()
        router.close()
        stats.close()


async def test_a_publish_on_its_way_during_a_round_joins_the_append_that_follows() -> None:
    """With a log whose appends wait, a publish that reaches the inbox a scheduler round after
    the round's writes (as a frame read from a socket meanwhile does) goes into the next append
    with those already waiting, not into one of its own a whole round later."""
    gate = trio.Event()  # holds the first append until the second publish waits behind it
    appends: list[int] = []

    class WaitingLog(MemoryLog):
        @property
        def append_waits(self) -> bool:
            return True

        async def append(self, events, keys=()):  # type: ignore[no-untyped-def]
            appends.append(len(events))
            if len(appends) == 1:
                await gate.wait()
            await trio.lowlevel.checkpoint()
            return self.append_nowait(events, keys)

    written = trio.Event()

    def direct(events: list[bytes], oldest: float) -> bool:
        written.set()
        return True

    async with trio.open_nursery() as nursery:
        stats = await start_stats(nursery, 100)
        router = await start_router(
            nursery, WaitingLog(100), stats, inbox_size=16, max_subscriptions=3
        )
        outbox = box()
        outbox.direct = direct
        await router.attach(outbox, ["**"])
        nursery.start_soon(_writer, outbox, [], [])  # parked: the round writes directly
        send, receive = trio.open_memory_channel[Answer](8)
        await router.submit([ev("x", 0)], reply=send, timeout=5, token=0)
        await trio.testing.wait_all_tasks_blocked()  # the first append waits
        await router.submit([ev("x", 1)], reply=send, timeout=5, token=1)

        async def on_its_way() -> None:
            await written.wait()  # ready during the round
            await trio.lowlevel.checkpoint()  # and one hop more, as from socket to inbox
            await router.submit([ev("x", 2)], reply=send, timeout=5, token=2)

        nursery.start_soon(on_its_way)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        for token in range(3):
            assert (await receive.receive())[0] == token
        assert appends == [1, 2]
        nursery.cancel_scope.cancel()


async def test_a_publish_arriving_during_a_round_reaches_the_rest_of_that_round(
    nursery: trio.Nursery,
) -> None:
    """The router looks at its inbox every `ROUND_CHUNK` writes of a round: a publish that
    arrived meanwhile goes out with the outboxes still to be written (one write for both
    events), and to the ones written already in the next round, each event exactly once."""
    from ipt_bus.bus.router import ROUND_CHUNK

    stats = await start_stats(nursery, 100)
    router = await start_router(nursery, MemoryLog(100), stats, inbox_size=16, max_subscriptions=3)
    first_written = trio.Event()
    writes: list[list[tuple[int, int]]] = [[] for _ in range(3 * ROUND_CHUNK)]

    def writer_of(i: int) -> Callable[[list[bytes], float], bool]:
        def direct(events: list[bytes], oldest: float) -> bool:
            writes[i].append((len(events), orjson.loads(events[-1])["seq"]))
            first_written.set()
            return True

        return direct

    for i in range(3 * ROUND_CHUNK):
        outbox = box()
        outbox.direct = writer_of(i)
        await router.attach(outbox, ["**"])
        nursery.start_soon(_writer, outbox, [], [])
    await trio.testing.wait_all_tasks_blocked()
    send, receive = trio.open_memory_channel[Answer](8)

    async def second() -> None:
        await first_written.wait()  # runnable from the round's first write
        await router.submit([ev("x", 1)], reply=send, timeout=5, token=1)

    nursery.start_soon(second)
    await router.submit([ev("x", 0)], reply=send, timeout=5, token=0)
    for token in range(2):
        assert (await receive.receive())[0] == token
    await trio.testing.wait_all_tasks_blocked()
    assert writes[-1] == [(2, 2)]  # both in the round under way
    assert writes[0] == [(1, 1), (1, 2)]  # the second in the round after
    assert all(sum(n for n, _ in w) == 2 and w[-1][1] == 2 for w in writes)


async def test_a_key_repeated_in_one_batch_is_logged_once_and_answered_alike(
    actors: Actors,
) -> None:
    router, stats, log = actors
    answers: list[list[int]] = []

    async def publish() -> None:
        published = await router.publish([ev("k.x")], timeout=5, key="same")
        answers.append([p.seq for p in published])

    async with trio.open_nursery() as nursery:  # both reach the inbox before the router runs
        nursery.start_soon(publish)
        nursery.start_soon(publish)
    assert answers == [[1], [1]]
    assert log.stats().size == 1
    assert (await stats.snapshot())["counters"]["idempotent_repeats"] == 1


class _FailingLog(MemoryLog):
    fail = False

    async def append(self, events, keys=()):  # type: ignore[no-untyped-def]
        if self.fail:
            raise StorageFull("the disk is full")
        return await super().append(events, keys)


async def test_a_known_key_is_answered_even_when_the_batch_cannot_be_logged(
    nursery: trio.Nursery,
) -> None:
    log = _FailingLog(100)
    stats = await start_stats(nursery, 1000)
    router = await start_router(nursery, log, stats, inbox_size=16, max_subscriptions=3)
    first = await router.publish([ev("k.x")], timeout=5, key="k1")
    log.fail = True
    results: dict[str, object] = {}

    async def publish(name: str, key: str | None) -> None:
        try:
            results[name] = await router.publish([ev("k.y")], timeout=5, key=key)
        except StorageFull as exc:
            results[name] = exc

    async with trio.open_nursery() as inner:
        inner.start_soon(publish, "repeat", "k1")
        inner.start_soon(publish, "new", None)
    assert results["repeat"] == first  # already logged: the full disk does not matter
    assert isinstance(results["new"], StorageFull)
    router.close()
    stats.close()


async def test_answers_of_one_batch_come_in_the_order_it_was_sent(actors: Actors) -> None:
    # a connection's acker takes answers in token order and skips any it is not waiting for:
    # an answer to a repeated key must not overtake the answer to an earlier new publish
    router, _stats, _log = actors
    await router.publish([ev("k.x")], timeout=5, key="old")
    reply, answers = trio.open_memory_channel[Answer](16)
    await router.submit([ev("k.y")], reply=reply, token=1, timeout=5)
    await router.submit([ev("k.z")], reply=reply, token=2, timeout=5, key="old")
    await router.submit([ev("k.w")], reply=reply, token=3, timeout=5, key="new")
    await router.submit([ev("k.v")], reply=reply, token=4, timeout=5, key="new")
    got = [await answers.receive() for _ in range(4)]
    assert [token for token, _ in got] == [1, 2, 3, 4]
    old = got[1][1]
    assert isinstance(old, list)
    assert old[0].seq == 1  # "old" keeps its first answer
    assert got[3][1] == got[2][1]  # "new" twice in one batch: logged once


async def _writer(outbox: Outbox, writes: list[tuple[int, int]], progress: list[int]) -> None:
    """Take like a connection's writer; each write is (publishes sent by then, events)."""
    while True:
        taken = await outbox.take()
        if not taken.events:
            return
        writes.append((len(progress), len(taken.events)))


async def test_a_burst_of_publishes_wakes_each_writer_once(
    actors: Actors, nursery: trio.Nursery
) -> None:
    """With a memory log nothing makes the router wait, yet a writer takes the whole burst in
    one go: the router wakes writers once nothing more is on its way, not per event."""
    router, _stats, _log = actors
    writes: list[tuple[int, int]] = []
    a, b = box(), box()
    for outbox in (a, b):
        await router.attach(outbox, ["**"])
    nursery.start_soon(_writer, a, writes, [])
    await trio.testing.wait_all_tasks_blocked()
    send, receive = trio.open_memory_channel[Answer](64)
    for i in range(12):  # all in the inbox before the router runs again
        await router.submit([ev("x", i)], reply=send, timeout=5, token=i)
    await trio.testing.wait_all_tasks_blocked()
    assert writes == [(0, 12)]
    assert len((await b.take()).events) == 12
    send.close()
    receive.close()


async def test_an_idle_bus_wakes_a_writer_at_once(
    actors: Actors, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """No timer: with the clock standing still, each lone publish is delivered before the
    next one, whether or not the writer wrote a moment ago."""
    router, _stats, _log = actors
    writes: list[tuple[int, int]] = []
    progress: list[int] = []
    outbox = box()
    await router.attach(outbox, ["**"])
    nursery.start_soon(_writer, outbox, writes, progress)
    start = trio.current_time()
    for i in range(3):
        await router.publish([ev("x", i)], timeout=5)
        progress.append(i)
        for _ in range(QUIET_ROUNDS + 3):  # a few scheduler rounds, no time
            if len(writes) > i:
                break
            await trio.lowlevel.checkpoint()
        assert len(writes) == i + 1
    assert [n for _, n in writes] == [1, 1, 1]
    assert trio.current_time() == start


async def test_continuous_publishing_still_wakes_writers_every_round(
    actors: Actors, nursery: trio.Nursery
) -> None:
    """A publisher that never lets the publish path go quiet cannot starve the writers: they
    are woken every `FAN_OUT_ROUND_EVENTS` events."""
    from ipt_bus.bus.router import FAN_OUT_ROUND_EVENTS

    router, _stats, _log = actors
    writes: list[tuple[int, int]] = []
    progress: list[int] = []
    outbox = box(1000)
    await router.attach(outbox, ["**"])
    nursery.start_soon(_writer, outbox, writes, progress)
    await trio.testing.wait_all_tasks_blocked()
    send, receive = trio.open_memory_channel[Answer](1000)
    for i in range(2 * FAN_OUT_ROUND_EVENTS + 10):
        await router.submit([ev("x", i)], reply=send, timeout=5, token=i)
        progress.append(i)
        await trio.lowlevel.checkpoint()  # runnable all along: the path is never quiet
    # woken at the bound; the writer runs a publish or two later and takes those too
    assert len(writes) >= 2
    for _, n in writes[:2]:
        assert FAN_OUT_ROUND_EVENTS - 2 <= n <= FAN_OUT_ROUND_EVENTS + 2
    assert FAN_OUT_ROUND_EVENTS <= writes[0][0] <= FAN_OUT_ROUND_EVENTS + 2
    send.close()
    receive.close()


async def test_a_shared_logs_tail_fans_out_and_a_trimmed_stretch_becomes_a_missed_range(
    nursery: trio.Nursery,
) -> None:
    """With a shared log the router fans out what the tail reads, not what it appended; events
    the tail never read (trimmed first) are left to the writer's catch-up, which tells the
    client of them with a gap."""
    from ipt_bus.storage.base import ALL, Record

    feed_send, feed = trio.open_memory_channel[list[Record]](4)

    class Shared(MemoryLog):  # the memory log as a shared one: its tail is what the test feeds
        async def tail(self, after: int) -> AsyncIterator[list[Record]]:
            async for records in feed:
                yield records

        async def settle(self, seq: int, timeout: float) -> None:
            return None

        async def rejoin(self) -> int:
            return self.last_seq

        async def append_keyed(
            self, events: Any, keys: Any = ()
        ) -> tuple[list[Record], dict[str, Any]]:
            return await self.append(events, keys), {}

    log = Shared(100)
    stats = await start_stats(nursery, 1000)
    router = await start_router(nursery, log, stats, inbox_size=16, max_subscriptions=3)
    outbox = box()
    await router.attach(outbox, ["a.*"])
    appended = await router.publish([ev("a.x", 1), ev("a.x", 2)], timeout=5)
    assert [p.seq for p in appended] == [1, 2]
    assert outbox.queued == 0  # appended is not delivered: only what the tail reads is
    records = await log.read_after(0, ALL, 10)
    await feed_send.send(records.records[:1])
    assert await seqs(outbox) == [1]
    await log.append([ev("a.x", n) for n in range(3, 6)])  # seqs 3, 4, 5
    page = await log.read_after(0, ALL, 10)
    await feed_send.send(page.records[3:])  # the tail never saw 2-4: only 5
    taken = await outbox.take()
    assert [(m.after, m.upto) for m in taken.missed] == [(1, 5)]  # read from the log instead
    router.close()
    stats.close()


async def test_events_fanned_out_in_runs_keep_their_order_per_subscriber(actors: Actors) -> None:
    """Topics with the same subscribers share one target tuple, so a publish's consecutive
    events on them go to each outbox as one run; a topic with other subscribers ends the run."""
    router, _, _ = actors
    both, only_a = box(), box()
    await router.attach(both, ["a", "b", "c"])
    await router.attach(only_a, ["a", "b"])
    topics = ["a", "b", "a", "c", "c", "b", "a"]
    await router.publish([ev(t) for t in topics[:4]], timeout=5)
    await router.publish([ev(t) for t in topics[4:]], timeout=5)
    assert await seqs(both) == [1, 2, 3, 4, 5, 6, 7]
    assert await seqs(only_a) == [1, 2, 3, 6, 7]
    assert (both.offered, only_a.offered) == (7, 5)

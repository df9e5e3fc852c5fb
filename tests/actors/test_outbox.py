from __future__ import annotations

import orjson
import trio
import trio.testing

from ipt_bus.bus.outbox import MAX_MISSED_RANGES, Missed, Outbox, Taken
from ipt_bus.storage.base import Record


def make(max_events: int = 3, max_bytes: int = 1_000, max_replies: int = 2) -> Outbox:
    return Outbox(max_events, max_bytes, max_replies, slow_consumer_seconds=10.0)


def frames(data: list[bytes]) -> list[dict[str, object]]:
    return [orjson.loads(d) for d in data]


async def test_offer_and_take_in_order() -> None:
    box = make()
    for seq in (1, 2, 3):
        assert box.offer(f'{{"seq":{seq}}}'.encode(), seq, 0.0)
    taken = await box.take()
    assert [f["seq"] for f in frames(taken.events)] == [1, 2, 3]
    assert taken.oldest_accepted_at == 0.0


async def test_a_full_outbox_leaves_what_follows_to_the_log() -> None:
    box = make(max_events=2)
    box.start(["**"], 0)
    for seq in range(1, 6):
        assert box.offer(f'{{"seq":{seq}}}'.encode(), seq, 0.0)
    assert (box.offered, box.deferred, box.dropped, box.catch_ups) == (5, 3, 0, 1)
    assert box.behind
    assert box.lag == 5
    first = await box.take()
    # what was queued, then the range to read from the log (no gap: nothing is lost)
    assert frames(first.events) == [{"seq": 1}, {"seq": 2}]
    assert first.missed == [Missed(2, 5, ("**",))]
    assert first.upto == 5
    assert behind(box)  # until the writer has read the range
    box.wrote(5, 5)
    box.caught_up()
    assert (box.lag, box.delivered) == (0, 5)
    box.offer(b'{"seq":6}', 6, 0.0)  # live again
    assert not behind(box)
    taken = await box.take()
    assert frames(taken.events) == [{"seq": 6}]
    assert taken.missed == []


async def test_once_behind_it_takes_no_live_event_until_the_writer_took_the_range() -> None:
    box = make(max_events=10, max_bytes=40)
    box.start(["**"], 0)
    box.offer(b'{"seq":1}', 1, 0.0)
    box.offer(b'{"seq":2,"blob":"' + b"x" * 40 + b'"}', 2, 0.0)  # over the byte bound
    box.offer(b'{"seq":3}', 3, 0.0)  # would fit, but must not overtake 2
    taken = await box.take()
    assert frames(taken.events) == [{"seq": 1}]
    assert taken.missed == [Missed(1, 3, ("**",))]


async def test_a_subscription_change_while_behind_starts_a_new_range() -> None:
    box = make(max_events=1)
    box.start(["a"], 0)
    box.offer(b"1", 1, 0.0)
    box.offer(b"2", 2, 0.0)  # behind from here, under ["a"]
    box.resubscribed(["a", "b"], 3)  # seq 3 was published (not matching) before the change
    box.resubscribed(["b"], 3)  # nothing missed under ["a", "b"]: that range is replaced
    box.offer(b"4", 4, 0.0)
    taken = await box.take()
    assert taken.missed == [Missed(1, 3, ("a",)), Missed(3, 4, ("b",))]


async def test_subscription_ranges_are_bounded() -> None:
    box = make(max_events=1)
    box.start(["p0"], 0)
    box.offer(b"1", 1, 0.0)
    for seq in range(2, 30):
        box.offer(str(seq).encode(), seq, 0.0)
        box.resubscribed([f"p{seq}"], seq)
    taken = await box.take()
    assert len(taken.missed) == MAX_MISSED_RANGES
    assert [m.upto for m in taken.missed][-1] == 29
    assert "p29" in taken.missed[-1].patterns  # the last range reads a superset, never less
    assert "p9" in taken.missed[-1].patterns


async def test_a_resume_starts_with_the_history_missed() -> None:
    box = make()
    box.start(["task.*"], 40, since=10)
    assert box.lag == 30
    with trio.fail_after(1):
        taken = await box.take()
    assert taken.missed == [Missed(10, 40, ("task.*",))]
    assert box.offer(b"41", 41, 0.0)
    assert (await box.take()).events == [b"41"]


async def test_byte_bound() -> None:
    box = make(max_events=100, max_bytes=20)
    assert box.offer(b"x" * 15, 1, 0.0)
    assert box.offer(b"y" * 15, 2, 0.0)
    assert box.queued == 1
    assert box.deferred == 1


async def test_deferring_with_no_write_for_the_timeout_closes_with_4008(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = make(max_events=1)
    box.offer(b"1", 1, 0.0)
    box.offer(b"2", 2, 0.0)  # behind since now
    await trio.sleep(9.9)
    box.offer(b"3", 3, 0.0)
    assert closed_code(box) is None
    await trio.sleep(0.2)
    box.offer(b"4", 4, 0.0)
    assert closed_code(box) == 4008
    assert not box.offer(b"5", 5, 0.0)  # closed: dropped
    assert box.dropped == 1


async def test_a_write_getting_through_resets_the_slow_consumer_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = make(max_events=1)
    box.offer(b"1", 1, 0.0)
    box.offer(b"2", 2, 0.0)
    await trio.sleep(9)
    await box.take()  # taking alone is not progress: the socket may still be stuck
    box.wrote(2, 1)
    box.offer(b"3", 3, 0.0)
    box.offer(b"4", 4, 0.0)
    await trio.sleep(9)
    box.offer(b"5", 5, 0.0)  # deferring again, but only for 9 s
    assert box.closed_code is None


async def test_replies_wait_when_their_lane_is_full_and_are_never_dropped() -> None:
    box = make(max_replies=2)
    await box.reply(b"a")
    await box.reply(b"b")
    done = trio.Event()

    async def third() -> None:
        await box.reply(b"c")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert (await box.take()).replies == [b"a", b"b"]
        await done.wait()
    assert (await box.take()).replies == [b"c"]


async def test_take_returns_empty_once_closed() -> None:
    box = make()
    async with trio.open_nursery() as nursery:
        result: list[Taken] = []

        async def taker() -> None:
            result.append(await box.take())

        nursery.start_soon(taker)
        await trio.testing.wait_all_tasks_blocked()
        box.close(1001)
    taken = result[0]
    assert taken.replies == []
    assert taken.events == []
    assert taken.missed == []


def behind(box: Outbox) -> bool:
    """Read afresh (as `closed_code`)."""
    return box.behind


def closed_code(box: Outbox) -> int | None:
    """Read afresh: an assert on the attribute would narrow it for the lines after."""
    return box.closed_code


async def test_two_replies_waiting_for_room_both_get_through(nursery: trio.Nursery) -> None:
    """The reader and the acker can both wait on a full reply lane; neither is forgotten."""
    box = make(max_replies=1)
    await box.reply(b"first")
    done: list[bytes] = []

    async def reply(data: bytes) -> None:
        await box.reply(data)
        done.append(data)

    nursery.start_soon(reply, b"a")
    nursery.start_soon(reply, b"b")
    await trio.testing.wait_all_tasks_blocked()
    assert done == []
    sent = box.take_replies()
    await trio.testing.wait_all_tasks_blocked()
    sent += box.take_replies()
    await trio.testing.wait_all_tasks_blocked()
    sent += box.take_replies()
    assert sorted(sent) == [b"a", b"b", b"first"]
    assert sorted(done) == [b"a", b"b"]


def records(seqs: range) -> list[Record]:
    return [Record(s, f"e-{s}", "t", f'{{"seq":{s}}}'.encode()) for s in seqs]


def offer_many(box: Outbox, run: list[Record]) -> int:
    datas = [r.data for r in run]
    return box.offer_many(datas, [r.seq for r in run], sum(map(len, datas)), 0.0)


async def test_a_run_that_fits_is_queued_whole_and_counted() -> None:
    box = make(max_events=5)
    box.start(["**"], 0)
    assert offer_many(box, records(range(1, 4))) == 0
    assert offer_many(box, records(range(4, 6))) == 0
    assert (box.offered, box.deferred, box.lag) == (5, 0, 5)
    assert [f["seq"] for f in frames((await box.take()).events)] == [1, 2, 3, 4, 5]


async def test_a_run_that_does_not_fit_queues_what_fits_and_leaves_the_rest_to_the_log() -> None:
    """As offering its events one by one: nothing past the bound is queued, nothing is lost."""
    box = make(max_events=3)
    box.start(["**"], 0)
    assert offer_many(box, records(range(1, 6))) == 0
    assert (box.offered, box.deferred, box.catch_ups) == (5, 2, 1)
    taken = await box.take()
    assert [f["seq"] for f in frames(taken.events)] == [1, 2, 3]
    assert taken.missed == [Missed(3, 5, ("**",))]


async def test_a_run_offered_to_a_closed_outbox_counts_each_event_dropped() -> None:
    box = make(max_events=10)
    box.close(1001)
    assert offer_many(box, records(range(1, 5))) == 4
    assert box.dropped == 4

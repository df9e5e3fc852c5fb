from __future__ import annotations

import orjson
import trio
import trio.testing

from ipt_bus.outbox import Outbox, Taken


def make(max_events: int = 3, max_bytes: int = 1_000, max_replies: int = 2) -> Outbox:
    return Outbox(max_events, max_bytes, max_replies, slow_consumer_seconds=10.0)


def frames(data: list[str]) -> list[dict[str, object]]:
    return [orjson.loads(d) for d in data]


async def test_offer_and_take_in_order() -> None:
    box = make()
    for seq in (1, 2, 3):
        assert box.offer(f'{{"seq":{seq}}}', seq, 0.0)
    taken = await box.take()
    assert [f["seq"] for f in frames(taken.events)] == [1, 2, 3]
    assert taken.oldest_accepted_at == 0.0


async def test_full_outbox_drops_and_announces_the_gap_before_the_next_event() -> None:
    box = make(max_events=2)
    for seq in range(1, 6):
        box.offer(f'{{"seq":{seq}}}', seq, 0.0)
    assert (box.offered, box.dropped) == (5, 3)
    first = await box.take()
    # what was queued, then the gap for what could not be (nothing newer fitted yet)
    assert frames(first.events) == [
        {"seq": 1},
        {"seq": 2},
        {"action": "gap", "reason": "slow_consumer", "from_seq": 3, "to_seq": 5},
    ]
    box.offer('{"seq":6}', 6, 0.0)
    assert frames((await box.take()).events) == [{"seq": 6}]


async def test_gap_is_placed_before_the_next_event_that_fits() -> None:
    box = make(max_events=10, max_bytes=40)
    box.offer('{"seq":1}', 1, 0.0)
    assert not box.offer('{"seq":2,"blob":"' + "x" * 40 + '"}', 2, 0.0)  # over the byte bound
    assert box.offer('{"seq":3}', 3, 0.0)
    assert frames((await box.take()).events) == [
        {"seq": 1},
        {"action": "gap", "reason": "slow_consumer", "from_seq": 2, "to_seq": 2},
        {"seq": 3},
    ]


async def test_byte_bound() -> None:
    box = make(max_events=100, max_bytes=20)
    assert box.offer("x" * 15, 1, 0.0)
    assert not box.offer("y" * 15, 2, 0.0)


async def test_outbox_full_for_the_timeout_closes_with_4008(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = make(max_events=1)
    box.offer("1", 1, 0.0)
    box.offer("2", 2, 0.0)  # full since now
    await trio.sleep(9.9)
    box.offer("3", 3, 0.0)
    assert closed_code(box) is None
    await trio.sleep(0.2)
    box.offer("4", 4, 0.0)
    assert closed_code(box) == 4008
    assert await box.wait_closed() == 4008


async def test_draining_resets_the_slow_consumer_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = make(max_events=1)
    box.offer("1", 1, 0.0)
    box.offer("2", 2, 0.0)
    await trio.sleep(9)
    await box.take()
    box.offer("3", 3, 0.0)
    await trio.sleep(9)
    box.offer("4", 4, 0.0)  # full again, but only just
    assert box.closed_code is None


async def test_replies_wait_when_their_lane_is_full_and_are_never_dropped() -> None:
    box = make(max_replies=2)
    await box.reply("a")
    await box.reply("b")
    done = trio.Event()

    async def third() -> None:
        await box.reply("c")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert (await box.take()).replies == ["a", "b"]
        await done.wait()
    assert (await box.take()).replies == ["c"]


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


def closed_code(box: Outbox) -> int | None:
    """Read afresh: an assert on the attribute would narrow it for the lines after."""
    return box.closed_code

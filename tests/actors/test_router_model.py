"""A2: random interleavings against a reference model (Hypothesis), on the real router/outboxes.

Per connection: every event that matched its subscriptions when it was published is received,
once, in `seq` order, whether live from its outbox or read back from the log after the outbox
overflowed (outboxes here hold 3 events); nothing else is received.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import orjson
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ipt_bus.bus import outbox
from ipt_bus.bus.outbox import Outbox, Taken
from ipt_bus.bus.router import start_router
from ipt_bus.bus.stats import start_stats
from ipt_bus.core.model import Event
from ipt_bus.core.topics import matches_any
from ipt_bus.storage.base import Query
from ipt_bus.storage.memory import MemoryLog

TOPICS = ["a.x", "a.y", "b.x", "b"]
PATTERNS = ["a.*", "a.**", "*.x", "b", "**", "b.*"]
CONNS = 4

ops = st.lists(
    st.one_of(
        st.tuples(st.just("sub"), st.integers(0, CONNS - 1), st.sampled_from(PATTERNS)),
        st.tuples(st.just("unsub"), st.integers(0, CONNS - 1), st.sampled_from(PATTERNS)),
        st.tuples(st.just("pub"), st.lists(st.sampled_from(TOPICS), min_size=1, max_size=6)),
        st.tuples(st.just("read"), st.integers(0, CONNS - 1)),
        st.tuples(st.just("detach"), st.integers(0, CONNS - 1)),
    ),
    max_size=40,
)


async def scenario(steps: list[tuple[Any, ...]]) -> None:
    async with trio.open_nursery() as nursery:
        stats = await start_stats(nursery, 10_000)
        log = MemoryLog(10_000)
        router = await start_router(nursery, log, stats, inbox_size=64, max_subscriptions=16)
        outboxes = {c: Outbox(3, 1 << 20, 10, 60.0) for c in range(CONNS)}
        attached = set(range(CONNS))
        patterns: dict[int, set[str]] = {c: set() for c in range(CONNS)}
        expected: dict[int, list[int]] = {c: [] for c in range(CONNS)}  # matching seqs, in order
        got: dict[int, list[int]] = {c: [] for c in range(CONNS)}
        ids = {c: await router.attach(outboxes[c], ["nothing.here"]) for c in range(CONNS)}

        async def drain(c: int, taken: Taken) -> None:
            """What a connection's writer does: the queue, then the missed ranges from the log."""
            frames = list(taken.events)
            for part in taken.missed:
                page = await log.read_after(part.after, Query(part.patterns), 100, until=part.upto)
                frames.extend(r.data for r in page.records)
            outboxes[c].caught_up()
            for data in frames:
                got[c].append(orjson.loads(data)["seq"])

        for step in steps:
            kind = step[0]
            if kind == "sub" and step[1] in attached:
                await router.subscribe(ids[step[1]], [step[2]])
                patterns[step[1]].add(step[2])
            elif kind == "unsub" and step[1] in attached:
                await router.subscribe(ids[step[1]], [step[2]], subscribe=False)
                patterns[step[1]].discard(step[2])
            elif kind == "pub":
                published = await router.publish(
                    [Event(type="t", topic=t) for t in step[1]], timeout=5
                )
                for p, topic in zip(published, step[1], strict=True):
                    for c in attached:
                        if patterns[c] and matches_any(patterns[c], topic):
                            expected[c].append(p.seq)
            elif kind == "read" and step[1] in attached:
                if outboxes[step[1]].queued or outboxes[step[1]].behind:
                    await drain(step[1], await outboxes[step[1]].take())
            elif kind == "detach" and step[1] in attached:
                await router.detach(ids[step[1]])
                attached.discard(step[1])
        # the router fans out in the same step as it answers a publish: all offers are made
        for c in range(CONNS):
            box = outboxes[c]
            if box.queued or box.behind:
                await drain(c, await box.take())
            assert got[c] == expected[c]
            assert box.offered == len(expected[c])
            assert box.dropped == 0
        router.close()
        stats.close()


@settings(max_examples=200, deadline=None)
@given(ops)
@example(  # a subscription change while full: b.x (seq 4) came before "*.x" was subscribed
    [("sub", 0, "a.*"), ("pub", ["a.x", "a.x", "a.x", "b.x"]), ("sub", 0, "*.x"), ("pub", ["a.x"])]
)
def test_router_agrees_with_the_reference_model(steps: list[tuple[Any, ...]]) -> None:
    # ranges are never merged here (that superset is tested in test_outbox.py)
    with mock.patch.object(outbox, "MAX_MISSED_RANGES", 1_000):
        trio.run(scenario, steps)

"""Memory a client can grow stays bounded, measured on `ipt-bus serve` in its own process
(issue 11: idempotency keys, subscriptions; issue 14: a topic per event, dead letters)."""

from __future__ import annotations

import random
import string
import uuid
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import httpx
import orjson
import pytest
import trio

from tests.conftest import open_ws
from tests.processes import Served, serve_process

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MiB = 1024 * 1024
FLOOD_SECONDS = 30.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_process(tmp_path_factory.mktemp("bounds")) as server:  # SQLite, the default
        yield server


async def _flood(served: Served, seconds: float) -> int:
    """Arrays of 1,000 events, each with a fresh Idempotency-Key; returns how many were sent."""
    body = orjson.dumps(
        [{"type": "t", "topic": "flood.x", "payload": {"n": n}} for n in range(1000)]
    )
    sent = 0
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        with trio.move_on_after(seconds):
            while True:
                response = await http.post(
                    "/events",
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "Idempotency-Key": str(uuid.uuid4()),
                    },
                )
                assert response.status_code == 201, response.text
                sent += 1
    return sent


async def test_a_flood_of_fresh_idempotency_keys_keeps_memory_flat(served: Served) -> None:
    """One client, 1,000-event arrays, a fresh key each, for 30 s: RSS grows by < 64 MB (it took
    a server from 52 MB to 1.39 GB in 100 s when each key kept an answer per event)."""
    await _flood(served, 3.0)  # warm-up: caches, the log's first pages
    before = served.rss()
    keys = await _flood(served, FLOOD_SECONDS)
    growth = served.rss() - before
    print(f"idempotency flood: {keys} keys, RSS +{growth / MiB:.1f} MB")
    assert keys > 100  # the flood did happen
    assert growth < 64 * MiB, f"RSS grew {growth / MiB:.1f} MB over {keys} keyed publishes"


SUBSCRIBERS = 100
SUBSCRIPTION_BUDGET_BYTES = 64 * 1024  # docs/operations.md: what one connection's may cost


def _worst_patterns(conn: int) -> list[str]:
    """128 patterns of 16 segments that share nothing with anyone's, within 8 KiB."""
    rnd = random.Random(conn)
    out = []
    for j in range(128):
        tail = [rnd.choice(string.ascii_lowercase) + rnd.choice(string.ascii_lowercase)]
        out.append(".".join([f"w{conn}x{j}", *(tail * 15)]))
    assert sum(map(len, out)) <= 8 * 1024
    return out


async def test_the_worst_subscriptions_a_connection_may_hold_fit_the_budget(
    served: Served,
) -> None:
    """Issue 11 item 7: 128 patterns of 16 segments per connection cost ~1.65 MB each before;
    the index now shares structure and a connection's patterns are bounded in bytes."""
    async with AsyncExitStack() as stack:
        conns = []
        for c in range(SUBSCRIBERS):
            first = _worst_patterns(c)[0]
            conn = await stack.enter_async_context(
                open_ws(f"ws://127.0.0.1:{served.port}/ws?topics={first}")
            )
            await conn.get_message()  # welcome
            conns.append(conn)
        before = served.rss()  # idle connections, one pattern each
        for c, conn in enumerate(conns):
            frame = {"action": "subscribe", "id": c, "topics": _worst_patterns(c)[1:]}
            await conn.send_message(orjson.dumps(frame).decode())
            answer = orjson.loads(await conn.get_message())
            assert answer["action"] == "subscribed", answer
            assert len(answer["topics"]) == 128
        per_connection = (served.rss() - before) / SUBSCRIBERS
        print(f"worst-case subscriptions: {per_connection / 1024:.1f} KiB per connection")
        assert per_connection <= SUBSCRIPTION_BUDGET_BYTES


async def _post_all(served: Served, bodies: list[bytes], *, expect: int, tasks: int = 8) -> None:
    """POST every body to /events from `tasks` clients at once, each answered `expect`."""
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:

        async def worker(mine: list[bytes]) -> None:
            for body in mine:
                response = await http.post(
                    "/events", content=body, headers={"Content-Type": "application/json"}
                )
                assert response.status_code == expect, response.text

        async with trio.open_nursery() as nursery:
            for t in range(tasks):
                nursery.start_soon(worker, bodies[t::tasks])


@pytest.mark.timeout(300)  # 60 arrays of 1,000 events: slower under coverage
async def test_a_topic_per_event_keeps_memory_flat(served: Served) -> None:
    """Issue 14: 60,000 unique topics (`task.<uuid>.status`) grow the bus by < 50 MB; /topics
    and the router's route cache keep at most their bound."""
    topics = [f"task.{uuid.uuid4()}.status" for _ in range(60_000)]
    bodies = [
        orjson.dumps([{"type": "t", "topic": t, "payload": {}} for t in topics[i : i + 1000]])
        for i in range(0, len(topics), 1000)
    ]
    before = served.rss()
    await _post_all(served, bodies, expect=201, tasks=2)
    growth = served.rss() - before
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        body = (await http.get("/topics")).json()
    unique = [t for t in body["topics"] if t["topic"].startswith("task.") and not t["standard"]]
    print(f"60,000 unique topics: RSS +{growth / MiB:.1f} MB, {len(unique)} listed")
    assert len(unique) <= 10_000
    assert body["tracked"]["held"] <= 10_000
    assert body["tracked"]["evicted"] >= 50_000
    assert growth < 50 * MiB, f"RSS grew {growth / MiB:.1f} MB"


@pytest.fixture
def small_dlq(tmp_path: Path) -> Iterator[Served]:
    with serve_process(tmp_path, "--dlq-max-entries", "2000") as server:
        yield server


@pytest.mark.timeout(300)
async def test_a_flood_of_dead_letters_keeps_memory_flat(small_dlq: Served) -> None:
    """Past `--dlq-max-entries` the oldest dead letters go: more refused publishes do not grow
    the bus (a bound of 2,000 here, so that the flood stays short under coverage; each letter
    keeps its 4 KB body)."""
    bad = [orjson.dumps({"type": "t", "topic": f"bad..{n}", "payload": {"pad": "x" * 4000}})
           for n in range(3_000)]  # fmt: skip
    served = small_dlq
    await _post_all(served, bad, expect=400)  # past the bound
    before = served.rss()
    await _post_all(served, bad, expect=400)
    growth = served.rss() - before
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        total = (await http.get("/dlq", params={"limit": 1})).json()["total"]
    print(f"dead-letter flood: RSS +{growth / MiB:.1f} MB past the bound, {total} held")
    assert total == 2_000
    assert growth < 4 * MiB, f"RSS grew {growth / MiB:.1f} MB past the bound (3,000 x 4 KB = 12 MB)"

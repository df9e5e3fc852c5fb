"""A subscriber that falls behind catches up from the log (issue 18).

When a connection's outbox is full, the events that follow stay in the log and the connection
reads them from there once it reads again: nothing is lost, nothing is sent twice, the order is
kept, and memory per connection stays bounded. Only a peer that stops reading altogether is
closed (4008), and only what the log no longer holds becomes a `gap` (reason `retention`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import trio

from tests.conftest import closed_code, connections, event, open_ws, recv, running_server, wait_for

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

RATE_BATCH = 10  # events per request; a request every 10 ms: about 1,000 events/s
BLOB = "x" * 8_000  # big enough that the socket buffers fill within the test


async def _stream(
    http: httpx.AsyncClient, total: int, progress: list[int], topic: str = "stream.x"
) -> None:
    """Publish `total` events at about 1,000/s; `progress[0]` is how many went so far."""
    for start in range(0, total, RATE_BATCH):
        batch = [event(topic, n=n, blob=BLOB) for n in range(start, start + RATE_BATCH)]
        response = await http.post("/events", json=batch)
        assert response.status_code == 201, response.text
        progress[0] = start + RATE_BATCH
        await trio.sleep(0.01)  # pacing the stream, not waiting for anything


async def _state(http: httpx.AsyncClient, conn_id: int) -> dict[str, Any]:
    listed = (await http.get("/connections")).json()["connections"]
    (view,) = [c for c in listed if c["id"] == conn_id]
    assert isinstance(view, dict)
    return view


async def _read(conn: WebSocketConnection, until_seq: int) -> list[dict[str, Any]]:
    """Every frame up to the event with `until_seq`."""
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1].get("seq") != until_seq:
        with trio.fail_after(20):
            message = await conn.get_message()
        frames.extend(orjson.loads(line) for line in str(message).split("\n"))
    return frames


@pytest.mark.parametrize("storage", ["sqlite", "memory"])
async def test_a_paused_subscriber_gets_every_event_in_order_when_it_reads_again(
    storage: str,
) -> None:
    total = 3_000
    progress = [0]
    async with (
        running_server(
            storage=storage,
            buffer_size=100_000,  # memory: a ring that still holds what the subscriber missed
            outbox_events=50,
            slow_consumer_seconds=60,
        ) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        open_ws(server.ws_url + "?topics=stream.*", message_queue_size=0) as paused,
        trio.open_nursery() as nursery,
    ):
        assert (await recv(paused))["action"] == "welcome"
        (conn_id,) = [v.id for v in server.bus.router.connections()]
        nursery.start_soon(_stream, http, total, progress)
        # it reads nothing until its outbox overflowed and the stream went on for a while
        await wait_for(lambda: server.bus.router.statistics().catching_up == 1, seconds=30)
        behind = await _state(http, conn_id)
        assert behind["state"] == "catching_up"
        assert behind["lag"] > 0
        assert behind["outbox"]["events"] <= 50
        mark = progress[0] + 500
        await wait_for(lambda: progress[0] >= min(mark, total), seconds=30)
        frames = await _read(paused, total)
        caught_up = await _state(http, conn_id)
        stats = (await http.get("/stats")).json()
    assert [f.get("action") for f in frames if "action" in f] == []  # no gap, no notice
    assert [f["seq"] for f in frames] == list(range(1, total + 1))
    assert [f["payload"]["n"] for f in frames] == list(range(total))
    assert caught_up["state"] == "live"
    assert caught_up["lag"] == 0
    assert caught_up["delivered"] == total
    assert stats["catch_up"]["catch_ups"] >= 1
    assert stats["catch_up"]["events_read"] > 0
    assert stats["events_dropped"]["total"] == 0


async def test_in_memory_what_the_ring_no_longer_holds_is_a_retention_gap() -> None:
    total = 2_000
    progress = [0]
    async with (
        running_server(storage="memory", buffer_size=300, outbox_events=20) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        open_ws(server.ws_url + "?topics=stream.*", message_queue_size=0) as paused,
    ):
        assert (await recv(paused))["action"] == "welcome"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stream, http, total, progress)
            await wait_for(lambda: server.bus.router.statistics().catching_up == 1, seconds=30)
        frames = await _read(paused, total)  # the stream is over: the ring moved on
    got = [f["seq"] for f in frames if "action" not in f]
    gaps = [f for f in frames if "action" in f]
    assert gaps
    assert {g["reason"] for g in gaps} == {"retention"}
    missing = {s for g in gaps for s in range(g["from_seq"], g["to_seq"] + 1)}
    assert got == sorted(got)
    assert not missing & set(got)
    assert missing | set(got) == set(range(1, total + 1))
    assert got[-300:] == list(range(total - 299, total + 1))  # what the ring still held


async def test_a_subscriber_that_never_reads_is_closed_and_freed() -> None:
    """It falls behind, its writer is stuck in a write: 4008 is decided after
    `slow_consumer_seconds`, and the stuck write is aborted at the write deadline."""
    progress = [0]
    async with (
        running_server(
            # the write deadline well after the slow-consumer rule, also on a loaded machine
            outbox_events=20,
            slow_consumer_seconds=0.5,
            write_deadline_seconds=3,
        ) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        async with open_ws(server.ws_url + "?topics=none"):
            pass  # the first WebSocket starts the run's one pinger, which stays
        await connections(server, 0)
        baseline = (await http.get("/stats")).json()["tasks"]
        async with open_ws(server.ws_url + "?topics=stream.*", message_queue_size=0) as stuck:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stream, http, 100_000, progress)
                await connections(server, 0)
                nursery.cancel_scope.cancel()
            # it reads at last: what reached its socket buffer, then the connection is gone
            # (the server aborted the stuck write, so no close frame could follow)
            assert await closed_code(stuck) in (4008, 1006)
        stats = (await http.get("/stats")).json()
        assert stats["connection_stability"]["closes_total"] == {"1000": 1, "4008": 1}
        assert stats["events_dropped"]["total"] > 0  # matched it while it was closing
        await wait_for(lambda: _tasks(http, baseline))


async def _tasks(http: httpx.AsyncClient, baseline: int) -> bool:
    return int((await http.get("/stats")).json()["tasks"]) <= baseline

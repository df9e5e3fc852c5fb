"""The Python client against a real server: the spec's examples, helpers, resume, errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
import trio.lowlevel

from ipt_bus.client import (
    BusUnavailable,
    ClientError,
    Event,
    EventBusClient,
    EventBusPublisher,
    Gap,
    HistoryLost,
    PublishRejected,
)
from ipt_bus.client import events as builders
from tests.conftest import connections, event, running_server, wait_for
from tests.integration.test_launch import free_port

if TYPE_CHECKING:
    from pathlib import Path

    from ipt_bus.server import Server


SYNC_EXAMPLE = """
from ipt_bus.client import EventBusPublisher

publisher = EventBusPublisher()

# Publish task status
publisher.publish_task_status(
    task_id="task-123",
    status="started",
    workflow="PY_EDIT_TRIAGE"
)

# Publish phase progress
publisher.publish_phase_progress(
    task_id="task-123",
    phase="code_analysis",
    progress=0.5
)

# Publish cost update
publisher.publish_cost_update(
    task_id="task-123",
    cost_delta=0.25,
    total_cost=1.75
)
"""

ASYNC_EXAMPLE = """
import asyncio
from ipt_bus.client import EventBusClient, Event

async def publish_events():
    client = EventBusClient()

    # Create custom event
    event = Event(
        type="custom_event",
        topic="custom.analysis",
        payload={"data": "value"}
    )

    # Publish via REST
    await client.publish_event_rest_async(event)

asyncio.run(publish_events())
"""

LISTEN_EXAMPLE = """
import asyncio
from ipt_bus.client import EventBusClient

async def listen_for_events():
    client = EventBusClient()

    # Define event handler
    def handle_task_event(event):
        print(f"Task {event.payload['task_id']} status: {event.payload['status']}")

    # Add handler and connect
    client.add_event_handler("task.status", handle_task_event)
    await client.connect_async(["task.status", "cost.update"])

    # Start listening
    await client.listen_async()

asyncio.run(listen_for_events())
"""


def _env(server: Server) -> dict[str, str]:
    import os

    return {**os.environ, "IPT_BUS_URL": server.url}


async def _stored(server: Server, **params: Any) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        events: list[dict[str, Any]] = (await http.get("/events", params=params)).json()["events"]
        return events


async def test_spec_examples_run_verbatim_under_asyncio(tmp_path: Path) -> None:
    async with running_server(storage="sqlite", data_dir=str(tmp_path)) as server:
        for code in (SYNC_EXAMPLE, ASYNC_EXAMPLE):
            with trio.fail_after(30):
                await trio.run_process(
                    [sys.executable, "-c", code], env=_env(server), capture_stdout=True
                )
        stored = await _stored(server)
        assert [(e["topic"], e["type"]) for e in stored] == [
            ("task.status", "task_status_changed"),
            ("phase.progress", "phase_progress"),
            ("cost.update", "cost_update"),
            ("custom.analysis", "custom_event"),
        ]
        assert stored[0]["payload"] == {
            "task_id": "task-123",
            "status": "started",
            "metadata": {"workflow": "PY_EDIT_TRIAGE"},
        }
        assert stored[2]["payload"] == {
            "task_id": "task-123",
            "cost_delta": 0.25,
            "total_cost": 1.75,
        }
        assert stored[3]["payload"] == {"data": "value"}

        listener = await trio.lowlevel.open_process(
            [sys.executable, "-u", "-c", LISTEN_EXAMPLE],
            env=_env(server),
            stdout=subprocess.PIPE,
        )
        try:
            await connections(server, 1, seconds=30)
            publisher = EventBusPublisher(server.url)
            await trio.to_thread.run_sync(
                lambda: publisher.publish_task_status(task_id="task-9", status="running")
            )
            await trio.to_thread.run_sync(
                lambda: publisher.publish_log("info", "not for this listener")
            )
            assert listener.stdout is not None
            with trio.fail_after(20):
                line = await listener.stdout.receive_some(1000)
            assert line == b"Task task-9 status: running\n"
            publisher.close()
        finally:
            listener.kill()
            await listener.wait()


async def test_the_listener_example_runs_under_trio() -> None:
    async with running_server() as server:
        seen: list[str] = []
        client = EventBusClient(server.url)

        def handle_task_event(event: Event) -> None:
            seen.append(f"Task {event.payload['task_id']} status: {event.payload['status']}")

        client.add_event_handler("task.status", handle_task_event)
        await client.connect_async(["task.status", "cost.update"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.listen_async)
            await connections(server, 1)
            await client.publish_event_rest_async(builders.task_status("t-1", "running"))
            await wait_for(lambda: seen == ["Task t-1 status: running"])
            await client.close()


async def test_every_helper_publishes_its_topic_and_type() -> None:
    async with running_server() as server:
        publisher = EventBusPublisher(server.url)

        def publish_all() -> None:
            publisher.publish_task_status("t", "running", previous_status="pending")
            publisher.publish_task_created("t", workflow="W")
            publisher.publish_task_cancelled("t", reason="user")
            publisher.publish_task_retry("t", attempt=2)
            publisher.publish_phase_started("t", "p")
            publisher.publish_phase_progress("t", "p", 0.5, total_steps=4, completed_steps=2)
            publisher.publish_phase_completed("t", "p", duration_seconds=1.5)
            publisher.publish_phase_failed("t", "p", error="boom")
            publisher.publish_cost_update("t", 0.1, total_cost=1.0, tokens_used=10)
            publisher.publish_cost_budget_warning(8.0, 10.0, threshold=0.8)
            publisher.publish_cost_budget_exhausted(10.0, 10.0)
            publisher.publish_cost_estimate("t", 2.5, tool="claude-cli")
            publisher.publish_tool_health_changed("aider", "degraded", health_score=0.6)
            publisher.publish_tool_available("aider")
            publisher.publish_tool_unavailable("aider", reason="down")
            publisher.publish_tool_degraded("aider", latency_ms=5000)
            publisher.publish_log("warning", "careful", logger="x", line=3, context={"a": 1})
            many = publisher.publish_many(
                [Event(type="t", topic="a.b"), Event(type="t", topic="a.c")]
            )
            assert [p.seq for p in many] == [18, 19]
            publisher.close()

        await trio.to_thread.run_sync(publish_all)
        stored = await _stored(server, limit=100)
        assert [(e["topic"], e["type"]) for e in stored] == [
            ("task.status", "task_status_changed"),
            ("task.created", "task_created"),
            ("task.cancelled", "task_cancelled"),
            ("task.retry", "task_retry"),
            ("phase.started", "phase_started"),
            ("phase.progress", "phase_progress"),
            ("phase.completed", "phase_completed"),
            ("phase.failed", "phase_failed"),
            ("cost.update", "cost_update"),
            ("cost.budget_warning", "budget_warning"),
            ("cost.budget_exhausted", "budget_exhausted"),
            ("cost.estimate", "cost_estimate"),
            ("tool.health_changed", "tool_health_changed"),
            ("tool.available", "tool_available"),
            ("tool.unavailable", "tool_unavailable"),
            ("tool.degraded", "tool_degraded"),
            ("logs.warning", "log_message"),
            ("a.b", "t"),
            ("a.c", "t"),
        ]
        assert stored[9]["payload"]["percent_used"] == 80.0
        assert stored[16]["payload"]["level"] == "WARNING"
        assert stored[12]["source"] == "tool_registry"


async def test_errors_are_typed_and_say_what_to_do() -> None:
    async with running_server() as server:
        client = EventBusClient(server.url)
        with pytest.raises(PublishRejected) as rejected:
            await client.publish_event_rest_async(Event(type="t", topic="a.*"))
        assert (rejected.value.code, rejected.value.field) == ("invalid_topic", "topic")
        await client.close()
    nowhere = EventBusClient(f"http://127.0.0.1:{free_port()}", retries=1)
    with pytest.raises(BusUnavailable, match="is `ipt-bus serve` running"):
        await nowhere.publish_event_rest_async(Event(type="t", topic="a"))
    with pytest.raises(BusUnavailable):
        await nowhere.connect_async()
    await nowhere.close()
    with pytest.raises(ValueError, match="level"):
        builders.log("loud", "x")


async def test_async_with_events_publish_and_subscriptions() -> None:
    async with running_server() as server, EventBusClient(server.url, topics=["a.*"]) as client:
        got: list[tuple[str, int | None]] = []
        stream = client.events()  # receives from here on

        async def consume() -> None:
            async for ev in stream:
                got.append((ev.topic, ev.seq))
                if len(got) == 3:
                    stream.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            published = await client.publish(Event(type="t", topic="a.one", payload={"n": 1}))
            assert published.seq == 1
            assert await client.subscribe(["b.**"]) == ["a.*", "b.**"]
            await client.publish(Event(type="t", topic="b.x.y"))
            await client.publish(Event(type="t", topic="c"))  # not subscribed
            await client.publish(Event(type="t", topic="a.two"))
        assert got == [("a.one", 1), ("b.x.y", 2), ("a.two", 4)]
        with pytest.raises(PublishRejected) as rejected:
            await client.publish(Event(type="", topic="a.b"))
        assert rejected.value.field == "event.type"
        assert await client.unsubscribe(["a.*"]) == ["b.**"]


async def test_resume_after_the_server_drops_the_connection() -> None:
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign,assignment]
    logging.getLogger("ipt_bus.client").addHandler(handler)
    async with running_server() as server:
        seqs: list[int] = []
        calls = 0

        def failing(_: Event) -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("handler bug")

        async with EventBusClient(server.url, topics=["load.*"]) as client:
            client.add_event_handler("load.*", lambda ev: seqs.append(ev.seq or 0))
            client.add_event_handler("load.x", failing)
            async with httpx.AsyncClient(base_url=server.url) as http:
                for batch in range(40):
                    body = [event("load.x", n=batch * 50 + i) for i in range(50)]
                    assert (await http.post("/events", json=body)).status_code == 201
                    if batch in (10, 25):  # the server drops the client mid-stream
                        await connections(server, 1)
                        # no public way to kick one connection: close its outbox (1011)
                        for outbox in list(server.bus.router._router._outboxes.values()):
                            outbox.close(1011)
            await wait_for(lambda: len(seqs) >= 2000, seconds=30)
        closes = (await server.bus.stats.snapshot())["connection_stability"]["closes_total"]
        assert closes.get("1011") == 2  # the client really was dropped twice
        assert seqs == list(range(1, 2001))  # no gap, no duplicate
        assert calls == 2000  # the failing handler never stopped the others
        logging.getLogger("ipt_bus.client").removeHandler(handler)
        assert sum("handler bug" in str(r.exc_info) for r in logged) == 2000


async def test_history_lost_is_raised_or_reported() -> None:
    async with running_server(buffer_size=10) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            await http.post("/events", json=[event("h.x", n=i) for i in range(30)])
        client = EventBusClient(server.url, since=2, epoch=server.bus.log.epoch)
        with pytest.raises(HistoryLost) as lost:
            await client.listen_async()
        assert (lost.value.gap.reason, lost.value.gap.from_seq, lost.value.gap.to_seq) == (
            "retention",
            3,
            20,
        )
        await client.close()

        gaps: list[Gap] = []
        seqs: list[int] = []
        client = EventBusClient(server.url, since=2, epoch="another-log")
        client.on_gap(gaps.append)
        client.add_event_handler("**", lambda ev: seqs.append(ev.seq or 0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.listen_async)
            await wait_for(lambda: len(seqs) == 10)
            await client.close()
        assert [g.reason for g in gaps] == ["epoch", "retention"]
        assert seqs == list(range(21, 31))


async def test_a_message_over_max_message_bytes_ends_the_session_with_a_clear_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reconnecting would fetch the same message again: the session stops and says what to
    raise, instead of reconnecting for ever (what httpx-ws 0.10's own limit led to)."""
    async with running_server() as server:
        seqs: list[int] = []
        client = EventBusClient(server.url, max_message_bytes=4_000)
        client.add_event_handler("**", lambda ev: seqs.append(ev.seq or 0))

        async def listen() -> None:
            with pytest.raises(ClientError, match="max_message_bytes=4000: raise") as caught:
                await client.listen_async()
            raised.append(caught.value)

        raised: list[ClientError] = []
        with trio.fail_after(20):
            async with (
                trio.open_nursery() as nursery,
                httpx.AsyncClient(base_url=server.url) as http,
            ):
                nursery.start_soon(listen)
                await connections(server, 1)
                assert (await http.post("/events", json=event("big.x"))).status_code == 201
                await wait_for(lambda: seqs == [1])  # what fits comes through
                big = event("big.x", text="x" * 5_000)
                assert (await http.post("/events", json=big)).status_code == 201
        await client.close()
        assert len(raised) == 1
        assert seqs == [1]
        assert "a larger event from the bus will end the session" in caplog.text


async def test_a_publish_over_the_bus_max_message_bytes_is_refused_before_it_is_sent() -> None:
    """The bus would close the connection (1009) and the resent request would close the next
    one: the client refuses it itself, naming the limit, and stays connected."""
    async with running_server() as server, EventBusClient(server.url, retries=0) as client:
        limit = server.bus.config.max_message_bytes
        with trio.fail_after(10), pytest.raises(PublishRejected) as rejected:
            await client.publish(Event(type="t", topic="a.b", payload={"x": "y" * limit}))
        assert rejected.value.code == "too_large"
        assert f"max_message_bytes ({limit})" in rejected.value.message
        published = await client.publish(Event(type="t", topic="a.b"))
        assert published.seq == 1
        await connections(server, 1)


async def test_a_bus_that_is_not_there_is_reported_not_waited_for() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with trio.fail_after(10), pytest.raises(BusUnavailable, match="cannot reach the bus"):
        async with EventBusClient(url, retries=1):
            pass
    with trio.fail_after(10), pytest.raises(BusUnavailable):
        await EventBusClient(url, retries=0).listen_async()

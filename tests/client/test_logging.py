"""`EventBusHandler` in a real program, against a real bus and against no bus at all."""

from __future__ import annotations

import logging
import os
import sys
import time

import httpx
import trio

from ipt_bus.logging import EventBusHandler
from tests.conftest import running_server
from tests.integration.test_launch import free_port

PROGRAM = """
import logging
from ipt_bus.logging import EventBusHandler

logging.basicConfig(level=logging.DEBUG, handlers=[EventBusHandler()])
log = logging.getLogger("tool_registry.health_checker")
log.debug("probing %s", "cursor")
extra = {"tool": "cursor", "timeout": 30, "attempt": 2, "obj": object()}
log.warning("Tool health check timeout for cursor", extra=extra)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("division failed")
"""


async def test_a_program_logs_to_the_bus() -> None:
    async with running_server() as server:
        env = {**os.environ, "IPT_BUS_URL": server.url}
        with trio.fail_after(30):
            await trio.run_process([sys.executable, "-c", PROGRAM], env=env)  # exits: flushed
        async with httpx.AsyncClient(base_url=server.url) as http:
            events = (await http.get("/events", params={"topic": "logs.*"})).json()["events"]
    assert [(e["topic"], e["payload"]["level"]) for e in events] == [
        ("logs.debug", "DEBUG"),
        ("logs.warning", "WARNING"),
        ("logs.error", "ERROR"),
    ]
    warning = events[1]["payload"]
    assert warning["message"] == "Tool health check timeout for cursor"
    assert warning["logger"] == "tool_registry.health_checker"
    assert warning["function"] == "<module>"
    assert warning["line"] == 9
    assert warning["context"]["tool"] == "cursor"
    assert warning["context"]["attempt"] == 2
    assert warning["context"]["obj"].startswith("<object object")
    assert "ZeroDivisionError" in events[2]["payload"]["context"]["exception"]
    assert events[1]["source"] == "logging_adapter"


def test_a_dead_bus_never_blocks_or_raises_and_drops_are_counted() -> None:
    handler = EventBusHandler(f"http://127.0.0.1:{free_port()}", queue_size=50, flush_timeout=1)
    log = logging.getLogger("test.dead.bus")
    log.addHandler(handler)
    log.propagate = False
    try:
        started = time.monotonic()
        for i in range(1_000):
            log.error("record %d", i)
        assert time.monotonic() - started < 1.0  # never waited on the bus
    finally:
        log.removeHandler(handler)
        started = time.monotonic()
        handler.close()
        assert time.monotonic() - started < 3.0
    assert handler.sent == 0
    assert handler.dropped >= 950  # all but what was still queued at close


async def test_drops_are_reported_once_the_bus_answers() -> None:
    async with running_server() as server:
        handler = EventBusHandler(server.url, queue_size=10)
        handler.dropped = 7  # as if 7 were lost while the bus was away
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "back", (), None)
        handler.emit(record)
        await trio.to_thread.run_sync(handler.close)
        async with httpx.AsyncClient(base_url=server.url) as http:
            events = (await http.get("/events")).json()["events"]
    assert [e["payload"]["message"] for e in events] == [
        "back",
        "7 log records were dropped while the bus could not take them",
    ]

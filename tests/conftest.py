"""Shared fixtures: a real server on a free port, real WebSocket and HTTP clients."""

from __future__ import annotations

import os
import tempfile
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from ipt_bus.core.config import BusConfig
from ipt_bus.core.schemas import SCHEMAS
from ipt_bus.server import Server, serve
from tests import rawws
from tests.redisproc import redis_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

RECEIVE_SECONDS = 10


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers started as processes keep their SQLite log in a fresh directory, never in ./"""
    monkeypatch.setenv("IPT_BUS_DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `redis-server` for the session; each user takes its own key prefix."""
    with redis_server(tmp_path_factory.mktemp("redis")) as redis:
        yield redis.url


@pytest.fixture(scope="session", autouse=True)
def _redis_storage_runs(request: pytest.FixtureRequest) -> None:
    """IPT_BUS_TEST_STORAGE=redis: every in-process server logs to the session's Redis."""
    if os.environ.get("IPT_BUS_TEST_STORAGE") == "redis":
        os.environ["IPT_BUS_TEST_REDIS_URL"] = request.getfixturevalue("redis_url")


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[Server]:
    # IPT_BUS_TEST_STORAGE=sqlite runs every in-process server on a fresh SQLite log, =redis on
    # a fresh log in the session's Redis
    storage = os.environ.get("IPT_BUS_TEST_STORAGE", "memory")
    with tempfile.TemporaryDirectory(prefix="ipt-bus-test-") as data_dir:
        shared: dict[str, Any] = {}
        if storage == "redis":
            shared = {
                "redis_url": os.environ["IPT_BUS_TEST_REDIS_URL"],
                "redis_prefix": unique_prefix(),
            }
        base = BusConfig(port=0, storage=storage, gc_threshold=None, data_dir=data_dir, **shared)  # type: ignore[arg-type]
        config = attrs.evolve(base, **overrides)
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            try:
                yield server
            finally:
                server.shutdown()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with running_server() as srv:
        yield srv


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


@asynccontextmanager
async def open_ws(url: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
    """trio-websocket's `open_websocket_url`, closing the socket on the way out also when the
    server closed first: trio-websocket's own `aclose` returns early once the peer's close frame
    arrived and leaves the socket open (a ResourceWarning later, from the GC)."""
    stream: trio.abc.Stream | None = None
    try:
        async with open_websocket_url(url, **kwargs) as conn:
            stream = conn._stream
            yield conn
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)


async def refused(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A WebSocket handshake the server refuses: its HTTP status and JSON body. (A raw peer:
    trio-websocket leaks its socket when a handshake is refused.)"""
    rest = url.removeprefix("ws://")
    where, _, query = rest.partition("?")
    host_port, _, path = where.partition("/")
    host, port = host_port.rsplit(":", 1)
    target = "/" + path + (f"?{query}" if query else "")
    peer = await rawws.connect(host, int(port), target, headers)
    async with peer.stream:
        length = int(peer.headers.get("content-length", "0"))
        with trio.fail_after(RECEIVE_SECONDS):
            while len(peer.buf) < length and await peer.fill():
                pass
        return peer.status, orjson.loads(bytes(peer.buf[:length]))


@asynccontextmanager
async def ws(
    server: Server, query: str = "", *, welcome: bool = True
) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client on /ws; the welcome frame is read (and checked) first."""
    url = server.ws_url + (f"?{query}" if query else "")
    async with open_ws(url, message_queue_size=1) as conn:
        if welcome:
            frame = await recv(conn)
            assert frame["action"] == "welcome", frame
        yield conn


async def recv(conn: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(RECEIVE_SECONDS):
        message = await conn.get_message()
    value = orjson.loads(message)
    assert isinstance(value, dict)
    return value


async def recv_frames(conn: WebSocketConnection) -> list[dict[str, Any]]:
    """One message, split into its frames (batch mode puts several per message)."""
    with trio.fail_after(RECEIVE_SECONDS):
        message = await conn.get_message()
    assert isinstance(message, str)
    return [orjson.loads(line) for line in message.split("\n")]


async def closed_code(conn: WebSocketConnection) -> int:
    """Read until the server closes the connection; its close code."""
    with trio.fail_after(RECEIVE_SECONDS * 3):
        while True:
            try:
                await conn.get_message()
            except ConnectionClosed as closed:
                return int(closed.reason.code) if closed.reason is not None else 1005


async def send(conn: WebSocketConnection, frame: dict[str, Any]) -> None:
    await conn.send_message(orjson.dumps(frame).decode())


async def request(conn: WebSocketConnection, frame: dict[str, Any]) -> dict[str, Any]:
    """Send an action and return its answer (skipping events that arrive in between)."""
    await send(conn, frame)
    while True:
        answer = await recv(conn)
        if "action" in answer and answer.get("id") == frame.get("id"):
            return answer


def event(
    topic: str = "custom.test", type_: str = "custom_event", **payload: Any
) -> dict[str, Any]:
    """An event; for a standard topic its schema's required payload fields are filled in."""
    return {"type": type_, "topic": topic, "payload": {**REQUIRED.get(topic, {}), **payload}}


_SAMPLE = {"string": "x", "number": 0.5, "integer": 1}
REQUIRED = {
    topic: {
        f.name: _SAMPLE[f.metadata["kind"]] for f in attrs.fields(cls) if f.metadata["required"]
    }
    for topic, cls in SCHEMAS.items()
}


async def connections(server: Server, count: int, *, seconds: float = 10.0) -> None:
    """Wait until the bus has exactly `count` WebSocket connections (the router says when)."""
    with trio.fail_after(seconds):
        await server.bus.router.wait_connections(count)


async def wait_for(predicate: Any, *, seconds: float = 10.0) -> None:
    """Poll a (possibly async) condition with a deadline; never a blind sleep."""
    with trio.fail_after(seconds):
        while True:
            result = predicate()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return
            await trio.sleep(0.01)

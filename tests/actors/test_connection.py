"""Connection actor timing logic on a fake socket with the autojump clock."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import orjson
import trio
import trio.testing

from ipt_bus.bus.connection import Connection, ConnectParams, Disconnected, Written
from ipt_bus.bus.node import run_bus
from ipt_bus.core.config import BusConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import pytest

    from ipt_bus.bus.node import BusHandle


class FakeSocket:
    def __init__(self, frames: list[str], pongs_wanted: int = 0) -> None:
        self.incoming = list(frames)
        self.sent: list[tuple[float, bytes]] = []
        self.closed: int | None = None
        self.pongs_wanted = pongs_wanted
        self.all_pongs = trio.Event()
        self.direct = False
        self.direct_writes = 0

    async def receive(self) -> str | bytes:
        if self.incoming:
            await trio.lowlevel.checkpoint()
            return self.incoming.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(self, text: bytes) -> None:
        if self.closed is not None:
            raise Disconnected(1006)
        self.sent.append((trio.current_time(), text))
        if sum(b'"pong"' in t for _, t in self.sent) == self.pongs_wanted:
            self.all_pongs.set()
        await trio.lowlevel.checkpoint()

    async def send_many(self, texts: list[bytes]) -> None:
        for text in texts:
            await self.send(text)

    def send_now(self, texts: list[bytes]) -> Written:
        """Takes everything at once, as an empty socket buffer would (`direct=False`: never)."""
        if not self.direct or self.closed is not None:
            return Written.NONE
        self.sent.extend((trio.current_time(), text) for text in texts)
        self.direct_writes += 1
        return Written.ALL

    async def close(self, code: int) -> None:
        self.closed = code


@contextlib.asynccontextmanager
async def connected(
    sock: FakeSocket, params: ConnectParams, **config: Any
) -> AsyncIterator[BusHandle]:
    """A memory bus with one connection over `sock`, running; shut down on the way out."""
    settings = BusConfig(port=0, storage="memory", gc_threshold=None, **config)
    async with trio.open_nursery() as nursery:
        bus = await nursery.start(run_bus, settings)
        connection = Connection(sock, bus, params)
        await connection.attach()
        nursery.start_soon(connection.run)
        yield bus
        bus.shutdown()


async def test_a_client_past_the_frame_rate_is_read_slower(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sock = FakeSocket(['{"action": "ping"}'] * 300, pongs_wanted=300)
    start = trio.current_time()
    async with connected(sock, ConnectParams(), max_frames_per_second=100):
        await sock.all_pongs.wait()
        pongs = [t for t, text in sock.sent if b'"pong"' in text]
        # a burst of 100 at once, then 100 a second: the 300th after about 2 s
        assert math.isclose(pongs[99] - start, 0, abs_tol=0.05)
        assert 1.9 <= pongs[-1] - start <= 2.2
    assert sock.closed == 1001


async def test_batching_holds_nothing_back_for_a_timer(
    mock_clock: trio.testing.MockClock,
) -> None:
    """With `batch=1`, an event published right after the last message goes out at once: the
    clock stands still and every event is written (there used to be a 50 ms window)."""
    from ipt_bus.core.model import Event

    sock = FakeSocket([])
    async with connected(sock, ConnectParams(batch=True)) as bus:
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        for i in range(3):
            await bus.router.publish([Event(type="t", topic="x", payload={"n": i})], timeout=5)
            await trio.testing.wait_all_tasks_blocked()
            assert sum(b'"seq"' in text for _, text in sock.sent[1:]) == i + 1
        assert all(at == start for at, _ in sock.sent[1:])


async def test_the_fan_out_writes_to_a_parked_writers_socket_itself() -> None:
    """Live events go out from the router's round (`send_now`), after the welcome, one message
    per round with batching; replies still go through the connection's writer."""
    from ipt_bus.core.model import Event

    sock = FakeSocket(['{"action": "ping", "id": 1}'], pongs_wanted=1)
    sock.direct = True
    async with connected(sock, ConnectParams(batch=True)) as bus:
        await sock.all_pongs.wait()
        await trio.testing.wait_all_tasks_blocked()
        events = [Event(type="t", topic="x", payload={"n": i}) for i in range(3)]
        await bus.router.publish(events, timeout=5)
        await trio.testing.wait_all_tasks_blocked()
        texts = [text for _, text in sock.sent]
        assert b'"welcome"' in texts[0]
        assert b'"pong"' in texts[1]
        assert len(texts) == 3
        assert [orjson.loads(line)["seq"] for line in texts[2].split(b"\n")] == [1, 2, 3]
        assert sock.direct_writes == 1


async def test_a_publisher_is_read_no_further_past_the_bytes_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Publishes whose acks are due may take `publish_bytes_in_flight` of message text (plus the
    one that crossed it): the reader waits there until the log answers, then reads on."""
    from ipt_bus.storage.memory import MemoryLog

    release = trio.Event()
    append = MemoryLog.append

    async def stalled(self: MemoryLog, events: Any, keys: Any = ()) -> Any:
        await release.wait()
        return await append(self, events, keys)

    monkeypatch.setattr(MemoryLog, "append", stalled)

    def publish(i: int) -> str:
        event = {"type": "t", "topic": "a", "payload": {"pad": "x" * 320}}
        return orjson.dumps({"action": "publish", "id": i, "event": event}).decode()

    frames = [publish(i) for i in range(5)]
    assert all(390 <= len(f) <= 410 for f in frames)
    sock = FakeSocket(frames)
    async with connected(sock, ConnectParams(), publish_bytes_in_flight=1000):
        await trio.testing.wait_all_tasks_blocked()
        assert len(sock.incoming) == 2  # 3 x ~400 > 1000: the reader waits after the third
        release.set()
        with trio.fail_after(5):
            while sum(b'"published"' in t for _, t in sock.sent) < 5:
                await trio.testing.wait_all_tasks_blocked()
        assert sock.incoming == []

"""Hostile and broken peers (RELIABILITY.md §8, issue 3) against a real server."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import orjson
import pytest
import trio

from ipt_bus.bus.connection import Connection
from ipt_bus.bus.router import Router
from ipt_bus.core.config import BusConfig
from ipt_bus.core.errors import StorageError
from ipt_bus.server import Server, listening_socket
from ipt_bus.storage.memory import MemoryLog
from tests import rawws
from tests.conftest import (
    closed_code,
    connections,
    event,
    open_ws,
    recv,
    refused,
    request,
    running_server,
    wait_for,
    ws,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ipt_bus.core.model import Event
    from ipt_bus.storage.base import Key, Record

TEXT, BINARY, CLOSE, PING = 0x1, 0x2, 0x8, 0x9


async def raw(server: Server, path: str = "/ws", **headers: str) -> rawws.RawPeer:
    host, port = rawws.host_port(server.url)
    return await rawws.connect(
        host, port, path, {k.replace("_", "-"): v for k, v in headers.items()}
    )


async def healthy_neighbour(server: Server) -> None:
    """The server still serves: a fresh connection subscribes, publishes and receives."""
    async with ws(server, "topics=check.*") as conn:
        await request(conn, {"action": "publish", "id": "h", "event": event("check.ok")})
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/health")).status_code == 200


# --- compression and frames (C3, C4, C6) --------------------------------------------------


async def test_permessage_deflate_is_not_negotiated(server: Server) -> None:
    peer = await raw(server, Sec_WebSocket_Extensions="permessage-deflate; client_max_window_bits")
    async with peer.stream:
        assert peer.status == 101
        assert "sec-websocket-extensions" not in peer.headers


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("compressed (RSV1) frame", rawws.frame(TEXT, b"\xaa\xbb\x00", rsv=4)),
        ("reserved opcode 0x3", rawws.frame(0x3, b"x")),
        ("unmasked client frame", rawws.frame(TEXT, b'{"action":"ping"}', masked=False)),
        ("invalid UTF-8 text", rawws.frame(TEXT, b'{"a":"\xff\xfe"}')),
        ("fragmented control frame", rawws.frame(PING, b"x", fin=False)),
    ],
)
async def test_protocol_violations_fail_only_that_connection(
    server: Server, name: str, data: bytes
) -> None:
    peer = await raw(server)
    async with peer.stream:
        assert (await peer.read_frame()) is not None  # welcome
        await peer.send(data)
        code = await peer.close_code()
    assert code in (None, 1002, 1007), (name, code)  # failed: a close frame or a dropped socket
    await healthy_neighbour(server)


async def test_invalid_utf8_is_closed_with_1007(server: Server) -> None:
    peer = await raw(server)
    async with peer.stream:
        await peer.read_frame()
        await peer.send(rawws.frame(TEXT, b'{"a":"\xff"}'))
        assert await peer.close_code() == 1007


async def test_a_reserved_opcode_is_closed_with_1002(server: Server) -> None:
    peer = await raw(server)
    async with peer.stream:
        await peer.read_frame()
        await peer.send(rawws.frame(0x3, b"x"))
        assert await peer.close_code() == 1002


# --- size, deadlines, pings (C1, C11, C10) ------------------------------------------------


async def test_oversize_message_is_cut_with_1009_before_it_is_buffered() -> None:
    async with running_server(max_message_bytes=64 * 1024) as server:
        peer = await raw(server)
        async with peer.stream:
            await peer.read_frame()
            # announce 64 MiB, send 1 MiB of it: the server must close once past 64 KiB
            await peer.send(rawws.frame(TEXT, b"", length=64 * 1024 * 1024))
            with trio.move_on_after(10):
                for _ in range(16):
                    await peer.send(b"a" * 65536)
            assert await peer.close_code() == 1009
        await healthy_neighbour(server)


async def test_a_trickled_message_is_cut_at_the_message_deadline() -> None:
    async with running_server(message_deadline_seconds=0.5) as server:
        peer = await raw(server)
        async with peer.stream:
            await peer.read_frame()
            await peer.send(rawws.frame(TEXT, b"{", length=1000))
            started = trio.current_time()
            code = None
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:

                    async def trickle() -> None:
                        while True:  # the hostile peer's pace: one byte every 0.1 s
                            await peer.send(b" ")
                            await trio.sleep(0.1)

                    nursery.start_soon(trickle)
                    code = await peer.close_code()
                    nursery.cancel_scope.cancel()
            assert code == 1009
            assert trio.current_time() - started < 0.5 + 1.0
        await healthy_neighbour(server)
    # the deadline is process-wide: restore the default for later tests
    async with running_server():
        pass


async def test_protocol_pings_are_sent() -> None:
    async with running_server(ping_interval_seconds=0.2) as server:
        peer = await raw(server)
        async with peer.stream:
            opcodes = []
            while PING not in opcodes:
                got = await peer.read_frame()
                assert got is not None
                opcodes.append(got[0])


async def test_one_pinger_serves_every_connection_and_forgets_closed_ones() -> None:
    """Pings come from one task per run, not one per connection; a closed connection leaves
    its set (nothing is kept alive for the interval) and the others are still pinged."""
    import gc

    from ipt_bus.edge import transport

    async with running_server(ping_interval_seconds=0.05) as server:
        peers = [await raw(server) for _ in range(5)]
        for peer in peers:  # each one is pinged
            opcodes: list[int] = []
            while PING not in opcodes:
                got = await peer.read_frame()
                assert got is not None
                opcodes.append(got[0])
        (pinged,) = transport._PINGED.get().values()
        assert len(pinged) == 5
        for peer in peers[:4]:
            await peer.stream.aclose()
        with trio.fail_after(10):
            while len(pinged) > 1:
                gc.collect()
                await trio.sleep(0.05)
        got = await peers[4].read_frame()  # the survivor is still pinged
        assert got is not None
        await peers[4].stream.aclose()


def test_accepted_sockets_carry_keepalive_and_user_timeout() -> None:
    listener = listening_socket(BusConfig(port=0, tcp_user_timeout_seconds=45))
    with listener:
        listener.listen()
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 45_000
            assert client


# --- caps and origins (C13, C15) ------------------------------------------------------------


async def test_connection_cap_refuses_extras_with_503_before_the_upgrade() -> None:
    cap = 50
    async with running_server(max_connections=cap) as server:
        peers = []
        statuses = []
        for _ in range(cap + 50):
            peer = await raw(server)
            statuses.append(peer.status)
            peers.append(peer)
        try:
            assert statuses.count(101) == cap
            assert statuses.count(503) == 50
        finally:
            for peer in peers:
                await peer.aclose()
        async with httpx.AsyncClient(base_url=server.url) as http:
            stats = (await http.get("/stats")).json()
        assert stats["connection_stability"]["refused_total"] == {"max_connections": 50}


async def test_allowed_origins() -> None:
    async with running_server(allowed_origins=("https://ok.example",)) as server:
        status, body = await refused(server.ws_url, {"Origin": "https://evil.example"})
        assert status == 403
        assert body["error"]["code"] == "origin_not_allowed"
        async with open_ws(
            server.ws_url, extra_headers=[(b"Origin", b"https://ok.example")]
        ) as conn:
            assert orjson.loads(await conn.get_message())["action"] == "welcome"
        async with open_ws(server.ws_url) as conn:  # no Origin: not a browser
            assert orjson.loads(await conn.get_message())["action"] == "welcome"


# --- HTTP phase (D5) ------------------------------------------------------------------------


async def test_a_silent_http_client_is_dropped(server: Server) -> None:
    host, port = rawws.host_port(server.url)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")  # and never the end
        with trio.fail_after(8):
            while await stream.receive_some(1000):
                pass


# --- failure boundaries (G1) and saturation (A5) ---------------------------------------------


async def test_a_bug_in_one_connection_closes_only_it_with_1011(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Connection._handle_message

    async def buggy(self: Connection, message: str | bytes) -> None:
        if isinstance(message, str) and '"boom"' in message:
            raise RuntimeError("injected bug")
        await original(self, message)

    monkeypatch.setattr(Connection, "_handle_message", buggy)
    async with running_server() as server, ws(server, "topics=n.*") as neighbour:
        async with ws(server) as victim:
            await victim.send_message('{"action": "ping", "id": "boom"}')
            assert await closed_code(victim) == 1011
        async with ws(server, "topics=none") as pub:  # not the neighbour: acks race events
            await request(pub, {"action": "publish", "id": 1, "event": event("n.still")})
        assert (await recv(neighbour))["topic"] == "n.still"
        async with httpx.AsyncClient(base_url=server.url) as http:
            await wait_for(lambda: _closes(http, "1011"))


async def _closes(http: httpx.AsyncClient, code: str) -> bool:
    return code in (await http.get("/stats")).json()["connection_stability"]["closes_total"]


async def test_a_crash_in_the_router_stops_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(self: object, command: object) -> None:
        raise RuntimeError("router bug")

    monkeypatch.setattr(Router, "_on_subscribe", crash)
    with pytest.raises(BaseExceptionGroup) as info:  # noqa: PT012 - the crash ends the server
        async with running_server() as server, ws(server) as conn:
            await conn.send_message('{"action": "subscribe", "topics": ["a"]}')
            await trio.sleep_forever()  # ended by the crash, not by time
    assert info.group_contains(RuntimeError, match="router bug", depth=None)


async def test_saturated_bus_answers_503_and_overloaded_and_loses_nothing_acked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = trio.Event()
    original = MemoryLog.append

    async def stalled(
        self: MemoryLog, events: Sequence[Event], keys: Sequence[Key] = ()
    ) -> list[Record]:
        await release.wait()
        return await original(self, events, keys)

    monkeypatch.setattr(MemoryLog, "append", stalled)
    async with running_server(
        storage="memory", router_inbox=1, publish_timeout_seconds=0.5
    ) as server:
        statuses: list[int] = []
        acked: list[int] = []
        async with (
            httpx.AsyncClient(base_url=server.url) as http,
            ws(server, "topics=none") as conn,
        ):

            async def post(i: int) -> None:
                response = await http.post("/events", json=event(i=i))
                statuses.append(response.status_code)
                if response.status_code == 503:
                    assert response.headers["Retry-After"]
                    assert response.json()["error"]["code"] == "overloaded"
                else:
                    acked.append(response.json()["seq"])

            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(post, i)
            assert statuses.count(503) >= 4
            answer = await request(conn, {"action": "publish", "id": 1, "event": event()})
            assert answer["error"]["code"] == "overloaded"
            release.set()
            await wait_for(lambda: not server.bus.router.saturated())
            stored = (await http.get("/events")).json()["events"]
        assert set(acked) <= {e["seq"] for e in stored}


# --- leaks (A9) ------------------------------------------------------------------------------


def _task_count() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else 0


async def test_connect_disconnect_cycles_leave_no_tasks_or_fds() -> None:
    async with running_server() as server:
        await (await raw(server)).aclose()  # warm up
        await connections(server, 0)
        tasks, fds = _task_count(), _fd_count()
        for i in range(1000):
            peer = await raw(server)
            if i % 2:
                await peer.read_frame()
            await peer.aclose()
        try:
            await wait_for(
                lambda: (
                    server.bus.router.statistics().connections == 0
                    and _task_count() <= tasks + 2  # a leak only grows; fewer is fine
                    and _fd_count() <= fds + 2
                ),
                seconds=30,
            )
        except trio.TooSlowError:
            attached = server.bus.router.statistics().connections
            raise AssertionError(
                f"tasks {tasks} -> {_task_count()}, fds {fds} -> {_fd_count()}, "
                f"connections {attached}"
            ) from None


async def test_pings_racing_a_close_do_not_take_the_server_down() -> None:
    """Regression (found by the C8 fuzz): a ping sent while hypercorn closes the stream."""
    async with running_server(ping_interval_seconds=0.001) as server:
        for _ in range(200):
            peer = await raw(server)
            async with peer.stream:
                await peer.send(rawws.frame(0x3, b"x"))  # protocol error: hypercorn closes
        await healthy_neighbour(server)


async def test_a_body_that_never_finishes_gets_408_json() -> None:
    async with running_server(body_timeout_seconds=0.5) as server:
        host, port = rawws.host_port(server.url)
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(
                b"POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            answer = b""
            with trio.fail_after(10):
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        error = orjson.loads(body)["error"]
        assert error["code"] == "request_timeout"
        assert "body_timeout_seconds" in error["message"]


async def test_stats_accounting_is_consistent() -> None:
    """G4: totals equal the sum per topic; dropped equals the sum of per-connection drops (none:
    a subscriber that does not read falls back on the log), and what the outbox deferred to the
    log is what it could not queue."""
    async with (
        running_server(outbox_events=5, slow_consumer_seconds=60) as server,
        open_ws(server.ws_url + "?topics=g4.*", message_queue_size=0),
        ws(server, "topics=none") as pub,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        for i in range(20):
            topic = f"g4.t{i % 3}"
            await request(
                pub, {"action": "publish", "id": i, "events": [event(topic, blob="x" * 20_000)] * 5}
            )
        outboxes = list(server.bus.router._router._outboxes.values())
        stats = (await http.get("/stats")).json()
        assert stats["total_events"] == 100 == sum(stats["events_per_topic"].values())
        assert stats["events_dropped"]["total"] == sum(o.dropped for o in outboxes) == 0
        assert sum(o.offered for o in outboxes) == 100  # only the slow one matches g4.*
        (slow,) = [o for o in outboxes if o.offered]
        assert slow.deferred > 0
        # the rest is with its writer, stuck in a write
        assert slow.delivered + slow.queued <= 100 - slow.deferred
        assert stats["catch_up"]["connections_catching_up"] == 1
        top = {t["topic"]: t["count"] for t in stats["top_topics"]}
        assert top == stats["events_per_topic"]


async def test_a_failing_log_is_storage_unavailable_and_nothing_is_acked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(self, events, keys=()):  # type: ignore[no-untyped-def]
        raise StorageError("disk on fire")

    monkeypatch.setattr(MemoryLog, "append", broken)
    async with (
        running_server(storage="memory") as server,
        httpx.AsyncClient(base_url=server.url) as http,
        ws(server, "topics=none") as conn,
    ):
        response = await http.post("/events", json=event())
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "storage_unavailable"
        answer = await request(conn, {"action": "publish", "id": 1, "event": event()})
        assert answer["error"]["code"] == "storage_unavailable"
        assert server.bus.log.last_seq == 0


async def test_the_pinger_writes_owed_bytes_before_any_ping() -> None:
    """Bytes a write without waiting could not finish are owed; on an idle connection the
    pinger writes them on its next round, and pings again only once nothing is owed."""
    from ipt_bus.edge import transport

    async with running_server(ping_interval_seconds=0.05) as server:
        peer = await raw(server)
        async with peer.stream:
            welcome = await peer.read_frame()
            assert welcome is not None
            (pinged,) = transport._PINGED.get().values()
            (stream,) = list(pinged)
            tcp = transport._tcp_server(stream)
            assert tcp is not None
            setattr(tcp, transport.OWED_ATTR, transport.text_frames([b'{"owed":true}']))
            got = await peer.read_frame()
            assert got == (TEXT, b'{"owed":true}')  # before any ping
            assert getattr(tcp, transport.OWED_ATTR) is None
            got = await peer.read_frame()
            assert got is not None
            assert got[0] == PING

"""WebSocket protocol (DESIGN §3) against a real hypercorn server with trio-websocket clients."""

from __future__ import annotations

import itertools
import socket
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import trio

from ipt_bus.edge import transport as _hypercorn
from tests import rawws
from tests.conftest import (
    closed_code,
    connections,
    event,
    open_ws,
    recv,
    recv_frames,
    refused,
    request,
    running_server,
    send,
    wait_for,
    ws,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ipt_bus.server import Server


async def test_spec_websocket_examples(server: Server) -> None:
    # const ws = new WebSocket('ws://127.0.0.1:8765/ws');  -- all events
    async with ws(server) as everything, ws(server, "topics=task.status,cost.update") as some:
        # ws.send({"action": "subscribe", "topics": ["phase.progress", "logs.error"]})
        await send(some, {"action": "subscribe", "topics": ["phase.progress", "logs.error"]})
        ack = await recv(some)
        assert ack == {
            "action": "subscribed",
            "topics": ["cost.update", "logs.error", "phase.progress", "task.status"],
        }
        # ws.send({"action": "publish", "event": {...}})
        await send(
            everything,
            {
                "action": "publish",
                "event": {
                    "type": "custom_event",
                    "topic": "custom.test",
                    "payload": {"message": "Hello from WebSocket"},
                },
            },
        )
        frames = [await recv(everything), await recv(everything)]
        published = next(f for f in frames if f.get("action") == "published")
        delivered = next(f for f in frames if "action" not in f)
        assert published["event"]["seq"] == delivered["seq"] == 1
        assert delivered["payload"] == {"message": "Hello from WebSocket"}
        await send(everything, {"action": "publish", "id": "p2", "event": event("logs.error")})
        assert (await recv(some))["topic"] == "logs.error"  # the first event never reached it


async def test_welcome_frame(server: Server) -> None:
    async with open_ws(server.ws_url) as conn:
        welcome = orjson.loads(await conn.get_message())
    assert welcome["action"] == "welcome"
    assert welcome["epoch"] == server.bus.log.epoch
    assert welcome["seq"] == 0
    assert welcome["limits"]["max_event_bytes"] == 1024 * 1024


async def test_wildcard_routing(server: Server) -> None:
    async with (
        ws(server, "topics=file.*") as one,
        ws(server, "topics=file.**") as rest,
        ws(server, "topics=*.status") as status,
        ws(server) as pub,
    ):
        for topic in ("file.progress", "file.a.b", "task.status", "file"):
            await request(pub, {"action": "publish", "id": topic, "event": event(topic)})
        await request(pub, {"action": "publish", "id": "end", "event": event("end.status")})
        assert (await recv(one))["topic"] == "file.progress"
        assert [(await recv(rest))["topic"] for _ in range(3)] == [
            "file.progress",
            "file.a.b",
            "file",
        ]
        assert [(await recv(status))["topic"] for _ in range(2)] == ["task.status", "end.status"]
        await request(one, {"action": "ping", "id": 1})  # nothing else was queued before the pong


async def test_per_publisher_order_and_strictly_increasing_seq() -> None:
    n = 2000
    # the outbox holds the whole run: this is about order, not about slow consumers
    async with (
        running_server(outbox_events=n + 10) as server,
        ws(server, "topics=order.*") as sub,
        ws(server, "topics=none") as pub,
    ):
        for i in range(n):
            await send(pub, {"action": "publish", "ack": False, "event": event("order.test", i=i)})
        got = [await recv(sub) for _ in range(n)]
    assert [e["payload"]["i"] for e in got] == list(range(n))
    seqs = [e["seq"] for e in got]
    assert all(a < b for a, b in itertools.pairwise(seqs))


async def test_batch_publish_ack(server: Server) -> None:
    async with ws(server, "topics=none") as pub:
        ack = await request(
            pub, {"action": "publish", "id": 5, "events": [event(n=i) for i in range(3)]}
        )
    assert ack["action"] == "published"
    assert [e["seq"] for e in ack["events"]] == [1, 2, 3]


async def test_bare_event_frame_is_published(server: Server) -> None:
    async with ws(server, "topics=none") as pub:
        await send(pub, event())
        ack = await recv(pub)
    assert ack["action"] == "published"
    assert ack["event"]["seq"] == 1


async def test_unsubscribe(server: Server) -> None:
    async with ws(server, "topics=a,b") as sub, ws(server, "topics=none") as pub:
        ack = await request(sub, {"action": "unsubscribe", "id": 1, "topics": ["a"]})
        assert ack == {"action": "unsubscribed", "id": 1, "topics": ["b"]}
        await request(pub, {"action": "publish", "id": 1, "events": [event("a"), event("b")]})
        assert (await recv(sub))["topic"] == "b"


async def test_five_hundred_subscribers_all_receive(server: Server) -> None:
    n = 500
    received = 0
    ready = trio.Semaphore(0)
    done = trio.Event()

    async def subscriber() -> None:
        nonlocal received
        async with ws(server, "topics=broadcast.*") as conn:
            ready.release()
            frame = await recv(conn)
            assert frame["topic"] == "broadcast.hello"
            received += 1
            if received == n:
                done.set()

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(subscriber)
        for _ in range(n):
            await ready.acquire()
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.post("/events", json=event("broadcast.hello"))
            assert response.status_code == 201
        with trio.fail_after(30):
            await done.wait()
    assert received == n


async def test_a_slow_consumer_catches_up_from_the_log_and_loses_nothing() -> None:
    blob = "x" * 8_000
    async with (
        running_server(outbox_events=20, outbox_bytes=1 << 20, slow_consumer_seconds=60) as server,
        open_ws(server.ws_url + "?topics=load.*", message_queue_size=0) as slow,
        ws(server, "topics=load.*") as healthy,
        ws(server, "topics=none") as pub,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        published = 0

        async def catching_up() -> int:
            return int((await http.get("/stats")).json()["catch_up"]["connections_catching_up"])

        async with trio.open_nursery() as nursery:
            healthy_got: list[int] = []

            async def drain_healthy() -> None:
                while True:
                    healthy_got.append((await recv(healthy))["seq"])

            nursery.start_soon(drain_healthy)
            with trio.fail_after(60):
                while await catching_up() == 0:  # the slow one's outbox overflowed
                    ack = await request(
                        pub,
                        {
                            "action": "publish",
                            "id": published,
                            "events": [event("load.x", blob=blob)] * 10,
                        },
                    )
                    published += len(ack["events"])
            await wait_for(lambda: len(healthy_got) == published)
            nursery.cancel_scope.cancel()
        assert healthy_got == list(range(1, published + 1))  # healthy one unaffected
        listed = (await http.get("/connections")).json()["connections"]
        states = {c["subscriptions"][0]: c["state"] for c in listed if c["subscriptions"]}
        assert "catching_up" in [c["state"] for c in listed]
        assert states["none"] == "live"

        # the slow one now reads: every event, in order, no gap (the rest came from the log)
        await request(pub, {"action": "publish", "id": "last", "event": event("load.x")})
        published += 1
        got: list[int] = []
        with trio.fail_after(30):
            while len(got) < published:
                for line in str(await slow.get_message()).split("\n"):
                    frame = orjson.loads(line)
                    if frame.get("action") != "welcome":
                        assert "action" not in frame, frame
                        got.append(frame["seq"])
        assert got == list(range(1, published + 1))
        stats = (await http.get("/stats")).json()
        assert stats["events_dropped"]["total"] == 0
        assert stats["catch_up"]["catch_ups"] >= 1
        assert 0 < stats["catch_up"]["events_read"] < published
        assert stats["catch_up"]["connections_catching_up"] == 0
        (slow_view,) = [
            c for c in (await http.get("/connections")).json()["connections"] if c["id"] == 1
        ]
        assert slow_view["state"] == "live"
        assert slow_view["lag"] == 0
        assert slow_view["delivered"] == published


async def test_consumer_full_past_the_timeout_is_closed_with_4008() -> None:
    async with running_server(outbox_events=5, slow_consumer_seconds=0.2) as server:
        async with (
            open_ws(server.ws_url, message_queue_size=0) as slow,
            ws(server, "topics=none") as pub,
        ):
            outboxes = server.bus.router._router._outboxes
            (slow_outbox,) = [o for c, o in outboxes.items() if c == min(outboxes)]
            blob = "x" * 16_000
            with trio.fail_after(30):
                while slow_outbox.closed_code is None:
                    await request(
                        pub, {"action": "publish", "id": 1, "events": [event(blob=blob)] * 20}
                    )
            assert slow_outbox.closed_code == 4008
            # it reads at last: what was already on the wire, then the close frame
            assert await closed_code(slow) == 4008
        async with httpx.AsyncClient(base_url=server.url) as http:
            await wait_for(lambda: _closed_with(http, "4008"))


async def _closed_with(http: httpx.AsyncClient, code: str) -> bool:
    stats = (await http.get("/stats")).json()
    return code in stats["connection_stability"]["closes_total"]


async def test_a_peer_that_never_reads_is_aborted_after_the_write_deadline() -> None:
    async with (
        running_server(
            outbox_events=5, slow_consumer_seconds=0.2, write_deadline_seconds=0.5
        ) as server,
        open_ws(server.ws_url, message_queue_size=0),
        ws(server, "topics=none") as pub,
    ):
        blob = "x" * 16_000
        with trio.fail_after(30):
            while server.bus.router.statistics().connections > 1:
                await request(
                    pub, {"action": "publish", "id": 1, "events": [event(blob=blob)] * 20}
                )
        assert (await request(pub, {"action": "ping", "id": 2}))["action"] == "pong"


@pytest.mark.parametrize(
    ("frame", "code", "field"),
    [
        ("{not json", "invalid_json", None),
        ("[1,2]", "invalid_frame", None),
        ('"text"', "invalid_frame", None),
        ('{"action":"dance","id":3}', "unknown_action", "action"),
        ('{"action":"subscribe","id":3}', "missing_field", "topics"),
        ('{"action":"subscribe","id":3,"topics":["a..b"]}', "invalid_pattern", "topics"),
        ('{"action":"subscribe","id":3,"topics":[]}', "invalid_field", "topics"),
        (
            '{"action":"publish","id":3,"event":{"type":"t","topic":"a.*","payload":{}}}',
            "invalid_topic",
            "event.topic",
        ),
        (
            '{"action":"publish","id":3,"event":{"type":"t","topic":"a","payload":[]}}',
            "invalid_field",
            "event.payload",
        ),
        (
            '{"action":"publish","id":3,"event":{"topic":"a","payload":{}}}',
            "missing_field",
            "event.type",
        ),
        (
            '{"action":"publish","id":3,"event":{"type":"t","topic":"a","payload":{},"x":1}}',
            "unknown_field",
            "event.x",
        ),
        (
            '{"action":"publish","id":3,"events":[{"type":"t","topic":"a","payload":{}},{"type":"t"}]}',
            "missing_field",
            "events[1].topic",
        ),
        (
            '{"type":"t","topic":"a","payload":{"n":18446744073709551616}}',
            "invalid_field",
            "payload.n",
        ),
    ],
)
async def test_bad_frames_get_specific_errors_and_the_connection_lives(
    server: Server, frame: str, code: str, field: str | None
) -> None:
    async with ws(server, "topics=neighbour.*") as neighbour, ws(server, "topics=none") as conn:
        await conn.send_message(frame)
        error = await recv(conn)
        assert error["action"] == "error"
        assert error["error"]["code"] == code
        assert error["error"].get("field") == field
        if '"id":3' in frame:
            assert error["id"] == 3
        # the connection and its neighbour keep working
        assert (await request(conn, {"action": "ping", "id": "after"}))["action"] == "pong"
        await request(conn, {"action": "publish", "id": "n", "event": event("neighbour.ok")})
        assert (await recv(neighbour))["topic"] == "neighbour.ok"
    assert server.bus.log.last_seq == 1  # nothing bad reached the log


async def test_binary_frames_are_refused_with_an_error_frame(server: Server) -> None:
    async with ws(server) as conn:
        for payload in (b"", b"\x00\x01"):
            await conn.send_message(payload)
            error = await recv(conn)
            assert error["error"]["code"] == "unsupported_frame"
        assert (await request(conn, {"action": "ping", "id": 1}))["action"] == "pong"


async def test_oversize_event_and_message() -> None:
    async with running_server(max_event_bytes=1000, max_message_bytes=4000) as server:
        async with ws(server) as conn:
            # over the event limit, under the message limit: an error frame
            ack = await request(
                conn, {"action": "publish", "id": 1, "event": event(blob="x" * 2000)}
            )
            assert ack["error"]["code"] == "too_large"
            assert "max_event_bytes" in ack["error"]["message"]
            assert (await request(conn, {"action": "ping", "id": 2}))["action"] == "pong"
        async with ws(server) as conn:
            # over the message limit: hypercorn closes with 1009
            await send(conn, {"action": "publish", "id": 1, "event": event(blob="x" * 5000)})
            assert await closed_code(conn) == 1009


async def test_subscription_limit_names_the_limit() -> None:
    async with running_server(max_subscriptions=3) as server:
        async with ws(server, "topics=a,b") as conn:
            error = await request(conn, {"action": "subscribe", "id": 1, "topics": ["c", "d"]})
            assert error["error"]["code"] == "limit_exceeded"
            assert "max_subscriptions" in error["error"]["message"]
        status, _ = await refused(server.ws_url + "?topics=a,b,c,d")
        assert status == 400


async def test_subscription_bytes_are_bounded_and_the_error_names_the_limit() -> None:
    long = ["x" * 200 + f".{i}" for i in range(50)]  # 50 patterns, about 10 KB
    async with running_server() as server:
        async with ws(server, "topics=a") as conn:
            error = await request(conn, {"action": "subscribe", "id": 1, "topics": long})
            assert error["error"]["code"] == "limit_exceeded"
            assert error["error"]["field"] == "topics"
            assert "max_subscription_bytes" in error["error"]["message"]
            ok = await request(conn, {"action": "subscribe", "id": 2, "topics": long[:30]})
            assert ok["action"] == "subscribed"
        status, body = await refused(server.ws_url + "?topics=" + ",".join(long))
        assert status == 400
        assert "max_subscription_bytes" in body["error"]["message"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("topics=a..b", "topics"),
        ("since=-1", "since"),
        ("since=x", "since"),
        ("batch=maybe", "batch"),
    ],
)
async def test_bad_connect_parameters_are_refused_with_400(
    server: Server, query: str, field: str
) -> None:
    status, body = await refused(f"{server.ws_url}?{query}")
    assert status == 400
    assert body["error"]["field"] == field


async def test_unknown_websocket_path_is_404(server: Server) -> None:
    status, body = await refused(server.url.replace("http", "ws") + "/other")
    assert status == 404
    assert body["error"]["code"] == "not_found"


async def test_garbage_before_the_upgrade(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    for garbage in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
        b"GET /ws HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ):
        sock = await trio.open_tcp_stream(host, int(port))
        async with sock:
            await sock.send_all(garbage)
            with trio.fail_after(10):
                answer = await sock.receive_some(1000)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
    async with httpx.AsyncClient(base_url=server.url) as http:
        plain = await http.get("/ws")
        assert plain.status_code == 426
        assert plain.json()["error"]["code"] == "upgrade_required"
        assert (await http.get("/health")).status_code == 200


async def test_batch_mode_coalesces_a_backlog(server: Server) -> None:
    async with ws(server, "topics=b.*&batch=1") as sub, ws(server, "topics=none") as pub:
        frames, messages = await publish_50_and_count(pub, sub)
        assert [f["payload"]["i"] for f in frames] == list(range(50))
        assert messages < 50


async def test_a_backlog_without_batching_is_one_message_per_event_in_one_write(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    send = _hypercorn.DirectSender.send

    async def counted(sender: _hypercorn.DirectSender, texts: list[bytes]) -> None:
        writes.append(len(texts))
        await send(sender, texts)

    monkeypatch.setattr(_hypercorn.DirectSender, "send", counted)
    async with ws(server, "topics=b.*") as sub, ws(server, "topics=none") as pub:
        frames, messages = await publish_50_and_count(pub, sub)
    assert [f["payload"]["i"] for f in frames] == list(range(50))
    assert messages == 50  # the protocol is unchanged: one event per message
    assert sum(writes) >= 2  # and the backlog left in shared writes, not one send each
    assert len(writes) < 50


async def publish_50_and_count(pub: Any, sub: Any) -> tuple[list[dict[str, Any]], int]:
    """Publish 50 events on b.x; the frames `sub` got and in how many messages."""
    await request(
        pub, {"action": "publish", "id": 1, "events": [event("b.x", i=i) for i in range(50)]}
    )
    frames: list[dict[str, Any]] = []
    messages = 0
    while len(frames) < 50:
        frames.extend(await recv_frames(sub))
        messages += 1
    return frames, messages


async def test_batch_can_be_switched_on_by_subscribe(server: Server) -> None:
    async with ws(server, "topics=none") as sub, ws(server, "topics=none") as pub:
        await request(sub, {"action": "subscribe", "id": 1, "topics": ["b.*"], "batch": True})
        _, messages = await publish_50_and_count(pub, sub)
        assert messages < 50


async def test_resume_since_replays_then_goes_live_without_gap_or_duplicate(server: Server) -> None:
    async with ws(server, "topics=none") as pub:
        await request(
            pub, {"action": "publish", "id": 1, "events": [event("r.x", i=i) for i in range(20)]}
        )
        async with ws(server, f"topics=r.*&since=5&epoch={server.bus.log.epoch}") as sub:
            await request(
                pub,
                {
                    "action": "publish",
                    "id": 2,
                    "events": [event("r.x", i=i) for i in range(20, 25)],
                },
            )
            got = [(await recv(sub))["seq"] for _ in range(20)]
    assert got == list(range(6, 26))


async def test_resume_while_events_keep_arriving() -> None:
    async with running_server() as server, ws(server, "topics=none") as pub:
        async with trio.open_nursery() as nursery:
            stop = trio.Event()

            async def keep_publishing() -> None:
                i = 0
                while not stop.is_set():
                    await request(
                        pub, {"action": "publish", "id": i, "events": [event("live.x", i=i)] * 5}
                    )
                    i += 1

            nursery.start_soon(keep_publishing)
            await wait_for(lambda: server.bus.log.last_seq >= 200)
            async with ws(server, "topics=live.*&since=100") as sub:
                start = server.bus.log.last_seq
                await wait_for(lambda: server.bus.log.last_seq >= start + 200)
                stop.set()
                got = [(await recv(sub))["seq"] for _ in range(start + 100)]
        assert got == list(range(101, start + 201))


async def test_resume_older_than_the_buffer_is_told_retention() -> None:
    async with (
        running_server(storage="memory", buffer_size=10) as server,
        ws(server, "topics=none") as pub,
    ):
        await request(
            pub, {"action": "publish", "id": 1, "events": [event(i=i) for i in range(30)]}
        )
        async with ws(server, "since=5") as sub:
            gap = await recv(sub)
            assert gap == {"action": "gap", "reason": "retention", "from_seq": 6, "to_seq": 20}
            assert [(await recv(sub))["seq"] for _ in range(10)] == list(range(21, 31))


async def test_resume_from_another_epoch_is_told_history_was_lost(server: Server) -> None:
    async with ws(server, "topics=none") as pub:
        await request(pub, {"action": "publish", "id": 1, "events": [event(i=i) for i in range(3)]})
    for query in ("since=2&epoch=old-epoch", "since=99"):
        async with ws(server, query) as sub:
            gap = await recv(sub)
            assert gap["action"] == "gap"
            assert gap["reason"] == "epoch"
            assert gap["epoch"] == server.bus.log.epoch
            # then the retained history of the new epoch, from its start
            assert [(await recv(sub))["seq"] for _ in range(3)] == [1, 2, 3]


async def test_shutdown_closes_websockets_with_1001() -> None:
    async with running_server() as server:
        async with ws(server) as conn:
            server.shutdown()
            assert await closed_code(conn) == 1001
        with trio.fail_after(10):
            await server.bus.wait_stopped()


async def test_stats_track_connections_and_latency(server: Server) -> None:
    async with ws(server) as sub, httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/events", json=event())
        await recv(sub)

        async def ready() -> bool:
            stats = (await http.get("/stats")).json()
            return bool(stats["latency_ms"]["samples"]) and stats["active_connections"] == 1

        await wait_for(ready)
        stats = (await http.get("/stats")).json()
        assert stats["latency_ms"]["p99"] >= 0
        assert stats["connection_stability"]["opens_last_minute"] == 1
    async with httpx.AsyncClient(base_url=server.url) as http:
        await wait_for(lambda: _closed_count(http))


async def test_no_task_outlives_its_connection(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:

        async def tasks() -> int:
            return int((await http.get("/stats")).json()["tasks"])

        # the first WebSocket starts the run's one pinger, and a first publish may open a
        # pooled connection to a Redis log (a task each): both stay
        async with ws(server, "topics=t.*") as warm_up:
            await request(warm_up, {"action": "publish", "id": 1, "event": event("t.x")})
        await connections(server, 0)
        baseline = await tasks()
        for _ in range(5):  # readers, writers, ackers, hypercorn's own per connection
            async with ws(server, "topics=t.*") as sub, ws(server, "topics=none") as pub:
                await request(pub, {"action": "publish", "id": 1, "event": event("t.x")})
                await recv(sub)
                assert await tasks() > baseline
        await wait_for(lambda: _at_most(tasks, baseline))


async def _at_most(count: Callable[[], Awaitable[int]], limit: int) -> bool:
    counted: int = await count()
    return counted <= limit


async def _closed_count(http: httpx.AsyncClient) -> bool:
    stats = (await http.get("/stats")).json()
    return bool(
        stats["active_connections"] == 0
        and sum(stats["connection_stability"]["closes_total"].values()) == 1
    )


def test_socket_module_available() -> None:
    assert socket.AF_INET


async def test_stats_count_the_close_code_the_client_sent() -> None:
    async with (
        running_server() as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        for code in (1000, 4000):
            async with open_ws(server.ws_url) as conn:
                await conn.get_message()
                # hypercorn pings at once: let the client answer before it closes (else
                # trio-websocket may try to send that pong while closing, and fail)
                await request(conn, {"action": "ping", "id": 1})
                await conn.aclose(code)
        peer = await rawws.connect(*rawws.host_port(server.url), "/ws")
        await peer.read_frame()  # welcome
        await peer.stream.aclose()  # no close frame at all
        await connections(server, 0)
        closes = (await http.get("/stats")).json()["connection_stability"]["closes_total"]
    assert closes == {"1000": 1, "4000": 1, "1006": 1}


async def test_hundreds_of_publishes_in_one_write_are_acked_and_delivered_in_order(
    server: Server,
) -> None:
    """A read's frames reach the connection as one message (transport `MANY_KEY`): nothing of
    it is lost or reordered, acks included, with a ping and a bad frame among them."""
    frames = []
    for i in range(300):
        body = {"action": "publish", "id": i, "event": event("bulk.x", n=i)}
        frames.append(rawws.frame(1, orjson.dumps(body)))
    frames.insert(100, rawws.frame(1, b'{"action": "ping", "id": "p"}'))
    frames.insert(200, rawws.frame(1, b'{"action": "nope", "id": "bad"}'))
    async with ws(server, "topics=bulk.*") as sub:
        peer = await rawws.connect(*rawws.host_port(server.url), "/ws?topics=none")
        await peer.read_frame()  # welcome
        await peer.send(b"".join(frames))
        answers: list[dict[str, Any]] = []
        while len(answers) < 302:
            got = await peer.read_frame()
            assert got is not None
            answers.append(orjson.loads(got[1]))
        await peer.aclose()
        delivered = [await recv(sub) for _ in range(300)]
    ids = [a.get("id") for a in answers]
    assert [i for i in ids if isinstance(i, int)] == list(range(300))
    assert "p" in ids
    assert "bad" in ids
    assert answers[ids.index("bad")]["error"]["code"] == "unknown_action"
    seqs = [a["event"]["seq"] for a in answers if a["action"] == "published"]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 300
    assert [d["payload"]["n"] for d in delivered] == list(range(300))

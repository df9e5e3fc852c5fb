"""Several bus nodes on one Redis (issue 16): each node an `ipt-bus serve` process, the Redis a
`redis-server` of the test's own on a free port. A client must see no difference between one
node and many: one `seq` order everywhere, the same history, resume on any node."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import trio

from ipt_bus.core.errors import StorageError
from ipt_bus.storage.redis import RedisLog
from tests.conftest import (
    RECEIVE_SECONDS,
    closed_code,
    event,
    open_ws,
    recv,
    request,
    running_server,
    unique_prefix,
    wait_for,
    ws,
)
from tests.integration.test_launch import BIN, free_port, healthy, process
from tests.redisproc import RedisProcess, redis_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trio_websocket import WebSocketConnection


@contextlib.asynccontextmanager
async def node(redis_url: str, *extra: str) -> AsyncIterator[tuple[str, trio.Process]]:
    """`ipt-bus serve --storage redis` on a free port; its URL once it is healthy."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "ipt-bus"), "serve", "--port", str(port), "--storage", "redis"]
    async with process(*argv, "--redis-url", redis_url, *extra) as proc:
        await wait_for(lambda: healthy(url), seconds=20)
        yield url, proc


@contextlib.asynccontextmanager
async def nodes(redis_url: str, count: int) -> AsyncIterator[list[str]]:
    async with contextlib.AsyncExitStack() as stack:
        urls = [(await stack.enter_async_context(node(redis_url)))[0] for _ in range(count)]
        yield urls


def ws_url(url: str, query: str = "") -> str:
    return url.replace("http://", "ws://") + "/ws" + (f"?{query}" if query else "")


async def events_of(conn: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < count:
        frame = await recv(conn)
        assert "action" not in frame, frame  # no gap, no error: only events
        out.append(frame)
    return out


async def history(url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return list((await http.get("/events", params={"limit": 1000})).json()["events"])


async def test_three_nodes_deliver_one_seq_order_and_one_history(tmp_path: Path) -> None:
    per_node = 20
    with redis_server(tmp_path) as redis:
        async with nodes(redis.url, 3) as urls, contextlib.AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(open_ws(ws_url(u, "topics=x.*"))) for u in urls]
            welcomes = [orjson.loads(await s.get_message()) for s in subs]
            assert len({w["node"] for w in welcomes}) == 3  # three nodes, each named
            assert len({w["epoch"] for w in welcomes}) == 1  # one log

            async def publish(url: str, name: str) -> None:
                async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                    for n in range(per_node):
                        answer = await http.post("/events", json=event(f"x.{name}", n=n))
                        assert answer.status_code == 201, answer.text

            async with trio.open_nursery() as nursery:  # all three publish at once
                for i, url in enumerate(urls):
                    nursery.start_soon(publish, url, f"n{i}")
            seen = [await events_of(s, 3 * per_node) for s in subs]
            seqs = [e["seq"] for e in seen[0]]
            assert seqs == list(range(1, 3 * per_node + 1))
            assert seen[0] == seen[1] == seen[2]  # same events, same order, on every node
            stored = [await history(u) for u in urls]
            assert stored[0] == stored[1] == stored[2] == seen[0]


async def test_resume_on_another_node_after_sigkill_has_no_gap_or_duplicate(
    tmp_path: Path,
) -> None:
    total = 300
    with redis_server(tmp_path) as redis:
        async with node(redis.url) as (a, a_proc), node(redis.url) as (b, _):
            published = 0

            async def publish() -> None:
                nonlocal published
                async with httpx.AsyncClient(base_url=b, timeout=10) as http:
                    for n in range(total):
                        assert (
                            await http.post("/events", json=event("r.x", n=n))
                        ).status_code == 201
                        published += 1

            async with open_ws(ws_url(a, "topics=r.*")) as sub, trio.open_nursery() as nursery:
                welcome = orjson.loads(await sub.get_message())
                nursery.start_soon(publish)
                seen = [e["seq"] for e in await events_of(sub, 100)]
                a_proc.kill()  # node A dies with its subscriber's connection on it
                with trio.fail_after(10):
                    await a_proc.wait()
                since = seen[-1]
                query = f"topics=r.*&since={since}&epoch={welcome['epoch']}"
                async with open_ws(ws_url(b, query)) as again:
                    assert orjson.loads(await again.get_message())["action"] == "welcome"
                    await wait_for(lambda: published == total, seconds=30)
                    rest = [e["seq"] for e in await events_of(again, total - since)]
            assert seen + rest == list(range(1, total + 1))


async def test_an_idempotency_key_answers_alike_on_every_node(tmp_path: Path) -> None:
    with redis_server(tmp_path) as redis:
        async with nodes(redis.url, 2) as (a, b):
            headers = {"Idempotency-Key": "order-7"}
            async with httpx.AsyncClient(timeout=10) as http:
                first = await http.post(f"{a}/events", json=event("k.x"), headers=headers)
                again = await http.post(f"{b}/events", json=event("k.x"), headers=headers)
            assert first.status_code == again.status_code == 201
            assert first.json() == again.json()
            async with open_ws(ws_url(b)) as conn:
                await conn.get_message()
                frame = {"action": "publish", "id": 1, "idempotency_key": "order-7"}
                answer = await request(conn, frame | {"event": event("k.x")})
            assert answer["event"] == first.json()
            assert len(await history(a)) == len(await history(b)) == 1


async def test_redis_going_away_refuses_publishes_and_everything_recovers_without_restart(
    tmp_path: Path,
) -> None:
    redis = RedisProcess(tmp_path, appendonly=True)  # what Redis acknowledged survives it
    redis.start()
    try:
        async with (
            node(redis.url) as (url, _),
            httpx.AsyncClient(base_url=url, timeout=10) as http,
            open_ws(ws_url(url, "topics=f.*")) as sub,
            open_ws(ws_url(url)) as pub,
        ):
            await sub.get_message()
            epoch = orjson.loads(await pub.get_message())["epoch"]
            assert (await http.post("/events", json=event("f.x", n=1))).status_code == 201
            assert [e["seq"] for e in await events_of(sub, 1)] == [1]
            redis.stop()

            with trio.fail_after(5):  # refused at once, nothing acknowledged
                refused = await http.post("/events", json=event("f.x", n=2))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "storage_unavailable"
            answer = await request(pub, {"action": "publish", "id": 1, "event": event("f.x")})
            assert answer["error"]["code"] == "storage_unavailable"
            keyed = await http.post(
                "/events", json=event("f.x"), headers={"Idempotency-Key": "while-down"}
            )  # its key cannot be looked up either: refused the same way, the node stays up
            assert keyed.status_code == 503, keyed.text
            health = await http.get("/health")
            assert health.status_code == 503
            assert health.json()["status"] == "degraded"
            assert "Redis" in health.json()["checks"]["log"]
            assert (await http.get("/events")).status_code == 503  # no wrong history either
            # a client resuming meanwhile is let in, and waits for the log to come back
            async with open_ws(ws_url(url, f"topics=f.*&since=0&epoch={epoch}")) as resumed:
                assert orjson.loads(await resumed.get_message())["action"] == "welcome"
                redis.start()
                assert [e["seq"] for e in await events_of(resumed, 1)] == [1]

            await wait_for(lambda: _status(http, "/health", 200), seconds=20)
            after = await http.post("/events", json=event("f.x", n=3))
            assert after.status_code == 201
            assert after.json()["seq"] == 2  # nothing was stored while Redis was away
            # the subscriber stayed connected and goes on, no gap
            assert [e["payload"]["n"] for e in await events_of(sub, 1)] == [3]
            letters = (await http.get("/dlq")).json()["dead_letters"]
            assert {d["error"]["code"] for d in letters} == {"storage_unavailable"}
    finally:
        redis.stop()


async def _workers_listening(url: str, count: int, pids: set[int] | None = None) -> bool:
    """Whether `count` different workers answered (the kernel spreads new connections over the
    workers listening; one that is still starting gets none)."""
    seen = set() if pids is None else pids
    for _ in range(8):
        async with httpx.AsyncClient() as http:  # a new connection each time
            seen.add(int((await http.get(f"{url}/stats")).json()["node"].rsplit("/")[1]))
    return len(seen) >= count


async def _status(http: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await http.get(path)).status_code == status


async def test_workers_share_one_port_and_one_bus(tmp_path: Path) -> None:
    with redis_server(tmp_path) as redis:
        async with node(redis.url, "--workers", "2") as (url, proc):
            await wait_for(lambda: _workers_listening(url, 2), seconds=30)
            by_node: dict[str, WebSocketConnection] = {}
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(64):  # the kernel spreads new connections over the workers
                    conn = await stack.enter_async_context(open_ws(ws_url(url, "topics=w.*")))
                    by_node.setdefault(orjson.loads(await conn.get_message())["node"], conn)
                    if len(by_node) == 2:
                        break
                assert len(by_node) == 2, by_node
                first, second = by_node.values()
                answer = await request(
                    first, {"action": "publish", "id": 1, "event": event("w.x", n=1)}
                )
                assert answer["action"] == "published"
                got = await events_of(second, 1)  # published on one worker, read on the other
                assert got[0]["payload"]["n"] == 1
                proc.send_signal(signal.SIGTERM)
                assert await closed_code(second) == 1001  # each worker stops in order
            with trio.fail_after(RECEIVE_SECONDS):
                assert await proc.wait() == 0


@pytest.mark.parametrize("storage", ["sqlite", "memory"])
async def test_workers_refuse_a_log_they_would_not_share(storage: str) -> None:
    argv = [str(BIN / "ipt-bus"), "serve", "--workers", "2", "--storage", storage]
    with trio.fail_after(20):
        result = await trio.run_process(argv, capture_stderr=True, check=False)
    assert result.returncode == 2
    assert "--storage redis" in result.stderr.decode()


async def test_a_flushed_redis_is_a_new_epoch_clients_resume_into(redis_url: str) -> None:
    async with running_server(
        storage="redis", redis_url=redis_url, redis_prefix=unique_prefix()
    ) as server:
        async with ws(server, "topics=e.*") as sub, httpx.AsyncClient(base_url=server.url) as http:
            first = (await http.post("/events", json=event("e.x"))).json()
            await recv(sub)
            log = server.bus.log
            assert isinstance(log, RedisLog)
            old = log.epoch
            names = [log._key(k) for k in ("epoch", "seq", "events", "bytes")]
            await log._client.delete(names)  # as FLUSHALL or a new Redis would
            assert await closed_code(sub) == 1012  # reconnect: the log started over
        await wait_for(lambda: server.bus.log.epoch != old)
        async with ws(server, f"topics=e.*&since={first['seq']}&epoch={old}") as again:
            gap = await recv(again)
            assert gap["action"] == "gap"
            assert gap["reason"] == "epoch"
            async with httpx.AsyncClient(base_url=server.url) as http:
                answer = await http.post("/events", json=event("e.x"))
                assert answer.json()["seq"] == 1
            assert (await recv(again))["seq"] == 1


async def test_a_catch_up_waits_for_redis_rather_than_closing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = 0
    read_after = RedisLog.read_after

    async def counted(self: RedisLog, *args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        try:
            return await read_after(self, *args, **kwargs)
        except StorageError:
            failures += 1
            raise

    monkeypatch.setattr(RedisLog, "read_after", counted)
    redis = RedisProcess(tmp_path, appendonly=True)
    redis.start()
    try:
        shared = {"storage": "redis", "redis_url": redis.url, "redis_prefix": "p"}
        async with (
            running_server(**shared) as server,
            httpx.AsyncClient(base_url=server.url) as http,
        ):
            first = (await http.post("/events", json=event("c.x"))).json()
            redis.stop()
            query = f"topics=c.*&since=0&epoch={server.bus.log.epoch}"
            async with ws(server, query) as resumed:
                await wait_for(lambda: failures >= 2)  # tried, failed, tried again: still open
                redis.start()
                assert (await recv(resumed))["seq"] == first["seq"]
    finally:
        redis.stop()


async def test_dead_letters_are_shared_by_the_nodes(redis_url: str) -> None:
    shared = {"storage": "redis", "redis_url": redis_url, "redis_prefix": unique_prefix()}
    async with (
        running_server(**shared, retention_interval_seconds=0.05) as a,
        running_server(**shared, retention_interval_seconds=0.05) as b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        bad = {"type": "t", "topic": "bad..topic", "payload": {}}
        assert (await http.post(f"{a.url}/events", json=bad)).status_code == 400

        async def letters(server: Any) -> list[dict[str, Any]]:
            return list((await http.get(f"{server.url}/dlq")).json()["dead_letters"])

        async def seen_on_b() -> bool:
            return len(await letters(b)) == 1

        await wait_for(seen_on_b)  # refused on A, listed on B
        (letter,) = await letters(b)
        assert letter["source"] == "rest"
        assert letter["error"]["field"] == "topic"
        assert (await http.delete(f"{b.url}/dlq/{letter['id']}")).status_code == 204

        async def gone_on_a() -> bool:
            return not await letters(a)

        await wait_for(gone_on_a)  # deleted on B, gone on A
        # ids come from blocks each node reserved: never the same on two nodes
        assert (await http.post(f"{a.url}/events", json=bad)).status_code == 400
        assert (await http.post(f"{b.url}/events", json=bad)).status_code == 400

        async def both_on_a() -> bool:
            return len(await letters(a)) == 2

        await wait_for(both_on_a)
        assert len({d["id"] for d in await letters(a)}) == 2


async def test_a_publishing_node_killed_mid_stream_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path) as redis:
        async with node(redis.url) as (a, a_proc), node(redis.url) as (b, _):
            acked: dict[int, int] = {}

            async def publish(stop: trio.Event) -> None:
                n = 0
                async with httpx.AsyncClient(base_url=a, timeout=10) as http:
                    while not stop.is_set():
                        try:
                            answer = await http.post("/events", json=event("k.x", n=n))
                        except httpx.TransportError:
                            return  # the node died under us: what was acked is what counts
                        assert answer.status_code == 201, answer.text
                        acked[answer.json()["seq"]] = n
                        n += 1

            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(publish, stop)
                await wait_for(lambda: len(acked) >= 300, seconds=30)
                a_proc.kill()  # mid-stream
                stop.set()
            stored = {e["seq"]: e["payload"]["n"] for e in await _all(b)}
            assert all(stored.get(seq) == n for seq, n in acked.items())
            assert sorted(stored) == list(range(1, len(stored) + 1))  # no hole, no duplicate


async def _all(url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        since = 0
        while True:
            page = (await http.get("/events", params={"since": since, "limit": 1000})).json()
            out += page["events"]
            if not page["events"]:
                return out
            since = page["next"]


async def test_serve_refuses_a_redis_it_cannot_use(tmp_path: Path) -> None:
    serve = [str(BIN / "ipt-bus"), "serve", "--port", str(free_port()), "--storage", "redis"]
    with trio.fail_after(30):
        missing = await trio.run_process(serve, capture_stderr=True, check=False)
        url = f"redis://:secret@127.0.0.1:{free_port()}/0"
        unreachable = await trio.run_process(
            [*serve, "--redis-url", url], capture_stderr=True, check=False
        )
    assert missing.returncode == 2
    assert "--redis-url" in missing.stderr.decode()
    assert unreachable.returncode == 1
    message = unreachable.stderr.decode()
    assert "cannot use Redis at redis://***@127.0.0.1" in message, message
    assert "secret" not in message


async def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    with redis_server(tmp_path) as redis:
        async with node(redis.url, "--workers", "2") as (url, proc):
            pids: set[int] = set()
            await wait_for(lambda: _workers_listening(url, 2, pids), seconds=30)
            proc.kill()  # no chance to pass anything on

            def gone() -> bool:
                return not any(Path(f"/proc/{pid}").exists() for pid in pids)

            await wait_for(gone, seconds=20)


@pytest.mark.parametrize("prefix", ["", "a b", "{bus}"])
def test_a_redis_prefix_that_cannot_be_a_hash_tag_is_refused_by_name(prefix: str) -> None:
    from ipt_bus.cli import config_from_args

    argv = ["serve", "--storage", "redis", "--redis-url", "redis://127.0.0.1:1/0"]
    with pytest.raises(ValueError, match="--redis-prefix"):
        config_from_args([*argv, "--redis-prefix", prefix])

"""The SQLite log through the real server: crash safety, resume, full disk, bad files (issue 5).

Crash tests run `ipt-bus serve` as a process and kill it while publishers are mid-stream;
everything the bus acknowledged must be there after the restart, exactly once, in order.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from ipt_bus.storage.sqlite import FILE_NAME, SqliteLog
from tests.conftest import event, open_ws, recv, request, running_server, send, wait_for, ws
from tests.integration.test_launch import BIN, free_port, healthy, process

ACKED_BEFORE_KILL = 1_000


async def _all_events(url: str) -> list[dict[str, Any]]:
    """Every retained event, paging forward with the `next` cursor."""
    out: list[dict[str, Any]] = []
    since = 0
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while True:
            page = (await http.get("/events", params={"since": since, "limit": 1000})).json()
            out.extend(page["events"])
            if not page["events"]:
                return out
            since = page["next"]


async def _ws_publisher(url: str, acked: dict[int, int], stop: trio.Event) -> None:
    """Publish batches of 10 over one WebSocket; `acked` maps seq -> the payload's n."""
    n = 0
    try:
        async with open_ws(url) as conn:
            await conn.get_message()  # welcome
            while not stop.is_set():
                batch = [event("crash.ws", n=n + i) for i in range(10)]
                answer = await request(conn, {"action": "publish", "id": n, "events": batch})
                assert answer["action"] == "published", answer
                for i, p in enumerate(answer["events"]):
                    acked[p["seq"]] = n + i
                n += 10
    except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
        return  # the server died under us: what was acked is what counts


async def _rest_publisher(url: str, acked: dict[int, int], stop: trio.Event) -> None:
    n = 1_000_000
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while not stop.is_set():
            try:
                response = await http.post("/events", json=event("crash.rest", n=n))
            except httpx.TransportError:
                return
            if response.status_code == 503:  # SIGTERM: the bus is shutting down
                assert response.json()["error"]["code"] == "shutting_down"
                return
            assert response.status_code == 201, response.text
            acked[response.json()["seq"]] = n
            n += 1


async def _crash_and_check(tmp_path: Path, how: signal.Signals) -> None:
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "ipt-bus"), "serve", "--port", str(port), "--data-dir", str(data)]
    acked: dict[int, int] = {}
    async with process(*argv) as proc:
        await wait_for(lambda: healthy(url), seconds=20)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_ws_publisher, f"ws://127.0.0.1:{port}/ws", acked, stop)
            nursery.start_soon(_rest_publisher, url, acked, stop)
            await wait_for(lambda: len(acked) >= ACKED_BEFORE_KILL, seconds=60)
            proc.send_signal(how)  # publishers are mid-stream
            with trio.fail_after(10):
                code = await proc.wait()
            stop.set()
        assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
    async with process(*argv):
        await wait_for(lambda: healthy(url), seconds=20)
        stored = await _all_events(url)
        seqs = [e["seq"] for e in stored]
        assert seqs == sorted(set(seqs)), "seq strictly increasing, no duplicate"
        assert len({e["id"] for e in stored}) == len(stored)
        by_seq = {e["seq"]: e["payload"]["n"] for e in stored}
        missing = [s for s in acked if s not in by_seq]
        assert not missing, f"{len(missing)} acknowledged events lost"
        assert all(by_seq[s] == n for s, n in acked.items())
        ns = [e["payload"]["n"] for e in stored]
        assert len(ns) == len(set(ns)), "an event stored twice"
        async with httpx.AsyncClient(base_url=url) as http:
            after = (await http.post("/events", json=event("crash.after"))).json()
        assert after["seq"] == max(seqs) + 1
    with sqlite3.connect(data / FILE_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


async def test_sigkill_mid_stream_loses_no_acknowledged_event(tmp_path: Path) -> None:
    await _crash_and_check(tmp_path, signal.SIGKILL)


async def test_sigterm_mid_stream_loses_no_acknowledged_event(tmp_path: Path) -> None:
    await _crash_and_check(tmp_path, signal.SIGTERM)


# `nox -s repeat` runs the resume test this many times in a row to show it does not flake
REPEAT = int(os.environ.get("IPT_BUS_REPEAT", "1"))


@pytest.mark.parametrize("round_", range(REPEAT))
async def test_resume_during_live_traffic_is_gapless_and_duplicate_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    """A resume whose replay is provably slower than the publishers: every page the replay
    reads first waits until more events were published than the outbox holds (1,000), so the
    live events overflow it while history is read. Before catching up from the log this lost
    events (a `slow_consumer` gap); now every one arrives, once, in order."""
    total, since, outbox = 6_000, 400, 1_000
    published = 0
    reads = 0
    read_after = SqliteLog.read_after

    async def slow_read(self: SqliteLog, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        mark = min(total, published + outbox + 200)
        await wait_for(lambda: published >= mark, seconds=30)
        return await read_after(self, *args, **kwargs)

    async with (
        running_server(storage="sqlite", data_dir=str(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):

        async def publish(start: int, count: int) -> None:
            nonlocal published
            for i in range(start, start + count, 50):
                batch = [event("live.x", n=n) for n in range(i, min(i + 50, start + count))]
                assert (await http.post("/events", json=batch)).status_code == 201
                published = i + len(batch)

        await publish(0, 1_000)
        epoch = server.bus.log.epoch
        got: list[int] = []
        monkeypatch.setattr(SqliteLog, "read_after", slow_read)
        async with (
            ws(server, f"since={since}&epoch={epoch}&batch=1") as conn,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(publish, 1_000, total - 1_000)  # arriving meanwhile
            while len(got) < total - since:
                with trio.fail_after(20):
                    message = await conn.get_message()
                for line in str(message).split("\n"):
                    frame = orjson.loads(line)
                    assert "action" not in frame, frame  # no gap, no error
                    got.append(frame["seq"])
        stats = (await http.get("/stats")).json()
    assert got == list(range(since + 1, total + 1))
    assert reads >= 2  # the resume, then at least one catch-up after the outbox overflowed
    assert stats["catch_up"]["catch_ups"] >= 1
    assert stats["events_dropped"]["total"] == 0


async def test_a_full_disk_refuses_publishes_clearly_and_recovers(tmp_path: Path) -> None:
    async with running_server(storage="sqlite", data_dir=str(tmp_path)) as server:
        log = server.bus.log
        assert isinstance(log, SqliteLog)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            first = (await http.post("/events", json=event("disk.a", n=0))).json()
            await log.set_max_bytes(1)
            big = event("disk.a", blob="x" * 200_000)
            refused = await http.post("/events", json=big)
            assert refused.status_code == 507, refused.text
            assert refused.json()["error"]["code"] == "storage_full"
            async with ws(server) as conn:
                answer = await request(conn, {"action": "publish", "id": 1, "event": big})
                assert answer["action"] == "error"
                assert answer["error"]["code"] == "storage_full"
            health_response = await http.get("/health")
            assert health_response.status_code == 503  # out of service for a load balancer
            health = health_response.json()
            assert health["status"] == "degraded"
            assert "full" in health["checks"]["log"]
            stored = (await http.get("/events")).json()["events"]  # reads keep working
            assert [e["seq"] for e in stored] == [first["seq"]]
            assert server.bus.log.last_seq == first["seq"]  # nothing acked that was not stored
            letters = (await http.get("/dlq")).json()["dead_letters"]
            assert [d["error"]["code"] for d in letters] == ["storage_full", "storage_full"]
            assert {d["source"] for d in letters} == {"rest", "ws"}

            await log.set_max_bytes(None)  # space returns: no restart needed
            again = await http.post("/events", json=event("disk.a", n=1))
            assert again.status_code == 201
            healthy_again = await http.get("/health")
            assert (healthy_again.status_code, healthy_again.json()["status"]) == (200, "ok")
            retried = await http.post(f"/dlq/{letters[0]['id']}/retry", json={})
            assert retried.status_code == 201, retried.text
            assert retried.json()["seq"] == again.json()["seq"] + 1
            assert (await http.get("/dlq")).json()["total"] == 1


async def _refused_start(data_dir: Path, *, prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    argv = [str(BIN / "ipt-bus"), "serve", "--port", str(free_port()), "--data-dir", str(data_dir)]
    with trio.fail_after(10):
        result = await trio.run_process(
            [*prefix, *argv], capture_stdout=True, capture_stderr=True, check=False
        )
    return result.returncode, result.stderr.decode()


async def test_a_corrupt_database_stops_start_up_and_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    garbage = os.urandom(64 * 1024)
    path.write_bytes(garbage)
    code, stderr = await _refused_start(tmp_path)
    assert code == 1
    assert str(path) in stderr
    assert "left as it was" in stderr
    assert path.read_bytes() == garbage
    assert _names(tmp_path) == [FILE_NAME]


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _read_only_log() -> Path:
    """A log in a directory no unprivileged user may write, reachable by every user."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    base.chmod(0o755)
    data = base / "data"
    trio.run(SqliteLog.open(data).aclose)
    (data / FILE_NAME).chmod(0o444)
    data.chmod(0o555)
    return data


def _remove(data: Path) -> None:
    data.chmod(0o755)
    shutil.rmtree(data.parent)


async def test_a_read_only_data_dir_stops_start_up() -> None:
    data = await trio.to_thread.run_sync(_read_only_log)
    try:
        prefix: tuple[str, ...] = ()
        if os.geteuid() == 0:  # root writes anywhere: the server runs without that power
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root and setpriv (util-linux) is missing")
            prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search", "--")
        before = await trio.Path(data / FILE_NAME).read_bytes()
        code, stderr = await _refused_start(data, prefix=prefix)
        assert code == 1, stderr
        assert str(data / FILE_NAME) in stderr
        assert await trio.Path(data / FILE_NAME).read_bytes() == before
    finally:
        await trio.to_thread.run_sync(_remove, data)


async def test_a_data_dir_that_cannot_be_created_stops_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, stderr = await _refused_start(blocker / "data")
    assert code == 1
    assert "cannot create the data directory" in stderr


@pytest.mark.parametrize("storage", ["sqlite", "memory"])
async def test_idempotent_publish_returns_the_original(tmp_path: Path, storage: str) -> None:
    async with (
        running_server(storage=storage, data_dir=str(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        headers = {"Idempotency-Key": "order-42"}
        first = await http.post("/events", json=event("idem.a", n=1), headers=headers)
        again = await http.post("/events", json=event("idem.a", n=1), headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        async with ws(server) as conn:
            frame = {"action": "publish", "id": 7, "idempotency_key": "order-42"}
            answer = await request(conn, frame | {"event": event("idem.a")})
            assert answer["event"] == first.json()
            batch = [event("idem.b"), event("idem.b")]
            frame = {"action": "publish", "id": 8, "idempotency_key": "b-1", "events": batch}
            one = await request(conn, frame)
            two = await request(conn, frame | {"id": 9})
            assert one["events"] == two["events"]
        stored = (await http.get("/events")).json()["events"]
        assert [e["topic"] for e in stored] == ["idem.a", "idem.b", "idem.b"]
        stats = (await http.get("/stats")).json()
        assert stats["counters"]["idempotent_repeats"] == 3
        assert stats["log"]["idempotency_keys"] == {"held": 2, "evicted": 0}
        bad = await http.post("/events", json=event("idem.a"), headers={"Idempotency-Key": ""})
        assert bad.status_code == 400
        assert bad.json()["error"]["field"] == "Idempotency-Key"


@pytest.mark.parametrize("storage", ["sqlite", "memory"])
async def test_pipelined_repeats_and_new_publishes_are_all_acknowledged(
    tmp_path: Path, storage: str
) -> None:
    # acks come in the order publishes were sent, whatever mix of repeats and new events; while
    # SQLite commits, a connection's next publishes wait in the router's inbox and share a batch
    async with (
        running_server(storage=storage, data_dir=str(tmp_path)) as server,
        ws(server, "topics=none") as conn,
    ):
        await request(conn, {"action": "publish", "id": 0, "idempotency_key": "k0"} | one())
        for i in range(1, 201):  # sent without waiting
            key = "k0" if i % 3 == 0 else f"k{i % 7}"
            await send(conn, {"action": "publish", "id": i, "idempotency_key": key} | one())
        with trio.fail_after(5):  # a skipped ack would wait out publish_timeout_seconds
            acks = [await recv(conn) for _ in range(200)]
    assert [a["id"] for a in acks] == list(range(1, 201))
    assert all(a["action"] == "published" for a in acks)


def one() -> dict[str, Any]:
    return {"event": event("idem.p")}


async def test_idempotency_keys_survive_a_restart(tmp_path: Path) -> None:
    headers = {"Idempotency-Key": "restart-1"}
    answers = []
    for _ in range(2):
        async with (
            running_server(storage="sqlite", data_dir=str(tmp_path)) as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        ):
            response = await http.post("/events", json=event("idem.r"), headers=headers)
            answers.append(response.json())
            assert len((await http.get("/events")).json()["events"]) == 1
    assert answers[0] == answers[1]


async def test_dead_letters_keep_rejected_publishes_and_can_be_retried_or_deleted(
    tmp_path: Path,
) -> None:
    async with (
        running_server(storage="sqlite", data_dir=str(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        bad = {"type": "t", "topic": "a..b", "payload": {}}
        rejected = await http.post("/events", json=bad)
        assert rejected.status_code == 400
        async with ws(server) as conn:
            answer = await request(
                conn, {"action": "publish", "id": 1, "events": [event("ok"), {"type": "t"}]}
            )
            assert answer["error"]["field"] == "events[1].topic"
        body = (await http.get("/dlq")).json()
        assert body["total"] == 2
        rest, wsl = body["dead_letters"]
        assert (rest["source"], rest["error"]["code"], rest["error"]["field"]) == (
            "rest",
            "invalid_topic",
            "topic",
        )
        assert orjson.loads(rest["raw"]) == bad
        assert wsl["source"] == "ws"
        assert orjson.loads(wsl["raw"])[1] == {"type": "t"}

        retry = await http.post(f"/dlq/{rest['id']}/retry", json={})  # still invalid
        assert retry.status_code == 400
        assert (await http.get("/dlq")).json()["dead_letters"][0]["attempts"] == 1
        assert (await http.delete(f"/dlq/{rest['id']}")).status_code == 204
        assert (await http.delete(f"/dlq/{rest['id']}")).status_code == 404
        assert (await http.post("/dlq/999/retry", json={})).status_code == 404
        form = await http.post(f"/dlq/{rest['id']}/retry", data={"x": "1"})  # a cross-site form
        assert form.status_code == 415
        stats = (await http.get("/stats")).json()["dead_letters"]
        assert stats["size"] == 1
        assert stats["counts"]["added"] == 2
        assert stats["counts"]["deleted"] == 1
    async with (
        running_server(storage="sqlite", data_dir=str(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        body = (await http.get("/dlq")).json()  # kept across a restart
        assert [d["id"] for d in body["dead_letters"]] == [wsl["id"]]


async def test_history_filters_and_retention_gap(tmp_path: Path) -> None:
    async with (
        running_server(storage="sqlite", data_dir=str(tmp_path), retention_events=5) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        batch = [
            {"type": "t1", "topic": "a.b", "payload": {}, "correlation_id": "req-1",
             "timestamp": "2026-01-01T10:00:00Z"},
            {"type": "t2", "topic": "a.c", "payload": {}, "timestamp": "2026-01-01T11:00:00Z"},
            {"type": "t1", "topic": "x.y", "payload": {}, "correlation_id": "req-1",
             "timestamp": "2026-01-01T12:00:00Z"},
        ]  # fmt: skip
        await http.post("/events", json=batch)

        async def seqs(**params: Any) -> list[int]:
            response = await http.get("/events", params=params)
            assert response.status_code == 200, response.text
            return [e["seq"] for e in response.json()["events"]]

        assert await seqs(correlation_id="req-1") == [1, 3]
        assert await seqs(type="t2") == [2]
        assert await seqs(topic="a.*", type="t1") == [1]
        assert await seqs(**{"from": "2026-01-01T10:30:00Z", "to": "2026-01-01T12:00:00Z"}) == [2]
        bad = await http.get("/events", params={"from": "yesterday"})
        assert bad.status_code == 400
        assert bad.json()["error"]["field"] == "from"

        await http.post("/events", json=[event("fill")] * 7)
        await wait_for(lambda: server.bus.log.first_seq == 6)
        page = (await http.get("/events", params={"since": 2, "limit": 2})).json()
        assert page["gaps"] == [{"reason": "retention", "from_seq": 3, "to_seq": 5}]
        assert [e["seq"] for e in page["events"]] == [6, 7]
        assert page["next"] == 7
        other = (await http.get("/events", params={"since": 2, "epoch": "old"})).json()
        assert [g["reason"] for g in other["gaps"]] == ["epoch", "retention"]
        assert [e["seq"] for e in other["events"]] == [6, 7, 8, 9, 10]
        ahead = (await http.get("/events", params={"since": 99})).json()  # past the end
        assert ahead["gaps"][0] == {
            "reason": "epoch",
            "from_seq": 100,
            "to_seq": None,
            "epoch": server.bus.log.epoch,
        }
        async with ws(server, "since=1") as conn:
            gap = await recv(conn)
            assert gap == {"action": "gap", "reason": "retention", "from_seq": 2, "to_seq": 5}
            assert (await recv(conn))["seq"] == 6


async def test_retried_publishes_with_keys_never_duplicate(tmp_path: Path) -> None:
    """B3: every publish sent twice (two connections racing, as a retry after a reset would)."""
    keys = [f"retry-{i}" for i in range(500)]
    answers: dict[str, list[int]] = {k: [] for k in keys}
    async with running_server(storage="sqlite", data_dir=str(tmp_path)) as server:

        async def publisher() -> None:
            async with ws(server, "topics=none") as conn:
                for i, key in enumerate(keys):
                    frame = {"action": "publish", "id": i, "idempotency_key": key}
                    answer = await request(conn, frame | {"event": event("retry.x", key=key)})
                    answers[key].append(answer["event"]["seq"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            nursery.start_soon(publisher)
        stored = await _all_events(server.url)
    assert len(stored) == len(keys)
    assert sorted(e["payload"]["key"] for e in stored) == sorted(keys)
    assert all(len(set(seqs)) == 1 for seqs in answers.values())

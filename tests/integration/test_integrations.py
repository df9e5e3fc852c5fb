"""The spec's integrations against a real server: file events, legacy shapes, helpers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import trio

from ipt_bus.client import EventBusPublisher
from ipt_bus.integrations import CostTracker, TaskRun, ToolHealthMonitor
from tests.conftest import recv, request, running_server, send, wait_for, ws

if TYPE_CHECKING:
    from pathlib import Path

    from ipt_bus.server import Server


async def _events(server: Server, **params: Any) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        body = (await http.get("/events", params={"limit": 1000, **params})).json()
    events: list[dict[str, Any]] = body["events"]
    return events


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# --- file events ------------------------------------------------------------------------------


async def test_watched_files_become_events_exactly_once_across_restarts(tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    progress = watched / "progress.jsonl"
    _append(progress, '{"type": "step", "payload": {"n": 1}}\n{"type": "step", "n": 2}\n')
    settings = {"storage": "sqlite", "data_dir": str(tmp_path / "data"), "watch_dir": str(watched)}
    async with running_server(**settings) as server:
        await wait_for(lambda: _count(server, "file.**", 2), seconds=20)
        _append(progress, '{"type": "step", "payload": {"n": 3}}\n{"type": "step", "pay')
        await wait_for(lambda: _count(server, "file.**", 3), seconds=20)
        _append(progress, 'load": {"n": 4}}\nnot json\n')  # completes the line; then garbage
        _append(watched / "workflow.jsonl", '{"type": "w", "topic": "file.custom.x"}\n')
        await wait_for(lambda: _count(server, "file.**", 5), seconds=20)
        async with httpx.AsyncClient(base_url=server.url) as http:
            letters = (await http.get("/dlq")).json()["dead_letters"]
        assert [(d["source"], d["error"]["code"]) for d in letters] == [
            ("file:progress.jsonl:5", "invalid_json")
        ]
    _append(progress, '{"type": "step", "payload": {"n": 5}}\n')  # written while the bus is down
    async with running_server(**settings) as server:
        await wait_for(lambda: _count(server, "file.**", 6), seconds=20)
        (watched / "batch.json").write_text('[{"type": "a"}, {"type": "b", "payload": {"x": 1}}]')
        await wait_for(lambda: _count(server, "file.**", 8), seconds=20)
        progress.write_text('{"type": "step", "payload": {"n": 6}}\n')  # truncated, rewritten
        await wait_for(lambda: _count(server, "file.**", 9), seconds=20)
        progress.rename(watched / "progress.jsonl.1")  # rotated: a new file, a new inode
        _append(progress, '{"type": "step", "payload": {"n": 7}}\n')
        await wait_for(lambda: _count(server, "file.**", 10), seconds=20)
        stored = await _events(server, topic="file.**")
    steps = [e["payload"]["n"] for e in stored if e["topic"] == "file.progress"]
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # each line once, in order, across the restart
    assert stored[1]["payload"] == {"n": 2}  # no `payload`: the other fields are the payload
    assert {e["topic"] for e in stored} == {"file.progress", "file.custom.x", "file.batch"}
    assert stored[0]["source"] == "file:progress.jsonl"


async def test_links_out_of_the_watch_dir_are_not_followed_and_garbage_is_kept_short(
    tmp_path: Path,
) -> None:
    """Issue 11 item 2: a symlink to a file outside the watch directory is never read."""
    watched = tmp_path / "watched"
    watched.mkdir()
    secret = tmp_path / "secrets.jsonl"
    secret.write_text('db_password=hunter2\n{"type": "leak", "payload": {"pw": "hunter2"}}\n')
    (watched / "a-link.jsonl").symlink_to(secret)
    (watched / "b-dir.jsonl").symlink_to(tmp_path)  # not a file at all
    (watched / "c-real.jsonl").write_text('{"type": "ok"}\n')
    (watched / "d-alias.jsonl").symlink_to(watched / "c-real.jsonl")  # stays inside: read
    garbage = "token=" + "z" * 5_000
    _append(watched / "e-sentinel.jsonl", garbage + '\n{"type": "last"}\n')
    async with running_server(watch_dir=str(watched)) as server:
        await wait_for(lambda: _count(server, "file.**", 3), seconds=20)
        stored = await _events(server, topic="file.**")
        async with httpx.AsyncClient(base_url=server.url) as http:
            letters = (await http.get("/dlq")).json()["dead_letters"]
    assert sorted(e["type"] for e in stored) == ["last", "ok", "ok"]
    assert "hunter2" not in orjson.dumps([stored, letters]).decode()
    (letter,) = letters
    assert letter["source"] == "file:e-sentinel.jsonl:1"
    assert letter["raw"].startswith("token=zzz")
    assert len(letter["raw"]) < 200
    assert "5006 bytes" in letter["raw"]


async def _count(server: Server, pattern: str, n: int) -> bool:
    return len(await _events(server, topic=pattern)) >= n


# --- legacy -----------------------------------------------------------------------------------


async def test_legacy_shapes_are_mapped() -> None:
    async with running_server() as server, ws(server, "topics=legacy.**") as conn:
        await send(conn, {"type": "deploy", "data": {"service": "api"}})
        answer, event = await _ack_and_event(conn)
        assert answer["action"] == "published"
        assert (event["topic"], event["type"], event["payload"]) == (
            "legacy.deploy",
            "deploy",
            {"service": "api"},
        )
        await send(conn, {"type": "two words", "data": "hello"})
        _, event = await _ack_and_event(conn)
        assert (event["topic"], event["payload"]) == ("legacy.broadcast", {"data": "hello"})
        async with httpx.AsyncClient(base_url=server.url) as http:
            posted = await http.post("/broadcast", json={"message": "maintenance at 10:00"})
            assert posted.status_code == 201
            assert posted.json()["topic"] == "legacy.broadcast"
            assert (await http.post("/broadcast", json="plain text")).status_code == 201
            assert (await http.post("/broadcast", json=[1])).status_code == 400
        assert (await recv(conn))["payload"] == {"message": "maintenance at 10:00"}
        assert (await recv(conn))["payload"] == {"message": "plain text"}
        # an unrelated bad frame is still an error, not a legacy message
        answer = await request(conn, {"action": "nope", "id": 9})
        assert answer["error"]["code"] == "unknown_action"


async def _ack_and_event(conn: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ack of a publish and the event it delivered, in whichever order they came."""
    first, second = await recv(conn), await recv(conn)
    return (first, second) if "action" in first else (second, first)


# --- executor, cost tracker, tool registry ----------------------------------------------------


async def test_task_run_publishes_the_lifecycle() -> None:
    async with running_server() as server:
        publisher = EventBusPublisher(server.url)

        def run() -> None:
            task = TaskRun("task-1", workflow="PY_EDIT_TRIAGE", publisher=publisher)
            with task, task.phase("analysis"):
                task.progress(0.5, current_step="mypy")
            failing = TaskRun("task-2", publisher=publisher)
            with pytest.raises(ValueError, match="boom"), failing, failing.phase("edit"):
                raise ValueError("boom")

            @TaskRun("task-3", publisher=publisher)
            def job() -> int:
                return 3

            assert job() == 3
            publisher.close()

        await trio.to_thread.run_sync(run)
        stored = await _events(server)
    summary = [(e["payload"]["task_id"], e["topic"], e["payload"].get("status")) for e in stored]
    assert summary == [
        ("task-1", "task.created", None),
        ("task-1", "task.status", "started"),
        ("task-1", "task.status", "running"),
        ("task-1", "phase.started", None),
        ("task-1", "phase.progress", None),
        ("task-1", "phase.completed", None),
        ("task-1", "task.status", "completed"),
        ("task-2", "task.created", None),
        ("task-2", "task.status", "started"),
        ("task-2", "task.status", "running"),
        ("task-2", "phase.started", None),
        ("task-2", "phase.failed", None),
        ("task-2", "task.status", "failed"),
        ("task-3", "task.created", None),
        ("task-3", "task.status", "started"),
        ("task-3", "task.status", "running"),
        ("task-3", "task.status", "completed"),
    ]
    assert stored[11]["payload"]["error"] == "ValueError: boom"
    assert stored[12]["payload"]["message"] == "ValueError: boom"
    assert stored[5]["payload"]["duration_seconds"] >= 0
    assert stored[4]["payload"]["current_step"] == "mypy"
    # every previous_status is the status published before it, per task
    last: dict[str, str] = {}
    for e in stored:
        if e["topic"] == "task.status":
            task_id, status = e["payload"]["task_id"], e["payload"]["status"]
            assert e["payload"]["previous_status"] == last.get(task_id, "pending")
            last[task_id] = status


async def test_cost_tracker_and_tool_monitor() -> None:
    async with running_server() as server:
        publisher = EventBusPublisher(server.url)

        def run() -> None:
            tracker = CostTracker("task-1", budget_total=10.0, warn_at=0.8, publisher=publisher)
            for _ in range(6):
                tracker.add(2.0, tool="claude-cli", operation="analysis", tokens_used=100)
            monitor = ToolHealthMonitor(publisher=publisher)
            assert monitor.report("aider", "healthy", latency_ms=100)
            assert not monitor.report("aider", "healthy")
            assert monitor.report("aider", "degraded", latency_ms=5000, health_score=0.6)
            assert monitor.report("aider", "unavailable", error_message="timeout")
            publisher.close()

        await trio.to_thread.run_sync(run)
        stored = await _events(server)
    topics = [e["topic"] for e in stored]
    assert topics == [
        "cost.update", "cost.update", "cost.update", "cost.update", "cost.budget_warning",
        "cost.update", "cost.budget_exhausted", "cost.update",
        "tool.health_changed", "tool.available",
        "tool.health_changed", "tool.degraded",
        "tool.health_changed", "tool.unavailable",
    ]  # fmt: skip
    update = stored[3]["payload"]
    assert (update["total_cost"], update["budget_remaining"], update["budget_total"]) == (8, 2, 10)
    assert stored[4]["payload"]["threshold"] == 0.8
    assert stored[10]["payload"]["previous_status"] == "healthy"
    assert stored[13]["payload"]["reason"] == "timeout"
    assert orjson.loads(orjson.dumps(stored[8]["payload"]))["status"] == "healthy"


async def test_an_unusable_watch_dir_stops_start_up_with_one_line(tmp_path: Path) -> None:
    from tests.integration.test_launch import BIN, free_port

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    argv = [str(BIN / "ipt-bus"), "serve", "--port", str(free_port()), "--storage", "memory"]
    with trio.fail_after(20):
        result = await trio.run_process(
            [*argv, "--watch-dir", str(blocker / "events")], capture_stderr=True, check=False
        )
    assert result.returncode == 1
    assert b"cannot use the watch directory" in result.stderr
    assert result.stderr.count(b"\n") == 1

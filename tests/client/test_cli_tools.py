"""The command line as people use it (pipes, stopping by itself, NO_COLOR, stdin, history, dead
letters, `python -m`), and the client's headers, retries and plain-loop subscription."""

from __future__ import annotations

import email.utils
import importlib.metadata
import io
import os
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from ipt_bus.client import (
    BusUnavailable,
    Event,
    EventBusClient,
    EventBusPublisher,
    Gap,
    HistoryLost,
    _common,
    commands,
    subscribe,
)
from tests.conftest import running_server
from tests.integration.test_launch import free_port

BIN = Path(sys.executable).parent
IPT_BUS = str(BIN / "ipt-bus")


async def _run(
    *args: str, url: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    with trio.fail_after(60):
        result = await trio.run_process(
            [IPT_BUS, *args, "--url", url],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def _shell(command: str, url: str) -> tuple[int, str, str]:
    """`command` in bash with `pipefail` (so the exit code is ipt-bus's, not only head's)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "IPT_BUS_URL": url}
    with trio.fail_after(60):
        result = await trio.run_process(
            ["bash", "-o", "pipefail", "-c", command],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def _publish(url: str, events: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        for start in range(0, len(events), 1000):
            response = await http.post("/events", json=events[start : start + 1000])
            assert response.status_code == 201, response.text


def _event(topic: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "t", "topic": topic, "payload": {"n": n}, **extra}


# --- pipes ------------------------------------------------------------------------------------


async def test_a_closed_pipe_ends_every_command_quietly() -> None:
    """Outputs bigger than a pipe's buffer, so the reader is gone before the writer is done."""
    async with running_server() as server:
        await _publish(server.url, [_event(f"load.{'x' * 60}.{n}", n) for n in range(2000)])
        for command in ("ipt-bus topics", "ipt-bus history", "ipt-bus history --json"):
            code, out, err = await _shell(f"{command} | head -2", server.url)
            assert (code, err, len(out.splitlines())) == (0, "", 2), command


async def test_tail_into_head_exits_at_the_next_event() -> None:
    """`tail | head -1` ends (quietly, exit 0) once tail writes after head has gone, as `cat`."""
    async with running_server() as server:
        await _publish(server.url, [_event("a", 0)])
        async with trio.open_nursery() as nursery:

            async def keep_publishing() -> None:
                for n in range(1, 1000):  # paced traffic: tail needs a write after head exits
                    await _publish(server.url, [_event("a", n)])
                    await trio.sleep(0.05)

            nursery.start_soon(keep_publishing)
            code, out, err = await _shell("ipt-bus tail --json --since 0 | head -1", server.url)
            nursery.cancel_scope.cancel()
    assert (code, err) == (0, "")
    assert orjson.loads(out)["seq"] == 1


# --- tail stops by itself ------------------------------------------------------------------------


async def test_tail_count_and_timeout() -> None:
    async with running_server() as server:
        await _publish(server.url, [_event("a", n) for n in range(3)])
        code, out, _ = await _run("tail", "--since", "0", "-C", "2", "--json", url=server.url)
        assert code == 0
        assert [orjson.loads(line)["seq"] for line in out.splitlines()] == [1, 2]
        code, out, err = await _run("tail", "--since", "0", "-W", "0.5", url=server.url)
        assert (code, len(out.splitlines()), err) == (0, 3, "")
        code, out, err = await _run(
            "tail", "--since", "0", "--count", "5", "--timeout", "0.5", url=server.url
        )
        assert (code, len(out.splitlines())) == (3, 3)
        assert "3 of 5 events arrived before the --timeout" in err
        code, _, err = await _run("tail", "-C", "0", url=server.url)
        assert code == 2
        assert "expected a whole number of at least 1, got '0'" in err
        code, _, err = await _run("tail", "-W", "soon", url=server.url)
        assert code == 2
        assert "argument -W/--timeout: 'soon' is not a duration (e.g. 90s" in err


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert commands.use_colour(Terminal())
    assert not commands.use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not commands.use_colour(Terminal())
    event = Event(type="t", topic="task.status", payload={}, seq=1)
    assert "\x1b[" in commands.format_event(event, colour=True)
    assert "\x1b[" not in commands.format_event(event, colour=False)


# --- publish from stdin, python -m ---------------------------------------------------------------


async def test_payload_from_stdin_and_python_m() -> None:
    async with running_server() as server:
        code, out, _ = await _run(
            "publish", "a", "--type", "t", "--payload", "@-", url=server.url, stdin=b'{"x": 1}'
        )
        assert (code, orjson.loads(out)["seq"]) == (0, 1)
        code, _, err = await _run(
            "publish", "a", "--type", "t", "--payload", "@-", url=server.url, stdin=b"[1]"
        )
        assert (code, "the payload on standard input must be a JSON object" in err) == (2, True)
        with trio.fail_after(30):
            result = await trio.run_process(
                [sys.executable, "-m", "ipt_bus", "history", "--json", "--url", server.url],
                capture_stdout=True,
            )
        assert orjson.loads(result.stdout)["payload"] == {"x": 1}
    result = await trio.run_process(
        [sys.executable, "-m", "ipt_bus", "--version"], capture_stdout=True
    )
    assert result.stdout.decode().split() == ["ipt-bus", importlib.metadata.version("ipt-bus")]


# --- history and dead letters ---------------------------------------------------------------------


async def test_history_pages_through_everything_asked_for() -> None:
    async with running_server() as server:
        events = [_event("bulk", n) for n in range(2500)]
        events[10] = _event("task.x", 10, correlation_id="req-1")
        events[2400] = {**_event("task.y", 2400), "type": "special"}
        await _publish(server.url, events)
        code, out, _ = await _run("history", "--json", url=server.url)
        assert code == 0
        assert [orjson.loads(line)["seq"] for line in out.splitlines()] == list(range(1, 2501))
        code, out, _ = await _run("history", "--json", "--since", "2490", url=server.url)
        assert [orjson.loads(line)["seq"] for line in out.splitlines()] == list(range(2491, 2501))
        code, out, _ = await _run("history", "--json", "--limit", "1500", url=server.url)
        assert len(out.splitlines()) == 1500
        code, out, _ = await _run("history", "--topic", "task.*", url=server.url)
        lines = out.splitlines()
        assert len(lines) == 2
        assert " task.x t " in lines[0]
        assert " task.y special " in lines[1]
        for args, seqs in (
            (["--type", "special"], [2401]),
            (["--correlation-id", "req-1"], [11]),
            (["--topic", "task.x", "--topic", "task.y"], [11, 2401]),
            (["--from", "2000-01-01T00:00:00Z", "--to", "2000-01-02T00:00:00Z"], []),
            (["--from", "2000-01-01T00:00:00Z", "--topic", "task.y"], [2401]),
        ):
            code, out, _ = await _run("history", "--json", *args, url=server.url)
            assert code == 0
            assert [orjson.loads(line)["seq"] for line in out.splitlines()] == seqs, args
        code, _, err = await _run("history", "--topic", "a..b", url=server.url)
        assert (code, "'topic'" in err) == (2, True)


async def test_dlq_list_retry_delete() -> None:
    async with running_server() as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for n in range(3):
                bad = await http.post("/events", json={"type": "t", "topic": f"bad..{n}"})
                assert bad.status_code == 400
        code, out, _ = await _run("dlq", "list", url=server.url)
        lines = out.splitlines()
        assert (code, len(lines)) == (0, 4)
        assert lines[0].split() == ["ID", "AT", "SOURCE", "TRIES", "ERROR"]
        assert "invalid_topic" in lines[1]
        code, _, err = await _run("dlq", "retry", "1", url=server.url)
        assert (code, "invalid_topic" in err) == (2, True)
        code, out, err = await _run("dlq", "delete", "1", url=server.url)
        assert (code, out, err) == (0, "", "")
        code, out, _ = await _run("dlq", "list", "--json", "--limit", "1", url=server.url)
        (letter,) = [orjson.loads(line) for line in out.splitlines()]
        assert (letter["id"], letter["attempts"]) == (2, 0)
        code, _, err = await _run("dlq", "delete", "1", url=server.url)
        assert (code, "not_found" in err) == (2, True)
        code, _, err = await _run("dlq", "retry", url=server.url)
        assert (code, "give an ID to retry or delete" in err) == (2, True)


# --- the client: headers, retries ----------------------------------------------------------------


async def test_client_headers_go_on_every_request_and_the_handshake() -> None:
    seen: list[bytes] = []

    async def record(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            seen.append(data.lower())

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, record, 0, host="127.0.0.1"))
        url = f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        headers = {"X-Trace": "abc"}
        client = EventBusClient(url, headers=headers, retries=0, reconnect=False, timeout=5)
        with pytest.raises(BusUnavailable):
            await client.listen_async()
        with pytest.raises(BusUnavailable):
            await client.publish_event_rest_async(Event(type="t", topic="a"))
        await client.close()

        def sync_publish() -> None:
            with EventBusPublisher(url, headers=headers, retries=0, timeout=5) as publisher:
                publisher.publish(Event(type="t", topic="a"))

        with pytest.raises(BusUnavailable):
            await trio.to_thread.run_sync(sync_publish)
        nursery.cancel_scope.cancel()
    assert len(seen) == 3
    assert seen[0].startswith(b"get /ws?")
    assert all(b"x-trace: abc\r\n" in request for request in seen)


def test_backoff_is_jittered_and_honours_retry_after() -> None:
    delays = [_common.backoff(3) for _ in range(200)]
    assert all(0 <= d <= 0.8 for d in delays)
    assert len(set(delays)) > 150  # clients cut off together do not come back together
    assert min(_common.backoff(0, at_least=1.5) for _ in range(50)) == 1.5
    now = time.time()
    assert _common.retry_after("3", now=now) == 3
    assert _common.retry_after("999", now=now) == 60
    assert _common.retry_after(None, now=now) == 0
    assert _common.retry_after("soon", now=now) == 0
    later = email.utils.formatdate(now + 10, usegmt=True)
    assert 8 <= _common.retry_after(later, now=now) <= 10


async def test_rate_limited_publishes_wait_for_retry_after() -> None:
    async with running_server(rate_limit_per_second=1.0, rate_burst=1.0) as server:

        def publish_two() -> float:
            with EventBusPublisher(server.url, retries=2) as publisher:
                publisher.publish(Event(type="t", topic="a"))
                started = time.monotonic()
                publisher.publish(Event(type="t", topic="a"))  # 429 Retry-After: 1, then 201
                return time.monotonic() - started

        waited = await trio.to_thread.run_sync(publish_two)
        client = EventBusClient(server.url, retries=2)
        started = trio.current_time()
        await client.publish_event_rest_async(Event(type="t", topic="a"))
        async_waited = trio.current_time() - started
        await client.close()
        assert server.bus.log.last_seq == 3
        assert (await server.bus.stats.snapshot())["security"]["rate_limited"] >= 2
    assert waited >= 0.9  # the bus said 1 s: no retry before that
    assert async_waited >= 0.5


# --- subscribe in a plain loop --------------------------------------------------------------------


async def test_subscribe_in_a_for_loop() -> None:
    async with running_server() as server:
        await _publish(server.url, [_event("task.a", 0), _event("other", 1), _event("task.b", 2)])
        threads = threading.active_count()

        def read() -> tuple[list[int | None], int | None]:
            seqs = []
            with subscribe("task.*", url=server.url, since=0) as events:
                for event in events:
                    seqs.append(event.seq)
                    if len(seqs) == 2:
                        break
                return seqs, events.last_seq

        assert await trio.to_thread.run_sync(read) == ([1, 3], 3)
        assert threading.active_count() == threads  # the session's thread is gone

        def gap_raises() -> None:
            for _ in subscribe(url=server.url, since=2, epoch="another-log"):
                pass  # pragma: no cover - the loop raises first

        with pytest.raises(HistoryLost):
            await trio.to_thread.run_sync(gap_raises)

        def gap_told() -> tuple[list[Gap], list[int | None]]:
            gaps: list[Gap] = []
            with subscribe(url=server.url, since=2, epoch="another-log", on_gap=gaps.append) as s:
                seqs = [next(s).seq for _ in range(3)]
            return gaps, seqs

        gaps, seqs = await trio.to_thread.run_sync(gap_told)
        assert [g.reason for g in gaps] == ["epoch"]
        assert seqs == [1, 2, 3]  # from the start of this log

    def unreachable() -> None:
        for _ in subscribe(url=f"http://127.0.0.1:{free_port()}", retries=0):
            pass  # pragma: no cover

    with pytest.raises(BusUnavailable):
        await trio.to_thread.run_sync(unreachable)

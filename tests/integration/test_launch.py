"""The two ways to start the bus, as users start them: real processes, real signals."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import orjson
import pytest
import trio

from tests.conftest import closed_code, open_ws, wait_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def healthy(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{url}/health")).status_code == 200
    except httpx.TransportError:
        return False


@asynccontextmanager
async def process(*argv: str) -> AsyncIterator[trio.Process]:
    proc = await trio.lowlevel.open_process(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(10) as scope:
            scope.shield = True
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()


async def test_ipt_bus_serve_stops_on_sigterm_with_1001() -> None:
    for _trial in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        async with process(str(BIN / "ipt-bus"), "serve", "--port", str(port)) as proc:
            await wait_for(lambda url=url: healthy(url), seconds=20)
            async with open_ws(f"ws://127.0.0.1:{port}/ws") as conn:
                assert orjson.loads(await conn.get_message())["action"] == "welcome"
                async with httpx.AsyncClient() as http:
                    await http.post(
                        f"{url}/events", json={"type": "t", "topic": "a", "payload": {}}
                    )
                await conn.get_message()
                proc.send_signal(signal.SIGTERM)
                assert await closed_code(conn) == 1001
            with trio.fail_after(5):
                assert await proc.wait() == 0


async def test_ipt_bus_serve_sigint_exits_cleanly() -> None:
    port = free_port()
    async with process(str(BIN / "ipt-bus"), "serve", "--port", str(port)) as proc:
        await wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), seconds=20)
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(5):
            assert await proc.wait() == 0


@pytest.mark.parametrize(
    ("args", "code"),
    [(["--port", "x"], 2), (["--buffer-size", "0"], 2), (["--storage", "tape"], 2)],
)
async def test_bad_arguments_exit_2(args: list[str], code: int) -> None:
    result = await trio.run_process(
        [str(BIN / "ipt-bus"), "serve", *args], capture_stderr=True, check=False
    )
    assert result.returncode == code
    assert result.stderr.strip()


async def test_port_in_use_exits_1_with_a_clear_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(20):
            result = await trio.run_process(
                [str(BIN / "ipt-bus"), "serve", "--port", str(port)],
                capture_stderr=True,
                check=False,
            )
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr.decode()


async def test_plain_hypercorn_form() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with process(
        str(BIN / "hypercorn"),
        "--worker-class",
        "trio",
        "--bind",
        f"127.0.0.1:{port}",
        "ipt_bus.web:create_app()",
    ) as proc:
        await wait_for(lambda: healthy(url), seconds=20)
        async with open_ws(f"ws://127.0.0.1:{port}/ws?topics=custom.*") as conn:
            assert orjson.loads(await conn.get_message())["action"] == "welcome"
            async with httpx.AsyncClient() as http:
                response = await http.post(
                    f"{url}/events", json={"type": "t", "topic": "custom.x", "payload": {}}
                )
                assert response.status_code == 201
            assert orjson.loads(await conn.get_message())["topic"] == "custom.x"
            proc.send_signal(signal.SIGTERM)
            # Under the bare CLI the app cannot close WebSockets with 1001 before hypercorn
            # stops them (docs/operations.md): the client sees the connection drop.
            assert await closed_code(conn) in (1000, 1001, 1006)
        with trio.fail_after(15):
            await proc.wait()


async def read_until(stream: trio.abc.ReceiveStream, needle: bytes, seen: bytes = b"") -> bytes:
    with trio.fail_after(60):
        while needle not in seen:
            chunk = await stream.receive_some(65536)
            assert chunk, f"stream ended before {needle!r}: {seen[-2000:]!r}"
            seen += chunk
    return seen


@asynccontextmanager
async def wscat(*args: str) -> AsyncIterator[trio.Process]:
    """`npx wscat` with stdin held open (wscat quits at end of input)."""
    proc = await trio.lowlevel.open_process(
        ["npx", "-y", "wscat", "--no-color", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.kill()
        with trio.move_on_after(10) as scope:
            scope.shield = True
            await proc.wait()
        for stream in (proc.stdout, proc.stdin):
            if stream is not None:
                await stream.aclose()


@pytest.mark.wscat
@pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed")
async def test_wscat_subscribes_and_publishes() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ws_url = f"ws://127.0.0.1:{port}/ws"
    publish = orjson.dumps(
        {
            "action": "publish",
            "id": 1,
            "event": {
                "type": "task_status_changed",
                "topic": "task.status",
                "payload": {"task_id": "task-123", "status": "running"},
            },
        }
    ).decode()
    async with process(str(BIN / "ipt-bus"), "serve", "--port", str(port)):
        await wait_for(lambda: healthy(url), seconds=20)
        # wscat -c ws://127.0.0.1:8765/ws?topics=task.status
        async with wscat("-c", f"{ws_url}?topics=task.status") as sub:
            assert sub.stdout is not None
            seen = await read_until(sub.stdout, b'"welcome"')
            async with wscat("-c", ws_url, "-x", publish, "-w", "1") as pub:
                assert pub.stdout is not None
                ack = await read_until(pub.stdout, b'"published"')
            assert b'"seq":1' in ack
            seen = await read_until(sub.stdout, b"task-123", seen)
        async with httpx.AsyncClient() as http:
            events = (await http.get(f"{url}/events?topic=task.status")).json()["events"]
        assert [e["payload"]["task_id"] for e in events] == ["task-123"]

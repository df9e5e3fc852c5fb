"""The examples in docs/ run as written against a real server."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import trio

from tests.conftest import recv, running_server, send, wait_for, ws

if TYPE_CHECKING:
    from ipt_bus.server import Server

DOCS = Path(__file__).resolve().parents[2] / "docs"


def blocks(name: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / name).read_text(), re.DOTALL)


def shape(value: Any) -> Any:
    """What must match between a documented answer and a real one: keys and fixed values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items() if k not in ("message",)}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, str) and "…" in value:
        return "<any>"
    return value


def same_shape(documented: Any, real: Any) -> bool:
    if documented == "<any>":
        return True
    if isinstance(documented, dict):
        return (
            isinstance(real, dict)
            and documented.keys() == {k for k in real if k != "message"}
            and all(same_shape(v, real[k]) for k, v in documented.items())
        )
    if isinstance(documented, list):
        return (
            isinstance(real, list)
            and len(documented) == len(real)
            and all(same_shape(d, r) for d, r in zip(documented, real, strict=True))
        )
    return bool(documented == real)


async def test_protocol_md_exchange_replays() -> None:
    (exchange,) = [b for b in blocks("protocol.md", "text") if b.startswith("> ")]
    lines = exchange.strip().splitlines()
    async with running_server() as server, ws(server, "topics=task.status") as conn:
        for sent, answer in zip(lines[::2], lines[1::2], strict=True):
            assert sent.startswith("> ")
            assert answer.startswith("< ")
            await send(conn, orjson.loads(sent[2:]))
            real = await recv(conn)
            documented = shape(orjson.loads(answer[2:]))
            assert same_shape(documented, real), (documented, real)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_rest_md_commands_run(tmp_path: Path) -> None:
    commands = [line for block in blocks("rest.md", "sh") for line in block.strip().splitlines()]
    assert len(commands) >= 7
    async with running_server(storage="sqlite", data_dir=str(tmp_path)) as server:
        for line in commands:
            command, _, comment = line.partition("  # ")
            argv = [_local(server, arg) for arg in shlex.split(command)]
            with trio.fail_after(20):
                result = await trio.run_process(argv, capture_stdout=True, check=True)
            if comment.startswith("204"):
                assert result.stdout == b"", (command, result.stdout)
                continue
            if comment.startswith("text"):  # the Prometheus format
                assert b"\nipt_bus_deliveries_total " in result.stdout, (command, result.stdout)
                continue
            body = orjson.loads(result.stdout)
            if comment.startswith("error: "):
                expected = comment.removeprefix("error: ").split()[0]
                assert body["error"]["code"] == expected, (command, body)
            else:
                assert "error" not in body, (command, body)


async def test_rest_md_connections_example_has_the_real_shape() -> None:
    (documented,) = [b for b in blocks("rest.md", "json") if b.startswith('{"connections"')]
    async with (
        running_server() as server,
        ws(server, "topics=task.*"),
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        real = (await http.get("/connections")).json()
    assert same_shape(shape(orjson.loads(documented)), real), real


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_readme_tour_runs() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    (tour,) = [b for b in re.findall(r"```sh\n(.*?)```", readme, re.DOTALL) if "curl" in b]
    commands = [c.strip() for c in re.sub(r"\\\n\s*", " ", tour).splitlines()]
    commands = [c for c in commands if c.startswith("curl")]
    async with running_server() as server:
        for command in commands:
            argv = [_local(server, arg) for arg in shlex.split(command.split("#")[0])]
            with trio.fail_after(20):
                result = await trio.run_process(argv, capture_stdout=True, check=True)
            assert "error" not in orjson.loads(result.stdout)


def _local(server: Server, arg: str) -> str:
    return arg.replace("http://127.0.0.1:8765", server.url)


def test_storage_md_serve_commands_are_valid() -> None:
    """The `ipt-bus serve` lines of storage.md parse and make a valid configuration."""
    from ipt_bus.cli import config_from_args

    lines = [
        line.split("#")[0].strip()
        for block in re.findall(r"```\n(.*?)```", (DOCS / "storage.md").read_text(), re.DOTALL)
        for line in block.splitlines()
        if line.startswith("ipt-bus serve")
    ]
    assert len(lines) >= 3
    for line in lines:
        config = config_from_args(shlex.split(line)[1:])
        assert config.storage in ("sqlite", "memory", "redis")


def test_scaling_md_serve_commands_are_valid() -> None:
    """The `ipt-bus serve` lines of scaling.md parse into a Redis node (the tests of
    test_scaleout.py run such nodes)."""
    from ipt_bus.cli import config_from_args

    text = (DOCS / "scaling.md").read_text()
    lines = [
        line.split(" &")[0].strip()
        for block in blocks("scaling.md", "sh")
        for line in block.splitlines()
        if line.startswith("ipt-bus serve")
    ]
    lines += [" ".join(m.split()) for m in re.findall(r"`(ipt-bus serve --port[^`]*)`", text)]
    assert len(lines) >= 4
    for line in lines:
        config = config_from_args(shlex.split(line)[1:])
        assert config.storage == "redis"
        assert config.redis_url == "redis://127.0.0.1:6390/0"


async def test_client_md_examples_run(tmp_path: Path) -> None:
    """Every ```python block of client.md runs as its own program against a real bus."""
    runnable = blocks("client.md", "python")
    assert len(runnable) >= 4
    async with running_server(storage="sqlite", data_dir=str(tmp_path)) as server:
        env = {**os.environ, "IPT_BUS_URL": server.url}
        for code in runnable:
            with trio.fail_after(30):
                result = await trio.run_process(
                    [sys.executable, "-c", code], env=env, capture_stdout=True, check=False
                )
            assert result.returncode == 0, code
        topics = {t["topic"]: t["count"] for t in (await _json(server, "/topics"))["topics"]}
    assert topics["custom.deploy"] == 2
    assert topics["custom.analysis"] == 1
    assert topics["custom.ping"] == 2  # the async example and the plain-loop one
    assert topics["logs.warning"] == 1


async def test_cli_md_commands_run(tmp_path: Path) -> None:
    commands = [line for block in blocks("cli.md", "sh") for line in block.strip().splitlines()]
    assert len(commands) == 10
    async with running_server(storage="sqlite", data_dir=str(tmp_path)) as server:
        outputs = [await _bash(command, tmp_path, url=server.url) for command in commands]
    assert orjson.loads(outputs[0])["seq"] == 1
    assert orjson.loads(outputs[1])["seq"] == 2
    assert "task.status task_status_changed" in outputs[2]
    assert "logs.warning log_message" in outputs[2]
    assert orjson.loads(outputs[3].splitlines()[0])["topic"] == "task.status"
    assert orjson.loads(outputs[4])["seq"] == 1
    assert "invalid_topic" in outputs[6]
    assert outputs[7] == ""
    assert outputs[8].startswith("uptime")
    assert "task.status" in outputs[9]


async def _json(server: Server, path: str) -> Any:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return (await http.get(path)).json()


async def test_readme_python_runs() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    async with running_server() as server:
        env = {**os.environ, "IPT_BUS_URL": server.url}
        with trio.fail_after(30):
            await trio.run_process([sys.executable, "-c", code], env=env)
        assert server.bus.log.last_seq == 1


async def test_integrations_md_python_examples_run(tmp_path: Path) -> None:
    runnable = blocks("integrations.md", "python")
    assert len(runnable) == 2
    async with running_server(storage="sqlite", data_dir=str(tmp_path)) as server:
        env = {**os.environ, "IPT_BUS_URL": server.url}
        for code in runnable:
            with trio.fail_after(30):
                await trio.run_process([sys.executable, "-c", code], env=env)
        topics = {t["topic"]: t["count"] for t in (await _json(server, "/topics"))["topics"]}
    assert topics["logs.warning"] == 1
    assert topics["task.status"] == 6  # two tasks: started, running, completed
    assert topics["cost.budget_warning"] == 1
    assert topics["cost.budget_exhausted"] == 0
    assert topics["tool.degraded"] == 1


async def test_integrations_md_file_events_walkthrough(tmp_path: Path) -> None:
    """The `sh` walkthrough, with its directory and port made private to the test."""
    from tests.integration.test_launch import free_port, healthy, process

    (block,) = blocks("integrations.md", "sh")
    mkdir, serve, echo, tail = block.strip().splitlines()
    watched = str(tmp_path / "events")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ipt_bus = str(Path(sys.executable).parent / "ipt-bus")
    await trio.run_process(["sh", "-c", mkdir.replace("/tmp/ipt-events", watched)])
    serve_argv = shlex.split(serve.rstrip("&").replace("/tmp/ipt-events", watched))
    serve_argv[0] = ipt_bus
    serve_argv += ["--port", str(port), "--data-dir", str(tmp_path / "data")]
    async with process(*serve_argv):
        await wait_for(lambda: healthy(url), seconds=20)
        await trio.run_process(["sh", "-c", echo.replace("/tmp/ipt-events", watched)])
        tail_argv = [ipt_bus, *shlex.split(tail)[1:], "--url", url]
        async with process(*tail_argv) as proc:
            assert proc.stdout is not None
            seen = b""
            with trio.fail_after(20):
                while b"file.progress step_done" not in seen:
                    seen += await proc.stdout.receive_some(4096)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_security_md_examples_run(tmp_path: Path) -> None:
    """The shell block runs in order (its first line makes the secret the bus is started with);
    the Python block runs against the same bus."""
    (shell,) = blocks("security.md", "sh")
    first, *rest = shell.strip().splitlines()
    await _bash(first, tmp_path)
    secret = str(tmp_path / "bus.secret")
    async with running_server(auth_secret_file=secret) as server:
        for line in rest:
            command, _, comment = line.partition("  # ")
            out = await _bash(_local(server, command), tmp_path)
            if not out:
                continue  # a token written to a file
            body = orjson.loads(out)
            if comment.startswith("error: "):
                assert body["error"]["code"] == comment.removeprefix("error: "), (line, body)
            else:
                assert "error" not in body, (line, body)
        assert server.bus.log.last_seq == 1
        (code,) = blocks("security.md", "python")
        env = {**os.environ, "IPT_BUS_URL": server.url, "BUS_SECRET_FILE": secret}
        with trio.fail_after(30):
            await trio.run_process([sys.executable, "-c", code], env=env)
        assert server.bus.log.last_seq == 3
    assert len((tmp_path / "dashboard.token").read_text().split(".")) == 3


async def test_readme_secure_start_runs(tmp_path: Path) -> None:
    from ipt_bus.cli import config_from_args

    readme = (DOCS.parent / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", readme, re.DOTALL) if "token" in b]
    make_secret, serve, export = (line.split("  #")[0] for line in block.strip().splitlines())
    await _bash(make_secret, tmp_path)
    config = config_from_args(shlex.split(serve)[1:])
    assert (config.host, config.auth) == ("0.0.0.0", True)
    async with running_server(auth_secret_file=str(tmp_path / "bus.secret")) as server:
        out = await _bash(f"{export} && ipt-bus stats --url {server.url}", tmp_path)
    assert out.startswith("uptime")


async def _bash(command: str, cwd: Path, *, url: str | None = None) -> str:
    """One line of a documented shell block, with this venv's `ipt-bus` first on PATH (and
    `IPT_BUS_URL` set to `url`)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if url is not None:
        env["IPT_BUS_URL"] = url
    with trio.fail_after(30):
        result = await trio.run_process(
            ["bash", "-e", "-o", "pipefail", "-c", command], cwd=cwd, env=env, capture_stdout=True
        )
    return str(result.stdout.decode())

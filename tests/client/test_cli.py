"""`ipt-bus tail/publish/stats/topics` exit codes and errors, and the publisher's retries."""

from __future__ import annotations

import http.server
import os
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import orjson
import pytest
import trio

from ipt_bus.cli import config_from_args
from ipt_bus.client import BusUnavailable, Event, EventBusPublisher
from ipt_bus.core.auth import Authenticator, Grant, Keys, make_token
from tests.conftest import running_server
from tests.integration.test_launch import free_port

IPT_BUS = str(Path(sys.executable).parent / "ipt-bus")


async def _run(*args: str, url: str) -> tuple[int, str, str]:
    with trio.fail_after(30):
        result = await trio.run_process(
            [IPT_BUS, *args, "--url", url], capture_stdout=True, capture_stderr=True, check=False
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.mark.parametrize(
    "command", [["stats"], ["topics"], ["tail"], ["publish", "a", "--type", "t"]]
)
async def test_no_bus_is_exit_1_with_one_clear_line(command: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await _run(*command, url=url)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert f"cannot reach the bus at {url}" in err or f"the bus at {url}" in err
    assert "ipt-bus serve" in err


async def test_rejected_input_is_exit_2_naming_the_problem(tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_text('{"task_id": "t-1"}')
    async with running_server() as server:
        code, _, err = await _run("publish", "a.*", "--type", "t", url=server.url)
        assert (code, "invalid_topic" in err, "'topic'" in err) == (2, True, True)
        code, _, err = await _run("publish", "a", "--type", "t", "--payload", "{x", url=server.url)
        assert (code, "--payload is not JSON" in err) == (2, True)
        missing = tmp_path / "missing.json"
        code, _, err = await _run(
            "publish", "a", "--type", "t", "--payload", f"@{missing}", url=server.url
        )
        assert (code, str(missing) in err) == (2, True)
        code, out, _ = await _run(
            "publish", "a", "--type", "t", "--payload", f"@{payload}", url=server.url
        )
        assert code == 0
        assert orjson.loads(out)["seq"] == 1
        code, out, _ = await _run("stats", "--json", url=server.url)
        assert (code, orjson.loads(out)["total_events"]) == (0, 1)
        code, out, _ = await _run("topics", "--json", url=server.url)
        assert code == 0
        assert {"topic": "a"}.items() <= orjson.loads(out)["topics"][0].items()


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Drops the first request unanswered, answers 503 to the second, 201 after."""

    protocol_version = "HTTP/1.1"
    keys: ClassVar[list[str | None]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.keys.append(self.headers.get("Idempotency-Key"))
        if len(self.keys) == 1:
            self.close_connection = True  # the answer is lost
            return
        status, body = (503, b"{}") if len(self.keys) == 2 else (201, b'{"id": "e-1", "seq": 1}')
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_publisher_retries_with_one_idempotency_key() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with EventBusPublisher(url) as publisher:
            assert publisher.publish(Event(type="t", topic="a")).seq == 1
        assert len(_Flaky.keys) == 3
        assert len(set(_Flaky.keys)) == 1  # one key, on every attempt
        assert _Flaky.keys[0] is not None
        _Flaky.keys.clear()
        _Flaky.keys.extend(["x", "y"])  # from now on: 201 at once
        with EventBusPublisher(url) as publisher:
            publisher.publish(Event(type="t", topic="a"))
    finally:
        server.shutdown()
        server.server_close()
    nowhere = EventBusPublisher(f"http://127.0.0.1:{free_port()}", retries=1)
    with pytest.raises(BusUnavailable, match="after 2 attempts"):
        nowhere.publish(Event(type="t", topic="a"))


# --- security (docs/security.md) ------------------------------------------------------------


async def _ipt_bus(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    with trio.fail_after(30):
        result = await trio.run_process(
            [IPT_BUS, *args], capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_token_signs_what_it_is_told_and_refuses_bad_arguments(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x" * 40 + "\n")
    code, out, err = await _ipt_bus(
        "token", "--secret-file", str(secret), "--sub", "exec-1", "--publish", "task.**",
        "--subscribe", "task.*", "--subscribe", "cost.update", "--admin", "--rate-limit", "50",
        "--ttl", "10m", "--audience", "bus", "--issuer", "ops",
    )  # fmt: skip
    assert (code, err) == (0, "")
    keys = Keys.load(str(secret), audience="bus", issuer="ops")
    identity = Authenticator(keys).verify(out.strip(), time.time())
    assert identity.sub == "exec-1"
    assert identity.grant == Grant(("task.**",), ("task.*", "cost.update"), True, 50.0)
    assert 590 <= identity.expires_at - time.time() <= 600
    for args, problem in [
        (["--secret-file", str(tmp_path / "nope"), "--sub", "a"], "cannot read"),
        (["--secret-file", str(secret), "--sub", "a", "--publish", "a..b"], "--publish"),
        (["--secret-file", str(secret), "--sub", "a", "--ttl", "soon"], "--ttl"),
    ]:
        code, out, err = await _ipt_bus("token", *args)
        assert (code, out) == (2, ""), args
        assert problem in err, (args, err)


async def test_client_commands_take_a_token(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"y" * 40)
    grant = Grant(("custom.*",), ("**",))
    good = make_token(b"y" * 40, "cli", now=time.time(), ttl_seconds=60, grant=grant)
    async with running_server(auth_secret_file=str(secret)) as server:
        code, _, err = await _run("stats", url=server.url)
        assert code == 2
        assert "unauthorized" in err
        assert err.count("\n") == 1
        code, out, _ = await _run(
            "publish", "custom.a", "--type", "t", "--token", good, url=server.url
        )
        assert (code, orjson.loads(out)["seq"]) == (0, 1)
        code, _, err = await _run(
            "publish", "task.a", "--type", "t", "--token", good, url=server.url
        )
        assert (code, "forbidden" in err) == (2, True)
        with trio.fail_after(30):
            result = await trio.run_process(
                [IPT_BUS, "topics", "--json", "--url", server.url],
                capture_stdout=True,
                check=False,
                env={**os.environ, "IPT_BUS_TOKEN": good},
            )
        counts = {t["topic"]: t["count"] for t in orjson.loads(result.stdout)["topics"]}
        assert counts["custom.a"] == 1
        code, out, _ = await _run("stats", "--token", good, url=server.url)
        assert code == 0
        assert "refused       auth missing 1, forbidden 1\n" in out
        code, _, err = await _run("tail", "--token", "nope", url=server.url)
        assert (code, "unauthorized" in err) == (2, True)


async def test_protected_mode_refuses_an_open_bus_off_loopback() -> None:
    code, out, err = await _ipt_bus("serve", "--host", "0.0.0.0", "--port", "0")
    assert (code, out) == (2, "")
    assert "--allow-anonymous" in err
    assert "--auth-secret-file" in err


def test_serve_takes_the_security_flags(tmp_path: Path) -> None:
    config = config_from_args(
        ["serve", "--host", "0.0.0.0", "--allow-anonymous", "--rate-limit", "100",
         "--rate-burst", "500", "--max-connections-per-identity", "4",
         "--allowed-hosts", "bus.example,bus", "--auth-audience", "a", "--auth-issuer", "i"]
    )  # fmt: skip
    assert (config.allow_anonymous, config.rate_limit_per_second, config.rate_burst) == (
        True,
        100.0,
        500.0,
    )
    assert config.max_connections_per_identity == 4
    assert config.allowed_hosts == ("bus.example", "bus")
    with pytest.raises(ValueError, match="--certfile and --keyfile"):
        config_from_args(["serve", "--certfile", str(tmp_path / "c.pem")])

"""`ipt-bus tail/publish/stats/topics` exit codes and errors, and the publisher's retries."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from ipt_bus.client import BusUnavailable, Event, EventBusPublisher
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


def test_publisher_retries_with_one_idempotency_key() -> None:
    seen: list[tuple[str | None, int]] = []
    answers = iter([httpx.ConnectError("refused"), 503, 201])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        seen.append((request.headers.get("Idempotency-Key"), len(seen)))
        if isinstance(answer, Exception):
            raise answer
        if answer == 503:
            return httpx.Response(503, json={"error": {"code": "overloaded", "message": "busy"}})
        return httpx.Response(201, json={"id": "e-1", "seq": 1})

    publisher = EventBusPublisher("http://bus.invalid")
    publisher._http = httpx.Client(
        base_url="http://bus.invalid", transport=httpx.MockTransport(handler)
    )
    assert publisher.publish(Event(type="t", topic="a")).seq == 1
    keys = {key for key, _ in seen}
    assert len(seen) == 3
    assert len(keys) == 1
    assert None not in keys  # one key, on every attempt

    publisher._http = httpx.Client(
        base_url="http://bus.invalid",
        transport=httpx.MockTransport(lambda _: httpx.Response(503, json={})),
    )
    publisher.retries = 1
    with pytest.raises(BusUnavailable, match="after 2 attempts"):
        publisher.publish(Event(type="t", topic="a"))

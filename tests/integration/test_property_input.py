"""Any JSON value in any field of the envelope or of a control frame gets a 4xx JSON error or
success — never a 500, never a 1011, never a traceback (issue 11, item 3; RELIABILITY E2).

The server runs in its own process so its log can be read for tracebacks afterwards.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

from tests.conftest import open_ws
from tests.processes import Served, serve_process

if TYPE_CHECKING:
    from collections.abc import Iterator

ENVELOPE = ("type", "topic", "payload", "timestamp", "source", "correlation_id", "id", "seq")
CONTROL: dict[str, dict[str, Any]] = {
    "subscribe": {"action": "subscribe", "id": 1, "topics": ["p.*"], "batch": False},
    "unsubscribe": {"action": "unsubscribe", "id": 1, "topics": ["p.*"]},
    "ping": {"action": "ping", "id": 1},
    "publish": {
        "action": "publish",
        "id": 1,
        "event": {"type": "t", "topic": "p.x", "payload": {}},
        "ack": True,
        "idempotency_key": "k",
    },
    "publish_batch": {
        "action": "publish",
        "id": 1,
        "events": [{"type": "t", "topic": "p.x", "payload": {}}],
    },
}
ANSWERS = {"subscribed", "unsubscribed", "pong", "published", "error"}

offsets = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23))
timestamps = st.one_of(
    st.datetimes(timezones=st.builds(timezone, offsets)).map(datetime.isoformat),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2026-02-30T00:00:00Z",
            "",
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # past 64 bits too
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    timestamps,
    st.sampled_from(["a.b", "**", "a.*", "a..b", "x" * 300, "logs.info", "task.status"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=8,
)
fields = st.sampled_from([*ENVELOPE, "extra"])


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one or two fields set to arbitrary JSON (or removed)."""
    event: dict[str, Any] = {"type": "t", "topic": "p.x", "payload": {}}
    for name in draw(st.lists(fields, min_size=1, max_size=2, unique=True)):
        if draw(st.booleans()) and name in event:
            del event[name]
        else:  # strings that parse as times are where the decoder did arithmetic
            event[name] = draw(timestamps if name == "timestamp" else json_values)
    return event


@st.composite
def control_frames(draw: st.DrawFn) -> dict[str, Any]:
    frame = dict(CONTROL[draw(st.sampled_from(sorted(CONTROL)))])
    name = draw(st.sampled_from([*frame, "extra", "action"]))
    if draw(st.booleans()) and name in frame:
        del frame[name]
    else:
        frame[name] = draw(json_values)
    if draw(st.booleans()) and "event" in frame:
        frame["event"] = draw(envelopes())
    return frame


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_process(tmp_path_factory.mktemp("property"), "--storage", "memory") as server:
        yield server


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(event=envelopes(), frame=control_frames())
async def test_any_value_in_any_field_gets_an_answer_never_a_crash(
    served: Served, event: dict[str, Any], frame: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
        for body in (event, [event]):
            response = await http.post("/events", json=body)
            assert response.status_code == 201 or 400 <= response.status_code < 500, (
                body,
                response.status_code,
                response.text,
            )
            answer = response.json()
            if response.status_code != 201:
                assert isinstance(answer["error"]["code"], str), answer
    try:
        async with open_ws(f"ws://127.0.0.1:{served.port}/ws?topics=none") as conn:
            await conn.get_message()  # welcome
            for sent in (frame, {"action": "publish", "id": "e", "event": event}):
                await conn.send_message(json.dumps(sent))  # big integers too
            await conn.send_message('{"action": "ping", "id": "probe"}')
            with trio.fail_after(10):
                while True:
                    got = orjson.loads(await conn.get_message())
                    if got.get("id") == "probe" and got.get("action") == "pong":
                        break
                    if "action" in got:
                        assert got["action"] in ANSWERS, got
    except ConnectionClosed as closed:
        raise AssertionError(f"the connection was closed: {closed.reason}") from None


def test_after_the_property_run_the_server_is_healthy_and_logged_no_traceback(
    served: Served,
) -> None:
    assert served.proc.poll() is None
    assert served.health() == 200
    log = served.log.read_text()
    assert "Traceback" not in log, log[-3000:]

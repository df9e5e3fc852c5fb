"""Payload schemas of the standard topics: what is checked, what is let through."""

from __future__ import annotations

from typing import Any

import pytest

from ipt_bus.core.errors import ErrorCode, ProtocolError
from ipt_bus.core.model import Event
from ipt_bus.core.schemas import SCHEMAS, check_events, check_payload, json_schemas
from tests.conftest import REQUIRED


@pytest.mark.parametrize("topic", sorted(SCHEMAS))
def test_required_fields_alone_pass_and_extra_fields_are_allowed(topic: str) -> None:
    check_payload(topic, {**REQUIRED[topic], "anything": {"else": [1, 2]}})


@pytest.mark.parametrize(
    ("topic", "payload", "code", "field", "expected"),
    [
        ("task.status", {"task_id": "t"}, ErrorCode.MISSING_FIELD, "payload.status", "required"),
        ("task.status", {"task_id": 7, "status": "s"}, ErrorCode.INVALID_FIELD, "payload.task_id", "expected a string"),
        ("phase.progress", {"task_id": "t", "phase": "p", "progress": 1.5}, ErrorCode.INVALID_FIELD, "payload.progress", "expected a number between 0 and 1"),
        ("phase.progress", {"task_id": "t", "phase": "p", "progress": True}, ErrorCode.INVALID_FIELD, "payload.progress", "a number"),
        ("cost.update", {"task_id": "t", "cost_delta": 1, "tokens_used": -1}, ErrorCode.INVALID_FIELD, "payload.tokens_used", "an integer of at least 0"),
        ("cost.update", {"task_id": "t", "cost_delta": 1, "tokens_used": 2.5}, ErrorCode.INVALID_FIELD, "payload.tokens_used", "an integer"),
        ("tool.health_changed", {"tool_name": "a", "status": "ok", "capabilities": ["x", 1]}, ErrorCode.INVALID_FIELD, "payload.capabilities", "an array of strings"),
        ("logs.error", {"level": "ERROR"}, ErrorCode.MISSING_FIELD, "payload.message", "required"),
    ],
)  # fmt: skip
def test_wrong_payloads_name_the_field_and_what_was_expected(
    topic: str, payload: dict[str, Any], code: ErrorCode, field: str, expected: str
) -> None:
    with pytest.raises(ProtocolError) as err:
        check_payload(topic, payload)
    assert (err.value.code, err.value.field) == (code, field)
    assert err.value.message.startswith(f"{field}: ")
    assert expected in err.value.message


def test_other_topics_take_any_object() -> None:
    check_payload("file.progress", {"progress": "not a number"})
    check_payload("legacy.broadcast", {})
    check_payload("custom.x", {"task_id": 1})


def test_paths_in_batches_and_websocket_frames() -> None:
    good = Event(type="t", topic="task.status", payload=REQUIRED["task.status"])
    bad = Event(type="t", topic="phase.progress", payload={"task_id": "t", "phase": "p"})
    with pytest.raises(ProtocolError, match=r"^events\[1\]\.payload\.progress"):
        check_events([good, bad], "events", batch=True)
    with pytest.raises(ProtocolError, match=r"^\[1\]\.payload\.progress"):
        check_events([good, bad], "", batch=True)
    with pytest.raises(ProtocolError, match=r"^event\.payload\.progress"):
        check_events([bad], "event", batch=False)


def test_json_schemas_describe_every_standard_topic() -> None:
    schemas = json_schemas()
    assert set(schemas) == set(SCHEMAS)
    progress = schemas["phase.progress"]
    assert progress["required"] == ["task_id", "phase", "progress"]
    assert progress["properties"]["progress"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert progress["additionalProperties"] is True

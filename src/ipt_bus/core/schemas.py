"""Payload schemas of the specification's standard topics (its "Event Schemas" and topic list).

Each schema is an attrs class whose fields are the payload fields the specification defines;
`metadata` says whether a field is required, its JSON type and its range. Validation checks only
those fields (present when required, right type, in range) and never rejects other payload
fields: the specification asks publishers to include comprehensive context. Topics without a
schema (`file.*`, `legacy.*`, custom ones) take any JSON object.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final

import attrs

from ipt_bus.core.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ipt_bus.core.model import Event


class Validation(enum.StrEnum):
    STRICT = "strict"  # reject (error naming the field; dead-lettered)
    WARN = "warn"  # accept, log and count
    OFF = "off"


_JSON_TYPES: Final = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "object": (dict,),
    "array": (list,),
}


def _f(
    kind: str,
    *,
    required: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    items: str | None = None,
    doc: str = "",
) -> Any:
    meta = {
        "kind": kind,
        "required": required,
        "minimum": minimum,
        "maximum": maximum,
        "items": items,
        "doc": doc,
    }
    return attrs.field(default=None, metadata=meta)


@attrs.frozen
class TaskStatus:
    task_id: str = _f("string", required=True)
    status: str = _f("string", required=True, doc="pending, started, running, completed, failed")
    previous_status: str = _f("string")
    message: str = _f("string")
    timestamp: str = _f("string", doc="ISO-8601")
    metadata: dict[str, Any] = _f("object", doc="workflow, user, priority, ...")


@attrs.frozen
class TaskCreated:
    task_id: str = _f("string", required=True)
    workflow: str = _f("string")
    metadata: dict[str, Any] = _f("object")


@attrs.frozen
class TaskCancelled:
    task_id: str = _f("string", required=True)
    reason: str = _f("string")


@attrs.frozen
class TaskRetry:
    task_id: str = _f("string", required=True)
    attempt: int = _f("integer", minimum=0)
    max_attempts: int = _f("integer", minimum=0)
    reason: str = _f("string")


@attrs.frozen
class PhaseStarted:
    task_id: str = _f("string", required=True)
    phase: str = _f("string", required=True)


@attrs.frozen
class PhaseProgress:
    task_id: str = _f("string", required=True)
    phase: str = _f("string", required=True)
    progress: float = _f("number", required=True, minimum=0, maximum=1)
    total_steps: int = _f("integer", minimum=0)
    completed_steps: int = _f("integer", minimum=0)
    current_step: str = _f("string")
    estimated_completion: str = _f("string", doc="ISO-8601")


@attrs.frozen
class PhaseCompleted:
    task_id: str = _f("string", required=True)
    phase: str = _f("string", required=True)
    duration_seconds: float = _f("number", minimum=0)


@attrs.frozen
class PhaseFailed:
    task_id: str = _f("string", required=True)
    phase: str = _f("string", required=True)
    error: str = _f("string")
    duration_seconds: float = _f("number", minimum=0)


@attrs.frozen
class CostUpdate:
    task_id: str = _f("string", required=True)
    cost_delta: float = _f("number", required=True)
    total_cost: float = _f("number", minimum=0)
    budget_remaining: float = _f("number")
    budget_total: float = _f("number", minimum=0)
    tool: str = _f("string")
    operation: str = _f("string")
    tokens_used: int = _f("integer", minimum=0)


@attrs.frozen
class BudgetWarning:
    total_cost: float = _f("number", required=True, minimum=0)
    budget_total: float = _f("number", required=True, minimum=0)
    task_id: str = _f("string")
    budget_remaining: float = _f("number")
    threshold: float = _f("number", minimum=0, maximum=1, doc="fraction of the budget")
    percent_used: float = _f("number", minimum=0)


@attrs.frozen
class BudgetExhausted:
    total_cost: float = _f("number", required=True, minimum=0)
    budget_total: float = _f("number", required=True, minimum=0)
    task_id: str = _f("string")


@attrs.frozen
class CostEstimate:
    task_id: str = _f("string", required=True)
    estimated_cost: float = _f("number", required=True, minimum=0)
    tool: str = _f("string")
    operation: str = _f("string")


@attrs.frozen
class ToolHealth:
    tool_name: str = _f("string", required=True)
    status: str = _f("string", required=True, doc="healthy, degraded, unavailable, ...")
    previous_status: str = _f("string")
    latency_ms: float = _f("number", minimum=0)
    error_message: str = _f("string")
    health_score: float = _f("number", minimum=0, maximum=1)
    capabilities: list[str] = _f("array", items="string")


@attrs.frozen
class ToolState:
    tool_name: str = _f("string", required=True)
    status: str = _f("string")
    reason: str = _f("string")
    latency_ms: float = _f("number", minimum=0)
    capabilities: list[str] = _f("array", items="string")


@attrs.frozen
class LogMessage:
    level: str = _f("string", required=True, doc="DEBUG, INFO, WARNING, ERROR")
    message: str = _f("string", required=True)
    logger: str = _f("string")
    module: str = _f("string")
    function: str = _f("string")
    line: int = _f("integer", minimum=0)
    context: dict[str, Any] = _f("object")


@attrs.frozen
class Standard:
    """A standard topic of the specification: what it carries, the event `type` its examples
    use (`event_type`), and its payload schema (None: any JSON object)."""

    description: str
    event_type: str
    schema: type | None = None


CATALOGUE: Final[dict[str, Standard]] = {
    "task.status": Standard(
        "Task lifecycle events (started, running, completed, failed)",
        "task_status_changed",
        TaskStatus,
    ),
    "task.created": Standard("New task creation events", "task_created", TaskCreated),
    "task.cancelled": Standard("Task cancellation events", "task_cancelled", TaskCancelled),
    "task.retry": Standard("Task retry events", "task_retry", TaskRetry),
    "phase.started": Standard("Phase execution started", "phase_started", PhaseStarted),
    "phase.progress": Standard("Phase progress updates", "phase_progress", PhaseProgress),
    "phase.completed": Standard("Phase execution completed", "phase_completed", PhaseCompleted),
    "phase.failed": Standard("Phase execution failed", "phase_failed", PhaseFailed),
    "cost.update": Standard("Real-time cost updates", "cost_update", CostUpdate),
    "cost.budget_warning": Standard("Budget threshold warnings", "budget_warning", BudgetWarning),
    "cost.budget_exhausted": Standard(
        "Budget exhausted events", "budget_exhausted", BudgetExhausted
    ),
    "cost.estimate": Standard("Cost estimation events", "cost_estimate", CostEstimate),
    "tool.health_changed": Standard(
        "Tool health status changes", "tool_health_changed", ToolHealth
    ),
    "tool.available": Standard("Tool becomes available", "tool_available", ToolState),
    "tool.unavailable": Standard("Tool becomes unavailable", "tool_unavailable", ToolState),
    "tool.degraded": Standard("Tool performance degraded", "tool_degraded", ToolState),
    "logs.debug": Standard("Debug level log messages", "log_message", LogMessage),
    "logs.info": Standard("Information level log messages", "log_message", LogMessage),
    "logs.warning": Standard("Warning level log messages", "log_message", LogMessage),
    "logs.error": Standard("Error level log messages", "log_message", LogMessage),
    "file.progress": Standard("File-based progress events", "file_event"),
    "file.workflow": Standard("File-based workflow events", "file_event"),
    "legacy.broadcast": Standard("General broadcast messages", "broadcast"),
}
"""The specification's standard topics: the one catalogue (`/topics`, validation, the client's
event builders)."""

STANDARD_PATTERNS: Final[dict[str, str]] = {
    "file.*": "Events from file-based event system",
    "legacy.*": "Legacy events from existing systems",
}

SCHEMAS: Final[dict[str, type]] = {
    topic: standard.schema for topic, standard in CATALOGUE.items() if standard.schema
}
_FIELDS: Final = {
    topic: [(f.name, f.metadata) for f in attrs.fields(cls)] for topic, cls in SCHEMAS.items()
}


def check_payload(topic: str, payload: dict[str, Any], field: str = "payload") -> None:
    """Raise `ProtocolError` naming the first defined field of `topic`'s schema that is wrong."""
    fields = _FIELDS.get(topic)
    if fields is None:
        return
    for name, meta in fields:
        value = payload.get(name)
        path = f"{field}.{name}"
        if value is None:
            if meta["required"]:
                raise ProtocolError(
                    ErrorCode.MISSING_FIELD, f"{path}: required for {topic} events", path
                )
            continue
        problem = _problem(value, meta)
        if problem is not None:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"{path}: expected {problem}", path)


def _problem(value: Any, meta: Any) -> str | None:
    kind = meta["kind"]
    lo, hi = meta["minimum"], meta["maximum"]
    ok = isinstance(value, _JSON_TYPES[kind]) and not isinstance(value, bool)
    if kind == "array" and ok and meta["items"] is not None:
        ok = all(isinstance(v, _JSON_TYPES[meta["items"]]) for v in value)
    in_range = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
    if in_range:
        return None
    what = {"string": "a string", "number": "a number", "integer": "an integer",
            "object": "an object", "array": "an array"}[kind]  # fmt: skip
    if kind == "array" and meta["items"] is not None:
        what = f"an array of {meta['items']}s"
    if lo is not None and hi is not None:
        return f"{what} between {lo:g} and {hi:g}"
    if lo is not None:
        return f"{what} of at least {lo:g}"
    return what


def check_events(events: Sequence[Event], field: str, *, batch: bool) -> None:
    """`check_payload` for each event; `field` is where the event (or the batch) was:
    ``event``/``events`` in a WebSocket publish, empty for a REST body."""
    if not batch:
        (event,) = events
        check_payload(event.topic, event.payload, f"{field}.payload" if field else "payload")
        return
    for i, event in enumerate(events):
        check_payload(event.topic, event.payload, f"{field}[{i}].payload")


def apply_policy(
    mode: str, events: Sequence[Event], field: str, *, batch: bool
) -> ProtocolError | None:
    """Check `events` as the validation `mode` says: ``strict`` raises the first problem
    (`ProtocolError` naming the field), ``warn`` returns it (the event is accepted), ``off``
    checks nothing."""
    if mode == Validation.OFF:
        return None
    try:
        check_events(events, field, batch=batch)
    except ProtocolError as exc:
        if mode == Validation.STRICT:
            raise
        return exc
    return None


def json_schemas() -> dict[str, Any]:
    """Every topic's payload schema as JSON Schema (draft 2020-12)."""
    out: dict[str, Any] = {}
    for topic, cls in SCHEMAS.items():
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in attrs.fields(cls):
            meta = f.metadata
            prop: dict[str, Any] = {"type": meta["kind"]}
            if meta["minimum"] is not None:
                prop["minimum"] = meta["minimum"]
            if meta["maximum"] is not None:
                prop["maximum"] = meta["maximum"]
            if meta["items"] is not None:
                prop["items"] = {"type": meta["items"]}
            if meta["doc"]:
                prop["description"] = meta["doc"]
            properties[f.name] = prop
            if meta["required"]:
                required.append(f.name)
        out[topic] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{topic} payload ({cls.__name__})",
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": True,
        }
    return out

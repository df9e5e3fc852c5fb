"""Builders of the specification's standard events: the spec's payload fields as keyword
arguments. Each returns an `Event`; `EventBusPublisher.publish_<name>` publishes it.

Fields left as None are left out of the payload; `extra` keyword arguments go into the payload
as they are (the spec asks publishers for comprehensive context).
"""

from __future__ import annotations

from typing import Any, Protocol

from ipt_bus.core.model import Event
from ipt_bus.core.schemas import CATALOGUE

LOG_LEVELS = ("debug", "info", "warning", "error")


def _event(
    topic: str,
    source: str | None,
    correlation_id: str | None,
    fields: dict[str, Any],
    extra: dict[str, Any],
) -> Event:
    """A standard topic's event, with the `type` the catalogue gives it."""
    payload = {k: v for k, v in fields.items() if v is not None}
    payload.update(extra)
    return Event(
        type=CATALOGUE[topic].event_type,
        topic=topic,
        payload=payload,
        source=source,
        correlation_id=correlation_id,
    )


# --- tasks ----------------------------------------------------------------------------------


def task_status(
    task_id: str,
    status: str,
    *,
    previous_status: str | None = None,
    message: str | None = None,
    workflow: str | None = None,
    metadata: dict[str, Any] | None = None,
    source: str | None = "executor",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    """`task.status`; `workflow` goes into `metadata` as the spec's schema has it."""
    meta = dict(metadata or {})
    if workflow is not None:
        meta["workflow"] = workflow
    fields = {
        "task_id": task_id,
        "status": status,
        "previous_status": previous_status,
        "message": message,
        "metadata": meta or None,
    }
    return _event("task.status", source, correlation_id, fields, extra)


def task_created(
    task_id: str,
    *,
    workflow: str | None = None,
    metadata: dict[str, Any] | None = None,
    source: str | None = "executor",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    fields = {"task_id": task_id, "workflow": workflow, "metadata": metadata}
    return _event("task.created", source, correlation_id, fields, extra)


def task_cancelled(
    task_id: str,
    *,
    reason: str | None = None,
    source: str | None = "executor",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    fields = {"task_id": task_id, "reason": reason}
    return _event("task.cancelled", source, correlation_id, fields, extra)


def task_retry(
    task_id: str,
    *,
    attempt: int | None = None,
    max_attempts: int | None = None,
    reason: str | None = None,
    source: str | None = "executor",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    fields = {
        "task_id": task_id,
        "attempt": attempt,
        "max_attempts": max_attempts,
        "reason": reason,
    }
    return _event("task.retry", source, correlation_id, fields, extra)


# --- phases ---------------------------------------------------------------------------------


def phase_started(
    task_id: str,
    phase: str,
    *,
    source: str | None = "executor",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    fields = {"task_id": task_id, "phase": phase}
    return _event("phase.started", source, correlation_id, fields, extra)


def phase_progress(
    task_id: str,
    phase: str,
    progress: float,
    *,
    total_steps: int | None = None,
    completed_steps: int | None = None,
    current_step: str | None = None,
    estimated_completion: str | None = None,
    source: str | None = "executor",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    fields = {
        "task_id": task_id,
        "phase": phase,
        "progress": progress,
        "total_steps": total_steps,
        "completed_steps": completed_steps,
        "current_step": current_step,
        "estimated_completion": estimated_completion,
    }
    return _event("phase.progress", source, correlation_id, fields, extra)


def phase_completed(
    task_id: str,
    phase: str,
    *,
    duration_seconds: float | None = None,
    source: str | None = "executor",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    fields = {"task_id": task_id, "phase": phase, "duration_seconds": duration_seconds}
    return _event("phase.completed", source, correlation_id, fields, extra)


def phase_failed(
    task_id: str,
    phase: str,
    *,
    error: str | None = None,
    source: str | None = "executor",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    fields = {"task_id": task_id, "phase": phase, "error": error}
    return _event("phase.failed", source, correlation_id, fields, extra)


# --- cost -----------------------------------------------------------------------------------


def cost_update(
    task_id: str,
    cost_delta: float,
    *,
    total_cost: float | None = None,
    budget_remaining: float | None = None,
    budget_total: float | None = None,
    tool: str | None = None,
    operation: str | None = None,
    tokens_used: int | None = None,
    source: str | None = "cost_tracker",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    fields = {
        "task_id": task_id,
        "cost_delta": cost_delta,
        "total_cost": total_cost,
        "budget_remaining": budget_remaining,
        "budget_total": budget_total,
        "tool": tool,
        "operation": operation,
        "tokens_used": tokens_used,
    }
    return _event("cost.update", source, correlation_id, fields, extra)


def budget_warning(
    total_cost: float,
    budget_total: float,
    *,
    task_id: str | None = None,
    threshold: float | None = None,
    budget_remaining: float | None = None,
    source: str | None = "cost_tracker",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    """`cost.budget_warning`: spending passed `threshold` (a fraction of `budget_total`)."""
    fields = {
        "task_id": task_id,
        "total_cost": total_cost,
        "budget_total": budget_total,
        "budget_remaining": budget_remaining,
        "threshold": threshold,
        "percent_used": round(100 * total_cost / budget_total, 2) if budget_total else None,
    }
    return _event("cost.budget_warning", source, correlation_id, fields, extra)


def budget_exhausted(
    total_cost: float,
    budget_total: float,
    *,
    task_id: str | None = None,
    source: str | None = "cost_tracker",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    fields = {"task_id": task_id, "total_cost": total_cost, "budget_total": budget_total}
    return _event("cost.budget_exhausted", source, correlation_id, fields, extra)


def cost_estimate(
    task_id: str,
    estimated_cost: float,
    *,
    tool: str | None = None,
    operation: str | None = None,
    source: str | None = "cost_tracker",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    fields = {
        "task_id": task_id,
        "estimated_cost": estimated_cost,
        "tool": tool,
        "operation": operation,
    }
    return _event("cost.estimate", source, correlation_id, fields, extra)


# --- tools ----------------------------------------------------------------------------------


def tool_health_changed(
    tool_name: str,
    status: str,
    *,
    previous_status: str | None = None,
    latency_ms: float | None = None,
    error_message: str | None = None,
    health_score: float | None = None,
    capabilities: list[str] | None = None,
    source: str | None = "tool_registry",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    fields = {
        "tool_name": tool_name,
        "status": status,
        "previous_status": previous_status,
        "latency_ms": latency_ms,
        "error_message": error_message,
        "health_score": health_score,
        "capabilities": capabilities,
    }
    return _event("tool.health_changed", source, correlation_id, fields, extra)


class ToolBuilder(Protocol):
    def __call__(
        self,
        tool_name: str,
        *,
        reason: str | None = None,
        latency_ms: float | None = None,
        capabilities: list[str] | None = None,
        source: str | None = "tool_registry",
        correlation_id: str | None = None,
        **extra: Any,
    ) -> Event: ...


def _tool(topic: str, status: str) -> ToolBuilder:
    def build(
        tool_name: str,
        *,
        reason: str | None = None,
        latency_ms: float | None = None,
        capabilities: list[str] | None = None,
        source: str | None = "tool_registry",
        correlation_id: str | None = None,
        **extra: Any,
    ) -> Event:
        fields = {
            "tool_name": tool_name,
            "status": status,
            "reason": reason,
            "latency_ms": latency_ms,
            "capabilities": capabilities,
        }
        return _event(topic, source, correlation_id, fields, extra)

    build.__name__ = topic.split(".")[1]
    build.__doc__ = f"`{topic}`."
    return build


tool_available = _tool("tool.available", "available")
tool_unavailable = _tool("tool.unavailable", "unavailable")
tool_degraded = _tool("tool.degraded", "degraded")


# --- logs -----------------------------------------------------------------------------------


def log(
    level: str,
    message: str,
    *,
    logger: str | None = None,
    module: str | None = None,
    function: str | None = None,
    line: int | None = None,
    context: dict[str, Any] | None = None,
    source: str | None = "logging_adapter",
    correlation_id: str | None = None,
    **extra: Any,
) -> Event:
    """`logs.<level>` (debug, info, warning, error; `critical` goes to `logs.error`)."""
    name = level.lower()
    if name == "critical":
        name = "error"
    if name not in LOG_LEVELS:
        raise ValueError(f"level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    fields = {
        "level": level.upper(),
        "message": message,
        "logger": logger,
        "module": module,
        "function": function,
        "line": line,
        "context": context,
    }
    return _event(f"logs.{name}", source, correlation_id, fields, extra)

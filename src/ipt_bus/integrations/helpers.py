"""Helpers for the specification's integration points: the executor, the cost tracker and the
tool registry publish their standard topics through these (docs/integrations.md).

All take an `EventBusPublisher` (default: a new one for ``$IPT_BUS_URL``) and publish
synchronously: each call returns once the bus has the event.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from ipt_bus.client import events
from ipt_bus.client.publisher import EventBusPublisher

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from ipt_bus.core.model import Published


class TaskRun(contextlib.ContextDecorator):
    """A task's lifecycle on the bus, as a context manager or a decorator.

    On entry: `task.created`, then `task.status` started (from pending) and running (from
    started). On exit: `task.status` completed, or failed with the error (which is not
    swallowed), from running; both carry `duration_seconds`. Every `previous_status` is the
    status published before it, so a consumer can follow the transitions. `phase()`
    wraps a phase the same way, `progress()` reports within the current phase.

        with TaskRun("task-123", workflow="PY_EDIT_TRIAGE") as task:
            with task.phase("code_analysis"):
                task.progress(0.5, current_step="Running mypy checks")
    """

    def __init__(
        self,
        task_id: str,
        *,
        workflow: str | None = None,
        publisher: EventBusPublisher | None = None,
        correlation_id: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.workflow = workflow
        self.correlation_id = correlation_id
        self.publisher = publisher or EventBusPublisher()
        self._started = 0.0
        self._phase: str | None = None

    def __enter__(self) -> TaskRun:
        self._started = time.monotonic()
        cid, workflow = self.correlation_id, self.workflow
        self.publisher.publish(
            events.task_created(self.task_id, workflow=workflow, correlation_id=cid)
        )
        for status, previous in (("started", "pending"), ("running", "started")):
            self.publisher.publish(
                events.task_status(
                    self.task_id,
                    status,
                    previous_status=previous,
                    workflow=workflow,
                    correlation_id=cid,
                )
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        duration = round(time.monotonic() - self._started, 6)
        status = "completed" if error is None else "failed"
        self.publisher.publish(
            events.task_status(
                self.task_id,
                status,
                previous_status="running",
                message=None if error is None else f"{type(error).__name__}: {error}",
                workflow=self.workflow,
                correlation_id=self.correlation_id,
                duration_seconds=duration,
            )
        )

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """`phase.started`, then `phase.completed` (or `phase.failed` with the error)."""
        cid = self.correlation_id
        self.publisher.publish(events.phase_started(self.task_id, name, correlation_id=cid))
        started = time.monotonic()
        self._phase = name
        try:
            yield
        except BaseException as error:
            self.publisher.publish(
                events.phase_failed(
                    self.task_id,
                    name,
                    error=f"{type(error).__name__}: {error}",
                    duration_seconds=round(time.monotonic() - started, 6),
                    correlation_id=cid,
                )
            )
            raise
        finally:
            self._phase = None
        self.publisher.publish(
            events.phase_completed(
                self.task_id,
                name,
                duration_seconds=round(time.monotonic() - started, 6),
                correlation_id=cid,
            )
        )

    def progress(self, progress: float, **fields: Any) -> Published:
        """`phase.progress` for the current phase (`progress` from 0 to 1)."""
        if self._phase is None:
            raise RuntimeError("progress() belongs inside `with task.phase(...)`")
        return self.publisher.publish(
            events.phase_progress(
                self.task_id, self._phase, progress, correlation_id=self.correlation_id, **fields
            )
        )


class CostTracker:
    """A task's spending against its budget: `cost.update` on every `add`, and
    `cost.budget_warning` once when spending crosses `warn_at` (a fraction of the budget),
    `cost.budget_exhausted` once when it reaches the budget."""

    def __init__(
        self,
        task_id: str,
        budget_total: float,
        warn_at: float = 0.8,
        *,
        publisher: EventBusPublisher | None = None,
    ) -> None:
        if budget_total <= 0 or not 0 < warn_at <= 1:
            raise ValueError("budget_total must be positive and warn_at in (0, 1]")
        self.task_id = task_id
        self.budget_total = budget_total
        self.warn_at = warn_at
        self.total_cost = 0.0
        self.warned = False
        self.exhausted = False
        self.publisher = publisher or EventBusPublisher()

    @property
    def budget_remaining(self) -> float:
        return round(self.budget_total - self.total_cost, 10)

    def add(
        self,
        cost_delta: float,
        *,
        tool: str | None = None,
        operation: str | None = None,
        tokens_used: int | None = None,
    ) -> Published:
        self.total_cost = round(self.total_cost + cost_delta, 10)
        published = self.publisher.publish(
            events.cost_update(
                self.task_id,
                cost_delta,
                total_cost=self.total_cost,
                budget_remaining=self.budget_remaining,
                budget_total=self.budget_total,
                tool=tool,
                operation=operation,
                tokens_used=tokens_used,
            )
        )
        if not self.warned and self.total_cost >= self.warn_at * self.budget_total:
            self.warned = True
            self.publisher.publish(
                events.budget_warning(
                    self.total_cost,
                    self.budget_total,
                    task_id=self.task_id,
                    threshold=self.warn_at,
                    budget_remaining=self.budget_remaining,
                )
            )
        if not self.exhausted and self.total_cost >= self.budget_total:
            self.exhausted = True
            self.publisher.publish(
                events.budget_exhausted(self.total_cost, self.budget_total, task_id=self.task_id)
            )
        return published


_STATE_TOPIC = {
    "healthy": events.tool_available,
    "available": events.tool_available,
    "degraded": events.tool_degraded,
    "unavailable": events.tool_unavailable,
    "unhealthy": events.tool_unavailable,
    "down": events.tool_unavailable,
}


class ToolHealthMonitor:
    """Tools' health as the registry sees it: `report` publishes `tool.health_changed` on each
    transition (not on repeats), then `tool.available` / `tool.degraded` / `tool.unavailable`
    for the new state (healthy/available, degraded, unavailable/unhealthy/down)."""

    def __init__(self, *, publisher: EventBusPublisher | None = None) -> None:
        self.publisher = publisher or EventBusPublisher()
        self.status: dict[str, str] = {}

    def report(
        self,
        tool_name: str,
        status: str,
        *,
        latency_ms: float | None = None,
        error_message: str | None = None,
        health_score: float | None = None,
        capabilities: list[str] | None = None,
    ) -> bool:
        """Record `tool_name`'s status; True (and events published) if it changed."""
        previous = self.status.get(tool_name)
        if previous == status:
            return False
        self.status[tool_name] = status
        self.publisher.publish(
            events.tool_health_changed(
                tool_name,
                status,
                previous_status=previous,
                latency_ms=latency_ms,
                error_message=error_message,
                health_score=health_score,
                capabilities=capabilities,
            )
        )
        build = _STATE_TOPIC.get(status)
        if build is not None:
            self.publisher.publish(
                build(
                    tool_name,
                    reason=error_message,
                    latency_ms=latency_ms,
                    capabilities=capabilities,
                )
            )
        return True

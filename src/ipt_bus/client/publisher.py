"""`EventBusPublisher`: the synchronous publisher of the specification's examples.

One kept-alive HTTP connection (httpx), a timeout on every call, and retries only where they
are safe: every publish carries an idempotency key, so a retry after a lost answer returns the
first answer instead of storing the event twice.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import httpx

from ipt_bus.client import _common, events
from ipt_bus.model import Event, Published

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

P = ParamSpec("P")
Self = TypeVar("Self", bound="EventBusPublisher")


def _helper(
    build: Callable[P, Event],
) -> Callable[Concatenate[EventBusPublisher, P], Published]:
    """A `publish_<name>` method: build the event with `build`, publish it."""

    def method(self: EventBusPublisher, /, *args: P.args, **kwargs: P.kwargs) -> Published:
        return self.publish(build(*args, **kwargs))

    method.__name__ = f"publish_{build.__name__}"
    method.__doc__ = f"Publish `events.{build.__name__}(...)`: {build.__doc__ or ''}".strip()
    return method


class EventBusPublisher:
    """Publish events over REST, synchronously.

    Args:
        url: the bus (default ``$IPT_BUS_URL``, else ``http://127.0.0.1:8765``).
        timeout: seconds for each HTTP request.
        retries: further attempts when the bus is unreachable or answers 503/507.
    """

    def __init__(self, url: str | None = None, *, timeout: float = 10.0, retries: int = 3) -> None:
        self.url = _common.bus_url(url)
        self.retries = retries
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def publish(self, event: Event) -> Published:
        """Publish one event; where the bus put it. Raises `PublishRejected`, `BusUnavailable`."""
        return self._post(event)[0]

    def publish_many(self, events: Sequence[Event]) -> list[Published]:
        """Publish events in one request (all or nothing, at most 1,000), in order."""
        return self._post(list(events))

    def _post(self, events: Event | list[Event]) -> list[Published]:
        body, headers = _common.publish_request(events)  # one key for every attempt
        last: object = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(_common.backoff(attempt - 1))
            try:
                response = self._http.post("/events", content=body, headers=headers)
            except httpx.TransportError as exc:
                last = exc
                continue
            result = _common.published(
                response.status_code, response.content, isinstance(events, Event)
            )
            if result is not None:
                return result
            last = f"HTTP {response.status_code}"
        raise _common.unavailable(self.url, self.retries + 1, last)

    def close(self) -> None:
        self._http.close()

    def __enter__(self: Self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    publish_task_status = _helper(events.task_status)
    publish_task_created = _helper(events.task_created)
    publish_task_cancelled = _helper(events.task_cancelled)
    publish_task_retry = _helper(events.task_retry)
    publish_phase_started = _helper(events.phase_started)
    publish_phase_progress = _helper(events.phase_progress)
    publish_phase_completed = _helper(events.phase_completed)
    publish_phase_failed = _helper(events.phase_failed)
    publish_cost_update = _helper(events.cost_update)
    publish_cost_budget_warning = _helper(events.budget_warning)
    publish_cost_budget_exhausted = _helper(events.budget_exhausted)
    publish_budget_warning = publish_cost_budget_warning
    publish_budget_exhausted = publish_cost_budget_exhausted
    publish_cost_estimate = _helper(events.cost_estimate)
    publish_tool_health_changed = _helper(events.tool_health_changed)
    publish_tool_available = _helper(events.tool_available)
    publish_tool_unavailable = _helper(events.tool_unavailable)
    publish_tool_degraded = _helper(events.tool_degraded)
    publish_log = _helper(events.log)

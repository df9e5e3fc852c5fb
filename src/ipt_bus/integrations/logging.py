"""`EventBusHandler`: send a Python program's log records to the bus as `logs.<level>` events.

    import logging
    from ipt_bus.logging import EventBusHandler

    logging.getLogger().addHandler(EventBusHandler())

`emit` never blocks and never raises into the caller: records go into a bounded queue that a
background thread sends in batches (`publish_many`). When the bus is down or slow, the queue
fills and further records are dropped and counted (`dropped`); once the bus answers again, a
`logs.warning` event says how many were lost. `close()` (called by `logging.shutdown` at exit)
sends what is queued, within `flush_timeout`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Any, Final

import orjson

from ipt_bus.client.events import log as log_event
from ipt_bus.client.publisher import EventBusPublisher
from ipt_bus.core.errors import ClientError
from ipt_bus.core.model import Event

# Attributes every LogRecord has: everything else was passed in `extra` and becomes `context`.
_STANDARD: Final = frozenset(
    set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
)
_STOP: Final = object()
_FORMATTER: Final = logging.Formatter()


def _level(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def _jsonable(context: dict[str, Any]) -> dict[str, Any]:
    """`context` as JSON can carry it (unknown objects become their repr)."""
    try:
        value: dict[str, Any] = orjson.loads(orjson.dumps(context, default=repr))
    except (TypeError, orjson.JSONEncodeError):  # e.g. integers past 64 bits
        return {k: repr(v) for k, v in context.items()}
    return value


class EventBusHandler(logging.Handler):
    """Publish log records to the bus (`logs.debug|info|warning|error`).

    Args:
        url: the bus (default ``$IPT_BUS_URL``, else ``http://127.0.0.1:8765``).
        level: the least level handled.
        queue_size: records waiting to be sent; more are dropped (and counted).
        batch_size: records per request.
        source: the events' `source`.
    """

    def __init__(
        self,
        url: str | None = None,
        level: int = logging.NOTSET,
        *,
        queue_size: int = 10_000,
        batch_size: int = 100,
        source: str = "logging_adapter",
        flush_timeout: float = 5.0,
    ) -> None:
        super().__init__(level)
        self.source = source
        self.batch_size = batch_size
        self.flush_timeout = flush_timeout
        self.dropped = 0  # records lost: queue full, or the bus refused or was down
        self.sent = 0
        self._queue: queue.Queue[Event | object] = queue.Queue(queue_size)
        self._publisher = EventBusPublisher(url, timeout=2.0, retries=0)
        self._reported = 0  # `dropped` already announced on the bus
        self._thread = threading.Thread(target=self._run, name="ipt-bus-log-handler", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self._thread:
            return  # our own sending must not feed itself
        try:
            context = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
            if record.exc_info:
                context["exception"] = _FORMATTER.formatException(record.exc_info)
            event = log_event(
                _level(record.levelno),
                record.getMessage(),
                logger=record.name,
                module=record.module,
                function=record.funcName,
                line=record.lineno,
                context=_jsonable(context) if context else None,
                source=self.source,
            )
            event = Event(
                type=event.type,
                topic=event.topic,
                payload={**event.payload, "level": record.levelname},
                source=event.source,
            )
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
        except Exception:  # never into the caller
            self.dropped += 1

    def _run(self) -> None:
        backoff = 0.1
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < self.batch_size:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._send(batch)
                    return
                batch.append(more)
            if self._send(batch):
                backoff = 0.1
            else:
                time.sleep(backoff)  # the bus is down: let the queue absorb, then try again
                backoff = min(backoff * 2, 5.0)

    def _send(self, batch: list[Any]) -> bool:
        try:
            self._publisher.publish_many(batch)
        except (ClientError, OSError):
            self.dropped += len(batch)
            return False
        self.sent += len(batch)
        lost = self.dropped - self._reported
        if lost:
            with contextlib.suppress(ClientError, OSError):
                self._publisher.publish(
                    log_event(
                        "warning",
                        f"{lost} log records were dropped while the bus could not take them",
                        logger=__name__,
                        context={"dropped_total": self.dropped},
                        source=self.source,
                    )
                )
                self._reported = self.dropped
        return True

    def flush(self) -> None:
        """Wait (at most `flush_timeout`) until the queue is empty."""
        deadline = time.monotonic() + self.flush_timeout
        while not self._queue.empty() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)

    def close(self) -> None:
        """Send what is queued (within `flush_timeout`), then stop the sender."""
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=self.flush_timeout)
            self._thread.join(self.flush_timeout)
        self._publisher.close()
        super().close()

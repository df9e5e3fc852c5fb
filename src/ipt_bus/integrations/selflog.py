"""The bus's own warnings and errors as `logs.*` events (`ipt-bus serve --log-to-bus`).

A `logging.Handler` on the ``ipt_bus`` logger keeps WARNING and worse in a bounded deque (it may
be called from any thread and must never wait); a task beside the bus publishes them every
quarter second through the ingress like any other event. Records logged while that task
publishes are not taken, so a failure to publish cannot feed itself.
"""

from __future__ import annotations

import collections
import logging
from functools import partial
from typing import TYPE_CHECKING, Final

import trio

from ipt_bus.bus import ingress
from ipt_bus.bus.ingress import Offer, Origin
from ipt_bus.core import codec
from ipt_bus.core.errors import BusError
from ipt_bus.core.model import Event

if TYPE_CHECKING:
    from ipt_bus.bus.node import BusHandle

DRAIN_SECONDS: Final = 0.25


class BusLogHandler(logging.Handler):
    def __init__(self, capacity: int = 1_000) -> None:
        super().__init__(logging.WARNING)
        self.pending: collections.deque[Event] = collections.deque(maxlen=capacity)
        self.publishing = False
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.publishing:
            return
        if len(self.pending) == self.pending.maxlen:
            self.dropped += 1
        topic = "logs.error" if record.levelno >= logging.ERROR else "logs.warning"
        payload = {
            "level": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
        }
        self.pending.append(
            Event(type="log_message", topic=topic, payload=payload, source="ipt-bus")
        )

    async def run(self, bus: BusHandle) -> None:
        """Publish what was logged, every `DRAIN_SECONDS`, until cancelled."""
        while True:
            await trio.sleep(DRAIN_SECONDS)
            if not self.pending:
                continue
            events = list(self.pending)
            self.pending.clear()
            self.publishing = True
            try:
                await ingress.publish(
                    bus, Offer(ORIGIN, partial(_same, events), partial(_raw, events), batch=True)
                )
            except BusError:
                self.dropped += len(events)
            finally:
                self.publishing = False


ORIGIN: Final = Origin("bus", source="bus:log")


def _same(events: list[Event]) -> list[Event]:
    return events


def _raw(events: list[Event]) -> str:
    return codec.dumps([codec.event_to_wire(e) for e in events]).decode()

"""The event envelope (DESIGN §2): one class for publishing and receiving."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

Seq = int
"""Position of an event in the bus's log; strictly increasing, the resume cursor."""


@attrs.frozen
class Event:
    """One event.

    Publishers fill the first six fields; the bus sets `id` and `seq` (and `timestamp`, when
    absent) once the event is in its log.
    """

    type: str
    topic: str
    payload: dict[str, Any] = attrs.field(factory=dict)
    timestamp: datetime | None = None
    source: str | None = None
    correlation_id: str | None = None
    id: str | None = None
    seq: Seq | None = None


@attrs.frozen
class Published:
    """Where the log put an accepted event: what acks and REST answers return."""

    id: str
    seq: Seq

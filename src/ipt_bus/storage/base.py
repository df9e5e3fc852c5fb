"""The `EventLog` interface: what every storage backend promises.

Contract:
- `append` assigns each event the next `seq` (strictly increasing, no reuse within an epoch) and
  an `id`, and returns only once the events are in the log (for durable backends: committed).
  Order within one call is kept. The router is the only caller, so calls never overlap.
- `epoch` changes whenever the log starts over (a new memory log, a new database): a `seq` from
  another epoch means nothing here.
- `read_after(since, ...)` returns the oldest matching events with `seq > since`, at most `limit`;
  `read_latest(...)` the newest `limit` matching ones, in ascending order. `limit=0` returns none.
- `first_seq` is the oldest retained `seq` (`last_seq + 1` when empty); `last_seq` is 0 when
  nothing was ever appended. A reader asking for `since < first_seq - 1` has lost history:
  that is the caller's to announce (a `gap` with reason `retention`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import attrs

from ipt_bus.model import Event

if TYPE_CHECKING:
    from collections.abc import Sequence


@attrs.frozen
class Record:
    """An event as stored: the event (with `id`/`seq`) and its encoded JSON, made once."""

    event: Event
    data: str

    @property
    def seq(self) -> int:
        assert self.event.seq is not None
        return self.event.seq


@attrs.frozen
class LogStats:
    size: int  # events held
    capacity: int | None  # events it can hold; None when bounded otherwise
    first_seq: int
    last_seq: int


class EventLog(Protocol):
    @property
    def epoch(self) -> str: ...

    @property
    def first_seq(self) -> int: ...

    @property
    def last_seq(self) -> int: ...

    async def append(self, events: Sequence[Event]) -> list[Record]: ...

    async def read_after(self, since: int, patterns: Sequence[str], limit: int) -> list[Record]: ...

    async def read_latest(self, patterns: Sequence[str], limit: int) -> list[Record]: ...

    def stats(self) -> LogStats: ...

    async def aclose(self) -> None: ...

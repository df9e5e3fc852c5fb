"""The `EventLog` interface: what every storage backend promises.

Contract:
- `append` assigns each event the next `seq` (strictly increasing, never reused within an epoch,
  also across restarts of a durable log) and an `id`, and returns only once the events are in the
  log (for durable backends: committed). Order within one call is kept. The router is the only
  caller, so calls never overlap. It raises `StorageError` and stores nothing when it fails.
- `keys` names the idempotency keys of the publishes in the call; `recall(key)` returns what a
  key's publish got while the key is inside the dedupe window (for durable logs, across restarts).
- `epoch` changes whenever the log starts over (a new memory log, a new database): a `seq` from
  another epoch means nothing here.
- `read_after(since, query, limit, until=None)` returns the oldest matching events with
  `since < seq <= until` (no upper bound when `until` is None), at most `limit`, and the cursor
  to continue from; `read_latest(query, limit)` the newest `limit` matching ones, in ascending
  order. `limit=0` returns none.
- `first_seq` is the oldest retained `seq` (`last_seq + 1` when empty); `last_seq` is 0 when
  nothing was ever appended. A reader asking for `since < first_seq - 1` has lost history:
  that is the caller's to announce (a `gap` with reason `retention`).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol, runtime_checkable

import attrs

from ipt_bus.core.errors import StorageError
from ipt_bus.core.frames import Gap, GapReason
from ipt_bus.core.model import Event, Published
from ipt_bus.core.topics import matches_any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from datetime import datetime


class Record(NamedTuple):
    """An event as stored: where it is, and its JSON as UTF-8 bytes (encoded once, written as
    they are to every subscriber's socket)."""

    seq: int
    id: str
    topic: str
    data: bytes


@attrs.frozen
class Query:
    """A filter over the log (DESIGN §4, `GET /events`): every given condition must hold."""

    patterns: tuple[str, ...] = ()  # topic patterns; none: every topic
    types: tuple[str, ...] = ()
    correlation_id: str | None = None
    time_from: float | None = None  # unix seconds of the event's `timestamp`, inclusive
    time_to: float | None = None  # exclusive

    def matches(self, event: Event, timestamp: datetime | None = None) -> bool:
        """`timestamp`: the one the log gave `event` (else its own; stored events have one)."""
        if self.time_from is None and self.time_to is None:
            ts = 0.0  # not looked at
        else:
            moment = timestamp or event.timestamp
            assert moment is not None
            ts = moment.timestamp()
        return self.matches_fields(event.topic, event.type, event.correlation_id, ts)

    def matches_fields(
        self, topic: str, type_: str, correlation_id: str | None, timestamp: float
    ) -> bool:
        """`matches`, for a log that keeps these fields beside the event (Redis)."""
        if self.patterns and not matches_any(self.patterns, topic):
            return False
        if self.types and type_ not in self.types:
            return False
        if self.correlation_id is not None and correlation_id != self.correlation_id:
            return False
        return (self.time_from is None or timestamp >= self.time_from) and (
            self.time_to is None or timestamp < self.time_to
        )


ALL = Query()


@attrs.frozen
class Page:
    records: list[Record]
    next_since: int  # continue from here: every event up to it was examined
    first_seq: int  # the oldest retained `seq` when the page was read (after a gap, if any)


@attrs.frozen
class Key:
    """An idempotency key of one publish inside an `append` call."""

    key: str
    start: int  # index of the publish's first event in the call's events
    count: int


@attrs.frozen
class LogStats:
    size: int  # events held
    capacity: int | None  # events it can hold; None when bounded otherwise
    first_seq: int
    last_seq: int
    bytes: int  # encoded event bytes held
    keys: int = 0  # idempotency keys remembered
    keys_evicted: int = 0  # keys forgotten before their window ended (the bounds)


class EventLog(Protocol):
    @property
    def epoch(self) -> str: ...

    @property
    def first_seq(self) -> int: ...

    @property
    def last_seq(self) -> int: ...

    @property
    def append_waits(self) -> bool:
        """Whether `append` makes its caller wait (False: it returns without a checkpoint, and
        the router ends its fan-out rounds itself)."""
        ...

    async def append(self, events: Sequence[Event], keys: Sequence[Key] = ()) -> list[Record]: ...

    async def recall(self, key: str) -> list[Published] | None: ...

    async def read_after(
        self, since: int, query: Query, limit: int, *, until: int | None = None
    ) -> Page: ...

    async def read_latest(self, query: Query, limit: int) -> list[Record]: ...

    async def enforce_retention(self) -> int:
        """Remove what the retention settings no longer keep; returns how many events went."""
        ...

    def stats(self) -> LogStats: ...

    def problem(self) -> str | None:
        """Why the log cannot take writes right now (e.g. the disk is full), or None."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SharedLog(EventLog, Protocol):
    """A log several bus nodes append to (Redis). Its `append` only stores: each node fans out
    what its one `tail` reads, so every node delivers the same events in the same order."""

    def tail(self, after: int) -> AsyncIterator[list[Record]]:
        """The events after `after` as they arrive, in `seq` order, in batches."""
        ...

    async def settle(self, seq: int, timeout: float) -> None:
        """Wait (at most `timeout`) until `last_seq` reaches `seq`: a client resuming on this
        node may have seen, on another, events this node has not read yet."""
        ...

    async def append_keyed(
        self, events: Sequence[Event], keys: Sequence[Key] = ()
    ) -> tuple[list[Record], dict[str, list[Published]]]:
        """`append`, checking each publish's key as it stores: a key another node logged since
        the caller's `recall` makes that publish a repeat (not stored). The records of what was
        stored, in order, and each repeat's original answer by key."""
        ...

    async def rejoin(self) -> int:
        """After `EpochChanged`: adopt the log as it is now (retrying until it answers);
        returns its last `seq`, where the tail goes on."""
        ...


class EpochChanged(StorageError):
    """A shared log holds another history than this node's (it was flushed or replaced)."""


KEY_OVERHEAD_BYTES: Final = 264  # measured: a remembered key costs this plus its text


@attrs.define
class KeyWindow:
    """Idempotency keys seen within the last `window_seconds`, oldest first, each with where its
    publish went: the first `seq` and how many events (a publish's events get consecutive seqs),
    so a key costs the same whether its publish held one event or a thousand.

    Bounded: past `max_keys` keys, or past `max_bytes` (each key's UTF-8 bytes plus
    `KEY_OVERHEAD_BYTES`), the oldest key is forgotten early (counted in `evicted`), so a flood of
    keyed publishes cannot grow memory without limit.
    """

    window_seconds: float
    max_keys: int = 100_000
    max_bytes: int = 32 * 1024 * 1024
    evicted: int = 0
    _keys: collections.OrderedDict[str, tuple[float, int, int]] = attrs.field(
        factory=collections.OrderedDict
    )
    _bytes: int = 0

    def get(self, key: str, now: float) -> tuple[int, int] | None:
        """(first seq, count) of the key's publish, if it is remembered and inside the window."""
        found = self._keys.get(key)
        if found is None or found[0] < now - self.window_seconds:
            return None
        return found[1], found[2]

    def put(self, key: str, first: int, count: int, at: float) -> None:
        if key in self._keys:
            self._forget(key)
        self._keys[key] = (at, first, count)
        self._bytes += _key_bytes(key)
        self.prune(at)
        while len(self._keys) > self.max_keys or self._bytes > self.max_bytes:
            self._forget(next(iter(self._keys)))
            self.evicted += 1

    def _forget(self, key: str) -> None:
        del self._keys[key]
        self._bytes -= _key_bytes(key)

    def prune(self, now: float) -> None:
        cutoff = now - self.window_seconds
        while self._keys:
            key, (at, _, _) = next(iter(self._keys.items()))
            if at >= cutoff:
                break
            self._forget(key)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._keys)


def _key_bytes(key: str) -> int:
    return len(key.encode("utf-8", "surrogatepass")) + KEY_OVERHEAD_BYTES


def published_range(epoch: str, first: int, count: int) -> list[Published]:
    """Where a publish of `count` events from `first` went (an idempotent repeat's answer)."""
    return [Published(event_id(epoch, s), s) for s in range(first, first + count)]


def resume_point(since: int, epoch: str | None, log: EventLog) -> tuple[int, Gap | None]:
    """Where a reader resuming after `since` (counted in `epoch`, if it says) starts in `log`,
    and the gap to tell it first. A `since` from another epoch, or past this log's end, counts
    in a history that is gone: the reader starts from this log's beginning."""
    if (epoch is not None and epoch != log.epoch) or since > log.last_seq:
        return 0, Gap(GapReason.EPOCH, since + 1, None, log.epoch)
    return since, None


def retention_gap(since: int, page: Page, upto: int | None = None) -> Gap | None:
    """The gap before `page`, read after `since` (and up to `upto`): what retention had removed
    when the page was read. The one computation for `GET /events` and WebSocket catch-ups."""
    if since >= page.first_seq - 1:
        return None
    last_missing = page.first_seq - 1 if upto is None else min(page.first_seq - 1, upto)
    return Gap(GapReason.RETENTION, since + 1, last_missing)


def event_id(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


@attrs.frozen
class DeadLetter:
    """Something a transport handed the bus that it could not turn into logged events."""

    id: int
    at: float  # unix seconds
    source: str  # "rest", "ws", "file:<path>", ...
    code: str  # the error code it got (docs/protocol.md)
    message: str
    field: str | None
    raw: str  # what was received, as text: retrying decodes it again
    attempts: int = 0

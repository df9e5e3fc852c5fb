"""In-memory ring buffer log: the last `capacity` events; a new epoch on every start."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import attrs

from ipt_bus.codec import encode_event
from ipt_bus.model import Event
from ipt_bus.storage.base import LogStats, Record
from ipt_bus.topics import matches_any

if TYPE_CHECKING:
    from collections.abc import Sequence


@attrs.define
class MemoryLog:
    """Ring of records indexed by ``seq % capacity``: O(1) append and seek."""

    capacity: int
    _epoch: str = attrs.field(factory=lambda: secrets.token_hex(8))
    _ring: list[Record | None] = attrs.field(init=False)
    _last: int = 0

    def __attrs_post_init__(self) -> None:
        self._ring = [None] * self.capacity

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def first_seq(self) -> int:
        return max(1, self._last - self.capacity + 1)

    @property
    def last_seq(self) -> int:
        return self._last

    async def append(self, events: Sequence[Event]) -> list[Record]:
        return self.append_nowait(events)

    def append_nowait(self, events: Sequence[Event]) -> list[Record]:
        now = datetime.now(UTC)
        out = []
        seq = self._last
        for event in events:
            seq += 1
            stored = Event(  # direct: attrs.evolve costs 3x as much on this hot path
                type=event.type,
                topic=event.topic,
                payload=event.payload,
                timestamp=event.timestamp or now,
                source=event.source,
                correlation_id=event.correlation_id,
                id=f"{self._epoch}-{seq}",
                seq=seq,
            )
            record = Record(stored, encode_event(stored).decode())
            self._ring[seq % self.capacity] = record
            out.append(record)
        self._last = seq
        return out

    def _get(self, seq: int) -> Record:
        record = self._ring[seq % self.capacity]
        assert record is not None
        return record

    async def read_after(self, since: int, patterns: Sequence[str], limit: int) -> list[Record]:
        out: list[Record] = []
        seq = max(since + 1, self.first_seq)
        while seq <= self._last and len(out) < limit:
            record = self._get(seq)
            if matches_any(patterns, record.event.topic):
                out.append(record)
            seq += 1
        return out

    async def read_latest(self, patterns: Sequence[str], limit: int) -> list[Record]:
        out: list[Record] = []
        seq = self._last
        first = self.first_seq
        while seq >= first and len(out) < limit:
            record = self._get(seq)
            if matches_any(patterns, record.event.topic):
                out.append(record)
            seq -= 1
        out.reverse()
        return out

    def stats(self) -> LogStats:
        return LogStats(
            size=self._last - self.first_seq + 1,
            capacity=self.capacity,
            first_seq=self.first_seq,
            last_seq=self._last,
        )

    async def aclose(self) -> None:
        return None

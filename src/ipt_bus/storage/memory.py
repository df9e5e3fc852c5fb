"""In-memory ring buffer log: the last `capacity` events; a new epoch on every start."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ipt_bus.core.codec import encode_stored
from ipt_bus.core.model import Event, Published
from ipt_bus.storage.base import (
    Key,
    KeyWindow,
    LogStats,
    Page,
    Query,
    Record,
    event_id,
    published_range,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


SCAN_EVENTS: Final = 10_000  # ring entries one read examines at most


@attrs.define
class MemoryLog:
    """Ring of records indexed by ``seq % capacity``: O(1) append and seek."""

    capacity: int
    dedupe_window_seconds: float = 120.0
    dedupe_max_keys: int = 100_000
    dedupe_max_bytes: int = 32 * 1024 * 1024
    _epoch: str = attrs.field(factory=lambda: secrets.token_hex(8))
    # each record with the event as published and the timestamp it was stored with
    _ring: list[tuple[Record, Event, datetime] | None] = attrs.field(init=False)
    _last: int = 0
    _bytes: int = 0
    _keys: KeyWindow = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._ring = [None] * self.capacity
        self._keys = KeyWindow(
            self.dedupe_window_seconds, self.dedupe_max_keys, self.dedupe_max_bytes
        )

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def first_seq(self) -> int:
        return max(1, self._last - self.capacity + 1)

    @property
    def last_seq(self) -> int:
        return self._last

    @property
    def append_waits(self) -> bool:
        return False  # an append is a few list stores

    async def append(self, events: Sequence[Event], keys: Sequence[Key] = ()) -> list[Record]:
        return self.append_nowait(events, keys)

    def append_nowait(self, events: Sequence[Event], keys: Sequence[Key] = ()) -> list[Record]:
        now = datetime.now(UTC)
        out = []
        seq = self._last
        ring = self._ring
        capacity = self.capacity
        epoch = self._epoch
        for event in events:
            seq += 1
            ident = event_id(epoch, seq)
            moment = event.timestamp or now
            record = Record(seq, ident, event.topic, encode_stored(event, moment, ident, seq))
            old = ring[seq % capacity]
            if old is not None:
                self._bytes -= len(old[0].data)
            self._bytes += len(record.data)
            ring[seq % capacity] = (record, event, moment)
            out.append(record)
        self._last = seq
        if keys:
            at = time.time()
            for k in keys:
                self._keys.put(k.key, out[k.start].seq, k.count, at)
        return out

    async def recall(self, key: str) -> list[Published] | None:
        found = self._keys.get(key, time.time())
        return None if found is None else published_range(self._epoch, *found)

    def _get(self, seq: int) -> tuple[Record, Event, datetime]:
        entry = self._ring[seq % self.capacity]
        assert entry is not None
        return entry

    async def read_after(
        self, since: int, query: Query, limit: int, *, until: int | None = None
    ) -> Page:
        out: list[Record] = []
        first = self.first_seq
        seq = max(since + 1, first)
        last = self._last if until is None else min(until, self._last)
        while seq <= last and len(out) < limit:
            # on the event loop: a sparse filter over a large ring lets others run between
            # stretches (retention cannot move meanwhile: the ring only moves by appends,
            # and those are read too if they land before `last`)
            end = min(last, seq + SCAN_EVENTS - 1)
            while seq <= end and len(out) < limit:
                record, event, moment = self._get(seq)
                if query.matches(event, moment):
                    out.append(record)
                seq += 1
            if seq <= last and len(out) < limit:
                await trio.lowlevel.checkpoint()
                if seq < self.first_seq:  # the ring moved past what is left to read
                    break
        return Page(out, max(since, seq - 1), first)

    async def read_latest(self, query: Query, limit: int) -> list[Record]:
        out: list[Record] = []
        seq = self._last
        first = self.first_seq
        while seq >= first and len(out) < limit:
            record, event, moment = self._get(seq)
            if query.matches(event, moment):
                out.append(record)
            seq -= 1
        out.reverse()
        return out

    async def enforce_retention(self) -> int:
        self._keys.prune(time.time())
        return 0  # the ring keeps its last `capacity` events by construction

    def stats(self) -> LogStats:
        return LogStats(
            size=self._last - self.first_seq + 1,
            capacity=self.capacity,
            first_seq=self.first_seq,
            last_seq=self._last,
            bytes=self._bytes,
            keys=len(self._keys),
            keys_evicted=self._keys.evicted,
        )

    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None

"""Dead letters: what a transport handed the bus that it could not turn into logged events.

Publishes that fail validation, or that the log failed to store, are kept here with the error
they got, where they came from and when, so nothing the bus was given vanishes silently
(`accepted + rejected + dead_lettered == received` holds per transport). Bounded by count,
bytes and age; the oldest go first, and that too is counted. A durable log persists each entry
(so they survive a restart); reads are served from memory.

Writes to the store are batched: `add` and `remove` only change memory and mark what changed,
and `flush` (run every second by the bus, and at shutdown) writes all of it in one transaction.
So a client flooding invalid publishes costs one small transaction a second, not one per frame.

With a shared store (the Redis log: several nodes, one bus) every flush also reads the store's
entries back, so each node's `/dlq` shows every node's dead letters within a flush interval;
ids come from blocks each node reserves in the store, so they never collide.

Sizes are UTF-8 bytes of what each entry holds (its raw text and message), not characters: 800 KB
of four-byte characters is 3.2 MB here, as in memory and on disk.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from ipt_bus.core.errors import BusError, StorageError, as_protocol_error
from ipt_bus.storage.base import DeadLetter

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


class DeadLetterStore(Protocol):
    """Where dead letters are persisted (the SQLite log); memory mode has none."""

    async def sync_dead(self, put: Sequence[DeadLetter], drop: Sequence[int]) -> None:
        """Write `put` (insert or replace) and delete `drop`, in one transaction."""
        ...


@runtime_checkable
class SharedDeadLetterStore(DeadLetterStore, Protocol):
    """A store several nodes write to (Redis): read back at every flush."""

    async def load_dead(self) -> list[DeadLetter]:
        """Every stored entry, oldest id first."""
        ...

    async def reserve_dead_ids(self, count: int) -> int:
        """The first of `count` ids no other node will use."""
        ...


ID_BLOCK = 1_000_000  # ids a node reserves at once from a shared store (refilled at half)


@attrs.define
class DeadLetters:
    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_age_seconds: float = 7 * 24 * 3600.0
    store: DeadLetterStore | None = None
    _entries: collections.OrderedDict[int, DeadLetter] = attrs.field(
        factory=collections.OrderedDict
    )
    _bytes: int = 0
    _sizes: dict[int, int] = attrs.field(factory=dict)  # id -> bytes it holds
    _next_id: int = 1
    _id_limit: int | None = None  # a shared store: the end of the id block reserved
    _changed: set[int] = attrs.field(factory=set)  # ids to write or delete at the next flush
    counts: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def load(self, letters: Iterable[DeadLetter]) -> None:
        """Take the entries a durable log held at start-up."""
        for letter in letters:
            self._entries[letter.id] = letter
            self._count(letter)
            self._next_id = max(self._next_id, letter.id + 1)

    def add(self, source: str, error: BusError, raw: str) -> DeadLetter:
        wire = as_protocol_error(error)
        letter = DeadLetter(
            id=self._next_id,
            at=time.time(),
            source=source,
            code=str(wire.code),
            message=wire.message,
            field=wire.field,
            raw=raw,
        )
        self._next_id += 1
        self._entries[letter.id] = letter
        self._count(letter)
        self._changed.add(letter.id)
        self.counts["added"] += 1
        self._evict(letter.at)
        return letter

    def _evict(self, now: float) -> None:
        horizon = now - self.max_age_seconds
        while self._entries:
            oldest = next(iter(self._entries.values()))
            over = len(self._entries) > self.max_entries or self._bytes > self.max_bytes
            if not over and oldest.at >= horizon:
                break
            self._forget(oldest.id)
            self.counts["evicted"] += 1

    def _count(self, letter: DeadLetter) -> None:
        size = size_of(letter)
        self._bytes += size - self._sizes.get(letter.id, 0)
        self._sizes[letter.id] = size

    def _forget(self, letter_id: int) -> DeadLetter | None:
        letter = self._entries.pop(letter_id, None)
        if letter is not None:
            self._bytes -= self._sizes.pop(letter_id)
            self._changed.add(letter_id)
        return letter

    async def flush(self) -> None:
        """Write what changed since the last flush to the store; also applies the age limit.
        A shared store is read back (the other nodes' entries) and its id block refilled."""
        self._evict(time.time())
        shared = isinstance(self.store, SharedDeadLetterStore)
        if self.store is None or not (self._changed or shared):
            self._changed.clear()
            return
        changed, self._changed = self._changed, set()
        put = [self._entries[i] for i in sorted(changed) if i in self._entries]
        drop = [i for i in sorted(changed) if i not in self._entries]
        try:
            if changed:
                await self.store.sync_dead(put, drop)
            if isinstance(self.store, SharedDeadLetterStore):
                await self._pull(self.store)
        except StorageError:
            # kept in memory all the same (and tried again at the next flush); counted
            self.counts["persist_failed"] += 1
            self._changed |= changed

    async def _pull(self, store: SharedDeadLetterStore) -> None:
        if self._id_limit is None or self._id_limit - self._next_id < ID_BLOCK // 2:
            self._next_id = await store.reserve_dead_ids(ID_BLOCK)
            self._id_limit = self._next_id + ID_BLOCK
        letters = await store.load_dead()
        if self._changed:  # added or removed here while reading: keep those for the next flush
            return
        self._entries.clear()
        self._sizes.clear()
        self._bytes = 0
        for letter in letters:
            self._entries[letter.id] = letter
            self._count(letter)

    def get(self, letter_id: int) -> DeadLetter | None:
        return self._entries.get(letter_id)

    def list(
        self, *, after: int = 0, limit: int = 100, max_bytes: int | None = None
    ) -> list[DeadLetter]:
        """Entries after id `after`, oldest first: at most `limit`, and no more than `max_bytes`
        together (but at least one)."""
        out: list[DeadLetter] = []
        size = 0
        for letter in self._entries.values():
            if letter.id > after:
                size += self._sizes[letter.id]
                if out and max_bytes is not None and size > max_bytes:
                    break
                out.append(letter)
                if len(out) == limit:
                    break
        return out

    def remove(self, letter_id: int, *, why: str) -> bool:
        """Drop an entry (`why`: "deleted" or "retried"); False when there is none."""
        if self._forget(letter_id) is None:
            return False
        self.counts[why] += 1
        return True

    def failed_again(self, letter_id: int, error: BusError) -> DeadLetter | None:
        """Record a failed retry: the entry keeps its place with the new error, one more attempt."""
        letter = self._entries.get(letter_id)
        if letter is None:
            return None
        wire = as_protocol_error(error)
        updated = attrs.evolve(
            letter,
            code=str(wire.code),
            message=wire.message,
            field=wire.field,
            attempts=letter.attempts + 1,
        )
        self._entries[letter_id] = updated
        self._count(updated)
        self._changed.add(letter_id)
        self.counts["retry_failed"] += 1
        return updated

    def stats(self) -> dict[str, Any]:
        return {
            "size": len(self._entries),
            "bytes": self._bytes,
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
            "counts": dict(self.counts),
        }


def size_of(letter: DeadLetter) -> int:
    """What an entry costs: the UTF-8 bytes of its raw text and message."""
    return len(letter.raw.encode("utf-8", "surrogatepass")) + len(
        letter.message.encode("utf-8", "surrogatepass")
    )

"""A connection's outbox: the one place the router hands events to a subscriber.

Two lanes. Events are offered by the router with `offer` (never waits): bounded in events and in
bytes; when full the event is dropped for this connection only, and the missed range becomes a
`gap` frame placed before the next event that fits (or after what the writer takes next).
Replies (acks, errors) to the connection's own actions go through `reply`, which waits when that
lane is full: a client that floods actions without reading is slowed down, never fed gaps in its
acks. The writer takes everything waiting at once with `take`, so a backlog leaves in one go.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import attrs
import trio

from ipt_bus import codec
from ipt_bus.errors import CloseCode

_GAP: Final = -1.0  # `accepted_at` marker of a gap frame


@attrs.frozen
class Taken:
    """What the writer takes in one go: replies first, then events in order."""

    replies: list[str]
    events: list[str]
    oldest_accepted_at: float | None  # trio time the oldest taken event was accepted


@attrs.define
class Outbox:
    max_events: int
    max_bytes: int
    max_replies: int
    slow_consumer_seconds: float
    _events: deque[tuple[str, float]] = attrs.field(factory=deque)
    _bytes: int = 0
    _replies: deque[str] = attrs.field(factory=deque)
    _waiter: trio.lowlevel.Task | None = None  # the writer, parked until there is work
    _space: trio.Event = attrs.field(factory=trio.Event)
    _gap: tuple[int, int] | None = None
    _full_since: float | None = None
    closed_code: int | None = None
    _closed: trio.Event = attrs.field(factory=trio.Event)
    offered: int = 0  # matching events the router handed over
    dropped: int = 0  # of those, dropped because the outbox was full

    # --- router side (sync, never waits) ---

    def offer(self, data: str, seq: int, accepted_at: float) -> bool:
        """Queue one encoded event; False (and a recorded gap) if it did not fit."""
        self.offered += 1
        if self.closed_code is not None:
            self.dropped += 1
            return False
        size = len(data)
        if len(self._events) >= self.max_events or self._bytes + size > self.max_bytes:
            self.dropped += 1
            self._gap = (self._gap[0], seq) if self._gap else (seq, seq)
            now = trio.current_time()
            if self._full_since is None:
                self._full_since = now
            elif now - self._full_since >= self.slow_consumer_seconds:
                self.close(CloseCode.SLOW_CONSUMER)
            return False
        if self._gap is not None:
            self._push_gap()
        self._events.append((data, accepted_at))
        self._bytes += size
        self._wake()
        return True

    def _wake(self) -> None:
        # trio's low-level park/reschedule: the cheapest wake-up, paid once per event per
        # subscriber on the fan-out path (a trio.Event costs a ParkingLot and a new object)
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)

    async def _park(self) -> None:
        assert self._waiter is None, "only the connection's writer takes from its outbox"
        self._waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _push_gap(self) -> None:
        assert self._gap is not None
        frame = codec.gap_frame("slow_consumer", self._gap[0], self._gap[1])
        self._events.append((frame, _GAP))
        self._gap = None

    def close(self, code: int) -> None:
        """Ask the connection to close with `code` (first code wins)."""
        if self.closed_code is None:
            self.closed_code = int(code)
            self._closed.set()
            self._wake()
            self._space.set()

    async def wait_closed(self) -> int:
        await self._closed.wait()
        assert self.closed_code is not None
        return self.closed_code

    # --- connection side ---

    async def reply(self, data: str) -> None:
        """Queue a reply to the client's own action; waits while that lane is full."""
        while len(self._replies) >= self.max_replies and self.closed_code is None:
            self._space = trio.Event()
            await self._space.wait()
        self._replies.append(data)
        self._wake()

    async def wait_ready(self) -> None:
        while not (self._replies or self._events or self._gap) and self.closed_code is None:
            await self._park()

    async def take(self) -> Taken:
        """Wait for anything to send and take all of it. Returns nothing once closed."""
        await self.wait_ready()
        if self._gap is not None:
            self._push_gap()
        replies = list(self._replies)
        self._replies.clear()
        self._space.set()
        oldest = None
        events = []
        for data, accepted_at in self._events:
            events.append(data)
            if oldest is None and accepted_at != _GAP:
                oldest = accepted_at
        self._events.clear()
        self._bytes = 0
        self._full_since = None
        return Taken(replies, events, oldest)

    @property
    def queued(self) -> int:
        return len(self._events)

"""A connection's outbox: the one place the router hands events to a subscriber.

Two lanes. Events are offered by the router with `offer_many` (never waits) and queued, bounded in
events and in bytes. When the queue is full, the outbox stops taking live events: it only notes
that the events after the last queued one, up to the newest offered, are *missed* — they are in
the log, so nothing is lost — and the writer reads that range from the log after sending the
queue (catching up), then takes live events again. Memory per connection stays bounded by the
queue; the missed range is two integers and the subscriptions it was missed under (a change of
subscriptions while behind starts a new range, so every event is matched against the
subscriptions in effect when it was published, whether it is delivered live or from the log).
A resume (`since=`) starts the outbox with a missed range.
Replies (acks, errors) to the connection's own actions go through `reply`, which waits when that
lane is full: a client that floods actions without reading is slowed down, never fed gaps in its
acks. The writer takes everything waiting at once with `take`, so a backlog leaves in one go;
while it is parked, `flush` may instead hand live events to `direct` (the router's fan-out
writing them to the socket itself).

A peer that stops reading does not pin memory either: once events have been deferred to the log
for `slow_consumer_seconds` without the writer getting a write through, the outbox closes with
4008 (and the write deadline aborts a write that never finishes).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ipt_bus.core.errors import CloseCode

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence  # noqa: TC004 (annotations attrs never evaluates)

log = logging.getLogger("ipt_bus.bus.outbox")
MAX_MISSED_RANGES: Final = 8  # subscription changes while behind, before ranges are merged


@attrs.frozen
class Missed:
    """Events in (after, upto] matching `patterns`: in the log, not yet sent."""

    after: int
    upto: int
    patterns: tuple[str, ...]


@attrs.frozen
class Taken:
    """What the writer takes in one go: replies first, then queued events, then missed ranges."""

    replies: list[bytes]
    events: list[bytes]
    missed: list[Missed]  # read from the log, in order, after `events`
    upto: int  # the newest `seq` offered so far: all of it is handed over once this is sent
    oldest_accepted_at: float | None  # trio time the oldest taken event was accepted


@attrs.define
class Outbox:
    max_events: int
    max_bytes: int
    max_replies: int
    slow_consumer_seconds: float
    # lists, not deques: everything is taken at once, and an empty list costs 56 bytes where a
    # deque costs 600 (most connections are idle)
    _events: list[bytes] = attrs.field(factory=list)
    _oldest: float = 0.0  # trio time the first queued event was accepted
    _bytes: int = 0  # UTF-8 bytes of the queued events
    _replies: list[bytes] = attrs.field(factory=list)
    _waiter: trio.lowlevel.Task | None = None  # the writer, parked until there is work
    _space: trio.Event | None = None  # made when a reply waits for room (rare)
    _patterns: tuple[str, ...] = ("**",)  # the subscriptions, as the router last said
    _head: int = 0  # the newest `seq` offered (or the attach point)
    # (after, patterns) of each missed range; each ends where the next begins, the last at _head
    _missed: list[tuple[int, tuple[str, ...]]] = attrs.field(factory=list)
    _stalled_since: float | None = None  # events deferred, and no write got through since
    closed_code: int | None = None
    on_close: Callable[[], object] | None = None  # called once, when the outbox closes
    # writes live events for a parked writer (events, oldest accepted_at) if the socket takes
    # them at once; False leaves them to the writer. Set by the connection.
    direct: Callable[[list[bytes], float], bool] | None = None
    offered: int = 0  # matching events the router handed over
    deferred: int = 0  # of those, left in the log for the writer because the queue was full
    dropped: int = 0  # of those, offered after the outbox closed
    catch_ups: int = 0  # times the queue overflowed and the connection fell back on the log
    sent: int = 0  # the newest `seq` the writer has written (or the resume point)
    delivered: int = 0  # events the writer has written (from the queue or from the log)
    catching_up: bool = False  # the writer took missed events to read from the log

    # --- router side (sync, never waits) ---

    def start(self, patterns: Iterable[str], last: int, since: int | None = None) -> None:
        """Live events follow `last`; with `since < last`, (since, last] come from the log first.

        Called by the router when it attaches the outbox, before it offers anything."""
        self._patterns = tuple(sorted(patterns))
        self._head = self.sent = last
        if since is not None and since < last:
            self._missed.append((since, self._patterns))
            self.sent = since

    def resubscribed(self, patterns: Iterable[str], at: int) -> None:
        """The router changed the subscriptions when the log's last `seq` was `at`: events after
        it are matched against `patterns` (those up to it against the old ones, even the ones
        still to be read from the log)."""
        self._head = max(self._head, at)
        self._patterns = tuple(sorted(patterns))
        missed = self._missed
        if not missed:
            return
        if missed[-1][0] == self._head:  # nothing missed under the old ones yet
            missed[-1] = (self._head, self._patterns)
        elif len(missed) < MAX_MISSED_RANGES:
            missed.append((self._head, self._patterns))
        else:  # a client toggling subscriptions while behind: bounded, at the cost of a
            # superset for the last range (still nothing it never subscribed to)
            after, old = missed[-1]
            missed[-1] = (after, tuple(sorted({*old, *self._patterns})))

    def skipped(self, upto: int) -> None:
        """Events up to `upto` will not be offered (a shared log's tail found them trimmed
        before it read them): the writer reads that range from the log, which then tells the
        client what retention took (a `gap`), rather than the events silently not arriving."""
        if upto <= self._head or self.closed_code is not None:
            return
        if not self._missed:
            self._missed.append((self._head, self._patterns))
        self._head = upto

    def offer(self, data: bytes, seq: int, accepted_at: float) -> bool:
        """Queue one encoded event (`offer_many` of one). Returns False only when the outbox is
        closed (the event is dropped for it)."""
        return not self.offer_many([data], (seq,), len(data), accepted_at)

    def offer_many(
        self, datas: list[bytes], seqs: Sequence[int], size: int, accepted_at: float
    ) -> int:
        """Queue consecutive encoded events (`seqs` theirs, `size` their bytes' sum) as far as
        the queue has room (events *and* bytes); from the first that does not fit, or when the
        outbox is behind, they are left to the log (none may overtake another). Returns how
        many were dropped (the outbox is closed).

        Does not wake the writer: the router calls `flush` once per fan-out round, so a writer
        takes many events per wake-up under load. The router offers a run of events with the
        same subscribers in one call: per subscriber the work is one list extend, not per event.
        """
        count = len(datas)
        self.offered += count
        fit = 0
        if not self._missed and self.closed_code is None:
            events = self._events
            room = self.max_events - len(events)
            if count <= room and self._bytes + size <= self.max_bytes:
                fit = count  # the common case: the whole run
            else:  # what fits of it (a subscriber falling behind)
                size = 0
                for data in datas[:room]:
                    if self._bytes + size + len(data) > self.max_bytes:
                        break
                    size += len(data)
                    fit += 1
            if fit:
                if not events:
                    self._oldest = accepted_at
                events.extend(datas if fit == count else datas[:fit])
                self._bytes += size
                self._head = seqs[fit - 1]
                if fit == count:
                    return 0
        return sum(not self._defer(seq) for seq in seqs[fit:])

    def _defer(self, seq: int) -> bool:
        if self.closed_code is not None:
            self.dropped += 1
            return False
        if not self._missed:
            self._missed.append((self._head, self._patterns))
            self.catch_ups += 1
        self._head = seq
        self.deferred += 1
        now = trio.current_time()
        if self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since >= self.slow_consumer_seconds:
            self.close(CloseCode.SLOW_CONSUMER)
        return True

    def flush(self) -> bool:
        """Hand over what was offered: written right here when the writer is parked with only
        live events queued and the socket takes them at once (`direct`). False: the writer
        must take them, and the caller `wake`s it (it may first let others run). Called by the
        router once per fan-out round."""
        if self._waiter is None:
            return True  # busy: it takes them when it is done
        events = self._events
        if not events and not self._missed:
            return True  # nothing (written already, in this round, with later events)
        if self.direct is not None and not self._replies and not self._missed:  # so: events
            try:
                done = self.closed_code is None and self.direct(events, self._oldest)
            except Exception:  # the writer meets the same trouble in its own task
                log.exception("writing from the fan-out failed; leaving it to the writer")
                done = False
            if done:
                self._events = []
                self._bytes = 0
                self.wrote(self._head, len(events))
                return True
        return False

    def wake(self) -> None:
        """Let the writer take what was offered (a no-op when it is not parked)."""
        # trio's low-level park/reschedule: the cheapest wake-up, paid once per fan-out round
        # per subscriber (a trio.Event costs a ParkingLot and a new object)
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

    def close(self, code: int) -> None:
        """Ask the connection to close with `code` (first code wins)."""
        if self.closed_code is None:
            self.closed_code = int(code)
            self.wake()
            if self._space is not None:
                self._space.set()
            if self.on_close is not None:
                self.on_close()

    # --- connection side ---

    async def reply(self, data: bytes) -> None:
        """Queue a reply to the client's own action; waits while that lane is full."""
        while len(self._replies) >= self.max_replies and self.closed_code is None:
            if self._space is None:  # the reader and the acker may both be waiting
                self._space = trio.Event()
            await self._space.wait()
        self._replies.append(data)
        self.wake()

    async def wait_ready(self) -> None:
        while not (self._replies or self._events or self._missed) and self.closed_code is None:
            await self._park()

    async def take(self) -> Taken:
        """Wait for anything to send and take all of it. Returns nothing once closed."""
        await self.wait_ready()
        if self.closed_code is not None:
            return Taken([], [], [], self._head, None)
        replies = self.take_replies()
        events = self._events
        oldest = self._oldest if events else None
        self._events = []
        self._bytes = 0
        missed = []
        if self._missed:
            ends = [after for after, _ in self._missed[1:]] + [self._head]
            missed = [Missed(a, end, p) for (a, p), end in zip(self._missed, ends, strict=True)]
            self._missed.clear()
            self.catching_up = True  # until the writer has read them (`caught_up`)
        return Taken(replies, events, missed, self._head, oldest)

    def take_replies(self) -> list[bytes]:
        """The replies waiting now (the writer sends them between pages of a catch-up)."""
        replies = self._replies
        self._replies = []
        if self._space is not None:
            self._space.set()
            self._space = None
        return replies

    def caught_up(self) -> None:
        """The writer has sent what it took to read from the log."""
        self.catching_up = False

    def wrote(self, upto: int, events: int) -> None:
        """The writer got `events` more, up to `seq` `upto`, onto the socket: the peer reads."""
        self.sent = upto
        self.delivered += events
        self._stalled_since = None

    @property
    def queued(self) -> int:
        return len(self._events)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def behind(self) -> bool:
        """Whether the connection is catching up from the log (or about to)."""
        return self.catching_up or bool(self._missed)

    @property
    def lag(self) -> int:
        """How far (in `seq`) the newest event for this connection is past the last written."""
        return max(0, self._head - self.sent)

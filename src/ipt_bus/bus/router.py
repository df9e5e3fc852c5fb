"""The router actor: sole owner of the subscription index, the outboxes and the log's writes.

Theory of operation: commands are handled strictly in arrival order. Consecutive `Publish`
commands waiting in the inbox are drained and handed to the log as one `append` (group commit
for durable logs); only once the log has them are they acknowledged and fanned out, so no
subscriber ever sees a `seq` that could vanish. Fan-out is sync: each event was encoded once by
the log, its topic is looked up in a per-topic cache of target outboxes (rebuilt lazily after any
subscription change; topics with the same subscribers share one target tuple), consecutive
events with the same targets form a run, and each target gets the run through
`Outbox.offer_many`, which never waits: a full outbox leaves the events in the log for its
connection to read when it catches up. The router never
awaits a subscriber; only the log append awaits.

Writers are woken in rounds, not per event, so a writer takes everything queued since its last
wake-up in one write whatever the log's speed. With a log whose appends wait (SQLite), a round
is one append: publishes gather while it commits, and once its writes are done, frames that
reached the sockets during them join the publishes waiting (`_gather`), so that they do not wait
out the next round behind an append that left without them. A memory log never makes the
router wait, so the router ends a round itself: it wakes the writers once `QUIET_ROUNDS`
scheduler rounds passed with no new publish (a frame on its way from a socket reaches the inbox
within them), or once it fanned out `FAN_OUT_ROUND_EVENTS` (a publisher that never lets up
cannot starve the writers, and a round fits in an outbox). An idle bus delivers at once: no
timer. A light round (few events, many subscribers: the writes are the work) looks at the inbox
every `ROUND_CHUNK` writes and fans out what arrived, so the rest of the round takes it too.

With a shared log (Redis, several nodes) the router fans out nothing it appended: a tail task
reads the log's stream and hands the router each batch it read (`Deliver`), so every node
delivers the same events in the log's order, and only once the log has them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar, assert_never, final

import attrs
import trio

from ipt_bus.bus.outbox import Outbox
from ipt_bus.bus.stats import Accepted, Counted, Dropped, Refused, StatsHandle
from ipt_bus.core.errors import (
    BusClosed,
    CloseCode,
    LimitExceeded,
    Overloaded,
    RateLimited,
    StorageError,
)
from ipt_bus.core.model import Event, Published
from ipt_bus.core.topics import TopicIndex
from ipt_bus.storage.base import EpochChanged, EventLog, Key, Record, SharedLog

ConnId = int
Answer = tuple[int, "list[Published] | Exception"]
"""(token of the `Publish`, where its events went or why they were not logged)."""
T = TypeVar("T")
_log = logging.getLogger("ipt_bus.bus.router")


class Publish(NamedTuple):
    events: Sequence[Event]
    accepted_at: float
    reply: trio.MemorySendChannel[Answer]
    token: int = 0  # echoed in the answer, so one channel can carry many answers
    key: str | None = None  # idempotency key: a repeat within the window gets the first answer


@attrs.define
class Peer:
    """What `/connections` shows of a connection besides its outbox and subscriptions."""

    remote: str | None
    connected_at: float  # Unix seconds
    batch: bool = False  # kept current by the connection
    identity: str | None = None  # the token's `sub` (or the address when the bus is open)
    sub: str | None = None  # the token's `sub`, when tokens are required


@attrs.frozen
class Attach:
    outbox: Outbox
    patterns: Sequence[str]
    since: int | None  # resume: the events after it up to the attach point come from the log
    peer: Peer
    reply: trio.MemorySendChannel[ConnId | Exception]  # the id the router gave it


@attrs.frozen
class Subscribe:
    conn_id: ConnId
    patterns: Sequence[str]
    subscribe: bool  # False: unsubscribe
    batch: bool | None  # the connection turns batching on or off (None: unchanged)
    reply: trio.MemorySendChannel[frozenset[str] | Exception]


@attrs.frozen
class Detach:
    conn_id: ConnId


@attrs.frozen
class CloseAll:
    """Close every outbox with `code`, and any attached later (shutdown)."""

    code: int


@attrs.frozen
class Deliver:
    """Events a shared log's tail read: fan them out (they are in the log already)."""

    records: list[Record]


@attrs.frozen
class Restart:
    """The shared log started over (a new epoch, from `after`): every connection is closed with
    1012 so its client resumes, and learns of the new epoch from a `gap`."""

    after: int


RouterCommand = Publish | Attach | Subscribe | Detach | CloseAll | Deliver | Restart


@attrs.define
class _Run:
    """Consecutive events of one fan-out with the same targets, and when the first was accepted."""

    targets: tuple[Outbox, ...] | None = None
    records: list[Record] = attrs.field(factory=list)
    accepted_at: float = 0.0


MAX_DRAIN_EVENTS = 10_000  # events taken into one log append
FAN_OUT_ROUND_EVENTS = 256  # most events fanned out before writers are woken (< outbox_events)
QUIET_ROUNDS = 2  # scheduler rounds with no new publish that end a fan-out round
ROUND_CHUNK = 64  # writes of a light round between looks at the publishes that arrived since
LIGHT_ROUND_EVENTS = 32  # a round with fewer events looks at the inbox during its writes
MAX_GATHER_ROUNDS = 16  # most scheduler rounds a waiting append lets publishes join it


@attrs.define
class Router:
    _log: EventLog
    _stats: StatsHandle
    _max_subscriptions: int
    _max_subscription_bytes: int = 8 * 1024
    _max_connections: int = 10_000
    _max_per_identity: int | None = None
    _route_cache_topics: int = 10_000  # a topic per event must not grow `_targets` for ever
    _per_identity: Counter[str] = attrs.field(factory=Counter)
    _next_id: ConnId = 1
    _index: TopicIndex[ConnId] = attrs.field(factory=TopicIndex)
    _outboxes: dict[ConnId, Outbox] = attrs.field(factory=dict)
    _peers: dict[ConnId, Peer] = attrs.field(factory=dict)
    _targets: dict[str, tuple[Outbox, ...]] = attrs.field(factory=dict)
    _shared_targets: dict[tuple[int, ...], tuple[Outbox, ...]] = attrs.field(factory=dict)
    _changed: trio.Event = attrs.field(factory=trio.Event)  # set (and replaced) per (de)attach
    _closing: int | None = None  # CloseAll code: connections attaching now are closed at once
    # the target tuples offered events since writers were last woken (by id), and how many events
    _unwoken: dict[int, tuple[Outbox, ...]] = attrs.field(factory=dict)
    _unwoken_events: int = 0
    _held: RouterCommand | None = None  # taken from the inbox during a round, handled after it
    # a shared log: the newest seq fanned out here (attach points count from it, not from the
    # log's last seq, which may be ahead of what the tail read)
    _delivered: int | None = None
    _shared: SharedLog | None = None

    def __attrs_post_init__(self) -> None:
        if isinstance(self._log, SharedLog):
            self._shared = self._log
            self._delivered = self._log.last_seq

    @property
    def _live(self) -> int:
        """The seq after which events reach the outboxes as they are fanned out."""
        return self._log.last_seq if self._delivered is None else self._delivered

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[RouterCommand],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with inbox:
            task_status.started()
            pending: RouterCommand | None = None
            while True:
                if pending is None:
                    pending = await self._next(inbox)
                    if pending is None:
                        break
                command, pending = pending, None
                match command:
                    case Publish():
                        pending = await self._publish_batch(command, inbox)
                    case Attach():
                        self._on_attach(command)
                    case Subscribe():
                        self._on_subscribe(command)
                    case Detach():
                        self._on_detach(command)
                    case CloseAll(code=code):
                        self._closing = code
                        for outbox in self._outboxes.values():
                            outbox.close(code)
                    case Deliver(records=records):
                        self._deliver(records)
                    case Restart(after=after):
                        self._delivered = after
                        for outbox in self._outboxes.values():
                            outbox.close(CloseCode.SERVICE_RESTART)
                    case _:
                        assert_never(command)

    async def _next(self, inbox: trio.MemoryReceiveChannel[RouterCommand]) -> RouterCommand | None:
        """The next command (None once the inbox is closed), waking writers as the module says."""
        if self._log.append_waits:
            # publishes gather while each append waits (group commit): that is the round
            while self._unwoken and self._held is None:
                busy = await self._write_round(inbox)
                await self._gather(inbox)
                for outbox in busy:
                    outbox.wake()
            return await self._receive(inbox)
        quiet = 0  # scheduler rounds since the inbox last had something
        while True:
            if self._unwoken_events >= FAN_OUT_ROUND_EVENTS:
                await self._wake_writers(inbox)
            if self._held is not None:
                return await self._receive(inbox)
            try:
                return inbox.receive_nowait()
            except trio.WouldBlock:
                pass
            except trio.EndOfChannel:
                await self._wake_writers(inbox)
                return await self._receive(inbox)
            if not self._unwoken:
                break
            if quiet >= QUIET_ROUNDS:
                await self._wake_writers(inbox)  # nothing on its way: deliver now
                quiet = 0
                continue  # publishes fanned out during the round are still to be written
            quiet += 1
            await trio.lowlevel.checkpoint()  # let a publish on its way reach the inbox
        return await self._receive(inbox)

    async def _receive(
        self, inbox: trio.MemoryReceiveChannel[RouterCommand]
    ) -> RouterCommand | None:
        """The command held back during a round, else the inbox's next (None once closed)."""
        held, self._held = self._held, None
        if held is not None:
            return held
        try:
            return await inbox.receive()
        except trio.EndOfChannel:
            return None

    async def _wake_writers(self, inbox: trio.MemoryReceiveChannel[RouterCommand]) -> None:
        for outbox in await self._write_round(inbox):
            outbox.wake()

    async def _write_round(self, inbox: trio.MemoryReceiveChannel[RouterCommand]) -> list[Outbox]:
        """Flush every outbox offered events since the last round; returns those whose writer
        must take them (the caller wakes them).

        In a light round (fewer than `LIGHT_ROUND_EVENTS` events: many subscribers, few events
        each, the writes are the work) others run every `ROUND_CHUNK` writes, and the
        publishes that arrived meanwhile are fanned out, so the outboxes still to be written
        in this round take them too, and the rest in the next: an event reaches every
        subscriber within about one round, where it waited for the round under way to end
        before. A heavy round is saturation, where the next round follows at once anyway, and
        taking publishes during it filled outboxes past their bound (catch-ups from the log)."""
        rounds = list(self._unwoken.values())
        light = self._unwoken_events < LIGHT_ROUND_EVENTS
        self._unwoken.clear()
        self._unwoken_events = 0
        busy: list[Outbox] = []
        writes = 0
        for targets in rounds:
            for outbox in targets:
                if not outbox.flush():
                    busy.append(outbox)
                writes += 1
                if writes == ROUND_CHUNK and light:
                    writes = 0
                    await trio.lowlevel.checkpoint()
                    await self._take_meanwhile(inbox)
        return busy

    async def _take_meanwhile(self, inbox: trio.MemoryReceiveChannel[RouterCommand]) -> None:
        """Fan out the publishes waiting, during a round; the first other command is held
        back for after it (commands are handled in order)."""
        while self._held is None and self._unwoken_events < LIGHT_ROUND_EVENTS:
            try:
                command = inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            if isinstance(command, Publish):
                self._held = await self._publish_batch(command, inbox)
            else:
                self._held = command

    @staticmethod
    async def _gather(inbox: trio.MemoryReceiveChannel[RouterCommand]) -> None:
        """When publishes wait already (the next append follows at once), let the frames that
        reached the sockets during the round's writes join them, rather than wait out a whole
        round behind that append: scheduler rounds until `QUIET_ROUNDS` add nothing. Bounded
        in rounds, and in waiting commands to `FAN_OUT_ROUND_EVENTS` (commands, not events:
        the channel shows no more): under saturation a round's worth waits already, and a
        bigger append would overflow the outboxes.

        The writers left to take over are woken only after, so that their slower writes run
        while the append waits, not now into sockets the round has just filled."""
        waiting = inbox.statistics().current_buffer_used
        quiet = 0
        for _ in range(MAX_GATHER_ROUNDS if 0 < waiting < FAN_OUT_ROUND_EVENTS else 0):
            await trio.lowlevel.checkpoint()
            now = inbox.statistics().current_buffer_used
            if now >= FAN_OUT_ROUND_EVENTS:
                return
            if now != waiting:
                waiting, quiet = now, 0
            else:
                quiet += 1
                if quiet >= QUIET_ROUNDS:
                    return

    async def _publish_batch(
        self, first: Publish, inbox: trio.MemoryReceiveChannel[RouterCommand]
    ) -> RouterCommand | None:
        """Append `first` and every `Publish` waiting behind it; return the next other command."""
        batch = [first]
        count = len(first.events)
        following: RouterCommand | None = None
        while count < MAX_DRAIN_EVENTS:
            try:
                command = inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if not isinstance(command, Publish):
                following = command
                break
            batch.append(command)
            count += len(command.events)
        events: list[Event] = []
        keys: list[Key] = []
        logged: list[Publish] = []  # the publishes whose events go into this append
        known: dict[int, list[Published]] = {}  # id(Publish) -> the answer its key already has
        same_as: dict[int, Publish] = {}  # id(Publish) -> the earlier one with its key, here
        first_with: dict[str, Publish] = {}
        for p in batch:
            if p.key is not None:
                try:
                    recalled = await self._log.recall(p.key)
                except StorageError:  # the append fails too, or (shared) checks the key itself
                    recalled = None
                if recalled is not None:  # logged before: answered even if this append fails
                    known[id(p)] = recalled
                    continue
                earlier = first_with.get(p.key)
                if earlier is not None:
                    same_as[id(p)] = earlier
                    continue
                first_with[p.key] = p
                keys.append(Key(p.key, len(events), len(p.events)))
            logged.append(p)
            events.extend(p.events)
        answers: dict[int, list[Published] | StorageError] = {}  # id(logged Publish) -> answer
        repeats: dict[str, list[Published]] = {}  # keys another node logged since `recall`
        if events:
            try:
                if self._shared is not None:
                    records, repeats = await self._shared.append_keyed(events, keys)
                else:
                    records = await self._log.append(events, keys)
            except StorageError as exc:
                answers = dict.fromkeys(map(id, logged), exc)
            else:
                offset = 0
                for p in logged:
                    if p.key is not None and p.key in repeats:
                        answers[id(p)] = repeats[p.key]
                        continue
                    n = len(p.events)
                    answers[id(p)] = [Published(r.id, r.seq) for r in records[offset : offset + n]]
                    offset += n
                if self._delivered is None:  # a shared log's tail fans out (`Deliver`)
                    self._fan_out(records, logged)
        # in the order they came: a connection's acker takes its answers in token order and
        # skips any it is not waiting for yet
        for p in batch:
            answer = known[id(p)] if id(p) in known else answers[id(same_as.get(id(p), p))]
            _answer(p.reply, (p.token, answer))
        if known or same_as or repeats:
            count = len(known) + len(same_as) + len(repeats)
            self._stats.record(Counted("idempotent_repeats", count))
        return following

    def _fan_out(self, records: list[Record], batch: list[Publish]) -> None:
        """Offer what was just appended (a log of this node), each publish with its time."""
        per_topic: Counter[str] = Counter()
        run = _Run()
        dropped = 0
        start = 0
        for p in batch:
            end = start + len(p.events)
            dropped += self._offer(records, start, end, p.accepted_at, per_topic, run)
            start = end
        dropped += self._offer_run(run)
        self._fanned_out(len(records), per_topic, dropped)

    def _deliver(self, records: list[Record]) -> None:
        """Fan out what a shared log's tail read (from every node's publishes)."""
        assert self._delivered is not None
        if records[0].seq > self._delivered + 1:  # trimmed before the tail read them
            _log.warning(
                "events %d-%d were trimmed before this node read them; its subscribers are "
                "told with a gap",
                self._delivered + 1,
                records[0].seq - 1,
            )
            for outbox in self._outboxes.values():
                outbox.skipped(records[0].seq - 1)
        per_topic: Counter[str] = Counter()
        run = _Run()
        dropped = self._offer(records, 0, len(records), trio.current_time(), per_topic, run)
        dropped += self._offer_run(run)
        self._delivered = records[-1].seq
        self._fanned_out(len(records), per_topic, dropped)

    def _offer(
        self,
        records: list[Record],
        start: int,
        end: int,
        accepted_at: float,
        per_topic: Counter[str],
        run: _Run,
    ) -> int:
        """Gather `records[start:end]` (counted in `per_topic`) into runs of consecutive events
        with the same targets, offering each run as it ends; returns how many offers found their
        outbox closed. The caller offers the last run (`_offer_run`): a run goes on across the
        publishes of one append."""
        dropped = 0
        unwoken = self._unwoken
        cached = self._targets
        for index in range(start, end):
            record = records[index]
            topic = record.topic
            per_topic[topic] += 1
            targets = cached.get(topic)  # inline: the common case, no call
            if targets is None:
                targets = self._targets_of(topic)
            if targets is run.targets:
                run.records.append(record)
                continue
            dropped += self._offer_run(run)
            run.targets = targets
            run.records = [record]
            run.accepted_at = accepted_at
            unwoken[id(targets)] = targets
        return dropped

    @staticmethod
    def _offer_run(run: _Run) -> int:
        """Offer a run to each of its targets in one call each; returns how many were dropped."""
        records = run.records
        if not records or not run.targets:
            return 0
        datas = [r.data for r in records]
        seqs = [r.seq for r in records]
        size = sum(map(len, datas))
        dropped = 0
        for outbox in run.targets:
            dropped += outbox.offer_many(datas, seqs, size, run.accepted_at)
        return dropped

    def _fanned_out(self, count: int, per_topic: Counter[str], dropped: int) -> None:
        self._unwoken_events += count
        self._stats.record(Accepted(count, dict(per_topic), time.time()))
        if dropped:
            self._stats.record(Dropped("closing", dropped))

    def _targets_of(self, topic: str) -> tuple[Outbox, ...]:
        targets = self._targets.get(topic)
        if targets is None:
            found = tuple(self._outboxes[c] for c in sorted(self._index.lookup(topic)))
            if len(self._targets) >= self._route_cache_topics:
                self._routes_changed()  # rebuilt lazily, as after any (un)subscribe
            # topics with the same subscribers share one tuple, so their events form one run
            targets = self._shared_targets.setdefault(tuple(map(id, found)), found)
            self._targets[topic] = targets
        return targets

    def _routes_changed(self) -> None:
        self._targets.clear()
        self._shared_targets.clear()

    def _on_attach(self, command: Attach) -> None:
        if len(self._outboxes) >= self._max_connections:
            self._stats.record(Refused("max_connections"))
            _answer(
                command.reply,
                Overloaded(
                    f"the bus has its maximum of {self._max_connections} connections "
                    "(max_connections)"
                ),
            )
            return
        who = command.peer.identity
        if (
            self._max_per_identity is not None
            and who is not None
            and self._per_identity[who] >= self._max_per_identity
        ):
            self._stats.record(Refused("max_connections_per_identity"))
            refusal = (
                f"{self._max_per_identity} connections per identity (max_connections_per_identity)"
            )
            _answer(command.reply, RateLimited(f"already {refusal}", 1.0))
            return
        conn_id = self._next_id
        self._next_id += 1
        self._outboxes[conn_id] = command.outbox
        try:
            self._add(conn_id, command.patterns)
        except LimitExceeded as exc:
            del self._outboxes[conn_id]
            _answer(command.reply, exc)
            return
        self._count_changed()
        self._peers[conn_id] = command.peer
        if who is not None:
            self._per_identity[who] += 1
        command.outbox.start(self._index.patterns(conn_id), self._live, command.since)
        if self._closing is not None:
            command.outbox.close(self._closing)
        _answer(command.reply, conn_id)

    def _add(self, conn_id: ConnId, patterns: Sequence[str]) -> None:
        new = set(patterns) - self._index.patterns(conn_id)
        if self._index.count(conn_id) + len(new) > self._max_subscriptions:
            raise LimitExceeded(
                f"more than {self._max_subscriptions} subscriptions on one connection "
                "(max_subscriptions)",
                "topics",
            )
        size = self._index.pattern_bytes(conn_id) + sum(map(len, new))
        if size > self._max_subscription_bytes:
            raise LimitExceeded(
                f"the subscriptions of one connection would take {size} bytes of patterns, "
                f"more than {self._max_subscription_bytes} (max_subscription_bytes)",
                "topics",
            )
        for pattern in new:
            self._index.add(conn_id, pattern)
        self._routes_changed()

    def _on_subscribe(self, command: Subscribe) -> None:
        if command.conn_id not in self._outboxes:
            _answer(command.reply, BusClosed("connection is not attached"))
            return
        if command.subscribe:
            try:
                self._add(command.conn_id, command.patterns)
            except LimitExceeded as exc:
                _answer(command.reply, exc)
                return
        else:
            for pattern in command.patterns:
                self._index.remove(command.conn_id, pattern)
            self._routes_changed()
        held = self._index.patterns(command.conn_id)
        self._outboxes[command.conn_id].resubscribed(held, self._live)
        peer = self._peers[command.conn_id]
        if command.batch is not None:
            peer.batch = command.batch
        _answer(command.reply, held)

    def _on_detach(self, command: Detach) -> None:
        if self._outboxes.pop(command.conn_id, None) is not None:
            peer = self._peers.pop(command.conn_id)
            if peer.identity is not None:
                self._per_identity[peer.identity] -= 1
                if not self._per_identity[peer.identity]:
                    del self._per_identity[peer.identity]
            self._index.remove_key(command.conn_id)
            self._routes_changed()
            self._count_changed()

    def _count_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def statistics(self) -> RouterStatistics:
        outboxes = self._outboxes.values()
        return RouterStatistics(
            connections=len(outboxes),
            catching_up=sum(o.behind for o in outboxes),
            max_lag=max((o.lag for o in outboxes), default=0),
        )

    def subscribers(self, topic: str) -> int:
        """How many connections hold a pattern that matches `topic` (presence)."""
        return len(self._index.lookup(topic))

    def connections(self, offset: int, limit: int) -> list[ConnectionView]:
        """The attached connections in the order they came, `limit` of them from `offset`."""
        views = []
        for conn_id in itertools.islice(self._outboxes, offset, offset + limit):
            views.append(
                ConnectionView(
                    id=conn_id,
                    peer=self._peers[conn_id],
                    subscriptions=sorted(self._index.patterns(conn_id)),
                    outbox=self._outboxes[conn_id],
                )
            )
        return views

    async def wait_connections(self, count: int) -> None:
        while len(self._outboxes) != count:
            await self._changed.wait()


@attrs.frozen
class RouterStatistics:
    connections: int
    catching_up: int  # connections reading missed events from the log
    max_lag: int  # the largest `Outbox.lag` (in seq)


@attrs.frozen
class ConnectionView:
    """One connection as `/connections` shows it (read at once; the outbox is live)."""

    id: ConnId
    peer: Peer
    subscriptions: list[str]
    outbox: Outbox


async def wait_published(
    answers: trio.MemoryReceiveChannel[Answer], token: int, *, timeout: float
) -> list[Published]:
    """Wait for the answer tagged `token`; raises what `RouterHandle.publish` raises.

    Answers with older tokens (late answers to publishes that already timed out) are skipped.
    """
    with trio.move_on_after(max(timeout, 0)):
        while True:
            try:
                got, result = await answers.receive()
            except trio.EndOfChannel:
                raise BusClosed("the bus stopped before logging the events") from None
            if got == token:
                break
        if isinstance(result, Exception):
            raise result
        return result
    raise Overloaded(
        f"the bus took the events but did not log them within {timeout:g} s; "
        "they may still be published",
        maybe_published=True,
    )


def _answer(reply: trio.MemorySendChannel[T], value: T) -> None:
    """Answer a request; a requester that gave up (closed its end) is not an error."""
    try:  # noqa: SIM105 (not contextlib.suppress: this runs once per publish)
        reply.send_nowait(value)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        pass


@final
@attrs.frozen
class RouterHandle:
    """How connections and REST routes talk to the router. Built only by `start_router`."""

    _send: trio.MemorySendChannel[RouterCommand]
    _router: Router
    _tail: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    async def publish(
        self, events: Sequence[Event], *, timeout: float, key: str | None = None
    ) -> list[Published]:
        """Append `events` to the log and fan them out; returns where each went, in order.

        Waits while the bus is saturated (backpressure). `timeout` is a parameter (not the
        caller's cancel scope) because only here can "the router never took them" be told apart
        from "taken, maybe logged".

        Raises:
            Overloaded: not taken and logged within `timeout` seconds (`maybe_published` says
                whether the router had taken them).
            BusClosed: the bus is shutting down.
            StorageError: the log failed; nothing was acknowledged.
        """
        start = trio.current_time()
        send, receive = trio.open_memory_channel[Answer](1)
        with receive:
            await self.submit(events, reply=send, timeout=timeout, key=key)
            remaining = timeout - (trio.current_time() - start)
            return await wait_published(receive, 0, timeout=remaining)

    async def submit(
        self,
        events: Sequence[Event],
        *,
        reply: trio.MemorySendChannel[Answer],
        token: int = 0,
        timeout: float,
        key: str | None = None,
    ) -> None:
        """Hand `events` to the router without waiting for the log; the answer arrives on
        `reply` tagged with `token` (see `wait_published`). Lets a connection pipeline.

        Raises:
            Overloaded: the router did not take them within `timeout` (they are not published).
            BusClosed: the bus is shutting down.
        """
        command = Publish(events, trio.current_time(), reply, token, key)
        try:
            self._send.send_nowait(command)  # the common case: no timer needed
            return
        except trio.WouldBlock:
            pass
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise BusClosed("the bus is shutting down") from None
        with trio.move_on_after(timeout):
            try:
                await self._send.send(command)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise BusClosed("the bus is shutting down") from None
            return
        raise Overloaded(f"the bus did not take the events within {timeout:g} s")

    async def attach(
        self,
        outbox: Outbox,
        patterns: Sequence[str],
        *,
        since: int | None = None,
        peer: Peer | None = None,
    ) -> ConnId:
        """Register a connection; returns the id the router gave it.

        Every event after the log's last `seq` at that moment that matches reaches the outbox;
        with `since`, the outbox starts with (since, last] missed, for its writer to read from
        the log (resume).

        Raises:
            Overloaded: the bus has its maximum of connections.
            LimitExceeded: too many patterns (or bytes of them).
            BusClosed: the bus is shutting down.
        """
        who = peer or Peer(None, time.time())
        reply = await self._request(lambda s: Attach(outbox, patterns, since, who, s))
        assert isinstance(reply, int)
        return reply

    async def subscribe(
        self,
        conn_id: ConnId,
        patterns: Sequence[str],
        *,
        subscribe: bool = True,
        batch: bool | None = None,
    ) -> frozenset[str]:
        """Add (or with `subscribe=False` remove) patterns, and turn batching on or off when
        `batch` says; returns the connection's patterns."""
        reply = await self._request(lambda s: Subscribe(conn_id, patterns, subscribe, batch, s))
        assert isinstance(reply, frozenset)
        return reply

    async def _request(self, make: Callable[[trio.MemorySendChannel[Any]], RouterCommand]) -> Any:
        send, receive = trio.open_memory_channel[Any](1)
        with receive:
            try:
                await self._send.send(make(send))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise BusClosed("the bus is shutting down") from None
            reply = await receive.receive()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def detach_nowait(self, conn_id: ConnId) -> bool:
        """Unregister a connection without waiting; False if the inbox was full (retry)."""
        try:
            self._send.send_nowait(Detach(conn_id))
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        return True

    async def detach(self, conn_id: ConnId) -> None:
        """Unregister a connection; safe to call from `finally` (bounded, shielded)."""
        if self.detach_nowait(conn_id):
            return
        with trio.move_on_after(5) as scope:
            scope.shield = True
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                await self._send.send(Detach(conn_id))

    async def close_all(self, code: int) -> None:
        """Ask every connection, present and attaching later, to close with `code`."""
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self._send.send(CloseAll(code))

    def close(self) -> None:
        """Stop the router once it has handled what it was sent."""
        self._tail.cancel()
        self._send.close()

    def saturated(self) -> bool:
        """Whether the inbox is full, so publishers are waiting."""
        stats = self._send.statistics()
        return stats.current_buffer_used >= stats.max_buffer_size

    def statistics(self) -> RouterStatistics:
        return self._router.statistics()

    def connections(self, offset: int = 0, limit: int = 100) -> list[ConnectionView]:
        return self._router.connections(offset, limit)

    def subscribers(self, topic: str) -> int:
        """How many connections subscribe to `topic` now."""
        return self._router.subscribers(topic)

    async def wait_idle(self) -> None:
        """Wait until no connection is attached."""
        await self._router.wait_connections(0)

    async def wait_connections(self, count: int) -> None:
        """Wait until exactly `count` connections are attached."""
        await self._router.wait_connections(count)


async def start_router(
    nursery: trio.Nursery,
    log: EventLog,
    stats: StatsHandle,
    *,
    inbox_size: int,
    max_subscriptions: int,
    max_subscription_bytes: int = 8 * 1024,
    max_connections: int = 10_000,
    max_per_identity: int | None = None,
    route_cache_topics: int = 10_000,
) -> RouterHandle:
    """Start the router in `nursery`; `RouterHandle.close` stops it."""
    send, receive = trio.open_memory_channel[RouterCommand](inbox_size)
    router = Router(
        log,
        stats,
        max_subscriptions,
        max_subscription_bytes,
        max_connections,
        max_per_identity,
        route_cache_topics,
    )
    await nursery.start(router.run, receive)
    handle = RouterHandle(send, router)
    if isinstance(log, SharedLog):
        nursery.start_soon(_tail, log, send.clone(), log.last_seq, handle._tail)
    return handle


async def _tail(
    log: SharedLog,
    send: trio.MemorySendChannel[RouterCommand],
    after: int,
    scope: trio.CancelScope,
) -> None:
    """Hand the router what a shared log's tail reads; after the log started over (a flushed
    or replaced Redis), rejoin it and have every connection reconnect."""
    with scope, send:
        while True:
            try:
                async for records in log.tail(after):
                    await send.send(Deliver(records))
                    after = records[-1].seq
            except EpochChanged as exc:
                _log.warning("%s; closing every connection (1012) to resume in the new one", exc)
                after = await log.rejoin()
                await send.send(Restart(after))

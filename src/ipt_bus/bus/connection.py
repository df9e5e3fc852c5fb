"""One actor per WebSocket connection: the failure boundary between a client and the bus.

A reader task turns frames into router requests and queues their replies (read at most
`max_frames_per_second`); publishes are pipelined: the reader hands them to the router and an
acker task, started on the first publish, answers them in order. A writer task sends the welcome,
then whatever the outbox holds; when the outbox says events were missed (a resume, or a queue
that overflowed while the client read slowly) it reads them from the log in pages and then
returns to live events. A bug in any of them closes only this connection (1011, logged,
counted); nothing reaches the socket of another connection.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Final, Protocol

import attrs
import trio

from ipt_bus import __version__
from ipt_bus.bus import ingress
from ipt_bus.bus.ingress import Offer, Origin
from ipt_bus.bus.node import BusHandle
from ipt_bus.bus.outbox import Missed, Outbox
from ipt_bus.bus.router import Answer, Peer, wait_published
from ipt_bus.bus.stats import Closed, Counted, Delivered, Histogram, Opened, PublishDurations
from ipt_bus.core import codec
from ipt_bus.core.auth import Forbidden, Identity
from ipt_bus.core.errors import (
    BusClosed,
    BusError,
    CloseCode,
    ErrorCode,
    ProtocolError,
    StorageError,
)
from ipt_bus.core.frames import (
    Auth,
    Authenticated,
    ErrorFrame,
    Ping,
    Publish,
    RequestId,
    ServerFrame,
    Subscribe,
    Unsubscribe,
    Welcome,
)
from ipt_bus.core.protocol import ServerConversation
from ipt_bus.core.topics import validate_pattern
from ipt_bus.storage.base import Page, Query, SharedLog, resume_point, retention_gap

if TYPE_CHECKING:
    from ipt_bus.core.model import Event, Published

log = logging.getLogger("ipt_bus.bus.connection")

CATCH_UP_PAGE_EVENTS: Final = 1_000  # events per log read while catching up
LATENCY_SAMPLE_SECONDS: Final = 0.25  # per connection: 1,000 connections, 4,000 reports/s
CLOSE_WRITE_SECONDS: Final = 2.0
READ_RETRY_SECONDS: Final = (0.05, 1.0)  # a catch-up's first and longest wait for the log
SETTLE_SECONDS: Final = 2.0  # a shared log's resume waits this long for events seen elsewhere


class Disconnected(Exception):
    """The peer went away; `code` is what it sent (1005/1006 when it sent none)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _raw(frame: Publish) -> str:
    """What a publish carried (its `event` object or `events` list), as a dead letter keeps it."""
    return codec.dumps(frame.event if frame.event is not None else frame.events).decode()


class Written(enum.Enum):
    """What `WebSocketLike.send_now` did."""

    NONE = "none"  # nothing: `send_many` must do it
    ALL = "all"  # all of it (or dropped: the socket is closing)
    PART = "part"  # begun: the next `send_many` (even of nothing) writes the rest first


# looked up once, for the fan-out's per-delivery path (through the enum class a lookup costs
# ~90 ns): the connection and the direct sender use these
WROTE_NONE: Final = Written.NONE
WROTE_ALL: Final = Written.ALL
WROTE_PART: Final = Written.PART


class WebSocketLike(Protocol):
    """The little a connection needs of a socket (ASGI in production, fakes in tests)."""

    async def receive(self) -> str | bytes:
        """The next message (text as `str`, binary as `bytes`). Raises `Disconnected`."""

    async def send(self, text: bytes) -> None:
        """Send one text message, given as its UTF-8 bytes. Raises `Disconnected`."""

    async def send_many(self, texts: list[bytes]) -> None:
        """Send each (UTF-8) text as its own message, in one write where the server can."""

    def send_now(self, texts: list[bytes]) -> Written:
        """`send_many` if the socket takes it at once, without waiting (never raises)."""

    async def close(self, code: int) -> None: ...


@attrs.define
class _Pipeline:
    """A connection's publishes between `submit` and their ack.

    At most `publishes_in_flight` wait in `in_flight`, one is with the acker and one with the
    reader; `answers` holds twice that, so the router's `send_nowait` of an answer never fails.
    `size` counts the characters of their messages: past `publish_bytes_in_flight` the reader
    waits (`wait_room`) until the acker has answered enough of them.
    """

    # the frame, its answer's token, when it arrived (trio clock), its message's size
    in_flight: trio.MemorySendChannel[tuple[Publish, int, float, int]]
    in_flight_rx: trio.MemoryReceiveChannel[tuple[Publish, int, float, int]]
    answers: trio.MemorySendChannel[Answer]
    answers_rx: trio.MemoryReceiveChannel[Answer]
    max_size: int
    size: int = 0  # of the messages in flight
    _room: trio.Event | None = None  # made when the reader waits for `size` to fall
    durations: Histogram = attrs.field(factory=Histogram)  # since the last report
    reported: float = 0.0  # trio time of the last report

    @classmethod
    def open(cls, count: int, max_size: int) -> _Pipeline:
        in_flight, in_flight_rx = trio.open_memory_channel[tuple[Publish, int, float, int]](count)
        answers, answers_rx = trio.open_memory_channel[Answer](2 * count + 4)
        return cls(in_flight, in_flight_rx, answers, answers_rx, max_size)

    async def wait_room(self) -> None:
        while self.size > self.max_size:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def answered(self, size: int) -> None:
        self.size -= size
        if self._room is not None and self.size <= self.max_size:
            self._room.set()
            self._room = None

    async def answer_for(self, token: int, timeout: float) -> list[Published]:
        while True:  # the answer is often there already: no timer needed then
            try:
                got, result = self.answers_rx.receive_nowait()
            except trio.WouldBlock:
                return await wait_published(self.answers_rx, token, timeout=timeout)
            if got == token:
                if isinstance(result, Exception):
                    raise result
                return result


@attrs.frozen
class ConnectParams:
    patterns: Sequence[str] = ("**",)
    since: int | None = None
    epoch: str | None = None
    batch: bool = False
    explicit: bool = True  # the client named its topics (else: everything, or its grant)
    token: str | None = attrs.field(default=None, repr=False)  # ?token= (browsers)


@attrs.define
class Connection:
    _ws: WebSocketLike
    _bus: BusHandle
    _params: ConnectParams
    _remote: str | None = None  # the peer's address, as `/connections` shows it
    _identity: Identity | None = None  # the token's, when tokens are required
    conn_id: int = 0  # given by the router at `attach`
    _first: list[bytes] = attrs.field(factory=list)  # what the client is told after `welcome`
    _origin: Origin = attrs.field(init=False)
    _conversation: ServerConversation = attrs.field(init=False)
    _outbox: Outbox = attrs.field(init=False)
    _pipeline: _Pipeline | None = None  # made on the first publish: most subscribers never do
    _nursery: trio.Nursery | None = None
    _last_sample: float = -1.0
    # the run's clock: `trio.current_time()` costs two calls more, once per delivery
    _clock: trio.abc.Clock = attrs.field(init=False, factory=trio.lowlevel.current_clock)
    # writes not yet reported to the stats actor (reported with each latency sample, and last)
    _delivery: Histogram = attrs.field(factory=Histogram)
    _delivered: int = 0
    _frame_tokens: tuple[float, float] = (0.0, -math.inf)  # (tokens, trio time): see _throttle
    _refreshed: trio.Event | None = None  # set by `auth` (made by `_expire`: tokens only)
    close_code: int = int(CloseCode.GOING_AWAY)

    def __attrs_post_init__(self) -> None:
        cfg = self._bus.config
        self._origin = Origin("ws", self._remote, self._identity)
        self._conversation = ServerConversation(
            cfg.max_message_bytes,
            cfg.max_event_bytes,
            frozenset(self._params.patterns),
            self._params.batch,
        )
        self._outbox = Outbox(
            max_events=cfg.outbox_events,
            max_bytes=cfg.outbox_bytes,
            max_replies=cfg.reply_queue_frames,
            slow_consumer_seconds=cfg.slow_consumer_seconds,
        )

    async def attach(self) -> None:
        """Register with the router, before the WebSocket is accepted.

        Raises:
            Overloaded: the bus has its maximum of connections (refuse the handshake: 503).
            LimitExceeded: the connect parameters ask for too many patterns (400).
            BusClosed: the bus is shutting down.
        """
        since = self._params.since
        if since is not None and isinstance(self._bus.log, SharedLog):
            await self._bus.log.settle(since, SETTLE_SECONDS)
        since, self._first = self._resume_point()
        identity = self._identity
        peer = Peer(
            self._remote,
            time.time(),
            self._conversation.batch,
            identity=self._origin.limited_as,
            sub=identity.sub if identity is not None else None,
        )
        self.conn_id = await self._bus.router.attach(
            self._outbox, self._params.patterns, since=since, peer=peer
        )

    async def run(self) -> int:
        """Serve the attached connection until either side closes it; returns the close code.

        Never raises except `trio.Cancelled`: errors become a 1011 close.
        """
        bus = self._bus
        bus.stats.record(Opened(self.conn_id))
        peer_gone = False
        try:
            async with trio.open_nursery() as nursery:
                # whoever closes the outbox (either side, the router, a deadline) ends all of
                # this connection's tasks; the reader runs in this one (a task less per
                # connection: they are what an idle connection costs)
                self._nursery = nursery
                self._outbox.on_close = nursery.cancel_scope.cancel
                if self._outbox.closed_code is not None:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._writer, self._first)
                if self._identity is not None:
                    nursery.start_soon(self._expire)
                await self._reader()
            assert self._outbox.closed_code is not None
            self.close_code = self._outbox.closed_code
            peer_gone = self.close_code < 0
        except BusClosed:
            self.close_code = int(CloseCode.GOING_AWAY)
        except Exception:
            log.exception("connection %d failed; closing it with 1011", self.conn_id)
            self.close_code = int(CloseCode.INTERNAL_ERROR)
        finally:
            self._outbox.direct = None
            await bus.router.detach(self.conn_id)
        if peer_gone:
            self.close_code = -self.close_code
        else:
            with trio.move_on_after(CLOSE_WRITE_SECONDS):
                with contextlib.suppress(Disconnected):
                    await self._ws.close(self.close_code)
        self._report_deliveries(None)
        if self._pipeline is not None:
            self._report_publishes(self._pipeline)
        bus.stats.record(Closed(self.conn_id, self.close_code))
        return self.close_code

    def _report_publishes(self, pipeline: _Pipeline) -> None:
        if any(pipeline.durations.counts):
            self._bus.stats.record(PublishDurations(pipeline.durations))
            pipeline.durations = Histogram()

    def _report_deliveries(self, sample: float | None) -> None:
        if self._delivered or sample is not None:
            self._bus.stats.record(Delivered(self._delivered, self._delivery, sample))
            self._delivery, self._delivered = Histogram(), 0

    def _resume_point(self) -> tuple[int | None, list[bytes]]:
        """Where a `since=` resume starts reading, and what to tell the client first (a `gap`
        with reason `epoch` when its `seq` counts in another log's history)."""
        since = self._params.since
        if since is None:
            return None, []
        start, gap = resume_point(since, self._params.epoch, self._bus.log)
        return start, [] if gap is None else [codec.encode_frame(gap)]

    # --- reading ---

    async def _reader(self) -> None:
        try:
            while True:
                await self._handle_message(await self._ws.receive())
        except Disconnected as exc:
            self._outbox.close(-exc.code)  # negative: the peer closed, nothing to send

    async def _throttle(self) -> None:
        """Token bucket on frames other than publishes: past `max_frames_per_second` a client
        is simply read slower (its frames wait in TCP), so a flood of pings or bad frames cannot
        starve the neighbours. Publishes are held to the publisher's rate limit instead."""
        rate = self._bus.config.max_frames_per_second
        now = trio.current_time()
        tokens, last = self._frame_tokens
        tokens = min(rate, tokens + (now - last) * rate) - 1
        self._frame_tokens = (tokens, now)
        if tokens < 0:
            await trio.sleep(-tokens / rate)

    async def _handle_message(self, message: str | bytes) -> None:
        got = self._conversation.receive(message)
        if isinstance(got, ErrorFrame):
            await self._throttle()
            await self._reply(got)
            return
        frame = got.frame
        if not isinstance(frame, Publish):
            await self._throttle()
        try:
            match frame:
                case Publish():
                    await self._publish(frame, len(message), small=got.small)
                case Subscribe():
                    await self._subscribe(frame.id, frame.topics, subscribe=True, batch=frame.batch)
                case Unsubscribe():
                    await self._subscribe(frame.id, frame.topics, subscribe=False)
                case Ping():
                    await self._reply(self._conversation.pong(frame.id))
                case Auth():
                    await self._reauthenticate(frame)
        except BusError as exc:
            await self._reply(self._conversation.refused(frame.id, exc))

    async def _publish(self, frame: Publish, size: int, *, small: bool) -> None:
        received = trio.current_time()
        cfg = self._bus.config
        max_bytes = None if small else cfg.max_event_bytes

        def decode() -> list[Event]:
            if frame.event is not None:
                return [codec.decode_event(frame.event, "event", max_bytes=max_bytes)]
            assert frame.events is not None
            return codec.decode_batch(
                frame.events, "events", max_events=cfg.max_batch_events, max_bytes=max_bytes
            )

        pipeline = self._pipeline
        if pipeline is None:
            pipeline = self._pipeline = _Pipeline.open(
                cfg.publishes_in_flight, cfg.publish_bytes_in_flight
            )
            assert self._nursery is not None
            self._nursery.start_soon(self._acker, pipeline)
        token = self._conversation.publishing(frame)
        batch = frame.event is None
        try:
            offer = Offer(
                self._origin,
                decode,
                partial(_raw, frame),
                field="events" if batch else "event",
                batch=batch,
                key=frame.idempotency_key,
            )
            await ingress.submit(
                self._bus, offer, reply=pipeline.answers, token=token, acked=frame.ack
            )
        except BusError:
            self._conversation.withdrawn(token)
            raise
        # Pipelined: the next frame is read while the log takes these; `_acker` answers in order.
        pipeline.size += size
        try:
            pipeline.in_flight.send_nowait((frame, token, received, size))
        except trio.WouldBlock:
            await pipeline.in_flight.send((frame, token, received, size))
        if pipeline.size > pipeline.max_size:
            await pipeline.wait_room()

    async def _acker(self, pipeline: _Pipeline) -> None:
        timeout = self._bus.config.publish_timeout_seconds
        while True:
            item = None
            try:  # noqa: SIM105 (suppress() costs more, on every publish)
                item = pipeline.in_flight_rx.receive_nowait()  # no yield while more wait
            except trio.WouldBlock:
                pass
            if item is None:
                try:
                    item = await pipeline.in_flight_rx.receive()
                except trio.EndOfChannel:
                    return
            frame, token, received, size = item
            result: list[Published] | BusError
            try:
                result = await pipeline.answer_for(token, timeout)
                now = trio.current_time()
                pipeline.durations.observe(now - received)
                if now - pipeline.reported >= LATENCY_SAMPLE_SECONDS:
                    pipeline.reported = now
                    self._report_publishes(pipeline)
            except BusError as exc:
                if isinstance(exc, StorageError):
                    ingress.failed(self._bus, self._origin, partial(_raw, frame), exc)
                result = exc
            pipeline.answered(size)
            answer = self._conversation.answered(token, result)
            if answer is not None:
                await self._reply(answer)

    async def _subscribe(
        self, rid: RequestId, topics: list[str], *, subscribe: bool, batch: bool | None = None
    ) -> None:
        if not topics:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "'topics' is empty", "topics")
        patterns = [validate_pattern(t, "topics") for t in topics]
        if subscribe and self._identity is not None:
            self._identity.readable(patterns, "topics")
        held = await self._bus.router.subscribe(
            self.conn_id, patterns, subscribe=subscribe, batch=batch
        )
        await self._reply(
            self._conversation.subscribed(rid, held, subscribe=subscribe, batch=batch)
        )

    async def _reauthenticate(self, frame: Auth) -> None:
        """A fresh token for this connection: the same `sub`; subscriptions its grant no longer
        covers are dropped."""
        old = self._identity
        if old is None:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "this bus takes no tokens", "token")
        bus = self._bus
        new = bus.auth.verify(frame.token, time.time())
        if new.sub != old.sub:
            raise Forbidden(
                f"a connection keeps its identity: the token is for {new.sub!r}, not {old.sub!r}",
                "token",
            )
        self._identity = new
        self._origin = attrs.evolve(self._origin, identity=new)
        lost = [p for p in self._conversation.patterns if not new.grant.may_subscribe(p)]
        if lost:
            held = await bus.router.subscribe(self.conn_id, lost, subscribe=False)
            self._conversation.subscribed(None, held, subscribe=False, batch=None)
        if self._refreshed is not None:
            self._refreshed.set()
        await self._reply(Authenticated(frame.id, new.expires_at))

    async def _expire(self) -> None:
        """Close with 4001 once the token expires, unless `auth` brought a fresh one."""
        while True:
            assert self._identity is not None
            left = self._identity.expires_at - time.time()
            self._refreshed = refreshed = trio.Event()
            with trio.move_on_after(max(0.0, left)):
                await refreshed.wait()
                continue
            self._bus.stats.record(Counted("auth_failure:token_expired"))
            self._outbox.close(CloseCode.TOKEN_EXPIRED)
            return

    async def _reply(self, frame: ServerFrame) -> None:
        await self._outbox.reply(codec.encode_frame(frame))

    # --- writing ---

    async def _writer(self, first: list[bytes]) -> None:
        outbox = self._outbox
        try:
            await self._ws.send_many([codec.encode_frame(self._welcome()), *first])
            # from now on the router may write live events itself while this task is parked
            outbox.direct = self._deliver_now
            overflows = 0
            while True:
                # everything queued since the last write leaves now: one socket write, and with
                # batching one message (the router wakes writers in rounds, see its module)
                taken = await outbox.take()
                frames = taken.replies + taken.events
                if not frames and not taken.missed:
                    return  # closed
                if frames:
                    await self._send_frames(frames)
                if taken.missed:
                    outbox.wrote(taken.missed[0].after, len(taken.events))
                    if outbox.catch_ups > overflows:  # not the resume: it fell behind
                        self._bus.stats.record(Counted("catch_ups", outbox.catch_ups - overflows))
                        overflows = outbox.catch_ups
                    await self._catch_up(taken.missed)
                else:
                    outbox.wrote(taken.upto, len(taken.events))
                self._count_deliveries(len(taken.events), taken.oldest_accepted_at)
        except Disconnected as exc:
            outbox.close(-exc.code)

    def _deliver_now(self, events: list[bytes], oldest: float) -> bool:
        """Write live events from the router's fan-out, when the writer is parked and the
        socket takes them at once: no task switch per delivery. False: the writer must."""
        written = self._ws.send_now(self._messages(events))
        if written is WROTE_NONE:
            return False
        if written is WROTE_PART:
            assert self._nursery is not None
            self._nursery.start_soon(self._finish_write)
        self._count_deliveries(len(events), oldest)
        return True

    async def _finish_write(self) -> None:
        try:
            await self._ws.send_many([])  # writes what `send_now` could not
        except Disconnected as exc:
            self._outbox.close(-exc.code)

    def _count_deliveries(self, events: int, oldest: float | None) -> None:
        self._delivered += events
        if oldest is not None:
            now = self._clock.current_time()
            latency = now - oldest
            self._delivery.observe(latency)
            if now - self._last_sample >= LATENCY_SAMPLE_SECONDS:
                self._last_sample = now
                self._report_deliveries(latency)

    def _welcome(self) -> Welcome:
        bus = self._bus
        return Welcome(
            version=__version__,
            node=bus.node,
            epoch=bus.log.epoch,
            seq=bus.log.last_seq,
            limits=bus.config.limits(),
        )

    def _messages(self, frames: list[bytes]) -> list[bytes]:
        """The messages that carry `frames`: one each, or with batching as few as
        `batch_frame_bytes` allows (one JSON object per line)."""
        if not self._conversation.batch or len(frames) == 1:
            return frames
        limit = self._bus.config.batch_frame_bytes
        if sum(map(len, frames)) + len(frames) <= limit:
            return [b"\n".join(frames)]  # the common case, in C: no loop per frame
        messages: list[bytes] = []
        chunk: list[bytes] = []
        size = 0
        for frame in frames:
            if chunk and size + len(frame) > limit:
                messages.append(b"\n".join(chunk))
                chunk, size = [], 0
            chunk.append(frame)
            size += len(frame) + 1
        messages.append(b"\n".join(chunk))
        return messages

    async def _send_frames(self, frames: list[bytes]) -> None:
        await self._ws.send_many(self._messages(frames))  # one write

    async def _read_page(self, since: int, query: Query, upto: int) -> Page:
        """A page of missed events; while the log cannot be read (Redis away) the connection
        stays open and tries again, so it gets its events once the log is back."""
        delay = READ_RETRY_SECONDS[0]
        while True:
            try:
                return await self._bus.log.read_after(
                    since, query, CATCH_UP_PAGE_EVENTS, until=upto
                )
            except StorageError as exc:
                log.warning("catching up: %s; trying again in %g s", exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, READ_RETRY_SECONDS[1])

    async def _catch_up(self, missed: list[Missed]) -> None:
        """Send the missed events from the log, in pages, then return to live ones.

        Used for a resume (`since=`) and whenever the outbox overflowed. Whatever the log no
        longer holds is announced with a `gap` (reason `retention`), also when retention moves
        on between two pages (a memory ring under heavy traffic). Replies that arrive meanwhile
        go out between pages.
        """
        outbox = self._outbox
        read = 0
        try:
            for part in missed:
                query = Query(part.patterns)
                since, upto = part.after, part.upto
                while since < upto:
                    # the page says what was retained when it was read, so retention running
                    # meanwhile still gets its gap announced
                    page = await self._read_page(since, query, upto)
                    frames = outbox.take_replies()
                    gap = retention_gap(since, page, upto)
                    if gap is not None:
                        frames.append(codec.encode_frame(gap))
                    frames.extend(r.data for r in page.records)
                    if frames:
                        await self._send_frames(frames)
                    if page.next_since <= since:
                        break
                    since = page.next_since
                    read += len(page.records)
                    outbox.wrote(since, len(page.records))
        finally:
            outbox.caught_up()
        self._bus.stats.record(Counted("catch_up_events", read))

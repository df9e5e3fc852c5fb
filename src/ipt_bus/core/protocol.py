"""The sans-IO state of one WebSocket conversation (h11's way: messages in, frames out, no I/O).

Theory of operation. `ServerConversation` is the server's side of one connection: it turns each
message the client sent into an action or an error frame (binary messages, oversized ones, bad
JSON, bad fields), remembers the subscriptions the router last confirmed and the batch flag, and
numbers the publishes it hands on (tokens) so that their acks go out in the order the client
sent them, whatever the router answers. `ClientConversation` is the Python client's side: it
numbers its requests, matches answers to them, and keeps where it is in the log (`epoch`,
`last_seq`) so a reconnect can resume. Both speak only through `ipt_bus.core.codec`, so the two
ends share one vocabulary; a pair of them is tested without sockets (tests/core/test_protocol.py).
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from ipt_bus.core import codec
from ipt_bus.core.errors import ErrorCode, LimitExceeded, ProtocolError, as_protocol_error
from ipt_bus.core.frames import (
    Acked,
    ClientFrame,
    ErrorFrame,
    Gap,
    GapReason,
    Pong,
    Publish,
    RequestId,
    ServerFrame,
    Subscriptions,
    Welcome,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ipt_bus.core.errors import BusError
    from ipt_bus.core.model import Event, Published


class Received(NamedTuple):
    """A client's message, read: the action to carry out, and whether the message was too small
    to hold an event over the size limit (then no event in it needs measuring)."""

    frame: ClientFrame
    small: bool


class _Pending(NamedTuple):
    token: int
    id: RequestId
    ack: bool
    batch: bool


@attrs.define
class ServerConversation:
    """The server's side of one WebSocket conversation."""

    max_message_bytes: int
    max_event_bytes: int
    patterns: frozenset[str] = frozenset()
    batch: bool = False
    _tokens: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    # at most publishes_in_flight; made on the first publish (an empty deque costs 600 bytes,
    # and most connections never publish)
    _pending: deque[_Pending] | None = None

    def receive(self, message: str | bytes) -> Received | ErrorFrame:
        """What the client's `message` asks, or the error frame that answers it."""
        if isinstance(message, bytes):
            return codec.error_frame(
                None,
                ProtocolError(
                    ErrorCode.UNSUPPORTED_FRAME,
                    "binary frames are not supported; send JSON as text frames",
                ),
            )
        limit = self.max_message_bytes
        if len(message) * 4 > limit and len(message.encode("utf-8", "surrogatepass")) > limit:
            too_large = LimitExceeded(
                f"message is larger than {limit} bytes (max_message_bytes)", too_large=True
            )
            return codec.error_frame(codec.request_id_of(message[:4096]), too_large)
        try:
            frame = codec.decode_client_frame(message)
        except ProtocolError as exc:
            return codec.error_frame(codec.request_id_of(message), exc)
        return Received(frame, small=len(message) * 4 <= self.max_event_bytes)

    def refused(self, rid: RequestId, exc: BusError) -> ErrorFrame:
        """The error frame for an action the bus refused."""
        return codec.error_frame(rid, as_protocol_error(exc))

    def subscribed(
        self, rid: RequestId, held: Iterable[str], *, subscribe: bool, batch: bool | None
    ) -> Subscriptions:
        """The router confirmed a (un)subscribe: the patterns it holds now."""
        self.patterns = frozenset(held)
        if batch is not None:
            self.batch = batch
        return Subscriptions(rid, sorted(self.patterns), subscribe)

    def pong(self, rid: RequestId) -> Pong:
        return Pong(rid)

    def publishing(self, frame: Publish) -> int:
        """A publish goes on to the router: its token, the order its answer is due in."""
        token = next(self._tokens)
        if self._pending is None:
            self._pending = deque()
        self._pending.append(_Pending(token, frame.id, frame.ack, frame.event is None))
        return token

    def withdrawn(self, token: int) -> None:
        """The publish with `token` never reached the router (its error is sent instead)."""
        assert self._pending is not None
        self._pending = deque(p for p in self._pending if p.token != token)

    def answered(self, token: int, result: list[Published] | BusError) -> ServerFrame | None:
        """The router's answer for the publish with `token` (the oldest one due): the frame for
        the client, or None when it asked for no ack."""
        assert self._pending is not None
        pending = self._pending.popleft()
        assert pending.token == token, "answers are taken in the order the publishes came"
        if isinstance(result, list):
            return Acked(pending.id, result, pending.batch) if pending.ack else None
        return self.refused(pending.id, result)

    @property
    def publishes_due(self) -> int:
        """Publishes handed on whose answers have not been taken yet."""
        return 0 if self._pending is None else len(self._pending)


@attrs.define
class ClientConversation:
    """The client's side of one bus session (it outlives reconnects)."""

    epoch: str | None = None
    last_seq: int | None = None  # the last event delivered: a reconnect resumes after it
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))

    def request(self, frame: ClientFrame) -> tuple[ClientFrame, str]:
        """`frame` with a fresh id, and its text to send."""
        frame = attrs.evolve(frame, id=next(self._ids))
        return frame, codec.encode_client_frame(frame)

    def welcomed(self, welcome: Welcome) -> None:
        """A (re)connection began: a first one goes live from the log's end."""
        self.epoch = welcome.epoch
        if self.last_seq is None:
            self.last_seq = welcome.seq

    def receive(self, objects: Iterable[dict[str, Any]]) -> list[Event | ServerFrame]:
        """The frames of one message, decoded: new events (one a resume delivers twice is left
        out) and server frames (a newer bus's unknown ones too are left out)."""
        out: list[Event | ServerFrame] = []
        for obj in objects:
            if "action" not in obj:
                event = codec.event_from_bus(obj)
                seq = event.seq
                if seq is not None:
                    if self.last_seq is not None and seq <= self.last_seq:
                        continue
                    self.last_seq = seq
                out.append(event)
                continue
            frame = codec.decode_server_frame(obj)
            if isinstance(frame, Welcome):
                self.welcomed(frame)
            elif isinstance(frame, Gap):
                self._skip(frame)
            if frame is not None:
                out.append(frame)
        return out

    def _skip(self, gap: Gap) -> None:
        if gap.reason == GapReason.EPOCH:
            self.last_seq = 0  # the log started over: everything in it is new to us
            self.epoch = gap.epoch
        elif gap.to_seq is not None:
            self.last_seq = max(self.last_seq or 0, gap.to_seq)

    def resume_query(self) -> dict[str, str]:
        """The `/ws` parameters that resume where this conversation is."""
        query: dict[str, str] = {}
        if self.last_seq is not None:
            query["since"] = str(self.last_seq)
            if self.epoch is not None:
                query["epoch"] = self.epoch
        return query

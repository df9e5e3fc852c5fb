"""The WebSocket transport: the one place ipt_bus changes hypercorn's private behaviour, and the
ASGI adapter the connection actor writes through.

Checked against hypercorn 0.17-0.18 (pinned in pyproject.toml);
`tests/integration/test_hypercorn_patch.py` fails if an upgrade breaks an assumption.

- Write deadline: hypercorn sends every byte inside a *shielded* cancel scope with no deadline,
  so a peer that stops reading pins the sending task forever and nothing (not even shutdown) can
  free it. Here the shielded send gets a deadline; when it passes, the socket is aborted and the
  connection is treated as closed, which RFC 6455 allows for a peer that does not read.
- No permessage-deflate: hypercorn always accepts it and wsproto inflates with no cap (32 small
  uploads took a server to 4.3 GB, RELIABILITY.md E2). The extension is not negotiated; wsproto
  then fails any compressed (RSV1) frame as a protocol error.
- Bounded message buffer: hypercorn appends a fragment first and checks the size after, and keeps
  appending after it closed with 1009 (8 x 64 MiB held 566 MB). Here the size is checked before
  appending, so nothing past the limit is ever held.
- One pinger, not a task per connection: hypercorn runs a ping task per WebSocket that sleeps
  the whole interval before it looks at whether the connection closed, so every closed
  WebSocket kept its task group, and with it its socket, alive for up to the interval (25 s).
  Without TLS, hypercorn is told no interval and each accepted stream joins a weak set that one
  task per trio run pings each interval (`ping_every`; a ping goes out when the socket takes it
  at once). With TLS, hypercorn's task stays, and waits on a close event with the interval as
  its timeout.
- A failure boundary per connection: hypercorn closes a connection (`_close`, sending EOF) without
  its send lock, so a ping racing the close raised `BusyResourceError` inside the connection's
  task group, and any exception there ends hypercorn's whole server (found by the C8 fuzz test).
  A send that finds the stream busy closing now counts as closed, and an error escaping one
  connection is logged and ends only that connection.
- Close codes for bad frames: wsproto reports a frame it cannot parse (invalid UTF-8: 1007, a
  protocol error: 1002) as a close while the connection is still open, and hypercorn then drops
  the socket without a close frame. Here the peer is sent a close frame with that code first.
- The peer's close code: hypercorn tells the app 1006 when the client closed first, whatever
  code the client sent; here the app is told the client's code (1000 for a clean close).
- Message deadline: a message must be complete within `message_deadline_seconds` of its first
  fragment, checked as fragments arrive, so a peer trickling a frame is cut off (hypercorn has
  no such bound; ASGI cannot see fragments). It is closed like an oversized message, with 1009.
- Whole text frames without wsproto (`_fast_frames`): parsing a client's frames was over a
  quarter of the server's time for a fast publisher (wsproto's frame parser is pure Python,
  generator-driven, and unmasks byte by byte). While wsproto holds nothing (no partial frame or
  message), the bytes read are taken here as long as they are what a publisher sends: final,
  masked text frames with no extension bits, under the size limit, valid UTF-8. A partial frame
  at the end of a read waits here for the next read (bounded by the size limit and the message
  deadline). Anything else (a ping, a close, a fragment, a binary or reserved frame, invalid
  UTF-8, an oversized length) and everything after it goes to wsproto as before, so every close
  code and limit stays wsproto's and hypercorn's. The texts of one read reach our app as one
  queued message (`MANY_KEY`) when the app said it takes them so (`AsgiWebSocket`): hypercorn's
  app queue holds 10 messages, and a task switch every 10 frames cost a fast publisher a fifth
  of its rate. One message holds at most one read (64 KiB) and a frame held from before it, so
  the queue stays bounded as before.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from importlib.metadata import version
from io import BytesIO, StringIO
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol.events import Body, Data, StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import (
    ASGIWebsocketState,
    FrameTooLargeError,
    Handshake,
    WebsocketBuffer,
    WSStream,
)
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping, TextMessage
from wsproto.frame_protocol import CloseReason

from ipt_bus.bus.connection import WROTE_ALL, WROTE_NONE, WROTE_PART, Disconnected, Written

if TYPE_CHECKING:
    from collections.abc import Callable  # noqa: TC004 (annotations attrs never evaluates)

log = logging.getLogger("ipt_bus.hypercorn")
CHECKED_VERSIONS: Final = ("0.17", "0.18")
WRITE_DEADLINE_ATTR: Final = "ipt_bus_write_deadline_seconds"
OWED_ATTR: Final = "ipt_bus_owed"  # on a TCPServer: bytes a `send_now` left for `_send_bytes`
DEFAULT_WRITE_DEADLINE_SECONDS: Final = 10.0  # when the hypercorn Config does not say

DEFAULT_MESSAGE_DEADLINE_SECONDS: Final = 30.0

_original_protocol_send: Any = TCPServer.protocol_send
_original_run: Any = TCPServer.run
_original_accept: Any = Handshake.accept
_original_handle: Any = WSStream.handle
_original_app_send: Any = WSStream.app_send
_original_handle_events: Any = WSStream._handle_events
_message_deadline_seconds = DEFAULT_MESSAGE_DEADLINE_SECONDS
# looked up once, as `WROTE_*`: `_open` runs once per delivery
_CONNECTED: Final = ASGIWebsocketState.CONNECTED
_OPEN: Final = ConnectionState.OPEN


async def _protocol_send(self: TCPServer, event: Any) -> None:
    if isinstance(event, RawData):
        await _send_bytes(self, event.data)
    else:
        await _original_protocol_send(self, event)


async def _send_bytes(self: TCPServer, data: bytes) -> None:
    # as trio's own lock would: a cancelled task sends nothing (under the bare hypercorn CLI,
    # shutdown cancels the app and hypercorn's 1011 "app ended" close must not reach clients)
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        self.send_lock.acquire_nowait()
    except trio.WouldBlock:
        await self.send_lock.acquire()
    try:
        owed = getattr(self, OWED_ATTR, None)
        if owed is not None:  # what a write made without waiting could not finish goes first
            setattr(self, OWED_ATTR, None)
            data = owed + data
        sent = _write_now(self.stream, data)
        if sent == len(data):
            return
        deadline = getattr(self.config, WRITE_DEADLINE_ATTR, DEFAULT_WRITE_DEADLINE_SECONDS)
        try:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + deadline
                await self.stream.send_all(memoryview(data)[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            # busy: `_close` is sending EOF right now; either way this connection is done
            await self.protocol.handle(Closed())
            return
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self.stream)
            await self.protocol.handle(Closed())
    finally:
        self.send_lock.release()


def _write_now(stream: Any, data: bytes) -> int:
    """Write what the socket takes without waiting; 0 where only trio's path may write.

    Called with the send lock held, or with it free and no await until the write is done
    (`send_now`, the pinger), so no other write interleaves. The descriptor is read at
    each call: a closed trio socket reports -1, never a number reused by another connection.
    Errors are left to trio's `send_all`, which raises them as its own exceptions.
    """
    if type(stream) is not trio.SocketStream or not data:
        return 0  # TLS and other wrappers must see every byte
    try:
        return os.write(stream.socket.fileno(), data)
    except OSError:
        return 0


async def _run(self: TCPServer) -> None:
    try:
        await _original_run(self)
    except Exception:  # one connection's failure must not end the server (ExceptionGroup too)
        log.exception("a connection failed inside hypercorn; it was closed")


def _accept_without_extensions(self: Handshake, *args: Any, **kwargs: Any) -> Any:
    self.extensions = None  # as if the client offered none: permessage-deflate is refused
    return _original_accept(self, *args, **kwargs)


def _extend(self: WebsocketBuffer, event: Any) -> None:
    data = event.data
    if self.value is None:
        self.value = StringIO() if isinstance(event, TextMessage) else BytesIO()
        self.ipt_bus_started = time.monotonic()  # type: ignore[attr-defined]  # our field
    elif time.monotonic() - self.ipt_bus_started > _message_deadline_seconds:  # type: ignore[attr-defined]
        raise FrameTooLargeError()
    if self.length + len(data) > self.max_length:
        raise FrameTooLargeError()  # before writing: nothing past the limit is held
    self.length += self.value.write(data)


PENDING_ATTR: Final = "ipt_bus_pending"  # on a WSStream: (bytes of a partial frame, since)
MANY_ATTR: Final = "ipt_bus_many"  # on a WSStream: its app takes a read's texts as one message
MANY_KEY: Final = "ipt_bus_texts"  # in such a message: every text of the read, in order


def _wsproto_idle(stream: WSStream) -> bool:
    """Whether wsproto and hypercorn hold no part of a frame or message of this stream, so the
    next bytes start a frame (and are ours to parse)."""
    handshake = getattr(stream, "handshake", None)  # set by the request (annotated only)
    if stream.closed or handshake is None or not handshake.accepted or stream.app_put is None:
        return False
    connection = getattr(stream, "connection", None)  # set by the accept
    if connection is None or connection.state is not ConnectionState.OPEN:
        return False
    proto = connection._proto
    decoder = proto._frame_decoder
    return (
        decoder.header is None
        and not len(decoder.buffer)
        and proto._message_decoder.opcode is None
        and stream.buffer.value is None
        and not connection._events
    )


async def _fast_frames(self: WSStream, data: bytes) -> None:
    """Whole final masked text frames of `data` (after what a previous read left) go to the app
    as they are; from the first other frame on, wsproto takes over (module doc)."""
    pending = getattr(self, PENDING_ATTR, None)
    if pending is not None:
        data = pending[0] + data
    limit = self.buffer.max_length
    size = len(data)
    pos = 0
    texts: list[str] = []
    handover = -1  # where wsproto takes over
    while size - pos >= 2:
        first, second = data[pos], data[pos + 1]
        if first != 0x81 or not second & 0x80:  # FIN + text, masked: else wsproto's
            handover = pos
            break
        length = second & 0x7F
        start = pos + 6
        if length == 126:
            if size - pos < 4:
                break
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            start = pos + 8
        elif length == 127:
            if size - pos < 10:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            start = pos + 14
        if length > limit:
            handover = pos  # wsproto and the buffer close it with 1009 before holding it
            break
        end = start + length
        if end > size:
            break
        try:
            texts.append(_unmask(data[start:end], data[start - 4 : start]).decode("utf-8"))
        except UnicodeDecodeError:
            handover = pos  # wsproto closes it with 1007
            break
        pos = end
    rest = b"" if handover >= 0 else data[pos:]
    if rest:
        since = pending[1] if pending is not None and pos == 0 else time.monotonic()
        if time.monotonic() - since > _message_deadline_seconds:
            setattr(self, PENDING_ATTR, None)
            await self._send_wsproto_event(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG))
            return
        setattr(self, PENDING_ATTR, (rest, since))
    elif pending is not None:
        setattr(self, PENDING_ATTR, None)
    assert self.app_put is not None
    if len(texts) > 1 and getattr(self, MANY_ATTR, False):
        # one queue slot for the whole read: the app takes them without a task switch per
        # frame (hypercorn's queue holds 10 messages, so a read of 140 frames took 14 switches)
        message = {"type": "websocket.receive", "bytes": None, "text": texts[0], MANY_KEY: texts}
        await _put(self.app_put, message)
    else:
        for text in texts:
            await _put(self.app_put, {"type": "websocket.receive", "bytes": None, "text": text})
    if handover >= 0:
        self.connection.receive_data(data[handover:])
        await self._handle_events()
        if self.closed:
            _closed_event(self).set()


def _unmask(payload: bytes, mask: bytes) -> bytes:
    """RFC 6455 §5.3, as one integer XOR (wsproto goes byte by byte)."""
    count = len(payload)
    if not count:
        return b""
    key = (mask * (count // 4 + 1))[:count]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        count, "little"
    )


def _closed_event(stream: WSStream) -> trio.Event:
    event: trio.Event | None = getattr(stream, "ipt_bus_closed", None)
    if event is None:
        event = trio.Event()
        stream.ipt_bus_closed = event  # type: ignore[attr-defined]  # our field
    return event


async def _handle(self: WSStream, event: Any) -> None:
    if isinstance(event, (Body, Data)) and _wsproto_idle(self):
        await _fast_frames(self, event.data)
        return
    peer_code = getattr(self, "ipt_bus_peer_close_code", None)
    if (
        isinstance(event, StreamClosed)
        and peer_code is not None
        and not self.closed
        and self.app_put is not None
        and self.state == ASGIWebsocketState.CONNECTED
    ):
        # the peer closed first: the app is told the code it sent (hypercorn says 1006)
        self.closed = True
        await self.app_put({"type": "websocket.disconnect", "code": peer_code})
    else:
        await _original_handle(self, event)
    if self.closed:
        _closed_event(self).set()


async def _app_send(self: WSStream, message: Any) -> None:
    await _original_app_send(self, message)
    if self.closed:
        _closed_event(self).set()


def _tcp_server(stream: WSStream) -> TCPServer | None:
    """The connection under a WebSocket stream, where it is hypercorn's HTTP/1.1 one."""
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None  # HTTP/2 frames its own data
    server = getattr(protocol.send, "__self__", None)
    return server if isinstance(server, TCPServer) else None


def _plain_socket(server: TCPServer | None) -> trio.SocketStream | None:
    """The connection's socket where bytes may be written to it directly (not TLS)."""
    stream: Any = None if server is None else server.stream  # typed as TLS by hypercorn
    return stream if type(stream) is trio.SocketStream else None


def _open(stream: WSStream) -> bool:
    """Whether the WebSocket still takes messages (hypercorn drops them once it is closing)."""
    return not stream.closed and stream.state is _CONNECTED and stream.connection.state is _OPEN


@attrs.frozen
class DirectSender:
    """Sends text messages on one hypercorn HTTP/1.1 WebSocket without the ASGI layers."""

    _stream: WSStream
    _server: TCPServer
    _socket: trio.SocketStream | None  # the server's stream where it is a plain socket (not TLS)

    @classmethod
    def find(cls, send: Any) -> DirectSender | None:
        """The sender behind an ASGI `send`, or None where it is not hypercorn's HTTP/1.1 one."""
        stream = getattr(send, "__self__", None)
        if not isinstance(stream, WSStream):
            return None
        server = _tcp_server(stream)
        return None if server is None else cls(stream, server, _plain_socket(server))

    async def send(self, texts: list[bytes]) -> None:
        """Each (UTF-8) text as its own message, all in one write; dropped once the socket is
        closing, as hypercorn drops a `websocket.send` then."""
        if not _open(self._stream):
            return
        # a failed write closes the stream through `handle`, which sets its closed event
        await _send_bytes(self._server, text_frames(texts))

    def send_now(self, texts: list[bytes]) -> Written:
        """`send` without waiting, for the router's fan-out: written whole, begun (the rest is
        owed, and the next `send` writes it first), or not at all (the socket is busy, full,
        or TLS: `send` must do it)."""
        if not _open(self._stream):
            return WROTE_ALL  # dropped, as `send` drops it
        server = self._server
        socket_stream = self._socket
        if (
            socket_stream is None  # TLS sees every byte: `send`
            or server.send_lock.locked()
            or getattr(server, OWED_ATTR, None) is not None
        ):
            return WROTE_NONE  # a write is under way, or bytes are owed: they go first
        # No await from here on, so no other task can write meanwhile: the lock is free and
        # stays free without being taken (taking and releasing it cost ~1 µs per delivery).
        data = text_frames(texts)
        sent = _write_now(socket_stream, data)
        if sent == len(data):
            return WROTE_ALL
        if sent == 0:
            return WROTE_NONE
        setattr(server, OWED_ATTR, data[sent:])
        return WROTE_PART


class _Headers(dict[int, bytes]):
    """Frame headers by payload length, made once each (events of one kind have few lengths)."""

    def __missing__(self, n: int) -> bytes:
        if n < 126:
            header = bytes((0x81, n))
        elif n < 65536:
            header = b"\x81\x7e" + n.to_bytes(2, "big")
        else:
            header = b"\x81\x7f" + n.to_bytes(8, "big")
        if len(self) < MAX_CACHED_HEADERS:
            self[n] = header
        return header


MAX_CACHED_HEADERS: Final = 65_536  # ~4 MiB at most; lengths past it are framed each time
_HEADERS: Final = _Headers()


def text_frames(texts: list[bytes]) -> bytes:
    """Unmasked, unfragmented text frames (RFC 6455 §5.2), as wsproto writes them, of texts
    already encoded: the bytes each event was encoded to once go to the socket as they are.

    Built with C-level passes (a header per length from a cache, interleaved by slice
    assignment, one join): framing a round for each of 1,000 subscribers was a quarter of the
    fan-out's time with a Python loop per frame."""
    if len(texts) == 1:
        return _HEADERS[len(texts[0])] + texts[0]
    parts: list[bytes] = [b""] * (2 * len(texts))
    parts[0::2] = map(_HEADERS.__getitem__, map(len, texts))
    parts[1::2] = texts
    return b"".join(parts)


async def _send_pings(self: WSStream) -> None:
    """hypercorn's per-connection ping task, which ends with the connection. Only TLS streams
    get one (see `ping_every` for the rest)."""
    closed = _closed_event(self)
    interval = self.config.websocket_ping_interval
    assert interval is not None  # hypercorn starts this task only when it is set
    while not self.closed:
        await self._send_wsproto_event(Ping())
        with trio.move_on_after(interval):
            await closed.wait()


def ping_every(send: Any, interval: float) -> bool:
    """Have this run's one pinger ping the accepted WebSocket behind an ASGI `send` every
    `interval` seconds; False where it cannot (TLS, HTTP/2, not hypercorn): those need
    hypercorn's own ping task (a task per connection costs ~2.5 KB and a spawn)."""
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return False
    if _plain_socket(_tcp_server(stream)) is None:
        return False
    _pinged(interval).add(stream)
    return True


_PINGED: trio.lowlevel.RunVar[dict[float, weakref.WeakSet[WSStream]]] = trio.lowlevel.RunVar(
    "ipt_bus_pinged"
)


def _pinged(interval: float) -> weakref.WeakSet[WSStream]:
    """The streams pinged every `interval` seconds in this trio run (its pinger starts with it)."""
    try:
        by_interval = _PINGED.get()
    except LookupError:
        by_interval = {}
        _PINGED.set(by_interval)
    streams = by_interval.get(interval)
    if streams is None:
        streams = by_interval[interval] = weakref.WeakSet()
        trio.lowlevel.spawn_system_task(_pinger, streams, interval, name="ipt_bus pinger")
    return streams


async def _pinger(streams: weakref.WeakSet[WSStream], interval: float) -> None:
    """Ping every open stream once per `interval`. A ping goes out only when its socket takes it
    at once: one that does not is not reading, and its write deadline deals with it."""
    while True:
        await trio.sleep(interval)
        for stream in list(streams):
            if not _open(stream):
                streams.discard(stream)
                continue
            try:
                _ping_now(stream)
            except Exception:  # a system task must not raise: this one stream is dropped
                log.exception("pinging a WebSocket failed")
                streams.discard(stream)


def _ping_now(stream: WSStream) -> None:
    tcp = _tcp_server(stream)
    if tcp is None:
        return
    if tcp.send_lock.locked():
        return  # a write is in progress: bytes are in flight anyway
    # no await from here on: nothing else writes meanwhile (as in `DirectSender.send_now`)
    owed = getattr(tcp, OWED_ATTR, None)
    data = owed if owed is not None else stream.connection.send(Ping())  # owed bytes go first
    sent = _write_now(tcp.stream, data)
    if owed is not None or 0 < sent < len(data):
        setattr(tcp, OWED_ATTR, data[sent:] if sent < len(data) else None)


async def _put(app_put: Any, message: Any) -> None:
    """Hand a message to the app: without a trip through the scheduler while its queue has
    room, so all the messages of one read reach the app in one turn (hypercorn's `send` yields
    once per message, which made a fast publisher's frames trickle in one per scheduler round)."""
    channel = getattr(app_put, "__self__", None)
    if isinstance(channel, trio.MemorySendChannel):
        try:
            channel.send_nowait(message)
            return
        except trio.WouldBlock:
            pass
    await app_put(message)


async def _handle_events(self: WSStream) -> None:
    """hypercorn's loop, plus a close frame for frames wsproto could not parse, and messages
    handed over without a yield each (`_put`)."""
    for event in self.connection.events():
        if isinstance(event, Message):
            try:
                self.buffer.extend(event)
            except FrameTooLargeError:
                await self._send_wsproto_event(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG))
                break
            if event.message_finished:
                assert self.app_put is not None
                message = self.buffer.to_message()
                self.buffer.clear()
                await _put(self.app_put, message)
        elif isinstance(event, Ping):
            await self._send_wsproto_event(event.response())
        elif isinstance(event, CloseConnection):
            self.ipt_bus_peer_close_code = event.code  # type: ignore[attr-defined]  # our field
            if self.connection.state == ConnectionState.REMOTE_CLOSING:
                await self._send_wsproto_event(event.response())
            elif self.connection.state == ConnectionState.OPEN:
                await self._send_wsproto_event(CloseConnection(code=event.code))
            await self.send(StreamClosed(stream_id=self.stream_id))


def install(*, message_deadline_seconds: float = DEFAULT_MESSAGE_DEADLINE_SECONDS) -> None:
    """Apply the adjustments (idempotent). Raises if hypercorn is a version not checked.

    `message_deadline_seconds` applies process-wide (hypercorn's buffer has no config).
    """
    global _message_deadline_seconds
    installed = version("hypercorn")
    if not installed.startswith(CHECKED_VERSIONS):
        raise RuntimeError(
            f"ipt_bus adjusts hypercorn internals checked against {CHECKED_VERSIONS}; "
            f"found hypercorn {installed}"
        )
    _message_deadline_seconds = message_deadline_seconds
    TCPServer.protocol_send = _protocol_send  # type: ignore[method-assign]
    TCPServer.run = _run  # type: ignore[method-assign]
    Handshake.accept = _accept_without_extensions  # type: ignore[method-assign]
    WebsocketBuffer.extend = _extend  # type: ignore[method-assign]
    WSStream.handle = _handle  # type: ignore[method-assign]
    WSStream.app_send = _app_send  # type: ignore[method-assign]
    WSStream._send_pings = _send_pings  # type: ignore[method-assign]
    WSStream._handle_events = _handle_events  # type: ignore[method-assign]


def is_installed() -> bool:
    return (
        TCPServer.protocol_send is _protocol_send
        and TCPServer.run is _run
        and Handshake.accept is _accept_without_extensions
        and WebsocketBuffer.extend is _extend
        and WSStream._send_pings is _send_pings
        and WSStream.app_send is _app_send
        and WSStream._handle_events is _handle_events
    )


def _not_now(texts: list[bytes]) -> Written:
    return WROTE_NONE


@attrs.define
class AsgiWebSocket:
    """`WebSocketLike` over an ASGI websocket connection; writes go through `DirectSender` where
    the server is hypercorn's HTTP/1.1 (one `websocket.send` per message elsewhere)."""

    _receive: Any
    _send: Any
    _direct: DirectSender | None = attrs.field(init=False)
    # `WebSocketLike.send_now`: the direct sender's own (one call less per delivery), or never
    send_now: Callable[[list[bytes]], Written] = attrs.field(init=False)
    _waiting: Any = attrs.field(init=False)  # hypercorn's queue: `receive_nowait`, or None
    _more: list[str] | None = None  # the rest of a read's texts (`MANY_KEY`), last first

    def __attrs_post_init__(self) -> None:
        self._direct = DirectSender.find(self._send)
        self.send_now = _not_now if self._direct is None else self._direct.send_now
        channel = getattr(self._receive, "__self__", None)
        self._waiting = channel if isinstance(channel, trio.MemoryReceiveChannel) else None
        stream = getattr(self._send, "__self__", None)
        if isinstance(stream, WSStream):
            setattr(stream, MANY_ATTR, True)  # this app takes a read's texts in one message

    async def receive(self) -> str | bytes:
        more = self._more
        if more:
            return more.pop()
        # messages already queued are taken without a yield each (the queue holds at most
        # hypercorn's `max_app_queue_size`, so the reader still yields every few messages)
        message = None
        if self._waiting is not None:
            try:  # noqa: SIM105 (suppress() costs more, on every message)
                message = self._waiting.receive_nowait()
            except trio.WouldBlock:
                pass  # not awaited in here: the exception would live as long as the wait
        if message is None:
            message = await self._receive()
        if message["type"] == "websocket.receive":
            texts = message.get(MANY_KEY)
            if texts is not None:
                self._more = texts[:0:-1]
                return str(texts[0])
            text = message.get("text")
            if text is not None:
                return str(text)
            return bytes(message.get("bytes") or b"")
        raise Disconnected(int(message.get("code", 1005)))

    async def send(self, text: bytes) -> None:
        await self.send_many([text])

    async def send_many(self, texts: list[bytes]) -> None:
        if self._direct is not None:
            await self._direct.send(texts)
        else:
            for text in texts:
                await self._send({"type": "websocket.send", "text": text.decode()})

    async def close(self, code: int) -> None:
        await self._send({"type": "websocket.close", "code": code})

"""`EventBusClient`: the asynchronous client, on anyio, so one implementation runs under
``asyncio.run`` and ``trio.run``.

Theory of operation: one *session* task owns the WebSocket (httpx-ws). It connects with batching
on, reads the `welcome`, (re)sends every publish still waiting for its ack, then reads: events go
to the handlers (and to `events()`), acks and errors resolve the requests waiting for them. When
the connection drops it reconnects with backoff and resumes from the last `seq` it delivered
(`since=` + `epoch=`), so nothing is missed or delivered twice while the bus's log covers it; a
`gap` (events the log no longer holds, or a new epoch) goes to `on_gap` callbacks, or ends the
session with `HistoryLost`. A client that reads slower than events arrive loses nothing: the
bus itself sends what it missed from the log.

The session runs either in the foreground (`listen_async()`, as the specification's example)
or in the background of ``async with client:`` (then `events()`, `publish()`, `subscribe()`).
Every WebSocket publish carries an idempotency key, so resending after a reconnect never stores
an event twice.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs
import httpx
import orjson
from httpx_ws import (
    AsyncWebSocketSession,
    HTTPXWSException,
    WebSocketDisconnect,
    WebSocketUpgradeError,
    aconnect_ws,
)

from ipt_bus.client import _common
from ipt_bus.core import codec
from ipt_bus.core.errors import (
    RETRYABLE,
    BusUnavailable,
    ClientError,
    CloseCode,
    ErrorCode,
    HistoryLost,
    PublishRejected,
)
from ipt_bus.core.frames import (
    Acked,
    Auth,
    Authenticated,
    ClientFrame,
    ErrorFrame,
    Gap,
    Publish,
    ServerFrame,
    Subscribe,
    Subscriptions,
    Unsubscribe,
    Welcome,
)
from ipt_bus.core.model import Event, Published
from ipt_bus.core.protocol import ClientConversation
from ipt_bus.core.topics import matches_any, validate_pattern

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from anyio.abc import TaskGroup, TaskStatus

log = logging.getLogger("ipt_bus.client")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # EventBusClient's default max_message_bytes

Self = TypeVar("Self", bound="EventBusClient")
_DISCONNECTED = (
    WebSocketDisconnect,
    HTTPXWSException,
    httpx.TransportError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


@attrs.define
class _Request:
    """A frame sent on the WebSocket that waits for its answer (resent after a reconnect)."""

    frame: ClientFrame
    text: str  # as sent
    done: anyio.Event = attrs.field(factory=anyio.Event)
    answer: ServerFrame | None = None


class EventBusClient:
    """Subscribe to and publish events.

    Args:
        url: the bus (default ``$IPT_BUS_URL``, else ``http://127.0.0.1:8765``).
        topics: patterns to subscribe to (default: everything); `connect_async` can set them.
        timeout: seconds for each request (a publish waiting for its ack included).
        retries: further attempts of a publish the bus did not take (unreachable, overloaded).
        reconnect: reconnect (and resume) when the connection drops.
        since: resume from this `seq` on the first connection (with `epoch`, if known).
        token: a token, or a callable returning a fresh one (default ``$IPT_BUS_TOKEN``); a
            callable is called on each (re)connect, and before the token expires the session
            sends the bus a fresh one (`auth`), so a long-lived subscription outlives its tokens.
        verify: for ``https://``/``wss://``: True (the system's CAs), a CA bundle's path, an
            `ssl.SSLContext`, or False.
        headers: sent with every request and the WebSocket handshake.
        max_message_bytes: the largest WebSocket message taken from the bus (a batch of
            events, or one large event); a larger one ends the session with `ClientError`,
            as reconnecting would only fetch it again. The default is well above what a bus
            with default limits sends (`max_event_bytes` plus its envelope).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        topics: Sequence[str] | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        reconnect: bool = True,
        since: int | None = None,
        epoch: str | None = None,
        queue_size: int = 10_000,
        token: _common.TokenSource = None,
        verify: _common.Verify = True,
        headers: Mapping[str, str] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.url = _common.bus_url(url)
        self.max_message_bytes = max_message_bytes
        self.headers = dict(headers or {})
        self.token = _common.token_source(token)
        self._verify = verify
        self._token_in_force: str | None = None  # the one the open connection runs on
        self.timeout = timeout
        self.retries = retries
        self.reconnect = reconnect
        self.topics: list[str] = [validate_pattern(t, "topics") for t in topics or ()]
        self._conversation = ClientConversation(epoch, since)
        self._handlers: list[tuple[str, Callable[[Event], Any]]] = []
        self._gap_handlers: list[Callable[[Gap], Any]] = []
        self._http: httpx.AsyncClient | None = None
        self._ws: Any = None
        self._bus_max_message = 0  # the bus's max_message_bytes (welcome), 0 before one
        self._connected = anyio.Event()
        self._requests: dict[int, _Request] = {}
        self._queue_size = queue_size
        self._stream: EventStream | None = None  # the iterator events() handed out last
        self._stack: contextlib.AsyncExitStack | None = None
        self._group: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._running = False  # a session is on: publishes go over the WebSocket

    @property
    def last_seq(self) -> int | None:
        """The `seq` of the last event delivered: a reconnect resumes after it."""
        return self._conversation.last_seq

    @property
    def epoch(self) -> str | None:
        """The epoch of the bus's log, as its `welcome` (or an epoch gap) said."""
        return self._conversation.epoch

    # --- handlers ---------------------------------------------------------------------------

    def add_event_handler(self, pattern: str, handler: Callable[[Event], Any]) -> None:
        """Call `handler(event)` (a function or a coroutine function) for each event whose
        topic matches `pattern` (``task.status``, ``task.*``, ``cost.**``). A handler that
        raises is logged; the others and the listener go on."""
        self._handlers.append((validate_pattern(pattern, "pattern"), handler))

    def on_gap(self, handler: Callable[[Gap], Any]) -> None:
        """Be told of history the bus no longer has (instead of `listen_async` raising
        `HistoryLost`); the listener then goes on with what comes next."""
        self._gap_handlers.append(handler)

    # --- connecting -------------------------------------------------------------------------

    async def connect_async(self, topics: Sequence[str] | None = None) -> None:
        """Set the topics to subscribe to and check that the bus answers.

        The WebSocket itself is opened by `listen_async()` (or ``async with client``), which
        also keeps it open. Raises `BusUnavailable` when the bus cannot be reached,
        `RequestRefused` when it refuses this client (a Host it does not serve).
        """
        if topics is not None:
            self.topics = [validate_pattern(t, "topics") for t in topics]
        http = self._client()
        try:
            response = await http.get("/health")
        except httpx.TransportError as exc:
            raise _common.unreachable(self.url, exc) from None
        if response.status_code != 200:
            refusal = _common.refused(response.status_code, response.content)
            if refusal is not None:
                raise refusal
            raise _common.unreachable(self.url, f"/health answered {response.status_code}")

    async def listen_async(self) -> None:
        """Receive events and call the handlers until `close()`; reconnects and resumes.

        Raises:
            HistoryLost: the bus no longer had events after the last `seq` (and no `on_gap`).
            BusUnavailable: the bus could not be reached and `reconnect` is off.
            RequestRefused: the bus refused the connection (no valid token, a subscription
                the token does not grant).
        """
        await self._session()

    async def __aenter__(self: Self) -> Self:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            self._group = await stack.enter_async_context(anyio.create_task_group())
            await self._group.start(self._session)
        except BaseException:
            await stack.__aexit__(None, None, None)
            self._group = None
            await self.close()  # the HTTP client too: a refused handshake's socket is pooled
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the session (if any) and close the connections."""
        group, stack = self._group, self._stack
        self._group = self._stack = None
        if self._scope is not None:
            self._scope.cancel()
        if group is not None:
            group.cancel_scope.cancel()
        if stack is not None:
            await stack.__aexit__(None, None, None)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.url,
                timeout=self.timeout,
                verify=_common.ssl_context(self._verify),
                headers=self.headers,
                auth=_BearerAuth(self),
                event_hooks={"response": [_read_refusal]},
            )
        return self._http

    # --- the session ------------------------------------------------------------------------

    async def _session(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError("this client is already listening")
        self._running = True
        try:
            with anyio.CancelScope() as self._scope:
                await self._connect_loop(task_status)
        finally:
            self._running = False
            self._scope = None
            self._ws = None
            self._connected = anyio.Event()

    async def _connect_loop(self, task_status: TaskStatus[None]) -> None:
        attempt = 0
        started = False
        while True:
            try:
                ws: AsyncWebSocketSession
                async with aconnect_ws(
                    self._ws_url(),
                    self._client(),
                    keepalive_ping_interval_seconds=None,
                    max_message_size_bytes=self.max_message_bytes,
                ) as ws:
                    await self._welcome(ws)
                    self._ws = ws
                    self._connected.set()
                    attempt = 0
                    if not started:
                        started = True
                        task_status.started()
                    for request in list(self._requests.values()):
                        await ws.send_text(request.text)
                    async with anyio.create_task_group() as group:
                        if callable(self.token):
                            group.start_soon(self._keep_token_fresh)
                        while True:
                            await self._on_message(await ws.receive_text())
            except Exception as group:  # httpx-ws raises through its task group: unwrap
                exc = _single(group)
                if not isinstance(exc, _DISCONNECTED):
                    raise exc from None
                if isinstance(exc, WebSocketDisconnect) and exc.code == CloseCode.MESSAGE_TOO_BIG:
                    raise self._too_big(exc) from None
                wait = 0.0
                if isinstance(exc, WebSocketUpgradeError):
                    response = exc.response
                    refusal = _common.refused(response.status_code, response.content)
                    if refusal is not None:  # a token, a permission: reconnecting cannot help
                        raise refusal from None
                    wait = _common.retry_after(response.headers.get("Retry-After"), now=time.time())
                self._ws = None
                self._connected = anyio.Event()
                if not self.reconnect or (not started and attempt >= self.retries):
                    # never connected yet: say so instead of retrying forever in silence
                    raise _common.unreachable(self.url, exc) from None
                delay = _common.backoff(attempt, cap=5.0, at_least=wait)
                log.info("connection to %s lost (%s); reconnecting in %.1f s", self.url, exc, delay)
                attempt += 1
                await anyio.sleep(delay)

    async def _keep_token_fresh(self) -> None:
        """Before the connection's token expires, send the bus a fresh one (`auth`)."""
        while True:
            token = self._token_in_force
            expiry = _common.expires_at(token) if token else None
            if expiry is None:
                return
            left = expiry - time.time()
            await anyio.sleep(max(0.0, left - min(30.0, left / 5)))  # well before it lapses
            fresh = _common.current_token(self.token)
            if not fresh or fresh == token:
                return
            try:
                answer = await self._request(Auth(fresh))
            except PublishRejected as exc:  # the old token stays until the bus closes (4001)
                log.warning("the bus refused the fresh token: %s", exc.message)
                return
            if not isinstance(answer, Authenticated):  # pragma: no cover - the protocol's answer
                return
            self._token_in_force = fresh

    def _too_big(self, close: WebSocketDisconnect) -> ClientError:
        """A message over a size limit, ours or the bus's: the next connection would meet it
        again (a resume fetches the same events, a publish is resent), so stop and say which."""
        if close.reason == "Message too big":  # httpx-ws's own close; the bus sends no reason
            return ClientError(
                f"the bus sent a WebSocket message larger than max_message_bytes="
                f"{self.max_message_bytes}: raise EventBusClient(max_message_bytes=...)"
            )
        return ClientError(f"the bus closed the connection: message too big ({close.reason})")

    def _ws_url(self) -> str:
        query = {"batch": "1"}
        if self.topics:
            query["topics"] = ",".join(self.topics)
        return _common.ws_url(self.url, query | self._conversation.resume_query())

    async def _welcome(self, ws: Any) -> None:
        with anyio.fail_after(self.timeout):
            first = orjson.loads(await ws.receive_text())
        welcome = codec.decode_server_frame(first) if "action" in first else None
        if not isinstance(welcome, Welcome):
            raise HTTPXWSException(f"expected a welcome frame, got {first!r:.200}")
        limit, before = welcome.limits.get("max_message_bytes", 0), self._bus_max_message
        self._bus_max_message = limit
        if limit > self.max_message_bytes and limit != before:  # once, not per reconnect
            log.warning(
                "the bus takes messages of up to %d bytes but this client only %d "
                "(max_message_bytes): a larger event from the bus will end the session",
                limit,
                self.max_message_bytes,
            )
        self._conversation.welcomed(welcome)  # a first one goes live from here

    async def _on_message(self, message: str) -> None:
        for item in self._conversation.receive(_common.frames(message)):
            if isinstance(item, Event):
                await self._deliver(item)
            elif isinstance(item, Gap):
                await self._on_gap(item)
            elif not isinstance(item, Welcome):
                request = self._requests.get(item.id)  # type: ignore[arg-type]  # ids are ours
                if request is not None:
                    request.answer = item
                    request.done.set()

    async def _deliver(self, event: Event) -> None:
        seq, topic = event.seq, event.topic
        for pattern, handler in self._handlers:
            if matches_any((pattern,), topic):
                try:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("event handler %r failed on %s (seq %s)", handler, topic, seq)
        stream = self._stream
        if stream is not None:
            await stream.put(event)

    async def _on_gap(self, gap: Gap) -> None:
        """History the bus no longer has (the conversation already moved past it)."""
        if not self._gap_handlers:
            raise HistoryLost(gap)
        for handler in self._gap_handlers:
            result = handler(gap)
            if inspect.isawaitable(result):
                await result

    # --- receiving with `async for` ---------------------------------------------------------

    def events(self) -> EventStream:
        """The events the session receives from this call on, in order, inside
        ``async with client:``: ``async for event in client.events(): ...``.

        Bounded: a consumer that falls behind slows the session down; the bus keeps what it
        misses meanwhile in its log and sends it when the session reads again.
        """
        if self._group is None:
            raise RuntimeError("use `async with EventBusClient(...) as client:` around events()")
        stream = EventStream(self, self._queue_size)
        self._stream = stream
        return stream

    # --- requests on the WebSocket ----------------------------------------------------------

    async def subscribe(self, topics: Sequence[str]) -> list[str]:
        """Add patterns; returns every pattern the connection now holds."""
        patterns = [validate_pattern(t, "topics") for t in topics]
        answer = await self._request(Subscribe(patterns))
        assert isinstance(answer, Subscriptions), answer
        self.topics = answer.topics
        return self.topics

    async def unsubscribe(self, topics: Sequence[str]) -> list[str]:
        patterns = [validate_pattern(t, "topics") for t in topics]
        answer = await self._request(Unsubscribe(patterns))
        assert isinstance(answer, Subscriptions), answer
        self.topics = answer.topics
        return self.topics

    async def publish(self, event: Event, *, idempotency_key: str | None = None) -> Published:
        """Publish over the WebSocket and wait for its ack (inside ``async with client`` or
        while `listen_async` runs); otherwise over REST. Retried with the same idempotency key
        while the bus cannot take it. Raises `PublishRejected`, `BusUnavailable`."""
        if not self._running:
            return (await self._post(event, idempotency_key))[0]
        frame = Publish(
            event=_common.event_body(event),
            idempotency_key=idempotency_key or _common.new_key(),
        )
        answer = await self._request(frame)
        assert isinstance(answer, Acked), answer
        return answer.published[0]

    def _check_size(self, text: str) -> None:
        """Refuse here what the bus would refuse by closing the connection (1009), which the
        session could only meet again on every reconnect (the request is resent)."""
        limit = self._bus_max_message
        if limit and len(text) * 4 > limit and (size := len(text.encode())) > limit:
            raise PublishRejected(
                ErrorCode.TOO_LARGE,
                f"the message is {size} bytes, more than the bus's max_message_bytes ({limit})",
            )

    async def _request(self, frame: ClientFrame) -> ServerFrame:
        if not self._running:
            raise RuntimeError("not connected: use `async with client:` or run listen_async()")
        frame, text = self._conversation.request(frame)
        self._check_size(text)
        rid = frame.id
        assert isinstance(rid, int)
        request = _Request(frame, text)
        self._requests[rid] = request
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    await anyio.sleep(_common.backoff(attempt - 1))
                    request.done = anyio.Event()
                with anyio.move_on_after(self.timeout):
                    await self._send(request)
                    await request.done.wait()
                answer = request.answer
                if answer is None:
                    continue  # no answer in time: try again (the key makes it safe)
                if not isinstance(answer, ErrorFrame):
                    return answer
                if answer.code not in RETRYABLE:
                    raise PublishRejected(answer.code, answer.message, answer.field)
                request.answer = None
            raise BusUnavailable(
                f"the bus at {self.url} did not answer {codec.action_of(frame)!r} after "
                f"{self.retries + 1} attempts"
            )
        finally:
            del self._requests[rid]

    async def _send(self, request: _Request) -> None:
        await self._connected.wait()
        with contextlib.suppress(*_DISCONNECTED):  # the session resends it on reconnect
            await self._ws.send_text(request.text)

    # --- REST -------------------------------------------------------------------------------

    async def publish_event_rest_async(self, event: Event) -> Published:
        """Publish one event over REST (retried with one idempotency key)."""
        return (await self._post(event, None))[0]

    async def publish_many_rest_async(self, events: Sequence[Event]) -> list[Published]:
        """Publish events in one REST request (all or nothing, at most 1,000), in order."""
        return await self._post(list(events), None)

    async def _post(self, events: Event | list[Event], key: str | None) -> list[Published]:
        body, headers = _common.publish_request(events)
        if key is not None:
            headers["Idempotency-Key"] = key
        http = self._client()
        last: object = None
        wait = 0.0  # the bus's Retry-After
        for attempt in range(self.retries + 1):
            if attempt:
                await anyio.sleep(_common.backoff(attempt - 1, at_least=wait))
            try:
                response = await http.post("/events", content=body, headers=headers)
            except httpx.TransportError as exc:
                last, wait = exc, 0.0
                continue
            result = _common.published(response.status_code, response.content)
            if result is not None:
                return result
            last = f"HTTP {response.status_code}"
            wait = _common.retry_after(response.headers.get("Retry-After"), now=time.time())
        raise _common.unavailable(self.url, self.retries + 1, last)


class _BearerAuth(httpx.Auth):
    """The client's token on every request (the WebSocket handshake included)."""

    def __init__(self, client: EventBusClient) -> None:
        self._client = client

    def auth_flow(self, request: httpx.Request) -> Any:
        token = _common.current_token(self._client.token)
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
            if request.url.path.endswith("/ws"):
                self._client._token_in_force = token
        yield request


async def _read_refusal(response: httpx.Response) -> None:
    """Read a refused handshake's body while it is open (httpx-ws closes it unread): it says
    why (`RequestRefused`)."""
    if response.status_code >= 400:
        await response.aread()


def _single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, else `exc`; our own
    error first when httpx-ws adds its own (a pong it could not send while closing)."""
    if isinstance(exc, BaseExceptionGroup):
        ours = exc.subgroup(ClientError)
        if ours is not None:
            exc = ours
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class EventStream:
    """What `EventBusClient.events()` returns: an async iterator over received events."""

    def __init__(self, client: EventBusClient, size: int) -> None:
        self._client = client
        self._send, self._receive = anyio.create_memory_object_stream[Event](size)

    async def put(self, event: Event) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._send.send(event)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop receiving (the client stops queueing events for this iterator)."""
        if self._client._stream is self:
            self._client._stream = None
        self._send.close()
        self._receive.close()

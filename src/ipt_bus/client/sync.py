"""`subscribe()`: receive events in a plain ``for`` loop, for scripts that do not use async.

An `EventBusClient` runs in a background thread (anyio's blocking portal, on asyncio); each step
of the loop asks that thread for the next event, so the subscription has the async client's
semantics, unchanged: it reconnects and resumes from the last `seq` with nothing missed or
repeated, gaps go to `on_gap` or end the loop with `HistoryLost`, and a loop that reads slower
than events arrive slows the session down while the bus keeps the rest in its log.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread

from ipt_bus.client.aio import MAX_MESSAGE_BYTES, EventBusClient
from ipt_bus.core.model import Event

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from concurrent.futures import Future
    from types import TracebackType

    from ipt_bus.client import _common
    from ipt_bus.core.frames import Gap


def subscribe(
    *patterns: str,
    url: str | None = None,
    since: int | None = None,
    epoch: str | None = None,
    on_gap: Callable[[Gap], Any] | None = None,
    token: _common.TokenSource = None,
    verify: _common.Verify = True,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> Subscription:
    """Events whose topics match `patterns` (none: every topic), as they are published:

        for event in subscribe("task.*", since=0):
            print(event.seq, event.topic, event.payload)

    The arguments are `EventBusClient`'s. Use it as a context manager (or call `close()`) to
    stop before the loop ends; breaking out of a ``with`` block closes the connection at once.

    Raises (from the loop):
        HistoryLost: the bus no longer had events after the last `seq` (and no `on_gap`).
        BusUnavailable: the bus could not be reached.
        RequestRefused: the bus refused the subscription (token, permissions).
    """
    client = EventBusClient(
        url,
        topics=list(patterns) or None,
        since=since,
        epoch=epoch,
        token=token,
        verify=verify,
        headers=headers,
        timeout=timeout,
        retries=retries,
        max_message_bytes=max_message_bytes,
    )
    if on_gap is not None:
        client.on_gap(on_gap)
    return Subscription(client)


class Subscription:
    """An iterator over a subscription's events; `close()` ends it."""

    def __init__(self, client: EventBusClient) -> None:
        self.client = client
        self._send, self._receive = anyio.create_memory_object_stream[Event](0)
        self._portal_context = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_context.__enter__()
        self._session: Future[None] = self._portal.start_task_soon(self._run)
        self._closed = False

    @property
    def last_seq(self) -> int | None:
        """The `seq` of the last event received: a later `subscribe(since=...)` resumes here."""
        return self.client.last_seq

    @property
    def epoch(self) -> str | None:
        return self.client.epoch

    async def _run(self) -> None:
        async with self._send:
            self.client.add_event_handler("**", self._send.send)  # waits for the loop: bounded
            try:
                await self.client.listen_async()
            finally:
                with anyio.CancelScope(shield=True):
                    await self.client.close()

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Event:
        if self._closed:
            raise StopIteration
        try:
            return self._portal.call(self._receive.receive)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        self.close()  # the session ended: say why, if it failed
        self._session.result()
        raise StopIteration

    def close(self) -> None:
        """Stop the session and its thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._session.cancel()
        with contextlib.suppress(BaseException):
            self._portal.call(self._receive.aclose)
        self._portal_context.__exit__(None, None, None)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:  # a loop left by `break` without `with`: do not leak the thread
        with contextlib.suppress(Exception):
            self.close()

"""The one way in for publishes (DESIGN §5).

Every source hands its publishes here: `POST /events` and dead-letter retries, WebSocket
`publish` frames (legacy frames become those), `POST /broadcast`, the file watcher and the bus's
own log records. For each, the ingress

1. decodes the events with the source's own decoder, so an error names the source's field
   (``[3].topic`` in a REST array, ``events[3].topic`` in a WebSocket batch);
2. checks the standard payloads as the validation mode says (strict refuses; warn counts, logs
   and accepts);
3. keeps what it refuses, and what the log fails to store, as a dead letter (for a retried dead
   letter: one more failed attempt on that letter);
4. hands the rest to the router.

An `Origin` travels with every publish: the transport, the peer's address (and, once tokens
exist, their identity). Permissions and rate limits will plug in between steps 2 and 4.

It lives with the actors, not at the HTTP edge, because the WebSocket connection actor and the
integrations publish through it too, and it needs no framework.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Literal

import attrs

from ipt_bus.bus.stats import Counted
from ipt_bus.core import schemas
from ipt_bus.core.errors import BusError, ErrorCode, ProtocolError, StorageError

if TYPE_CHECKING:
    import trio

    from ipt_bus.bus.node import BusHandle
    from ipt_bus.bus.router import Answer
    from ipt_bus.core.model import Event, Published

log = logging.getLogger("ipt_bus.ingress")

Transport = Literal["rest", "ws", "file", "bus", "dlq"]
Decode = Callable[[], Sequence["Event"]]
Raw = Callable[[], str]
FILE_TEXT_PREFIX_CHARS: Final = 80  # of a file's line that is not JSON, what a dead letter keeps


@attrs.frozen
class Origin:
    """Where a publish came from."""

    transport: Transport
    remote: str | None = None  # the peer's address, when there is a peer
    source: str | None = None  # finer than the transport, for dead letters: "file:a.jsonl:5"
    retrying: int | None = None  # the dead letter this publish retries

    @property
    def label(self) -> str:
        return self.source or self.transport


@attrs.frozen
class Offer:
    """One publish as a source hands it in: where it came from, how to decode its events (so an
    error names the source's own field: ``[3].topic``, ``events[3].topic``), and what to keep
    as a dead letter if it is refused. `field` is where the events were (``event``, ``events``,
    or empty for a REST body) and `batch` whether they came as a list; `key` is its idempotency
    key."""

    origin: Origin
    decode: Decode
    raw: Raw
    field: str = ""
    batch: bool = False
    key: str | None = None


def admit(bus: BusHandle, offer: Offer) -> Sequence[Event]:
    """Decode and check one publish.

    Raises:
        ProtocolError: the publish is refused; it was kept as a dead letter.
    """
    try:
        events = offer.decode()
        mode = bus.config.validation
        problem = schemas.apply_policy(mode, events, offer.field, batch=offer.batch)
    except ProtocolError as exc:
        failed(bus, offer.origin, offer.raw, exc)
        raise
    if problem is not None:
        bus.stats.record(Counted("validation_warnings"))
        log.warning("accepted an event that fails its schema: %s", problem.message)
    return events


async def publish(bus: BusHandle, offer: Offer) -> list[Published]:
    """Admit a publish and wait until the log has it; returns where each event went.

    Raises:
        ProtocolError: refused (kept as a dead letter).
        StorageError: the log failed (kept as a dead letter); nothing was stored.
        Overloaded, BusClosed: as `RouterHandle.publish`.
    """
    events = admit(bus, offer)
    try:
        published = await bus.router.publish(
            events, timeout=bus.config.publish_timeout_seconds, key=offer.key
        )
    except StorageError as exc:
        failed(bus, offer.origin, offer.raw, exc)
        raise
    if offer.origin.retrying is not None:
        bus.dead_letters.remove(offer.origin.retrying, why="retried")
    return published


async def submit(
    bus: BusHandle, offer: Offer, *, reply: trio.MemorySendChannel[Answer], token: int
) -> None:
    """Admit a publish and hand it to the router without waiting for the log (a WebSocket
    connection pipelines its publishes); the answer arrives on `reply` tagged `token`. Whoever
    reads a `StorageError` there passes it to `failed` (with the offer's origin and raw).

    Raises:
        ProtocolError: refused (kept as a dead letter).
        Overloaded, BusClosed: as `RouterHandle.submit`.
    """
    events = admit(bus, offer)
    await bus.router.submit(
        events,
        reply=reply,
        token=token,
        timeout=bus.config.publish_timeout_seconds,
        key=offer.key,
    )


def failed(bus: BusHandle, origin: Origin, raw: Raw, exc: BusError) -> None:
    """Keep a refused or unstored publish (`raw()` is its text): a new dead letter, or one more
    failed attempt of the dead letter it retried. A file's line that is not JSON at all is kept
    only as a prefix: enough to find it, not a copy of whatever the file holds."""
    if origin.retrying is not None:
        bus.dead_letters.failed_again(origin.retrying, exc)
        return
    text = raw()
    not_json = isinstance(exc, ProtocolError) and exc.code == ErrorCode.INVALID_JSON
    if origin.transport == "file" and not_json and len(text) > FILE_TEXT_PREFIX_CHARS:
        size = len(text.encode("utf-8", "surrogatepass"))
        text = f"{text[:FILE_TEXT_PREFIX_CHARS]}… ({size} bytes in all)"
    bus.dead_letters.add(origin.label, exc, text)

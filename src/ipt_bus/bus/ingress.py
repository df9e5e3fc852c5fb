"""The one way in for publishes (DESIGN §5).

Every source hands its publishes here: `POST /events` and dead-letter retries, WebSocket
`publish` frames (legacy frames become those), `POST /broadcast`, the file watcher and the bus's
own log records. For each, the ingress

1. decodes the events with the source's own decoder, so an error names the source's field
   (``[3].topic`` in a REST array, ``events[3].topic`` in a WebSocket batch);
2. checks the publisher's token grants every topic (403 `forbidden`: nothing stored, all or
   nothing for a batch, not a dead letter: an authorization failure is not a repair job; a
   token that may publish nothing is refused before its body is even decoded);
3. checks the standard payloads as the validation mode says (strict refuses; warn counts, logs
   and accepts);
4. keeps what it refuses (1, 3), and what the log fails to store, as a dead letter (for a
   retried dead letter: one more failed attempt on that letter);
5. takes the events from the publisher's rate (REST is refused past it, 429; a WebSocket is read
   slower);
6. hands the rest to the router.

An `Origin` travels with every publish: the transport, the peer's address, the token's
identity. Internal publishers (the file watcher, the bus's own logs) carry none and are trusted.

It lives with the actors, not at the HTTP edge, because the WebSocket connection actor and the
integrations publish through it too, and it needs no framework.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

import attrs
import trio

from ipt_bus.bus.stats import Counted
from ipt_bus.core import schemas
from ipt_bus.core.auth import Forbidden, Identity
from ipt_bus.core.errors import BusError, ErrorCode, ProtocolError, RateLimited, StorageError

if TYPE_CHECKING:
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
    remote: str | None = None  # the peer's address (host:port), when there is a peer
    identity: Identity | None = None  # the token's, when tokens are required
    source: str | None = None  # finer than the transport, for dead letters: "file:a.jsonl:5"
    retrying: int | None = None  # the dead letter this publish retries

    @property
    def label(self) -> str:
        return self.source or self.transport

    @property
    def limited_as(self) -> str | None:
        """Who the rate limit counts this publish for: the token's `sub`, else the peer's host
        (an internal publisher: nobody)."""
        if self.identity is not None:
            return self.identity.sub
        if self.remote is not None:
            return self.remote.rsplit(":", 1)[0]
        return None


class Offer(NamedTuple):
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
        Forbidden: the token does not grant a topic (nothing kept: not a repair job, and a
            client that may not publish cannot fill the dead letters).
        ProtocolError: the publish is refused; it was kept as a dead letter.
    """
    identity = offer.origin.identity
    if identity is not None and not identity.grant.publish:
        bus.stats.record(Counted("forbidden"))
        raise Forbidden(f"the token of {identity.sub!r} may not publish", None)
    try:
        events = offer.decode()
    except ProtocolError as exc:
        failed(bus, offer.origin, offer.raw, exc)
        raise
    if identity is not None:
        for i, event in enumerate(events):
            if not identity.grant.may_publish(event.topic):
                bus.stats.record(Counted("forbidden"))
                where = f"{offer.field}[{i}].topic" if offer.batch else f"{offer.field}.topic"
                raise Forbidden(
                    f"the token of {identity.sub!r} may not publish to {event.topic!r}",
                    where.lstrip("."),
                )
    try:
        problem = schemas.apply_policy(
            bus.config.validation, events, offer.field, batch=offer.batch
        )
    except ProtocolError as exc:
        failed(bus, offer.origin, offer.raw, exc)
        raise
    if problem is not None:
        bus.stats.record(Counted("validation_warnings"))
        log.warning("accepted an event that fails its schema: %s", problem.message)
    return events


def _rate(bus: BusHandle, offer: Offer, events: int, max_wait: float) -> float:
    """Take `events` from the publisher's rate: the seconds to wait first (0 mostly).

    Raises:
        RateLimited: they would have to wait more than `max_wait` seconds.
    """
    identity = offer.origin.identity
    rate = identity.grant.rate_limit if identity is not None else None
    who = offer.origin.limited_as
    if who is None or (rate is None and bus.limiter.rate is None):
        return 0.0  # an internal publisher, or no limit at all: nothing to count
    decision = bus.limiter.take(who, events, rate, trio.current_time(), max_wait=max_wait)
    if not decision.taken:
        bus.stats.record(Counted("rate_limited"))
        raise RateLimited(
            f"{who!r} is over its rate limit; retry in {decision.wait:.2f} s", decision.wait
        )
    return decision.wait


async def publish(bus: BusHandle, offer: Offer) -> list[Published]:
    """Admit a publish and wait until the log has it; returns where each event went.

    Raises:
        ProtocolError: refused (kept as a dead letter).
        StorageError: the log failed (kept as a dead letter); nothing was stored.
        Overloaded, BusClosed: as `RouterHandle.publish`.
    """
    events = admit(bus, offer)
    _rate(bus, offer, len(events), max_wait=0.0)  # REST: refused past the rate, not held
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
    bus: BusHandle,
    offer: Offer,
    *,
    reply: trio.MemorySendChannel[Answer],
    token: int,
    acked: bool = True,
) -> None:
    """Admit a publish and hand it to the router without waiting for the log (a WebSocket
    connection pipelines its publishes); the answer arrives on `reply` tagged `token`. Whoever
    reads a `StorageError` there passes it to `failed` (with the offer's origin and raw).

    Raises:
        ProtocolError: refused (kept as a dead letter).
        Overloaded, BusClosed: as `RouterHandle.submit`.
    """
    events = admit(bus, offer)
    # a WebSocket is read slower instead (TCP backpressure); a publish that wants its ack is
    # refused rather than held past the publish timeout (one sent without an ack just waits)
    max_wait = bus.config.publish_timeout_seconds if acked else math.inf
    wait = _rate(bus, offer, len(events), max_wait=max_wait)
    if wait:
        await trio.sleep(wait)
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

"""Control frames of the WebSocket protocol (DESIGN §3).

A frame with an ``action`` key is control; one without is an event. Client actions are decoded
by `ipt_bus.core.codec.decode_client_frame`; server frames are built here and encoded there.
"""

from __future__ import annotations

from typing import Any

import attrs

RequestId = str | int | None


@attrs.frozen
class Subscribe:
    topics: list[str]
    id: RequestId = None
    batch: bool | None = None


@attrs.frozen
class Unsubscribe:
    topics: list[str]
    id: RequestId = None


@attrs.frozen
class Publish:
    """One event (`event`) or a batch (`events`); exactly one of them is set."""

    event: dict[str, Any] | None = None
    events: list[Any] | None = None
    id: RequestId = None
    ack: bool = True
    idempotency_key: str | None = None  # a repeat within the dedupe window gets the first ack


@attrs.frozen
class Ping:
    id: RequestId = None


ClientFrame = Subscribe | Unsubscribe | Publish | Ping

CLIENT_ACTIONS: dict[str, type[Subscribe] | type[Unsubscribe] | type[Publish] | type[Ping]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "publish": Publish,
    "ping": Ping,
}

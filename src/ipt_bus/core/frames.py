"""Control frames of the WebSocket protocol (DESIGN §3).

A frame with an ``action`` key is control; one without is an event. Both directions are typed
here and go through one codec (`ipt_bus.core.codec`): the server decodes client frames and
encodes server frames; the Python client does the opposite with the same definitions.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from ipt_bus.core.model import Published

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


@attrs.frozen(repr=False)
class Auth:
    """A fresh token for an open connection (same `sub`), before the old one expires."""

    token: str
    id: RequestId = None

    def __repr__(self) -> str:  # a token never appears in logs or tracebacks
        return f"Auth(token=<{len(self.token)} chars>, id={self.id!r})"


ClientFrame = Subscribe | Unsubscribe | Publish | Ping | Auth

CLIENT_ACTIONS: dict[
    str, type[Subscribe] | type[Unsubscribe] | type[Publish] | type[Ping] | type[Auth]
] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "publish": Publish,
    "ping": Ping,
    "auth": Auth,
}


# --- what the server sends ------------------------------------------------------------------


class GapReason(enum.StrEnum):
    RETENTION = "retention"  # retention removed them before the reader read them
    EPOCH = "epoch"  # the log started over: the reader's seq counts in a history that is gone


@attrs.frozen
class Welcome:
    """The first frame of every connection: where the log stands, and the limits."""

    version: str
    node: str
    epoch: str
    seq: int
    limits: dict[str, int]


@attrs.frozen
class Acked:
    """The answer to a `publish`: where its event (`batch` False) or events went."""

    id: RequestId
    published: list[Published]
    batch: bool


@attrs.frozen
class Subscriptions:
    """The answer to `subscribe` (`subscribed` True) or `unsubscribe`: the patterns held now."""

    id: RequestId
    topics: list[str]
    subscribed: bool = True


@attrs.frozen
class Pong:
    id: RequestId


@attrs.frozen
class Authenticated:
    """The answer to `auth`: the new token is in force until `expires_at` (Unix seconds)."""

    id: RequestId
    expires_at: float


@attrs.frozen
class ErrorFrame:
    """The answer to an action the server refused; `field` names what was wrong."""

    id: RequestId
    code: str
    message: str
    field: str | None = None


@attrs.frozen
class Gap:
    """Events a reader would have had that the log cannot give (DESIGN §3): `retention` removed
    `from_seq`..`to_seq`, or the log is another `epoch` (then `to_seq` is None)."""

    reason: GapReason
    from_seq: int
    to_seq: int | None
    epoch: str | None = None  # the log's epoch, for reason "epoch"


ServerFrame = Welcome | Acked | Subscriptions | Pong | Authenticated | ErrorFrame | Gap

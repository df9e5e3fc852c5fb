"""`BusConfig`: every limit and timeout, with its unit in its name (docs/configuration.md)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final, Literal

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

MiB: Final = 1024 * 1024
DEFAULT_PORT: Final = 8765

Storage = Literal["memory"]


@attrs.frozen
class BusConfig:
    """Settings of one bus node. Frozen: build a new one with `attrs.evolve`."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    storage: Storage = "memory"
    buffer_size: int = 10_000  # events the in-memory log keeps
    node_name: str = "ipt-bus"

    max_event_bytes: int = 1 * MiB
    max_message_bytes: int = 1 * MiB + 256 * 1024  # one WS message: event plus envelope slack
    max_batch_events: int = 1_000  # events in one publish batch (WS or REST array)
    max_body_bytes: int = 16 * MiB  # REST request body (arrays)
    max_subscriptions: int = 128  # patterns per connection

    outbox_events: int = 1_000  # per-connection queue of undelivered events
    outbox_bytes: int = 4 * MiB
    reply_queue_frames: int = 64  # acks/errors waiting for a connection's writer
    slow_consumer_seconds: float = 10.0  # outbox full this long -> close 4008
    write_deadline_seconds: float = 10.0  # one socket write stuck this long -> abort
    message_deadline_seconds: float = 30.0  # a WS message must be complete this long after it began
    ping_interval_seconds: float | None = 25.0  # WebSocket protocol pings (keep bytes in flight)
    tcp_user_timeout_seconds: float = 45.0  # kernel aborts a peer that stops acknowledging
    max_connections: int = 10_000  # WebSocket connections; more are refused with 503
    allowed_origins: tuple[str, ...] | None = None  # None: any Origin (or none) is accepted
    body_timeout_seconds: float = 10.0  # a REST request body must arrive within this
    batch_frame_bytes: int = 256 * 1024  # target size of a coalesced (batch=1) message
    batch_linger_seconds: float = 0.05  # batch=1: least time between messages under load
    batch_messages_per_second: int = 2_000  # batch=1: all batch connections together

    router_inbox: int = 1_024  # commands waiting for the router (publishers wait beyond)
    publish_timeout_seconds: float = 5.0  # REST 503 / WS `overloaded` past this
    publishes_in_flight: int = 64  # per WS connection: publishes sent on before their ack
    max_frames_per_second: float = 2_000.0  # per WS connection; faster clients are read slower
    default_query_limit: int = 100
    max_query_limit: int = 1_000
    shutdown_grace_seconds: float = 5.0
    gc_threshold: tuple[int, int, int] | None = (50_000, 50, 100)

    def __attrs_post_init__(self) -> None:
        for name in (
            "buffer_size",
            "max_event_bytes",
            "max_message_bytes",
            "max_batch_events",
            "max_body_bytes",
            "max_subscriptions",
            "outbox_events",
            "outbox_bytes",
            "reply_queue_frames",
            "router_inbox",
            "max_query_limit",
            "default_query_limit",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 <= self.port < 65536:
            raise ValueError("port must be between 0 and 65535")
        if self.storage != "memory":
            raise ValueError(f"unknown storage {self.storage!r}; this build has: memory")

    def limits(self) -> dict[str, int]:
        """The limits a client is told in the `welcome` frame."""
        return {
            "max_event_bytes": self.max_event_bytes,
            "max_message_bytes": self.max_message_bytes,
            "max_batch_events": self.max_batch_events,
            "max_subscriptions": self.max_subscriptions,
            "outbox_events": self.outbox_events,
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> BusConfig:
        """Read ``IPT_BUS_HOST``, ``IPT_BUS_PORT``, ``IPT_BUS_BUFFER_SIZE``; `overrides` win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if "IPT_BUS_HOST" in env:
            values["host"] = env["IPT_BUS_HOST"]
        if "IPT_BUS_PORT" in env:
            values["port"] = int(env["IPT_BUS_PORT"])
        if "IPT_BUS_BUFFER_SIZE" in env:
            values["buffer_size"] = int(env["IPT_BUS_BUFFER_SIZE"])
        if "IPT_BUS_MAX_CONNECTIONS" in env:
            values["max_connections"] = int(env["IPT_BUS_MAX_CONNECTIONS"])
        if "IPT_BUS_ALLOWED_ORIGINS" in env:
            values["allowed_origins"] = parse_origins(env["IPT_BUS_ALLOWED_ORIGINS"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]  # keys are checked by attrs at runtime


def parse_origins(raw: str) -> tuple[str, ...]:
    """``https://a.example, https://b.example`` -> the origins, without trailing slashes."""
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())

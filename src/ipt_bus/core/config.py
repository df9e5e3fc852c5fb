"""`BusConfig`: every limit and timeout, with its unit in its name (docs/configuration.md)."""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Final, Literal

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

MiB: Final = 1024 * 1024
DEFAULT_PORT: Final = 8765

Storage = Literal["sqlite", "memory", "redis"]
Durability = Literal["safe", "fast"]
DAY: Final = 24 * 3600.0


@attrs.frozen
class BusConfig:
    """Settings of one bus node. Frozen: build a new one with `attrs.evolve`."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    storage: Storage = "sqlite"
    data_dir: str = ".ipt-bus"  # sqlite: the log is `<data_dir>/events.sqlite3`
    durability: Durability = "safe"  # sqlite: safe = synchronous FULL, fast = NORMAL
    redis_url: str | None = None  # redis: redis://, rediss:// or unix:// (docs/scaling.md)
    redis_prefix: str = "ipt_bus"  # redis: nodes on the same Redis and prefix are one bus
    reuse_port: bool = False  # SO_REUSEPORT: several nodes share the port (`--workers`)
    discard_damaged_log: bool = False  # sqlite: a log not readable whole starts over, moved aside
    retention_events: int | None = None  # sqlite: keep at most this many events
    retention_age_seconds: float | None = 7 * DAY  # sqlite: drop events stored longer ago
    retention_bytes: int | None = None  # sqlite: keep at most this many encoded event bytes
    retention_interval_seconds: float = 1.0  # how often retention runs
    dedupe_window_seconds: float = 120.0  # idempotency keys are remembered this long
    dedupe_max_keys: int = 100_000  # ... at most this many (the oldest are forgotten early)
    dedupe_max_bytes: int = 32 * MiB  # ... taking at most this much memory (264 B + the key each)
    dlq_max_entries: int = 10_000
    dlq_max_bytes: int = 64 * MiB
    dlq_max_age_seconds: float = 7 * DAY
    buffer_size: int = 10_000  # memory: events the in-memory log keeps
    validation: str = "strict"  # payloads of standard topics: strict | warn | off
    log_to_bus: bool = False  # publish the bus's own warnings and errors to logs.*
    watch_dir: str | None = None  # JSON / JSON-Lines files here become file.* events
    node_name: str = "ipt-bus"
    max_tracked_topics: int = 10_000  # per-topic counts kept; the least recently seen evicted
    route_cache_topics: int = 10_000  # topics whose subscriber lists the router keeps at hand
    metrics_topics: int = 100  # `topic` labels on /metrics: the busiest; the rest "_other"
    metrics_public: bool = False  # /metrics without a token when tokens are required

    max_event_bytes: int = 1 * MiB
    max_message_bytes: int = 1 * MiB + 256 * 1024  # one WS message: event plus envelope slack
    max_batch_events: int = 1_000  # events in one publish batch (WS or REST array)
    max_body_bytes: int = 16 * MiB  # REST request body (arrays)
    max_subscriptions: int = 128  # patterns per connection
    max_subscription_bytes: int = 8 * 1024  # their text together, per connection

    outbox_events: int = 1_000  # per-connection queue of undelivered events
    outbox_bytes: int = 4 * MiB
    reply_queue_frames: int = 64  # acks/errors waiting for a connection's writer
    slow_consumer_seconds: float = 10.0  # outbox full this long -> close 4008
    write_deadline_seconds: float = 10.0  # one socket write stuck this long -> abort
    message_deadline_seconds: float = 30.0  # a WS message must be complete this long after it began
    ping_interval_seconds: float | None = 25.0  # WebSocket protocol pings (keep bytes in flight)
    tcp_user_timeout_seconds: float = 45.0  # kernel aborts a peer that stops acknowledging
    # WebSocket connections; more are refused with 503. None: follow the file-descriptor limit
    # (the soft RLIMIT_NOFILE less FD_RESERVE), resolved when the bus starts
    max_connections: int | None = None
    allowed_origins: tuple[str, ...] | None = None  # None: any Origin (or none) is accepted;
    # the Origins also get CORS headers on REST
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides loopback and the bound one
    # ("*": any Host, no DNS-rebinding check)

    # security (docs/security.md); no key: the bus is open
    auth_secret_file: str | None = None  # HS256 secret (the file's content, stripped)
    auth_public_key: str | None = None  # PEM public key or JWKS file: RS256, ES256, EdDSA
    auth_audience: str | None = None  # tokens must carry this `aud`
    auth_issuer: str | None = None  # tokens must carry this `iss`
    allow_anonymous: bool = False  # serve a non-loopback address with no key (protected mode)
    rate_limit_per_second: float | None = None  # events per identity; None: no limit
    rate_burst: float | None = None  # events an identity may send at once (default: one second)
    max_connections_per_identity: int | None = None  # WebSockets per identity; more: 429
    certfile: str | None = None  # TLS: serve https:// and wss://
    keyfile: str | None = None
    body_timeout_seconds: float = 10.0  # a REST request body must arrive within this
    batch_frame_bytes: int = 256 * 1024  # target size of a coalesced (batch=1) message

    router_inbox: int = 1_024  # commands waiting for the router (publishers wait beyond)
    publish_timeout_seconds: float = 5.0  # REST 503 / WS `overloaded` past this
    # per WS connection: publishes sent on before their ack, and the bytes of their messages
    # (so a group commit can take many small publishes, and few large ones pin little)
    publishes_in_flight: int = 1_024
    publish_bytes_in_flight: int = 4 * MiB
    max_frames_per_second: float = 2_000.0  # per WS connection; faster clients are read slower
    default_query_limit: int = 100
    max_query_limit: int = 1_000
    shutdown_grace_seconds: float = 5.0
    gc_threshold: tuple[int, int, int] | None = (10_000, 10, 10)

    def __attrs_post_init__(self) -> None:
        for name in (
            "buffer_size",
            "max_event_bytes",
            "max_message_bytes",
            "max_batch_events",
            "max_body_bytes",
            "max_subscriptions",
            "max_subscription_bytes",
            "outbox_events",
            "outbox_bytes",
            "reply_queue_frames",
            "router_inbox",
            "publishes_in_flight",
            "publish_bytes_in_flight",
            "max_query_limit",
            "default_query_limit",
            "dedupe_max_keys",
            "dedupe_max_bytes",
            "max_tracked_topics",
            "route_cache_topics",
            "dlq_max_entries",
            "metrics_topics",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 <= self.port < 65536:
            raise ValueError("port must be between 0 and 65535")
        if self.storage not in ("sqlite", "memory", "redis"):
            raise ValueError(f"unknown storage {self.storage!r}; choose sqlite, memory or redis")
        if self.storage == "redis" and not self.redis_url:
            raise ValueError(
                "--storage redis needs the Redis to use: --redis-url (or IPT_BUS_REDIS_URL), "
                "e.g. redis://127.0.0.1:6379/0"
            )
        if not self.redis_prefix or any(c in self.redis_prefix for c in "{} "):
            raise ValueError(
                f"--redis-prefix {self.redis_prefix!r}: a bus name must be non-empty, without "
                "braces or spaces (it becomes the Redis hash tag {prefix})"
            )
        if self.durability not in ("safe", "fast"):
            raise ValueError(f"unknown durability {self.durability!r}; choose safe or fast")
        for name in ("retention_events", "retention_bytes", "retention_age_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or unset for no limit)")
        if self.storage == "memory" and (
            self.retention_events is not None or self.retention_bytes is not None
        ):
            raise ValueError(
                "retention limits apply to the sqlite log; the memory log keeps the last "
                "buffer_size events (--buffer-size)"
            )
        if self.validation not in ("strict", "warn", "off"):
            raise ValueError(f"unknown validation {self.validation!r}; choose strict, warn or off")
        if self.dedupe_window_seconds < 0:
            raise ValueError("dedupe_window_seconds must not be negative")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("TLS needs both --certfile and --keyfile")
        for name in ("rate_limit_per_second", "rate_burst"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (or unset for no limit)")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.max_connections_per_identity is not None and self.max_connections_per_identity < 1:
            raise ValueError("max_connections_per_identity must be at least 1")
        if not (self.auth or self.allow_anonymous or is_loopback(self.host)):
            raise ValueError(
                f"refusing to serve {self.host}, which is not a loopback address, with no "
                "authentication: anyone who can reach it could publish, read every event and "
                "delete dead letters. Configure a key (--auth-secret-file or "
                "--auth-public-key; docs/security.md), or pass --allow-anonymous to serve it "
                "open anyway"
            )

    @property
    def auth(self) -> bool:
        """Whether tokens are required (a key is configured)."""
        return self.auth_secret_file is not None or self.auth_public_key is not None

    @property
    def scheme(self) -> str:
        return "https" if self.certfile is not None else "http"

    def limits(self) -> dict[str, int]:
        """The limits a client is told in the `welcome` frame."""
        return {
            "max_event_bytes": self.max_event_bytes,
            "max_message_bytes": self.max_message_bytes,
            "max_batch_events": self.max_batch_events,
            "max_subscriptions": self.max_subscriptions,
            "max_subscription_bytes": self.max_subscription_bytes,
            "outbox_events": self.outbox_events,
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> BusConfig:
        """Read the ``IPT_BUS_*`` variables (docs/configuration.md); `overrides` win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if "IPT_BUS_HOST" in env:
            values["host"] = env["IPT_BUS_HOST"]
        if "IPT_BUS_PORT" in env:
            values["port"] = int(env["IPT_BUS_PORT"])
        if "IPT_BUS_STORAGE" in env:
            values["storage"] = env["IPT_BUS_STORAGE"]
        if "IPT_BUS_REDIS_URL" in env:
            values["redis_url"] = env["IPT_BUS_REDIS_URL"]
        if "IPT_BUS_REDIS_PREFIX" in env:
            values["redis_prefix"] = env["IPT_BUS_REDIS_PREFIX"]
        if "IPT_BUS_DATA_DIR" in env:
            values["data_dir"] = env["IPT_BUS_DATA_DIR"]
        if "IPT_BUS_BUFFER_SIZE" in env:
            values["buffer_size"] = int(env["IPT_BUS_BUFFER_SIZE"])
        if "IPT_BUS_MAX_CONNECTIONS" in env:
            values["max_connections"] = int(env["IPT_BUS_MAX_CONNECTIONS"])
        if "IPT_BUS_ALLOWED_ORIGINS" in env:
            values["allowed_origins"] = parse_origins(env["IPT_BUS_ALLOWED_ORIGINS"])
        if "IPT_BUS_AUTH_SECRET_FILE" in env:
            values["auth_secret_file"] = env["IPT_BUS_AUTH_SECRET_FILE"]
        if "IPT_BUS_AUTH_PUBLIC_KEY" in env:
            values["auth_public_key"] = env["IPT_BUS_AUTH_PUBLIC_KEY"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]  # keys are checked by attrs at runtime


FD_RESERVE: Final = 256
"""File descriptors kept back from WebSockets: the log's files, the listening socket, REST
requests, the file watcher."""


def connection_limit(fd_soft_limit: int) -> int:
    """The default `max_connections` for a process allowed `fd_soft_limit` open files."""
    return max(1, fd_soft_limit - FD_RESERVE)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only reaches this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_origins(raw: str) -> tuple[str, ...]:
    """``https://a.example, https://b.example`` -> the origins, without trailing slashes."""
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


_DURATION_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY}
_SIZE_UNITS: Final = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_duration(raw: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` -> seconds."""
    text = raw.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit is not None else text
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise ValueError(f"{raw!r} is not a duration (e.g. 90s, 15m, 12h, 7d)") from None
    if not value > 0:
        raise ValueError(f"{raw!r}: a duration must be positive")
    return value


def parse_size(raw: str) -> int:
    """``1048576``, ``500MB``, ``2GiB`` -> bytes."""
    text = raw.strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :] or "b"
    if unit not in _SIZE_UNITS:
        raise ValueError(f"{raw!r}: unknown size unit {unit!r} (use B, KB, MB, GB, KiB, MiB, GiB)")
    try:
        value = int(float(digits) * _SIZE_UNITS[unit])
    except ValueError:
        raise ValueError(f"{raw!r} is not a size (e.g. 500MB, 2GiB)") from None
    if value <= 0:
        raise ValueError(f"{raw!r}: a size must be positive")
    return value

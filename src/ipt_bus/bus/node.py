"""`run_bus`: the root nursery of one bus node and its shutdown order.

Start order: log (a broken one stops start-up here) → stats → router → retention. The
integrations (file watcher, the bus's own logs) are wired in by the server. Stop order
(`BusHandle.shutdown`): tell connections to close with 1001 and wait (bounded) for them to
detach, then close the router's inbox (it handles what was already sent), then the stats actor
and retention, then close the log (a durable one finishes its queued writes and checkpoints).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import socket
from pathlib import Path
from typing import TYPE_CHECKING, final

import attrs
import trio

from ipt_bus.bus.dlq import DeadLetters
from ipt_bus.bus.limits import RateLimiter
from ipt_bus.bus.router import RouterHandle, start_router
from ipt_bus.bus.stats import StatsHandle, start_stats
from ipt_bus.core.auth import Authenticator, Keys
from ipt_bus.core.config import BusConfig, connection_limit
from ipt_bus.core.errors import CloseCode, StartupError, StorageError
from ipt_bus.storage.base import EventLog
from ipt_bus.storage.memory import MemoryLog
from ipt_bus.storage.redis import DEFAULT_RETENTION_EVENTS, RedisLog
from ipt_bus.storage.sqlite import Retention, SqliteLog

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

log = logging.getLogger("ipt_bus.bus.node")


@final
@attrs.frozen
class Lifecycle:
    """A bus node's stop signals: `shutting_down` once the orderly stop began, `stopped` once
    `run_bus` returned; `force` is cancelled to stop waiting for connections to close."""

    shutting_down: trio.Event = attrs.field(factory=trio.Event)
    stopped: trio.Event = attrs.field(factory=trio.Event)
    force: trio.CancelScope = attrs.field(factory=trio.CancelScope)


@final
@attrs.frozen
class BusHandle:
    """What the edges, connections and integrations share: references only, never written to
    by the tasks that use it. Counts live in the actors (connections in the router)."""

    config: BusConfig
    router: RouterHandle
    stats: StatsHandle
    log: EventLog
    dead_letters: DeadLetters
    node: str
    auth: Authenticator = attrs.field(factory=lambda: Authenticator(Keys()))
    limiter: RateLimiter = attrs.field(factory=lambda: RateLimiter(None, None))
    lifecycle: Lifecycle = attrs.field(factory=Lifecycle)

    @property
    def shutting_down(self) -> trio.Event:
        return self.lifecycle.shutting_down

    def shutdown(self) -> None:
        """Begin the orderly stop (idempotent); `run_bus` returns once it is done."""
        self.lifecycle.shutting_down.set()

    def force_stop(self) -> None:
        """Stop waiting for connections to close; the router and log still drain."""
        self.lifecycle.shutting_down.set()
        self.lifecycle.force.cancel()

    async def wait_stopped(self) -> None:
        await self.lifecycle.stopped.wait()


def load_keys(config: BusConfig) -> Keys:
    """The token keys the configuration names. Raises `StartupError` naming the file."""
    try:
        return Keys.load(
            config.auth_secret_file,
            config.auth_public_key,
            audience=config.auth_audience,
            issuer=config.auth_issuer,
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from None


@contextlib.asynccontextmanager
async def open_log(config: BusConfig) -> AsyncIterator[tuple[EventLog, DeadLetters]]:
    """The configured log and dead-letter store, closed on the way out.

    Raises `StorageOpenError` naming the file (or the Redis) that cannot be used."""
    if config.storage != "redis":
        event_log, dead = open_local_log(config)
        try:
            yield event_log, dead
        finally:
            with trio.move_on_after(config.shutdown_grace_seconds) as scope:
                scope.shield = True  # a durable log finishes its queued writes
                await event_log.aclose()
        return
    assert config.redis_url is not None  # BusConfig checks
    async with RedisLog.open(
        config.redis_url,
        prefix=config.redis_prefix,
        retention_events=config.retention_events or DEFAULT_RETENTION_EVENTS,
        retention_age_seconds=config.retention_age_seconds,
        retention_bytes=config.retention_bytes,
        dedupe_window_seconds=config.dedupe_window_seconds,
    ) as redis_log:
        dead = _dead_letters(config)
        dead.store = redis_log
        await dead.flush()  # the other nodes' dead letters, and a block of ids
        yield redis_log, dead


def _dead_letters(config: BusConfig) -> DeadLetters:
    return DeadLetters(
        max_entries=config.dlq_max_entries,
        max_bytes=config.dlq_max_bytes,
        max_age_seconds=config.dlq_max_age_seconds,
    )


def open_local_log(config: BusConfig) -> tuple[EventLog, DeadLetters]:
    """The memory or SQLite log. Raises `StorageOpenError` naming the file."""
    dead = _dead_letters(config)
    if config.storage == "memory":
        return MemoryLog(
            config.buffer_size,
            config.dedupe_window_seconds,
            config.dedupe_max_keys,
            config.dedupe_max_bytes,
        ), dead
    sqlite_log = SqliteLog.open(
        Path(config.data_dir),
        durability=config.durability,
        retention=Retention(
            events=config.retention_events,
            age_seconds=config.retention_age_seconds,
            bytes=config.retention_bytes,
        ),
        dedupe_window_seconds=config.dedupe_window_seconds,
        dedupe_max_keys=config.dedupe_max_keys,
        dedupe_max_bytes=config.dedupe_max_bytes,
        discard_damaged=config.discard_damaged_log,
    )
    dead.store = sqlite_log
    dead.load(sqlite_log.dead_on_open)
    return sqlite_log, dead


async def _retention(event_log: EventLog, dead: DeadLetters, interval: float) -> None:
    """Apply the retention limits every `interval` seconds, in chunks between appends."""
    while True:
        await trio.sleep(interval)
        try:
            await event_log.enforce_retention()
        except StorageError as exc:  # shown by /health; the next round tries again
            log.warning("retention failed: %s", exc)
        await dead.flush()


def tune_gc(threshold: tuple[int, int, int]) -> None:
    """Fewer collections, each cheaper (measured: docs/performance.md, "Garbage collector").

    Python's default young generation (700) cost about half the fan-out throughput at 1,000
    subscribers (DESIGN §8); 10,000 keeps that gain while bounding the cyclic garbage a closed
    connection leaves (a young generation of 50,000 let a connection storm hold 6-7 MB of it).
    Freezing what start-up made (modules, classes, the app) keeps it out of every later full
    collection: 4-5 ms instead of 50-100 ms here.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)


async def run_bus(
    config: BusConfig,
    *,
    task_status: trio.TaskStatus[BusHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one bus node's actors until `BusHandle.shutdown` is called (or this task is
    cancelled). The integrations are not started here: the server wires them in."""
    if config.gc_threshold is not None:
        tune_gc(config.gc_threshold)
    max_connections = config.max_connections
    if max_connections is None:  # as many as the process may open, less a reserve
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        max_connections = connection_limit(soft if soft != resource.RLIM_INFINITY else 1 << 20)
        config = attrs.evolve(config, max_connections=max_connections)
    auth = Authenticator(load_keys(config))
    lifecycle = Lifecycle()
    try:
        async with open_log(config) as (event_log, dead):
            await _run(config, auth, event_log, dead, max_connections, lifecycle, task_status)
    finally:
        lifecycle.stopped.set()


def node_id(config: BusConfig) -> str:
    """The node's name in `welcome` and `/stats`: several nodes of one bus (shared log) may run
    on one host (`--workers`), so theirs carries the process id too."""
    name = f"{config.node_name}@{socket.gethostname()}"
    return f"{name}/{os.getpid()}" if config.storage == "redis" else name


async def _run(
    config: BusConfig,
    auth: Authenticator,
    event_log: EventLog,
    dead: DeadLetters,
    max_connections: int,
    lifecycle: Lifecycle,
    task_status: trio.TaskStatus[BusHandle],
) -> None:
    try:
        async with trio.open_nursery() as nursery:
            stats = await start_stats(
                nursery, inbox_size=65_536, max_topics=config.max_tracked_topics
            )
            router = await start_router(
                nursery,
                event_log,
                stats,
                inbox_size=config.router_inbox,
                max_subscriptions=config.max_subscriptions,
                max_subscription_bytes=config.max_subscription_bytes,
                max_connections=max_connections,
                max_per_identity=config.max_connections_per_identity,
                route_cache_topics=config.route_cache_topics,
            )
            retention = trio.CancelScope()

            async def retain() -> None:
                with retention:
                    await _retention(event_log, dead, config.retention_interval_seconds)

            nursery.start_soon(retain)
            handle = BusHandle(
                config=config,
                router=router,
                stats=stats,
                log=event_log,
                dead_letters=dead,
                node=node_id(config),
                auth=auth,
                limiter=RateLimiter(config.rate_limit_per_second, config.rate_burst),
                lifecycle=lifecycle,
            )
            task_status.started(handle)
            await handle.shutting_down.wait()
            # every connection (and any still attaching) closes with 1001, then detaches
            await router.close_all(CloseCode.GOING_AWAY)
            with handle.lifecycle.force, trio.move_on_after(config.shutdown_grace_seconds):
                await router.wait_idle()
            router.close()
            stats.close()
            retention.cancel()
    finally:
        with trio.move_on_after(config.shutdown_grace_seconds) as scope:
            scope.shield = True
            await dead.flush()

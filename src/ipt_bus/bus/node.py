"""`run_bus`: the root nursery of one bus node and its shutdown order.

Start order: log (a broken one stops start-up here) → stats → router → retention. Stop order
(`BusHandle.shutdown`): tell connections to close with 1001 and wait (bounded) for them to
detach, then close the router's inbox (it handles what was already sent), then the stats actor
and retention, then close the log (a durable one finishes its queued writes and checkpoints).
"""

from __future__ import annotations

import gc
import itertools
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ipt_bus import __version__
from ipt_bus.bus.dlq import DeadLetters
from ipt_bus.bus.router import RouterHandle, start_router
from ipt_bus.bus.stats import Counted, StatsHandle, start_stats
from ipt_bus.core import schemas
from ipt_bus.core.config import BusConfig
from ipt_bus.core.errors import CloseCode, ProtocolError, StartupError, StorageError
from ipt_bus.integrations import files as filewatch
from ipt_bus.integrations.selflog import BusLogHandler
from ipt_bus.storage.base import EventLog
from ipt_bus.storage.memory import MemoryLog
from ipt_bus.storage.sqlite import Retention, SqliteLog

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ipt_bus.core.model import Event

log = logging.getLogger("ipt_bus.bus.node")


@final
@attrs.define
class BusHandle:
    """What the web layer and connections hold: the actors' handles, the config, the log."""

    config: BusConfig
    router: RouterHandle
    stats: StatsHandle
    log: EventLog
    dead_letters: DeadLetters
    node: str
    shutting_down: trio.Event = attrs.field(factory=trio.Event)
    _stopped: trio.Event = attrs.field(factory=trio.Event)
    _force: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _conn_ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))

    batch_writers: int = 0  # connections in batch mode: they share the batch message budget
    websockets: int = 0  # accepted WebSocket connections, counted at the edge (the cap)

    def next_conn_id(self) -> int:
        return next(self._conn_ids)

    def batch_window(self) -> float:
        """Least time between two messages to one batch-mode connection while it is busy.

        All batch writers together send at most `batch_messages_per_second` messages, so a
        crowd of subscribers cannot spend the whole core on per-message costs; the window never
        drops below `batch_linger_seconds`.
        """
        cfg = self.config
        return max(cfg.batch_linger_seconds, self.batch_writers / cfg.batch_messages_per_second)

    def validate(self, events: Sequence[Event], field: str, *, batch: bool) -> None:
        """Check standard-topic payloads as `validation` says: strict raises `ProtocolError`
        (naming the field), warn logs and counts, off does nothing."""
        mode = self.config.validation
        if mode == "off":
            return
        try:
            schemas.check_events(events, field, batch=batch)
        except ProtocolError as exc:
            if mode == "strict":
                raise
            self.stats.record(Counted("validation_warnings"))
            log.warning("accepted an event that fails its schema: %s", exc.message)

    def shutdown(self) -> None:
        """Begin the orderly stop (idempotent); `run_bus` returns once it is done."""
        self.shutting_down.set()

    def force_stop(self) -> None:
        """Stop waiting for connections to close; the router and log still drain."""
        self.shutting_down.set()
        self._force.cancel()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def welcome(self) -> dict[str, Any]:
        return {
            "action": "welcome",
            "version": __version__,
            "node": self.node,
            "epoch": self.log.epoch,
            "seq": self.log.last_seq,
            "limits": self.config.limits(),
        }


def _check_watch_dir(config: BusConfig) -> None:
    """Make sure `--watch-dir` (and the data dir for its offsets) can be used, at start."""
    if config.watch_dir is None:
        return
    try:
        Path(config.watch_dir).mkdir(parents=True, exist_ok=True)
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)  # the offsets live there
    except OSError as exc:
        raise StartupError(f"cannot use the watch directory {config.watch_dir}: {exc}") from None


def open_log(config: BusConfig) -> tuple[EventLog, DeadLetters]:
    """The configured log and dead-letter store. Raises `StorageOpenError` (naming the file)."""
    dead = DeadLetters(
        max_entries=config.dlq_max_entries,
        max_bytes=config.dlq_max_bytes,
        max_age_seconds=config.dlq_max_age_seconds,
    )
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
    """Run one bus node until `BusHandle.shutdown` is called (or this task is cancelled)."""
    if config.gc_threshold is not None:
        tune_gc(config.gc_threshold)
    _check_watch_dir(config)
    event_log, dead = open_log(config)
    handle: BusHandle | None = None
    try:
        async with trio.open_nursery() as nursery:
            stats = await start_stats(nursery, inbox_size=65_536)
            router = await start_router(
                nursery,
                event_log,
                stats,
                inbox_size=config.router_inbox,
                max_subscriptions=config.max_subscriptions,
                max_subscription_bytes=config.max_subscription_bytes,
            )
            retention = trio.CancelScope()

            async def retain() -> None:
                with retention:
                    await _retention(event_log, dead, config.retention_interval_seconds)

            nursery.start_soon(retain)
            self_log = BusLogHandler()
            self_log_scope = trio.CancelScope()
            if config.log_to_bus:
                logging.getLogger("ipt_bus").addHandler(self_log)

                async def publish_own_logs() -> None:
                    with self_log_scope:  # stops before the router does
                        await self_log.run(router)

                nursery.start_soon(publish_own_logs)
            handle = BusHandle(
                config=config,
                router=router,
                stats=stats,
                log=event_log,
                dead_letters=dead,
                node=f"{config.node_name}@{socket.gethostname()}",
            )
            watch_stop = trio.Event()
            if config.watch_dir is not None:
                offsets = Path(config.data_dir) / filewatch.OFFSETS_FILE
                nursery.start_soon(
                    filewatch.watch, handle, Path(config.watch_dir), offsets, watch_stop
                )
            task_status.started(handle)
            await handle.shutting_down.wait()
            # every connection (and any still attaching) closes with 1001, then detaches
            watch_stop.set()
            await router.close_all(CloseCode.GOING_AWAY)
            with handle._force, trio.move_on_after(config.shutdown_grace_seconds):
                await router.wait_idle()
            router.close()
            stats.close()
            retention.cancel()
            self_log_scope.cancel()
            logging.getLogger("ipt_bus").removeHandler(self_log)
    finally:
        with trio.move_on_after(config.shutdown_grace_seconds) as scope:
            scope.shield = True
            await dead.flush()
            await event_log.aclose()
        if handle is not None:
            handle._stopped.set()

"""What runs beside a bus node when the configuration asks for it: the file watcher
(`--watch-dir`) and the bus's own warnings as events (`--log-to-bus`). The server (and the app
under the bare hypercorn command) wires this in beside the edges; the actors know nothing of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ipt_bus.integrations import files
from ipt_bus.integrations.selflog import BusLogHandler

if TYPE_CHECKING:
    from ipt_bus.bus.node import BusHandle


async def run_integrations(bus: BusHandle) -> None:
    """Run the configured integrations until the bus begins to stop.

    Raises:
        StartupError: the watch directory cannot be used.
    """
    cfg = bus.config
    files.check_watch_dir(cfg)
    self_log = BusLogHandler() if cfg.log_to_bus else None
    bus_logger = logging.getLogger("ipt_bus")
    try:
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            if cfg.watch_dir is not None:
                offsets = Path(cfg.data_dir) / files.OFFSETS_FILE
                nursery.start_soon(files.watch, bus, Path(cfg.watch_dir), offsets, stop)
            self_log_scope = trio.CancelScope()
            if self_log is not None:
                bus_logger.addHandler(self_log)

                async def publish_own_logs() -> None:
                    with self_log_scope:
                        await self_log.run(bus)

                nursery.start_soon(publish_own_logs)
            await bus.shutting_down.wait()
            self_log_scope.cancel()
            stop.set()  # the watcher finishes what it is publishing, within a bound
            nursery.cancel_scope.deadline = trio.current_time() + cfg.shutdown_grace_seconds / 2
    finally:
        if self_log is not None:
            bus_logger.removeHandler(self_log)

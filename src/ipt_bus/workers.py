"""`ipt-bus serve --workers N`: N bus nodes behind one port, one process (one core) each.

Each worker is a whole `ipt-bus serve` process that binds the same address with SO_REUSEPORT,
so the kernel spreads new connections over them; they are one bus because they share the Redis
log (the CLI refuses `--workers` with a node-local log). This supervisor only starts them, hands
them SIGINT/SIGTERM (each then stops in order, as one node does), and restarts a worker that
dies later on; a worker that fails while starting stops them all (a wrong `--redis-url` must not
loop).

Workers run in their own session, so a Ctrl-C in the terminal reaches only the supervisor, which
passes it on once (a worker that got it twice would skip its orderly stop); on Linux each worker
is also sent SIGTERM by the kernel if the supervisor itself dies (`PR_SET_PDEATHSIG`), so a
killed supervisor leaves no workers behind.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger("ipt_bus.workers")

START_SECONDS: Final = 10.0  # a worker that exits sooner failed to start: stop them all
RESTART_SECONDS: Final = 1.0  # wait before a worker that died later is started again


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The `serve` command line of one worker: without `--workers`, with `--reuse-port`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return [sys.executable, "-m", "ipt_bus", *out, "--reuse-port"]


def _die_with_parent() -> None:
    """In the worker, before it runs: SIGTERM when the supervisor dies (Linux)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG: Final = 1


async def supervise(argv: Sequence[str], count: int) -> int:
    """Run `count` workers until a signal stops them; the exit status for the command."""
    command = worker_argv(argv)
    stopping = trio.Event()
    running: set[trio.Process] = set()
    failed: list[int] = []

    def stop_all(signum: int) -> None:
        stopping.set()
        for proc in running:
            if proc.returncode is None:
                proc.send_signal(signum)

    async def worker(index: int) -> None:
        while not stopping.is_set():
            started = trio.current_time()
            proc = await trio.lowlevel.open_process(
                command, start_new_session=True, preexec_fn=_die_with_parent
            )
            running.add(proc)
            try:
                code = await proc.wait()
            finally:
                running.discard(proc)
                if proc.returncode is None:  # cancelled: the supervisor itself is going
                    proc.kill()
            if stopping.is_set():
                return
            if trio.current_time() - started < START_SECONDS:
                log.error("worker %d exited with status %d while starting", index, code)
                failed.append(code or 1)
                stop_all(signal.SIGTERM)
                return
            log.error("worker %d exited with status %d; starting it again", index, code)
            await trio.sleep(RESTART_SECONDS)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def forward() -> None:
                async for signum in signals:
                    log.info("stopping %d workers (signal %d)", count, signum)
                    stop_all(signum)

            nursery.start_soon(forward)
            async with trio.open_nursery() as workers:
                for index in range(count):
                    workers.start_soon(worker, index)
            nursery.cancel_scope.cancel()  # every worker has exited
    return failed[0] if failed else 0

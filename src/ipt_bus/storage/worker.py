"""`Worker`: one OS thread that runs blocking jobs in order for trio tasks.

SQLite calls block; this keeps them off the trio thread while giving each connection exactly one
thread (so writes are serialized by construction, with no lock). Unlike `trio.to_thread`, the
thread is fixed and lives as long as the worker.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import TYPE_CHECKING, Any, TypeVar

import outcome
import trio

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")
_Job = tuple["Callable[[], Any]", "Callable[[outcome.Outcome[Any]], None]"]


class Worker:
    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, done = job
            done(outcome.capture(fn))

    def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the thread and wait for it, blocking (start-up, before trio runs)."""
        box: list[outcome.Outcome[T]] = []
        finished = threading.Event()

        def done(result: outcome.Outcome[T]) -> None:
            box.append(result)
            finished.set()

        self._jobs.put((fn, done))
        finished.wait()
        return box[0].unwrap()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the thread. Not cancellable once queued: the caller must learn whether
        a write happened, so cancellation waits for the job to end."""
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def done(result: outcome.Outcome[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._jobs.put((fn, done))
        result: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def stop(self) -> None:
        """Let the thread finish the queued jobs and end; waits for it."""
        self._jobs.put(None)
        self._thread.join()

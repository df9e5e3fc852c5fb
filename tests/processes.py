"""`ipt-bus serve` in its own process, for tests that measure it (RSS) or read its log."""

from __future__ import annotations

import resource
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import trio

from tests.integration.test_launch import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

BIN = Path(sys.executable).parent


def status_bytes(pid: int, key: str) -> int:
    """A `/proc/PID/status` line in bytes (`VmRSS:`, `VmHWM:`)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise AssertionError(key)


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.rss_before_fuzz = 0

    def rss(self) -> int:
        return status_bytes(self.proc.pid, "VmRSS:")

    def peak(self) -> int:
        return status_bytes(self.proc.pid, "VmHWM:")

    def health(self) -> int:
        return httpx.get(f"{self.url}/health", timeout=10).status_code


@contextmanager
def serve_process(
    directory: Path, *args: str, open_files: tuple[int, int] | None = None
) -> Iterator[Served]:
    """Run `ipt-bus serve` on a free port with its data and its log in `directory` (and its
    RLIMIT_NOFILE set to `open_files`, soft and hard, when given)."""

    def limit() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

    port = free_port()
    log = directory / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "ipt-bus"),
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(directory / "data"),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=limit if open_files is not None else None,
        )
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                trio.run(trio.sleep, 0.05)  # polling the server's start with a bound
        yield Served(proc, port, log)
    finally:
        proc.terminate()
        proc.wait(10)

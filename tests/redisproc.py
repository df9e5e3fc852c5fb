"""A real `redis-server` on a free port, started and stopped by the tests (never the machine's)."""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

START_SECONDS = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise AssertionError(
            "the Redis tests need redis-server (Debian: apt-get install redis-server; "
            ".ci/run installs it)"
        )
    return found


class RedisProcess:
    """One `redis-server`; `stop` and `start` keep its port (and, with `appendonly`, its data)."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [
                binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_SECONDS
        while True:  # polled with a deadline: redis-server gives no other sign that it listens
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@contextmanager
def redis_server(directory: Path, *, appendonly: bool = False) -> Iterator[RedisProcess]:
    server = RedisProcess(directory, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _ask(port: int, *command: str) -> bytes:
    """One command in RESP to 127.0.0.1:`port`; the raw reply (enough to poll for a state)."""
    parts = [f"*{len(command)}\r\n".encode()]
    for word in command:
        parts.append(f"${len(word.encode())}\r\n{word}\r\n".encode())
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"".join(parts))
        return sock.recv(65536)


def _answers(port: int, expected: bytes, *command: str) -> bool:
    return expected in _ask(port, *command)


def _poll(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:  # polled with a deadline: Redis gives no other sign
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready within {START_SECONDS} s")
        time.sleep(0.02)


@contextmanager
def sentinel(directory: Path, service: str = "bus") -> Iterator[str]:
    """A primary and one Sentinel watching it; the `redis+sentinel://` URL naming them."""
    with redis_server(directory) as primary:
        port = free_port()
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nsentinel monitor {service} 127.0.0.1 {primary.port} 1\n"
        )
        proc = subprocess.Popen(
            [binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _poll(
                lambda: (
                    str(primary.port).encode()
                    in _ask(port, "SENTINEL", "get-master-addr-by-name", service)
                ),
                "redis sentinel",
            )
            yield f"redis+sentinel://127.0.0.1:{port}/{service}"
        finally:
            proc.terminate()
            proc.wait(10)


@contextmanager
def cluster(directory: Path, size: int = 3) -> Iterator[str]:
    """A Redis Cluster of `size` primaries (no replicas); the `redis+cluster://` URL of one."""
    procs: list[subprocess.Popen[bytes]] = []
    ports = [free_port() for _ in range(size)]
    try:
        for port in ports:
            procs.append(
                subprocess.Popen(
                    [
                        binary(),
                        *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                        *("--cluster-enabled", "yes", "--dir", str(directory)),
                        # the cluster bus port is port + 10000 unless named: a free one
                        *("--cluster-port", str(free_port())),
                        *("--cluster-config-file", f"nodes-{port}.conf"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            _poll(functools.partial(_answers, port, b"+PONG", "PING"), "cluster node")
        cli = shutil.which("redis-cli")
        assert cli is not None, "the cluster test needs redis-cli (Debian: redis-tools)"
        subprocess.run(
            [
                *(cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        for port in ports:
            _poll(
                functools.partial(_answers, port, b"cluster_state:ok", "CLUSTER", "INFO"), "cluster"
            )
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)

"""ipt_bus benchmarks (docs/performance.md). Run with `nox -s bench` or `python tools/bench.py`.

The server under test runs in its own process pinned to core 0; this load generator pins itself
to core 1. Its WebSocket receivers do not decode events: they split frames and scan for the
``"seq":``/``"t":`` markers, so one Python process keeps up with far more than the server sends.
Every workload reports the load generator's CPU use so a saturated generator is visible.

    python tools/bench.py [--quick]
                          [--only fanout,latency,paused,idle,rest,codec,auth,durable,client,redis]
                          [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import trio

from ipt_bus.core.auth import Grant, make_token

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
PAD = "x" * 250  # brings a published event to ~400 bytes on the wire
SEQ = re.compile(rb'"seq":(\d+)')
SECRET = b"bench-secret-" + b"x" * 32  # `auth` workloads: the bus requires HS256 tokens


def bench_token() -> str:
    """A token that may do everything, valid for the whole run."""
    grant = Grant(publish=("**",), subscribe=("**",), admin=True)
    return make_token(SECRET, "bench", now=time.time(), ttl_seconds=86_400, grant=grant)


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


STORAGE_ARGS: dict[str, list[str]] = {
    "memory": ["--storage", "memory"],  # the default ring of 10,000 events
    "memory1m": ["--storage", "memory", "--buffer-size", "1000000"],  # holds a whole run
    "safe": ["--storage", "sqlite", "--durability", "safe"],
    "fast": ["--storage", "sqlite", "--durability", "fast"],
}


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, seconds: float) -> None:
    """Poll until `port` accepts (with a deadline; a process gives no other sign)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


@contextmanager
def redis_for_bench() -> Iterator[str]:
    """A `redis-server` for the `redis` rows, pinned to core 0 beside the bus (its CPU counts
    as the server side's), with `appendfsync always`: an ack means what `--durability safe`
    means (docs/scaling.md). Sets STORAGE_ARGS["redis"]; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ipt-bus-bench-redis-") as directory:
        proc = subprocess.Popen(
            [
                *("taskset", "-c", "0", "redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
                *("--dir", directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port, proc, "redis-server", 10)
            url = f"redis://127.0.0.1:{port}/0"
            STORAGE_ARGS["redis"] = ["--storage", "redis", "--redis-url", url]
            REDIS_PIDS[:] = [proc.pid]
            yield url
        finally:
            STORAGE_ARGS.pop("redis", None)
            REDIS_PIDS.clear()
            proc.terminate()
            proc.wait(10)


REDIS_PIDS: list[int] = []  # the bench's redis-server, while the `redis` rows run


@contextmanager
def server(
    kind: str,
    port: int,
    storage: str = "memory",
    *,
    auth: bool = False,
    cpus: str = "0",
    prefix: str | None = None,
    workers: int = 1,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `bus` (ipt-bus serve) or `bare` (tools/bare_broadcaster.py) pinned to `cpus`.

    `storage`: memory, safe / fast (SQLite in a fresh temporary directory), or redis (in the
    `redis_for_bench` Redis, under `prefix`: nodes with the same one are one bus). `auth`: the
    bus requires tokens signed with `SECRET`. `workers`: `--workers N` (redis only).
    """
    data_dir = tempfile.TemporaryDirectory(prefix="ipt-bus-bench-")
    secret = Path(data_dir.name) / "secret"
    secret.write_bytes(SECRET)
    if kind == "bus":
        argv = [
            sys.executable,
            "-m",
            "ipt_bus.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
            "--data-dir",
            data_dir.name,
            *STORAGE_ARGS[storage],
            *(["--redis-prefix", prefix or f"bench{port}"] if storage == "redis" else []),
            *(["--workers", str(workers)] if workers > 1 else []),
            *(["--auth-secret-file", str(secret)] if auth else []),
        ]
    else:
        argv = [sys.executable, str(ROOT / "tools" / "bare_broadcaster.py"), str(port)]
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, *argv],
        preexec_fn=_raise_nofile,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, proc, f"{kind} server", 20)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        data_dir.cleanup()


# --- a minimal WebSocket client ---------------------------------------------------------------


class RawWS:
    """Just enough RFC 6455 for a load generator: zero mask key, frames scanned not decoded."""

    def __init__(self, stream: trio.SocketStream, leftover: bytes) -> None:
        self.stream = stream
        self.buf = bytearray(leftover)

    @classmethod
    async def connect(cls, port: int, path: str) -> RawWS:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send_all(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("closed during handshake")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.decode(errors="replace"))
        return cls(stream, rest)

    async def send_text(self, data: bytes) -> None:
        n = len(data)
        if n < 126:
            header = bytes([0x81, 0x80 | n])
        elif n < 65536:
            header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
        await self.stream.send_all(header + b"\0\0\0\0" + data)

    async def messages(self) -> Any:
        """Yield each message's payload (bytes); ends when the server closes."""
        buf = self.buf
        while True:
            while True:
                if len(buf) < 2:
                    break
                opcode = buf[0] & 0x0F
                n = buf[1] & 0x7F
                start = 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n = int.from_bytes(buf[2:4], "big")
                    start = 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n = int.from_bytes(buf[2:10], "big")
                    start = 10
                if len(buf) < start + n:
                    break
                payload = bytes(buf[start : start + n])
                del buf[: start + n]
                if opcode == 0x8:
                    return
                if opcode in (0x1, 0x0):
                    yield payload
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


def event_frame(kind: str, i: int) -> bytes:
    event = {
        "type": "bench_event",
        "topic": "bench.fanout",
        "payload": {"i": i, "t": time.monotonic_ns(), "pad": PAD},
        "source": "bench",
    }
    if kind == "bare":
        return orjson.dumps(event)
    return orjson.dumps({"action": "publish", "ack": False, "event": event})


def scan_times(payload: bytes, now: int, out: list[int]) -> None:
    start = 0
    while True:
        at = payload.find(b'"t":', start)
        if at < 0:
            return
        end = payload.find(b",", at)
        out.append(now - int(payload[at + 4 : end]))
        start = end


# --- workloads --------------------------------------------------------------------------------


async def _subscribers(port: int, path: str, n: int) -> list[RawWS]:
    conns = []
    for _ in range(n):
        conns.append(await RawWS.connect(port, path))
    return conns


async def _clients(
    kind: str, port: int, subscribers: int, batch: bool, auth: bool = False
) -> tuple[list[RawWS], RawWS]:
    """Subscribers on the bench topic and one publisher, for the bus or the bare relay."""
    if kind == "bare":
        return await _subscribers(port, "/ws?sub=1", subscribers), await RawWS.connect(port, "/ws")
    token = f"&token={bench_token()}" if auth else ""
    path = "/ws?topics=bench.*" + ("&batch=1" if batch else "") + token
    subs = await _subscribers(port, path, subscribers)
    return subs, await RawWS.connect(port, "/ws?topics=none" + token)


LOADGEN = ROOT / "tools" / "loadgen"  # Node.js, no packages: see loadgen.mjs


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (the workers of `--workers`)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += tree_cpu_seconds(int(child))
    return total


async def loadgen(
    proc: subprocess.Popen[bytes] | list[subprocess.Popen[bytes]], spec: dict[str, Any]
) -> dict[str, Any]:
    """Run tools/loadgen/loadgen.mjs on core 1 with `spec`; adds the server's CPU use over the
    measured window (the generator says when counting starts): of every process in `proc`, with
    their children, and of the bench's Redis as `redis_cpu` when it runs."""
    procs = proc if isinstance(proc, list) else [proc]

    def server_cpu() -> float:
        return sum(tree_cpu_seconds(p.pid) for p in procs)

    def redis_cpu() -> float:
        return sum(cpu_seconds(pid) for pid in REDIS_PIDS)

    spec = {"warmup": 1.0, "grace": 3.0, "pad": PAD, "ack": False, "in_flight": 64, **spec}
    argv = ["taskset", "-c", "1", "node", str(LOADGEN / "loadgen.mjs"), json.dumps(spec)]
    node = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, preexec_fn=_raise_nofile)
    try:
        assert node.stdout is not None
        buf = b""
        cpu0 = t0 = redis0 = 0.0
        while True:
            chunk = await node.stdout.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"the load generator failed (exit {await node.wait()})")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                got = json.loads(line)
                if got.get("phase") == "counting":
                    cpu0, redis0, t0 = server_cpu(), redis_cpu(), time.monotonic()
                    continue
                elapsed = time.monotonic() - t0
                got["server_cpu"] = round((server_cpu() - cpu0) / elapsed, 2)
                if REDIS_PIDS:
                    got["redis_cpu"] = round((redis_cpu() - redis0) / elapsed, 2)
                got["loadgen_cpu"] = round(got["loadgen_cpu"], 2)
                return dict(got)
    finally:
        if node.returncode is None:
            node.kill()
        await node.wait()


def _urls(kind: str, port: int, path: str, batch: bool, auth: bool) -> tuple[str, str]:
    base = f"ws://127.0.0.1:{port}"
    if kind == "bare":
        return f"{base}/ws?sub=1", f"{base}/ws"
    token = f"&token={bench_token()}" if auth else ""
    return (
        f"{base}{path}" + ("&batch=1" if batch else "") + token,
        f"{base}/ws?topics=none" + token,
    )


async def fanout(
    kind: str,
    subscribers: int,
    seconds: float,
    batch: bool,
    auth: bool = False,
    *,
    storage: str = "memory",
    topics: int = 1,
    pattern: str = "bench.*",
    ack: bool = False,
) -> dict[str, Any]:
    """One publisher as fast as the server reads it, `subscribers` on `pattern`; events go
    round robin over `topics` topics."""
    port = free_port()
    with server(kind, port, storage, auth=auth) as proc:
        sub_url, pub_url = _urls(kind, port, f"/ws?topics={pattern}", batch, auth)
        names = ["bench.fanout"] if topics == 1 else [f"bench.t{i}.x" for i in range(topics)]
        spec = {
            "sub_url": sub_url,
            "pub_url": pub_url,
            "subscribers": subscribers,
            "seconds": seconds,
            "rate": 0,
            "topics": names,
            "bare": kind == "bare",
            "ack": ack,
        }
        got = await loadgen(proc, spec)
    elapsed = got["elapsed"]
    return {
        "server": kind,
        "storage": storage,
        "auth": auth,
        "batch": batch,
        "subscribers": subscribers,
        "topics": topics,
        "ack": ack,
        "deliveries_per_s": round(got["deliveries"] / elapsed),
        "published_per_s": round(got["published"] / elapsed),
        "acked_per_s": round(got["acked"] / elapsed),
        "gap_notices": got["gap_notices"],
        "errors": got["errors"],
        "server_cpu": got["server_cpu"],
        "loadgen_cpu": got["loadgen_cpu"],
    }


async def latency(
    kind: str, rate: int, subscribers: int, seconds: float, batch: bool, storage: str = "memory"
) -> dict[str, Any]:
    """Publish-to-receive time at a fixed rate; `lost` = deliveries missing after a grace."""
    port = free_port()
    with server(kind, port, storage) as proc:
        sub_url, pub_url = _urls(kind, port, "/ws?topics=bench.*", batch, False)
        spec = {
            "sub_url": sub_url,
            "pub_url": pub_url,
            "subscribers": subscribers,
            "seconds": seconds,
            "rate": rate,
            "topics": ["bench.fanout"],
            "bare": kind == "bare",
        }
        got = await loadgen(proc, spec)
    expected = got["expected"]
    return {
        "server": kind,
        "storage": storage,
        "batch": batch,
        "rate": rate,
        "subscribers": subscribers,
        "p50_ms": round(got["p50_ms"], 2) if got["p50_ms"] is not None else None,
        "p99_ms": round(got["p99_ms"], 2) if got["p99_ms"] is not None else None,
        "max_ms": round(got["max_ms"], 2) if got["max_ms"] is not None else None,
        "lost": expected - got["received"],
        "lost_pct": round(100 * (expected - got["received"]) / expected, 2),
        "server_cpu": got["server_cpu"],
        "loadgen_cpu": got["loadgen_cpu"],
    }


async def nodes_run(
    subscribers: int, seconds: float, *, nodes: int = 1, workers: int = 1, rate: int = 0
) -> dict[str, Any]:
    """Redis storage: `nodes` bus processes on one Redis (node i pinned to core i % 2) with the
    subscribers split over them in turn and the publisher on the first; or one `--workers N`
    command (its workers free to use both cores, the kernel spreading the connections).
    `rate` 0: as fast as the server reads (deliveries/s, per server CPU-second); else latency."""
    ports = [free_port() for _ in range(nodes)]
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                server(
                    "bus",
                    port,
                    "redis",
                    cpus="0,1" if workers > 1 else str(i % 2),
                    prefix=f"bench{ports[0]}",
                    workers=workers,
                )
            )
            for i, port in enumerate(ports)
        ]
        if workers > 1:  # every worker listening before the subscribers connect
            seen: set[str] = set()
            with trio.move_on_after(20):
                while len(seen) < workers:
                    async with httpx.AsyncClient() as http:  # a new connection each time
                        with contextlib.suppress(httpx.HTTPError):
                            answer = await http.get(f"http://127.0.0.1:{ports[0]}/stats")
                            seen.add(answer.json()["node"])
        spec = {
            "sub_url": [f"ws://127.0.0.1:{p}/ws?topics=bench.*" for p in ports],
            "pub_url": f"ws://127.0.0.1:{ports[0]}/ws?topics=none",
            "subscribers": subscribers,
            "seconds": seconds,
            "rate": rate,
            "topics": ["bench.fanout"],
        }
        got = await loadgen(procs, spec)
    row: dict[str, Any] = {
        "storage": "redis",
        "nodes": nodes,
        "workers": workers,
        "subscribers": subscribers,
        "rate": rate,
        "server_cpu": got["server_cpu"],
        "redis_cpu": got.get("redis_cpu"),
        "loadgen_cpu": got["loadgen_cpu"],
    }
    if rate:
        expected = got["expected"]
        return row | {
            "p50_ms": round(got["p50_ms"], 2) if got["p50_ms"] is not None else None,
            "p99_ms": round(got["p99_ms"], 2) if got["p99_ms"] is not None else None,
            "lost": expected - got["received"],
        }
    per_s = got["deliveries"] / got["elapsed"]
    return row | {
        "deliveries_per_s": round(per_s),
        "published_per_s": round(got["published"] / got["elapsed"]),
        "deliveries_per_server_cpu_s": round(per_s / got["server_cpu"])
        if got["server_cpu"]
        else None,
    }


async def paused(
    storage: str, rate: int, subscribers: int, seconds: float, pause: float, batch: bool
) -> dict[str, Any]:
    """One of `subscribers` stops reading for `pause` seconds mid-stream, then reads again.

    Its socket's receive buffer is kept small (64 KiB) so the pause reaches the server's outbox
    within the pause instead of being absorbed by the kernel; what it misses beyond its outbox
    must come from the log. Counts the events each subscriber never got.
    """
    port = free_port()
    with server("bus", port, storage):
        subs, pub = await _clients("bus", port, subscribers, batch)
        sock = subs[0].stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        total = int(rate * seconds)
        got: list[set[int]] = [set() for _ in subs]
        gaps = 0
        paused_until = [0.0]

        async def receive(i: int, ws: RawWS) -> None:
            nonlocal gaps
            mine = got[i]
            async for payload in ws.messages():
                if i == 0 and trio.current_time() < paused_until[0]:
                    await trio.sleep_until(paused_until[0])  # not reading: the pause itself
                gaps += payload.count(b'"gap"')
                mine.update(int(m) for m in SEQ.findall(payload))

        async def publish() -> None:
            start = trio.current_time()
            for i in range(total):
                if i == rate:  # after one second
                    paused_until[0] = trio.current_time() + pause
                await trio.sleep_until(start + i / rate)
                await pub.send_text(event_frame("bus", i))

        async with trio.open_nursery() as nursery:
            for i, ws in enumerate(subs):
                nursery.start_soon(receive, i, ws)
            await publish()
            expected = set(range(1, total + 1))
            with trio.move_on_after(15.0):  # grace: the paused one catches up
                while any(not expected <= g for g in got):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            stats = (await http.get("/stats")).json()
        for ws in [*subs, pub]:
            await ws.aclose()
    return {
        "storage": storage,
        "batch": batch,
        "rate": rate,
        "subscribers": subscribers,
        "pause_s": pause,
        "paused_lost": len(expected - got[0]),
        "others_lost": sum(len(expected - g) for g in got[1:]),
        "gap_notices": gaps,
        "catch_ups": stats.get("catch_up", {}).get("catch_ups"),
        "events_read_from_log": stats.get("catch_up", {}).get("events_read"),
        "dropped": stats["events_dropped"]["total"],
    }


async def idle_rss(connections: int) -> dict[str, Any]:
    """`connections` WebSockets opened 100 at a time (each counted once its welcome arrived)
    by the Node.js generator; RSS growth per connection, and how long they took to connect."""
    port = free_port()
    with server("bus", port) as proc:
        warm = await _subscribers(port, "/ws", 10)
        for ws in warm:
            await ws.aclose()
        await trio.sleep(0.5)
        before = rss_bytes(proc.pid)
        cpu0 = cpu_seconds(proc.pid)
        spec = {"idle": True, "sub_url": f"ws://127.0.0.1:{port}/ws", "subscribers": connections}
        argv = ["taskset", "-c", "1", "node", str(LOADGEN / "loadgen.mjs")]
        node = await trio.lowlevel.open_process(
            [*argv, json.dumps({**spec, "concurrency": 100})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=_raise_nofile,
        )
        try:
            assert node.stdout is not None
            assert node.stdin is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await node.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError("the load generator failed")
                line += chunk
            got = json.loads(line)
            cpu = cpu_seconds(proc.pid) - cpu0
            await trio.sleep(1.0)
            after = rss_bytes(proc.pid)
            await node.stdin.aclose()
            await node.wait()
        finally:
            if node.returncode is None:
                node.kill()
                await node.wait()
    return {
        "connections": got["connected"],
        "connect_seconds": round(got["elapsed"], 2),
        "server_cpu": round(cpu / got["elapsed"], 2),
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "per_connection_kb": round((after - before) / connections / 1024, 1),
    }


async def rest(
    batch_size: int, clients: int, seconds: float, storage: str = "memory", auth: bool = False
) -> dict[str, Any]:
    port = free_port()
    events = [
        {"type": "bench_event", "topic": "bench.rest", "payload": {"i": i, "pad": PAD}}
        for i in range(batch_size)
    ]
    body = orjson.dumps(events if batch_size > 1 else events[0])
    authorization = f"Authorization: Bearer {bench_token()}\r\n" if auth else ""
    request = (
        f"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{authorization}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    with server("bus", port, storage, auth=auth) as proc:
        done = 0
        errors = 0
        counting = True

        async def client() -> None:
            # hypercorn closes a keep-alive connection after 1,000 requests (its
            # keep_alive_max_requests): open a new one then, as HTTP clients do
            nonlocal done, errors
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            buf = b""
            while counting:
                sent = time.perf_counter()
                await stream.send_all(request)
                closing = False
                while True:
                    head_end = buf.find(b"\r\n\r\n")
                    if head_end >= 0:
                        head = buf[:head_end].lower()
                        at = head.find(b"content-length:")
                        length = int(head[at + 15 :].split(b"\r\n", 1)[0])
                        if len(buf) >= head_end + 4 + length:
                            ok = buf.startswith(b"HTTP/1.1 201")
                            closing = b"connection: close" in head
                            buf = buf[head_end + 4 + length :]
                            break
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        raise RuntimeError("the server closed the connection mid-answer")
                    buf += chunk
                if ok:
                    done += 1
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1
                if closing:
                    await stream.aclose()
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    buf = b""
            await stream.aclose()

        cpu_server, cpu_self, t0 = cpu_seconds(proc.pid), time.process_time(), time.monotonic()
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(client)
            await trio.sleep(seconds)
            counting = False
        elapsed = time.monotonic() - t0
        cpu_server = cpu_seconds(proc.pid) - cpu_server
        cpu_self = time.process_time() - cpu_self
    latencies.sort()
    return {
        "storage": storage,
        "auth": auth,
        "events_per_request": batch_size,
        "clients": clients,
        "ack_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "ack_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
        "requests_per_s": round(done / elapsed),
        "events_per_s": round(done * batch_size / elapsed),
        "errors": errors,
        "server_cpu": round(cpu_server / elapsed, 2),
        "loadgen_cpu": round(cpu_self / elapsed, 2),
    }


async def ws_publish(
    storage: str, seconds: float, batch: int = 100, window: int = 8, connections: int = 2
) -> dict[str, Any]:
    """Acknowledged WebSocket batch publishes: `window` publishes in flight per connection."""
    port = free_port()
    events = [
        {"type": "bench_event", "topic": "bench.durable", "payload": {"i": i, "pad": PAD}}
        for i in range(batch)
    ]
    frame = orjson.dumps({"action": "publish", "events": events})
    with server("bus", port, storage) as proc:
        acked = 0
        counting = True

        async def publisher() -> None:
            nonlocal acked
            ws = await RawWS.connect(port, "/ws?topics=nothing.here")  # publish only
            credit = trio.Semaphore(window)

            async def send() -> None:
                while counting:
                    await credit.acquire()
                    await ws.send_text(frame)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                async for message in ws.messages():
                    if message.startswith(b'{"action":"published"'):
                        acked += batch
                        credit.release()
                    elif not message.startswith(b'{"action":"welcome"'):
                        raise RuntimeError(message[:200])
                    if not counting:
                        break
                nursery.cancel_scope.cancel()
            await ws.aclose()

        cpu_server, t0 = cpu_seconds(proc.pid), time.monotonic()
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(publisher)
            await trio.sleep(seconds)
            counting = False
            elapsed = time.monotonic() - t0
            total = acked
        cpu_server = cpu_seconds(proc.pid) - cpu_server
    return {
        "storage": storage,
        "connections": connections,
        "events_per_publish": batch,
        "in_flight": window,
        "acked_events_per_s": round(total / elapsed),
        "server_cpu": round(cpu_server / elapsed, 2),
    }


async def history(storage: str, events: int = 100_000, page: int = 1_000) -> dict[str, Any]:
    """Fill the log, then page through it with `GET /events?since=`: events read per second."""
    port = free_port()
    batch = [
        {"type": "bench_event", "topic": f"bench.h{i % 10}", "payload": {"i": i, "pad": PAD}}
        for i in range(1_000)
    ]
    body = orjson.dumps(batch)
    with server("bus", port, storage):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for _ in range(events // len(batch)):
                response = await http.post(
                    "/events", content=body, headers={"Content-Type": "application/json"}
                )
                assert response.status_code == 201, response.text

            async def read_all(**params: Any) -> tuple[int, float]:
                since, n, t0 = 0, 0, time.monotonic()
                while True:
                    got = (
                        await http.get("/events", params={"since": since, "limit": page, **params})
                    ).json()
                    n += len(got["events"])
                    if not got["events"]:
                        return n, time.monotonic() - t0
                    since = got["next"]

            everything, t_all = await read_all()
            filtered, t_filtered = await read_all(topic="bench.h3")
    return {
        "storage": storage,
        "events": events,
        "page": page,
        "read_events_per_s": round(everything / t_all),
        "filtered_read_events_per_s": round(filtered / t_filtered),
        "filtered_scan_events_per_s": round(events / t_filtered),
    }


def _client_receive(port: int, expected: int, out: Any) -> None:
    """In a child process: the async client replays `expected` events through a no-op handler."""
    import asyncio

    from ipt_bus.client import EventBusClient

    async def main() -> None:
        client = EventBusClient(f"http://127.0.0.1:{port}", since=0)
        count = 0
        done = asyncio.Event()

        def handler(_: Any) -> None:
            nonlocal count
            count += 1
            if count == expected:
                done.set()

        client.add_event_handler("**", handler)
        t0, c0 = time.monotonic(), time.process_time()
        task = asyncio.create_task(client.listen_async())
        await done.wait()
        elapsed, cpu = time.monotonic() - t0, time.process_time() - c0
        await client.close()
        task.cancel()
        out.put({"events_per_s": round(expected / elapsed), "client_cpu": round(cpu / elapsed, 2)})

    asyncio.run(main())


async def client_speed(backlog: int) -> list[dict[str, Any]]:
    """The Python client: replaying a backlog through a no-op handler (one core), and the
    sync publisher's sequential and batched rates, against memory and SQLite (safe)."""
    import multiprocessing

    from ipt_bus.client import Event, EventBusPublisher

    rows: list[dict[str, Any]] = []
    port = free_port()
    with server("bus", port, "memory1m"):
        url = f"http://127.0.0.1:{port}"
        body = [Event(type="bench_event", topic="bench.client", payload={"pad": PAD})] * 1000
        with EventBusPublisher(url) as publisher:
            for _ in range(backlog // 1000):
                publisher.publish_many(body)
        queue: Any = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(
            target=_client_receive, args=(port, backlog, queue)
        )
        child.start()
        result = await trio.to_thread.run_sync(queue.get)
        child.join()
        rows.append({"test": "async_client_replay", "events": backlog, **result})
    for storage in ("memory", "safe"):
        port = free_port()
        with server("bus", port, storage):
            url = f"http://127.0.0.1:{port}"

            def sequential(url: str = url, storage: str = storage) -> dict[str, Any]:
                event = Event(type="bench_event", topic="bench.seq", payload={"pad": PAD})
                with EventBusPublisher(url) as publisher:
                    for _ in range(50):
                        publisher.publish(event)
                    n, t0, c0 = 0, time.monotonic(), time.process_time()
                    while time.monotonic() - t0 < 3:
                        publisher.publish(event)
                        n += 1
                    elapsed = time.monotonic() - t0
                    cpu = time.process_time() - c0
                    batch = [event] * 100
                    m, t1 = 0, time.monotonic()
                    while time.monotonic() - t1 < 3:
                        publisher.publish_many(batch)
                        m += 100
                    batched = m / (time.monotonic() - t1)
                return {
                    "storage": storage,
                    "sequential_publishes_per_s": round(n / elapsed),
                    "publisher_cpu": round(cpu / elapsed, 2),
                    "publish_many_100_events_per_s": round(batched),
                }

            rows.append({"test": "sync_publisher", **await trio.to_thread.run_sync(sequential)})
    return rows


def codec_micro() -> dict[str, Any]:
    """orjson vs msgspec on one ~400-byte event (why the codec uses orjson)."""
    import timeit

    result: dict[str, Any] = {}
    event = {
        "type": "task_status_changed",
        "topic": "task.status",
        "payload": {"task_id": "task-123", "status": "running", "message": "x" * 250},
        "timestamp": "2025-09-23T12:00:00Z",
        "source": "executor",
    }
    data = orjson.dumps(event)
    n = 200_000
    result["orjson_encode_us"] = round(
        timeit.timeit(lambda: orjson.dumps(event), number=n) / n * 1e6, 3
    )
    result["orjson_decode_us"] = round(
        timeit.timeit(lambda: orjson.loads(data), number=n) / n * 1e6, 3
    )
    try:
        import msgspec
    except ImportError:
        result["msgspec"] = "not installed"
    else:
        enc, dec = msgspec.json.encode, msgspec.json.decode
        result["msgspec_encode_us"] = round(
            timeit.timeit(lambda: enc(event), number=n) / n * 1e6, 3
        )
        result["msgspec_decode_us"] = round(timeit.timeit(lambda: dec(data), number=n) / n * 1e6, 3)
    from ipt_bus.core import codec

    result["ipt_bus_decode_event_us"] = round(
        timeit.timeit(lambda: codec.decode_event(codec.loads(data)), number=n) / n * 1e6, 3
    )
    return result


# --- main -------------------------------------------------------------------------------------


async def run(only: set[str], quick: bool, out: Callable[[str, Any], None]) -> None:
    seconds = 3.0 if quick else 5.0
    if "fanout" in only:
        for subs in [int(x) for x in os.environ.get("BENCH_SUBS", "1,10,100,1000").split(",")]:
            out("fanout", await fanout("bare", subs, seconds, False))
            for storage in ("memory", "safe"):
                for batch in (False, True):
                    out("fanout", await fanout("bus", subs, seconds, batch, storage=storage))
    if "single" in only:  # one publisher -> one subscriber, without and with acks
        for storage in ("memory", "safe"):
            for ack in (False, True):
                out("single", await fanout("bus", 1, seconds, False, storage=storage, ack=ack))
    if "routing" in only:  # 1,000 topics, 4 subscribers on a wildcard that matches them all
        for storage in ("memory", "safe"):
            for batch in (False, True):
                out(
                    "routing",
                    await fanout(
                        "bus", 4, seconds, batch, storage=storage, topics=1000, pattern="bench.*.x"
                    ),
                )
    if "latency" in only:
        for rate, subs in ((200, 100), (1000, 100), (100, 1000)):
            if subs == 100:
                out("latency", await latency("bare", rate, subs, seconds, False))
            for storage in ("memory", "safe"):
                for batch in (False, True):
                    out("latency", await latency("bus", rate, subs, seconds, batch, storage))
    if "redis" in only:  # issue 16: the Redis log, one node and several
        with redis_for_bench():
            for storage in ("safe", "redis"):
                out("redis_fanout", await fanout("bus", 100, seconds, False, storage=storage))
            for storage in ("safe", "redis"):
                out("redis_rest", await rest(1, 1, seconds, storage))  # a lone publisher
            for nodes in (1, 2):
                out("redis_latency", await nodes_run(100, seconds, nodes=nodes, rate=200))
            for nodes, workers in ((1, 1), (2, 1), (1, 2)):
                out("redis_scale", await nodes_run(100, seconds, nodes=nodes, workers=workers))
    if "paused" in only:
        for batch in (True, False):
            out("paused", await paused("safe", 1000, 100, seconds, 2.0, batch))
    if "idle" in only:
        out("idle", await idle_rss(1000 if quick else 10_000))
    if "rest" in only:
        out("rest", await rest(1, 8, seconds))
        out("rest", await rest(100, 4, seconds))
    if "codec" in only:
        out("codec", codec_micro())
    if "auth" in only:  # tokens required vs not, interleaved so drift hits both alike
        for _ in range(2):
            for auth in (False, True):
                out("auth_fanout", await fanout("bus", 100, seconds, False, auth))
                out("auth_rest", await rest(1, 8, seconds, auth=auth))
    if "client" in only:
        for row in await client_speed(100_000 if quick else 300_000):
            out("client", row)
    if "durable" in only:
        for storage in ("memory1m", "safe", "fast"):
            out("durable_ws", await ws_publish(storage, seconds))
        for storage in ("memory1m", "safe", "fast"):
            out("durable_rest", await rest(1, 1, seconds, storage))  # a lone sequential publisher
            out("durable_rest", await rest(1, 8, seconds, storage))
            out("durable_rest", await rest(100, 4, seconds, storage))
        for storage in ("memory1m", "safe", "fast"):
            out("history", await history(storage))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs, 1,000 idle connections")
    parser.add_argument(
        "--only",
        default="fanout,single,routing,latency,paused,idle,rest,codec,auth,durable,client,redis",
    )
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args()
    _raise_nofile()
    os.sched_setaffinity(0, {1})
    # The load generator's own collector paused it for 20-50 ms at a time (its sample lists
    # grow to millions), which showed up as the server's latency; it holds no cycles worth
    # collecting during a run.
    gc.disable()
    results: list[dict[str, Any]] = []
    print(
        f"# machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )

    def out(workload: str, row: Any) -> None:
        results.append({"workload": workload, **row})
        print(json.dumps({"workload": workload, **row}), flush=True)

    trio.run(run, set(args.only.split(",")), args.quick, out)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

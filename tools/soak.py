"""Soak and abuse runs outside the default tests (`nox -s soak`); results go in docs/operations.md.

    python tools/soak.py [--minutes 10] [--json FILE]

- C14 connect/disconnect storm: 500 connections/s for 10 s; server FDs and trio tasks back to
  baseline ± 2, RSS within 10 %.
- C17 ping flood: one client sends 10,000 `ping` actions/s for 5 s while 20 neighbours receive
  50 events/s; neighbours' p99 latency within 2x their baseline, RSS flat.
- G2 (scaled to this machine): 100 batch subscribers, 200 events/s, 10 connections/s of churn,
  for `--minutes`; after a warm-up of a fifth of the run: RSS drift ≤ 5 %, FDs flat, no drops for
  the steady subscribers, p99 of each minute within ± 20 % of the first minute after warm-up.

- C10 dead peer (root and iproute2 only; skipped otherwise): a client in a private network
  namespace made here, over a veth pair (10.254.254.0/30, this machine only), connects; then its
  link goes down (no FIN, no RST: the peer just stops answering). The server, with 1 s pings and
  a 5 s TCP_USER_TIMEOUT, must free the connection within ping interval + user timeout + 2 s.

Server: `ipt-bus serve` in its own process on core 0 (C10: in this process, bound to the veth
address); this generator on core 1; 127.0.0.1 and the namespace's veth only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def p99(samples: list[int]) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1e6, 2)


async def storm(port: int, pid: int) -> dict[str, Any]:
    """C14: 500 connect/disconnect cycles per second for 10 s."""
    rss0, fds0, tasks0 = bench.rss_bytes(pid), fd_count(pid), await _tasks(port)
    cycles = 0
    failures = 0
    start = trio.current_time()

    async def cycle() -> None:
        nonlocal cycles, failures
        try:
            ws = await bench.RawWS.connect(port, "/ws")
            await ws.aclose()
            cycles += 1
        except (OSError, trio.BrokenResourceError):  # e.g. reset: the listen backlog overflowed
            failures += 1

    async with trio.open_nursery() as nursery:
        for i in range(5000):
            await trio.sleep_until(start + i / 500)
            nursery.start_soon(cycle)
    elapsed = trio.current_time() - start
    await trio.sleep(2)  # let the server finish closing
    rss1, fds1, tasks1 = bench.rss_bytes(pid), fd_count(pid), await _tasks(port)
    return {
        "test": "C14 connect/disconnect storm",
        "cycles": cycles,
        "failures": failures,
        "cycles_per_s": round(cycles / elapsed),
        "fds": [fds0, fds1],
        "rss_mb": [round(rss0 / 2**20, 1), round(rss1 / 2**20, 1)],
        "tasks": [tasks0, tasks1],
        "fds_ok": abs(fds1 - fds0) <= 2,
        "tasks_ok": abs(tasks1 - tasks0) <= 2,
        "rss_ok": rss1 <= rss0 * 1.10,
    }


async def _tasks(port: int) -> int:
    """The server's living trio tasks (`/stats` -> `tasks`)."""
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"http://127.0.0.1:{port}/stats")).json()
    return int(stats["tasks"])


async def _neighbours(port: int, n: int, rate: int, seconds: float) -> list[int]:
    subs = [await bench.RawWS.connect(port, "/ws?topics=bench.*") for _ in range(n)]
    pub = await bench.RawWS.connect(port, "/ws?topics=none")
    samples: list[int] = []

    async def receive(ws: bench.RawWS) -> None:
        async for payload in ws.messages():
            bench.scan_times(payload, time.monotonic_ns(), samples)

    async with trio.open_nursery() as nursery:
        for ws in subs:
            nursery.start_soon(receive, ws)
        start = trio.current_time()
        for i in range(int(rate * seconds)):
            await trio.sleep_until(start + i / rate)
            await pub.send_text(bench.event_frame("bus", i))
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    for ws in [*subs, pub]:
        await ws.aclose()
    return samples


async def ping_flood(port: int, pid: int) -> dict[str, Any]:
    """C17: 10,000 ping actions/s from one client for 5 s; neighbours' latency."""
    baseline = await _neighbours(port, 20, 50, 5)
    rss0 = bench.rss_bytes(pid)
    flooder = await bench.RawWS.connect(port, "/ws?topics=none")
    sent = 0
    answered = 0
    flooded: list[int] = []

    async def flood() -> None:
        nonlocal sent
        start = trio.current_time()
        frame = b'{"action":"ping","id":1}'
        while trio.current_time() - start < 5:
            for _ in range(100):
                await flooder.send_text(frame)
                sent += 1
            await trio.sleep_until(start + sent / 10_000)

    async def count_pongs() -> None:
        nonlocal answered
        async for payload in flooder.messages():
            answered += payload.count(b'"pong"')

    async def neighbours() -> None:
        flooded.extend(await _neighbours(port, 20, 50, 5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(count_pongs)
        async with trio.open_nursery() as inner:
            inner.start_soon(flood)
            inner.start_soon(neighbours)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    await flooder.aclose()
    rss1 = bench.rss_bytes(pid)
    base, under = p99(baseline), p99(flooded)
    return {
        "test": "C17 ping flood",
        "pings_sent": sent,
        "pongs_received": answered,
        "neighbour_p99_ms": {"baseline": base, "during_flood": under},
        "neighbour_deliveries": [len(baseline), len(flooded)],
        "rss_mb": [round(rss0 / 2**20, 1), round(rss1 / 2**20, 1)],
        "latency_ok": base is not None and under is not None and under <= 2 * base,
        "rss_ok": rss1 <= rss0 * 1.05 + 2 * 2**20,
    }


async def soak(port: int, pid: int, minutes: float) -> dict[str, Any]:
    """G2 scaled: 100 batch subscribers, 200 events/s, churn 10 connections/s."""
    seconds = minutes * 60
    warmup = seconds / 5
    subs = [await bench.RawWS.connect(port, "/ws?topics=bench.*&batch=1") for _ in range(100)]
    pub = await bench.RawWS.connect(port, "/ws?topics=none")
    windows: list[list[int]] = [[]]
    gaps = 0
    churned = 0
    marks: dict[str, Any] = {}

    async def receive(ws: bench.RawWS) -> None:
        nonlocal gaps
        async for payload in ws.messages():
            bench.scan_times(payload, time.monotonic_ns(), windows[-1])
            gaps += payload.count(b'"gap"')

    async def churn(stop: trio.Event) -> None:
        nonlocal churned
        while not stop.is_set():
            ws = await bench.RawWS.connect(port, "/ws?topics=bench.*")
            async for _ in ws.messages():
                break
            await ws.aclose()
            churned += 1
            await trio.sleep(0.1)

    async def clock() -> None:
        start = trio.current_time()
        minute = 1
        while True:
            await trio.sleep_until(start + 60 * minute)
            windows.append([])
            minute += 1

    stop = trio.Event()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for ws in subs:
            nursery.start_soon(receive, ws)
        nursery.start_soon(churn, stop)
        nursery.start_soon(clock)
        i = 0
        while trio.current_time() - start < seconds:
            if "warm" not in marks and trio.current_time() - start >= warmup:
                marks["warm"] = (bench.rss_bytes(pid), fd_count(pid), len(windows))
            await trio.sleep_until(start + i / 200)
            await pub.send_text(bench.event_frame("bus", i))
            i += 1
        stop.set()
        await trio.sleep(2)
        end = (bench.rss_bytes(pid), fd_count(pid))
        nursery.cancel_scope.cancel()
    for ws in [*subs, pub]:
        await ws.aclose()
    rss_warm, fds_warm, first_window = marks["warm"]
    per_minute = [p99(w) for w in windows[first_window:] if len(w) > 1000]
    reference = per_minute[0] if per_minute else None
    return {
        "test": f"G2 soak, {minutes:g} min (100 batch subscribers, 200 ev/s, churn 10/s)",
        "events": i,
        "churned_connections": churned,
        "gap_notices": gaps,
        "rss_mb_at_warmup_and_end": [round(rss_warm / 2**20, 1), round(end[0] / 2**20, 1)],
        "fds_at_warmup_and_end": [fds_warm, end[1]],
        "p99_ms_per_minute": per_minute,
        "rss_ok": end[0] <= rss_warm * 1.05,
        "fds_ok": abs(end[1] - fds_warm) <= 2 + 1,  # + the churn connection in flight
        "drops_ok": gaps == 0,
        "p99_ok": reference is not None
        and all(p is not None and abs(p - reference) <= 0.2 * reference for p in per_minute),
    }


NS, VETH_HOST, VETH_NS = "ipt-bus-soak", "iptbus0", "iptbus1"
HOST_IP, NS_IP = "10.254.254.1", "10.254.254.2"


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


async def dead_peer() -> dict[str, Any]:
    """C10: a blackholed peer is freed by the kernel (TCP_USER_TIMEOUT) with pings in flight."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return {"test": "C10 dead peer", "skipped": "needs root and iproute2"}
    from ipt_bus.core.config import BusConfig
    from ipt_bus.server import serve

    _sh("ip", "netns", "add", NS)
    client: subprocess.Popen[bytes] | None = None
    try:
        _sh("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
        _sh("ip", "link", "set", VETH_NS, "netns", NS)
        _sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", VETH_HOST)
        _sh("ip", "link", "set", VETH_HOST, "up")
        _sh("ip", "netns", "exec", NS, "ip", "addr", "add", f"{NS_IP}/30", "dev", VETH_NS)
        _sh("ip", "netns", "exec", NS, "ip", "link", "set", VETH_NS, "up")
        config = BusConfig(
            host=HOST_IP,
            port=0,
            storage="memory",
            ping_interval_seconds=1.0,
            tcp_user_timeout_seconds=5.0,
            allow_anonymous=True,  # a private veth address, this machine only
        )
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, config)
            port = server.url.rsplit(":", 1)[1]
            holder = (
                "import socket, base64, os, time\n"
                f"s = socket.create_connection(('{HOST_IP}', {port}))\n"
                "k = base64.b64encode(os.urandom(16)).decode()\n"
                f"s.sendall(('GET /ws HTTP/1.1\\r\\nHost: {HOST_IP}:{port}\\r\\n'"
                " 'Upgrade: websocket\\r\\n'"
                " 'Connection: Upgrade\\r\\nSec-WebSocket-Key: ' + k +"
                " '\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n').encode())\n"
                "s.recv(4096)\n"
                "time.sleep(120)\n"
            )
            client = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", holder])
            with trio.fail_after(20):
                while server.bus.router.statistics().connections < 1:
                    await trio.sleep(0.05)
            # the peer vanishes without FIN or RST (this kernel has no netem to drop packets)
            _sh("ip", "netns", "exec", NS, "ip", "link", "set", VETH_NS, "down")
            blackholed = trio.current_time()
            bound = 1.0 + 5.0 + 2.0
            with trio.move_on_after(bound + 20):
                while server.bus.router.statistics().connections > 0:
                    await trio.sleep(0.05)
            freed_after = trio.current_time() - blackholed
            server.shutdown()
        return {
            "test": "C10 dead peer (blackholed in a network namespace)",
            "freed_after_s": round(freed_after, 2),
            "bound_s": bound,
            "freed_ok": freed_after <= bound,
        }
    finally:
        if client is not None:
            client.kill()
            client.wait()
        subprocess.run(["ip", "link", "del", VETH_HOST], capture_output=True)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


async def run(minutes: float, out: list[dict[str, Any]]) -> None:
    result = await dead_peer()
    out.append(result)
    print(json.dumps(result), flush=True)
    port = bench.free_port()
    with bench.server("bus", port) as proc:
        for step in (
            storm(port, proc.pid),
            ping_flood(port, proc.pid),
            soak(port, proc.pid, minutes),
        ):
            result = await step
            out.append(result)
            print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only-dead-peer", action="store_true", help="just C10")
    args = parser.parse_args()
    bench._raise_nofile()
    os.sched_setaffinity(0, {1})
    results: list[dict[str, Any]] = []
    if args.only_dead_peer:
        results.append(trio.run(dead_peer))
        print(json.dumps(results[-1]), flush=True)
    else:
        trio.run(run, args.minutes, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failed = [r["test"] for r in results if not all(v for k, v in r.items() if k.endswith("_ok"))]
    if failed:
        print("FAILED:", ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()

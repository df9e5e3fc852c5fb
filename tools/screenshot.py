"""Take docs/dashboard.png: the dashboard of a bus under load, in Debian's chromium.

Starts `ipt-bus serve --storage memory` on a free port, publishes a steady mix of the standard
topics (a few hundred events per second) with subscribers attached and a couple of dead letters,
lets the chart fill for `--seconds`, and saves a screenshot. Stops everything it started.

    python tools/screenshot.py [--seconds 40] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from playwright.sync_api import sync_playwright

if TYPE_CHECKING:
    from collections.abc import Callable

BIN = Path(sys.executable).parent
TOPICS: dict[str, Callable[[int], dict[str, Any]]] = {
    "task.status": lambda n: {"task_id": f"task-{n % 40}", "status": "running"},
    "phase.progress": lambda n: {"task_id": f"task-{n % 40}", "phase": "analysis",
                                 "progress": (n % 100) / 100},
    "cost.update": lambda n: {"task_id": f"task-{n % 40}", "cost_delta": 0.01},
    "tool.health_changed": lambda n: {"tool_name": "aider", "status": "healthy"},
    "logs.info": lambda n: {"level": "INFO", "message": f"step {n}"},
    "custom.deploy": lambda n: {"service": "api", "step": n},
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load(url: str, stop: threading.Event) -> None:
    rnd = random.Random(1)
    names = list(TOPICS)
    weights = [8, 6, 4, 1, 3, 1]
    with httpx.Client(base_url=url) as http:
        http.post("/events", json={"type": "t", "topic": "bad..topic", "payload": {}})
        http.post("/events", json={"type": "t", "topic": "task.status", "payload": {}})
        n = 0
        while not stop.is_set():
            burst = rnd.randint(20, 60)
            batch = []
            for _ in range(burst):
                topic = rnd.choices(names, weights)[0]
                batch.append({"type": topic.replace(".", "_"), "topic": topic,
                              "payload": TOPICS[topic](n)})  # fmt: skip
                n += 1
            http.post("/events", json=batch)
            stop.wait(0.1)  # pacing the load generator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--out", default="docs/dashboard.png")
    args = parser.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    bus = subprocess.Popen(
        [str(BIN / "ipt-bus"), "serve", "--port", str(port), "--storage", "memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling a starting process, with a deadline
        load = threading.Thread(target=_load, args=(url, stop))
        load.start()
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1050})
            pages = [browser.new_page() for _ in range(3)]  # more subscribers
            for other in pages:
                other.goto(f"{url}/ui/")
            page.goto(f"{url}/ui/")
            page.fill("#filter", "task.**")
            time.sleep(args.seconds)  # the chart fills as time passes: this is the point
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        stop.set()
        bus.terminate()
        bus.wait(10)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The bare-stack baseline: hypercorn + trio + raw ASGI, relaying each message to subscribers.

Connect with ``/ws?sub=1`` to receive; any text a connection sends is relayed as-is to every
subscriber, one ASGI ``websocket.send`` each. No parsing, no validation, no queues. Run it with the
same GC settings as the bus so the ratio measures ipt_bus's own cost.

    python tools/bare_broadcaster.py PORT
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

subscribers: set[Any] = set()


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    is_sub = b"sub=1" in scope["query_string"]
    if is_sub:
        subscribers.add(send)
    try:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            text = message.get("text")
            for sub in list(subscribers):
                await sub({"type": "websocket.send", "text": text})
    finally:
        subscribers.discard(send)


def main() -> None:
    # the bus's GC settings (ipt_bus.bus.node.tune_gc), so the ratio compares the code, not the GC
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    config = Config()
    config.bind = [f"127.0.0.1:{sys.argv[1]}"]
    config.accesslog = None
    trio.run(serve, app, config)


if __name__ == "__main__":
    main()

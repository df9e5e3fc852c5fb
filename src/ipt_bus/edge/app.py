"""The ASGI app: REST routes on Quart-Trio and `/ws` as a lean ASGI route beside them.

`/ws` bypasses Quart's websocket machinery (an extra task, channel and per-message signal per
connection; DESIGN §8 measured it at +9 KB RSS per connection and a slower send path) but lives
in the same app object, on the same port; so does `POST /events`, the hottest REST route. Every
error is JSON; request bodies are decoded only by `ipt_bus.core.codec`, never by Quart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from quart_trio import QuartTrio

from ipt_bus.bus.node import BusHandle, run_bus
from ipt_bus.core.config import BusConfig
from ipt_bus.core.errors import ProtocolError
from ipt_bus.edge import guard, http, rest, transport
from ipt_bus.edge.admission import serve_websocket
from ipt_bus.edge.http import body_read_before_answer

Extras = Callable[[BusHandle], Awaitable[None]]
"""What runs beside a bus the app starts itself (the integrations), until it stops."""


class BusApp(QuartTrio):
    """The Quart-Trio app, with `/ws` and `POST /events` answered before Quart sees them.

    Every request's `Host` is checked first (DNS rebinding); CORS headers go only to the
    `--allowed-origins`."""

    bus: BusHandle | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await super().__call__(scope, receive, send)
            return
        try:
            guard.check_host(self.bus, scope)
        except ProtocolError as exc:
            status, body, headers = http.error_parts(exc)
            if kind == "websocket":
                await receive()  # websocket.connect
            await http.send_answer(send, status, body, headers, websocket=kind == "websocket")
            return
        if kind == "websocket":
            await serve_websocket(self.bus, scope, receive, send)
            return
        cors = []
        if self.bus is not None:
            origin = guard.header(scope["headers"], b"origin")
            cors = guard.cors_headers(self.bus.config, origin)
        if cors:
            send = _with_headers(send, cors)
            if scope["method"] == "OPTIONS":  # a preflight from an allowed Origin
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
        if scope["path"] == "/events" and scope["method"] == "POST":
            await rest.post_events(self.bus, scope, receive, send)
        else:
            await super().__call__(scope, *body_read_before_answer(receive, send))


def _with_headers(send: Any, extra: list[tuple[bytes, bytes]]) -> Any:
    async def sending(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sending


def create_app(
    handle: BusHandle | None = None,
    config: BusConfig | None = None,
    *,
    extras: Extras | None = None,
) -> BusApp:
    """The ASGI app. With no `handle` it runs its own bus (and `extras` beside it) for the app's
    serving lifetime.

    That second form is what ``hypercorn --worker-class trio 'ipt_bus.web:create_app()'`` uses;
    `ipt_bus.server.serve` passes a handle so it can close WebSockets with 1001 on shutdown.
    """
    app = BusApp("ipt_bus")
    app.bus = handle
    cfg = handle.config if handle is not None else (config or BusConfig.from_env())
    transport.install(message_deadline_seconds=cfg.message_deadline_seconds)  # bare CLI too
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.config["BODY_TIMEOUT"] = cfg.body_timeout_seconds
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True

    if handle is None:

        @app.before_serving
        async def _start_bus() -> None:
            bus: BusHandle = await app.nursery.start(run_bus, cfg)
            app.bus = bus
            if extras is not None:
                app.nursery.start_soon(extras, bus)

        @app.after_serving
        async def _stop_bus() -> None:
            if app.bus is not None:
                app.bus.shutdown()
                await app.bus.wait_stopped()

    rest.register(app)
    return app

"""WebSocket admission: who may open `/ws`, with which parameters, before the upgrade.

Everything refused here is an HTTP answer with a JSON body, before any WebSocket exists: 404 for
another path, 503 while the bus is not running or has its maximum of connections (the router
counts them and refuses past `max_connections`), 403 for an Origin not allowed, 400 for bad
parameters (naming them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import attrs

from ipt_bus.bus.connection import Connection, ConnectParams
from ipt_bus.bus.stats import Refused
from ipt_bus.core.errors import (
    BusClosed,
    ErrorCode,
    LimitExceeded,
    Overloaded,
    ProtocolError,
)
from ipt_bus.core.topics import parse_patterns
from ipt_bus.edge import guard, http, transport
from ipt_bus.edge.transport import AsgiWebSocket

if TYPE_CHECKING:
    from ipt_bus.bus.node import BusHandle
    from ipt_bus.core.config import BusConfig


async def serve_websocket(bus: BusHandle | None, scope: Any, receive: Any, send: Any) -> None:
    """Admit one `/ws` connection and serve it until it closes."""
    message = await receive()
    if message["type"] != "websocket.connect":  # pragma: no cover - ASGI guarantees it
        return
    if scope["path"] != "/ws":
        await _reject(send, 404, ErrorCode.NOT_FOUND, f"no WebSocket endpoint at {scope['path']}")
        return
    if bus is None or bus.shutting_down.is_set():
        await _reject(send, 503, ErrorCode.SHUTTING_DOWN, "the bus is not running")
        return
    cfg = bus.config
    origin = guard.header(scope.get("headers", ()), b"origin")
    if (
        cfg.allowed_origins is not None
        and origin is not None
        and origin.rstrip("/") not in cfg.allowed_origins
    ):
        bus.stats.record(Refused("origin"))
        await _reject(send, 403, ErrorCode.ORIGIN_NOT_ALLOWED, f"Origin {origin!r} is not allowed")
        return
    client = scope.get("client")
    remote = f"{client[0]}:{client[1]}" if client else None
    try:
        params = parse_connect_params(scope.get("query_string", b""), cfg)
        token = (
            guard.bearer(guard.header(scope.get("headers", ()), b"authorization")) or params.token
        )
        identity = guard.authenticate(bus, token)
        if identity is not None:  # named topics must be granted; none named: the grant's
            topics = params.patterns if params.explicit else ()
            params = attrs.evolve(params, patterns=identity.readable(topics, "topics"))
        connection = Connection(AsgiWebSocket(receive, send), bus, params, remote, identity)
        await connection.attach()  # the router refuses past max_connections
    except (ProtocolError, Overloaded, BusClosed) as exc:
        status, body, headers = http.error_parts(exc)
        await http.send_answer(send, status, body, headers, websocket=True)
        return
    await send({"type": "websocket.accept"})
    if cfg.ping_interval_seconds is not None:  # TLS: hypercorn's own task pings instead
        transport.ping_every(send, cfg.ping_interval_seconds)
    await connection.run()


async def _reject(
    send: Any, status: int, code: ErrorCode, message: str, field: str | None = None
) -> None:
    await http.send_answer(send, status, http.error_body(code, message, field), websocket=True)


def parse_connect_params(query_string: bytes, config: BusConfig) -> ConnectParams:
    """Read ``?topics=a,b&since=N&epoch=E&batch=1`` of a `/ws` URL."""
    try:
        query = parse_qs(query_string.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.INVALID_QUERY, "query string is not UTF-8") from None
    patterns: list[str] = []
    for raw in query.get("topics", []):
        patterns.extend(parse_patterns(raw, "topics"))
    patterns = list(dict.fromkeys(patterns))
    if len(patterns) > config.max_subscriptions:
        raise LimitExceeded(
            f"more than {config.max_subscriptions} topics (max_subscriptions)", "topics"
        )
    if sum(map(len, patterns)) > config.max_subscription_bytes:
        raise LimitExceeded(
            f"the topics take more than {config.max_subscription_bytes} bytes "
            "(max_subscription_bytes)",
            "topics",
        )
    batch = http.last(query, "batch")
    if batch not in (None, "", "0", "1", "true", "false"):
        raise ProtocolError(ErrorCode.INVALID_QUERY, "batch must be 1 or 0", "batch")
    return ConnectParams(
        patterns=tuple(patterns) or ("**",),
        since=http.int_param(query, "since", minimum=0),
        epoch=http.last(query, "epoch") or None,
        batch=batch in ("1", "true"),
        explicit=bool(patterns),
        token=http.last(query, "token") or None,
    )

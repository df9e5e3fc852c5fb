"""The HTTP edge: REST routes on Quart-Trio and `/ws` as a lean ASGI route beside them.

`/ws` bypasses Quart's websocket machinery (an extra task, channel and per-message signal per
connection; DESIGN §8 measured it at +9 KB RSS per connection and a slower send path) but lives
in the same app object, on the same port. Every error is JSON; request bodies are decoded only by
`ipt_bus.core.codec`, never by Quart's `get_json`.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ipt_bus.bus.connection import Connection, ConnectParams, Disconnected
from ipt_bus.bus.node import BusHandle, run_bus
from ipt_bus.bus.stats import Refused
from ipt_bus.core import codec, schemas
from ipt_bus.core.config import BusConfig
from ipt_bus.core.errors import (
    BusClosed,
    BusError,
    ErrorCode,
    LimitExceeded,
    ProtocolError,
    StorageError,
)
from ipt_bus.core.topics import parse_patterns
from ipt_bus.edge import transport as _hypercorn
from ipt_bus.edge.ingress import (
    DISCARD_SECONDS,
    JSON,
    error_body,
    error_parts,
    post_events,
    publish_body,
    require_json,
)
from ipt_bus.storage.base import DeadLetter, Query

if TYPE_CHECKING:
    from ipt_bus.bus.router import ConnectionView

log = logging.getLogger("ipt_bus.web")

STANDARD_TOPICS: Final[dict[str, str]] = {
    "task.status": "Task lifecycle events (started, running, completed, failed)",
    "task.created": "New task creation events",
    "task.cancelled": "Task cancellation events",
    "task.retry": "Task retry events",
    "phase.started": "Phase execution started",
    "phase.progress": "Phase progress updates",
    "phase.completed": "Phase execution completed",
    "phase.failed": "Phase execution failed",
    "cost.update": "Real-time cost updates",
    "cost.budget_warning": "Budget threshold warnings",
    "cost.budget_exhausted": "Budget exhausted events",
    "cost.estimate": "Cost estimation events",
    "tool.health_changed": "Tool health status changes",
    "tool.available": "Tool becomes available",
    "tool.unavailable": "Tool becomes unavailable",
    "tool.degraded": "Tool performance degraded",
    "logs.debug": "Debug level log messages",
    "logs.info": "Information level log messages",
    "logs.warning": "Warning level log messages",
    "logs.error": "Error level log messages",
    "file.progress": "File-based progress events",
    "file.workflow": "File-based workflow events",
    "legacy.broadcast": "General broadcast messages",
}
STANDARD_PATTERNS: Final[dict[str, str]] = {
    "file.*": "Events from file-based event system",
    "legacy.*": "Legacy events from existing systems",
}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = body if isinstance(body, bytes) else codec.dumps(body)
    return Response(data, status=status, content_type=JSON, headers=headers)


def error_response(
    code: ErrorCode | str,
    message: str,
    status: int,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return json_response(error_body(code, message, field), status, headers)


class BusApp(QuartTrio):
    """The Quart-Trio app, with `/ws` answered before Quart sees it."""

    bus: BusHandle | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/events" and scope["method"] == "POST":
            await post_events(self.bus, scope, receive, send)
        elif scope["type"] == "http":
            await super().__call__(scope, *_body_read_before_answer(receive, send))
        else:
            await super().__call__(scope, receive, send)

    async def _websocket(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":  # pragma: no cover - ASGI guarantees it
            return
        if scope["path"] != "/ws":
            await _reject(
                send, 404, ErrorCode.NOT_FOUND, f"no WebSocket endpoint at {scope['path']}"
            )
            return
        bus = self.bus
        if bus is None or bus.shutting_down.is_set():
            await _reject(send, 503, ErrorCode.SHUTTING_DOWN, "the bus is not running")
            return
        cfg = bus.config
        origin = _header(scope, b"origin")
        if (
            cfg.allowed_origins is not None
            and origin is not None
            and origin.rstrip("/") not in cfg.allowed_origins
        ):
            bus.stats.record(Refused("origin"))
            await _reject(send, 403, "origin_not_allowed", f"Origin {origin!r} is not allowed")
            return
        if bus.websockets >= cfg.max_connections:
            bus.stats.record(Refused("max_connections"))
            await _reject(
                send,
                503,
                ErrorCode.OVERLOADED,
                f"the bus has its maximum of {cfg.max_connections} connections (max_connections)",
            )
            return
        try:
            params = parse_connect_params(scope.get("query_string", b""), cfg)
        except ProtocolError as exc:
            await _reject(send, 400, exc.code, exc.message, exc.field)
            return
        bus.websockets += 1
        try:
            await send({"type": "websocket.accept"})
            remote = scope.get("client")
            peer = f"{remote[0]}:{remote[1]}" if remote else None
            await Connection(AsgiWebSocket(receive, send), bus, params, peer).run()
        finally:
            bus.websockets -= 1


def _body_read_before_answer(receive: Any, send: Any) -> tuple[Any, Any]:
    """ASGI callables that hold an answer back until the request body has arrived.

    Quart reads the body in a task of its own and stops it once the answer is sent; a route that
    answers without needing the body (a 404, `/dlq/{id}/retry`, `GET /stats`) would leave the
    rest unread and the next request on that keep-alive connection stuck or reset. So the answer
    waits (at most `DISCARD_SECONDS`) for the body's last chunk to be read, and where it does not
    come it says `Connection: close`.
    """
    ended = trio.Event()

    async def tracked_receive() -> Any:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            ended.set()
        return message

    async def held_send(message: Any) -> None:
        if message["type"] == "http.response.start" and not ended.is_set():
            with trio.move_on_after(DISCARD_SECONDS):
                await ended.wait()
            if not ended.is_set():
                message = {**message, "headers": [*message["headers"], (b"connection", b"close")]}
        await send(message)

    return tracked_receive, held_send


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _reject(
    send: Any, status: int, code: ErrorCode | str, message: str, field: str | None = None
) -> None:
    """Refuse a WebSocket handshake with a JSON HTTP answer (ASGI websocket.http.response)."""
    body = error_body(code, message, field)
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [
                (b"content-type", JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


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
    since = _int_param(query, "since", minimum=0)
    epoch = _last(query, "epoch")
    batch = _last(query, "batch")
    if batch not in (None, "", "0", "1", "true", "false"):
        raise ProtocolError(ErrorCode.INVALID_QUERY, "batch must be 1 or 0", "batch")
    return ConnectParams(
        patterns=tuple(patterns) or ("**",),
        since=since,
        epoch=epoch or None,
        batch=batch in ("1", "true"),
    )


def _last(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _int_param(
    query: dict[str, list[str]], name: str, *, minimum: int, maximum: int | None = None
) -> int | None:
    raw = _last(query, name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ProtocolError(
            ErrorCode.INVALID_QUERY, f"{name} must be an integer, got {raw[:32]!r}", name
        ) from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ProtocolError(ErrorCode.INVALID_QUERY, f"{name} must be {bound}", name)
    return value


@attrs.define
class AsgiWebSocket:
    """`WebSocketLike` over an ASGI websocket connection."""

    _receive: Any
    _send: Any
    _direct: _hypercorn.DirectSender | None = attrs.field(init=False)  # hypercorn HTTP/1.1

    async def receive(self) -> str | bytes:
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            if text is not None:
                return str(text)
            return bytes(message.get("bytes") or b"")
        raise Disconnected(int(message.get("code", 1005)))

    def __attrs_post_init__(self) -> None:
        self._direct = _hypercorn.DirectSender.find(self._send)

    async def send(self, text: str) -> None:
        await self.send_many([text])

    async def send_many(self, texts: list[str]) -> None:
        if self._direct is not None:
            await self._direct.send(texts)
        else:
            for text in texts:
                await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int) -> None:
        await self._send({"type": "websocket.close", "code": code})


def create_app(handle: BusHandle | None = None, config: BusConfig | None = None) -> BusApp:
    """The ASGI app. With no `handle` it runs its own bus for the app's serving lifetime.

    That second form is what ``hypercorn --worker-class trio 'ipt_bus.web:create_app()'`` uses;
    `ipt_bus.server.serve` passes a handle so it can close WebSockets with 1001 on shutdown.
    """
    app = BusApp("ipt_bus")
    app.bus = handle
    cfg = handle.config if handle is not None else (config or BusConfig.from_env())
    _hypercorn.install(message_deadline_seconds=cfg.message_deadline_seconds)  # bare CLI too
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.config["BODY_TIMEOUT"] = cfg.body_timeout_seconds
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True

    if handle is None:

        @app.before_serving
        async def _start_bus() -> None:
            app.bus = await app.nursery.start(run_bus, cfg)

        @app.after_serving
        async def _stop_bus() -> None:
            if app.bus is not None:
                app.bus.shutdown()
                await app.bus.wait_stopped()

    _routes(app)
    return app


def _bus(app: BusApp) -> BusHandle:
    if app.bus is None or app.bus.shutting_down.is_set():
        raise BusClosed("the bus is not running")
    return app.bus


def _routes(app: BusApp) -> None:
    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = {
            404: ErrorCode.NOT_FOUND,
            405: ErrorCode.METHOD_NOT_ALLOWED,
            408: ErrorCode.REQUEST_TIMEOUT,
            413: ErrorCode.TOO_LARGE,
        }.get(status, "http_error")
        message = exc.description or exc.name
        if status == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            message = f"request body is larger than {limit} bytes (max_body_bytes)"
        elif status == 408:
            limit = app.config["BODY_TIMEOUT"]
            message = f"the request body did not arrive within {limit} s (body_timeout_seconds)"
        elif status == 404:
            message = f"no such endpoint: {request.path}"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        headers = dict(exc.get_headers()) if status == 405 else None
        if headers is not None:
            headers.pop("Content-Type", None)
        return error_response(code, message, status, headers=headers)

    @app.errorhandler(BusError)
    async def _bus_error(exc: BusError) -> Response:
        status, body, headers = error_parts(exc)  # the mapping WebSocket error frames use
        return json_response(body, status, headers or None)

    @app.errorhandler(Exception)
    async def _internal(exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
        return error_response(ErrorCode.INTERNAL, "internal error (logged on the server)", 500)

    @app.route("/ws", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def ws_without_upgrade() -> Response:
        return error_response(
            "upgrade_required",
            "/ws is a WebSocket endpoint: connect with a WebSocket client (e.g. wscat -c ws://HOST:PORT/ws)",
            426,
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )

    @app.get("/events")
    async def get_events() -> Response:
        bus = _bus(app)
        cfg = bus.config
        query = {k: request.args.getlist(k) for k in request.args}
        _only(query, EVENT_QUERY_PARAMS)
        event_query = _event_query(query)
        limit = _int_param(query, "limit", minimum=0)
        requested = cfg.default_query_limit if limit is None else limit
        capped = requested > cfg.max_query_limit
        limit = min(requested, cfg.max_query_limit)
        since = _int_param(query, "since", minimum=0)
        epoch = _last(query, "epoch") or None
        meta: dict[str, Any] = {"count": 0, "limit": limit, "capped": capped}
        if since is None:
            records = await bus.log.read_latest(event_query, limit)
        else:
            gaps = meta["gaps"] = []  # as the WebSocket's gap notices, in order
            if epoch is not None and epoch != bus.log.epoch:
                gaps.append({"reason": "epoch", "from_seq": since + 1, "to_seq": None})
                since = 0
            page = await bus.log.read_after(since, event_query, limit)
            records = page.records
            meta["next"] = page.next_since
            if since < page.first_seq - 1:
                gaps.append(
                    {"reason": "retention", "from_seq": since + 1, "to_seq": page.first_seq - 1}
                )
        meta["count"] = len(records)
        meta["epoch"] = bus.log.epoch
        head = b'{"events":[' + ",".join(r.data for r in records).encode() + b"]"
        return json_response(head + b"," + codec.dumps(meta)[1:])

    @app.get("/dlq")
    async def get_dead_letters() -> Response:
        bus = _bus(app)
        query = {k: request.args.getlist(k) for k in request.args}
        _only(query, ("limit", "after"))
        limit = _int_param(query, "limit", minimum=1, maximum=bus.config.max_query_limit) or 100
        after = _int_param(query, "after", minimum=0) or 0
        letters = bus.dead_letters.list(after=after, limit=limit, max_bytes=DLQ_PAGE_BYTES)
        body: dict[str, Any] = {
            "dead_letters": [_letter_json(d) for d in letters],
            "count": len(letters),
            "total": bus.dead_letters.stats()["size"],
        }
        if letters:
            body["next"] = letters[-1].id
        return json_response(body)

    @app.post("/dlq/<int:letter_id>/retry")
    async def retry_dead_letter(letter_id: int) -> Response:
        bus = _bus(app)
        letter = bus.dead_letters.get(letter_id)
        if letter is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no dead letter {letter_id}", "id")
        try:
            body = await publish_body(bus, letter.raw.encode(), None)
        except (ProtocolError, StorageError) as exc:
            bus.dead_letters.failed_again(letter_id, exc)
            raise
        bus.dead_letters.remove(letter_id, why="retried")
        return json_response(body, 201)

    @app.delete("/dlq/<int:letter_id>")
    async def delete_dead_letter(letter_id: int) -> Response:
        bus = _bus(app)
        if not bus.dead_letters.remove(letter_id, why="deleted"):
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no dead letter {letter_id}", "id")
        return Response(b"", status=204)

    @app.post("/broadcast")
    async def post_broadcast() -> Response:
        """Legacy: any JSON object (or a string, as `message`) as a `legacy.broadcast` event."""
        bus = _bus(app)
        require_json(request.mimetype)
        data = await request.get_data(cache=False)
        body = codec.loads(data)
        if isinstance(body, str):
            body = {"message": body}
        if not isinstance(body, dict):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, "a broadcast is a JSON object or a string", None
            )
        event = codec.decode_event(
            {"type": "broadcast", "topic": "legacy.broadcast", "payload": body},
            max_bytes=bus.config.max_event_bytes,
        )
        (published,) = await bus.router.publish([event], timeout=bus.config.publish_timeout_seconds)
        return json_response(
            {"id": published.id, "seq": published.seq, "topic": "legacy.broadcast"}, 201
        )

    @app.get("/schemas")
    async def get_schemas() -> Response:
        return json_response(
            {"validation": _bus(app).config.validation, "schemas": schemas.json_schemas()}
        )

    @app.get("/topics")
    async def get_topics() -> Response:
        bus = _bus(app)
        seen: dict[str, tuple[int, float]] = (await bus.stats.snapshot())["_topics"]
        topics = []
        for topic in sorted(STANDARD_TOPICS.keys() | seen.keys()):
            count, last = seen.get(topic, (0, None))
            topics.append(
                {
                    "topic": topic,
                    "standard": topic in STANDARD_TOPICS,
                    "description": STANDARD_TOPICS.get(topic),
                    "count": count,
                    "last_seen": _iso(last),
                }
            )
        patterns = [{"pattern": p, "description": d} for p, d in STANDARD_PATTERNS.items()]
        return json_response({"topics": topics, "patterns": patterns})

    @app.get("/stats")
    async def get_stats() -> Response:
        bus = _bus(app)
        snap = await bus.stats.snapshot()
        del snap["_topics"]
        log_stats = bus.log.stats()
        capacity = log_stats.capacity
        snap["buffer"] = {
            "size": log_stats.size,
            "capacity": capacity,
            "utilization": round(log_stats.size / capacity, 4) if capacity else None,
        }
        cfg = bus.config
        snap["log"] = {
            "storage": cfg.storage,
            "epoch": bus.log.epoch,
            "events": log_stats.size,
            "bytes": log_stats.bytes,
            "first_seq": log_stats.first_seq,
            "last_seq": log_stats.last_seq,
            "problem": bus.log.problem(),
        }
        if cfg.storage == "sqlite":
            snap["log"] |= {
                "durability": cfg.durability,
                "retention": {
                    "events": cfg.retention_events,
                    "age_seconds": cfg.retention_age_seconds,
                    "bytes": cfg.retention_bytes,
                },
            }
        snap["dead_letters"] = bus.dead_letters.stats()
        router = bus.router.statistics()
        counters = snap["counters"]
        snap["catch_up"] = {
            "catch_ups": counters.get("catch_ups", 0),
            "events_read": counters.get("catch_up_events", 0),
            "connections_catching_up": router.catching_up,
            "max_lag": router.max_lag,
        }
        # every connection's tasks live in nurseries: a count back at its baseline after a
        # storm of connections is the check that none outlived its connection (RELIABILITY C14)
        snap["tasks"] = trio.lowlevel.current_statistics().tasks_living
        return json_response(snap)

    @app.get("/connections")
    async def get_connections() -> Response:
        bus = _bus(app)
        query = {k: request.args.getlist(k) for k in request.args}
        _only(query, ("limit", "offset"))
        limit = _int_param(query, "limit", minimum=1, maximum=bus.config.max_query_limit) or 100
        offset = _int_param(query, "offset", minimum=0) or 0
        views = bus.router.connections(offset, limit)
        return json_response(
            {
                "connections": [_connection_json(v) for v in views],
                "count": len(views),
                "total": bus.router.statistics().connections,
                "offset": offset,
            }
        )

    @app.get("/health")
    async def get_health() -> Response:
        bus = app.bus
        if bus is None or bus.shutting_down.is_set():
            return json_response(
                {"status": "down", "checks": {"bus": "not running or shutting down"}}, 503
            )
        checks: dict[str, str] = {}
        started = time.monotonic()
        with trio.move_on_after(1.0):
            await bus.stats.snapshot()
            checks["stats"] = "ok"
        checks.setdefault("stats", "slow: no answer within 1 s")
        checks["router"] = "ok" if not bus.router.saturated() else "saturated: publishers wait"
        checks["log"] = bus.log.problem() or "ok"
        status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
        return json_response(
            {
                "status": status,
                "checks": checks,
                "epoch": bus.log.epoch,
                "last_seq": bus.log.last_seq,
                "checked_in_ms": round((time.monotonic() - started) * 1000, 3),
            }
        )


DLQ_PAGE_BYTES: Final = 4 * 1024 * 1024  # one /dlq answer holds at most this much raw text

EVENT_QUERY_PARAMS: Final = (
    "topic",
    "limit",
    "since",
    "epoch",
    "type",
    "correlation_id",
    "from",
    "to",
)


def _only(query: dict[str, list[str]], allowed: tuple[str, ...]) -> None:
    unknown = set(query) - set(allowed)
    if unknown:
        name = sorted(unknown)[0]
        raise ProtocolError(
            ErrorCode.INVALID_QUERY,
            f"unknown query parameter {name!r}; allowed: {', '.join(allowed)}",
            name,
        )


def _event_query(query: dict[str, list[str]]) -> Query:
    """The filters of `GET /events`: topic patterns, types, correlation id, time range."""
    patterns: list[str] = []
    for raw in query.get("topic", []):
        patterns.extend(parse_patterns(raw, "topic"))
    types = [t for raw in query.get("type", []) for t in raw.split(",") if t]
    correlation_id = _last(query, "correlation_id") or None
    return Query(
        patterns=tuple(dict.fromkeys(patterns)),
        types=tuple(dict.fromkeys(types)),
        correlation_id=correlation_id,
        time_from=_time_param(query, "from"),
        time_to=_time_param(query, "to"),
    )


def _time_param(query: dict[str, list[str]], name: str) -> float | None:
    """ISO-8601 (``2026-11-27T10:00:00Z``; no zone means UTC) or Unix seconds."""
    raw = _last(query, name)
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ProtocolError(
                ErrorCode.INVALID_QUERY, f"{name} must be a finite number of seconds", name
            )
        return seconds
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ProtocolError(
            ErrorCode.INVALID_QUERY,
            f"{name} must be an ISO-8601 time or Unix seconds, got {raw[:40]!r}",
            name,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _connection_json(view: ConnectionView) -> dict[str, Any]:
    outbox = view.outbox
    return {
        "id": view.id,
        "remote": view.peer.remote,
        "connected_at": _iso(view.peer.connected_at),
        "subscriptions": view.subscriptions,
        "batch": view.peer.batch,
        "state": "catching_up" if outbox.behind else "live",
        "lag": outbox.lag,
        "outbox": {"events": outbox.queued, "bytes": outbox.queued_bytes},
        "delivered": outbox.delivered,
        "deferred": outbox.deferred,
        "catch_ups": outbox.catch_ups,
        "dropped": outbox.dropped,
    }


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "at": _iso(letter.at),
        "source": letter.source,
        "error": {"code": letter.code, "message": letter.message, "field": letter.field},
        "attempts": letter.attempts,
        "raw": letter.raw,
    }


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")

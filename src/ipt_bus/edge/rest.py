"""The REST API (docs/rest.md): one handler per route, at module level.

`POST /events` is a lean ASGI route (Quart's request machinery cost about 1 ms of CPU per
single-event publish here); the others are Quart routes registered by `register`. Every publish
goes through `ipt_bus.bus.ingress`; every error is JSON (`ipt_bus.edge.http`).
"""

from __future__ import annotations

import logging
import re
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from quart import Response, current_app, request
from werkzeug.exceptions import HTTPException

from ipt_bus import __version__
from ipt_bus.bus import ingress
from ipt_bus.bus.ingress import Offer, Origin
from ipt_bus.bus.stats import Histogram, PublishDurations
from ipt_bus.core import codec, schemas
from ipt_bus.core.auth import Forbidden
from ipt_bus.core.errors import BusClosed, BusError, ErrorCode, ProtocolError
from ipt_bus.edge import guard, http, metrics, openapi
from ipt_bus.storage.base import resume_point, retention_gap

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ipt_bus.bus.node import BusHandle
    from ipt_bus.bus.router import ConnectionView
    from ipt_bus.core.auth import Identity
    from ipt_bus.core.model import Event
    from ipt_bus.storage.base import DeadLetter

log = logging.getLogger("ipt_bus.edge.rest")

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
DLQ_PAGE_BYTES: Final = 4 * 1024 * 1024  # one /dlq answer holds at most this much raw text
_ARRAY: Final = re.compile(rb"[ \t\r\n]*\[")  # a body that is a JSON array (a batch)


def running(bus: BusHandle | None) -> BusHandle:
    if bus is None or bus.shutting_down.is_set():
        raise BusClosed("the bus is not running")
    return bus


def _bus() -> BusHandle:
    return running(current_app.bus)  # type: ignore[attr-defined]  # BusApp's


def _identity(bus: BusHandle, *, admin: bool = False) -> Identity | None:
    """The request's identity (401 without a valid token when tokens are required); with
    `admin`, it must be an admin's (403)."""
    identity = guard.authenticate(bus, guard.bearer(request.headers.get("Authorization")))
    if admin:
        guard.require_admin(identity)
    return identity


def _query() -> http.Params:
    return {k: request.args.getlist(k) for k in request.args}


def _remote(scope: Any) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


# --- publishing ---------------------------------------------------------------------------------


def decode_body(raw: bytes, max_event_bytes: int, max_batch_events: int) -> list[Event]:
    """A REST body: one event, or an array of them (errors name `[i].field`)."""
    body = codec.loads(raw)
    # a body under the event limit cannot hold an event over it: skip measuring each one
    max_bytes = max_event_bytes if len(raw) > max_event_bytes else None
    if isinstance(body, list):
        return codec.decode_batch(body, max_events=max_batch_events, max_bytes=max_bytes)
    return [codec.decode_event(body, max_bytes=max_bytes)]


async def publish_raw(
    bus: BusHandle, origin: Origin, raw: bytes, key: str | None
) -> dict[str, Any]:
    """Publish a REST body through the ingress; the 201 answer's body."""
    cfg = bus.config
    batch = _ARRAY.match(raw) is not None
    offer = Offer(
        origin,
        lambda: decode_body(raw, cfg.max_event_bytes, cfg.max_batch_events),
        lambda: raw.decode("utf-8", "replace"),
        batch=batch,
        key=key,
    )
    published = await ingress.publish(bus, offer)
    if batch or len(published) != 1:
        return {"events": [{"id": p.id, "seq": p.seq} for p in published]}
    return {"id": published[0].id, "seq": published[0].seq}


async def post_events(bus: BusHandle | None, scope: Any, receive: Any, send: Any) -> None:
    """`POST /events`, on the raw ASGI interface."""
    headers: dict[str, str] = {}
    body = http.Body(receive)
    received = trio.current_time()
    try:
        bus = running(bus)
        status, answer = 201, codec.dumps(await _post_events(bus, scope, body))
        bus.stats.record(PublishDurations(Histogram.of(trio.current_time() - received)))
    except BusError as exc:
        status, answer, headers = http.error_parts(exc)
        await body.discard_rest()
    await http.send_answer(send, status, answer, headers)


async def _post_events(bus: BusHandle, scope: Any, body: http.Body) -> dict[str, Any]:
    cfg = bus.config
    authorization = guard.header(scope["headers"], b"authorization")
    identity = guard.authenticate(bus, guard.bearer(authorization))
    content_type = length = key = None
    for name, value in scope["headers"]:
        name = name.lower()
        if name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"content-length":
            length = value
        elif name == b"idempotency-key":
            key = value.decode("latin-1")
    http.require_json((content_type or "").split(";", 1)[0].strip().lower())
    if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
        raise http.too_large(cfg.max_body_bytes)
    if key is not None:
        codec.check_idempotency_key(key, "Idempotency-Key")
    raw = await body.read(cfg.max_body_bytes, cfg.body_timeout_seconds)
    return await publish_raw(bus, Origin("rest", _remote(scope), identity), raw, key)


async def post_broadcast() -> Response:
    """Legacy: any JSON object (or a string, as `message`) as a `legacy.broadcast` event."""
    bus = _bus()
    identity = _identity(bus)
    http.require_json(request.mimetype)
    raw = await request.get_data(cache=False, as_text=False)
    assert isinstance(raw, bytes)

    mapped: list[bytes] = []  # the event it maps to: what a dead letter keeps, to retry

    def decode() -> list[Event]:
        body = codec.loads(raw)
        if isinstance(body, str):
            body = {"message": body}
        if not isinstance(body, dict):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, "a broadcast is a JSON object or a string", None
            )
        event = {"type": "broadcast", "topic": "legacy.broadcast", "payload": body}
        mapped.append(codec.dumps(event))
        return [codec.decode_event(event, max_bytes=bus.config.max_event_bytes)]

    def kept() -> str:
        return (mapped[0] if mapped else raw).decode("utf-8", "replace")

    origin = Origin("rest", _remote(request.scope), identity, source="rest:broadcast")
    (published,) = await ingress.publish(bus, Offer(origin, decode, kept))
    body = {"id": published.id, "seq": published.seq, "topic": "legacy.broadcast"}
    return http.json_response(body, 201)


# --- reading --------------------------------------------------------------------------------------


async def get_events() -> Response:
    bus = _bus()
    identity = _identity(bus)
    cfg = bus.config
    query = _query()
    http.only(query, EVENT_QUERY_PARAMS)
    event_query = http.event_query(query)
    if identity is not None:  # history never shows what the token may not read
        if not identity.grant.subscribe:
            raise Forbidden(f"the token of {identity.sub!r} may read no topic", "topic")
        patterns = identity.readable(event_query.patterns, "topic")
        event_query = attrs.evolve(event_query, patterns=patterns)
    limit = http.int_param(query, "limit", minimum=0)
    requested = cfg.default_query_limit if limit is None else limit
    capped = requested > cfg.max_query_limit
    limit = min(requested, cfg.max_query_limit)
    since = http.int_param(query, "since", minimum=0)
    meta: dict[str, Any] = {"count": 0, "limit": limit, "capped": capped}
    if since is None:
        records = await bus.log.read_latest(event_query, limit)
    else:
        # the gaps a WebSocket resume would be told, in order, without the `action`
        gaps = meta["gaps"] = []
        since, gap = resume_point(since, http.last(query, "epoch") or None, bus.log)
        page = await bus.log.read_after(since, event_query, limit)
        for found in (gap, retention_gap(since, page)):
            if found is not None:
                gaps.append({k: v for k, v in codec.frame_to_wire(found).items() if k != "action"})
        records = page.records
        meta["next"] = page.next_since
    meta["count"] = len(records)
    meta["epoch"] = bus.log.epoch
    head = b'{"events":[' + b",".join(r.data for r in records) + b"]"
    return http.json_response(head + b"," + codec.dumps(meta)[1:])


async def get_topics() -> Response:
    bus = _bus()
    _identity(bus)
    snap = await bus.stats.snapshot()
    seen: dict[str, tuple[int, float]] = snap["_topics"]
    topics = []
    catalogue = schemas.CATALOGUE
    for topic in sorted(catalogue.keys() | seen.keys()):
        count, last = seen.get(topic, (0, None))
        standard = catalogue.get(topic)
        topics.append(
            {
                "topic": topic,
                "standard": standard is not None,
                "description": standard.description if standard else None,
                "count": count,
                "last_seen": http.iso(last),
                "subscribers": bus.router.subscribers(topic),
            }
        )
    patterns = [{"pattern": p, "description": d} for p, d in schemas.STANDARD_PATTERNS.items()]
    return http.json_response(
        {"topics": topics, "patterns": patterns, "tracked": snap["topics_tracked"]}
    )


async def get_schemas() -> Response:
    bus = _bus()
    _identity(bus)
    return http.json_response(
        {"validation": bus.config.validation, "schemas": schemas.json_schemas()}
    )


# --- operating ------------------------------------------------------------------------------------


async def get_stats() -> Response:
    bus = _bus()
    _identity(bus)
    snap = await stats_document(bus)
    del snap["_topics"]
    return http.json_response(snap)


async def get_metrics() -> Response:
    bus = _bus()
    if not bus.config.metrics_public:
        _identity(bus)
    body = metrics.render(
        await stats_document(bus), version=__version__, metrics_topics=bus.config.metrics_topics
    )
    return Response(body, 200, {"Content-Type": metrics.CONTENT_TYPE})


async def stats_document(bus: BusHandle) -> dict[str, Any]:
    """What `/stats` answers (and `/metrics` exposes), with the stats actor's `_topics`."""
    snap = await bus.stats.snapshot()
    snap["node"] = bus.node
    snap["max_connections"] = bus.config.max_connections
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
        "idempotency_keys": {"held": log_stats.keys, "evicted": log_stats.keys_evicted},
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
    if cfg.storage == "redis":
        snap["log"] |= {
            "redis": {"url": getattr(bus.log, "url", None), "prefix": cfg.redis_prefix},
            "retention": {
                "events": getattr(bus.log, "retention_events", None),
                "age_seconds": cfg.retention_age_seconds,
            },
        }
    snap["dead_letters"] = bus.dead_letters.stats()
    router = bus.router.statistics()
    counters = snap["counters"]
    snap["security"]["tokens_required"] = bus.auth.enabled
    snap["rate_limits"] = {
        "per_second": cfg.rate_limit_per_second,
        "burst": cfg.rate_burst,
        "delayed": bus.limiter.delayed,
    }
    snap["catch_up"] = {
        "catch_ups": counters.get("catch_ups", 0),
        "events_read": counters.get("catch_up_events", 0),
        "connections_catching_up": router.catching_up,
        "max_lag": router.max_lag,
    }
    # every connection's tasks live in nurseries: a count back at its baseline after a storm of
    # connections is the check that none outlived its connection (RELIABILITY C14)
    snap["tasks"] = trio.lowlevel.current_statistics().tasks_living
    return snap


async def get_connections() -> Response:
    bus = _bus()
    _identity(bus, admin=True)
    query = _query()
    http.only(query, ("limit", "offset"))
    limit = http.int_param(query, "limit", minimum=1, maximum=bus.config.max_query_limit) or 100
    offset = http.int_param(query, "offset", minimum=0) or 0
    views = bus.router.connections(offset, limit)
    return http.json_response(
        {
            "connections": [_connection_json(v) for v in views],
            "count": len(views),
            "total": bus.router.statistics().connections,
            "offset": offset,
        }
    )


def _connection_json(view: ConnectionView) -> dict[str, Any]:
    outbox = view.outbox
    return {
        "id": view.id,
        "remote": view.peer.remote,
        "connected_at": http.iso(view.peer.connected_at),
        "subscriptions": view.subscriptions,
        "batch": view.peer.batch,
        "sub": view.peer.sub,
        "state": "catching_up" if outbox.behind else "live",
        "lag": outbox.lag,
        "outbox": {"events": outbox.queued, "bytes": outbox.queued_bytes},
        "delivered": outbox.delivered,
        "deferred": outbox.deferred,
        "catch_ups": outbox.catch_ups,
        "dropped": outbox.dropped,
    }


async def get_index() -> Response:
    """Browsers go to the dashboard; anything else gets the endpoints, as JSON."""
    if request.accept_mimetypes.best_match([http.JSON, "text/html"]) == "text/html":
        return Response(b"", 302, {"Location": "/ui/"})
    return http.json_response(
        {
            "name": "ipt_bus",
            "version": __version__,
            "endpoints": {
                path: sorted(methods.keys())
                for path, methods in openapi.document(__version__)["paths"].items()
            },
            "docs": "/openapi.json",
            "dashboard": "/ui/",
        }
    )


async def get_openapi() -> Response:
    return http.json_response(openapi.document(__version__))


_UI_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
}
# everything the page loads comes from this bus; no inline script (connect-src: /ws and REST)
_UI_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self' ws: wss:; img-src 'self' data:"
)


async def get_ui(name: str) -> Response:
    """The dashboard: a static page and its script, shipped in the package (no build step, no
    CDN, nothing loaded from elsewhere)."""
    content_type = _UI_FILES[name]
    body = resources.files("ipt_bus.edge").joinpath(f"ui/{name}").read_bytes()
    return Response(
        body,
        200,
        {
            "Content-Type": content_type,
            "Cache-Control": "no-cache",
            "Content-Security-Policy": _UI_POLICY,
        },
    )


async def get_health() -> Response:
    bus = current_app.bus  # type: ignore[attr-defined]  # BusApp's
    if bus is None or bus.shutting_down.is_set():
        return http.json_response(
            {"status": "down", "checks": {"bus": "not running or shutting down"}}, 503
        )
    checks: dict[str, str] = {}
    started = time.monotonic()
    with trio.move_on_after(1.0):
        await bus.stats.snapshot()
        checks["stats"] = "ok"
    checks.setdefault("stats", "slow: no answer within 1 s")
    checks["router"] = "ok" if not bus.router.saturated() else "saturated: publishers wait"
    problem = bus.log.problem()
    checks["log"] = problem or "ok"
    status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
    # a node whose log takes no writes is out of service for a load balancer; reads still work
    return http.json_response(
        {
            "status": status,
            "checks": checks,
            "epoch": bus.log.epoch,
            "last_seq": bus.log.last_seq,
            "checked_in_ms": round((time.monotonic() - started) * 1000, 3),
        },
        200 if problem is None else 503,
    )


# --- dead letters ---------------------------------------------------------------------------------


async def get_dead_letters() -> Response:
    bus = _bus()
    _identity(bus, admin=True)
    query = _query()
    http.only(query, ("limit", "after"))
    limit = http.int_param(query, "limit", minimum=1, maximum=bus.config.max_query_limit) or 100
    after = http.int_param(query, "after", minimum=0) or 0
    letters = bus.dead_letters.list(after=after, limit=limit, max_bytes=DLQ_PAGE_BYTES)
    body: dict[str, Any] = {
        "dead_letters": [_letter_json(d) for d in letters],
        "count": len(letters),
        "total": bus.dead_letters.stats()["size"],
    }
    if letters:
        body["next"] = letters[-1].id
    return http.json_response(body)


async def retry_dead_letter(letter_id: int) -> Response:
    bus = _bus()
    _identity(bus, admin=True)
    # a state change: JSON only, so a cross-site HTML form cannot trigger it
    http.require_json(request.mimetype)
    letter = bus.dead_letters.get(letter_id)
    if letter is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no dead letter {letter_id}", "id")
    origin = Origin("dlq", _remote(request.scope), retrying=letter_id)  # an admin's: trusted
    body = await publish_raw(bus, origin, letter.raw.encode(), None)
    return http.json_response(body, 201)


async def delete_dead_letter(letter_id: int) -> Response:
    bus = _bus()
    _identity(bus, admin=True)
    if not bus.dead_letters.remove(letter_id, why="deleted"):
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no dead letter {letter_id}", "id")
    return Response(b"", status=204)


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "at": http.iso(letter.at),
        "source": letter.source,
        "error": {"code": letter.code, "message": letter.message, "field": letter.field},
        "attempts": letter.attempts,
        "raw": letter.raw,
    }


# --- errors and wiring ----------------------------------------------------------------------------


async def ws_without_upgrade() -> Response:
    return http.error_response(
        ErrorCode.UPGRADE_REQUIRED,
        "/ws is a WebSocket endpoint: connect with a WebSocket client "
        "(e.g. wscat -c ws://HOST:PORT/ws)",
        426,
        headers={"Upgrade": "websocket", "Connection": "Upgrade"},
    )


async def _answered_before_quart() -> Response:  # pragma: no cover - BusApp answers first
    raise AssertionError("POST /events is answered by rest.post_events")


_HTTP_CODES: Final = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    408: ErrorCode.REQUEST_TIMEOUT,
    413: ErrorCode.TOO_LARGE,
}


async def http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, ErrorCode.HTTP_ERROR)
    message = exc.description or exc.name
    if status == 413:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        message = f"request body is larger than {limit} bytes (max_body_bytes)"
    elif status == 408:
        limit = current_app.config["BODY_TIMEOUT"]
        message = f"the request body did not arrive within {limit} s (body_timeout_seconds)"
    elif status == 404:
        message = f"no such endpoint: {request.path}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    headers = dict(exc.get_headers()) if status == 405 else None
    if headers is not None:
        headers.pop("Content-Type", None)
    return http.error_response(code, message, status, headers=headers)


async def bus_error(exc: BusError) -> Response:
    status, body, headers = http.error_parts(exc)  # the mapping WebSocket error frames use
    return http.json_response(body, status, headers or None)


async def internal_error(exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return http.error_response(ErrorCode.INTERNAL, "internal error (logged on the server)", 500)


def register(app: QuartTrio) -> None:
    """The Quart routes and error handlers (`POST /events` is answered before Quart)."""
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(BusError, bus_error)
    app.register_error_handler(Exception, internal_error)
    app.add_url_rule(
        "/ws", view_func=ws_without_upgrade, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]
    )
    app.add_url_rule("/events", view_func=get_events, methods=["GET"])
    # answered before Quart (BusApp); listed so that a 405's `Allow` and OPTIONS name POST
    app.add_url_rule("/events", "post_events", view_func=_answered_before_quart, methods=["POST"])
    app.add_url_rule("/broadcast", view_func=post_broadcast, methods=["POST"])
    app.add_url_rule("/topics", view_func=get_topics, methods=["GET"])
    app.add_url_rule("/schemas", view_func=get_schemas, methods=["GET"])
    app.add_url_rule("/stats", view_func=get_stats, methods=["GET"])
    app.add_url_rule("/metrics", view_func=get_metrics, methods=["GET"])
    app.add_url_rule("/connections", view_func=get_connections, methods=["GET"])
    app.add_url_rule("/health", view_func=get_health, methods=["GET"])
    app.add_url_rule("/", view_func=get_index, methods=["GET"])
    app.add_url_rule("/openapi.json", view_func=get_openapi, methods=["GET"])
    app.add_url_rule("/ui/", view_func=get_ui, methods=["GET"], defaults={"name": "index.html"})
    app.add_url_rule(
        "/ui/app.js", "ui_script", view_func=get_ui, methods=["GET"], defaults={"name": "app.js"}
    )
    app.add_url_rule("/dlq", view_func=get_dead_letters, methods=["GET"])
    app.add_url_rule("/dlq/<int:letter_id>/retry", view_func=retry_dead_letter, methods=["POST"])
    app.add_url_rule("/dlq/<int:letter_id>", view_func=delete_dead_letter, methods=["DELETE"])

"""HTTP helpers of the edge: JSON answers, the one error shape, request bodies, query strings.

Every HTTP error is ``{"error": {"code", "message", "field"?}}`` with the status the error table
(`ipt_bus.core.errors`) gives its code; never an HTML page or a stack trace.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import trio
from quart import Response

from ipt_bus.core import codec
from ipt_bus.core.auth import AuthError
from ipt_bus.core.errors import (
    BusClosed,
    BusError,
    ErrorCode,
    LimitExceeded,
    Overloaded,
    ProtocolError,
    RateLimited,
    as_protocol_error,
    http_status,
)
from ipt_bus.core.topics import parse_patterns
from ipt_bus.storage.base import Query

JSON: Final = "application/json"
JSON_HEADERS: Final = [(b"content-type", JSON.encode())]
DISCARD_BYTES: Final = 1 << 20  # read past an early answer at most this much ...
DISCARD_SECONDS: Final = 1.0  # ... for at most this long

# --- answers ------------------------------------------------------------------------------------


def error_body(code: ErrorCode | str, message: str, field: str | None = None) -> bytes:
    """The one shape of every HTTP error: ``{"error": {"code", "message", "field"?}}``."""
    err: dict[str, Any] = {"code": str(code), "message": message}
    if field is not None:
        err["field"] = field
    return codec.dumps({"error": err})


def error_parts(exc: BusError) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers of the answer to `exc` (the mapping WS error frames use)."""
    err = as_protocol_error(exc)
    status = http_status(err.code)
    headers: dict[str, str] = {}
    if status in (429, 503):
        retry = exc.retry_after_seconds if isinstance(exc, Overloaded | RateLimited) else 1
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    elif status == 401:  # RFC 6750 §3: no error attribute when no token came at all
        missing = isinstance(exc, AuthError) and exc.missing
        headers["WWW-Authenticate"] = (
            'Bearer realm="ipt-bus"' if missing else 'Bearer realm="ipt-bus", error="invalid_token"'
        )
    return status, error_body(err.code, err.message, err.field), headers


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


async def send_answer(
    send: Any,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    websocket: bool = False,
) -> None:
    """A whole JSON answer on a raw ASGI `send` (the routes that bypass Quart); with
    `websocket`, the answer that refuses a WebSocket handshake."""
    kind = "websocket.http.response" if websocket else "http.response"
    await send(
        {
            "type": f"{kind}.start",
            "status": status,
            "headers": [
                *JSON_HEADERS,
                (b"content-length", str(len(body)).encode()),
                *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": f"{kind}.body", "body": body})


def iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


# --- request bodies -------------------------------------------------------------------------------


def require_json(mimetype: str | None) -> None:
    """Bodies are JSON: anything else is 415 naming `application/json`."""
    if mimetype != JSON:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type must be {JSON}, got {mimetype or 'none'!r}",
            "Content-Type",
        )


@attrs.define
class Body:
    """A request body as it arrives on a raw ASGI `receive`, and whether all of it came."""

    _receive: Any
    ended: bool = False

    async def next_chunk(self) -> bytes:
        message = await self._receive()
        if message["type"] != "http.request":  # the client went away
            self.ended = True
            raise BusClosed("the client disconnected before sending the body")
        self.ended = not message.get("more_body", False)
        return bytes(message.get("body", b""))

    async def read(self, max_bytes: int, timeout: float) -> bytes:
        """All of it, at most `max_bytes` within `timeout` seconds (413 / 408 otherwise)."""
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(timeout):
            while not self.ended:
                chunk = await self.next_chunk()
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes)
                chunks.append(chunk)
            return b"".join(chunks)
        raise ProtocolError(
            ErrorCode.REQUEST_TIMEOUT,
            f"the request body did not arrive within {timeout:g} s (body_timeout_seconds)",
        )

    async def discard_rest(self) -> None:
        """Read (a bounded amount of) what the client is still sending before answering early.

        Closing a socket with unread data makes the kernel reset the connection, and a client
        that is still sending then loses the answer (a 413 it never sees). Past the bound the
        answer is sent anyway and the connection closed.
        """
        left = DISCARD_BYTES
        with trio.move_on_after(DISCARD_SECONDS):
            while not self.ended and left > 0:
                try:
                    left -= len(await self.next_chunk())
                except BusClosed:
                    return


def too_large(limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"request body is larger than {limit} bytes (max_body_bytes)", too_large=True
    )


def body_read_before_answer(receive: Any, send: Any) -> tuple[Any, Any]:
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


# --- query strings --------------------------------------------------------------------------------

Params = dict[str, list[str]]


def only(query: Params, allowed: tuple[str, ...]) -> None:
    """Refuse a parameter the route does not take (400 naming it)."""
    unknown = set(query) - set(allowed)
    if unknown:
        name = sorted(unknown)[0]
        raise ProtocolError(
            ErrorCode.INVALID_QUERY,
            f"unknown query parameter {name!r}; allowed: {', '.join(allowed)}",
            name,
        )


def last(query: Params, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


INT64_MAX: Final = 2**63 - 1  # what SQLite (and islice) take; larger is a 400, not a 500


def int_param(query: Params, name: str, *, minimum: int, maximum: int | None = None) -> int | None:
    raw = last(query, name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ProtocolError(
            ErrorCode.INVALID_QUERY, f"{name} must be an integer, got {raw[:32]!r}", name
        ) from None
    top = INT64_MAX if maximum is None else maximum
    if not minimum <= value <= top:
        raise ProtocolError(
            ErrorCode.INVALID_QUERY, f"{name} must be between {minimum} and {top}", name
        )
    return value


def time_param(query: Params, name: str) -> float | None:
    """ISO-8601 (``2026-11-27T10:00:00Z``; no zone means UTC) or Unix seconds."""
    raw = last(query, name)
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


def event_query(query: Params) -> Query:
    """The filters of `GET /events`: topic patterns, types, correlation id, time range."""
    patterns: list[str] = []
    for raw in query.get("topic", []):
        patterns.extend(parse_patterns(raw, "topic"))
    types = [t for raw in query.get("type", []) for t in raw.split(",") if t]
    return Query(
        patterns=tuple(dict.fromkeys(patterns)),
        types=tuple(dict.fromkeys(types)),
        correlation_id=last(query, "correlation_id") or None,
        time_from=time_param(query, "from"),
        time_to=time_param(query, "to"),
    )

"""What the sync and async clients share: where the bus is, errors, the wire, the retry rule.

The retry rule: a publish is retried only when the bus said it did not take it (503, 507,
transport errors before an answer), and every publish carries an idempotency key, so a retry
after an answer that got lost can never store the event twice.
"""

from __future__ import annotations

import os
import random
import ssl
import uuid
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final

import jwt
import orjson

from ipt_bus.core.codec import event_from_bus as event_from_bus
from ipt_bus.core.codec import event_to_wire
from ipt_bus.core.config import DEFAULT_PORT
from ipt_bus.core.errors import (
    RETRYABLE,
    BusUnavailable,
    PublishRejected,
    RequestRefused,
    http_status,
)
from ipt_bus.core.model import Event, Published

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

DEFAULT_URL: Final = f"http://127.0.0.1:{DEFAULT_PORT}"
# what the bus answers when it did not take the events, and a proxy's "the bus is not there"
RETRY_STATUSES: Final = frozenset({http_status(c) for c in RETRYABLE} | {502, 504})


TokenSource = str | Callable[[], str] | None
"""A token, or a callable that returns a fresh one (called on each connection and request)."""
Verify = ssl.SSLContext | str | bool
"""TLS: True (the system's CAs), a CA bundle's path, an `ssl.SSLContext`, or False (no check)."""


def token_source(token: TokenSource) -> TokenSource:
    """`token`, else ``$IPT_BUS_TOKEN``, else none."""
    return token if token is not None else os.environ.get("IPT_BUS_TOKEN") or None


def current_token(token: TokenSource) -> str | None:
    return token() if callable(token) else token


def auth_headers(token: TokenSource) -> dict[str, str]:
    value = current_token(token)
    return {"Authorization": f"Bearer {value}"} if value else {}


def expires_at(token: str) -> float | None:
    """When a token expires (Unix seconds), read without checking it (the bus checks)."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return float(exp) if isinstance(exp, int | float) else None


def ssl_context(verify: Verify) -> ssl.SSLContext:
    """An SSL context for `verify` (`http.client` takes only contexts; httpx deprecates paths)."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)


def bus_url(url: str | None = None) -> str:
    """`url`, else ``$IPT_BUS_URL``, else the default; always without a trailing slash."""
    return (url or os.environ.get("IPT_BUS_URL") or DEFAULT_URL).rstrip("/")


def ws_url(url: str, query: dict[str, str]) -> str:
    base = url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{base}/ws" + (f"?{params}" if params else "")


def event_body(event: Event) -> dict[str, Any]:
    """The JSON object a publisher sends (the bus sets `id` and `seq`, and ignores them here)."""
    return event_to_wire(event)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC)


def new_key() -> str:
    return uuid.uuid4().hex


def publish_request(events: Event | Sequence[Event]) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a `POST /events` (one event or an array), with a fresh key."""
    if isinstance(events, Event):
        body = dumps(event_body(events))
    else:
        body = dumps([event_body(e) for e in events])
    return body, {"Content-Type": "application/json", "Idempotency-Key": new_key()}


def published(status: int, content: bytes) -> list[Published] | None:
    """The answer of a `POST /events`: where the events went, or None to retry (the bus did
    not take them: overloaded, storage, rate limit).

    Raises:
        PublishRejected: a 4xx answer (the error's code, message and field).
    """
    if status == 201:
        body = orjson.loads(content)
        items = [body] if "seq" in body else body["events"]
        return [Published(p["id"], p["seq"]) for p in items]
    if status in RETRY_STATUSES:
        return None
    raise rejected(status, content)


def rejected(status: int, content: bytes) -> PublishRejected:
    try:
        err = orjson.loads(content)["error"]
        return PublishRejected(err["code"], err["message"], err.get("field"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return PublishRejected(f"http_{status}", content[:200].decode("utf-8", "replace"))


def refused(status: int, content: bytes) -> RequestRefused | None:
    """A 4xx answer that retrying will not change, as an error (else None: retry)."""
    if status < 400 or status >= 500 or status in (408, 429):
        return None
    try:
        err = orjson.loads(content)["error"]
        return RequestRefused(status, err["code"], err["message"], err.get("field"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        code = _REFUSALS.get(status, f"http_{status}")
        text = content[:200].decode("utf-8", "replace") or f"HTTP {status}"
        return RequestRefused(status, code, text)


_REFUSALS: Final = {401: "unauthorized", 403: "forbidden", 421: "host_not_allowed"}


def backoff(attempt: int, base: float = 0.1, cap: float = 2.0, *, at_least: float = 0.0) -> float:
    """Seconds before retry number `attempt` (0-based): "full jitter", anywhere up to 0.1, 0.2,
    0.4, ... at most `cap`, so clients cut off together do not come back together; never less
    than `at_least` (the bus's `Retry-After`)."""
    return max(at_least, random.uniform(0.0, min(cap, base * 2**attempt)))


def retry_after(value: str | None, *, now: float) -> float:
    """A `Retry-After` header in seconds (delta-seconds or an HTTP date); 0 when absent or
    unreadable; at most 60 (one retry never waits longer)."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return 0.0
    return min(60.0, max(0.0, seconds))


def unreachable(url: str, why: object) -> BusUnavailable:
    return BusUnavailable(
        f"cannot reach the bus at {url} ({why}); is `ipt-bus serve` running there? "
        "Set IPT_BUS_URL (or --url / url=) to point elsewhere"
    )


def unavailable(url: str, attempts: int, last: object) -> BusUnavailable:
    return BusUnavailable(
        f"the bus at {url} did not take the publish after {attempts} attempts ({last}); "
        "is `ipt-bus serve` running there? Set IPT_BUS_URL or pass url= to point elsewhere"
    )


def frames(message: str | bytes) -> Iterable[dict[str, Any]]:
    """The JSON frames of one WebSocket message (batch mode puts several, one per line)."""
    if isinstance(message, str):
        message = message.encode()
    if b"\n" not in message:
        yield orjson.loads(message)
        return
    for line in message.split(b"\n"):
        if line:
            yield orjson.loads(line)

"""Every error ipt_bus raises or sends, and the one table of close codes.

Exception tree::

    BusError
    ├── ProtocolError          bad input: has a wire `code`, a `message`, and the `field` at fault
    │   ├── LimitExceeded      input over a configured limit (the message names the limit)
    │   └── RateLimited        more events than the identity's rate limit (retry after)
    ├── Overloaded             the bus could not take the work before the deadline
    ├── BusClosed              we closed it (shutdown); retrying elsewhere may help
    ├── BusBroken              a peer or the storage broke it
    │   └── StorageError
    │       ├── StorageFull    the disk (or the configured size cap) is full; reads still work
    │       └── StorageOpenError  the log cannot be opened at start (names the file)
    ├── StartupError           the bus cannot start as configured (StorageOpenError is one)
    └── ClientError            raised by the Python client (`ipt_bus.client`)
        ├── PublishRejected    the bus refused the events: its error's code, message and field
        ├── BusUnavailable     the bus could not be reached, or stayed overloaded, through retries
        └── HistoryLost        on resume, the bus no longer had every event after the last seq

One table for both sides: `ErrorCode` (the `code` of error frames and REST error bodies, listed
in docs/protocol.md), `HTTP_STATUS` (the status each code is answered with), `RETRYABLE` (what a
client may retry) and `CloseCode`.
"""

from __future__ import annotations

import enum
from typing import Any, Final


class ErrorCode(enum.StrEnum):
    """Codes of `error` frames and REST error bodies."""

    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    INVALID_FIELD = "invalid_field"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_TOPIC = "invalid_topic"
    INVALID_PATTERN = "invalid_pattern"
    UNKNOWN_ACTION = "unknown_action"
    UNSUPPORTED_FRAME = "unsupported_frame"
    TOO_LARGE = "too_large"
    LIMIT_EXCEEDED = "limit_exceeded"
    INVALID_QUERY = "invalid_query"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    OVERLOADED = "overloaded"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    STORAGE_FULL = "storage_full"
    SHUTTING_DOWN = "shutting_down"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    HOST_NOT_ALLOWED = "host_not_allowed"
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    UPGRADE_REQUIRED = "upgrade_required"
    HTTP_ERROR = "http_error"  # an HTTP error with no code of its own
    INTERNAL = "internal_error"


class CloseCode(enum.IntEnum):
    """WebSocket close codes (DESIGN §3); RFC 6455 ones plus 4008."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutdown
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007  # invalid UTF-8
    POLICY_VIOLATION = 1008  # origin, auth
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # a shared log started over (new epoch): reconnect and resume
    TOKEN_EXPIRED = 4001
    SLOW_CONSUMER = 4008


class BusError(Exception):
    """Base of every ipt_bus error."""


class ProtocolError(BusError):
    """Input that breaks the protocol or the event schema.

    Sent back as an error frame / 4xx body; never closes the connection.
    """

    code: ErrorCode
    message: str
    field: str | None

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def to_wire(self) -> dict[str, str]:
        body = {"code": str(self.code), "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!s}, {self.message!r}, field={self.field!r})"


class LimitExceeded(ProtocolError):
    """Input over a configured limit; `message` names the limit and its value."""

    def __init__(self, message: str, field: str | None = None, *, too_large: bool = False) -> None:
        code = ErrorCode.TOO_LARGE if too_large else ErrorCode.LIMIT_EXCEEDED
        super().__init__(code, message, field)


class RateLimited(ProtocolError):
    """More events than the identity's rate limit allows; retry after `retry_after_seconds`."""

    def __init__(self, message: str, retry_after_seconds: float, field: str | None = None) -> None:
        super().__init__(ErrorCode.RATE_LIMITED, message, field)
        self.retry_after_seconds = retry_after_seconds


class Overloaded(BusError):
    """The bus did not take the work before the deadline; retry after `retry_after_seconds`."""

    def __init__(
        self, message: str, retry_after_seconds: float = 1.0, *, maybe_published: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        self.maybe_published = maybe_published  # False: provably not in the log


class BusClosed(BusError):
    """The bus is shutting down or closed."""


class BusBroken(BusError):
    """A peer or the storage broke the operation."""


class StorageError(BusBroken):
    """The event log failed."""


class StorageFull(StorageError):
    """No space to store the events: nothing was stored; it recovers once space returns."""


class StartupError(BusError):
    """The bus cannot start as configured; the message names what and why."""


class StorageOpenError(StorageError, StartupError):
    """The log cannot be opened; the message names the file and what to do."""


class ClientError(BusError):
    """Base of the Python client's errors."""


class PublishRejected(ClientError):
    """The bus refused the events (bad input, or a limit): retrying the same will not help."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        where = f" (field {field!r})" if field else ""
        super().__init__(f"the bus rejected the publish: {code}: {message}{where}")
        self.code = code
        self.message = message
        self.field = field


class RequestRefused(ClientError):
    """The bus refused a connection or a request for good (no valid token, not permitted, a
    Host it does not serve): retrying the same will not help. `status` is the HTTP status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        where = f" (field {field!r})" if field else ""
        super().__init__(f"the bus refused the request: {code}: {message}{where}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class BusUnavailable(ClientError):
    """The bus could not be reached, or stayed overloaded, through every retry."""


class HistoryLost(ClientError):
    """On resume, the bus no longer had every event after the client's last `seq`.

    `gap.reason` is ``retention`` (events `from_seq`..`to_seq` were removed) or ``epoch`` (the
    bus's log started over: `seq` numbering is new). Register `EventBusClient.on_gap` to be told
    and carry on instead of having the listener raise this.
    """

    def __init__(self, gap: Any) -> None:  # a `frames.Gap` (errors imports nothing)
        to_seq = gap.to_seq
        span = f"{gap.from_seq}..{to_seq}" if to_seq is not None else f"{gap.from_seq}.."
        super().__init__(f"events {span} are no longer in the bus's log ({gap.reason})")
        self.gap = gap


def as_protocol_error(exc: BusError) -> ProtocolError:
    """What a client is told of `exc`: its own `ProtocolError`, or one with the matching code."""
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, Overloaded):
        return ProtocolError(ErrorCode.OVERLOADED, str(exc))
    if isinstance(exc, BusClosed):
        return ProtocolError(ErrorCode.SHUTTING_DOWN, str(exc))
    if isinstance(exc, StorageFull):
        return ProtocolError(ErrorCode.STORAGE_FULL, f"the event log is full: {exc}")
    if isinstance(exc, StorageError):
        return ProtocolError(ErrorCode.STORAGE_UNAVAILABLE, f"the event log failed: {exc}")
    return ProtocolError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


RETRYABLE: Final = frozenset(
    {
        ErrorCode.OVERLOADED,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.STORAGE_UNAVAILABLE,
        ErrorCode.STORAGE_FULL,
        ErrorCode.RATE_LIMITED,
    }
)
"""Codes of refusals that may succeed when retried (the bus did not take the events)."""

HTTP_STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
    ErrorCode.STORAGE_FULL: 507,
    ErrorCode.ORIGIN_NOT_ALLOWED: 403,
    ErrorCode.HOST_NOT_ALLOWED: 421,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UPGRADE_REQUIRED: 426,
    ErrorCode.INTERNAL: 500,
}


def http_status(code: ErrorCode) -> int:
    """The HTTP status a REST error with `code` is answered with (400 unless listed)."""
    return HTTP_STATUS.get(code, 400)

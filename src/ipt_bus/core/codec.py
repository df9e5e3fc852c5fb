"""The bus's one strict JSON codec and its one cattrs converter.

orjson parses and encodes (measured faster than msgspec at encoding, equal at decoding; see
docs/performance.md). It is strict about NaN, BOM, lone surrogates, trailing data and nesting
deeper than 1024, but turns integers past 64 bits into floats: `loads` catches those with a cheap
digit-run check and re-parses only such documents exactly, to name the field. Duplicate keys: the
last one wins (documented in docs/protocol.md).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Final, assert_never

import attrs
import cattrs
import orjson
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from ipt_bus.core.errors import ErrorCode, LimitExceeded, ProtocolError
from ipt_bus.core.frames import (
    CLIENT_ACTIONS,
    Acked,
    Authenticated,
    ClientFrame,
    ErrorFrame,
    Gap,
    GapReason,
    Pong,
    Publish,
    RequestId,
    ServerFrame,
    Subscriptions,
    Welcome,
)
from ipt_bus.core.model import Event, Published
from ipt_bus.core.topics import validate_topic

MAX_TYPE_CHARS: Final = 128
MAX_LABEL_CHARS: Final = 256  # source, correlation_id
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
# Digits to "0", everything else to " ": then a run of 19 digits is a plain substring search.
# (A regex scan costs ~15x more: 527 us against 33 us on a 41 KB body.)
_DIGITS_ONLY: Final = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_RUN: Final = b"0" * 19
_EVENT_FIELDS: Final = frozenset(
    {"type", "topic", "payload", "timestamp", "source", "correlation_id", "id", "seq"}
)


def loads(raw: bytes | str, field: str | None = None) -> Any:
    """Parse one JSON document strictly; `ProtocolError(invalid_json)` on anything else."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"malformed JSON: {exc}", field) from None
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _LONG_RUN in data.translate(_DIGITS_ONLY):
        _check_integers(json.loads(data), field or "$")
    return value


def _check_integers(value: Any, path: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, "integer does not fit in 64 bits", _field_name(path)
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_integers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_integers(v, f"{path}[{i}]")


def _field_name(path: str) -> str:
    return path[2:] if path.startswith("$.") else path


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


# --- events --------------------------------------------------------------------------------


def decode_event(obj: Any, field: str = "", *, max_bytes: int | None = None) -> Event:
    """Validate a publisher's event object into an `Event` (DESIGN §2).

    `id` and `seq` are ignored (the bus sets them); other unknown keys are rejected. When
    `max_bytes` is given the encoded event is measured against it. Errors name the field,
    prefixed with `field` (e.g. ``events[3].topic``).
    """
    prefix = f"{field}." if field else ""
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.INVALID_FRAME, "an event must be a JSON object", field or None
        )
    if not _EVENT_FIELDS.issuperset(obj):
        name = sorted(obj.keys() - _EVENT_FIELDS)[0]
        raise ProtocolError(
            ErrorCode.UNKNOWN_FIELD,
            f"unknown event field {name!r}; allowed: type, topic, payload, timestamp, source, "
            "correlation_id",
            prefix + name,
        )
    type_ = obj.get("type")
    if type_ is None:
        raise ProtocolError(ErrorCode.MISSING_FIELD, "event needs a 'type'", prefix + "type")
    if not isinstance(type_, str) or not 1 <= len(type_) <= MAX_TYPE_CHARS:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"'type' must be a string of 1 to {MAX_TYPE_CHARS} characters",
            prefix + "type",
        )
    topic = obj.get("topic")
    if topic is None:
        raise ProtocolError(ErrorCode.MISSING_FIELD, "event needs a 'topic'", prefix + "topic")
    validate_topic(topic, prefix + "topic")
    if "payload" not in obj:
        raise ProtocolError(
            ErrorCode.MISSING_FIELD,
            "event needs a 'payload' object (may be {})",
            prefix + "payload",
        )
    payload = obj["payload"]
    if not isinstance(payload, dict):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, "'payload' must be a JSON object", prefix + "payload"
        )
    timestamp = _timestamp(obj.get("timestamp"), prefix + "timestamp")
    source = _label(obj.get("source"), prefix + "source")
    correlation_id = _label(obj.get("correlation_id"), prefix + "correlation_id")
    event = Event(
        type=type_,
        topic=topic,
        payload=payload,
        timestamp=timestamp,
        source=source,
        correlation_id=correlation_id,
    )
    if max_bytes is not None and len(encode_event(event)) > max_bytes:
        raise LimitExceeded(
            f"event is larger than the limit of {max_bytes} bytes (max_event_bytes)",
            field or None,
            too_large=True,
        )
    return event


def decode_batch(
    items: list[Any], field: str = "", *, max_events: int, max_bytes: int | None = None
) -> list[Event]:
    """A batch of events, all or nothing: the first bad one's error names its index
    (``events[3].topic`` for `field` ``events``, ``[3].topic`` for a bare JSON array)."""
    if not items:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "the batch of events is empty", field or None)
    if len(items) > max_events:
        raise LimitExceeded(
            f"more than {max_events} events in one publish (max_batch_events)", field or None
        )
    return [decode_event(e, f"{field}[{i}]", max_bytes=max_bytes) for i, e in enumerate(items)]


def _timestamp(value: Any, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, "'timestamp' must be an ISO-8601 string", field
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"'timestamp' is not ISO-8601: {value[:64]!r} (e.g. 2025-09-23T12:00:00Z)",
            field,
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"'timestamp' is out of range in UTC: {value[:64]!r} (years 1 to 9999)",
            field,
        ) from None


def _label(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_LABEL_CHARS:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"must be a string of at most {MAX_LABEL_CHARS} characters",
            field,
        )
    return value


def event_to_wire(event: Event) -> dict[str, Any]:
    """The JSON object for `event`; unset optional fields are left out."""
    out: dict[str, Any] = {"type": event.type, "topic": event.topic, "payload": event.payload}
    if event.timestamp is not None:
        out["timestamp"] = event.timestamp
    if event.source is not None:
        out["source"] = event.source
    if event.correlation_id is not None:
        out["correlation_id"] = event.correlation_id
    if event.id is not None:
        out["id"] = event.id
    if event.seq is not None:
        out["seq"] = event.seq
    return out


def encode_event(event: Event) -> bytes:
    return dumps(event_to_wire(event))


def encode_stored(
    event: Event, timestamp: datetime, ident: str | None = None, seq: int | None = None
) -> bytes:
    """`event` as a log stores it, with `timestamp` (the bus's, when the publisher gave none)
    and `id`/`seq` when given: the bytes `encode_event` gives the stamped event, without making
    one (a frozen `Event` costs more than the encode, once per event on the publish path)."""
    out: dict[str, Any] = {"type": event.type, "topic": event.topic, "payload": event.payload}
    out["timestamp"] = timestamp
    if event.source is not None:
        out["source"] = event.source
    if event.correlation_id is not None:
        out["correlation_id"] = event.correlation_id
    if ident is not None:
        out["id"] = ident
        out["seq"] = seq
    return dumps(out)


def event_from_bus(obj: dict[str, Any]) -> Event:
    """An event as the bus sent it (already validated there): built directly, fast."""
    ts = obj.get("timestamp")
    return Event(
        type=obj["type"],
        topic=obj["topic"],
        payload=obj["payload"],
        timestamp=datetime.fromisoformat(ts) if ts else None,
        source=obj.get("source"),
        correlation_id=obj.get("correlation_id"),
        id=obj.get("id"),
        seq=obj.get("seq"),
    )


# --- control frames ------------------------------------------------------------------------


def _strict(kind: type, name: str) -> Any:
    def hook(value: Any, _: Any) -> Any:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"expected {name}")
        return value

    return hook


def _str_list(value: Any, _: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return value


def _request_id(value: Any, _: Any) -> RequestId:
    if (
        value is None
        or isinstance(value, str)
        or (isinstance(value, int) and not isinstance(value, bool))
    ):
        return value
    raise TypeError("expected a string or an integer")


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))
    conv.register_structure_hook(int, _strict(int, "an integer"))
    exact = {
        list[str]: _str_list,
        RequestId: _request_id,
        bool | None: lambda v, _: _optional(v, bool, "true or false"),
        dict[str, Any] | None: lambda v, _: _optional(v, dict, "an object"),
        list[Any] | None: lambda v, _: _optional(v, list, "a list"),
    }
    for kind, hook in exact.items():
        conv.register_structure_hook_func(_is(kind), hook)
    return conv


def _is(kind: Any) -> Any:
    return lambda t: t == kind


def _optional(value: Any, kind: type, name: str) -> Any:
    if value is None or isinstance(value, kind):
        return value
    raise TypeError(f"expected {name}")


converter: Final = _make_converter()


def _translate(exc: Exception) -> ProtocolError:
    """Turn a cattrs validation error into a `ProtocolError` naming the first bad field."""
    if isinstance(exc, ClassValidationError):
        for sub in exc.exceptions:
            notes = getattr(sub, "__notes__", [])
            name = next(
                (n.name for n in notes if hasattr(n, "name")),
                None,
            )
            if isinstance(sub, ForbiddenExtraKeysError):
                field = sorted(sub.extra_fields)[0]
                return ProtocolError(ErrorCode.UNKNOWN_FIELD, f"unknown field {field!r}", field)
            if isinstance(sub, KeyError):
                return ProtocolError(ErrorCode.MISSING_FIELD, f"missing field {name!r}", name)
            return ProtocolError(ErrorCode.INVALID_FIELD, f"{name!r}: {sub}", name)
    return ProtocolError(ErrorCode.INVALID_FRAME, str(exc))


def decode_client_frame(raw: str | bytes) -> ClientFrame:
    """Parse a client's text frame into an action.

    A JSON object without ``action`` is an event to publish (DESIGN §3: a frame without an
    action is an event, in both directions).
    """
    obj = loads(raw)
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_FRAME, "a frame must be a JSON object")
    if "action" not in obj:
        if "topic" not in obj and "data" in obj:
            return Publish(event=legacy_event(obj))
        return Publish(event=obj)
    action = obj.pop("action")
    if action == "publish" and obj.keys() <= _PUBLISH_KEYS:
        fast = _publish_fast(obj)
        if fast is not None:
            return fast
    cls = CLIENT_ACTIONS.get(action) if isinstance(action, str) else None
    if cls is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_ACTION,
            f"unknown action {action!r}; expected one of: {', '.join(CLIENT_ACTIONS)}",
            "action",
        )
    try:
        frame: ClientFrame = converter.structure(obj, cls)
    except (ClassValidationError, ForbiddenExtraKeysError) as exc:
        raise _translate(exc) from None
    if isinstance(frame, Publish):
        if (frame.event is None) == (frame.events is None):
            raise ProtocolError(
                ErrorCode.MISSING_FIELD,
                "publish needs either 'event' (one object) or 'events' (a list)",
                "event",
            )
        if frame.idempotency_key is not None:
            check_idempotency_key(frame.idempotency_key, "idempotency_key")
    return frame


_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def legacy_event(obj: dict[str, Any]) -> dict[str, Any]:
    """An older message shape, ``{"type": T, "data": D}`` (no `action`, no `topic`), as an event
    on ``legacy.<T>`` (``legacy.broadcast`` when T is not a topic segment) with D as its payload
    (wrapped as ``{"data": D}`` when D is not an object). docs/integrations.md#legacy."""
    type_ = obj.get("type")
    data = obj.get("data")
    name = type_ if isinstance(type_, str) and _SEGMENT.fullmatch(type_) else None
    event: dict[str, Any] = {
        "type": type_ if isinstance(type_, str) and type_ else "broadcast",
        "topic": f"legacy.{name}" if name else "legacy.broadcast",
        "payload": data if isinstance(data, dict) else {"data": data},
    }
    for key in ("source", "correlation_id", "timestamp"):
        if key in obj:
            event[key] = obj[key]
    return event


MAX_IDEMPOTENCY_KEY_CHARS: Final = 256


def check_idempotency_key(key: str, field: str) -> str:
    """An idempotency key is 1-256 characters (a UUID is typical)."""
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters, got {len(key)}",
            field,
        )
    return key


_PUBLISH_KEYS: Final = frozenset({"event", "events", "id", "ack", "idempotency_key"})


def _publish_fast(obj: dict[str, Any]) -> Publish | None:
    """The hot path for well-formed publish frames; None sends it the strict way (errors)."""
    rid = obj.get("id")
    ack = obj.get("ack", True)
    event = obj.get("event")
    events = obj.get("events")
    key = obj.get("idempotency_key")
    if (
        (rid is None or type(rid) is str or type(rid) is int)
        and type(ack) is bool
        and ((type(event) is dict and events is None) or (event is None and type(events) is list))
        and (key is None or (type(key) is str and 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS))
    ):
        return Publish(event=event, events=events, id=rid, ack=ack, idempotency_key=key)
    return None


def request_id_of(raw: str | bytes) -> RequestId:
    """Best-effort `id` of a frame that failed to decode, so its error can echo it."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, str | int) and not isinstance(rid, bool) and "action" in obj:
            return rid
    return None


# --- server frames ------------------------------------------------------------------------


def frame_to_wire(frame: ServerFrame) -> dict[str, Any]:
    """The JSON object of a server frame (an `id` that is None is left out)."""
    out: dict[str, Any]
    match frame:
        case Welcome():
            out = {"action": "welcome", "version": frame.version, "node": frame.node}
            out |= {"epoch": frame.epoch, "seq": frame.seq, "limits": frame.limits}
            return out
        case Gap():
            out = {"action": "gap", "reason": str(frame.reason), "from_seq": frame.from_seq}
            out["to_seq"] = frame.to_seq
            if frame.epoch is not None:
                out["epoch"] = frame.epoch
            return out
        case Acked():
            out = {"action": "published"}
            if frame.batch:
                out["events"] = [{"id": p.id, "seq": p.seq} for p in frame.published]
            else:
                out["event"] = {"id": frame.published[0].id, "seq": frame.published[0].seq}
        case Subscriptions():
            out = {"action": "subscribed" if frame.subscribed else "unsubscribed"}
            out["topics"] = frame.topics
        case Pong():
            out = {"action": "pong"}
        case Authenticated():
            moment = datetime.fromtimestamp(frame.expires_at, UTC)
            out = {"action": "authenticated", "expires_at": moment}
        case ErrorFrame():
            err = {"code": frame.code, "message": frame.message}
            if frame.field is not None:
                err["field"] = frame.field
            out = {"action": "error", "error": err}
        case _:
            assert_never(frame)
    if frame.id is not None:
        out["id"] = frame.id
    return out


def encode_frame(frame: ServerFrame) -> bytes:
    """A server frame as it goes on the wire: UTF-8 JSON, like the events."""
    return dumps(frame_to_wire(frame))


def error_frame(rid: RequestId, exc: ProtocolError) -> ErrorFrame:
    return ErrorFrame(rid, str(exc.code), exc.message, exc.field)


_ACTION_OF: Final = {cls: action for action, cls in CLIENT_ACTIONS.items()}


def action_of(frame: ClientFrame) -> str:
    return _ACTION_OF[type(frame)]


def encode_client_frame(frame: ClientFrame) -> str:
    """A client's action as it goes on the wire (the Python client); unset fields left out."""
    out: dict[str, Any] = {"action": action_of(frame)}
    out |= {k: v for k, v in attrs.asdict(frame, recurse=False).items() if v is not None}
    if isinstance(frame, Publish) and frame.ack:
        del out["ack"]  # the default
    return dumps(out).decode()


def decode_server_frame(obj: dict[str, Any]) -> ServerFrame | None:
    """A frame the bus sent, read back into its type (the Python client); None for an action
    this version does not know (a newer bus), which a client skips."""
    action = obj.get("action")
    rid = obj.get("id")
    match action:
        case "welcome":
            return Welcome(obj["version"], obj["node"], obj["epoch"], obj["seq"], obj["limits"])
        case "gap":
            reason = GapReason(obj["reason"])
            return Gap(reason, obj["from_seq"], obj.get("to_seq"), obj.get("epoch"))
        case "published":
            items = [obj["event"]] if "event" in obj else obj["events"]
            published = [Published(p["id"], p["seq"]) for p in items]
            return Acked(rid, published, "event" not in obj)
        case "subscribed" | "unsubscribed":
            return Subscriptions(rid, list(obj["topics"]), action == "subscribed")
        case "pong":
            return Pong(rid)
        case "authenticated":
            return Authenticated(rid, datetime.fromisoformat(obj["expires_at"]).timestamp())
        case "error":
            err = obj["error"]
            return ErrorFrame(rid, err["code"], err["message"], err.get("field"))
    return None

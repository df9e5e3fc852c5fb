from __future__ import annotations

from datetime import UTC, datetime

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipt_bus.core import codec
from ipt_bus.core.errors import ErrorCode, ProtocolError
from ipt_bus.core.frames import Ping, Publish, Subscribe, Unsubscribe
from ipt_bus.core.model import Event

SPEC_TASK_EVENT = {
    "type": "task_status_changed",
    "topic": "task.status",
    "payload": {"task_id": "task-123", "status": "running", "metadata": {"user": "system"}},
    "timestamp": "2025-09-23T12:00:00Z",
    "source": "executor",
    "correlation_id": "req-456",
}


def test_decode_spec_event() -> None:
    event = codec.decode_event(SPEC_TASK_EVENT)
    assert event.topic == "task.status"
    assert event.timestamp == datetime(2025, 9, 23, 12, tzinfo=UTC)
    assert event.correlation_id == "req-456"
    assert codec.loads(codec.encode_event(event))["timestamp"] == "2025-09-23T12:00:00Z"


def test_ids_from_publishers_are_ignored() -> None:
    event = codec.decode_event({**SPEC_TASK_EVENT, "id": "mine", "seq": 99})
    assert event.id is None
    assert event.seq is None


def test_offsets_become_utc() -> None:
    event = codec.decode_event({**SPEC_TASK_EVENT, "timestamp": "2025-09-23T14:00:00+02:00"})
    assert event.timestamp == datetime(2025, 9, 23, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"extra": 1}, ErrorCode.UNKNOWN_FIELD, "extra"),
        ({"type": None}, ErrorCode.MISSING_FIELD, "type"),
        ({"type": ""}, ErrorCode.INVALID_FIELD, "type"),
        ({"type": "x" * 129}, ErrorCode.INVALID_FIELD, "type"),
        ({"type": 5}, ErrorCode.INVALID_FIELD, "type"),
        ({"topic": None}, ErrorCode.MISSING_FIELD, "topic"),
        ({"topic": "a..b"}, ErrorCode.INVALID_TOPIC, "topic"),
        ({"topic": "task.*"}, ErrorCode.INVALID_TOPIC, "topic"),
        ({"payload": [1]}, ErrorCode.INVALID_FIELD, "payload"),
        ({"payload": "x"}, ErrorCode.INVALID_FIELD, "payload"),
        ({"timestamp": "yesterday"}, ErrorCode.INVALID_FIELD, "timestamp"),
        ({"timestamp": 5}, ErrorCode.INVALID_FIELD, "timestamp"),
        ({"timestamp": "0001-01-01T00:00:00+01:00"}, ErrorCode.INVALID_FIELD, "timestamp"),
        ({"timestamp": "9999-12-31T23:59:59-01:00"}, ErrorCode.INVALID_FIELD, "timestamp"),
        ({"source": 5}, ErrorCode.INVALID_FIELD, "source"),
        ({"correlation_id": "x" * 257}, ErrorCode.INVALID_FIELD, "correlation_id"),
    ],
)
def test_bad_event_names_the_field(change: dict[str, object], code: ErrorCode, field: str) -> None:
    obj = {**SPEC_TASK_EVENT, **change}
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(ProtocolError) as info:
        codec.decode_event(obj, "events[2]")
    assert info.value.code is code
    assert info.value.field == f"events[2].{field}"


def test_missing_payload_is_an_error() -> None:
    obj = {k: v for k, v in SPEC_TASK_EVENT.items() if k != "payload"}
    with pytest.raises(ProtocolError) as info:
        codec.decode_event(obj)
    assert (info.value.code, info.value.field) == (ErrorCode.MISSING_FIELD, "payload")


def test_event_size_limit() -> None:
    obj = {**SPEC_TASK_EVENT, "payload": {"blob": "x" * 2000}}
    with pytest.raises(ProtocolError) as info:
        codec.decode_event(obj, max_bytes=1000)
    assert info.value.code is ErrorCode.TOO_LARGE
    assert "1000 bytes" in info.value.message
    assert codec.decode_event(obj, max_bytes=3000).payload["blob"] == "x" * 2000


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"\xff\xfe",
        b'\xef\xbb\xbf{"a": 1}',
        b'{"a": 1} trailing',
        b'{"a": NaN}',
        b'{"a": "\\ud800"}',
        b"[" * 100_000 + b"]" * 100_000,
        b"1" + b"0" * 5000,
        b"",
    ],
)
def test_hostile_json_is_invalid_json(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.loads(raw)
    assert info.value.code in (ErrorCode.INVALID_JSON, ErrorCode.INVALID_FIELD)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"payload": {"n": 18446744073709551616}}', "payload.n"),
        (b'{"a": [1, -9223372036854775809]}', "a[1]"),
    ],
)
def test_integers_past_64_bits_name_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.loads(raw)
    assert info.value.code is ErrorCode.INVALID_FIELD
    assert info.value.field == field


def test_64_bit_integers_and_long_digit_strings_pass() -> None:
    assert codec.loads(b'{"n": 18446744073709551615, "s": "12345678901234567890"}') == {
        "n": 18446744073709551615,
        "s": "12345678901234567890",
    }


def test_duplicate_keys_last_wins() -> None:
    assert codec.loads(b'{"a": 1, "a": 2}') == {"a": 2}


def test_client_frames() -> None:
    assert codec.decode_client_frame('{"action": "subscribe", "topics": ["a.*"], "id": 1}') == (
        Subscribe(topics=["a.*"], id=1)
    )
    assert codec.decode_client_frame('{"action": "unsubscribe", "topics": ["a"]}') == (
        Unsubscribe(topics=["a"])
    )
    assert codec.decode_client_frame('{"action": "ping", "id": "x"}') == Ping(id="x")
    frame = codec.decode_client_frame('{"action": "publish", "events": [], "ack": false}')
    assert frame == Publish(events=[], ack=False)
    bare = codec.decode_client_frame('{"type": "t", "topic": "a", "payload": {}}')
    assert bare == Publish(event={"type": "t", "topic": "a", "payload": {}})


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        ('{"action": "dance"}', ErrorCode.UNKNOWN_ACTION, "action"),
        ('{"action": 5}', ErrorCode.UNKNOWN_ACTION, "action"),
        ("[1, 2]", ErrorCode.INVALID_FRAME, None),
        ('{"action": "subscribe"}', ErrorCode.MISSING_FIELD, "topics"),
        ('{"action": "subscribe", "topics": "a"}', ErrorCode.INVALID_FIELD, "topics"),
        ('{"action": "subscribe", "topics": [1]}', ErrorCode.INVALID_FIELD, "topics"),
        (
            '{"action": "subscribe", "topics": ["a"], "batch": "yes"}',
            ErrorCode.INVALID_FIELD,
            "batch",
        ),
        ('{"action": "subscribe", "topics": ["a"], "x": 1}', ErrorCode.UNKNOWN_FIELD, "x"),
        ('{"action": "ping", "id": [1]}', ErrorCode.INVALID_FIELD, "id"),
        ('{"action": "ping", "id": true}', ErrorCode.INVALID_FIELD, "id"),
        ('{"action": "publish"}', ErrorCode.MISSING_FIELD, "event"),
        ('{"action": "publish", "event": {}, "events": []}', ErrorCode.MISSING_FIELD, "event"),
        ('{"action": "publish", "event": 5}', ErrorCode.INVALID_FIELD, "event"),
        ('{"action": "publish", "events": {}}', ErrorCode.INVALID_FIELD, "events"),
        ('{"action": "publish", "event": {}, "ack": 1}', ErrorCode.INVALID_FIELD, "ack"),
    ],
)
def test_bad_frames_name_the_field(raw: str, code: ErrorCode, field: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode_client_frame(raw)
    assert info.value.code is code, info.value
    assert info.value.field == field


def test_request_id_of_broken_frames() -> None:
    assert codec.request_id_of('{"action": "subscribe", "id": 9, "topics": 1}') == 9
    assert codec.request_id_of("{broken") is None
    assert codec.request_id_of('{"id": 9}') is None  # an event's id is not a request id


def test_event_from_json_roundtrip() -> None:
    stored = Event(type="t", topic="a.b", payload={"k": 1}, id="e-1", seq=1)
    assert codec.event_from_bus(codec.loads(codec.encode_event(stored))) == stored


@given(
    source=st.none() | st.text(max_size=5),
    correlation_id=st.none() | st.text(max_size=5),
    timestamp=st.none() | st.datetimes(timezones=st.just(UTC)),
    keyed=st.booleans(),
)
def test_a_stored_event_encodes_as_the_stamped_event_would(
    source: str | None, correlation_id: str | None, timestamp: datetime | None, keyed: bool
) -> None:
    """`encode_stored` (what the logs write) is byte for byte `encode_event` of the event with
    the log's timestamp, id and seq: readers and subscribers cannot tell them apart."""
    event = Event("t", "a.b", {"n": [1, "x"]}, timestamp, source, correlation_id)
    now = datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=UTC)
    ident, seq = ("e-7", 7) if keyed else (None, None)
    stamped = attrs.evolve(event, timestamp=timestamp or now, id=ident, seq=seq)
    assert codec.encode_stored(event, timestamp or now, ident, seq) == codec.encode_event(stamped)

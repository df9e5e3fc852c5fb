"""The sans-IO conversation, both ends at once and no socket (as h11 tests a connection pair)."""

from __future__ import annotations

import orjson
import pytest

from ipt_bus.core import codec
from ipt_bus.core.errors import ErrorCode, Overloaded, StorageFull
from ipt_bus.core.frames import (
    Acked,
    ErrorFrame,
    Gap,
    GapReason,
    Ping,
    Pong,
    Publish,
    ServerFrame,
    Subscribe,
    Subscriptions,
    Welcome,
)
from ipt_bus.core.model import Event, Published
from ipt_bus.core.protocol import ClientConversation, Received, ServerConversation

EVENT = {"type": "t", "topic": "a.b", "payload": {}}


def pair() -> tuple[ClientConversation, ServerConversation]:
    return ClientConversation(), ServerConversation(1_000, 500, frozenset({"**"}))


def deliver(client: ClientConversation, *frames: ServerFrame) -> list[object]:
    """Server frames through the wire, into the client (one batched message)."""
    message = b"\n".join(codec.encode_frame(f) for f in frames)
    return list(client.receive(orjson.loads(line) for line in message.split(b"\n")))


def received(server: ServerConversation, text: str) -> Received:
    got = server.receive(text)
    assert isinstance(got, Received), got
    return got


def publish(server: ServerConversation, text: str) -> Publish:
    frame = received(server, text).frame
    assert isinstance(frame, Publish)
    return frame


def test_a_publish_goes_across_and_its_ack_comes_back_to_its_request() -> None:
    client, server = pair()
    sent, text = client.request(Publish(event=EVENT, idempotency_key="k1"))
    got = received(server, text)
    assert got.frame == sent
    assert got.small
    token = server.publishing(publish(server, text))
    assert server.publishes_due == 1
    answer = server.answered(token, [Published("e-7", 7)])
    assert answer == Acked(sent.id, [Published("e-7", 7)], batch=False)
    assert server.publishes_due == 0
    (back,) = deliver(client, answer)
    assert back == answer


def test_acks_leave_in_the_order_the_publishes_came_and_ack_false_is_silent() -> None:
    client, server = pair()
    tokens = []
    for frame in (
        Publish(event=EVENT),
        Publish(events=[EVENT, EVENT]),
        Publish(event=EVENT, ack=False),
        Publish(event=EVENT),
    ):
        sent, text = client.request(frame)
        tokens.append((sent.id, server.publishing(publish(server, text))))
    answers = [
        server.answered(tokens[0][1], [Published("e-1", 1)]),
        server.answered(tokens[1][1], [Published("e-2", 2), Published("e-3", 3)]),
        server.answered(tokens[2][1], [Published("e-4", 4)]),
        server.answered(tokens[3][1], StorageFull("disk full")),
    ]
    assert answers[0] == Acked(tokens[0][0], [Published("e-1", 1)], batch=False)
    assert isinstance(answers[1], Acked)
    assert answers[1].batch
    assert answers[2] is None
    assert isinstance(answers[3], ErrorFrame)
    assert (answers[3].id, answers[3].code) == (tokens[3][0], ErrorCode.STORAGE_FULL)


def test_a_publish_the_router_never_took_is_withdrawn() -> None:
    _, server = pair()
    first = server.publishing(Publish(event=EVENT, id=1))
    second = server.publishing(Publish(event=EVENT, id=2))
    server.withdrawn(first)  # e.g. Overloaded before the router took it
    assert server.refused(1, Overloaded("busy")).code == ErrorCode.OVERLOADED
    assert server.answered(second, [Published("e-1", 1)]) == Acked(
        2, [Published("e-1", 1)], batch=False
    )


@pytest.mark.parametrize(
    ("message", "code", "rid"),
    [
        (b"\x00binary", ErrorCode.UNSUPPORTED_FRAME, None),
        ('{"action": "ping", "id": 9, "pad": "' + "x" * 2_000 + '"}', ErrorCode.TOO_LARGE, 9),
        ('{"action": "ping", "id": 3', ErrorCode.INVALID_JSON, None),
        ('{"action": "dance", "id": 4}', ErrorCode.UNKNOWN_ACTION, 4),
        ('{"action": "subscribe", "id": 5}', ErrorCode.MISSING_FIELD, 5),
    ],
)
def test_what_the_server_cannot_take_is_an_error_frame_with_the_id(
    message: str | bytes, code: ErrorCode, rid: object
) -> None:
    _, server = pair()
    got = server.receive(message)
    assert isinstance(got, ErrorFrame)
    assert (got.code, got.id) == (code, rid)


def test_subscriptions_and_the_batch_flag_follow_what_the_router_confirmed() -> None:
    client, server = pair()
    sent, text = client.request(Subscribe(["task.*"], batch=True))
    assert isinstance(received(server, text).frame, Subscribe)
    answer = server.subscribed(sent.id, {"**", "task.*"}, subscribe=True, batch=True)
    assert answer == Subscriptions(sent.id, ["**", "task.*"], True)
    assert server.patterns == {"**", "task.*"}
    assert server.batch
    assert deliver(client, answer) == [answer]
    ping, text = client.request(Ping())
    assert received(server, text).frame == ping
    assert deliver(client, server.pong(ping.id)) == [Pong(ping.id)]


def test_the_client_keeps_its_place_in_the_log_across_resumes_and_gaps() -> None:
    client = ClientConversation()
    assert client.resume_query() == {}
    welcome = Welcome("0.1.0", "n", "ep1", 10, {})
    assert deliver(client, welcome) == [welcome]
    assert (client.epoch, client.last_seq) == ("ep1", 10)
    events = [{**EVENT, "id": f"ep1-{s}", "seq": s} for s in (9, 10, 11, 12)]
    got = client.receive(events)  # a resume overlapping what arrived: 9 and 10 are old
    assert [e.seq for e in got if isinstance(e, Event)] == [11, 12]
    assert client.resume_query() == {"since": "12", "epoch": "ep1"}
    gap = Gap(GapReason.RETENTION, 13, 40)
    assert deliver(client, gap) == [gap]
    assert client.last_seq == 40
    deliver(client, Gap(GapReason.EPOCH, 41, None, "ep2"))
    assert client.resume_query() == {"since": "0", "epoch": "ep2"}
    assert client.receive([{"action": "from-a-newer-bus"}]) == []

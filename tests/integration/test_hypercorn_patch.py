"""The hypercorn adjustment (ipt_bus.edge.transport) still applies to the installed hypercorn."""

from __future__ import annotations

import inspect
import itertools
from importlib.metadata import version
from typing import Any

import orjson
import pytest
import trio
from hypercorn.trio.tcp_server import TCPServer
from hypothesis import given, settings
from hypothesis import strategies as st

from ipt_bus.bus.connection import Written
from ipt_bus.edge import transport as _hypercorn
from ipt_bus.web import create_app


def test_installed_by_create_app_and_version_is_checked() -> None:
    create_app()
    assert _hypercorn.is_installed()
    assert version("hypercorn").startswith(_hypercorn.CHECKED_VERSIONS)


def test_the_other_replaced_methods_still_exist_with_the_shape_we_rely_on() -> None:
    from hypercorn.protocol.ws_stream import WebsocketBuffer, WSStream

    assert "PerMessageDeflate()" in inspect.getsource(_hypercorn._original_accept)
    extend = inspect.getsource(WebsocketBuffer.__init__)
    assert "self.max_length" in extend
    assert "self.length" in extend
    assert "self.config.websocket_ping_interval" in inspect.getsource(WSStream._accept)
    events = inspect.getsource(_hypercorn._original_handle_events)
    for part in ("FrameTooLargeError", "REMOTE_CLOSING", "message_finished", "StreamClosed"):
        assert part in events, part  # the loop we replace is still hypercorn's
    run = inspect.getsource(_hypercorn._original_run)
    assert "await self._close()" in run


def test_the_replaced_method_still_has_the_shape_we_rely_on() -> None:
    source = inspect.getsource(_hypercorn._original_protocol_send)
    # hypercorn shields the socket write with no deadline: the reason for the adjustment
    assert "shield = True" in source
    assert "send_all" in source
    init = inspect.getsource(TCPServer.__init__)
    for attribute in ("self.send_lock", "self.stream", "self.config"):
        assert attribute in init


def test_text_frames_are_what_wsproto_writes() -> None:
    from wsproto import ConnectionType
    from wsproto.connection import Connection
    from wsproto.events import TextMessage

    wsproto = Connection(ConnectionType.SERVER)
    texts = ["é" * (n // 2) + "x" * (n % 2) for n in (0, 1, 125, 126, 65535, 65536, 70000)]
    for text in texts:  # multi-byte: the length is of the UTF-8 bytes
        assert _hypercorn.text_frames([text.encode()]) == wsproto.send(TextMessage(data=text))
    expected = b"".join(wsproto.send(TextMessage(data=t)) for t in texts)
    assert _hypercorn.text_frames([t.encode() for t in texts]) == expected


def test_the_direct_sender_is_found_only_on_hypercorns_http11_websocket() -> None:
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.ws_stream import WSStream

    assert _hypercorn.DirectSender.find(print) is None
    # the chain DirectSender.find walks: WSStream.send -> H11Protocol.stream_send -> TCPServer
    assert "self.send = send" in inspect.getsource(WSStream.__init__)
    assert "self.send = send" in inspect.getsource(H11Protocol.__init__)
    assert "RawData(data=event.data)" in inspect.getsource(H11Protocol.stream_send)


async def test_other_asgi_servers_get_one_websocket_send_per_message() -> None:
    from ipt_bus.edge.transport import AsgiWebSocket

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:  # not hypercorn's: no direct path
        sent.append(message)

    socket = AsgiWebSocket(None, send)
    await socket.send_many([b"a", b"b"])
    await socket.send(b"c")
    assert sent == [{"type": "websocket.send", "text": t} for t in "abc"]


async def test_writes_from_the_fan_out_that_fill_the_socket_finish_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The router writes live events itself while a subscriber's writer is parked. When the
    socket takes only part of a write, the rest is owed and goes out first: a subscriber that
    stops reading, then reads again, gets every event whole and in order."""
    import httpx

    from tests import rawws
    from tests.conftest import running_server

    results: list[object] = []
    real = _hypercorn.DirectSender.send_now

    def recording(self: _hypercorn.DirectSender, texts: list[bytes]) -> object:
        written = real(self, texts)
        results.append(written)
        return written

    monkeypatch.setattr(_hypercorn.DirectSender, "send_now", recording)
    async with running_server(storage="memory", buffer_size=10_000) as server:
        host, port = rawws.host_port(server.url)
        peer = await rawws.connect(host, port, "/ws?topics=fill.*", receive_buffer=4096)
        welcome = await peer.read_frame()
        assert welcome is not None
        assert b'"welcome"' in welcome[1]
        pad = "x" * 1000
        async with httpx.AsyncClient(base_url=server.url) as http:
            first = {"type": "t", "topic": "fill.x", "payload": {"n": -1}}
            assert (await http.post("/events", json=first)).is_success
            got = await peer.read_frame()  # written whole from the fan-out
            assert got is not None
            assert orjson.loads(got[1])["seq"] == 1
            assert results == [Written.ALL]
            for start in range(0, 600, 50):  # the peer reads nothing meanwhile
                batch = [
                    {"type": "t", "topic": "fill.x", "payload": {"n": n, "pad": pad}}
                    for n in range(start, start + 50)
                ]
                assert (await http.post("/events", json=batch)).is_success
        seqs: list[int] = []
        while len(seqs) < 600:
            got = await peer.read_frame()
            assert got is not None
            seqs.append(orjson.loads(got[1])["seq"])
        assert seqs == list(range(2, 602))  # whole frames, in order, none lost
        assert Written.PART in results  # a write was cut short and finished later
        await peer.stream.aclose()


def test_hypercorn_runs_ping_tasks_only_for_tls() -> None:
    """Plain-TCP WebSockets are pinged by the run's one pinger (`ping_every`); hypercorn's task
    per connection stays only where that pinger cannot write (TLS)."""
    import os
    import socket

    from ipt_bus.core.config import BusConfig
    from ipt_bus.server import hypercorn_config

    for certfile, expected in ((None, None), ("cert.pem", 25.0)):
        config = BusConfig(port=0, certfile=certfile, keyfile=certfile)
        hc = hypercorn_config(config, socket.socket())
        os.close(int(hc.bind[0].removeprefix("fd://")))  # hypercorn would have taken it over
        assert hc.websocket_ping_interval == expected


# --- whole text frames without wsproto (`_fast_frames`) -----------------------------------------


class _Stream:
    """What `_handle` reads of hypercorn's WSStream, around a real wsproto server connection and
    hypercorn's real message buffer; records what reaches the app and what is sent."""

    def __init__(self, max_length: int = 1 << 20) -> None:
        from hypercorn.protocol.ws_stream import WebsocketBuffer
        from wsproto import ConnectionType
        from wsproto.connection import Connection

        self.connection = Connection(ConnectionType.SERVER)
        self.buffer = WebsocketBuffer(max_length)
        self.handshake = type("H", (), {"accepted": True})()
        self.closed = False
        self.received: list[str | bytes] = []
        self.messages: list[dict[str, Any]] = []
        self.sent: list[Any] = []
        self.stream_id = 1
        self.to_wsproto = 0  # bytes handed to wsproto
        receive_data = self.connection.receive_data

        def counted(data: bytes | None) -> None:
            self.to_wsproto += len(data or b"")
            receive_data(data)

        self.connection.receive_data = counted  # type: ignore[method-assign]

    async def app_put(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        text = message.get("text")
        self.received.append(text if text is not None else bytes(message.get("bytes") or b""))

    async def _send_wsproto_event(self, event: Any) -> None:
        self.sent.append(event)

    async def send(self, event: Any) -> None:
        self.sent.append(event)

    async def _handle_events(self) -> None:
        await _hypercorn._handle_events(self)  # type: ignore[arg-type]

    async def feed(self, *chunks: bytes) -> None:
        from hypercorn.protocol.events import Data

        for chunk in chunks:
            await _hypercorn._handle(self, Data(stream_id=1, data=chunk))  # type: ignore[arg-type]


def _client_frames(*events: Any) -> bytes:
    from wsproto import ConnectionType
    from wsproto.connection import Connection

    client = Connection(ConnectionType.CLIENT)  # masks with a random key, as browsers do
    return b"".join(client.send(event) for event in events)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 125, 126, 400, 65535, 65536, 70000]), max_size=6),
    cuts=st.lists(st.integers(0, 300_000), max_size=8),
)
def test_text_frames_cut_anywhere_arrive_whole_and_in_order(
    sizes: list[int], cuts: list[int]
) -> None:
    from wsproto.events import TextMessage

    texts = ["é" * (n // 2) + "x" * (n % 2) for n in sizes]
    data = _client_frames(*(TextMessage(data=t) for t in texts))
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    stream = _Stream()
    trio.run(lambda: stream.feed(*chunks))
    assert stream.received == texts
    assert getattr(stream, _hypercorn.PENDING_ATTR, None) is None  # nothing left over
    assert stream.to_wsproto == 0  # all of it parsed here


async def test_a_ping_between_text_frames_is_wsprotos_and_the_rest_still_arrives() -> None:
    from wsproto.events import Ping, Pong, TextMessage

    data = _client_frames(
        TextMessage(data="a"), Ping(b"hi"), TextMessage(data="b"), TextMessage(data="c")
    )
    stream = _Stream()
    await stream.feed(data[:9], data[9:])  # a cut inside the first frame, too
    assert stream.received == ["a", "b", "c"]
    assert [type(e) for e in stream.sent] == [Pong]
    handed = stream.to_wsproto
    assert 0 < handed < len(data)  # from the ping on
    await stream.feed(_client_frames(TextMessage(data="d")))  # wsproto idle again: ours
    assert stream.received[-1] == "d"
    assert stream.to_wsproto == handed


async def test_a_reads_texts_reach_an_app_that_takes_them_so_as_one_message() -> None:
    """One queue slot per read (hypercorn's app queue holds 10 messages): for the app that said
    it takes them so, and `AsgiWebSocket` hands them out one by one, in order."""
    from wsproto.events import TextMessage

    from ipt_bus.bus.connection import Disconnected
    from ipt_bus.edge.transport import MANY_ATTR, MANY_KEY, AsgiWebSocket

    data = _client_frames(*(TextMessage(data=t) for t in ("a", "b", "c")))
    plain = _Stream()
    await plain.feed(data)
    assert [m.get(MANY_KEY) for m in plain.messages] == [None, None, None]  # any other app
    stream = _Stream()
    setattr(stream, MANY_ATTR, True)
    await stream.feed(data, _client_frames(TextMessage(data="d")))
    assert [m.get(MANY_KEY) for m in stream.messages] == [["a", "b", "c"], None]
    queued = [*stream.messages, {"type": "websocket.disconnect", "code": 1000}]

    async def receive() -> dict[str, Any]:
        return queued.pop(0)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent")

    ws = AsgiWebSocket(receive, send)
    assert [await ws.receive() for _ in range(4)] == ["a", "b", "c", "d"]
    with pytest.raises(Disconnected):
        await ws.receive()


async def test_a_fragmented_message_goes_through_wsproto_whole() -> None:
    from wsproto.events import TextMessage

    data = _client_frames(
        TextMessage(data="ab", message_finished=False),
        TextMessage(data="cd"),
        TextMessage(data="e"),
    )
    stream = _Stream()
    await stream.feed(data)
    assert stream.received == ["abcd", "e"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"\xff\xfe", 1007), (b"x" * 2000, 1009)],  # invalid UTF-8; over the limit of 1,000
)
async def test_bad_frames_get_wsprotos_close_codes(payload: bytes, code: int) -> None:
    from tests.rawws import frame

    stream = _Stream(max_length=1000)
    from wsproto.events import TextMessage

    good = _client_frames(TextMessage(data="ok"))
    await stream.feed(good + frame(1, payload))
    assert stream.received == ["ok"]
    assert getattr(stream.sent[0], "code", None) == code


async def test_a_partial_frame_held_here_is_cut_at_the_message_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wsproto.events import TextMessage

    now = [1000.0]
    monkeypatch.setattr("ipt_bus.edge.transport.time.monotonic", lambda: now[0])
    data = _client_frames(TextMessage(data="x" * 300))
    stream = _Stream()
    await stream.feed(data[:100])
    now[0] += _hypercorn._message_deadline_seconds / 2
    await stream.feed(data[100:200])  # still the same frame: its clock runs on
    assert stream.sent == []
    now[0] += _hypercorn._message_deadline_seconds
    await stream.feed(data[200:-1])
    assert [getattr(e, "code", None) for e in stream.sent] == [1009]
    assert stream.received == []

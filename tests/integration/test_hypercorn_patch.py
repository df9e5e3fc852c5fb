"""The hypercorn adjustment (ipt_bus.edge.transport) still applies to the installed hypercorn."""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import TYPE_CHECKING

import orjson
from hypercorn.trio.tcp_server import TCPServer

from ipt_bus.bus.connection import Written
from ipt_bus.edge import transport as _hypercorn
from ipt_bus.web import create_app

if TYPE_CHECKING:
    import pytest


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

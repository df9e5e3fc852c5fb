"""The hypercorn adjustment (ipt_bus.edge.transport) still applies to the installed hypercorn."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from hypercorn.trio.tcp_server import TCPServer

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

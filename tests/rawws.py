"""A raw WebSocket peer for hostile-input tests: any header, any frame, malformed ones too."""

from __future__ import annotations

import base64
import os
import struct

import attrs
import trio

RECEIVE_SECONDS = 10


@attrs.define
class RawPeer:
    stream: trio.SocketStream
    status: int
    headers: dict[str, str]
    buf: bytearray

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def fill(self) -> bool:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    async def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next frame from the server, or None at EOF."""
        with trio.fail_after(RECEIVE_SECONDS):
            while True:
                parsed = _parse(self.buf)
                if parsed is not None:
                    return parsed
                if not await self.fill():
                    return None

    async def close_code(self) -> int | None:
        """Read until the server's close frame (its code) or EOF (None); skips other frames."""
        try:
            while True:
                got = await self.read_frame()
                if got is None:
                    return None
                opcode, payload = got
                if opcode == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        except (trio.BrokenResourceError, ConnectionResetError):
            return None

    async def aclose(self) -> None:
        await self.stream.aclose()


def _parse(buf: bytearray) -> tuple[int, bytes] | None:
    if len(buf) < 2:
        return None
    opcode = buf[0] & 0x0F
    n = buf[1] & 0x7F
    start = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, start = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, start = struct.unpack("!Q", buf[2:10])[0], 10
    if len(buf) < start + n:
        return None
    payload = bytes(buf[start : start + n])
    del buf[: start + n]
    return opcode, payload


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame; `length` may claim more than `payload` (the rest is sent later)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if masked:
        head += b"\0\0\0\0"  # a zero mask leaves the payload as is
    return head + payload


async def connect(
    url_host: str,
    port: int,
    path: str = "/ws",
    headers: dict[str, str] | None = None,
    *,
    receive_buffer: int | None = None,
) -> RawPeer:
    """Open a WebSocket by hand. `receive_buffer` sets SO_RCVBUF before connecting (after,
    the window the connection started with stays, and a shrunk one stalls it)."""
    if receive_buffer is None:
        stream = await trio.open_tcp_stream(url_host, port)
    else:
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, receive_buffer)
        await sock.connect((url_host, port))
        stream = trio.SocketStream(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    headers = {"Host": f"{url_host}:{port}"} | (headers or {})
    lines = [
        f"GET {path} HTTP/1.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    with trio.fail_after(RECEIVE_SECONDS):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1]) if status_line else 0
    return RawPeer(stream, status, parsed, bytearray(rest))


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)

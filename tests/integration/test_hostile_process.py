"""Memory under hostile input, measured on `ipt-bus serve` in its own process (C2, C3, C8)."""

from __future__ import annotations

import contextlib
import zlib
from typing import TYPE_CHECKING

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import rawws
from tests.processes import Served, serve_process

if TYPE_CHECKING:
    from collections.abc import Iterator

MiB = 1024 * 1024
LIMIT = int(1.25 * MiB)  # the default max_message_bytes


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # module-scoped: before the autouse data-dir fixture applies, so its data dir is given here
    with serve_process(tmp_path_factory.mktemp("served")) as server:
        yield server


async def _bomb(port: int, data: bytes, offer_deflate: bool) -> None:
    headers = {"Sec-WebSocket-Extensions": "permessage-deflate"} if offer_deflate else {}
    peer = await rawws.connect("127.0.0.1", port, "/ws", headers)
    async with peer.stream:
        assert "sec-websocket-extensions" not in peer.headers
        with contextlib.suppress(trio.BrokenResourceError):
            await peer.send(data)
        await peer.close_code()


async def _oversize(port: int) -> None:
    peer = await rawws.connect("127.0.0.1", port, "/ws")
    async with peer.stream:
        await peer.send(rawws.frame(0x1, b"", length=64 * MiB))
        chunk = b"a" * MiB
        async with trio.open_nursery() as nursery:

            async def feed() -> None:
                try:
                    for _ in range(64):
                        await peer.send(chunk)
                except trio.BrokenResourceError:
                    pass

            nursery.start_soon(feed)
            await peer.close_code()
            nursery.cancel_scope.cancel()


async def test_deflate_bombs_and_oversize_messages_stay_bounded(served: Served) -> None:
    base = served.peak()
    # C3: 32 connections x 64 KB of compressed zeros (64 MiB inflated), sent as RSV1 frames
    compressed = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = compressed.compress(b"\0" * 64 * MiB) + compressed.flush(zlib.Z_SYNC_FLUSH)[:-4]
    bomb = rawws.frame(0x1, payload, rsv=4)
    async with trio.open_nursery() as nursery:
        for _ in range(32):
            nursery.start_soon(_bomb, served.port, bomb, True)
    assert served.peak() - base <= 100 * MiB
    # C2: 8 parallel messages announcing 64 MiB each, uncompressed
    base = served.peak()
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(_oversize, served.port)
    assert served.peak() - base <= 8 * 2 * LIMIT + 16 * MiB
    assert served.health() == 200


def test_before_the_fuzz(served: Served) -> None:
    served.rss_before_fuzz = served.rss()


frames = st.one_of(
    st.binary(max_size=64),  # garbage bytes
    st.builds(
        rawws.frame,
        opcode=st.integers(0, 15),
        payload=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
        fin=st.booleans(),
        rsv=st.integers(0, 7),
        masked=st.booleans(),
    ),
    st.builds(  # well-formed text frames carrying JSON-ish junk
        lambda text: rawws.frame(0x1, text.encode("utf-8", "surrogatepass")),
        st.one_of(
            st.text(max_size=200),
            st.just('{"action":"publish","event":{"type":"t","topic":"a","payload":{}}}'),
            st.just('{"action":"subscribe","topics":["**"]}'),
        ),
    ),
)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(frames, min_size=20, max_size=20))
async def test_hostile_frames_never_hurt_the_server(served: Served, batch: list[bytes]) -> None:
    """C8: 100 connections x 20 generated frames; each connection may die, the server may not."""
    peer = await rawws.connect("127.0.0.1", served.port, "/ws")
    async with peer.stream:
        try:
            for data in batch:
                await peer.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def test_after_the_fuzz_the_server_is_healthy_and_small(served: Served) -> None:
    assert served.proc.poll() is None
    assert served.health() == 200
    assert served.rss() - served.rss_before_fuzz <= 10 * MiB
    log = served.log.read_text()
    assert "Traceback" not in log, log[-3000:]

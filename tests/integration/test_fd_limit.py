"""The default `max_connections` follows the open-file limit (issue 15: the 10,001st connection
was refused whatever the process could hold)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from ipt_bus.core.config import FD_RESERVE, BusConfig, connection_limit
from tests.conftest import running_server
from tests.processes import serve_process

if TYPE_CHECKING:
    from pathlib import Path


def test_the_default_leaves_a_reserve() -> None:
    assert connection_limit(65_536) == 65_536 - FD_RESERVE
    assert connection_limit(100) == 1
    assert BusConfig().max_connections is None  # resolved when the bus starts


def _max_connections(url: str) -> int:
    value = httpx.get(f"{url}/stats", timeout=10).json()["max_connections"]
    assert isinstance(value, int)
    return value


def test_serve_raises_the_soft_limit_and_follows_it(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / name).mkdir()
    with serve_process(tmp_path / "a", open_files=(512, 4096)) as served:
        assert _max_connections(served.url) == 4096 - FD_RESERVE  # soft raised to hard
    with serve_process(tmp_path / "b", open_files=(600, 600)) as served:
        assert _max_connections(served.url) == 600 - FD_RESERVE
    with serve_process(tmp_path / "c", "--max-connections", "7") as served:
        assert _max_connections(served.url) == 7


async def test_an_in_process_bus_resolves_it_too() -> None:
    async with running_server() as server:
        assert isinstance(server.bus.config.max_connections, int)
        assert server.bus.config.max_connections > 0

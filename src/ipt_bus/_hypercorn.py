"""The one place ipt_bus changes hypercorn's private behaviour.

Checked against hypercorn 0.17-0.18 (pinned in pyproject.toml);
`tests/integration/test_hypercorn_patch.py` fails if an upgrade breaks an assumption.

Write deadline: hypercorn sends every byte inside a *shielded* cancel scope with no deadline,
so a peer that stops reading pins the sending task forever and nothing (not even shutdown) can
free it. Here the shielded send gets a deadline; when it passes, the socket is aborted and the
connection is treated as closed, which is what RFC 6455 allows for a peer that does not read.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any, Final

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import TCPServer

CHECKED_VERSIONS: Final = ("0.17", "0.18")
WRITE_DEADLINE_ATTR: Final = "ipt_bus_write_deadline_seconds"
DEFAULT_WRITE_DEADLINE_SECONDS: Final = 10.0  # when the hypercorn Config does not say

_original_protocol_send: Any = TCPServer.protocol_send


async def _protocol_send(self: TCPServer, event: Any) -> None:
    if not isinstance(event, RawData):
        await _original_protocol_send(self, event)
        return
    deadline = getattr(self.config, WRITE_DEADLINE_ATTR, DEFAULT_WRITE_DEADLINE_SECONDS)
    async with self.send_lock:
        try:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + deadline
                await self.stream.send_all(event.data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())
            return
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self.stream)
            await self.protocol.handle(Closed())


def install() -> None:
    """Apply the adjustments (idempotent). Raises if hypercorn is a version not checked."""
    installed = version("hypercorn")
    if not installed.startswith(CHECKED_VERSIONS):
        raise RuntimeError(
            f"ipt_bus adjusts hypercorn internals checked against {CHECKED_VERSIONS}; "
            f"found hypercorn {installed}"
        )
    TCPServer.protocol_send = _protocol_send  # type: ignore[method-assign]  # the adjustment


def is_installed() -> bool:
    return TCPServer.protocol_send is _protocol_send

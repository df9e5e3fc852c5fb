"""ipt_bus: a real-time pub/sub event bus on trio (topics over WebSocket and REST).

The server side (`run_bus`, `BusHandle`) is imported on first use, so that `ipt_bus.client`
(which runs on asyncio as well as trio) does not load the server, trio and SQLite with it.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from ipt_bus.core.config import BusConfig as BusConfig
from ipt_bus.core.errors import BusBroken as BusBroken
from ipt_bus.core.errors import BusClosed as BusClosed
from ipt_bus.core.errors import BusError as BusError
from ipt_bus.core.errors import CloseCode as CloseCode
from ipt_bus.core.errors import ErrorCode as ErrorCode
from ipt_bus.core.errors import LimitExceeded as LimitExceeded
from ipt_bus.core.errors import Overloaded as Overloaded
from ipt_bus.core.errors import ProtocolError as ProtocolError
from ipt_bus.core.errors import StorageError as StorageError
from ipt_bus.core.model import Event as Event
from ipt_bus.core.model import Published as Published

try:  # one source: the package's metadata (pyproject.toml)
    __version__ = version("ipt-bus")
except PackageNotFoundError:  # pragma: no cover - imported from a source tree, not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from ipt_bus.bus.node import BusHandle as BusHandle
    from ipt_bus.bus.node import run_bus as run_bus


def __getattr__(name: str) -> Any:
    if name in ("BusHandle", "run_bus"):
        from ipt_bus.bus import node as bus

        return getattr(bus, name)
    raise AttributeError(f"module 'ipt_bus' has no attribute {name!r}")


__all__ = [
    "BusBroken",
    "BusClosed",
    "BusConfig",
    "BusError",
    "BusHandle",
    "CloseCode",
    "ErrorCode",
    "Event",
    "LimitExceeded",
    "Overloaded",
    "ProtocolError",
    "Published",
    "StorageError",
    "__version__",
    "run_bus",
]

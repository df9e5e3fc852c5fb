"""ipt_bus: a real-time pub/sub event bus on trio (topics over WebSocket and REST)."""

from ipt_bus.bus import BusHandle as BusHandle
from ipt_bus.bus import __version__ as __version__
from ipt_bus.bus import run_bus as run_bus
from ipt_bus.config import BusConfig as BusConfig
from ipt_bus.errors import BusBroken as BusBroken
from ipt_bus.errors import BusClosed as BusClosed
from ipt_bus.errors import BusError as BusError
from ipt_bus.errors import CloseCode as CloseCode
from ipt_bus.errors import ErrorCode as ErrorCode
from ipt_bus.errors import LimitExceeded as LimitExceeded
from ipt_bus.errors import Overloaded as Overloaded
from ipt_bus.errors import ProtocolError as ProtocolError
from ipt_bus.errors import StorageError as StorageError
from ipt_bus.model import Event as Event
from ipt_bus.model import Published as Published

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

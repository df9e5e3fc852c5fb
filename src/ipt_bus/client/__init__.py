"""The Python client of ipt_bus: the specification's client API.

    from ipt_bus.client import EventBusPublisher, EventBusClient, Event

`EventBusPublisher` publishes synchronously over REST; `EventBusClient` subscribes and publishes
asynchronously (under asyncio or trio); `subscribe()` receives events in a plain ``for`` loop.
See docs/client.md.
"""

from ipt_bus.client.aio import EventBusClient
from ipt_bus.client.publisher import EventBusPublisher
from ipt_bus.client.sync import Subscription, subscribe
from ipt_bus.core.errors import (
    BusUnavailable,
    ClientError,
    HistoryLost,
    PublishRejected,
    RequestRefused,
)
from ipt_bus.core.frames import Gap
from ipt_bus.core.model import Event, Published

__all__ = [
    "BusUnavailable",
    "ClientError",
    "Event",
    "EventBusClient",
    "EventBusPublisher",
    "Gap",
    "HistoryLost",
    "PublishRejected",
    "RequestRefused",
    "Published",
    "Subscription",
    "subscribe",
]

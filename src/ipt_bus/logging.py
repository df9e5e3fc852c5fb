"""`ipt_bus.logging.EventBusHandler`: Python logging to the bus (the public import path)."""

from ipt_bus.integrations.logging import EventBusHandler as EventBusHandler

__all__ = ["EventBusHandler"]

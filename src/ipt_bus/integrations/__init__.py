"""Integrations named by the specification: executor, cost and tool helpers (over the client),
file events and the bus's own logs (wired into a running bus by `ipt_bus.server`)."""

from ipt_bus.integrations.helpers import CostTracker as CostTracker
from ipt_bus.integrations.helpers import TaskRun as TaskRun
from ipt_bus.integrations.helpers import ToolHealthMonitor as ToolHealthMonitor

__all__ = ["CostTracker", "TaskRun", "ToolHealthMonitor"]

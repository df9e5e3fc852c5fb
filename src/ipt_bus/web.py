"""`ipt_bus.web:create_app`: the ASGI app, as ``hypercorn --worker-class trio
'ipt_bus.web:create_app()'`` runs it (the public import path). Run this way, the app starts its
own bus node and the configured integrations beside it (file watcher, own logs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipt_bus.edge import app
from ipt_bus.integrations.runner import run_integrations

if TYPE_CHECKING:
    from ipt_bus.bus.node import BusHandle
    from ipt_bus.core.config import BusConfig
    from ipt_bus.edge.app import BusApp


def create_app(handle: BusHandle | None = None, config: BusConfig | None = None) -> BusApp:
    """The ASGI app. With no `handle` it runs its own bus (configured from ``IPT_BUS_*``, or by
    `config`) and the integrations for the app's serving lifetime."""
    return app.create_app(handle, config, extras=None if handle else run_integrations)


__all__ = ["create_app"]

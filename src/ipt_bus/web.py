"""`ipt_bus.web:create_app`: the ASGI app, as ``hypercorn --worker-class trio
'ipt_bus.web:create_app()'`` runs it (the public import path)."""

from ipt_bus.edge.app import create_app as create_app

__all__ = ["create_app"]

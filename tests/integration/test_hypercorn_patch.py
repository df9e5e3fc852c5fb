"""The hypercorn adjustment (ipt_bus._hypercorn) still applies to the installed hypercorn."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from hypercorn.trio.tcp_server import TCPServer

from ipt_bus import _hypercorn
from ipt_bus.web import create_app


def test_installed_by_create_app_and_version_is_checked() -> None:
    create_app()
    assert _hypercorn.is_installed()
    assert version("hypercorn").startswith(_hypercorn.CHECKED_VERSIONS)


def test_the_replaced_method_still_has_the_shape_we_rely_on() -> None:
    source = inspect.getsource(_hypercorn._original_protocol_send)
    # hypercorn shields the socket write with no deadline: the reason for the adjustment
    assert "shield = True" in source
    assert "send_all" in source
    init = inspect.getsource(TCPServer.__init__)
    for attribute in ("self.send_lock", "self.stream", "self.config"):
        assert attribute in init

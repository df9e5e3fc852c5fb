"""The public surface of `ipt_bus`: changing it is a decision, not an accident."""

from __future__ import annotations

import ipt_bus


def test_public_names() -> None:
    assert sorted(ipt_bus.__all__) == [
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
    for name in ipt_bus.__all__:
        assert getattr(ipt_bus, name) is not None

"""The stats actor's connection-stability window."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING

from ipt_bus.bus import stats
from ipt_bus.bus.stats import Closed, Opened, Stats

if TYPE_CHECKING:
    import pytest


def test_a_connection_storm_costs_a_minute_of_seconds_and_the_window_slides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(stats, "time", SimpleNamespace(monotonic=lambda: now[0]))
    s = Stats()
    for i in range(5000):  # 500/s for 10 s
        now[0] = 1000.0 + i / 500
        s.apply(Opened(conn_id=i))
        s.apply(Closed(conn_id=i, code=1000 if i % 2 else 1006))
    window = s.snapshot()["connection_stability"]
    assert window["opens_last_minute"] == 5000
    assert window["closes_last_minute"] == {"1000": 2500, "1006": 2500}
    assert sys.getsizeof(s._churn) < 2000  # per second, not per connection

    now[0] = 1070.0  # a minute after the storm: out of the window, still in the totals
    s.apply(Opened(conn_id=99_999))
    window = s.snapshot()["connection_stability"]
    assert window["opens_last_minute"] == 1
    assert window["closes_last_minute"] == {}
    assert window["closes_total"] == {"1000": 2500, "1006": 2500}
    assert len(s._churn) == 1

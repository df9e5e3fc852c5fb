"""The bus's garbage-collector settings (ipt_bus.bus.node.tune_gc)."""

from __future__ import annotations

import gc

from ipt_bus.bus.node import tune_gc
from ipt_bus.core.config import BusConfig


def test_start_up_objects_are_frozen_and_the_default_thresholds_set() -> None:
    before = gc.get_threshold()
    threshold = BusConfig().gc_threshold
    assert threshold == (10_000, 10, 10)
    try:
        tune_gc(threshold)
        assert gc.get_threshold() == threshold
        assert gc.get_freeze_count() > 1000  # modules and classes: out of every full collection
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

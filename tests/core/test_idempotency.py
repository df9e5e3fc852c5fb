"""The idempotency key window: compact per key, bounded by keys, bytes and age (issue 11)."""

from __future__ import annotations

from ipt_bus.storage.base import KEY_OVERHEAD_BYTES, KeyWindow, published_range


def test_a_key_costs_the_same_for_one_event_or_a_thousand() -> None:
    window = KeyWindow(120)
    window.put("one", 1, 1, 0.0)
    before = window.bytes
    window.put("big", 2, 1_000, 0.0)
    assert window.bytes - before == before == 3 + KEY_OVERHEAD_BYTES
    assert window.get("big", 1.0) == (2, 1_000)
    assert published_range("e", 2, 3)[-1].id == "e-4"


def test_the_oldest_keys_go_first_past_the_byte_bound() -> None:
    window = KeyWindow(120, max_keys=1_000, max_bytes=3 * (KEY_OVERHEAD_BYTES + 3))
    for i in range(10, 15):
        window.put(f"k{i}", i, 1, float(i))
    assert len(window) == 3
    assert window.evicted == 2
    assert window.get("k11", 20.0) is None
    assert window.get("k14", 20.0) == (14, 1)
    assert window.bytes == 3 * (KEY_OVERHEAD_BYTES + 3)


def test_the_key_bound_and_the_window() -> None:
    window = KeyWindow(10, max_keys=2)
    window.put("a", 1, 1, 0.0)
    window.put("b", 2, 1, 5.0)
    window.put("a", 3, 1, 6.0)  # the same key again: replaced, not counted twice
    assert len(window) == 2
    assert window.get("a", 7.0) == (3, 1)
    assert window.get("b", 16.0) is None  # outside the window
    window.prune(17.0)
    assert len(window) == 0
    assert window.bytes == 0

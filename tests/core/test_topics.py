from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipt_bus.core.errors import ErrorCode, ProtocolError
from ipt_bus.core.topics import (
    TopicIndex,
    covers,
    matches,
    parse_patterns,
    validate_pattern,
    validate_topic,
)


@pytest.mark.parametrize(
    "topic", ["task.status", "a", "file.progress", "x-y_z.A9", ".".join(["s"] * 16)]
)
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    ("topic", "needle"),
    [
        ("", "invalid topic"),
        ("a..b", "invalid topic"),
        (".a", "invalid topic"),
        ("a.", "invalid topic"),
        ("a b", "invalid topic"),
        ("a.*", "wildcards"),
        ("**", "wildcards"),
        ("é", "invalid topic"),
        ("a" * 256, "longer than 255"),
        (".".join(["s"] * 17), "more than 16 segments"),
        (5, "must be a string"),
    ],
)
def test_invalid_topics(topic: object, needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_topic(topic)
    assert info.value.code is ErrorCode.INVALID_TOPIC
    assert info.value.field == "topic"
    assert needle in info.value.message


@pytest.mark.parametrize("pattern", ["**", "*", "file.*", "a.**", "*.b.*", "task.status"])
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["", "a.**.b", "a*", "a..b", "**.a", "a.***", "a" * 256])
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_pattern(pattern)
    assert info.value.code is ErrorCode.INVALID_PATTERN


def test_parse_patterns_splits_and_skips_blanks() -> None:
    assert parse_patterns("task.status, cost.update,,") == ["task.status", "cost.update"]


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("file.*", "file.progress", True),
        ("file.*", "file.a.b", False),
        ("file.*", "file", False),
        ("file.**", "file", True),
        ("file.**", "file.a.b", True),
        ("**", "anything.at.all", True),
        ("*.status", "task.status", True),
        ("task.status", "task.status", True),
        ("task.status", "task.statuses", False),
    ],
)
def test_matches(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


segment = st.sampled_from(["a", "b", "c"])
topics = st.lists(segment, min_size=1, max_size=4).map(".".join)
pattern_segments = st.sampled_from(["a", "b", "c", "*"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segs = draw(st.lists(pattern_segments, min_size=0, max_size=4))
    if draw(st.booleans()) or not segs:
        segs.append("**")
    return ".".join(segs)


@settings(max_examples=300)
@given(
    subs=st.lists(st.tuples(st.integers(0, 5), patterns()), max_size=20),
    removals=st.lists(st.tuples(st.integers(0, 5), patterns()), max_size=10),
    probe=st.lists(topics, min_size=1, max_size=10),
)
def test_index_agrees_with_naive_matcher(
    subs: list[tuple[int, str]], removals: list[tuple[int, str]], probe: list[str]
) -> None:
    index: TopicIndex[int] = TopicIndex()
    model: set[tuple[int, str]] = set()
    for key, pattern in subs:
        assert index.add(key, pattern) is ((key, pattern) not in model)
        model.add((key, pattern))
    for key, pattern in removals:
        assert index.remove(key, pattern) is ((key, pattern) in model)
        model.discard((key, pattern))
    for topic in probe:
        expected = {key for key, pattern in model if matches(pattern, topic)}
        assert index.lookup(topic) == expected
    _check_compact(index._root, root=True)
    for key, pattern in sorted(model):
        assert index.remove(key, pattern)
    assert index._root.empty()  # churn leaves nothing behind


def _check_compact(node: Any, *, root: bool = False) -> None:
    """No empty node and no holder-less node with a single child (it is merged into it)."""
    if not root:
        assert not node.empty()
        if node.exact is None and node.rest is None:
            assert len(node.children) > 1
    for first, child in (node.children or {}).items():
        assert child.label.split(".")[0] == first
        _check_compact(child)


def test_index_prunes_nodes_on_remove() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("c1", "a.b.c")
    index.add("c1", "a.**")
    index.remove_key("c1")
    assert index.lookup("a.b.c") == set()
    assert not index._root.children


@pytest.mark.parametrize(
    ("grant", "pattern", "expected"),
    [
        ("task.**", "task.*", True),
        ("task.**", "task.a.**", True),
        ("task.**", "task.**", True),
        ("task.**", "task", True),
        ("task.**", "**", False),
        ("task.*", "*.status", False),
        ("task.*", "task.status", True),
        ("task.*", "task.*", True),
        ("task.status", "task.*", False),
        ("task.status", "task.*.x", False),
        ("task.status", "task.status", True),
        ("**", "**", True),
        ("**", "a.*.b", True),
        ("a.*.**", "a.b", True),
        ("a.*.**", "a.**", False),
        ("a.*.**", "a", False),
    ],
)
def test_covers(grant: str, pattern: str, expected: bool) -> None:
    assert covers(grant, pattern) is expected


@settings(max_examples=300)
@given(grant=patterns(), pattern=patterns(), probe=st.lists(topics, min_size=1, max_size=20))
def test_covers_never_lets_a_pattern_reach_past_its_grant(
    grant: str, pattern: str, probe: list[str]
) -> None:
    """When a grant covers a pattern, no topic the pattern matches escapes the grant (topics of
    up to 4 segments of a, b, c: the alphabet of the patterns)."""
    if covers(grant, pattern):
        for topic in probe:
            if matches(pattern, topic):
                assert matches(grant, topic)


def test_covers_agrees_with_brute_force_on_small_alphabets() -> None:
    """Exactly: covered iff every topic of up to 5 segments the pattern matches, the grant does."""
    import itertools

    segs = ["a", "b", "*"]
    all_topics = [
        ".".join(t) for n in range(1, 6) for t in itertools.product(["a", "b", "z"], repeat=n)
    ]
    shapes = [".".join(p) for n in range(1, 4) for p in itertools.product(segs, repeat=n)]
    every = shapes + [s + ".**" for s in shapes] + ["**"]
    for grant in every:
        for pattern in every:
            wider = any(matches(pattern, t) and not matches(grant, t) for t in all_topics)
            assert covers(grant, pattern) is (not wider), (grant, pattern)

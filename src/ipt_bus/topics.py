"""Topic grammar, pattern matching and the subscription index.

Theory of operation: a topic is dot-separated segments of ``[A-Za-z0-9_-]+`` (at most 16
segments, 255 chars). A pattern may use ``*`` for exactly one segment anywhere and ``**`` as its
last segment for zero or more segments. `TopicIndex` is a segment trie: a lookup walks one literal
child and one ``*`` child per level and collects ``**`` holders on the way, so its cost depends on
the topic's depth and the patterns that could match it, never on unrelated subscriptions.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from typing import Final, Generic, TypeVar

import attrs

from ipt_bus.errors import ErrorCode, ProtocolError

MAX_TOPIC_CHARS: Final = 255
MAX_TOPIC_SEGMENTS: Final = 16
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]+")
_TOPIC: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")

K = TypeVar("K", bound=Hashable)


def validate_topic(topic: object, field: str = "topic") -> str:
    """Return `topic` if it is a valid concrete topic, else raise `ProtocolError`."""
    if not isinstance(topic, str):
        raise ProtocolError(ErrorCode.INVALID_TOPIC, "topic must be a string", field)
    if len(topic) > MAX_TOPIC_CHARS:
        raise ProtocolError(
            ErrorCode.INVALID_TOPIC, f"topic is longer than {MAX_TOPIC_CHARS} characters", field
        )
    if _TOPIC.fullmatch(topic) is None:
        if "*" in topic:
            raise ProtocolError(
                ErrorCode.INVALID_TOPIC,
                f"wildcards are for subscriptions, not for publishing: {topic!r}",
                field,
            )
        raise ProtocolError(
            ErrorCode.INVALID_TOPIC,
            f"invalid topic {topic!r}: dot-separated segments of letters, digits, '_' and '-'",
            field,
        )
    if topic.count(".") >= MAX_TOPIC_SEGMENTS:
        raise ProtocolError(
            ErrorCode.INVALID_TOPIC, f"topic has more than {MAX_TOPIC_SEGMENTS} segments", field
        )
    return topic


def validate_pattern(pattern: object, field: str = "topics") -> str:
    """Return `pattern` if it is a valid subscription pattern, else raise `ProtocolError`."""
    if not isinstance(pattern, str):
        raise ProtocolError(ErrorCode.INVALID_PATTERN, "a topic pattern must be a string", field)
    if len(pattern) > MAX_TOPIC_CHARS:
        raise ProtocolError(
            ErrorCode.INVALID_PATTERN,
            f"topic pattern is longer than {MAX_TOPIC_CHARS} characters",
            field,
        )
    segments = pattern.split(".")
    if len(segments) > MAX_TOPIC_SEGMENTS:
        raise ProtocolError(
            ErrorCode.INVALID_PATTERN,
            f"topic pattern has more than {MAX_TOPIC_SEGMENTS} segments",
            field,
        )
    for i, seg in enumerate(segments):
        if seg == "*" or (seg == "**" and i == len(segments) - 1):
            continue
        if seg == "**":
            raise ProtocolError(
                ErrorCode.INVALID_PATTERN,
                f"'**' may only be the last segment: {pattern!r}",
                field,
            )
        if _SEGMENT.fullmatch(seg) is None:
            raise ProtocolError(
                ErrorCode.INVALID_PATTERN,
                f"invalid topic pattern {pattern!r}: segments are letters, digits, '_', '-', "
                "'*' (one segment) or a final '**' (any number)",
                field,
            )
    return pattern


def parse_patterns(raw: str, field: str = "topics") -> list[str]:
    """Split a comma-separated pattern list (as in ``?topics=a,b``); empty items are ignored."""
    return [validate_pattern(p.strip(), field) for p in raw.split(",") if p.strip()]


def matches(pattern: str, topic: str) -> bool:
    """Whether `topic` matches `pattern` (both assumed valid)."""
    p = pattern.split(".")
    t = topic.split(".")
    for i, seg in enumerate(p):
        if seg == "**":
            return True
        if i >= len(t) or (seg != "*" and seg != t[i]):
            return False
    return len(p) == len(t)


def matches_any(patterns: Iterable[str], topic: str) -> bool:
    """Whether `topic` matches one of `patterns`; no patterns at all matches everything."""
    empty = True
    for pattern in patterns:
        empty = False
        if matches(pattern, topic):
            return True
    return empty


@attrs.define
class _Node(Generic[K]):
    children: dict[str, _Node[K]] = attrs.field(factory=dict)
    exact: set[K] = attrs.field(factory=set)  # pattern ends here
    rest: set[K] = attrs.field(factory=set)  # pattern ends here with '**'


@attrs.define
class TopicIndex(Generic[K]):
    """Which keys (subscribers) subscribed to patterns matching a topic.

    A key may hold many patterns; `lookup` returns each key once.
    """

    _root: _Node[K] = attrs.field(factory=_Node)
    _patterns: dict[K, set[str]] = attrs.field(factory=dict)

    def add(self, key: K, pattern: str) -> bool:
        """Subscribe `key` to `pattern`; False if it already was."""
        held = self._patterns.setdefault(key, set())
        if pattern in held:
            return False
        held.add(pattern)
        node = self._root
        segments = pattern.split(".")
        if segments[-1] == "**":
            for seg in segments[:-1]:
                node = node.children.setdefault(seg, _Node())
            node.rest.add(key)
        else:
            for seg in segments:
                node = node.children.setdefault(seg, _Node())
            node.exact.add(key)
        return True

    def remove(self, key: K, pattern: str) -> bool:
        """Unsubscribe `key` from `pattern`; False if it was not subscribed."""
        held = self._patterns.get(key)
        if held is None or pattern not in held:
            return False
        held.discard(pattern)
        if not held:
            del self._patterns[key]
        segments = pattern.split(".")
        rest = segments[-1] == "**"
        if rest:
            segments = segments[:-1]
        path = [self._root]
        for seg in segments:
            path.append(path[-1].children[seg])
        (path[-1].rest if rest else path[-1].exact).discard(key)
        # prune empty nodes bottom-up so the trie does not grow with churn
        for depth in range(len(segments), 0, -1):
            node = path[depth]
            if node.children or node.exact or node.rest:
                break
            del path[depth - 1].children[segments[depth - 1]]
        return True

    def remove_key(self, key: K) -> None:
        """Drop every pattern of `key`."""
        for pattern in list(self._patterns.get(key, ())):
            self.remove(key, pattern)

    def patterns(self, key: K) -> frozenset[str]:
        return frozenset(self._patterns.get(key, ()))

    def count(self, key: K) -> int:
        return len(self._patterns.get(key, ()))

    def lookup(self, topic: str) -> set[K]:
        """Every key with a pattern matching `topic`."""
        found: set[K] = set()
        frontier = [self._root]
        for seg in topic.split("."):
            nxt: list[_Node[K]] = []
            for node in frontier:
                if node.rest:
                    found.update(node.rest)
                child = node.children.get(seg)
                if child is not None:
                    nxt.append(child)
                star = node.children.get("*")
                if star is not None:
                    nxt.append(star)
            if not nxt:
                return found
            frontier = nxt
        for node in frontier:
            found.update(node.exact)
            found.update(node.rest)  # '**' matches zero segments too
        return found

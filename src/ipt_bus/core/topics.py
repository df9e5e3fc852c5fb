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
from typing import Any, Final, Generic, TypeVar

import attrs

from ipt_bus.core.errors import ErrorCode, ProtocolError

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


def covers(grant: str, pattern: str) -> bool:
    """Whether every topic `pattern` can match is matched by `grant` (both assumed valid):
    ``task.**`` covers ``task.*`` and ``task.a.**``; ``task.*`` covers neither ``**`` nor
    ``*.status``."""
    g, p = grant.split("."), pattern.split(".")
    g_open, p_open = g[-1] == "**", p[-1] == "**"
    if g_open:
        g = g[:-1]
    if p_open:
        p = p[:-1]
    if not g_open:
        return not p_open and len(p) == len(g) and all(map(_covers_segment, g, p))
    shortest = max(len(p), 1) if p_open else len(p)  # a topic has at least one segment
    if shortest < len(g):
        return False  # the pattern matches topics shorter than the grant allows
    # where the pattern has run out (`**`), any segment may come: only `*` covers it
    return all(_covers_segment(s, p[i]) if i < len(p) else s == "*" for i, s in enumerate(g))


def _covers_segment(grant: str, pattern: str) -> bool:
    return grant == "*" or grant == pattern  # a literal covers only itself, not "*"


def matches_any(patterns: Iterable[str], topic: str) -> bool:
    """Whether `topic` matches one of `patterns`; no patterns at all matches everything."""
    empty = True
    for pattern in patterns:
        empty = False
        if matches(pattern, topic):
            return True
    return empty


_Holders = Any  # None, one key, or a set of keys: a pattern held once costs no set


def _hold(holders: _Holders, key: K) -> _Holders:
    if holders is None:
        return key
    if isinstance(holders, set):
        holders.add(key)
        return holders
    return holders if holders == key else {holders, key}


def _release(holders: _Holders, key: K) -> _Holders:
    if isinstance(holders, set):
        holders.discard(key)
        if len(holders) == 1:
            return next(iter(holders))
        return holders or None
    return None if holders == key else holders


def _collect(found: set[K], holders: _Holders) -> None:
    if isinstance(holders, set):
        found.update(holders)
    elif holders is not None:
        found.add(holders)


class _Node:
    """A node of the radix trie: the edge into it is `label`, one or more segments (dot-joined),
    so a chain of segments no other pattern shares costs one node, not one per segment."""

    __slots__ = ("children", "exact", "label", "rest")

    def __init__(self, label: str) -> None:
        self.label = label
        self.children: dict[str, _Node] | None = None  # keyed by each child's first segment
        self.exact: _Holders = None  # keys whose pattern ends here
        self.rest: _Holders = None  # keys whose pattern ends here with '**'

    def child(self, segment: str) -> _Node | None:
        return None if self.children is None else self.children.get(segment)

    def attach(self, segment: str, node: _Node) -> None:
        if self.children is None:
            self.children = {}
        self.children[segment] = node

    def empty(self) -> bool:
        return self.children is None and self.exact is None and self.rest is None


@attrs.define
class TopicIndex(Generic[K]):
    """Which keys (subscribers) subscribed to patterns matching a topic.

    A key may hold many patterns; `lookup` returns each key once. Patterns live in a radix trie of
    segments, shared by every key that holds them: a pattern costs one node (and at most one
    split of an existing edge) whatever its length, and a pattern held by one key costs no set.
    """

    _root: _Node = attrs.field(factory=lambda: _Node(""))
    _patterns: dict[K, tuple[str, ...]] = attrs.field(factory=dict)

    def add(self, key: K, pattern: str) -> bool:
        """Subscribe `key` to `pattern`; False if it already was."""
        held = self._patterns.get(key, ())
        if pattern in held:
            return False
        self._patterns[key] = (*held, pattern)
        segments, rest = _split(pattern)
        node = self._root
        i = 0
        while i < len(segments):
            child = node.child(segments[i])
            if child is None:
                # the whole pattern is the label when nothing is shared: no new string then
                leaf = _Node(pattern if i == 0 and not rest else ".".join(segments[i:]))
                node.attach(segments[i], leaf)
                node, i = leaf, len(segments)
                break
            label = child.label.split(".")
            j = 0
            while j < len(label) and i + j < len(segments) and label[j] == segments[i + j]:
                j += 1
            if j < len(label):  # the pattern leaves this edge part-way: split it there
                middle = _Node(".".join(label[:j]))
                child.label = ".".join(label[j:])
                middle.attach(label[j], child)
                node.attach(segments[i], middle)
                child = middle
            node, i = child, i + j
        if rest:
            node.rest = _hold(node.rest, key)
        else:
            node.exact = _hold(node.exact, key)
        return True

    def remove(self, key: K, pattern: str) -> bool:
        """Unsubscribe `key` from `pattern`; False if it was not subscribed."""
        held = self._patterns.get(key, ())
        if pattern not in held:
            return False
        left = tuple(p for p in held if p != pattern)
        if left:
            self._patterns[key] = left
        else:
            del self._patterns[key]
        segments, rest = _split(pattern)
        path = [self._root]
        i = 0
        while i < len(segments):
            child = path[-1].child(segments[i])
            assert child is not None, "a held pattern is in the trie"
            path.append(child)
            i += child.label.count(".") + 1
        node = path[-1]
        if rest:
            node.rest = _release(node.rest, key)
        else:
            node.exact = _release(node.exact, key)
        self._prune(path)
        return True

    def _prune(self, path: list[_Node]) -> None:
        """Drop empty nodes bottom-up and merge a node left with one child into it, so the trie
        does not grow with churn."""
        for depth in range(len(path) - 1, 0, -1):
            node, parent = path[depth], path[depth - 1]
            first = node.label.split(".", 1)[0]
            if node.empty():
                assert parent.children is not None
                del parent.children[first]
                if not parent.children:
                    parent.children = None
                continue
            holds = node.exact is not None or node.rest is not None
            if not holds and node.children is not None and len(node.children) == 1:
                (only,) = node.children.values()
                only.label = f"{node.label}.{only.label}"
                assert parent.children is not None
                parent.children[first] = only
            break

    def remove_key(self, key: K) -> None:
        """Drop every pattern of `key`."""
        for pattern in self._patterns.get(key, ()):
            self.remove(key, pattern)

    def patterns(self, key: K) -> frozenset[str]:
        return frozenset(self._patterns.get(key, ()))

    def count(self, key: K) -> int:
        return len(self._patterns.get(key, ()))

    def pattern_bytes(self, key: K) -> int:
        """The UTF-8 bytes of the patterns `key` holds (they are ASCII: their length)."""
        return sum(map(len, self._patterns.get(key, ())))

    def lookup(self, topic: str) -> set[K]:
        """Every key with a pattern matching `topic`."""
        found: set[K] = set()
        segments = topic.split(".")
        n = len(segments)
        frontier = [(self._root, 0)]
        while frontier:
            node, i = frontier.pop()
            if node.rest is not None:  # '**' matches what is left, even nothing
                _collect(found, node.rest)
            if i == n:
                _collect(found, node.exact)
                continue
            if node.children is None:
                continue
            for first in (segments[i], "*"):
                child = node.children.get(first)
                if child is None:
                    continue
                label = child.label.split(".")
                end = i + len(label)
                if end <= n and all(
                    want in ("*", got) for want, got in zip(label, segments[i:end], strict=True)
                ):
                    frontier.append((child, end))
        return found


def _split(pattern: str) -> tuple[list[str], bool]:
    """A pattern's segments without a final '**', and whether it had one."""
    segments = pattern.split(".")
    if segments[-1] == "**":
        return segments[:-1], True
    return segments, False

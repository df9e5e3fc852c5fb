"""The stats actor: owns every counter behind `/stats` and `/topics`.

Producers send deltas with `send_nowait` (never waiting on stats); the router sends one
`Accepted`/`Dropped` per batch, so counters stay exact while the message rate stays low. Latency
is sampled (at most one sample per connection per write). A full inbox (65,536 deltas waiting)
loses the delta, whatever it is (a sample or a count), and the loss itself is counted and shown
(`/stats` → `stats_samples_lost`): the counters are exact as long as that stays 0.

Per-topic counts are kept for at most `max_topics` topics, the least recently seen evicted (and
counted): a publisher that invents a topic per event must not grow the bus without bound. The
histograms (delivery latency, publish duration) are cumulative bucket counts for `/metrics`.
"""

from __future__ import annotations

import bisect
import statistics
import time
from collections import Counter, OrderedDict, deque
from typing import Any, Final

import attrs
import trio

LATENCY_SAMPLES: Final = 10_000
MAX_TRACKED_TOPICS: Final = 10_000
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Histogram bucket bounds (seconds), from half a millisecond to the publish timeout."""
RATE_WINDOW_SECONDS: Final = 10
STABILITY_WINDOW_SECONDS: Final = 60


@attrs.define
class Histogram:
    """Cumulative counts per bucket of `BUCKETS` (plus +Inf), their sum and count."""

    counts: list[int] = attrs.field(factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    @classmethod
    def of(cls, seconds: float) -> Histogram:
        one = cls()
        one.observe(seconds)
        return one

    def add(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.total += other.total

    def export(self) -> dict[str, Any]:
        """``{"buckets": [[le, cumulative], ...], "sum": s, "count": n}`` (le "+Inf" last)."""
        running, buckets = 0, []
        for bound, n in zip((*BUCKETS, "+Inf"), self.counts, strict=True):
            running += n
            buckets.append([bound, running])
        return {"buckets": buckets, "sum": self.total, "count": running}


@attrs.frozen
class Accepted:
    count: int
    per_topic: dict[str, int]
    wall_time: float


@attrs.frozen
class Dropped:
    reason: str
    count: int


SECURITY_COUNTS: Final = ("forbidden", "rate_limited", "host_not_allowed")
"""Counted refusals shown under `/stats` "security" (with `auth_failures` by reason)."""


@attrs.frozen
class Counted:
    """Something other than an event delivery happened `count` times (`/stats` "counters")."""

    name: str
    count: int = 1


@attrs.frozen
class Delivered:
    """A connection's writes since it last reported: `events` written, the histogram of each
    write's latency (its oldest event, from accepted by the log to written to the socket), and
    one of them as a sample for `/stats` percentiles."""

    events: int
    latency: Histogram
    sample: float | None


@attrs.frozen
class PublishDurations:
    """Publishes, each from its request's arrival to its acknowledgement: one REST request, or a
    WebSocket's since its last report (every 250 ms, not per publish: a fast publisher would
    send the stats actor a message per event)."""

    durations: Histogram


@attrs.frozen
class Opened:
    conn_id: int


@attrs.frozen
class Closed:
    conn_id: int
    code: int


@attrs.frozen
class Refused:
    reason: str


@attrs.frozen
class Snapshot:
    reply: trio.MemorySendChannel[dict[str, Any]]


StatsCommand = (
    Accepted
    | Dropped
    | Counted
    | Delivered
    | PublishDurations
    | Opened
    | Closed
    | Refused
    | Snapshot
)


@attrs.define
class _Churn:
    """Connections opened and closed (by close code) in one second."""

    second: int
    opens: int = 0
    closes: Counter[int] = attrs.field(factory=Counter)


@attrs.define
class Stats:
    max_topics: int = MAX_TRACKED_TOPICS
    _started: float = attrs.field(factory=time.monotonic)
    _total: int = 0
    _deliveries: int = 0
    # topic -> [count, last seen (Unix time)], least recently seen first
    _topics: OrderedDict[str, list[float]] = attrs.field(factory=OrderedDict)
    _topics_evicted: int = 0
    _per_second: deque[tuple[int, int]] = attrs.field(factory=deque)  # (second, count)
    _dropped: Counter[str] = attrs.field(factory=Counter)
    _counts: Counter[str] = attrs.field(factory=Counter)
    _latency: deque[float] = attrs.field(factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    _delivery: Histogram = attrs.field(factory=Histogram)
    _publishing: Histogram = attrs.field(factory=Histogram)
    _open: dict[int, float] = attrs.field(factory=dict)  # conn_id -> opened (monotonic)
    # per second, not per connection: a storm of any rate costs at most a minute of seconds
    _churn: deque[_Churn] = attrs.field(factory=deque)
    _closes_total: Counter[int] = attrs.field(factory=Counter)
    _refused: Counter[str] = attrs.field(factory=Counter)

    def apply(self, command: StatsCommand) -> None:
        now = time.monotonic()
        match command:
            case Accepted(count=count, per_topic=per_topic, wall_time=wall):
                self._total += count
                self._count_topics(per_topic, wall)
                second = int(now)
                if self._per_second and self._per_second[-1][0] == second:
                    self._per_second[-1] = (second, self._per_second[-1][1] + count)
                else:
                    self._per_second.append((second, count))
                    while self._per_second[0][0] <= second - RATE_WINDOW_SECONDS - 1:
                        self._per_second.popleft()
            case Dropped(reason=reason, count=count):
                self._dropped[reason] += count
            case Counted(name=name, count=count):
                self._counts[name] += count
            case Delivered(events=events, latency=latency, sample=sample):
                self._deliveries += events
                self._delivery.add(latency)
                if sample is not None:
                    self._latency.append(sample)
            case PublishDurations(durations=durations):
                self._publishing.add(durations)
            case Opened(conn_id=conn_id):
                self._open[conn_id] = now
                self._this_second(now).opens += 1
            case Closed(conn_id=conn_id, code=code):
                self._open.pop(conn_id, None)
                self._this_second(now).closes[code] += 1
                self._closes_total[code] += 1
            case Refused(reason=reason):
                self._refused[reason] += 1
            case Snapshot():
                raise AssertionError("snapshots are answered by run()")

    def _count_topics(self, per_topic: dict[str, int], wall: float) -> None:
        topics = self._topics
        for topic, n in per_topic.items():
            seen = topics.get(topic)
            if seen is None:
                topics[topic] = [n, wall]
                if len(topics) > self.max_topics:
                    topics.popitem(last=False)
                    self._topics_evicted += 1
            else:
                seen[0] += n
                seen[1] = wall
                topics.move_to_end(topic)

    def _this_second(self, now: float) -> _Churn:
        second = int(now)
        if not self._churn or self._churn[-1].second != second:
            self._churn.append(_Churn(second))
            while self._churn[0].second <= second - STABILITY_WINDOW_SECONDS:
                self._churn.popleft()
        return self._churn[-1]

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        uptime = now - self._started
        second = int(now)
        recent = sum(c for s, c in self._per_second if s > second - RATE_WINDOW_SECONDS)
        window = min(float(RATE_WINDOW_SECONDS), max(uptime, 1e-9))
        samples = sorted(self._latency)
        ages = sorted(now - t for t in self._open.values())
        minute = [c for c in self._churn if c.second > second - STABILITY_WINDOW_SECONDS]
        closes_by_code: Counter[int] = sum((c.closes for c in minute), Counter())
        counts = Counter({t: int(seen[0]) for t, seen in self._topics.items()})
        return {
            "total_events": self._total,
            "deliveries": self._deliveries + self._counts.get("catch_up_events", 0),
            "events_per_topic": dict(counts),
            "topics_tracked": {
                "held": len(self._topics),
                "max": self.max_topics,
                "evicted": self._topics_evicted,
            },
            "active_connections": len(self._open),
            "events_per_second": {
                "last_10s": round(recent / window, 3),
                "since_start": round(self._total / max(uptime, 1e-9), 3),
            },
            "latency_ms": {
                "avg": _ms(statistics.fmean(samples)) if samples else None,
                "p50": _ms(_quantile(samples, 0.50)),
                "p99": _ms(_quantile(samples, 0.99)),
                "samples": len(samples),
            },
            "histograms": {
                "delivery_latency_seconds": self._delivery.export(),
                "publish_duration_seconds": self._publishing.export(),
            },
            "events_dropped": {
                "total": sum(self._dropped.values()),
                "by_reason": dict(self._dropped),
            },
            "connection_stability": {
                "opens_last_minute": sum(c.opens for c in minute),
                "closes_last_minute": {str(k): v for k, v in sorted(closes_by_code.items())},
                "closes_total": {str(k): v for k, v in sorted(self._closes_total.items())},
                "refused_total": dict(self._refused),
                "median_connection_age_seconds": (
                    round(statistics.median(ages), 3) if ages else None
                ),
            },
            "counters": {k: v for k, v in self._counts.items() if ":" not in k},
            "security": {
                "auth_failures": {
                    k.partition(":")[2]: v
                    for k, v in self._counts.items()
                    if k.startswith("auth_failure:")
                },
                **{k: self._counts.get(k, 0) for k in SECURITY_COUNTS},
            },
            "top_topics": [{"topic": t, "count": c} for t, c in counts.most_common(10)],
            "uptime_seconds": round(uptime, 3),
        }

    def topics(self) -> dict[str, tuple[int, float]]:
        """Every topic tracked: (count, last seen as a Unix time)."""
        return {t: (int(seen[0]), seen[1]) for t, seen in self._topics.items()}

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[StatsCommand],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with inbox:
            task_status.started()
            async for command in inbox:
                if isinstance(command, Snapshot):
                    snap = self.snapshot()
                    snap["_topics"] = self.topics()
                    command.reply.send_nowait(snap)
                else:
                    self.apply(command)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _quantile(sorted_samples: list[float], q: float) -> float | None:
    if not sorted_samples:
        return None
    return sorted_samples[min(len(sorted_samples) - 1, int(q * len(sorted_samples)))]


@attrs.define
class StatsHandle:
    """What others hold to report to and query the stats actor.

    Deltas the actor's full inbox could not take are counted here, by the one handle everybody
    shares, and reported with each snapshot; the actor's state stays its own.
    """

    _send: trio.MemorySendChannel[StatsCommand]
    lost_samples: int = 0

    def record(self, delta: StatsCommand) -> None:
        """Report a delta without waiting; a full inbox loses it and is counted."""
        try:
            self._send.send_nowait(delta)
        except trio.WouldBlock:
            self.lost_samples += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # shutting down

    def close(self) -> None:
        """Stop the stats actor once it has applied what it was sent."""
        self._send.close()

    async def snapshot(self) -> dict[str, Any]:
        """The counters now. Waits for the stats actor to work through what it was sent."""
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        await self._send.send(Snapshot(send))
        with receive:
            snap = await receive.receive()
        snap["stats_samples_lost"] = self.lost_samples
        return snap


async def start_stats(
    nursery: trio.Nursery, inbox_size: int, *, max_topics: int = MAX_TRACKED_TOPICS
) -> StatsHandle:
    """Start the stats actor in `nursery`; closing the handle's channel stops it."""
    send, receive = trio.open_memory_channel[StatsCommand](inbox_size)
    stats = Stats(max_topics=max_topics)
    await nursery.start(stats.run, receive)
    return StatsHandle(send)

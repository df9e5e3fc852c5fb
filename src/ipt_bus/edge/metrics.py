"""`GET /metrics`: the stats document in the Prometheus text format, with prometheus-client.

A collector turns one snapshot of the stats actor into metric families at scrape time, so the
hot path feeds the stats actor as before and nothing else (docs/observability.md lists every
metric). The `topic` label is bounded: the `metrics_topics` busiest topics have their own
series, the rest are summed under ``topic="_other"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client import Metric

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
OTHER: Final = "_other"
# series shown from the start (at 0), so that rate() and alerts work before the first one
DROP_REASONS: Final = ("closing",)
AUTH_REASONS: Final = ("missing", "unauthorized", "token_expired")


def render(doc: dict[str, Any], *, version: str, metrics_topics: int) -> bytes:
    """The exposition of `doc` (what `/stats` answers, with the stats actor's `_topics`), and
    of this process (CPU, memory, file descriptors, garbage collector)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_BusCollector(doc, version, metrics_topics))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return generate_latest(registry)


class _BusCollector(Collector):
    def __init__(self, doc: dict[str, Any], version: str, metrics_topics: int) -> None:
        self._doc = doc
        self._version = version
        self._topics = metrics_topics

    def collect(self) -> Iterator[Metric]:
        doc = self._doc
        log = doc["log"]
        info = InfoMetricFamily("ipt_bus", "The bus: its version, storage and log epoch.")
        info.add_metric(
            [], {"version": self._version, "storage": log["storage"], "epoch": log["epoch"]}
        )
        yield info
        yield self._published()
        yield _counter("ipt_bus_deliveries", "Events written to subscribers.", doc["deliveries"])
        dropped = CounterMetricFamily(
            "ipt_bus_events_dropped", "Events not delivered, by reason.", labels=["reason"]
        )
        by_reason = dict.fromkeys(DROP_REASONS, 0) | doc["events_dropped"]["by_reason"]
        for reason, n in sorted(by_reason.items()):
            dropped.add_metric([reason], n)
        yield dropped
        connections = GaugeMetricFamily(
            "ipt_bus_connections", "Open connections, by transport.", labels=["transport"]
        )
        connections.add_metric(["websocket"], doc["active_connections"])
        yield connections
        closed = CounterMetricFamily(
            "ipt_bus_connections_closed",
            "WebSocket connections closed, by close code.",
            labels=["code"],
        )
        for code, n in doc["connection_stability"]["closes_total"].items():
            closed.add_metric([code], n)
        yield closed
        histograms = doc["histograms"]
        yield _histogram(
            "ipt_bus_delivery_latency_seconds",
            "Per socket write: its oldest event's time from accepted by the log to written.",
            histograms["delivery_latency_seconds"],
        )
        yield _histogram(
            "ipt_bus_publish_duration_seconds",
            "Per publish: from the request's arrival to its acknowledgement (the log has it).",
            histograms["publish_duration_seconds"],
        )
        yield _gauge("ipt_bus_log_events", "Events the log holds.", log["events"])
        yield _gauge("ipt_bus_log_bytes", "Bytes of event data the log holds.", log["bytes"])
        yield _gauge("ipt_bus_log_last_seq", "The newest event's seq.", log["last_seq"] or 0)
        yield _gauge(
            "ipt_bus_dead_letters", "Dead letters held (/dlq).", doc["dead_letters"]["size"]
        )
        security = doc["security"]
        yield _counter(
            "ipt_bus_rate_limited", "Publishes refused over a rate limit.", security["rate_limited"]
        )
        yield _counter(
            "ipt_bus_forbidden", "Requests refused by a token's grant.", security["forbidden"]
        )
        failures = CounterMetricFamily(
            "ipt_bus_auth_failures", "Requests with no valid token, by reason.", labels=["reason"]
        )
        for reason, n in sorted(
            (dict.fromkeys(AUTH_REASONS, 0) | security["auth_failures"]).items()
        ):
            failures.add_metric([reason], n)
        yield failures
        tracked = doc["topics_tracked"]
        yield _gauge("ipt_bus_topics_tracked", "Topics with counts kept.", tracked["held"])
        yield _counter(
            "ipt_bus_topics_evicted",
            "Topics whose counts were dropped (least recently seen, past --max-tracked-topics).",
            tracked["evicted"],
        )
        yield _counter(
            "ipt_bus_stats_samples_lost",
            "Stats updates lost to a full stats inbox (counters are exact while this is 0).",
            doc["stats_samples_lost"],
        )

    def _published(self) -> Metric:
        published = CounterMetricFamily(
            "ipt_bus_events_published",
            f"Events accepted, by topic (the {self._topics} busiest; the rest as {OTHER!r}).",
            labels=["topic"],
        )
        counts: dict[str, tuple[int, float]] = self._doc["_topics"]
        busiest = sorted(counts.items(), key=lambda item: item[1][0], reverse=True)
        shown = 0
        for topic, (count, _) in busiest[: self._topics]:
            published.add_metric([topic], count)
            shown += count
        published.add_metric([OTHER], self._doc["total_events"] - shown)
        return published


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)


def _histogram(name: str, documentation: str, exported: dict[str, Any]) -> Metric:
    buckets = [(_le(bound), float(count)) for bound, count in exported["buckets"]]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=exported["sum"])


def _le(bound: float | str) -> str:
    return bound if isinstance(bound, str) else repr(float(bound))

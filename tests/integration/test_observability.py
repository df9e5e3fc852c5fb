"""`/metrics` after known traffic, its protection and bounded labels; `/topics` presence and
bounds (issue 14)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from ipt_bus.client import EventBusClient
from tests.conftest import recv, request, running_server, wait_for, ws
from tests.integration.test_security import bearer, secure_server, token

if TYPE_CHECKING:
    from ipt_bus.server import Server


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def _metrics(server: Server, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return await http.get("/metrics", **kwargs)


async def test_metrics_count_known_traffic_exactly() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as http:
        async with ws(server, "topics=**") as sub, ws(server, "topics=nobody.listens") as pub:
            for n in range(3):  # one event per write: each waits for its delivery
                sent = await http.post("/events", json={"type": "t", "topic": "a", "payload": {}})
                assert sent.status_code == 201
                assert (await recv(sub))["seq"] == n + 1
            for n in range(2):  # WebSocket publishes, acked; then their events arrive
                event = {"type": "t", "topic": "b", "payload": {}}
                frame = {"action": "publish", "id": n, "event": event}
                assert (await request(pub, frame))["action"] == "published"
                assert (await recv(sub))["topic"] == "b"
            bad = await http.post("/events", json={"type": "t", "topic": "a..b", "payload": {}})
            assert bad.status_code == 400

        async def scrape() -> dict[Any, float]:
            response = await http.get("/metrics")
            assert response.headers["content-type"].startswith("text/plain; version=")
            return _samples(response.text)

        async def closed() -> bool:  # then its writes have been reported
            return (await scrape())[("ipt_bus_connections", (("transport", "websocket"),))] == 0

        await wait_for(closed)
        samples = await scrape()
    assert samples[("ipt_bus_events_published_total", (("topic", "a"),))] == 3
    assert samples[("ipt_bus_events_published_total", (("topic", "b"),))] == 2
    assert samples[("ipt_bus_events_published_total", (("topic", "_other"),))] == 0
    assert samples[("ipt_bus_deliveries_total", ())] == 5
    assert samples[("ipt_bus_delivery_latency_seconds_count", ())] == 5
    assert samples[("ipt_bus_delivery_latency_seconds_bucket", (("le", "+Inf"),))] == 5
    assert samples[("ipt_bus_publish_duration_seconds_count", ())] == 5  # not the refused one
    assert 0 < samples[("ipt_bus_publish_duration_seconds_sum", ())] < 5
    assert samples[("ipt_bus_dead_letters", ())] == 1
    assert samples[("ipt_bus_log_events", ())] == 5
    assert samples[("ipt_bus_connections_closed_total", (("code", "1000"),))] == 2
    assert samples[("ipt_bus_rate_limited_total", ())] == 0
    info = [k for k in samples if k[0] == "ipt_bus_info"]
    assert len(info) == 1
    labels = dict(info[0][1])
    assert (labels["storage"], labels["epoch"]) == ("memory", server.bus.log.epoch)
    assert samples[("process_resident_memory_bytes", ())] > 10_000_000


async def test_the_topic_label_is_bounded() -> None:
    async with running_server(metrics_topics=3) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for topic, count in (("a", 5), ("b", 4), ("c", 3), ("d", 2), ("e", 1)):
                events = [{"type": "t", "topic": topic, "payload": {}}] * count
                assert (await http.post("/events", json=events)).status_code == 201
        samples = _samples((await _metrics(server)).text)
    published = {
        dict(labels)["topic"]: value
        for (name, labels), value in samples.items()
        if name == "ipt_bus_events_published_total"
    }
    assert published == {"a": 5, "b": 4, "c": 3, "_other": 3}


async def test_metrics_need_a_token_unless_public() -> None:
    async with secure_server() as server:
        assert (await _metrics(server)).status_code == 401
        reader = bearer(token("prometheus"))  # any valid token, no grant needed
        assert (await _metrics(server, headers=reader)).status_code == 200
        failures = _samples((await _metrics(server, headers=reader)).text)
        assert failures[("ipt_bus_auth_failures_total", (("reason", "missing"),))] == 1
    async with secure_server(metrics_public=True) as server:
        assert (await _metrics(server)).status_code == 200


async def test_topics_say_who_listens_and_stay_bounded() -> None:
    async with running_server(max_tracked_topics=50) as server:
        async with (
            ws(server, "topics=task.*"),
            ws(server, "topics=task.status,cost.**"),
            httpx.AsyncClient(base_url=server.url) as http,
        ):
            if True:
                events = [{"type": "t", "topic": f"x.{n}", "payload": {}} for n in range(120)]
                assert (await http.post("/events", json=events)).status_code == 201
                body = (await http.get("/topics")).json()
        listed = {t["topic"]: t for t in body["topics"]}
        assert listed["task.status"]["subscribers"] == 2
        assert listed["task.created"]["subscribers"] == 1
        assert listed["cost.update"]["subscribers"] == 1
        assert listed["phase.started"]["subscribers"] == 0
        seen = [t for t in listed if t.startswith("x.")]
        assert len(seen) == 50  # the 50 most recently seen
        assert "x.119" in listed
        assert "x.0" not in listed
        assert body["tracked"] == {"held": 50, "max": 50, "evicted": 70}


@pytest.mark.parametrize("name", ["max_tracked_topics", "metrics_topics", "route_cache_topics"])
def test_bounds_must_be_positive(name: str) -> None:
    from ipt_bus.core.config import BusConfig

    with pytest.raises(ValueError, match=name):
        BusConfig(**{name: 0})  # type: ignore[arg-type]


async def test_the_grafana_dashboard_uses_only_served_metrics() -> None:
    dashboard = Path(__file__).parents[2] / "docs" / "grafana" / "ipt-bus-dashboard.json"
    panels = orjson.loads(dashboard.read_bytes())["panels"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\b((?:ipt_bus|process)_\w+)", expr)}
    async with running_server() as server:
        client = EventBusClient(server.url)
        async with client:  # a connection opened and closed: its series exists
            pass
        await wait_for(lambda: server.bus.router.statistics().connections == 0)
        text = (await _metrics(server)).text
    families = re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE)
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    names = {family + suffix for family in families for suffix in suffixes}
    assert used, exprs
    assert used <= names, used - names


async def test_observability_md_commands_run() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "observability.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", doc, re.DOTALL)
    commands = [line for block in blocks for line in block.strip().splitlines()]
    assert len(commands) == 2
    async with running_server() as server:
        for command in commands:
            local = command.replace("http://127.0.0.1:8765", server.url)
            with trio.fail_after(30):
                result = await trio.run_process(
                    ["bash", "-e", "-o", "pipefail", "-c", local], capture_stdout=True
                )
            assert result.stdout.startswith(b"{"), command

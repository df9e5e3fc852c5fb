"""`/openapi.json` describes every route the app serves, and only those (issue 14); the live
check of answers against it is schemathesis in `nox -s contract`."""

from __future__ import annotations

import re

import httpx

from ipt_bus import __version__
from ipt_bus.edge import openapi
from ipt_bus.edge.app import create_app
from tests.conftest import running_server

LEAN_ROUTES = {("/events", "post"), ("/ws", "get")}  # answered before Quart (edge/app.py)


def _served() -> set[tuple[str, str]]:
    app = create_app()
    routes = set(LEAN_ROUTES)
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((path, method.lower()))
    return routes


def test_every_served_route_is_described_and_only_those() -> None:
    document = openapi.document(__version__)
    described = {(path, method) for path, ops in document["paths"].items() for method in ops}
    served = _served()
    served -= {("/ws", m) for m in ("post", "put", "delete", "patch")}  # all 426, as GET
    assert described == served


async def test_the_document_is_served_and_every_error_status_is_described() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as http:
        document = (await http.get("/openapi.json")).json()
        assert document["openapi"] == "3.1.0"
        assert document["info"]["version"] == __version__
        index = (await http.get("/", headers={"Accept": "application/json"})).json()
        assert set(index["endpoints"]) == set(document["paths"])
        browser = await http.get("/", headers={"Accept": "text/html,*/*;q=0.8"})
        assert (browser.status_code, browser.headers["location"]) == (302, "/ui/")
        posted = document["paths"]["/events"]["post"]
        for status in ("201", "400", "413", "415", "429", "503"):
            assert status in posted["responses"], status
        standard = document["components"]["schemas"]["Event_task.status"]
        payload = standard["properties"]["payload"]["$ref"]
        assert payload == "#/components/schemas/Payload_task.status"
        task_status = document["components"]["schemas"]["Payload_task.status"]
        assert set(task_status["required"]) == {"task_id", "status"}

"""The dashboard (/ui/) in a real browser: Debian's chromium driven by Playwright (issue 14).

Playwright's own browser download is not reachable here, so the test launches the system's
chromium (`.ci/run` installs it when missing). It runs in a worker thread: Playwright's sync
API runs its own event loop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio

from ipt_bus.core.errors import StorageError
from tests.conftest import running_server
from tests.integration.test_security import secure_server, token

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ipt_bus.server import Server

from playwright import sync_api as playwright

CHROMIUM = shutil.which("chromium")


def _publish(url: str, topic: str) -> float:
    response = httpx.post(f"{url}/events", json={"type": "t", "topic": topic, "payload": {}})
    assert response.status_code == 201, response.text
    return time.monotonic()


@contextlib.contextmanager
def _page() -> Iterator[playwright.Page]:
    """A fresh page in Debian's chromium, closed on the way out."""
    assert CHROMIUM is not None
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


_BROWSER = pytest.mark.skipif(
    os.environ.get("IPT_BUS_SKIP_BROWSER") == "1", reason="IPT_BUS_SKIP_BROWSER=1 was set"
)


def _drive(server: Server) -> dict[str, Any]:
    url = server.url
    errors: list[str] = []
    found: dict[str, Any] = {}
    with _page() as page:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/")  # a browser is sent on to /ui/
        found["url"] = page.url
        # its own live tail is connected (the page's CSP forbids eval: no wait_for_function)
        playwright.expect(page.locator("#tile-connections")).to_have_text("1")
        published = _publish(url, "custom.hello")
        page.locator(".event[data-topic='custom.hello']").wait_for(timeout=2000)
        found["tail_seconds"] = time.monotonic() - published

        page.fill("#filter", "work.*")
        _publish(url, "custom.other")
        _publish(url, "work.done.extra")  # not matched by work.*
        _publish(url, "work.done")
        page.locator(".event[data-topic='work.done']").wait_for(state="attached")
        page.locator(".event[data-topic='custom.other']").wait_for(state="attached")
        found["visible"] = page.eval_on_selector_all(
            ".event:not(.hidden)", "rows => rows.map(r => r.dataset.topic)"
        )
        page.fill("#filter", "")
        page.locator(".event[data-topic='custom.other']").wait_for(state="visible")

        page.locator(".event[data-topic='work.done']").click()
        found["expanded"] = page.locator(".event[data-topic='work.done'] pre").inner_text()

        retry = page.locator("#dlq tr[data-id='1'] button.retry")
        retry.wait_for()
        retry.click()
        page.locator("#dlq-status", has_text="published again").wait_for()
        page.locator("#dlq tr[data-id='1']").wait_for(state="detached")
        page.locator(".event[data-topic='custom.retried']").wait_for()
        page.locator("#connections tbody tr").first.wait_for()
    found["errors"] = errors
    return found


@_BROWSER
async def test_the_dashboard_in_a_real_browser() -> None:
    assert CHROMIUM, "the browser test needs chromium: apt-get install -y chromium (.ci/run does)"
    async with running_server() as server:
        raw = '{"type": "t", "topic": "custom.retried", "payload": {}}'
        server.bus.dead_letters.add("rest", StorageError("the disk was full then"), raw)
        with trio.fail_after(60):
            found = await trio.to_thread.run_sync(_drive, server)
        assert server.bus.log.last_seq == 5  # hello, other, extra, created, the retried one
    assert found["url"].endswith("/ui/")
    assert found["errors"] == []
    assert found["tail_seconds"] < 2
    assert found["visible"] == ["work.done"]  # newest first; the filter hid the rest
    assert '"topic": "work.done"' in found["expanded"]


def _drive_with_token(url: str, admin: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with _page() as page:
        page.goto(f"{url}/ui/")
        page.locator("#auth").wait_for(state="visible")  # the bus asked for a token
        page.fill("#token", admin)
        page.click("#token-save")
        playwright.expect(page.locator("#tile-connections")).to_have_text("1", timeout=10_000)
        response = httpx.post(
            f"{url}/events",
            json={"type": "t", "topic": "custom.secret", "payload": {}},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert response.status_code == 201
        page.locator(".event[data-topic='custom.secret']").wait_for()
        found["kept"] = page.evaluate("() => sessionStorage.getItem('ipt_bus_token')")
    return found


@_BROWSER
async def test_the_dashboard_with_a_token() -> None:
    """Entered once, kept in sessionStorage, sent on REST and as ?token= on /ws."""
    assert CHROMIUM, "the browser test needs chromium: apt-get install -y chromium (.ci/run does)"
    admin = token("ops", publish=["**"], subscribe=["**"], admin=True)
    async with secure_server() as server:
        with trio.fail_after(60):
            found = await trio.to_thread.run_sync(_drive_with_token, server.url, admin)
    assert found["kept"] == admin

"""The client side of the `ipt-bus` command: `tail`, `publish`, `stats`, `topics`.

Exit codes: 0 done (for `tail`: stopped with Ctrl-C), 1 the bus could not be reached or failed,
2 bad arguments, input the bus rejected, or a request it refused (token, permission). Errors are
one line on stderr. Each command takes the bus's URL, a token (default ``$IPT_BUS_TOKEN``) and,
for ``https://``, a CA bundle to trust.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx
import orjson
import trio

from ipt_bus.client._common import (
    TokenSource,
    Verify,
    auth_headers,
    bus_url,
    refused,
    ssl_context,
    token_source,
    unreachable,
)
from ipt_bus.client.aio import EventBusClient
from ipt_bus.client.publisher import EventBusPublisher
from ipt_bus.core.codec import event_to_wire
from ipt_bus.core.errors import BusUnavailable, HistoryLost, PublishRejected, RequestRefused
from ipt_bus.core.model import Event

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ipt_bus.core.frames import Gap

OK, UNREACHABLE, BAD_INPUT = 0, 1, 2
_COLOURS = {"task": 36, "phase": 34, "cost": 33, "tool": 35, "logs": 37, "file": 32}
_LEVEL_COLOURS = {"logs.error": 31, "logs.warning": 33}


def _fail(message: str, code: int) -> int:
    print(f"ipt-bus: {message}", file=sys.stderr)
    return code


def _unreachable(url: str, exc: object) -> int:
    return _fail(str(unreachable(url, exc)), UNREACHABLE)


# --- tail -----------------------------------------------------------------------------------


def format_event(event: Event, *, colour: bool) -> str:
    """One readable line: time, seq, topic, type, payload."""
    when = (event.timestamp or datetime.now(UTC)).strftime("%H:%M:%S.%f")[:-3]
    topic = event.topic
    payload = orjson.dumps(event.payload).decode()
    if len(payload) > 200:
        payload = payload[:197] + "..."
    if colour:
        code = _LEVEL_COLOURS.get(topic) or _COLOURS.get(topic.split(".", 1)[0], 0)
        topic = f"\x1b[{code}m{topic}\x1b[0m" if code else topic
        when = f"\x1b[2m{when}\x1b[0m"
    return f"{when} {event.seq:>7} {topic} {event.type} {payload}"


def tail(
    url: str | None,
    patterns: Sequence[str],
    since: int | None,
    as_json: bool,
    out: TextIO,
    *,
    token: TokenSource = None,
    verify: Verify = True,
) -> int:
    url = bus_url(url)
    colour = out.isatty() and not as_json

    def show(event: Event) -> None:
        if as_json:
            line = orjson.dumps(event_to_wire(event), option=orjson.OPT_UTC_Z).decode()
        else:
            line = format_event(event, colour=colour)
        print(line, file=out, flush=True)

    def gap(g: Gap) -> None:
        to = "" if g.to_seq is None else f"..{g.to_seq}"
        print(f"ipt-bus: events {g.from_seq}{to} are not in the log ({g.reason})", file=sys.stderr)

    async def run() -> int:
        client = EventBusClient(
            url, topics=list(patterns) or None, since=since, token=token, verify=verify
        )
        client.add_event_handler("**", show)
        client.on_gap(gap)
        try:
            await client.connect_async()
            await client.listen_async()
        except BusUnavailable as exc:
            return _fail(str(exc), UNREACHABLE)
        except RequestRefused as exc:
            return _fail(str(exc), BAD_INPUT)
        except HistoryLost as exc:  # pragma: no cover - on_gap is registered
            return _fail(str(exc), UNREACHABLE)
        finally:
            await client.close()
        return OK

    try:
        return trio.run(run)
    except KeyboardInterrupt:
        return OK


# --- publish --------------------------------------------------------------------------------


def publish(
    url: str | None,
    topic: str,
    type_: str,
    payload: str | None,
    source: str | None,
    correlation_id: str | None,
    out: TextIO,
    *,
    token: TokenSource = None,
    verify: Verify = True,
) -> int:
    url = bus_url(url)
    try:
        body = _payload(payload)
    except ValueError as exc:
        return _fail(str(exc), BAD_INPUT)
    event = Event(
        type=type_, topic=topic, payload=body, source=source, correlation_id=correlation_id
    )
    with EventBusPublisher(url, retries=1, token=token, verify=verify) as publisher:
        try:
            published = publisher.publish(event)
        except PublishRejected as exc:
            return _fail(str(exc), BAD_INPUT)
        except BusUnavailable as exc:
            return _fail(str(exc), UNREACHABLE)
    print(orjson.dumps({"id": published.id, "seq": published.seq}).decode(), file=out)
    return OK


def _payload(raw: str | None) -> dict[str, Any]:
    """``--payload '{"a": 1}'`` or ``--payload @file.json``; none: ``{}``."""
    if raw is None:
        return {}
    source = "--payload"
    if raw.startswith("@"):
        path = Path(raw[1:])
        source = str(path)
        try:
            raw = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the payload file {path}: {exc.strerror}") from None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{source} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{source} must be a JSON object, got {type(value).__name__}")
    return value


# --- stats and topics -----------------------------------------------------------------------


def _get(url: str, path: str, token: TokenSource, verify: Verify) -> Any:
    """GET `path` as JSON. Raises `RequestRefused` (a 4xx) or `httpx.HTTPError`."""
    headers = auth_headers(token_source(token))
    context = ssl_context(verify)
    with httpx.Client(base_url=url, timeout=10, headers=headers, verify=context) as http:
        response = http.get(path)
        refusal = refused(response.status_code, response.content)
        if refusal is not None:
            raise refusal
        response.raise_for_status()
        return response.json()


def stats(
    url: str | None, as_json: bool, out: TextIO, *, token: TokenSource = None, verify: Verify = True
) -> int:
    url = bus_url(url)
    try:
        s = _get(url, "/stats", token, verify)
    except RequestRefused as exc:
        return _fail(str(exc), BAD_INPUT)
    except httpx.HTTPError as exc:
        return _unreachable(url, exc)
    if as_json:
        print(orjson.dumps(s, option=orjson.OPT_INDENT_2).decode(), file=out)
        return OK
    rate, lat, log = s["events_per_second"], s["latency_ms"], s["log"]
    dropped = s["events_dropped"]
    per_second = f"{rate['last_10s']:,.1f} (last 10 s), {rate['since_start']:,.1f} (since start)"
    held = f"{log['events']:,} events, seq {log['first_seq']}..{log['last_seq']}"
    top = ", ".join(f"{t['topic']} ({t['count']:,})" for t in s["top_topics"][:5])
    rows = [
        ("uptime", f"{s['uptime_seconds']:.0f} s"),
        ("events", f"{s['total_events']:,}"),
        ("events/s", per_second),
        ("connections", f"{s['active_connections']}"),
        ("latency ms", f"avg {lat['avg']}  p50 {lat['p50']}  p99 {lat['p99']}"),
        ("dropped", f"{dropped['total']:,} {dropped['by_reason'] or ''}".rstrip()),
        ("log", f"{log['storage']}: {held}, {log['bytes']:,} bytes"),
        ("dead letters", f"{s['dead_letters']['size']:,}"),
        ("top topics", top or "-"),
    ]
    security = s.get("security", {})
    refusals = {
        **{f"auth {k}": v for k, v in security.get("auth_failures", {}).items()},
        **{k: v for k, v in security.items() if isinstance(v, int) and v},
    }
    if refusals:
        rows.append(("refused", ", ".join(f"{k} {v:,}" for k, v in refusals.items())))
    if log.get("problem"):
        rows.append(("problem", log["problem"]))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    return OK


def topics(
    url: str | None, as_json: bool, out: TextIO, *, token: TokenSource = None, verify: Verify = True
) -> int:
    url = bus_url(url)
    try:
        body = _get(url, "/topics", token, verify)
    except RequestRefused as exc:
        return _fail(str(exc), BAD_INPUT)
    except httpx.HTTPError as exc:
        return _unreachable(url, exc)
    if as_json:
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode(), file=out)
        return OK
    rows = [
        (t["topic"], f"{t['count']:,}", t["last_seen"] or "-", t["description"] or "")
        for t in body["topics"]
    ]
    widths = [
        max(len(r[i]) for r in [("TOPIC", "COUNT", "LAST SEEN", ""), *rows]) for i in range(3)
    ]
    print(
        f"{'TOPIC':<{widths[0]}}  {'COUNT':>{widths[1]}}  {'LAST SEEN':<{widths[2]}}  DESCRIPTION",
        file=out,
    )
    for topic, count, last, description in rows:
        print(
            f"{topic:<{widths[0]}}  {count:>{widths[1]}}  {last:<{widths[2]}}  {description}",
            file=out,
        )
    return OK

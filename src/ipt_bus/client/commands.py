"""The client side of the `ipt-bus` command: `tail`, `publish`, `history`, `dlq`, `stats`,
`topics`.

Exit codes: 0 done (for `tail`: stopped with Ctrl-C, `--count` reached, or idle for
`--timeout`), 1 the bus could not be reached or failed, 2 bad arguments, input the bus rejected,
or a request it refused (token, permission), 3 `tail --count` timed out first. Errors are one
line on stderr. Each command takes the bus's URL, a token (default ``$IPT_BUS_TOKEN``) and, for
``https://``, a CA bundle to trust. Output goes to pipes as to terminals: colour only on a
terminal and without ``$NO_COLOR``; a reader that goes away (``| head -1``) ends the command
quietly, as it ends `cat`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs
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
from ipt_bus.core.codec import event_from_bus, event_to_wire
from ipt_bus.core.errors import BusUnavailable, HistoryLost, PublishRejected, RequestRefused
from ipt_bus.core.model import Event

if TYPE_CHECKING:
    from collections.abc import Callable

    from ipt_bus.core.frames import Gap

OK, UNREACHABLE, BAD_INPUT, TIMED_OUT = 0, 1, 2, 3
PAGE = 1000  # events or dead letters asked for per request (the bus's max_query_limit)
_COLOURS = {"task": 36, "phase": 34, "cost": 33, "tool": 35, "logs": 37, "file": 32}
_LEVEL_COLOURS = {"logs.error": 31, "logs.warning": 33}


def _fail(message: str, code: int) -> int:
    print(f"ipt-bus: {message}", file=sys.stderr)
    return code


def _unreachable(url: str, exc: object) -> int:
    return _fail(str(unreachable(url, exc)), UNREACHABLE)


def output_closed(out: TextIO) -> None:
    """The reader of `out` went away: drop what is still buffered there (else Python's final
    flush prints a `BrokenPipeError` at exit)."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())


def use_colour(out: TextIO) -> bool:
    """Colour on a terminal, unless ``$NO_COLOR`` is set (no-color.org)."""
    return out.isatty() and not os.environ.get("NO_COLOR")


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
    count: int | None = None,
    idle_timeout: float | None = None,
    token: TokenSource = None,
    verify: Verify = True,
) -> int:
    """Print events until Ctrl-C, `count` events, `idle_timeout` seconds with none, or until
    the reader of `out` goes away."""
    url = bus_url(url)
    colour = use_colour(out) and not as_json
    stop = trio.CancelScope()
    shown = 0
    closed = False

    def show(event: Event) -> None:
        nonlocal shown, closed
        if stop.cancel_called:  # the rest of a batch after the end
            return
        if as_json:
            line = orjson.dumps(event_to_wire(event), option=orjson.OPT_UTC_Z).decode()
        else:
            line = format_event(event, colour=colour)
        try:
            print(line, file=out, flush=True)
        except BrokenPipeError:
            closed = True
            output_closed(out)
            stop.cancel()
            return
        shown += 1
        if count is not None and shown >= count:
            stop.cancel()
        elif idle_timeout is not None:
            stop.deadline = trio.current_time() + idle_timeout

    def gap(g: Gap) -> None:
        _tell_gap(g.from_seq, g.to_seq, g.reason)

    async def run() -> int:
        client = EventBusClient(
            url, topics=list(patterns) or None, since=since, token=token, verify=verify
        )
        client.add_event_handler("**", show)
        client.on_gap(gap)
        if idle_timeout is not None:
            stop.deadline = trio.current_time() + idle_timeout
        try:
            with stop:
                await client.connect_async()
                await client.listen_async()
        except BusUnavailable as exc:
            return _fail(str(exc), UNREACHABLE)
        except RequestRefused as exc:
            return _fail(str(exc), BAD_INPUT)
        except HistoryLost as exc:  # pragma: no cover - on_gap is registered
            return _fail(str(exc), UNREACHABLE)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await client.close()
        if closed or count is None or shown >= count:
            return OK
        return _fail(f"{shown} of {count} events arrived before the --timeout", TIMED_OUT)

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
    """``--payload '{"a": 1}'``, ``--payload @file.json`` or ``--payload @-`` (standard input);
    none: ``{}``."""
    if raw is None:
        return {}
    source = "--payload"
    if raw == "@-":
        source = "the payload on standard input"
        raw = sys.stdin.read()
    elif raw.startswith("@"):
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


# --- requests -------------------------------------------------------------------------------


def _client(url: str, token: TokenSource, verify: Verify) -> httpx.Client:
    headers = auth_headers(token_source(token))
    return httpx.Client(base_url=url, timeout=10, headers=headers, verify=ssl_context(verify))


def _call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """One request; its JSON answer (None when it has no body). Raises `RequestRefused` (a
    4xx) or `httpx.HTTPError`."""
    response = http.request(method, path, **kwargs)
    refusal = refused(response.status_code, response.content)
    if refusal is not None:
        raise refusal
    response.raise_for_status()
    return response.json() if response.content else None


def _get(url: str, path: str, token: TokenSource, verify: Verify) -> Any:
    with _client(url, token, verify) as http:
        return _call(http, "GET", path)


def _rest_command(url: str, run: Callable[[], None]) -> int:
    """Run a command's REST calls: exit 0, or one line on stderr and the exit code for why."""
    try:
        run()
    except RequestRefused as exc:
        return _fail(str(exc), BAD_INPUT)
    except httpx.HTTPError as exc:
        return _unreachable(url, exc)
    return OK


def _tell_gap(from_seq: int, to_seq: int | None, reason: str) -> None:
    to = "" if to_seq is None else f"..{to_seq}"
    print(f"ipt-bus: events {from_seq}{to} are not in the log ({reason})", file=sys.stderr)


# --- history and dead letters ---------------------------------------------------------------


@attrs.frozen
class HistoryQuery:
    """The filters of `GET /events` (docs/rest.md), as `ipt-bus history` takes them."""

    topics: Sequence[str] = ()
    types: Sequence[str] = ()
    correlation_id: str | None = None
    time_from: str | None = None
    time_to: str | None = None

    def params(self) -> list[tuple[str, str]]:
        params = [("topic", t) for t in self.topics] + [("type", t) for t in self.types]
        for name, value in (
            ("correlation_id", self.correlation_id),
            ("from", self.time_from),
            ("to", self.time_to),
        ):
            if value is not None:
                params.append((name, value))
        return params


def history(
    url: str | None,
    query: HistoryQuery,
    since: int | None,
    limit: int | None,
    as_json: bool,
    out: TextIO,
    *,
    token: TokenSource = None,
    verify: Verify = True,
) -> int:
    """Print the logged events after `since` (default: from the start), oldest first, page by
    page, up to `limit` (default: all of them)."""
    url = bus_url(url)
    colour = use_colour(out) and not as_json

    def run() -> None:
        cursor, epoch, left = since or 0, None, limit
        with _client(url, token, verify) as http:
            while left is None or left > 0:
                page = PAGE if left is None else min(PAGE, left)
                params = [*query.params(), ("since", str(cursor)), ("limit", str(page))]
                if epoch is not None:
                    params.append(("epoch", epoch))
                body = _call(http, "GET", "/events", params=params)
                for gap in body.get("gaps", ()):
                    _tell_gap(gap["from_seq"], gap.get("to_seq"), gap["reason"])
                for wire in body["events"]:
                    if as_json:
                        print(orjson.dumps(wire).decode(), file=out)
                    else:
                        print(format_event(event_from_bus(wire), colour=colour), file=out)
                cursor, epoch = body["next"], body["epoch"]
                if left is not None:
                    left -= body["count"]
                if body["count"] < body["limit"]:  # the page reached the end of the log
                    break

    return _rest_command(url, run)


def dlq(
    url: str | None,
    action: str,
    letter_id: int | None,
    limit: int | None,
    as_json: bool,
    out: TextIO,
    *,
    token: TokenSource = None,
    verify: Verify = True,
) -> int:
    """`list` the dead letters (all, or the first `limit`), `retry` or `delete` one."""
    url = bus_url(url)

    def run() -> None:
        with _client(url, token, verify) as http:
            if action == "retry":
                answer = _call(http, "POST", f"/dlq/{letter_id}/retry", json={})
                print(orjson.dumps(answer).decode(), file=out)
            elif action == "delete":
                _call(http, "DELETE", f"/dlq/{letter_id}")
            else:
                _list_dead_letters(http, limit, as_json, out)

    return _rest_command(url, run)


def _list_dead_letters(http: httpx.Client, limit: int | None, as_json: bool, out: TextIO) -> None:
    after, left = 0, limit
    header = not as_json
    while left is None or left > 0:
        page = PAGE if left is None else min(PAGE, left)
        body = _call(http, "GET", "/dlq", params={"after": after, "limit": page})
        if header:
            print(f"{'ID':>6}  {'AT':<24}  {'SOURCE':<9}  {'TRIES':>5}  ERROR", file=out)
            header = False
        for letter in body["dead_letters"]:
            if as_json:
                print(orjson.dumps(letter).decode(), file=out)
                continue
            error = f"{letter['error']['code']}: {letter['error']['message']}"
            print(
                f"{letter['id']:>6}  {letter['at']:<24}  {letter['source']:<9}  "
                f"{letter['attempts']:>5}  {error[:120]}",
                file=out,
            )
        if not body["count"]:
            break
        after = body["next"]
        if left is not None:
            left -= body["count"]


# --- stats and topics -----------------------------------------------------------------------


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
        **{k: security[k] for k in ("forbidden", "rate_limited", "host_not_allowed")
           if security.get(k)},
    }  # fmt: skip
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

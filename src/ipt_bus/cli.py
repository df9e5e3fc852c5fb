"""The `ipt-bus` command: `serve` runs the bus; `tail`, `publish`, `history`, `dlq`, `stats` and
`topics` talk to one; `token` signs a token for a bus's secret. Exit codes: 0 done (a clean
stop), 1 the bus failed or could not be reached, 2 bad arguments (or input the bus rejected or
refused), 3 `tail --count` timed out."""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import sys
import time
from typing import TYPE_CHECKING, TextIO, TypeVar

import trio

from ipt_bus import __version__
from ipt_bus.client import commands as client_commands
from ipt_bus.core.auth import Grant, Keys, make_token
from ipt_bus.core.config import DEFAULT_PORT, BusConfig, parse_duration, parse_origins, parse_size
from ipt_bus.core.errors import ProtocolError, StartupError
from ipt_bus.core.topics import validate_pattern

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ipt_bus.server import Server

E = TypeVar("E", bound=BaseException)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipt-bus", description="ipt_bus event bus")
    parser.add_argument("--version", action="version", version=f"ipt-bus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve", help="run the bus (REST and WebSocket on one port)")
    s.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help=f"port (default {DEFAULT_PORT})")
    s.add_argument(
        "--storage",
        choices=["sqlite", "memory", "redis"],
        default=None,
        help="event log: sqlite (durable, the default), memory (a ring, lost on exit) or "
        "redis (shared by every node on the same Redis: docs/scaling.md)",
    )
    s.add_argument(
        "--redis-url",
        default=None,
        help="redis: the Redis holding the log (redis://, rediss://, unix://; default "
        "$IPT_BUS_REDIS_URL)",
    )
    s.add_argument(
        "--redis-prefix",
        default=None,
        help="redis: name of the bus in Redis; nodes with the same one are one bus (default "
        "ipt_bus)",
    )
    s.add_argument(
        "--data-dir", default=None, help="sqlite: directory of the log file (default ./.ipt-bus)"
    )
    s.add_argument(
        "--durability",
        choices=["safe", "fast"],
        default=None,
        help="sqlite: safe = an ack survives power loss (default); fast = survives a crash",
    )
    s.add_argument(
        "--discard-damaged-log",
        action="store_true",
        default=None,
        help="sqlite: if the log cannot be read whole, move its files aside and start a new "
        "log (a new epoch) instead of refusing to start",
    )
    s.add_argument(
        "--retention-events",
        type=int,
        default=None,
        help="sqlite, redis: keep at most N events (redis default 1000000)",
    )
    s.add_argument(
        "--retention-age",
        type=_duration,
        default=None,
        help="sqlite, redis: drop events older than this (e.g. 12h, 7d; default 7d)",
    )
    s.add_argument(
        "--retention-bytes",
        type=_size,
        default=None,
        help="sqlite, redis: keep at most this much event data (e.g. 500MB, 2GiB)",
    )
    s.add_argument(
        "--dedupe-window",
        type=_duration,
        default=None,
        help="how long idempotency keys are remembered (default 2m)",
    )
    s.add_argument(
        "--buffer-size", type=int, default=None, help="memory: events the ring keeps (10000)"
    )
    s.add_argument(
        "--watch-dir",
        default=None,
        help="publish JSON / JSON-Lines files appended in this directory as file.* events",
    )
    s.add_argument(
        "--validation",
        choices=["strict", "warn", "off"],
        default=None,
        help="payloads of the standard topics: reject (strict, default), log (warn) or off",
    )
    s.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="WebSocket connections (default: the open-file limit less 256)",
    )
    s.add_argument(
        "--allowed-origins",
        default=None,
        help="comma-separated browser Origins allowed on /ws (default: any)",
    )
    security = s.add_argument_group("security (docs/security.md)")
    security.add_argument(
        "--auth-secret-file", default=None, help="HS256 secret (the file's content) for tokens"
    )
    security.add_argument(
        "--auth-public-key", default=None, help="PEM public key or JWKS file (RS256/ES256/EdDSA)"
    )
    security.add_argument("--auth-audience", default=None, help="tokens must carry this aud")
    security.add_argument("--auth-issuer", default=None, help="tokens must carry this iss")
    security.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=None,
        help="serve a non-loopback --host with no key (open to anyone who can reach it)",
    )
    security.add_argument(
        "--rate-limit", type=float, default=None, help="events per second per identity"
    )
    security.add_argument(
        "--rate-burst", type=float, default=None, help="events at once (default: --rate-limit)"
    )
    security.add_argument(
        "--max-connections-per-identity", type=int, default=None, help="WebSockets per identity"
    )
    security.add_argument("--certfile", default=None, help="TLS certificate: https:// and wss://")
    security.add_argument("--keyfile", default=None, help="TLS private key")
    security.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host names served besides loopback and --host ('*': any)",
    )
    observe = s.add_argument_group("observability (docs/observability.md)")
    observe.add_argument(
        "--metrics-public",
        action="store_true",
        default=None,
        help="serve /metrics without a token when tokens are required",
    )
    observe.add_argument(
        "--metrics-topics",
        type=int,
        default=None,
        help="topics with their own /metrics series (the busiest; default 100)",
    )
    s.add_argument(
        "--dlq-max-entries",
        type=int,
        default=None,
        help="dead letters kept (default 10000; the oldest go first)",
    )
    observe.add_argument(
        "--max-tracked-topics",
        type=int,
        default=None,
        help="topics whose counts /stats and /topics keep (default 10000)",
    )
    s.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="run N bus nodes on this port (SO_REUSEPORT), one core each; needs --storage redis",
    )
    s.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # a worker's
    s.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    s.add_argument(
        "--log-to-bus",
        action="store_true",
        default=None,
        help="also publish the bus's own warnings and errors as logs.* events",
    )

    t = commands.add_parser("tail", help="print events as they are published")
    t.add_argument("patterns", nargs="*", metavar="PATTERN", help="topic patterns (default: all)")
    t.add_argument("--since", type=int, default=None, help="first replay the log after this seq")
    t.add_argument("--json", action="store_true", help="raw events, one JSON object per line")
    t.add_argument("-C", "--count", type=_positive_int, default=None, help="exit after N events")
    t.add_argument(
        "-W",
        "--timeout",
        type=_duration,
        default=None,
        metavar="SECONDS",
        help="exit when no event arrived for this long (e.g. 5, 1.5, 2m)",
    )
    _client_arguments(t)
    p = commands.add_parser("publish", help="publish one event")
    p.add_argument("topic")
    p.add_argument("--type", required=True, dest="type_", metavar="TYPE", help="event type")
    p.add_argument(
        "--payload", default=None, help="a JSON object, @FILE, or @- for stdin (default {})"
    )
    p.add_argument("--source", default=None)
    p.add_argument("--correlation-id", default=None)
    _client_arguments(p)
    h = commands.add_parser("history", help="print logged events, oldest first (GET /events)")
    h.add_argument(
        "--topic", action="append", default=[], metavar="PATTERN", help="topic pattern (repeat)"
    )
    h.add_argument("--type", action="append", default=[], dest="type_", help="event type (repeat)")
    h.add_argument("--correlation-id", default=None)
    h.add_argument("--from", dest="time_from", default=None, help="timestamp >= (ISO-8601 or Unix)")
    h.add_argument("--to", dest="time_to", default=None, help="timestamp < (ISO-8601 or Unix)")
    h.add_argument("--since", type=int, default=None, help="events after this seq (default 0)")
    h.add_argument("--limit", type=_positive_int, default=None, help="at most N (default: all)")
    h.add_argument("--json", action="store_true", help="raw events, one JSON object per line")
    _client_arguments(h)
    d = commands.add_parser("dlq", help="dead letters: list, retry ID, delete ID")
    d.add_argument("action", choices=["list", "retry", "delete"])
    d.add_argument("id", type=int, nargs="?", default=None, help="the dead letter (retry, delete)")
    d.add_argument("--limit", type=_positive_int, default=None, help="list: at most N")
    d.add_argument("--json", action="store_true", help="list: one JSON object per line")
    _client_arguments(d)
    for name, text in (("stats", "the bus's statistics"), ("topics", "topics and their counts")):
        c = commands.add_parser(name, help=text)
        c.add_argument("--json", action="store_true", help="the raw JSON answer")
        _client_arguments(c)
    k = commands.add_parser("token", help="print a signed token (HS256) for a bus's secret")
    k.add_argument("--secret-file", required=True, help="the bus's --auth-secret-file")
    k.add_argument("--sub", required=True, help="who the token is for (its rate-limit identity)")
    k.add_argument(
        "--publish", action="append", default=[], metavar="PATTERN", help="may publish (repeat)"
    )
    k.add_argument(
        "--subscribe", action="append", default=[], metavar="PATTERN", help="may read (repeat)"
    )
    k.add_argument("--admin", action="store_true", help="may use /dlq and /connections")
    k.add_argument("--rate-limit", type=float, default=None, help="events per second (claim)")
    k.add_argument("--ttl", type=_duration, default=3600.0, help="lifetime (default 1h)")
    k.add_argument("--audience", default=None, help="aud claim (the bus's --auth-audience)")
    k.add_argument("--issuer", default=None, help="iss claim (the bus's --auth-issuer)")
    return parser


def _duration(text: str) -> float:
    """`parse_duration` for argparse: its own message ("'x' is not a duration (e.g. 90s, …)")
    rather than argparse's "invalid parse_duration value"."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _client_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--url", default=None, help="the bus (default $IPT_BUS_URL, else http://127.0.0.1:8765)"
    )
    command.add_argument("--token", default=None, help="a token (default $IPT_BUS_TOKEN)")
    command.add_argument(
        "--cacert", default=None, help="https: the CA bundle to trust (default: the system's)"
    )


def config_from_args(argv: Sequence[str] | None = None) -> BusConfig:
    """Parse the command line into a configuration; `ValueError` says what is wrong."""
    args = _parser().parse_args(argv)
    if args.storage == "memory" and args.retention_age is not None:
        raise ValueError("--retention-age applies to --storage sqlite")
    origins = None if args.allowed_origins is None else parse_origins(args.allowed_origins)
    return BusConfig.from_env(
        host=args.host,
        port=args.port,
        storage=args.storage,
        data_dir=args.data_dir,
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        reuse_port=args.reuse_port or None,
        durability=args.durability,
        discard_damaged_log=args.discard_damaged_log,
        retention_events=args.retention_events,
        retention_age_seconds=args.retention_age,
        retention_bytes=args.retention_bytes,
        dedupe_window_seconds=args.dedupe_window,
        buffer_size=args.buffer_size,
        validation=args.validation,
        log_to_bus=args.log_to_bus,
        watch_dir=args.watch_dir,
        max_connections=args.max_connections,
        allowed_origins=origins,
        auth_secret_file=args.auth_secret_file,
        auth_public_key=args.auth_public_key,
        auth_audience=args.auth_audience,
        auth_issuer=args.auth_issuer,
        allow_anonymous=args.allow_anonymous,
        rate_limit_per_second=args.rate_limit,
        rate_burst=args.rate_burst,
        max_connections_per_identity=args.max_connections_per_identity,
        certfile=args.certfile,
        keyfile=args.keyfile,
        allowed_hosts=None if args.allowed_hosts is None else parse_origins(args.allowed_hosts),
        metrics_public=args.metrics_public,
        metrics_topics=args.metrics_topics,
        max_tracked_topics=args.max_tracked_topics,
        dlq_max_entries=args.dlq_max_entries,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve_command(args, argv)
    if args.command == "dlq" and (args.action == "list") != (args.id is None):
        parser.error("dlq: give an ID to retry or delete, none to list")
    out = sys.stdout
    try:
        code = _client_command(args, out)
        out.flush()
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as `cat` does
        client_commands.output_closed(out)
        return 0
    return code


def _client_command(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "token":
        return _token(args, out)
    access = {"token": args.token, "verify": args.cacert or True}
    match args.command:
        case "tail":
            return client_commands.tail(
                args.url, args.patterns, args.since, args.json, out,
                count=args.count, idle_timeout=args.timeout, **access,
            )  # fmt: skip
        case "publish":
            return client_commands.publish(
                args.url, args.topic, args.type_, args.payload, args.source,
                args.correlation_id, out, **access,
            )  # fmt: skip
        case "history":
            query = client_commands.HistoryQuery(
                topics=args.topic,
                types=args.type_,
                correlation_id=args.correlation_id,
                time_from=args.time_from,
                time_to=args.time_to,
            )
            return client_commands.history(
                args.url, query, args.since, args.limit, args.json, out, **access
            )
        case "dlq":
            return client_commands.dlq(
                args.url, args.action, args.id, args.limit, args.json, out, **access
            )
        case "stats":
            return client_commands.stats(args.url, args.json, out, **access)
        case _:
            return client_commands.topics(args.url, args.json, out, **access)


def _serve_command(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(argv)
    except (ValueError, TypeError) as exc:
        print(f"ipt-bus: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        if config.storage != "redis":
            print(
                f"ipt-bus: --workers {args.workers} needs a log the workers share: "
                f"--storage redis (with {config.storage} every worker would be a bus of its "
                "own; docs/scaling.md)",
                file=sys.stderr,
            )
            return 2
        if config.port == 0:
            print("ipt-bus: --workers needs a fixed --port (the workers share it)", file=sys.stderr)
            return 2
        from ipt_bus.workers import supervise

        return trio.run(supervise, sys.argv[1:] if argv is None else list(argv), args.workers)
    _raise_fd_limit()
    try:
        trio.run(_serve, config)
    except Exception as exc:  # the process's failure boundary: one clear line, then exit 1
        os_error = _leaf(exc, OSError)
        storage_error = _leaf(exc, StartupError)
        if storage_error is not None:
            print(f"ipt-bus: {storage_error}", file=sys.stderr)
        elif os_error is not None:
            print(
                f"ipt-bus: cannot serve on {config.host}:{config.port}: {os_error}", file=sys.stderr
            )
        else:
            logging.getLogger("ipt_bus").critical("the bus failed and stopped", exc_info=exc)
        return 1
    return 0


def _raise_fd_limit() -> None:
    """Raise the soft limit on open files to the hard one, as servers (and Go programs) do at
    start: the default `max_connections` follows it. Nothing changes where it cannot be raised."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _token(args: argparse.Namespace, out: TextIO) -> int:
    try:
        secret = Keys.load(args.secret_file).secret
        grant = Grant(
            publish=tuple(validate_pattern(p, "--publish") for p in args.publish),
            subscribe=tuple(validate_pattern(p, "--subscribe") for p in args.subscribe),
            admin=args.admin,
            rate_limit=args.rate_limit,
        )
    except ProtocolError as exc:
        print(f"ipt-bus: {exc.field}: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"ipt-bus: {exc}", file=sys.stderr)
        return 2
    assert secret is not None
    token = make_token(
        secret,
        args.sub,
        now=time.time(),
        ttl_seconds=args.ttl,
        grant=grant,
        audience=args.audience,
        issuer=args.issuer,
    )
    print(token, file=out)
    return 0


def _leaf(exc: BaseException, kind: type[E]) -> E | None:
    """The first `kind` inside `exc`, looking through exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _leaf(inner, kind)
            if found is not None:
                return found
    return None


async def _serve(config: BusConfig) -> None:
    from ipt_bus.server import serve  # here: the client commands start without the server's

    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(lambda **kw: serve(config, handle_signals=True, **kw))
        logging.getLogger("ipt_bus").info(
            "ipt-bus %s listening on %s (WebSocket %s)", __version__, server.url, server.ws_url
        )


if __name__ == "__main__":
    sys.exit(main())

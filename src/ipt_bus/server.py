"""`serve`: one bus node behind hypercorn's trio worker, started in code.

Starting hypercorn in code (not the bare CLI) lets shutdown go in order: on SIGINT/SIGTERM (or
`BusHandle.shutdown`) every WebSocket is closed with 1001, then hypercorn stops accepting and
finishes in-flight requests, then the router and the log are drained.
"""

from __future__ import annotations

import logging
import signal
import socket
from functools import partial
from typing import TYPE_CHECKING, Final, final

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from ipt_bus.bus.node import BusHandle, run_bus
from ipt_bus.edge import transport
from ipt_bus.edge.app import create_app
from ipt_bus.integrations.files import check_watch_dir
from ipt_bus.integrations.runner import run_integrations

if TYPE_CHECKING:
    from ipt_bus.core.config import BusConfig

log = logging.getLogger("ipt_bus.server")


@final
@attrs.frozen
class Server:
    """What `serve` hands back once it listens."""

    urls: list[str]
    bus: BusHandle

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/ws"  # https:// -> wss://

    def shutdown(self) -> None:
        self.bus.shutdown()


LISTEN_BACKLOG: Final = 4096  # the kernel caps it at net.core.somaxconn


def listening_socket(config: BusConfig) -> socket.socket:
    """The listening socket, bound, with the kernel's dead-peer detection switched on.

    Accepted sockets inherit SO_KEEPALIVE and TCP_USER_TIMEOUT on Linux: with protocol pings
    keeping bytes in flight, the kernel aborts a peer that stops acknowledging them.
    """
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.reuse_port:  # `--workers`: the kernel spreads connections over the nodes
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            timeout_ms = int(config.tcp_user_timeout_seconds * 1000)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout_ms)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.bind((config.host, config.port))
    except BaseException:
        sock.close()
        raise
    return sock


def hypercorn_config(config: BusConfig, sock: socket.socket) -> HypercornConfig:
    """hypercorn settings for `config`, serving on `sock` (hypercorn takes it over)."""
    transport.install(message_deadline_seconds=config.message_deadline_seconds)
    hc = HypercornConfig()
    setattr(hc, transport.WRITE_DEADLINE_ATTR, config.write_deadline_seconds)
    hc.bind = [f"fd://{sock.detach()}"]
    # plain TCP: our one pinger (`transport.ping_every`, from the app); TLS: hypercorn's task
    hc.websocket_ping_interval = None if config.certfile is None else config.ping_interval_seconds
    hc.websocket_max_message_size = config.max_message_bytes
    hc.graceful_timeout = config.shutdown_grace_seconds / 2
    hc.keep_alive_timeout = 5
    # hypercorn listens with a backlog of 100: thousands of clients reconnecting at once (a
    # restart) would see dropped SYNs and retry after a second or more
    hc.backlog = LISTEN_BACKLOG
    hc.accesslog = None  # none: a token in a query string (?token=, browsers) is never logged
    if config.certfile is not None:  # https:// and wss://
        hc.certfile = config.certfile
        hc.keyfile = config.keyfile
    hc.errorlog = logging.getLogger("hypercorn.error")  # one handler: the root logger's
    return hc


async def serve(
    config: BusConfig,
    *,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a bus node, its integrations and its HTTP/WebSocket server until shutdown.

    With `handle_signals`, SIGINT and SIGTERM start the orderly shutdown. Reports a `Server`
    (bound URLs and the bus handle) once listening.

    Raises:
        StartupError: the configuration cannot be served (a log or watch directory that cannot
            be used), before anything listens.
    """
    check_watch_dir(config)
    async with trio.open_nursery() as nursery:
        bus: BusHandle = await nursery.start(run_bus, config)
        nursery.start_soon(run_integrations, bus)
        signal_scope = trio.CancelScope()
        if handle_signals:
            nursery.start_soon(_shutdown_on_signals, bus, signal_scope)
        urls: list[str] = await nursery.start(_serve_http, bus)
        task_status.started(Server(urls, bus))
        await bus.wait_stopped()
        signal_scope.cancel()


async def _serve_http(
    bus: BusHandle, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    try:
        await hypercorn_serve(
            create_app(bus),
            hypercorn_config(bus.config, listening_socket(bus.config)),
            shutdown_trigger=partial(_connections_closed, bus),
            task_status=task_status,
        )
    finally:
        bus.shutdown()  # hypercorn stopped (or failed): the bus goes with it


async def _connections_closed(bus: BusHandle) -> None:
    """Hypercorn's shutdown trigger: returns once WebSockets were told 1001 (bounded)."""
    await bus.shutting_down.wait()
    with trio.move_on_after(bus.config.shutdown_grace_seconds / 2):
        await bus.router.wait_idle()


async def _shutdown_on_signals(bus: BusHandle, scope: trio.CancelScope) -> None:
    """First SIGINT/SIGTERM: orderly shutdown. Second: stop waiting for connections.

    The receiver stays open until the bus has stopped: closing it earlier would restore the
    default handlers and let a signal still in delivery kill the process mid-shutdown.
    """
    with scope, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if bus.shutting_down.is_set():
                log.warning("second %s: closing without waiting", signal.Signals(signum).name)
                bus.force_stop()
            else:
                log.info("%s: shutting down", signal.Signals(signum).name)
                bus.shutdown()

"""Who may talk to the bus over HTTP and WebSocket (docs/security.md).

- `check_host`: a request whose `Host` is not a name the bus serves is refused (421), so a web
  page cannot reach a bus on this machine through a name it controls (DNS rebinding).
- `authenticate`: the token of a request (`Authorization: Bearer`, or ``?token=`` on `/ws`),
  verified; failures are counted by reason and never echo the token.
- `cors_headers`: CORS answers only for `--allowed-origins`.
"""

from __future__ import annotations

import logging
import socket
import time
from functools import cache
from typing import TYPE_CHECKING, Any, Final

from ipt_bus.bus.stats import Counted
from ipt_bus.core.auth import AuthError, Forbidden
from ipt_bus.core.config import is_loopback
from ipt_bus.core.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from ipt_bus.bus.node import BusHandle
    from ipt_bus.core.auth import Identity
    from ipt_bus.core.config import BusConfig

log = logging.getLogger("ipt_bus.guard")

WILDCARD_HOSTS: Final = ("0.0.0.0", "::", "")  # a bound "any" address
CORS_HEADERS: Final = "Authorization, Content-Type, Idempotency-Key"
CORS_METHODS: Final = "GET, POST, DELETE, OPTIONS"


def header(headers: Any, name: bytes) -> str | None:
    """A header of an ASGI scope's `headers` (the last one when repeated)."""
    found = None
    for key, value in headers:
        if key.lower() == name:
            found = bytes(value).decode("latin-1")
    return found


@cache
def _machine_names() -> frozenset[str]:
    """This machine's names and addresses: what a wildcard-bound bus serves."""
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        _, aliases, addresses = socket.gethostbyname_ex(socket.gethostname())
    except OSError:
        aliases, addresses = [], []
    return frozenset(n.lower() for n in (*names, *aliases, *addresses) if n)


def served_host(config: BusConfig, host_header: str | None) -> bool:
    """Whether `host_header` (``name[:port]``) names this bus."""
    if "*" in config.allowed_hosts or host_header is None:
        return True  # HTTP/1.0 without Host: nothing to rebind
    name = host_header.lower()
    if name.startswith("["):
        name = name[1 : name.find("]")]  # [::1]:8765
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if is_loopback(name) or name in (h.lower() for h in config.allowed_hosts):
        return True
    bound = config.host.lower()
    if bound in WILDCARD_HOSTS:
        return name in _machine_names()
    return name == bound.strip("[]")


def check_host(bus: BusHandle | None, scope: Any) -> None:
    """Raises `ProtocolError` (421 `host_not_allowed`) for a Host this bus does not serve."""
    if bus is None:
        return
    host = header(scope.get("headers", ()), b"host")
    if not served_host(bus.config, host):
        bus.stats.record(Counted("host_not_allowed"))
        raise ProtocolError(
            ErrorCode.HOST_NOT_ALLOWED,
            f"this bus does not serve the host {host!r}; list it in --allowed-hosts",
            "Host",
        )


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def authenticate(bus: BusHandle, token: str | None) -> Identity | None:
    """The identity `token` proves; None when the bus needs no token.

    Raises:
        AuthError: 401; counted by reason in `/stats` → `security.auth_failures`.
    """
    if not bus.auth.enabled:
        return None
    try:
        return bus.auth.verify(token, time.time())
    except AuthError as exc:
        reason = "missing" if exc.missing else str(exc.code)
        bus.stats.record(Counted(f"auth_failure:{reason}"))
        log.debug("refused a request: %s", exc.message)  # the message never holds the token
        raise


def require_admin(identity: Identity | None) -> None:
    if identity is not None and not identity.grant.admin:
        raise Forbidden(f"{identity.sub!r} is not an admin (the token's ipt_bus.admin)")


def cors_headers(config: BusConfig, origin: str | None) -> list[tuple[bytes, bytes]]:
    """The CORS headers for a request from `origin`: none unless it is an allowed Origin."""
    allowed = config.allowed_origins
    if origin is None or allowed is None or origin.rstrip("/") not in allowed:
        return []
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-headers", CORS_HEADERS.encode()),
        (b"access-control-allow-methods", CORS_METHODS.encode()),
        (b"access-control-max-age", b"600"),
        (b"vary", b"Origin"),
    ]

"""Security end to end (docs/security.md): tokens on REST and WebSocket, what each grants,
refusals, expiry and refresh, rate limits, per-identity connection caps, Host and CORS checks,
TLS. A real server on a free port; real HTTP and WebSocket clients."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import orjson
import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ipt_bus.client import (
    BusUnavailable,
    EventBusClient,
    EventBusPublisher,
    PublishRejected,
    RequestRefused,
)
from ipt_bus.core.auth import Grant, make_token
from ipt_bus.core.model import Event
from tests.conftest import (
    closed_code,
    connections,
    event,
    recv,
    refused,
    request,
    running_server,
    send,
    wait_for,
    ws,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from ipt_bus.server import Server

SECRET = b"a-test-secret-of-at-least-32-bytes!!"


def token(
    sub: str = "alice",
    *,
    publish: Sequence[str] = (),
    subscribe: Sequence[str] = (),
    admin: bool = False,
    rate: float | None = None,
    ttl: float = 300,
) -> str:
    grant = Grant(tuple(publish), tuple(subscribe), admin, rate)
    return make_token(SECRET, sub, now=time.time(), ttl_seconds=ttl, grant=grant)


def refusal(frame: dict[str, Any]) -> tuple[str, Any]:
    """An `error` frame's code and the id it answers."""
    assert frame["action"] == "error", frame
    return frame["error"]["code"], frame.get("id")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# a day: made at import, it must outlive a slow run of the whole suite (300 s did not)
ADMIN = bearer(token("ops", publish=["**"], subscribe=["**"], admin=True, ttl=86_400))


@asynccontextmanager
async def secure_server(**overrides: Any) -> AsyncIterator[Server]:
    """A bus that requires tokens signed with `SECRET`."""
    with tempfile.TemporaryDirectory(prefix="ipt-bus-keys-") as keys:
        secret = Path(keys) / "secret"
        secret.write_bytes(SECRET + b"\n")
        async with running_server(auth_secret_file=str(secret), **overrides) as server:
            yield server


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with secure_server() as srv:
        yield srv


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand (PyJWT refuses to sign these forgeries)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b""
    if key is not None:
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    payload = {"sub": "alice", "exp": now + 300, "ipt_bus": {"subscribe": ["**"]}} | changes
    return {k: v for k, v in payload.items() if v is not None}


def hostile() -> dict[str, tuple[str | None, str]]:
    """Tokens a secret-keyed bus must refuse, and the error code it answers."""
    now = int(time.time())
    return {
        "no-token": (None, "unauthorized"),
        "garbage": ("garbage.garbage.garbage", "unauthorized"),
        "alg-none": (forged({"alg": "none", "typ": "JWT"}, claims(), None), "unauthorized"),
        "wrong-signature": (jwt.encode(claims(), b"w" * 40, "HS256"), "unauthorized"),
        "expired": (jwt.encode(claims(exp=now - 5), SECRET, "HS256"), "token_expired"),
        "nbf-future": (jwt.encode(claims(nbf=now + 600), SECRET, "HS256"), "unauthorized"),
        "no-exp": (jwt.encode(claims(exp=None), SECRET, "HS256"), "unauthorized"),
        "20-kb": (jwt.encode(claims(pad="x" * 20_000), SECRET, "HS256"), "unauthorized"),
    }


async def test_hostile_tokens_are_refused_on_rest_and_on_the_handshake(
    server: Server, http: httpx.AsyncClient
) -> None:
    assert (await http.get("/health")).status_code == 200  # open to all
    tries = 0
    for name, (value, code) in hostile().items():
        headers = bearer(value) if value is not None else {}
        answer = await http.get("/stats", headers=headers)
        assert answer.status_code == 401, (name, answer.text)
        assert answer.json()["error"]["code"] == code, name
        assert answer.headers["www-authenticate"].startswith("Bearer"), name
        assert value is None or value not in answer.text
        status, body = await refused(server.ws_url, headers)
        assert (status, body["error"]["code"]) == (401, code), name
        if value is not None and len(value) < 4_000:  # a browser's way, in the query string
            status, body = await refused(f"{server.ws_url}?token={value}")
            assert (status, body["error"]["code"]) == (401, code), name
            tries += 1
    stats = (await http.get("/stats", headers=ADMIN)).json()
    failures = stats["security"]["auth_failures"]
    assert failures["missing"] == 2
    assert failures["token_expired"] == 3
    assert sum(failures.values()) == 2 * len(hostile()) + tries
    assert "garbage" not in orjson.dumps(stats).decode()


async def test_an_hmac_token_signed_with_the_public_key_is_refused(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "bus.pem").write_bytes(pem)
    good = jwt.encode(claims(aud="bus", iss="ops"), private, "RS256")
    confused = forged({"alg": "HS256", "typ": "JWT"}, claims(aud="bus", iss="ops"), pem)
    config = {"auth_audience": "bus", "auth_issuer": "ops"}
    async with (
        running_server(auth_public_key=str(tmp_path / "bus.pem"), **config) as srv,
        httpx.AsyncClient(base_url=srv.url) as http,
    ):
        assert (await http.get("/stats", headers=bearer(good))).status_code == 200
        for value, why in [
            (confused, "'HS256' are not accepted"),
            (jwt.encode(claims(aud="other", iss="ops"), private, "RS256"), "another audience"),
            (jwt.encode(claims(aud="bus", iss="other"), private, "RS256"), "another issuer"),
            (jwt.encode(claims(iss="ops"), private, "RS256"), "no 'aud' claim"),
        ]:
            answer = await http.get("/stats", headers=bearer(value))
            assert answer.status_code == 401
            assert why in answer.json()["error"]["message"]


# --- what a token grants ---------------------------------------------------------------------


async def test_a_subscription_must_be_covered_by_the_grant(server: Server) -> None:
    reader = bearer(token(subscribe=["task.status"]))
    for pattern in ("**", "*.status", "task.*.x", "task.*"):
        status, body = await refused(f"{server.ws_url}?topics={pattern}", reader)
        assert status == 403, pattern
        assert body["error"]["code"] == "forbidden"
        assert body["error"]["field"] == "topics"
        assert repr(pattern) in body["error"]["message"]
    wide = token(subscribe=["task.**"])
    async with ws(server, f"topics=task.*&token={wide}") as conn:
        answer = await request(conn, {"action": "subscribe", "id": 1, "topics": ["**"]})
        assert refusal(answer) == ("forbidden", 1)
        answer = await request(conn, {"action": "subscribe", "id": 2, "topics": ["task.a.b"]})
        assert answer["action"] == "subscribed"


async def test_history_never_shows_what_the_token_may_not_read(
    server: Server, http: httpx.AsyncClient
) -> None:
    mixed = [event("task.status"), event("cost.update"), event("secret.plans"), event("task.x")]
    assert (await http.post("/events", json=mixed, headers=ADMIN)).status_code == 201
    reader = token(subscribe=["task.status"])
    for query in ("", "?since=0", "?topic=task.status", "?topic=task.status&since=0"):
        answer = await http.get(f"/events{query}", headers=bearer(reader))
        assert answer.status_code == 200, query
        assert [e["topic"] for e in answer.json()["events"]] == ["task.status"], query
    for query in ("?topic=secret.plans", "?topic=task.*", "?topic=**&since=0"):
        answer = await http.get(f"/events{query}", headers=bearer(reader))
        assert answer.status_code == 403, query
        assert answer.json()["error"]["field"] == "topic"
    nothing = await http.get("/events", headers=bearer(token(publish=["**"])))
    assert nothing.status_code == 403  # a publisher with no subscribe grant reads nothing

    # a WebSocket replay from 0, with no topics named: the grant's topics only
    async with ws(server, f"since=0&token={reader}") as conn:
        marker = event("task.status", marker=True)
        assert (await http.post("/events", json=marker, headers=ADMIN)).status_code == 201
        seen = []
        while True:
            frame = await recv(conn)
            seen.append(frame["topic"])
            if frame["payload"].get("marker"):
                break
    assert seen == ["task.status", "task.status"]


async def test_publishing_needs_a_matching_publish_pattern(
    server: Server, http: httpx.AsyncClient
) -> None:
    writer = bearer(token(publish=["task.**"], subscribe=["**"]))
    both = [event("task.status"), event("cost.update")]
    answer = await http.post("/events", json=both, headers=writer)
    assert answer.status_code == 403
    assert answer.json()["error"] == {
        "code": "forbidden",
        "message": "the token of 'alice' may not publish to 'cost.update'",
        "field": "[1].topic",
    }
    assert (await http.get("/events", headers=ADMIN)).json()["count"] == 0  # all or nothing
    reader = {**bearer(token(subscribe=["**"])), "Content-Type": "application/json"}
    answer = await http.post("/events", content=b"{not json", headers=reader)
    assert answer.status_code == 403  # may publish nothing: refused before it is read
    assert (await http.get("/dlq", headers=ADMIN)).json()["total"] == 0  # not a repair job
    assert (await http.post("/broadcast", json={"a": 1}, headers=writer)).status_code == 403
    legacy = bearer(token(publish=["legacy.*"]))
    assert (await http.post("/broadcast", json={"a": 1}, headers=legacy)).status_code == 201

    async with ws(server, f"token={token(publish=['task.**'], subscribe=['task.**'])}") as conn:
        frame = await request(conn, {"action": "publish", "id": 7, "event": event("cost.x")})
        assert refusal(frame) == ("forbidden", 7)
        await send(conn, {"type": "hello", "data": {}})  # a legacy frame: legacy.hello
        assert refusal(await recv(conn)) == ("forbidden", None)
        frame = await request(conn, {"action": "publish", "id": 8, "event": event("task.y")})
        assert frame["action"] == "published"  # the connection carries on
    stats = (await http.get("/stats", headers=ADMIN)).json()
    assert stats["security"]["forbidden"] == 5


async def test_dead_letters_and_connections_need_admin(
    server: Server, http: httpx.AsyncClient
) -> None:
    user = bearer(token(publish=["**"], subscribe=["**"]))
    for method, path in [
        ("GET", "/dlq"),
        ("POST", "/dlq/1/retry"),
        ("DELETE", "/dlq/1"),
        ("GET", "/connections"),
    ]:
        answer = await http.request(method, path, headers=user, json={})
        assert answer.status_code == 403, path
        assert "not an admin" in answer.json()["error"]["message"]
        assert (await http.request(method, path, json={})).status_code == 401
    assert (await http.get("/dlq", headers=ADMIN)).status_code == 200
    form = {**ADMIN, "Content-Type": "application/x-www-form-urlencoded"}
    answer = await http.post("/dlq/1/retry", content=b"x=1", headers=form)
    assert answer.status_code == 415  # a cross-site form cannot trigger it
    for path in ("/stats", "/topics", "/schemas"):  # any valid token
        assert (await http.get(path, headers=bearer(token()))).status_code == 200, path


# --- expiry and refresh -----------------------------------------------------------------------


async def test_an_expired_connection_is_closed_with_4001(server: Server) -> None:
    short = token(subscribe=["**"], ttl=2)
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    async with ws(server, f"token={short}") as conn:
        assert await closed_code(conn) == 4001
        assert time.time() - expires < 1.0  # within a second of `exp`


async def test_a_fresh_token_keeps_the_connection(server: Server) -> None:
    short = token(subscribe=["**"], ttl=2)
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    async with ws(server, f"token={short}") as conn:
        bad = await request(conn, {"action": "auth", "id": 1, "token": "garbage"})
        assert refusal(bad) == ("unauthorized", 1)
        other = token("mallory", subscribe=["**"])
        swap = await request(conn, {"action": "auth", "id": 2, "token": other})
        assert refusal(swap) == ("forbidden", 2)
        assert swap["error"]["field"] == "token"
        fresh = token(subscribe=["**"], ttl=600)
        answer = await request(conn, {"action": "auth", "id": 3, "token": fresh})
        assert answer["action"] == "authenticated"
        exp = jwt.decode(fresh, options={"verify_signature": False})["exp"]
        assert answer["expires_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
        await trio.sleep_until(trio.current_time() + (expires - time.time()) + 1.2)
        assert (await request(conn, {"action": "ping", "id": 4}))["action"] == "pong"


async def test_the_client_refreshes_its_token_before_it_expires(server: Server) -> None:
    issued: list[str] = []

    def fresh() -> str:
        issued.append(token(subscribe=["**"], publish=["**"], ttl=3))
        return issued[-1]

    async with EventBusClient(server.url, token=fresh, topics=["custom.*"]) as client:
        await wait_for(lambda: len(issued) >= 3)  # the connection's, then two refreshes
        await client.publish(Event(type="custom_event", topic="custom.x", payload={}))
    assert len(set(issued)) == len(issued)


async def test_a_refused_refresh_ends_in_a_clear_error(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The fresh token is refused: the old one runs out (4001), the reconnect is refused."""
    calls: list[str] = []

    def source() -> str:
        calls.append(token(subscribe=["**"], ttl=2) if not calls else "garbage")
        return calls[-1]

    client = EventBusClient(server.url, token=source)
    try:
        with trio.fail_after(20), pytest.raises(RequestRefused, match="not a JWT"):
            await client.listen_async()  # the handshake takes the first token
    finally:
        await client.close()
    assert "the bus refused the fresh token: the token is not a JWT" in caplog.text
    assert len(calls) == 3  # the handshake, the refresh, the reconnect


async def test_refused_clients_are_told_why(server: Server) -> None:
    client = EventBusClient(server.url, token=token(subscribe=["task.*"]), topics=["**"])
    with pytest.raises(RequestRefused, match="may not subscribe to '\\*\\*'") as caught:
        async with client:
            pass
    assert caught.value.status == 403
    with pytest.raises(RequestRefused) as caught:
        async with EventBusClient(server.url, token=None):
            pass
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")


async def test_the_sync_publisher_sends_its_token(server: Server) -> None:
    def publish(token_source: Any) -> int:
        with EventBusPublisher(server.url, token=token_source, retries=0) as publisher:
            return publisher.publish(Event(type="t", topic="custom.a", payload={})).seq

    assert await trio.to_thread.run_sync(publish, lambda: token(publish=["custom.*"])) == 1
    with pytest.raises(PublishRejected, match="may not publish") as caught:
        await trio.to_thread.run_sync(publish, token(publish=["task.*"]))
    assert caught.value.code == "forbidden"


# --- logs never hold tokens -----------------------------------------------------------------


async def test_tokens_never_reach_the_log_or_stats(
    server: Server, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = token(subscribe=["**"], publish=["**"])
    stale = jwt.encode(claims(exp=int(time.time()) - 5), SECRET, "HS256")
    async with ws(server, f"token={good}") as conn:
        assert (await request(conn, {"action": "ping", "id": 1}))["action"] == "pong"
        await request(conn, {"action": "auth", "id": 2, "token": stale})
    status, body = await refused(f"{server.ws_url}?token={stale}")
    assert status == 401
    pages = [(await http.get(p, headers=ADMIN)).text for p in ("/stats", "/connections")]
    server_log = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''}"
        for r in caplog.records
        if r.name.startswith(("ipt_bus", "hypercorn"))  # not the test's own clients
    )
    assert "refused a request: the token has expired" in server_log  # the log was captured
    for secret in (good, stale, good.rsplit(".", 1)[1], stale.rsplit(".", 1)[1]):
        assert secret not in server_log
        assert secret not in json.dumps(body)
        assert all(secret not in page for page in pages)


# --- rate limits and connection caps ----------------------------------------------------------


async def test_a_rest_flood_gets_429_and_the_log_holds_exactly_the_accepted() -> None:
    async with (
        secure_server(rate_limit_per_second=5.0, rate_burst=5.0) as srv,
        httpx.AsyncClient(base_url=srv.url) as http,
    ):
        flooder = bearer(token("flood", publish=["**"]))
        accepted, limited = 0, 0
        for i in range(40):
            answer = await http.post("/events", json=event(n=i), headers=flooder)
            if answer.status_code == 201:
                accepted += 1
            else:
                assert answer.status_code == 429
                assert answer.json()["error"]["code"] == "rate_limited"
                assert int(answer.headers["retry-after"]) >= 1
                limited += 1
        assert accepted >= 5
        assert limited > 0
        # another identity has its own bucket; the admin claims no rate: the server's applies
        assert (await http.post("/events", json=event(), headers=ADMIN)).status_code == 201
        stored = (await http.get("/events?limit=1000", headers=ADMIN)).json()["events"]
        assert len(stored) == accepted + 1
        stats = (await http.get("/stats", headers=ADMIN)).json()
        assert stats["security"]["rate_limited"] == limited


async def test_a_token_claim_sets_its_own_rate() -> None:
    async with (
        secure_server() as srv,  # no server-wide limit
        httpx.AsyncClient(base_url=srv.url) as http,
    ):
        slow = bearer(token(publish=["**"], rate=0.001))
        assert (await http.post("/events", json=event(), headers=slow)).status_code == 201
        answer = await http.post("/events", json=event(), headers=slow)
        assert answer.status_code == 429
        assert int(answer.headers["retry-after"]) >= 900  # one event per 1,000 s


async def test_a_websocket_flood_is_slowed_and_every_acked_publish_delivered() -> None:
    count = 60
    async with (
        secure_server(rate_limit_per_second=40.0, rate_burst=10.0) as srv,
        httpx.AsyncClient(base_url=srv.url) as http,
    ):
        reader = token("reader", subscribe=["**"])
        writer = token("writer", publish=["**"])
        async with ws(srv, f"topics=custom.*&token={reader}") as sub:
            async with ws(srv, f"token={writer}") as pub:
                for i in range(count):
                    frame = {"action": "publish", "id": i, "event": event(n=i)}
                    await send(pub, frame)
                acked: set[int] = set()
                while len(acked) < count:
                    answer = await recv(pub)
                    assert answer["action"] == "published", answer
                    acked.add(answer["id"])
            delivered = [(await recv(sub))["payload"]["n"] for _ in range(count)]
        assert delivered == list(range(count))
        assert srv.bus.limiter.delayed > 0  # it was slowed, not refused
        assert srv.bus.limiter.refused == 0
        assert (await http.get("/events?limit=1000", headers=ADMIN)).json()["count"] == count


async def test_past_the_publish_timeout_an_acked_publish_is_refused_instead() -> None:
    async with secure_server(
        rate_limit_per_second=2.0, rate_burst=1.0, publish_timeout_seconds=0.5
    ) as srv:
        writer = token("writer", publish=["**"])
        async with ws(srv, f"token={writer}") as pub:
            batch = [event(n=i) for i in range(5)]  # a full bucket lets it go, owing 4 events
            first = await request(pub, {"action": "publish", "id": 1, "events": batch})
            assert first["action"] == "published"
            # the next would wait 2.5 s for its rate, more than the publish timeout
            second = await request(pub, {"action": "publish", "id": 2, "event": event()})
            assert refusal(second) == ("rate_limited", 2)
            assert "retry in 2.5" in second["error"]["message"]
        async with httpx.AsyncClient(base_url=srv.url) as http:
            assert (await http.get("/events", headers=ADMIN)).json()["count"] == 5


async def test_connections_per_identity_are_capped() -> None:
    async with secure_server(max_connections_per_identity=2) as srv:
        alice = token(subscribe=["**"])
        async with ws(srv, f"token={alice}"), ws(srv, f"token={alice}"):
            await connections(srv, 2)
            status, body = await refused(f"{srv.ws_url}?token={alice}")
            assert (status, body["error"]["code"]) == (429, "rate_limited")
            async with ws(srv, f"token={token('bob', subscribe=['**'])}"):
                await connections(srv, 3)  # another identity is not affected


# --- Host, CORS, TLS, protected mode -------------------------------------------------------


async def test_a_host_the_bus_does_not_serve_is_refused() -> None:
    async with running_server(allowed_hosts=("bus.example",)) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            answer = await http.get("/health", headers={"Host": "evil.example"})
            assert answer.status_code == 421
            assert answer.json()["error"]["code"] == "host_not_allowed"
            assert (await http.get("/health", headers={"Host": "bus.example"})).status_code == 200
            assert (await http.get("/health", headers={"Host": "localhost:1"})).status_code == 200
        status, body = await refused(srv.ws_url, {"Host": "evil.example"})
        assert (status, body["error"]["field"]) == (421, "Host")


async def test_cors_answers_only_allowed_origins() -> None:
    async with (
        running_server(allowed_origins=("https://dash.example",)) as srv,
        httpx.AsyncClient(base_url=srv.url) as http,
    ):
        ok = {"Origin": "https://dash.example", "Access-Control-Request-Method": "POST"}
        answer = await http.options("/events", headers=ok)
        assert answer.status_code == 204
        assert answer.headers["access-control-allow-origin"] == "https://dash.example"
        assert "Authorization" in answer.headers["access-control-allow-headers"]
        answer = await http.get("/stats", headers={"Origin": "https://dash.example"})
        assert answer.headers["access-control-allow-origin"] == "https://dash.example"
        other = await http.get("/stats", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(certfile, keyfile, CA bundle) for 127.0.0.1 and localhost."""
    where = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(where / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    return str(where / "cert.pem"), str(where / "key.pem"), str(where / "ca.pem")


async def test_tls_end_to_end_with_the_python_client(tls: tuple[str, str, str]) -> None:
    certfile, keyfile, ca = tls
    async with secure_server(certfile=certfile, keyfile=keyfile) as srv:
        assert srv.url.startswith("https://")
        assert srv.ws_url.startswith("wss://")
        both = token(publish=["**"], subscribe=["**"])
        received: list[Event] = []
        async with EventBusClient(srv.url, token=both, verify=ca, topics=["custom.*"]) as client:
            client.add_event_handler("custom.*", received.append)
            published = await client.publish(
                Event(type="custom_event", topic="custom.tls", payload={})
            )
            await wait_for(lambda: received)
        assert received[0].seq == published.seq

        def sync_publish() -> int:
            with EventBusPublisher(srv.url, token=both, verify=ca) as publisher:
                return publisher.publish(Event(type="t", topic="custom.b", payload={})).seq

        assert await trio.to_thread.run_sync(sync_publish) == published.seq + 1

        def unverified() -> None:  # the system's CAs do not know the test CA
            with EventBusPublisher(srv.url, token=both, retries=0) as publisher:
                publisher.publish(Event(type="t", topic="custom.c", payload={}))

        with pytest.raises(BusUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await trio.to_thread.run_sync(unverified)

"""Tokens, keys and grants (core/auth.py), and the rate limiter's buckets (bus/limits.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ipt_bus.bus.limits import RateLimiter
from ipt_bus.core.auth import (
    Authenticator,
    AuthError,
    Grant,
    Keys,
    grant_of,
    make_token,
)
from ipt_bus.core.errors import ErrorCode

if TYPE_CHECKING:
    from pathlib import Path

SECRET = b"s" * 40
NOW = 1_800_000_000.0


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(NOW + 60), "ipt_bus": {"subscribe": ["task.**"]}} | extra


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand: PyJWT refuses to make the forgeries this suite needs."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{b64(signature)}"


def pem(public: Any) -> bytes:
    return bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


# --- keys -----------------------------------------------------------------------------------


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Keys.load(write(tmp_path / "s", "short\n"))


def test_a_secret_file_is_stripped(tmp_path: Path) -> None:
    keys = Keys.load(write(tmp_path / "s", SECRET + b"\n"))
    assert keys.secret == SECRET
    assert keys.configured


def test_unreadable_and_unusable_key_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read .*missing"):
        Keys.load(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a PEM public key"):
        Keys.load(None, write(tmp_path / "k.pem", "not a key"))
    with pytest.raises(ValueError, match="not a usable JWKS"):
        Keys.load(None, write(tmp_path / "k.json", '{"keys": [{"kty": "nope"}]}'))
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(ValueError, match="P-256"):
        Keys.load(None, write(tmp_path / "p384.pem", pem(p384)))


@pytest.mark.parametrize(
    ("private", "algorithm"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    ],
)
def test_each_public_key_type_verifies_its_one_algorithm(
    tmp_path: Path, private: Any, algorithm: str
) -> None:
    keys = Keys.load(None, write(tmp_path / "k.pem", pem(private.public_key())))
    auth = Authenticator(keys)
    token = jwt.encode(claims(), private, algorithm=algorithm)
    assert auth.verify(token, NOW).sub == "alice"
    # the same key type under another algorithm, or an HMAC forgery, is not accepted
    forged = hand_made({"alg": "HS256", "typ": "JWT"}, claims(), pem(private.public_key()))
    with pytest.raises(AuthError, match="'HS256' are not accepted"):
        auth.verify(forged, NOW)


def test_a_jwks_picks_the_key_by_kid(tmp_path: Path) -> None:
    first, second = ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
    jwks = {
        "keys": [
            {**orjson.loads(jwt.algorithms.ECAlgorithm.to_jwk(first.public_key())), "kid": "a"},
            {
                **orjson.loads(jwt.algorithms.OKPAlgorithm.to_jwk(second.public_key())),
                "kid": "b",
            },
        ]
    }
    auth = Authenticator(Keys.load(None, write(tmp_path / "jwks.json", json.dumps(jwks))))
    assert auth.verify(jwt.encode(claims(), first, "ES256", headers={"kid": "a"}), NOW)
    assert auth.verify(jwt.encode(claims(), second, "EdDSA", headers={"kid": "b"}), NOW)
    with pytest.raises(AuthError, match="not accepted"):  # kid a is an ES256 key
        auth.verify(jwt.encode(claims(), first, "ES256", headers={"kid": "b"}), NOW)


# --- tokens ---------------------------------------------------------------------------------


def hs256(payload: dict[str, Any], key: bytes = SECRET) -> str:
    return jwt.encode(payload, key, algorithm="HS256")


def good(**changes: Any) -> dict[str, Any]:
    """Valid claims for `CHECKED`, with `changes` (None removes a claim)."""
    payload = claims(aud="ipt-bus", iss="ops") | changes
    return {k: v for k, v in payload.items() if v is not None}


CHECKED = Keys(SECRET, audience="ipt-bus", issuer="ops")

HOSTILE = {
    "none": (None, "a token is required", ErrorCode.UNAUTHORIZED),
    "empty": ("", "a token is required", ErrorCode.UNAUTHORIZED),
    "garbage": ("garbage", "not a JWT", ErrorCode.UNAUTHORIZED),
    "alg-none": (
        hand_made({"alg": "none"}, good(), None),
        "'none' are not accepted",
        "unauthorized",
    ),
    "wrong-signature": (hs256(good(), b"x" * 40), "does not verify", ErrorCode.UNAUTHORIZED),
    "expired": (hs256(good(exp=int(NOW - 1))), "expired", ErrorCode.TOKEN_EXPIRED),
    "nbf-future": (hs256(good(nbf=int(NOW + 60))), "not valid yet", ErrorCode.UNAUTHORIZED),
    "no-exp": (hs256(good(exp=None)), "no 'exp' claim", ErrorCode.UNAUTHORIZED),
    "no-sub": (hs256(good(sub=None)), "no 'sub' claim", ErrorCode.UNAUTHORIZED),
    "no-aud": (hs256(good(aud=None)), "no 'aud' claim", ErrorCode.UNAUTHORIZED),
    "wrong-aud": (hs256(good(aud="other")), "another audience", ErrorCode.UNAUTHORIZED),
    "wrong-iss": (hs256(good(iss="other")), "another issuer", ErrorCode.UNAUTHORIZED),
    "20-kb": (hs256(good(pad="x" * 20_000)), "longer than", ErrorCode.UNAUTHORIZED),
    "bad-pattern": (
        hs256(good(ipt_bus={"publish": ["a..b"]})),
        "ipt_bus.publish has",
        ErrorCode.UNAUTHORIZED,
    ),
}


@pytest.mark.parametrize(("token", "message", "code"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_tokens_are_refused_without_echoing_them(
    token: str | None, message: str, code: str
) -> None:
    auth = Authenticator(CHECKED)
    assert auth.verify(hs256(good()), NOW).sub == "alice"  # the baseline passes
    with pytest.raises(AuthError, match=message) as caught:
        auth.verify(token, NOW)
    assert caught.value.code == code
    assert not token or token not in str(caught.value)


def test_a_cached_token_still_expires() -> None:
    auth = Authenticator(Keys(SECRET))
    token = hs256(claims())
    assert auth.verify(token, NOW).expires_at == NOW + 60
    assert auth.verify(token, NOW + 59).sub == "alice"  # from the cache
    with pytest.raises(AuthError, match="expired") as caught:
        auth.verify(token, NOW + 60)
    assert caught.value.code == ErrorCode.TOKEN_EXPIRED


def test_the_wall_clock_is_checked_too() -> None:
    """PyJWT checks `exp` against its own clock; a bus clock ahead of it still refuses."""
    token = hs256(claims(exp=int(time.time()) + 60))
    with pytest.raises(AuthError, match="expired"):
        Authenticator(Keys(SECRET)).verify(token, time.time() + 120)


@pytest.mark.parametrize(
    ("claim", "grant"),
    [
        (None, Grant()),
        ("admin", Grant()),
        ({}, Grant()),
        ({"publish": "task.*"}, Grant()),  # not a list: nothing
        ({"admin": "yes", "rate_limit": True}, Grant()),  # only a real true / number counts
        ({"rate_limit": float("nan")}, Grant()),
        ({"rate_limit": 0}, Grant()),
        (
            {"publish": ["task.*"], "subscribe": ["**"], "admin": True, "rate_limit": 5},
            Grant(("task.*",), ("**",), admin=True, rate_limit=5.0),
        ),
    ],
)
def test_the_permissions_claim_grants_only_what_it_says(claim: Any, grant: Grant) -> None:
    assert grant_of(claim) == grant


def test_make_token_round_trips() -> None:
    grant = Grant(("task.**",), ("*.status",), admin=True, rate_limit=2.5)
    now = int(time.time())
    token = make_token(
        SECRET, "ops", now=now, ttl_seconds=3600, grant=grant, audience="a", issuer="i"
    )
    identity = Authenticator(Keys(SECRET, audience="a", issuer="i")).verify(token, now)
    assert (identity.sub, identity.expires_at, identity.grant) == ("ops", now + 3600, grant)


def test_an_issuer_clock_a_little_ahead_is_tolerated() -> None:
    auth = Authenticator(Keys(SECRET))
    now = time.time()
    assert auth.verify(hs256(claims(iat=int(now + 10), exp=int(now + 60))), now)
    with pytest.raises(AuthError, match="not valid yet"):
        auth.verify(hs256(claims(iat=int(now + 600), exp=int(now + 900))), now)


def test_grants_check_publish_by_match_and_subscribe_by_cover() -> None:
    grant = Grant(publish=("task.*",), subscribe=("task.**", "cost.update"))
    assert grant.may_publish("task.status")
    assert not grant.may_publish("task.status.x")
    assert grant.may_subscribe("task.*")
    assert grant.may_subscribe("task.status.*")
    assert grant.may_subscribe("cost.update")
    assert not grant.may_subscribe("**")
    assert not grant.may_subscribe("*.update")
    assert not grant.may_subscribe("cost.*")


# --- rate limits ----------------------------------------------------------------------------


def test_a_bucket_refills_at_its_rate() -> None:
    limiter = RateLimiter(rate=10.0, burst=5.0)
    for _ in range(5):
        assert limiter.take("a", 1, None, 0.0, max_wait=0.0).taken
    refused = limiter.take("a", 1, None, 0.0, max_wait=0.0)
    assert not refused.taken
    assert refused.wait == pytest.approx(0.1)
    assert limiter.take("b", 1, None, 0.0, max_wait=0.0).taken  # one bucket per identity
    assert limiter.take("a", 1, None, 0.1, max_wait=0.0).taken  # refilled
    assert limiter.refused == 1


def test_a_bucket_owes_what_a_waiting_publisher_takes() -> None:
    limiter = RateLimiter(rate=10.0, burst=1.0)
    assert limiter.take("a", 1, None, 0.0, max_wait=1.0).wait == 0.0
    second = limiter.take("a", 1, None, 0.0, max_wait=1.0)
    assert second.taken
    assert second.wait == pytest.approx(0.1)
    third = limiter.take("a", 1, None, 0.0, max_wait=1.0)  # behind the second
    assert third.wait == pytest.approx(0.2)
    assert limiter.delayed == 2


def test_a_batch_larger_than_the_bucket_goes_when_it_is_full() -> None:
    limiter = RateLimiter(rate=10.0, burst=10.0)
    assert limiter.take("a", 100, None, 0.0, max_wait=0.0).taken
    after = limiter.take("a", 1, None, 1.0, max_wait=0.0)  # 90 owed, 10 refilled since
    assert not after.taken
    assert after.wait == pytest.approx(8.1)


def test_a_token_claim_overrides_the_default_and_none_means_unlimited() -> None:
    assert RateLimiter(rate=None, burst=None).take("a", 10**6, None, 0.0, max_wait=0.0).taken
    limiter = RateLimiter(rate=None, burst=None)
    assert limiter.take("a", 1, 1.0, 0.0, max_wait=0.0).taken
    assert not limiter.take("a", 1, 1.0, 0.0, max_wait=0.0).taken


def test_the_limiter_forgets_the_oldest_identity_past_its_bound() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0, max_identities=2)
    for who in "abc":
        assert limiter.take(who, 1, None, 0.0, max_wait=0.0).taken
    assert limiter.take("a", 1, None, 0.0, max_wait=0.0).taken  # forgotten: a full bucket
    assert not limiter.take("c", 1, None, 0.0, max_wait=0.0).taken

"""Tokens and what they grant (docs/security.md).

A token is a JWT with `sub` and `exp`; its permissions are one claim,
``"ipt_bus": {"publish": [patterns], "subscribe": [patterns], "admin": bool, "rate_limit": n}``
(absent means nothing granted). PyJWT checks the signature and the registered claims (`exp`,
`nbf`, `iat`, and `aud`/`iss` when configured). The algorithms a key accepts are fixed by the
key's type: HS256 for a secret, RS256 / ES256 / EdDSA for an RSA / P-256 / Ed25519 public key, so
neither ``alg: none`` nor a token signed with the public key as an HMAC secret is accepted.

Pure: the keys are read by whoever starts the bus (`Keys.load`), and verifying a token is CPU.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ipt_bus.core.errors import ErrorCode, ProtocolError
from ipt_bus.core.topics import covers, matches, validate_pattern

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

MAX_TOKEN_CHARS: Final = 8_192  # a token longer than this is refused unread
CLAIM: Final = "ipt_bus"
CACHE_TOKENS: Final = 1_024  # verified tokens remembered (REST calls repeat theirs)
CLOCK_SKEW_SECONDS: Final = 30  # `nbf`/`iat` this far ahead of the bus's clock still pass


class AuthError(ProtocolError):
    """No token, or one that is not valid (401 `unauthorized` / `token_expired`)."""

    def __init__(self, message: str, *, expired: bool = False, missing: bool = False) -> None:
        code = ErrorCode.TOKEN_EXPIRED if expired else ErrorCode.UNAUTHORIZED
        super().__init__(code, message, "token")
        self.missing = missing


class Forbidden(ProtocolError):
    """A valid token that does not grant the action (403 `forbidden`)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(ErrorCode.FORBIDDEN, message, field)


@attrs.frozen
class Grant:
    """What a token allows. Patterns use the bus's own wildcards."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    admin: bool = False
    rate_limit: float | None = None  # events per second; None: the server's setting

    def may_publish(self, topic: str) -> bool:
        return any(matches(p, topic) for p in self.publish)

    def may_subscribe(self, pattern: str) -> bool:
        """Whether every topic `pattern` matches is one the token may read."""
        return any(covers(g, pattern) for g in self.subscribe)


@attrs.frozen
class Identity:
    """Who a verified token says is there, until when, and what it may do."""

    sub: str
    expires_at: float  # Unix seconds
    grant: Grant

    def readable(self, patterns: Sequence[str], field: str) -> tuple[str, ...]:
        """The patterns a subscription or a history read may use: `patterns` when the grant
        covers each (else `Forbidden` naming the first that it does not), the grant's own when
        none are given."""
        if not patterns:
            return self.grant.subscribe
        for pattern in patterns:
            if not self.grant.may_subscribe(pattern):
                raise Forbidden(
                    f"the token of {self.sub!r} may not subscribe to {pattern!r}", field
                )
        return tuple(patterns)


@attrs.frozen
class Keys:
    """The keys tokens are checked against, and the claims every token must carry."""

    secret: bytes | None = None
    public: tuple[tuple[str | None, Any, str], ...] = ()  # (kid, key, algorithm)
    audience: str | None = None
    issuer: str | None = None

    @property
    def configured(self) -> bool:
        return self.secret is not None or bool(self.public)

    @classmethod
    def load(
        cls,
        secret_file: str | None = None,
        public_key_file: str | None = None,
        *,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> Keys:
        """Read the key files named by the configuration.

        Raises:
            ValueError: a file that cannot be read, or is not a key of a supported type.
        """
        secret = None
        if secret_file is not None:
            secret = _read(secret_file).strip()
            if len(secret) < 32:
                raise ValueError(
                    f"{secret_file}: an HS256 secret must be at least 32 bytes (RFC 7518 §3.2)"
                )
        public: tuple[tuple[str | None, Any, str], ...] = ()
        if public_key_file is not None:
            public = _public_keys(public_key_file, _read(public_key_file))
        return cls(secret, public, audience, issuer)


class Authenticator:
    """Verifies tokens against `Keys`; verified tokens are cached until they expire."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self._cache: OrderedDict[str, Identity] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.keys.configured

    def verify(self, token: str | None, now: float) -> Identity:
        """The identity `token` proves at Unix time `now`.

        Raises:
            AuthError: no token, or one that is malformed, forged, expired, not yet valid, for
                another audience or issuer, or without `sub` or `exp`. The message never
                contains the token.
        """
        if not token:
            raise AuthError("a token is required: Authorization: Bearer <token>", missing=True)
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at <= now:
                del self._cache[token]
                raise AuthError("the token has expired", expired=True)
            self._cache.move_to_end(token)
            return cached
        identity = self._verify(token, now)
        self._cache[token] = identity
        if len(self._cache) > CACHE_TOKENS:
            self._cache.popitem(last=False)
        return identity

    def _verify(self, token: str, now: float) -> Identity:
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError(f"the token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("the token is not a JWT") from None
        key, algorithm = self._key_for(header)
        keys = self.keys
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=keys.audience,
                issuer=keys.issuer,
                leeway=CLOCK_SKEW_SECONDS,  # the issuer's clock may run ahead; `exp` is ours below
                options={"require": ["exp", "sub"], "verify_aud": keys.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired", expired=True) from None
        except jwt.ImmatureSignatureError:
            raise AuthError("the token is not valid yet (nbf or iat in the future)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise AuthError("the token is for another audience (aud)") from None
        except jwt.InvalidIssuerError:
            raise AuthError("the token is from another issuer (iss)") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"the token is not valid: {type(exc).__name__}") from None
        expires_at = float(claims["exp"])
        if expires_at <= now:  # PyJWT checks against its own clock
            raise AuthError("the token has expired", expired=True)
        return Identity(str(claims["sub"]), expires_at, grant_of(claims.get(CLAIM)))

    def _key_for(self, header: Mapping[str, Any]) -> tuple[Any, str]:
        algorithm = header.get("alg")
        keys = self.keys
        if algorithm == "HS256" and keys.secret is not None:
            return keys.secret, "HS256"
        for kid, key, accepted in keys.public:
            if algorithm == accepted and (kid is None or header.get("kid") in (None, kid)):
                return key, accepted
        raise AuthError(f"tokens signed with {algorithm!r} are not accepted here")


def grant_of(claim: Any) -> Grant:
    """The permissions claim, checked (a malformed claim grants nothing it cannot read)."""
    if not isinstance(claim, dict):
        return Grant()

    def patterns(name: str) -> tuple[str, ...]:
        value = claim.get(name)
        if not isinstance(value, list):
            return ()
        try:
            return tuple(validate_pattern(p, f"{CLAIM}.{name}") for p in value)
        except ProtocolError as exc:
            raise AuthError(f"the token's {CLAIM}.{name} has {exc.message}") from None

    rate = claim.get("rate_limit")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
        rate = None
    return Grant(
        publish=patterns("publish"),
        subscribe=patterns("subscribe"),
        admin=claim.get("admin") is True,
        rate_limit=float(rate) if rate is not None and rate > 0 else None,
    )


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


def _algorithm(path: str, key: Any) -> str:
    """The one algorithm a public key is accepted with, by its type."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name != "secp256r1":
            raise ValueError(f"{path}: an EC key must be on P-256 for ES256")
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError(f"{path}: not an RSA, P-256 or Ed25519 public key")


def _public_keys(path: str, data: bytes) -> tuple[tuple[str | None, Any, str], ...]:
    """A PEM public key, or a JWKS (``{"keys": [...]}``) of them."""
    if data.lstrip().startswith(b"{"):
        try:
            jwks = jwt.PyJWKSet.from_json(data.decode())
        except (jwt.PyJWTError, ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a usable JWKS: {exc}") from None
        out = []
        for jwk in jwks.keys:
            key = jwk.key
            out.append((jwk.key_id, key, _algorithm(path, key)))
        return tuple(out)
    try:
        key = load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM public key: {exc}") from None
    return ((None, key, _algorithm(path, key)),)


def make_token(
    secret: bytes,
    sub: str,
    *,
    now: float,
    ttl_seconds: float,
    grant: Grant,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """An HS256 token (`ipt-bus token`, tests)."""
    claim: dict[str, Any] = {
        "publish": list(grant.publish),
        "subscribe": list(grant.subscribe),
        "admin": grant.admin,
    }
    if grant.rate_limit is not None:
        claim["rate_limit"] = grant.rate_limit
    payload: dict[str, Any] = {
        "sub": sub,
        "iat": int(now),
        "exp": int(now + ttl_seconds),
        CLAIM: claim,
    }
    if audience is not None:
        payload["aud"] = audience
    if issuer is not None:
        payload["iss"] = issuer
    return str(jwt.encode(payload, secret, algorithm="HS256"))

"""Who is calling: bearer JWTs verified with an HS256 secret or a JWKS endpoint; the user id is `sub`.

The development mode (off by default, refused in production) lets requests without a token act as a fixed user
so the local demo works without an identity provider.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import jwt

from backend.config import Settings
from backend.errors import Unauthorized

_ASYMMETRIC = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    is_admin: bool = False
    expires_at: float | None = None
    """The token's `exp` (Unix seconds); None for development auth. A long-lived connection ends there."""


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        # PyJWKClient caches the key set; its fetch is blocking, so it runs in a thread.
        self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True) if settings.jwks_url else None

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            if self._settings.dev_auth:
                return Principal(self._settings.dev_user_id, is_admin=True)
            raise Unauthorized("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("expected 'Authorization: Bearer <token>'")
        claims = await self._verify(token.strip())
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("token has no subject")
        roles = claims.get("roles") or []
        is_admin = sub in self._settings.admin_user_ids or (isinstance(roles, list) and "admin" in roles)
        return Principal(sub, is_admin=is_admin, expires_at=float(claims["exp"]))

    async def _verify(self, token: str) -> dict[str, Any]:
        options = {"require": ["exp", "sub"], "verify_aud": self._settings.jwt_audience is not None}
        kwargs: dict[str, Any] = {
            "audience": self._settings.jwt_audience,
            "issuer": self._settings.jwt_issuer,
            "options": options,
        }
        try:
            if self._secret is not None and _algorithm(token) == "HS256":
                return jwt.decode(token, self._secret, algorithms=["HS256"], **kwargs)
            if self._jwks is not None:
                key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
                return jwt.decode(token, key.key, algorithms=_ASYMMETRIC, **kwargs)
        except jwt.PyJWKClientError as e:
            raise Unauthorized("cannot fetch the signing keys for this token") from e
        except jwt.InvalidTokenError as e:
            raise Unauthorized(f"invalid token: {e}") from e
        raise Unauthorized("no key configured that can verify this token")


def _algorithm(token: str) -> str | None:
    try:
        return str(jwt.get_unverified_header(token).get("alg"))
    except jwt.InvalidTokenError:
        return None

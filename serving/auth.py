"""Optional bearer JWT for the prediction endpoints: HS256 with a shared secret, or RS256/ES256 with a
public key from a file or from an issuer's JWKS URL (the key a token's `kid` names; keys rotate without a
restart). Audience and issuer are checked when set. Missing or invalid token -> 401, wrong scope -> 403."""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
from fastapi import HTTPException, Request

from fusion.core.settings import AuthConfig


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.key: str | None = None
        self.jwks: jwt.PyJWKClient | None = None
        if config.enabled:
            if config.jwks_url is not None:
                if config.algorithm == "HS256":
                    raise ValueError("serving.auth.jwks_url holds public keys: algorithm must be RS256 or ES256")
                self.jwks = jwt.PyJWKClient(
                    config.jwks_url,
                    # the key *set* is cached (lifespan); per-kid caching would keep a retired key valid
                    # for the life of the process, however often the set is fetched again
                    cache_keys=False,
                    lifespan=max(config.jwks_cache_s, 1),
                    timeout=10,
                    cooldown_duration=config.jwks_refresh_cooldown_s,
                )
            elif config.key_file is not None:
                self.key = config.key_file.read_text().strip()
            else:
                self.key = config.secret.get_secret_value() if config.secret else None
            if not self.key and self.jwks is None:
                raise ValueError("serving.auth is enabled but none of serving.auth.secret, key_file or jwks_url is set")

    async def __call__(self, request: Request) -> dict[str, Any] | None:
        if not self.config.enabled:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("missing bearer token (Authorization: Bearer <JWT>)")
        try:
            key: Any = self.key if self.jwks is None else await self._jwks_key(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self.config.algorithm],  # never the token's own header
                audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": ["exp"], "verify_aud": self.config.audience is not None},
                leeway=5,
            )
        except jwt.PyJWKClientConnectionError as exc:  # the issuer's key set cannot be read: not the caller's fault
            raise HTTPException(503, detail=f"cannot read the issuer's keys: {exc}") from exc
        except (jwt.InvalidTokenError, jwt.PyJWKClientError) as exc:
            raise _unauthorized(f"invalid token: {exc}") from exc
        granted = claims.get("scope", "")
        scopes = set(granted.split() if isinstance(granted, str) else granted)
        if self.config.scope not in scopes:
            raise HTTPException(403, detail=f"token lacks scope {self.config.scope!r}")
        return claims

    async def _jwks_key(self, token: str) -> Any:
        """The JWKS key the token's `kid` names (a fetch, off the event loop, when not cached or unknown)."""
        assert self.jwks is not None
        return (await asyncio.to_thread(self.jwks.get_signing_key_from_jwt, token)).key


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(401, detail=reason, headers={"WWW-Authenticate": "Bearer"})

"""Optional bearer JWT for the prediction endpoints: HS256 with a shared secret or RS256 with a
public key, from the config/env or a file. Missing or invalid token -> 401, wrong scope -> 403."""

from __future__ import annotations

from typing import Any

import jwt
from fastapi import HTTPException, Request

from fusion.core.settings import AuthConfig


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.key: str | None = None
        if config.enabled:
            if config.key_file is not None:
                self.key = config.key_file.read_text().strip()
            else:
                self.key = config.secret.get_secret_value() if config.secret else None
            if not self.key:
                raise ValueError(
                    "serving.auth is enabled but neither serving.auth.secret nor serving.auth.key_file is set"
                )

    async def __call__(self, request: Request) -> dict[str, Any] | None:
        if not self.config.enabled:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("missing bearer token (Authorization: Bearer <JWT>)")
        assert self.key is not None  # checked in __init__ when enabled
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.key,
                algorithms=[self.config.algorithm],  # never the token's own header
                audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": ["exp"], "verify_aud": self.config.audience is not None},
                leeway=5,
            )
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid token: {exc}") from exc
        granted = claims.get("scope", "")
        scopes = set(granted.split() if isinstance(granted, str) else granted)
        if self.config.scope not in scopes:
            raise HTTPException(403, detail=f"token lacks scope {self.config.scope!r}")
        return claims


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(401, detail=reason, headers={"WWW-Authenticate": "Bearer"})

"""Serving's JWT keys from an issuer's JWKS URL (a real HTTP server on loopback): the key a token's `kid`
names, audience and issuer checked, a rotated key set picked up without a restart, a retired key refused,
an unreachable issuer answered 503 (not the caller's fault)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import HTTPException
from jwt.algorithms import RSAAlgorithm
from starlette.requests import Request

from fusion.core.settings import AuthConfig
from serving.auth import Authenticator

ISSUER, AUDIENCE = "https://issuer.example", "fusion-serving"


class Issuer:
    """An OIDC-style issuer's keys: a JWKS document served over HTTP, which the test rotates."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                issuer.fetches += 1
                body = json.dumps(
                    {
                        "keys": [
                            {**json.loads(RSAAlgorithm.to_jwk(k.public_key())), "kid": kid, "use": "sig"}
                            for kid, k in issuer.keys.items()
                        ]
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def new_key(self, kid: str) -> Any:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.keys[kid]

    def token(self, key: Any, kid: str, **claims: Any) -> str:
        body = {"exp": int(time.time()) + 60, "scope": "predict", "iss": ISSUER, "aud": AUDIENCE, **claims}
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    running = Issuer()
    yield running
    running.server.shutdown()
    running.server.server_close()


def check(auth: Authenticator, token: str) -> dict[str, Any] | None:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    return asyncio.run(auth(Request({"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers})))


def status(auth: Authenticator, token: str) -> int:
    try:
        check(auth, token)
    except HTTPException as exc:
        return exc.status_code
    return 200


def test_a_token_is_checked_against_the_key_its_kid_names_with_audience_and_issuer(issuer: Issuer) -> None:
    first = issuer.new_key("k1")
    auth = Authenticator(
        AuthConfig(enabled=True, algorithm="RS256", jwks_url=issuer.url, audience=AUDIENCE, issuer=ISSUER)
    )
    assert check(auth, issuer.token(first, "k1", sub="app"))["sub"] == "app"  # type: ignore[index]
    assert status(auth, issuer.token(first, "k1", aud="someone-else")) == 401
    assert status(auth, issuer.token(first, "k1", iss="https://other.example")) == 401
    assert status(auth, issuer.token(first, "k1", scope="read")) == 403
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert status(auth, issuer.token(stranger, "k1")) == 401  # the right kid, signed by another key
    assert status(auth, jwt.encode({"exp": int(time.time()) + 60}, "x" * 32, algorithm="HS256")) == 401


def test_a_rotated_key_set_is_used_without_a_restart_and_a_retired_key_is_refused(issuer: Issuer) -> None:
    old = issuer.new_key("2026-11")
    config = AuthConfig(
        enabled=True, algorithm="RS256", jwks_url=issuer.url, jwks_cache_s=3600, jwks_refresh_cooldown_s=0
    )
    auth = Authenticator(config)
    assert status(auth, issuer.token(old, "2026-11")) == 200
    fetched = issuer.fetches
    assert status(auth, issuer.token(old, "2026-11")) == 200
    assert issuer.fetches == fetched  # cached
    issuer.keys.clear()
    new = issuer.new_key("2026-12")  # the issuer rotates: only the new key is published
    assert status(auth, issuer.token(new, "2026-12")) == 200  # an unknown kid fetches the set again
    assert status(auth, issuer.token(old, "2026-11")) == 401


def test_unknown_kids_within_the_cooldown_do_not_reach_the_issuer(issuer: Issuer) -> None:
    key = issuer.new_key("k1")
    auth = Authenticator(AuthConfig(enabled=True, algorithm="RS256", jwks_url=issuer.url))  # cooldown 30 s
    assert status(auth, issuer.token(key, "k1")) == 200
    fetched = issuer.fetches
    for n in range(20):
        assert status(auth, issuer.token(key, f"made-up-{n}")) == 401
    assert issuer.fetches == fetched


def test_an_unreachable_issuer_is_a_503_and_hs256_cannot_use_a_jwks(issuer: Issuer) -> None:
    key = issuer.new_key("k1")
    url = issuer.url
    issuer.server.shutdown()
    issuer.server.server_close()
    auth = Authenticator(AuthConfig(enabled=True, algorithm="RS256", jwks_url=url))
    assert status(auth, issuer.token(key, "k1")) == 503
    with pytest.raises(ValueError, match="algorithm must be RS256 or ES256"):
        Authenticator(AuthConfig(enabled=True, jwks_url=url))

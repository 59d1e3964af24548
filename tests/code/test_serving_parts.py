"""Serving's pure parts: the circuit breaker, the row hash of the cache key, JWT checks."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi import HTTPException
from starlette.requests import Request

from fusion.core.settings import AuthConfig
from serving.auth import Authenticator
from serving.breaker import CircuitBreaker
from serving.prediction_cache import row_digest


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown_s=5, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 5.0
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # exactly one trial call
    breaker.failure()  # the trial failed: open again for a full cooldown
    assert not breaker.allow()
    clock.now = 10.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


def test_row_digest_ignores_key_order_and_tells_values_apart() -> None:
    assert row_digest({"a": 1, "b": "x"}) == row_digest({"b": "x", "a": 1})
    assert row_digest({"a": 1, "b": "x"}) != row_digest({"a": 1, "b": "y"})
    assert row_digest({"a": None}) != row_digest({"a": "None"})


SECRET = secrets.token_hex(32)


def request_with(token: str | None) -> Request:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    return Request({"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers})


def token(**claims: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + 60, "scope": "predict", **claims}, SECRET, algorithm="HS256")


def signed(claims: dict[str, Any], key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


# Tokens are made when the test runs (in random order that may be minutes after collection), so `exp` means
# what each case says.
@pytest.mark.parametrize(
    ("given", "status"),
    [
        (lambda: None, 401),
        (lambda: "not-a-jwt", 401),
        (lambda: signed({"exp": int(time.time()) + 60, "scope": "predict"}, "another-secret-of-32-bytes-length!"), 401),
        (lambda: signed({"exp": int(time.time()) - 60, "scope": "predict"}), 401),
        (lambda: signed({"scope": "predict"}), 401),  # no exp
        (lambda: token(scope="read"), 403),
    ],
    ids=["no-token", "not-a-jwt", "other-key", "expired", "no-exp", "wrong-scope"],
)
def test_jwt_refusals(given: Callable[[], str | None], status: int) -> None:
    auth = Authenticator(AuthConfig(enabled=True, secret=SECRET))
    with pytest.raises(HTTPException) as refused:
        asyncio.run(auth(request_with(given())))
    assert refused.value.status_code == status


def test_jwt_accepts_a_token_with_the_scope_and_off_means_open() -> None:
    auth = Authenticator(AuthConfig(enabled=True, secret=SECRET))
    claims = asyncio.run(auth(request_with(token(scope="read predict", sub="app"))))
    assert claims is not None and claims["sub"] == "app"
    assert asyncio.run(Authenticator(AuthConfig())(request_with(None))) is None
    with pytest.raises(ValueError, match="secret"):
        Authenticator(AuthConfig(enabled=True))


def test_serving_reads_an_env_reference_for_redis_in_the_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.model_server import ServingArgs

    args = ServingArgs(model_name="m", record_fields={}, tracking_uri="x", lake_uri="y", redis_url="env:TEST_REDIS")
    monkeypatch.setenv("TEST_REDIS", "redis://:pw@redis:6379/0")
    assert args.resolved_redis_url() == "redis://:pw@redis:6379/0"
    monkeypatch.delenv("TEST_REDIS")
    with pytest.raises(RuntimeError, match="TEST_REDIS is not set"):
        args.resolved_redis_url()
    assert ServingArgs(model_name="m", record_fields={}, tracking_uri="x", lake_uri="y").resolved_redis_url() is None


def test_ingress_environment_keeps_haproxys_paths_short_and_its_ports_its_own() -> None:
    from fusion.core.settings import ServingConfig
    from serving.app import ingress_environment

    proxy = ingress_environment(ServingConfig(ingress="proxy"))
    assert proxy["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0" and proxy["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    first, second = (ingress_environment(ServingConfig()) for _ in range(2))
    for made in (first, second):
        shutil.rmtree(made["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    assert first["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1" and first["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    for name in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
        # Ray puts its files in a 56-character folder under the state base; HAProxy takes 97 at most
        socket = Path(first[name])
        assert len(str(socket.parent / ("x" * 56) / socket.name)) <= 97, socket
    assert first["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] != second["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
    ports = {
        first[f"RAY_SERVE_{name}_PORT"]
        for name in ("HAPROXY_METRICS", "HAPROXY_STATS", "FALLBACK_PROXY_HTTP", "FALLBACK_PROXY_GRPC")
    }
    assert len(ports) == 4 and not ports & {"9101", "8404", "8500", "9500"}  # not Ray's fixed defaults


def test_a_second_server_gets_replica_ports_nobody_listens_on() -> None:
    """Replicas listen with SO_REUSEPORT: a second server given ports the first one's replicas hold
    would share them silently. Here a listener like a replica's holds the first block's first port."""
    import socket

    from fusion.core.settings import ServingConfig
    from serving.app import ingress_environment

    first = ingress_environment(ServingConfig(replicas=2))
    shutil.rmtree(first["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    low, high = (
        int(first["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]),
        int(first["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]),
    )
    assert high - low + 1 >= 4 * 2 and low >= 30000 and high < 32768  # below the ephemeral ports
    with socket.socket() as replica:
        replica.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        replica.bind(("0.0.0.0", low))
        replica.listen()
        second = ingress_environment(ServingConfig(replicas=2))
        shutil.rmtree(second["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    assert int(second["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]) > high
    assert second["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"] != second["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]


def test_a_stopped_servers_leftover_haproxy_is_ended_by_its_config_path(tmp_path: Path) -> None:
    """Only the processes with an argument in this server's HAProxy folder; one ignoring SIGTERM is killed."""
    import subprocess
    import sys

    import psutil

    from serving.app import end_processes_under

    state = tmp_path / "fh-state"  # Ray writes the config a folder down: <state>/<hash>/haproxy.cfg
    config = str(state / "0a1b2c" / "haproxy.cfg")
    sleeper = (
        "import signal, sys, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[2] == 'stubborn' else signal.SIG_DFL); "
        "time.sleep(60)"
    )
    polite = subprocess.Popen([sys.executable, "-c", sleeper, config, "polite"])
    stubborn = subprocess.Popen([sys.executable, "-c", sleeper, config, "stubborn"])
    other = subprocess.Popen([sys.executable, "-c", sleeper, str(tmp_path / "fh-state2" / "haproxy.cfg"), "polite"])
    try:
        time.sleep(1)  # each has set its signal handler
        assert end_processes_under(str(state), timeout_s=2) == 2
        # ended (and reaped by psutil: they are this process's children here), the other one untouched
        assert not psutil.pid_exists(polite.pid) and not psutil.pid_exists(stubborn.pid)  # both reaped
        assert other.poll() is None
    finally:
        for process in (polite, stubborn, other):
            process.kill()
            process.wait()

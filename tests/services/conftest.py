"""Fixtures for tests against real services started by infra/local/services.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, _service, services
from tests.services.support import WORKER_LOG, delete_scheduled_runs


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    database = _service("postgres")  # its own fixture step, so that it is stopped after if this session started it
    next(database)
    service = _service("prefect")
    next(service)
    url = f"http://127.0.0.1:{os.environ.get('FUSION_PREFECT_PORT', '4200')}/api"
    env = {**os.environ, "PREFECT_API_URL": url, "FUSION_PROJECT_DIR": str(REPO)}
    prefect = str(Path(sys.executable).parent / "prefect")
    if subprocess.run(
        [prefect, "work-pool", "inspect", "fusion-local"], env=env, capture_output=True, check=False
    ).returncode:
        subprocess.run(
            [prefect, "work-pool", "create", "fusion-local", "--type", "process"],
            env=env,
            check=True,
            capture_output=True,
        )
    deployed = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    yield url
    next(service, None)
    next(database, None)


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[str]:
    service = _service("mlflow")
    next(service)
    yield f"http://127.0.0.1:{os.environ.get('FUSION_MLFLOW_PORT', '5000')}"
    next(service, None)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from tests.browser import chromium

    yield from chromium()


@pytest.fixture(scope="session")
def kcat() -> str:
    services("tools", timeout=600)
    path = shutil.which("kcat")
    assert path, "kcat was not installed"
    return path


@pytest.fixture(scope="session", autouse=True)
def close_producers(kafka_bootstrap: str) -> Iterator[None]:
    """Producers the pipeline cached in this process are closed while the broker is still up."""
    yield
    from fusion.core.events import close_event_buses

    close_event_buses()


@pytest.fixture
def worker(prefect_api: str, jaeger: str) -> Iterator[None]:
    """The local worker, started after Jaeger so that its runs export spans there (services.sh gives it
    OTEL_EXPORTER_OTLP_ENDPOINT then) and, as services.sh starts it, logging JSON. A worker that was
    running without the endpoint (started before Jaeger) is restarted."""
    delete_scheduled_runs(prefect_api)  # nothing but this test's run may reach the worker
    pid = WORKER_LOG.with_name("pid")
    if pid.is_file() and Path(f"/proc/{pid.read_text().strip()}").exists():
        environ = Path(f"/proc/{pid.read_text().strip()}/environ").read_bytes().split(b"\0")
        if not any(v.startswith(b"OTEL_EXPORTER_OTLP_ENDPOINT=") for v in environ):
            services("down", "prefect-worker", timeout=120)
    service = _service("prefect-worker")
    next(service)
    yield
    next(service, None)

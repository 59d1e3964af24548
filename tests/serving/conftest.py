"""A served flights model: Redis from infra/local, a pipeline run into a temporary FUSION_HOME
(which registers the champion and materializes online features into that Redis), and the Ray Serve
app in this process on a free port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fusion.core.net import free_port
from tests.conftest import FLIGHTS_CONFIG, REPO, _service


@dataclass(frozen=True)
class Served:
    url: str
    redis_url: str
    settings: Any
    summary: Any


def start_fusion_serve(config: Path, env: dict[str, str], stderr: Path) -> subprocess.Popen[bytes]:
    """`fusion serve --config config` as a child process, its stderr (Serve's and the replicas' lines) in
    the file `stderr`."""
    return subprocess.Popen(
        [sys.executable, "-m", "fusion.cli", "serve", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("w"),
    )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The real Redis, on a database of the tests' own (not 0, where `make serve` keeps its state),
    emptied before and after the session."""
    import redis

    service = _service("redis")
    next(service)
    port, db = os.environ.get("FUSION_REDIS_PORT", "6379"), os.environ.get("FUSION_TEST_REDIS_DB", "13")
    url = f"redis://127.0.0.1:{port}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
    next(service, None)


@pytest.fixture(scope="session")
def served(redis_url: str) -> Iterator[Served]:
    from flows.training_pipeline import run_pipeline
    from fusion.core.settings import load_settings, with_overrides
    from serving.app import start_serving, stop_serving

    home = Path(tempfile.mkdtemp(prefix="fusion-serving-"))
    port = free_port()
    # Everything through the settings object, nothing through os.environ: a FUSION_* variable left set
    # here would send other tests' pipeline runs into this home and this Redis database.
    base = load_settings(FLIGHTS_CONFIG)
    settings = with_overrides(
        base,
        {
            "home": str(home),
            "redis_url": redis_url,
            # Two replicas, as in production: metrics, cache and promotions are checked across replicas.
            "serving": {"port": port, "poll_s": 0.5, "replicas": 2},
            # Fewer boosting rounds than the shipped config: serving, not model quality, is under test.
            "dataset": {"model": {"num_boost_round": 60}},
        },
    )
    try:
        summary = run_pipeline(settings)
        start_serving(settings)
        yield Served(f"http://127.0.0.1:{port}", redis_url, settings, summary)
    finally:
        stop_serving()
        shutil.rmtree(home, ignore_errors=True)

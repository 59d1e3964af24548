"""A torch champion served unchanged: `fusion run` with model.family torch registers it, `fusion serve` (its
own process and Ray instance) serves it, and /invocations, OIP v2 /infer and /v1/predict answer what the
registered pyfunc predicts (the same checks as the LightGBM champion's, in tests/serving/test_serving.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusion.core.net import free_port
from tests.conftest import FLIGHTS_CONFIG
from tests.serving import test_serving as lightgbm_checks
from tests.serving.conftest import Served

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def torch_served() -> Iterator[Served]:
    from flows.training_pipeline import run_pipeline
    from fusion.core.settings import load_settings, with_overrides

    home = Path(tempfile.mkdtemp(prefix="fusion-torch-serving-"))
    port = free_port()
    # one epoch: serving a torch model is under test, not its quality (docs/BENCHMARKS.md has that)
    changes = {"home": str(home), "dataset": {"model": {"family": "torch", "torch": {"max_epochs": 1}}}}
    settings = with_overrides(load_settings(FLIGHTS_CONFIG), {**changes, "serving": {"port": port}})
    summary = run_pipeline(settings)
    assert summary.model_family == "torch" and "champion" in summary.aliases
    env = {
        **os.environ,
        "FUSION_HOME": str(home),
        "FUSION_DATASET__MODEL__FAMILY": "torch",
        "FUSION_SERVING__PORT": str(port),
        "RAY_ADDRESS": "local",  # a Ray instance of its own, beside the one the other serving tests run
    }
    env.pop("FUSION_REDIS_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "fusion.cli", "serve", "--config", str(FLIGHTS_CONFIG)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert server.poll() is None, f"fusion serve exited: {server.stderr.read() if server.stderr else ''}"
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("fusion serve did not become ready in 240 s")
        yield Served(url, "", settings, summary)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(home, ignore_errors=True)


def test_the_served_champion_is_the_torch_model(torch_served: Served) -> None:
    model = lightgbm_checks.registered_model(torch_served)
    assert type(model.unwrap_python_model()).__name__ == "TorchClassifier"
    info = httpx.get(f"{torch_served.url}/v2/models/flights_delay", timeout=30).json()
    assert info["versions"] == [torch_served.summary.model_version]


def test_invocations_and_oip_answer_the_torch_pyfunc(torch_served: Served) -> None:
    lightgbm_checks.test_invocations_and_oip_equal_the_registered_models_predict(torch_served)


def test_v1_predict_answers_the_torch_pyfunc_on_the_training_features(
    torch_served: Served, flights_tables: Any
) -> None:
    lightgbm_checks.test_v1_predict_computes_the_training_features_from_raw_records(torch_served, flights_tables)

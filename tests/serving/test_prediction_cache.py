"""The prediction cache keys on what a model is, not on its registry version number: two MLflow
registries sharing one Redis, each with a different model registered as version 1 of the same name,
each answer with their own model's predictions. Real Redis, real MLflow registries, ModelCore without Ray."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest
import redis

from tests.conftest import FLIGHTS_CONFIG

pytestmark = pytest.mark.services
NAME = "cache_probe"


class Constant:
    """Stands for a trained model: one probability for every row, different per registry."""

    def __init__(self, probability: float) -> None:
        self.probability = probability

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
        return np.full(len(model_input), self.probability)


def register_v1(home: Path, probability: float) -> str:
    """A registry of its own with `NAME` v1 = a constant model and the dataset config serving reads."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.pyfunc import PythonModel
    from mlflow.types import ColSpec, Schema

    from fusion.core.settings import load_settings

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("probe", artifact_location=(home / "artifacts").as_uri())
    model = type("ConstantModel", (Constant, PythonModel), {})(probability)
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", "distance", required=False), ColSpec("string", "carrier", required=False)]),
        outputs=Schema([ColSpec("double", "probability")]),
    )
    dataset = load_settings(FLIGHTS_CONFIG).dataset
    with mlflow.start_run(experiment_id=experiment):
        config = home / "dataset_config.json"
        config.write_text(json.dumps(dataset.model_dump(mode="json")))
        mlflow.log_artifact(str(config), artifact_path="config")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=model, signature=signature, registered_model_name=NAME, pip_requirements=[]
        )
    assert str(info.registered_model_version) == "1"
    client.set_registered_model_alias(NAME, "champion", "1")
    return uri


def core_for(tracking_uri: str, home: Path, redis_url: str) -> Any:
    from serving.model_server import ModelCore

    return ModelCore(
        {
            "model_name": NAME,
            "record_fields": {},
            "tracking_uri": tracking_uri,
            "lake_uri": str(home / "lake"),
            "redis_url": redis_url,
            "serving": {"poll_s": 3600},
        }
    )


def test_two_registries_on_one_redis_each_answer_their_own_version_1(tmp_path: Path, redis_url: str) -> None:
    homes = {p: tmp_path / f"registry-{p}" for p in (0.1, 0.9)}
    uris = {}
    for probability, home in homes.items():
        home.mkdir()
        uris[probability] = register_v1(home, probability)
    rows = pl.DataFrame({"distance": [100.0, 2500.0, 733.0], "carrier": ["UA", "B6", None]})
    cache = redis.Redis.from_url(redis_url)

    async def scenario() -> dict[float, list[Any]]:
        answers: dict[float, list[Any]] = {}
        for probability in (0.1, 0.9):
            core = core_for(uris[probability], homes[probability], redis_url)
            await core.start()
            try:
                assert core.version == "1"
                first = await core.predict_frame(rows)
                deadline = time.monotonic() + 10  # the cache is written in the background
                again = await core.predict_frame(rows)
                while again["cache_hits"] < rows.height and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    again = await core.predict_frame(rows)
                answers[probability] = [first, again]
            finally:
                await core.stop()
        return answers

    try:
        answers = asyncio.run(scenario())
    finally:
        for key in cache.scan_iter(f"fusion:pred:{NAME}:*"):
            cache.delete(key)
        cache.close()
    for probability, (first, again) in answers.items():
        assert first["version"] == "1"
        assert first["predictions"] == pytest.approx([probability] * rows.height)  # its own model, not the other's
        assert first["cache_hits"] == 0
        assert again["predictions"] == first["predictions"] and again["cache_hits"] == rows.height  # the cache works

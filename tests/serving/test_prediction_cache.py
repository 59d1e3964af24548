"""The prediction cache keys on what a model is, not on its registry version number: two MLflow
registries sharing one Redis, each with a different model registered as version 1 of the same name,
each answer with their own model's predictions. Real Redis, real MLflow registries, ModelCore without Ray."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import polars as pl
import pytest
import redis

from tests.conftest import FLIGHTS_CONFIG

pytestmark = pytest.mark.services
NAME = "cache_probe"
T = TypeVar("T")


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


def run_and_clean(scenario: Coroutine[Any, Any, T], redis_url: str) -> T:
    """Run the scenario, then delete the prediction cache entries it wrote, whatever happened."""
    try:
        return asyncio.run(scenario)
    finally:
        cache = redis.Redis.from_url(redis_url)
        for key in cache.scan_iter(f"fusion:pred:{NAME}:*"):
            cache.delete(key)
        cache.close()


def test_two_registries_on_one_redis_each_answer_their_own_version_1(tmp_path: Path, redis_url: str) -> None:
    homes = {p: tmp_path / f"registry-{p}" for p in (0.1, 0.9)}
    uris = {}
    for probability, home in homes.items():
        home.mkdir()
        uris[probability] = register_v1(home, probability)
    rows = pl.DataFrame({"distance": [100.0, 2500.0, 733.0], "carrier": ["UA", "B6", None]})

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

    answers = run_and_clean(scenario(), redis_url)
    for probability, (first, again) in answers.items():
        assert first["version"] == "1"
        assert first["predictions"] == pytest.approx([probability] * rows.height)  # its own model, not the other's
        assert first["cache_hits"] == 0
        assert again["predictions"] == first["predictions"] and again["cache_hits"] == rows.height  # the cache works


def test_rows_all_cached_are_answered_without_typing_and_a_bad_row_keeps_its_number(
    tmp_path: Path, redis_url: str
) -> None:
    """/invocations' path (`predict_columns`): the cache is keyed on the values as sent, so a request whose
    rows are all cached is not typed; one uncached row types the whole request, whose errors number rows
    as the client sent them; the same value spelled otherwise is an entry of its own."""
    from serving.protocols import BadInput, column_field, typed_inputs

    home = tmp_path / "registry"
    home.mkdir()
    uri = register_v1(home, 0.25)
    typings: list[int] = []

    async def scenario() -> dict[str, Any]:
        core = core_for(uri, home, redis_url)
        await core.start()
        try:
            model = core.require_model()

            def ask(columns: dict[str, list[Any]]) -> Any:
                def typed() -> pl.DataFrame:
                    typings.append(len(next(iter(columns.values()))))
                    return typed_inputs(model, columns, column_field, "dataframe_split.data.{row}.{column}")

                return core.predict_columns(model, columns, typed)

            sent = {"distance": [100.0, 2500.0, None], "carrier": ["UA", "B6", None]}
            out = {"first": await ask(sent), "again": await ask(sent)}
            try:
                await ask({"distance": [100.0, "far"], "carrier": ["UA", "B6"]})  # row 0 cached, row 1 bad
            except BadInput as exc:
                out["bad"] = str(exc)
            out["spelled"] = await ask({"distance": [100], "carrier": ["UA"]})  # 100, not 100.0
            return out
        finally:
            await core.stop()

    out = run_and_clean(scenario(), redis_url)
    assert out["first"]["cache_hits"] == 0 and out["first"]["predictions"] == pytest.approx([0.25] * 3)
    assert out["again"]["cache_hits"] == 3 and out["again"]["predictions"] == out["first"]["predictions"]
    assert out["bad"].startswith("dataframe_split.data.1.distance")
    assert out["spelled"]["cache_hits"] == 0 and out["spelled"]["predictions"] == pytest.approx([0.25])
    # typed: the first request, the one with a bad row, and the respelled one; never the cached one
    assert typings == [3, 2, 1]

"""Registration against a real sqlite MLflow registry: finding a version, idempotence, errors that must surface."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from fusion.core.lake import Lake
from tasks.classifier import CategoryVocabulary, TabularClassifier, to_matrix
from tasks.evaluate import Evaluation
from tasks.register import CHALLENGER, find_registered_version, register_model
from tasks.train import TrainedModel


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh sqlite registry; MLflow's process-wide URIs and active experiment are put back afterwards."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    monkeypatch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
    yield f"sqlite:///{tmp_path / 'mlflow.db'}"


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_unknown_model_has_no_version(tracking_uri: str) -> None:
    assert find_registered_version(client_for(tracking_uri), "never_registered", "abc") is None


def test_a_version_is_found_by_its_fingerprint_only(tmp_path: Path, tracking_uri: str) -> None:
    client = client_for(tracking_uri)
    client.create_registered_model("delays")
    client.create_model_version("delays", source=(tmp_path / "model").as_uri(), tags={"fusion.fingerprint": "abc"})
    found = find_registered_version(client, "delays", "abc")
    assert found is not None and found.version == "1" and found.reused
    assert find_registered_version(client, "delays", "other") is None  # control: the filter really filters


class FailingRegistry:
    """A registry whose search fails the way a broken or locked database does."""

    def search_model_versions(self, filter_string: str) -> Any:
        raise MlflowException("database is locked", error_code=INVALID_PARAMETER_VALUE)


def test_a_registry_error_is_not_taken_for_no_version() -> None:
    with pytest.raises(MlflowException, match="database is locked"):
        find_registered_version(FailingRegistry(), "delays", "abc")


def tiny_model() -> tuple[TrainedModel, pl.DataFrame]:
    """A few-tree LightGBM on two features, one of them categorical, and rows to use as the input example."""
    rng = np.random.default_rng(3)
    frame = pl.DataFrame(
        {"distance": rng.uniform(0, 2000, 400), "carrier": rng.choice(["AA", "B6", "UA"], 400).tolist()}
    )
    features, vocab = ["distance", "carrier"], CategoryVocabulary({"carrier": ["AA", "B6", "UA"]})
    y = (frame["distance"].to_numpy() + rng.normal(0, 300, 400) > 1000).astype(float)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(to_matrix(frame, features, vocab), y), num_boost_round=5)
    model = TabularClassifier(booster.model_to_string(), features, vocab)
    trained = TrainedModel(model, 5, 0.8, "lightgbm", 0.1, {"train": 400, "valid": 0, "test": 0}, params)
    return trained, frame.head(5)


def test_register_model_registers_once_and_marks_the_challenger(
    tmp_path: Path, tracking_uri: str, flights_settings: Any
) -> None:
    dataset = flights_settings.dataset
    lake = Lake(str(tmp_path / "lake"))
    trained, example = tiny_model()
    evaluation = Evaluation(
        **dict.fromkeys(["test_auc", "test_pr_auc", "test_logloss", "baseline_auc", "baseline_pr_auc"], 0.7),
        baseline_logloss=0.6,
        baseline_kind="prior",
        valid_auc=0.8,
        test_rows=100,
        test_positive_rate=0.2,
        calibration=[],
        artifacts={"calibration.json": lake.write_json([], lake.path("reports", "calibration.json"))},
    )
    extra = {"validation_report.json": lake.write_json({"success": True}, lake.path("validation", "report.json"))}

    first = register_model(trained, evaluation, dataset, "b1", example, lake, extra, tracking_uri)
    again = register_model(trained, evaluation, dataset, "b1", example, lake, extra, tracking_uri)

    client = client_for(tracking_uri)
    name = dataset.model.registered_name
    assert not first.reused and first.version == "1"
    assert again.reused and (again.version, again.run_id) == (first.version, first.run_id)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    version = client.get_model_version_by_alias(name, CHALLENGER)
    assert str(version.version) == "1" and version.tags["fusion.batch_id"] == "b1"
    assert version.tags["fusion.test_auc"] == "0.700000"
    run = client.get_run(first.run_id)
    assert run.data.params["batch_id"] == "b1" and run.data.metrics["test_auc"] == 0.7
    logged = {a.path for folder in ("evaluation", "config") for a in client.list_artifacts(first.run_id, folder)}
    assert logged == {"evaluation/calibration.json", "evaluation/validation_report.json", "config/dataset_config.json"}
    # a local registry keeps its artifacts beside the database, not in ./mlruns of the working directory
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())

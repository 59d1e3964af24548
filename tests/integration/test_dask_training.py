"""Training on a real multi-worker Dask cluster goes through lightgbm.dask."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from tasks.features import build_features, categorical_names, feature_names
from tasks.train import split_frames, train_lightgbm_dask

pytestmark = pytest.mark.integration


def test_lightgbm_dask_on_two_worker_processes(flights_settings: Any, flights_tables: dict[str, pl.DataFrame]) -> None:
    from distributed import Client, LocalCluster

    dataset = flights_settings.dataset
    frame = build_features(flights_tables, "flights", dataset.features, dataset.prediction_time, dataset.target)
    parts = split_frames(frame, dataset)
    names = feature_names(dataset.features)
    config = dataset.model.model_copy(update={"dask_num_boost_round": 60})
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        trained = train_lightgbm_dask(client, parts, names, categorical_names(frame, names), "delayed", config)
    assert trained.engine == "lightgbm.dask (2 workers)"
    assert trained.best_iteration == 60
    assert trained.valid_auc > 0.7
    predictions = trained.model.predict_frame(parts.test)
    assert predictions.shape == (parts.test.height,) and 0 < predictions.min() < predictions.max() < 1


def test_flow_on_an_existing_multi_worker_cluster(
    monkeypatch: pytest.MonkeyPatch, fusion_home: Any, tmp_path: Any, flights_tables: dict[str, pl.DataFrame]
) -> None:
    """FUSION_DASK_ADDRESS: the stages run on another cluster's worker processes, training via lightgbm.dask."""
    from distributed import LocalCluster
    from mlflow import MlflowClient

    from flows.training_pipeline import run_pipeline
    from fusion.runtime import embedded_prefect_api_url

    # Worker processes reach the same Prefect API as this process (as they would a real server).
    monkeypatch.setenv("PREFECT_API_URL", embedded_prefect_api_url())
    sample = tmp_path / "flights.parquet"
    flights_tables["flights"].filter(pl.col("day") % 4 == 0).write_parquet(sample)
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__FLIGHTS__URI", str(sample))
    monkeypatch.setenv("FUSION_DATASET__MODEL__DASK_NUM_BOOST_ROUND", "80")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        monkeypatch.setenv("FUSION_DASK_ADDRESS", cluster.scheduler_address)
        summary = run_pipeline()
    assert summary.validation_success and summary.model_version == "1" and summary.promoted
    uri = f"sqlite:///{fusion_home.resolve() / 'mlflow.db'}"
    run = MlflowClient(tracking_uri=uri).get_run(summary.mlflow_run_id)
    assert run.data.params["engine"] == "lightgbm.dask (2 workers)"
    assert run.data.params["best_iteration"] == "80"
    assert summary.metrics.test_auc is not None and summary.metrics.test_auc > 0.7

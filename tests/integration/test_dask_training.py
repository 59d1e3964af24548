"""Training on a real multi-worker Dask cluster goes through lightgbm.dask."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from tasks.features import build_features, categorical_names, feature_names
from tasks.train import split_by_time, train_lightgbm_dask

pytestmark = pytest.mark.integration


def test_lightgbm_dask_on_two_worker_processes(flights_settings: Any, flights_tables: dict[str, pl.DataFrame]) -> None:
    from distributed import Client, LocalCluster

    dataset = flights_settings.dataset
    frame = build_features(flights_tables, "flights", dataset.features, dataset.prediction_time, dataset.target)
    parts = split_by_time(frame, dataset.features.event_time, dataset.split, dataset.features.timezone)
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

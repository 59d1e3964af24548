"""Training on a real multi-worker Dask cluster: data-parallel LightGBM, the workers reading the feature table from
the lake, split and encoded as one process would, stopping early on the whole valid split."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from fusion.core.lake import Lake
from tasks.classifier import CategoryVocabulary, to_matrix
from tasks.dask_train import row_ranges, train_lightgbm_from_lake
from tasks.features import FeatureSet, build_features, categorical_names, feature_names
from tasks.train import split_frames

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_workers() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def feature_frame(flights_settings: Any, flights_tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    dataset = flights_settings.dataset
    return build_features(flights_tables, "flights", dataset.features, dataset.prediction_time, dataset.target)


def in_lake(frame: pl.DataFrame, folder: Path, dataset: Any, row_group_rows: int | None = None) -> FeatureSet:
    path = folder / "features.parquet"
    if row_group_rows:  # several row groups, so pieces start and end inside them
        frame.write_parquet(path, row_group_size=row_group_rows)
    else:
        Lake(str(folder)).write_parquet(frame, str(path))
    names = feature_names(dataset.features)
    return FeatureSet(
        dataset.name, "b1", str(path), frame.height, names, categorical_names(frame, names), dataset.target.name, 1
    )


def test_two_worker_processes_train_from_the_lake_and_stop_early(
    two_workers: Any, flights_settings: Any, feature_frame: pl.DataFrame, tmp_path: Path
) -> None:
    dataset = flights_settings.dataset
    table = in_lake(feature_frame, tmp_path, dataset)
    trained = train_lightgbm_from_lake(two_workers, Lake(str(tmp_path)), table, dataset)

    one_process = split_frames(feature_frame, dataset)
    assert trained.engine == "lightgbm on dask (2 workers)"
    assert trained.split == one_process.record and trained.split_sizes == one_process.sizes()
    vocab = CategoryVocabulary.fit(one_process.train, table.categorical_columns, dataset.model.min_category_count)
    assert trained.model.vocab == vocab
    # early stopping: the booster is cut at the best round, well before the configured maximum
    assert 0 < trained.best_iteration <= dataset.model.num_boost_round - dataset.model.early_stopping_rounds
    assert trained.model.booster.current_iteration() == trained.best_iteration
    # the valid AUC the workers stopped on is the whole valid split's, as in one process
    valid = one_process.valid
    y_valid = valid.get_column("delayed").to_numpy()
    assert trained.valid_auc == pytest.approx(roc_auc_score(y_valid, trained.model.predict_frame(valid)), abs=1e-9)
    test_auc = roc_auc_score(
        one_process.test.get_column("delayed").to_numpy(), trained.model.predict_frame(one_process.test)
    )
    assert test_auc > 0.7
    # both workers trained: LightGBM's network had two machines
    assert "num_machines: 2" in trained.model.booster_text


@pytest.mark.parametrize(
    "split",
    [
        {"method": "time"},
        {"method": "random", "seed": 3},
        {"method": "stratified", "seed": 4},
        {"method": "group", "group_by": ["origin", "dest"], "seed": 5},
    ],
    ids=lambda s: s["method"],
)
def test_each_split_method_on_the_workers_equals_one_process(
    two_workers: Any, flights_settings: Any, feature_frame: pl.DataFrame, tmp_path: Path, split: dict[str, Any]
) -> None:
    base = flights_settings.dataset
    dataset = base.model_copy(
        update={
            "split": base.split.model_copy(update=split),
            "model": base.model.model_copy(update={"num_boost_round": 30, "early_stopping_rounds": 5}),
        }
    )
    sample = feature_frame.gather_every(7)  # 48k rows over the whole year
    table = in_lake(sample, tmp_path, dataset, row_group_rows=5000)
    trained = train_lightgbm_from_lake(two_workers, Lake(str(tmp_path)), table, dataset, pieces_per_worker=3)
    one_process = split_frames(sample, dataset)
    assert trained.split == one_process.record
    assert trained.split_sizes == one_process.sizes()
    vocab = CategoryVocabulary.fit(one_process.train, table.categorical_columns, dataset.model.min_category_count)
    assert trained.model.vocab == vocab
    matrix = to_matrix(one_process.valid, table.feature_columns, vocab)
    expected = roc_auc_score(one_process.valid.get_column("delayed").to_numpy(), trained.model.booster.predict(matrix))
    assert trained.valid_auc == pytest.approx(expected, abs=1e-9)


def test_the_same_table_trains_the_same_model_every_time(
    two_workers: Any, flights_settings: Any, feature_frame: pl.DataFrame, tmp_path: Path
) -> None:
    """The network's ranks follow the order the pieces were dealt in. Through lightgbm.dask they followed
    the order of a set of Dask keys, new at every fit: each rank bins its share of the features from its
    own rows, so a fit gave one of two models (docs/BENCHMARKS.md)."""
    base = flights_settings.dataset
    dataset = base.model_copy(
        update={"model": base.model.model_copy(update={"num_boost_round": 40, "early_stopping_rounds": 5})}
    )
    table = in_lake(feature_frame.gather_every(5), tmp_path, dataset)
    trees = set()
    for _ in range(4):
        trained = train_lightgbm_from_lake(two_workers, Lake(str(tmp_path)), table, dataset)
        assert "num_machines: 2" in trained.model.booster_text
        trees.add(trained.model.booster_text.split("\nparameters:")[0])  # the network's ports differ
    assert len(trees) == 1


def test_a_split_with_an_empty_part_fails_as_in_one_process(
    two_workers: Any, flights_settings: Any, feature_frame: pl.DataFrame, tmp_path: Path
) -> None:
    from fusion.core.errors import TrainingError

    dataset = flights_settings.dataset
    early = feature_frame.filter(pl.col("sched_dep") < pl.datetime(2013, 3, 1, time_zone="UTC"))  # all train
    table = in_lake(early, tmp_path, dataset)
    with pytest.raises(TrainingError) as one_process:
        split_frames(early, dataset)
    with pytest.raises(TrainingError, match="split valid, test is empty") as on_workers:
        train_lightgbm_from_lake(two_workers, Lake(str(tmp_path)), table, dataset)
    assert str(on_workers.value) == str(one_process.value)


def test_row_ranges_cover_the_table_once() -> None:
    assert row_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert row_ranges(2, 4) == [(0, 1), (1, 2)]  # never an empty piece
    ranges = row_ranges(1_000_003, 8)
    assert ranges[0][0] == 0 and ranges[-1][1] == 1_000_003
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_the_lake_reads_any_row_range_of_a_file(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "i": np.arange(1000),
            "s": pl.Series([None if i % 9 == 0 else f"c{i % 13}" for i in range(1000)], dtype=pl.String),
            "t": pl.datetime_range(
                pl.datetime(2013, 1, 1),
                pl.datetime(2013, 1, 1) + pl.duration(hours=999),
                "1h",
                time_zone="UTC",
                eager=True,
            ),
            "n": pl.Series([None if i % 5 == 0 else i for i in range(1000)], dtype=pl.Int32),
        }
    )
    path = tmp_path / "t.parquet"
    frame.write_parquet(path, row_group_size=128)
    lake = Lake(str(tmp_path))
    assert lake.parquet_rows(str(path)) == [128] * 7 + [104]
    for start, stop in [(0, 1000), (0, 1), (127, 129), (300, 700), (999, 1000), (256, 384)]:
        assert lake.read_parquet_rows(str(path), start, stop).equals(frame.slice(start, stop - start))


def test_flow_on_an_existing_multi_worker_cluster(
    monkeypatch: pytest.MonkeyPatch, fusion_home: Any, tmp_path: Any, flights_tables: dict[str, pl.DataFrame]
) -> None:
    """FUSION_DASK_ADDRESS: the stages run on another cluster's worker processes, training via lightgbm.dask
    with the workers reading their rows from the lake."""
    from distributed import Client, LocalCluster, get_task_stream
    from mlflow import MlflowClient

    from flows.training_pipeline import run_pipeline
    from fusion.runtime import embedded_prefect_api_url

    # Worker processes reach the same Prefect API as this process (as they would a real server).
    monkeypatch.setenv("PREFECT_API_URL", embedded_prefect_api_url())
    sample = tmp_path / "flights.parquet"
    flights_tables["flights"].filter(pl.col("day") % 4 == 0).write_parquet(sample)
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__FLIGHTS__URI", str(sample))
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
        get_task_stream(client) as stream,
    ):
        monkeypatch.setenv("FUSION_DASK_ADDRESS", cluster.scheduler_address)
        summary = run_pipeline()
    # the rows went from the lake to each worker (a piece read and split there), not through the flow
    ran_on: dict[str, set[str]] = {}
    for task in stream.data:
        ran_on.setdefault(str(task["key"]).split("-")[0], set()).add(task["worker"])
    assert len(ran_on["split_piece"]) == 2 and len(ran_on["encode"]) == 2, ran_on
    assert summary.validation_success and summary.model_version == "1" and summary.promoted
    uri = f"sqlite:///{fusion_home.resolve() / 'mlflow.db'}"
    run = MlflowClient(tracking_uri=uri).get_run(summary.mlflow_run_id)
    assert run.data.params["engine"] == "lightgbm on dask (2 workers)"
    assert 0 < int(run.data.params["best_iteration"]) <= 2000 - 100  # flights.yaml: 2000 rounds, stop after 100
    assert summary.metrics.test_auc is not None and summary.metrics.test_auc > 0.7

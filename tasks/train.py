"""Train: a time split of the feature table, LightGBM on it, and a baseline beside it.

Runs as Dask work: on a cluster of several workers it trains with
lightgbm.dask, otherwise with plain LightGBM inside the worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from fusion.core.errors import TrainingError
from fusion.core.settings import ModelConfig, SplitConfig
from tasks.classifier import CategoryVocabulary, TabularClassifier, to_matrix


@dataclass(frozen=True)
class SplitFrames:
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"train": self.train.height, "valid": self.valid.height, "test": self.test.height}


@dataclass(frozen=True)
class TrainedModel:
    model: TabularClassifier
    best_iteration: int
    valid_auc: float
    engine: str  # "lightgbm" or "lightgbm.dask (N workers)"
    fit_seconds: float
    split_sizes: dict[str, int]
    params: dict[str, Any]


def split_by_time(frame: pl.DataFrame, event_time: str, split: SplitConfig, timezone: str) -> SplitFrames:
    """train: before train_end; valid: up to valid_end; test: the rest (dates in the dataset's timezone)."""
    local_date = pl.col(event_time).dt.convert_time_zone(timezone).dt.date()
    parts = SplitFrames(
        train=frame.filter(local_date < split.train_end),
        valid=frame.filter((local_date >= split.train_end) & (local_date < split.valid_end)),
        test=frame.filter(local_date >= split.valid_end),
    )
    empty = [name for name, n in parts.sizes().items() if n == 0]
    if empty:
        raise TrainingError(
            f"split {', '.join(empty)} is empty (train_end={split.train_end}, valid_end={split.valid_end})"
        )
    return parts


def _labels(frame: pl.DataFrame, target: str, name: str) -> np.ndarray:
    y = frame.get_column(target).cast(pl.Float64).to_numpy()
    if np.unique(y).size < 2:
        raise TrainingError(f"{name} split has a single class in target {target!r}")
    return y


def lightgbm_params(config: ModelConfig, threads: int) -> dict[str, Any]:
    return {"objective": "binary", "metric": "auc", "verbose": -1, "num_threads": threads, **config.params}


def train_lightgbm(
    parts: SplitFrames,
    features: list[str],
    categorical: list[str],
    target: str,
    config: ModelConfig,
    threads: int = 2,
) -> TrainedModel:
    """Plain LightGBM with early stopping on the valid split."""
    vocab = CategoryVocabulary.fit(parts.train, categorical, config.min_category_count)
    params = lightgbm_params(config, threads)
    started = time.perf_counter()
    train_set = lgb.Dataset(
        to_matrix(parts.train, features, vocab),
        _labels(parts.train, target, "train"),
        feature_name=features,
        categorical_feature=categorical,
        free_raw_data=True,
    )
    valid_set = train_set.create_valid(to_matrix(parts.valid, features, vocab), _labels(parts.valid, target, "valid"))
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=config.num_boost_round,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)],
    )
    model = TabularClassifier(booster.model_to_string(num_iteration=booster.best_iteration), features, vocab)
    return TrainedModel(
        model=model,
        best_iteration=int(booster.best_iteration),
        valid_auc=float(booster.best_score["valid"]["auc"]),
        engine="lightgbm",
        fit_seconds=time.perf_counter() - started,
        split_sizes=parts.sizes(),
        params=params,
    )


def train_lightgbm_dask(
    client: Any,
    parts: SplitFrames,
    features: list[str],
    categorical: list[str],
    target: str,
    config: ModelConfig,
) -> TrainedModel:
    """lightgbm.dask across the cluster's workers; rounds fixed (no early stopping in lightgbm.dask)."""
    import dask.array as da
    from sklearn.metrics import roc_auc_score

    workers = len(client.scheduler_info()["workers"])
    vocab = CategoryVocabulary.fit(parts.train, categorical, config.min_category_count)
    x = to_matrix(parts.train, features, vocab)
    y = _labels(parts.train, target, "train")
    chunk = max(1, -(-len(y) // workers))
    params = lightgbm_params(config, threads=1)
    for key in ("metric", "num_threads"):  # lightgbm.dask sets threads per worker itself
        params.pop(key, None)
    started = time.perf_counter()
    estimator = lgb.DaskLGBMClassifier(client=client, n_estimators=config.dask_num_boost_round, **params)
    estimator.fit(
        da.from_array(x, chunks=(chunk, x.shape[1])),
        da.from_array(y, chunks=chunk),
        feature_name=features,
        categorical_feature=categorical,
    )
    booster = estimator.to_local().booster_
    valid_pred = booster.predict(to_matrix(parts.valid, features, vocab))
    return TrainedModel(
        model=TabularClassifier(booster.model_to_string(), features, vocab),
        best_iteration=int(booster.current_iteration()),
        valid_auc=float(roc_auc_score(_labels(parts.valid, target, "valid"), valid_pred)),
        engine=f"lightgbm.dask ({workers} workers)",
        fit_seconds=time.perf_counter() - started,
        split_sizes=parts.sizes(),
        params=params,
    )


def dask_client_with_workers() -> tuple[Any, int]:
    """The Dask client of the worker running this task, and how many workers its cluster has."""
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        return None, 1
    return client, len(client.scheduler_info()["workers"])


def fit_baseline(
    parts: SplitFrames, features: list[str], categorical: list[str], target: str, kind: str
) -> tuple[Any, np.ndarray]:
    """Logistic regression on the same features (or the class prior); returns (model, test probabilities)."""
    y_train = _labels(parts.train, target, "train")
    if kind == "prior":
        return None, np.full(parts.test.height, y_train.mean())
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in features if c not in categorical]
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
                (
                    "cat",
                    make_pipeline(
                        SimpleImputer(strategy="constant", fill_value="__missing__"),
                        OneHotEncoder(handle_unknown="ignore", min_frequency=20),
                    ),
                    categorical,
                ),
            ]
        ),
        LogisticRegression(max_iter=300),
    )

    def frame(f: pl.DataFrame) -> Any:
        pdf = f.select(features).to_pandas()
        for c in categorical:
            pdf[c] = pdf[c].astype(object)
        return pdf

    model.fit(frame(parts.train), y_train)
    return model, model.predict_proba(frame(parts.test))[:, 1]

"""Train: the feature table split (by time, rows, class or group), LightGBM on it, and a baseline beside it.

Runs as Dask work: plain LightGBM inside the worker; on a cluster of several
workers, lightgbm.dask with the workers reading the table (tasks/dask_train.py).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from fusion.core.errors import TrainingError
from fusion.core.settings import DatasetConfig, ModelConfig, SplitConfig
from tasks import kernels
from tasks.classifier import CategoryVocabulary, Classifier, TabularClassifier, to_matrix


@dataclass(frozen=True)
class SplitFrames:
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    # how the rows were divided, logged with the run: method, its settings, and a digest of which row
    # went where (the same digest run to run means the same split)
    record: dict[str, Any] = field(default_factory=dict)
    # rows in each part, also of parts not kept (`split_frames(keep=...)` leaves those empty)
    counts: dict[str, int] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return self.counts or {"train": self.train.height, "valid": self.valid.height, "test": self.test.height}


@dataclass(frozen=True)
class TrainedModel:
    model: Classifier
    best_iteration: int  # boosting rounds, or the torch epoch whose weights were kept
    valid_auc: float
    engine: str  # "lightgbm", "lightgbm on dask (N workers)", "torch (cpu)", "torch (cuda)"
    fit_seconds: float
    split_sizes: dict[str, int]
    params: dict[str, Any]
    split: dict[str, Any] = field(default_factory=dict)  # SplitFrames.record
    device: str = "cpu"
    device_reason: str = ""  # why this device (model.device auto without a GPU worker trains on CPU)
    worker: str | None = None  # the Dask worker that trained it
    # model.family best: each family's valid AUC, the registered one among them
    candidates: dict[str, float] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.model.family


TRAIN, VALID, TEST = 0, 1, 2


PARTS = ("train", "valid", "test")


def split_frames(frame: pl.DataFrame, dataset: DatasetConfig, keep: tuple[str, ...] = PARTS) -> SplitFrames:
    """The feature table in train, valid and test as `dataset.split` says: by event date (time), by a
    seeded draw of rows (random), of rows within each target class (stratified: every part keeps the
    target's rate to a row), or of groups (group: all rows of a `group_by` value in one part). Parts
    not in `keep` are left empty (a stage that scores the test split holds no copy of the others)."""
    split = dataset.split
    if split.method in ROW_WISE:
        part = row_parts(frame, dataset)
    else:
        labels = frame.get_column(dataset.target.name).to_numpy() if split.method == "stratified" else None
        part = drawn_parts(frame.height, split, labels)
    record = split_record(split, part)
    counts = np.bincount(part, minlength=3)
    sizes = {name: int(counts[code]) for name, code in zip(PARTS, (TRAIN, VALID, TEST), strict=True)}
    check_sizes(sizes, record, frame.height)
    assigned = pl.Series("_part", part, dtype=pl.Int8)

    def rows(name: str, code: int) -> pl.DataFrame:
        return frame.filter(assigned == code) if name in keep else frame.clear()

    return SplitFrames(
        train=rows("train", TRAIN), valid=rows("valid", VALID), test=rows("test", TEST), record=record, counts=sizes
    )


# Splits that decide each row from its own values, so any slice of the table can be split alone; the
# others (random, stratified) draw over all rows and need only the row count (and the target's values).
ROW_WISE = ("time", "group")


def row_parts(frame: pl.DataFrame, dataset: DatasetConfig) -> np.ndarray:
    """Each row's part for a row-wise split (time or group)."""
    return _time_parts(frame, dataset) if dataset.split.method == "time" else _group_parts(frame, dataset.split)


def drawn_parts(rows: int, split: SplitConfig, labels: np.ndarray | None = None) -> np.ndarray:
    """Each row's part for a drawn split: random over all rows, stratified within each class of `labels`."""
    if split.method == "random":
        return _drawn_parts(np.arange(rows), split)
    if labels is None:
        raise TrainingError("a stratified split needs the target's values")
    part = np.empty(rows, dtype=np.int8)
    for value in np.unique(labels):
        positions = np.flatnonzero(labels == value)
        part[positions] = _drawn_parts(positions, split)
    return part


def split_record(split: SplitConfig, part: np.ndarray | list[np.ndarray]) -> dict[str, Any]:
    """How the rows were divided: the method, its settings and a digest of each row's part in table order
    (given whole or as consecutive slices)."""
    record: dict[str, Any] = {"method": split.method}
    if split.method == "time":
        record |= {"train_end": str(split.train_end), "valid_end": str(split.valid_end)}
    else:
        record |= {"valid_fraction": split.valid_fraction, "test_fraction": split.test_fraction, "seed": split.seed}
        record |= {"group_by": ",".join(split.group_by)} if split.group_by else {}
    digest = hashlib.sha256()
    for piece in part if isinstance(part, list) else [part]:
        digest.update(piece.astype(np.int8).tobytes())
    record["digest"] = digest.hexdigest()[:16]
    return record


def check_sizes(sizes: dict[str, int], record: dict[str, Any], rows: int) -> None:
    empty = [name for name, n in sizes.items() if n == 0]
    if empty:
        raise TrainingError(f"split {', '.join(empty)} is empty ({record['method']} split: {record}, {rows} rows)")


def _time_parts(frame: pl.DataFrame, dataset: DatasetConfig) -> np.ndarray:
    """train: before train_end; valid: up to valid_end; test: the rest (dates in the dataset's timezone)."""
    split, event_time = dataset.split, dataset.features.event_time
    if event_time is None or split.train_end is None or split.valid_end is None:  # the settings refuse this
        raise TrainingError("a time split needs features.event_time, split.train_end and split.valid_end")
    local_date = pl.col(event_time).dt.convert_time_zone(dataset.features.timezone).dt.date()
    part = (
        pl.when(local_date < split.train_end)
        .then(TRAIN)
        .when(local_date < split.valid_end)
        .then(VALID)
        .otherwise(TEST)
        .cast(pl.Int8)
    )
    return frame.select(part).to_series().to_numpy()


def _drawn_parts(rows: np.ndarray, split: SplitConfig) -> np.ndarray:
    """A seeded permutation of `rows`' positions: the first test_fraction of them (rounded) are test,
    the next valid_fraction valid, the rest train. Exact shares, the same for the same seed and rows."""
    n = rows.size
    order = np.random.default_rng(split.seed).permutation(n)
    n_test, n_valid = round(n * split.test_fraction), round(n * split.valid_fraction)
    part = np.full(n, TRAIN, dtype=np.int8)
    part[order[:n_test]] = TEST
    part[order[n_test : n_test + n_valid]] = VALID
    return part


def _group_parts(frame: pl.DataFrame, split: SplitConfig) -> np.ndarray:
    """Each group's part from the stable hash of the seed and its `group_by` values (tasks/kernels.py,
    the same on every machine and version): a group never changes part as its rows or other groups
    come and go, and the shares are of groups, not rows. Rows with a null key form one group."""
    missing = [c for c in split.group_by if c not in frame.columns]
    if missing:
        raise TrainingError(
            f"split.group_by column(s) {missing} are not in the feature table: add them to features.id_columns"
        )
    seed = pl.Series("_seed", [split.seed], dtype=pl.Int64).new_from_index(0, frame.height)
    hashed = kernels.cross_hash([seed, *(frame[c] for c in split.group_by)]).fill_null(0).to_numpy()
    u = (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(
        u < split.test_fraction, TEST, np.where(u < split.test_fraction + split.valid_fraction, VALID, TRAIN)
    ).astype(np.int8)


def _labels(frame: pl.DataFrame, target: str, name: str) -> np.ndarray:
    y = frame.get_column(target).cast(pl.Float64).to_numpy()
    check_classes(np.unique(y).size, target, name)
    return y


def check_classes(classes: int, target: str, name: str) -> None:
    if classes < 2:
        raise TrainingError(f"{name} split has a single class in target {target!r}")


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
        params=params,  # the binning's (max_bin, ...), fixed by the construct() below
        free_raw_data=True,
    ).construct()  # binned now, and its float matrix freed before the valid split's is made
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
        split=parts.record,
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
    parts: SplitFrames,
    features: list[str],
    categorical: list[str],
    target: str,
    kind: str,
    max_rows: int | None = None,
) -> tuple[Any, np.ndarray]:
    """Logistic regression on the same features (or the class prior), fitted on at most `max_rows` train
    rows (a seeded sample); returns (model, test probabilities, scored in chunks)."""
    train = parts.train
    if max_rows is not None and train.height > max_rows:
        train = train.sample(n=max_rows, seed=0)
    y_train = _labels(train, target, "train")
    if kind == "prior":
        return None, np.full(parts.test.height, y_train.mean())
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in features if c not in categorical]
    # Missing values and categories are prepared in Polars, from the train rows: a numeric column's
    # median fills its gaps (NaN counts as missing), and each category becomes its index in the train
    # rows' categories (missing as a category of its own, a category unseen in train as -1, which the
    # encoder ignores). The same model as imputing and one-hot encoding object columns in sklearn, at a
    # fraction of the cost (those run a Python loop per value).
    medians = {c: _median(train.get_column(c)) for c in numeric}
    vocab = {c: _categories(train.get_column(c)).unique().sort().to_list() for c in categorical}
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", StandardScaler(), list(range(len(numeric)))),
                (
                    "cat",
                    OneHotEncoder(handle_unknown="ignore", min_frequency=20),
                    list(range(len(numeric), len(features))),
                ),
            ]
        ),
        LogisticRegression(max_iter=300),
    )

    def matrix(f: pl.DataFrame) -> np.ndarray:
        columns = [f.get_column(c).cast(pl.Float64).fill_nan(None).fill_null(medians[c]).alias(c) for c in numeric] + [
            _categories(f.get_column(c))
            .replace_strict(vocab[c], list(range(len(vocab[c]))), default=-1, return_dtype=pl.Float64)
            .alias(c)
            for c in categorical
        ]
        return pl.DataFrame(columns).to_numpy()

    model.fit(matrix(train), y_train)
    return model, in_chunks(lambda chunk: model.predict_proba(matrix(chunk))[:, 1], parts.test)


def _median(column: pl.Series) -> float:
    """The train rows' median, missing values (null or NaN) left out; 0 for a column with none."""
    median = column.cast(pl.Float64).fill_nan(None).median()
    return 0.0 if median is None else float(median)  # type: ignore[arg-type]


def _categories(column: pl.Series) -> pl.Series:
    return column.cast(pl.String).fill_null("__missing__")


SCORE_ROWS = 200_000  # rows scored at once: a chunk's matrix, not the whole split's, is held beside it


def in_chunks(predict: Any, frame: pl.DataFrame, rows: int = SCORE_ROWS) -> np.ndarray:
    """`predict` over consecutive slices of `frame`, joined."""
    if frame.height <= rows:
        return np.asarray(predict(frame))
    return np.concatenate([np.asarray(predict(frame.slice(a, rows))) for a in range(0, frame.height, rows)])

"""LightGBM on Dask workers from the lake: every worker reads and splits its own slices of the feature table.

The driver (the train task, seceded from its worker's thread pool) holds only the plan and small
aggregates; rows never pass through it or the task graph:

1. The feature table's rows are cut into `pieces_per_worker` x W ranges, dealt to the W workers in
   turn (so each worker gets rows from the whole table, and of every period of a time-ordered one).
   Each piece task reads its range from the lake (only the row groups holding it), finds each row's
   part with the same code as one process does (time and group splits row by row; random and
   stratified splits from the driver's draw, which needs only the row count and the target), keeps its
   train and valid rows on the worker and returns a summary: its part vector, class counts and the
   train rows' category counts.
2. The driver checks the split as one process would (empty parts, one class), makes the split's digest
   from the part vectors in table order (the same digest as the single-process split) and the category
   vocabulary from the summed counts (the same vocabulary).
3. Per worker, one task encodes that worker's train rows into one matrix, and one builds the whole
   valid set: every worker scores the same valid rows in the same order, so each computes the same AUC
   and stops at the same round. LightGBM 4.7's Dask interface does not combine validation metrics
   across workers: with a shard each, workers stop at different rounds and the rest hang
   (lightgbm-org/LightGBM#6351, #7009).
4. One LightGBM data-parallel training per worker (`fit_part`), their network's ranks in the order the
   pieces were dealt, with early stopping; the registered model is the booster cut at its best round,
   as in one process. Not `lightgbm.dask`: it ranks workers in the order of a set of Dask keys, which
   changes from run to run, and in data-parallel training each rank bins its share of the features
   from its own rows, so the same data and config gave one of two models (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import itertools
import logging
import operator
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import lightgbm as lgb
import numpy as np
import polars as pl

from fusion.core.errors import TrainingError
from fusion.core.lake import Lake
from fusion.core.net import free_port
from fusion.core.settings import DatasetConfig
from tasks.classifier import CategoryVocabulary, TabularClassifier, to_matrix
from tasks.features import FeatureSet
from tasks.train import (
    ROW_WISE,
    TEST,
    TRAIN,
    VALID,
    TrainedModel,
    check_classes,
    check_sizes,
    drawn_parts,
    lightgbm_params,
    row_parts,
    split_record,
)

PIECES_PER_WORKER = 2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PieceSummary:
    part: np.ndarray  # int8: each row's part, in table order
    classes: dict[str, list[Any]]  # train / valid: the target's distinct values
    category_counts: dict[str, pl.DataFrame]  # categorical column -> its train values and their counts


@dataclass(frozen=True)
class Piece:
    train: pl.DataFrame
    valid: pl.DataFrame
    summary: PieceSummary


def row_ranges(rows: int, pieces: int) -> list[tuple[int, int]]:
    """`pieces` consecutive ranges covering [0, rows), sizes differing by at most one (none empty)."""
    pieces = max(1, min(pieces, rows))
    bounds = [rows * i // pieces for i in range(pieces + 1)]
    return list(itertools.pairwise(bounds))


def split_piece(
    lake: Lake,
    table: FeatureSet,
    dataset: DatasetConfig,
    start: int,
    stop: int,
    drawn: np.ndarray | None,
) -> Piece:
    """Rows [start, stop) of the feature table, split; test rows are dropped (evaluate reads them)."""
    frame = lake.read_parquet_rows(table.path, start, stop)
    part = row_parts(frame, dataset) if drawn is None else drawn
    if part.size != frame.height:
        raise TrainingError(f"piece [{start}, {stop}) of {table.path} has {frame.height} rows, its split {part.size}")
    assigned = pl.Series("_part", part, dtype=pl.Int8)
    train, valid = frame.filter(assigned == TRAIN), frame.filter(assigned == VALID)
    counts = {
        col: train.get_column(col).drop_nulls().value_counts(name="count").rename({col: "value"})
        for col in table.categorical_columns
    }
    classes = {name: f.get_column(table.target).unique().to_list() for name, f in (("train", train), ("valid", valid))}
    return Piece(train, valid, PieceSummary(part.astype(np.int8), classes, counts))


def vocabulary(summaries: list[PieceSummary], columns: list[str], min_count: int) -> CategoryVocabulary:
    """`CategoryVocabulary.fit` on all train rows, from each piece's counts."""
    vocab = {}
    for col in columns:
        counts = pl.concat([s.category_counts[col] for s in summaries], how="vertical_relaxed")
        totals = counts.group_by("value").agg(pl.col("count").sum())
        keep = totals.filter(pl.col("count") >= min_count).get_column("value").sort().to_list()
        vocab[col] = [str(v) for v in keep]
    return CategoryVocabulary(vocab)


def encode(frames: list[pl.DataFrame], features: list[str], target: str, vocab: CategoryVocabulary) -> Any:
    """`frames`' rows, in their order, as LightGBM's matrix and labels."""
    frame = pl.concat(frames, how="vertical_relaxed")
    return to_matrix(frame, features, vocab), frame.get_column(target).cast(pl.Float64).to_numpy()


def _encoded(client: Any, worker: str, frames: list[Any], table: FeatureSet, vocab: CategoryVocabulary) -> list[Any]:
    """Futures of the matrix and labels of `frames` (futures of pieces' train or valid rows), made and kept
    on `worker`."""
    args = (frames, table.feature_columns, table.target, vocab)
    xy = client.submit(encode, *args, workers=[worker], pure=False)
    return [client.submit(operator.itemgetter(i), xy, workers=[worker]) for i in (0, 1)]


def network(client: Any, workers: list[str], time_out_minutes: int) -> dict[str, dict[str, Any]]:
    """Each worker's LightGBM network parameters: `workers`' order is the ranks' (rank 0 first)."""
    hosts = {w: urlparse(w).hostname or "" for w in workers}
    for _ in range(5):  # two workers of one host may be handed the same free port: ask again
        ports = {w: client.submit(free_port, "", workers=[w], pure=False).result() for w in workers}
        if len({(hosts[w], ports[w]) for w in workers}) == len(workers):
            break
    else:
        raise TrainingError(f"no distinct LightGBM ports for the workers {workers}")
    machines = ",".join(f"{hosts[w]}:{ports[w]}" for w in workers)
    shared = {"machines": machines, "num_machines": len(workers), "tree_learner": "data", "time_out": time_out_minutes}
    return {w: {**shared, "local_listen_port": ports[w]} for w in workers}


def fit_part(
    x: np.ndarray,
    y: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    params: dict[str, Any],
    rounds: int,
    patience: int,
    features: list[str],
    categorical: list[str],
) -> tuple[str, int, float]:
    """One worker's part of data-parallel LightGBM (`params` holds the network): its train rows, the whole
    valid split. Returns the booster cut at its best round, that round and its valid AUC."""
    train = lgb.Dataset(x, y, feature_name=features, categorical_feature=categorical, free_raw_data=True)
    valid = train.create_valid(x_valid, y_valid)
    booster = lgb.train(
        params,
        train,
        num_boost_round=rounds,
        valid_sets=[valid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(patience, verbose=False)],
    )
    try:
        best = int(booster.best_iteration) or int(booster.current_iteration())
        return booster.model_to_string(num_iteration=best), best, float(booster.best_score["valid"]["auc"])
    finally:
        booster.free_network()


def train_lightgbm_from_lake(
    client: Any, lake: Lake, table: FeatureSet, dataset: DatasetConfig, pieces_per_worker: int = PIECES_PER_WORKER
) -> TrainedModel:
    """Data-parallel LightGBM on the cluster's workers, each reading its rows of `table` from the lake."""
    from distributed import wait

    config, split = dataset.model, dataset.split
    workers = sorted(client.scheduler_info()["workers"])
    started = time.perf_counter()
    rows = sum(lake.parquet_rows(table.path))
    ranges = row_ranges(rows, pieces_per_worker * len(workers))
    drawn = None
    if split.method not in ROW_WISE:
        labels = lake.read_parquet(table.path, columns=[table.target]).get_column(table.target).to_numpy()
        drawn = drawn_parts(rows, split, labels if split.method == "stratified" else None)
    owner = [workers[i % len(workers)] for i in range(len(ranges))]
    pieces = [
        client.submit(
            split_piece,
            lake,
            table,
            dataset,
            a,
            b,
            None if drawn is None else drawn[a:b],
            workers=[w],
            pure=False,
        )
        for (a, b), w in zip(ranges, owner, strict=True)
    ]
    summaries: list[PieceSummary] = client.gather(
        [client.submit(operator.attrgetter("summary"), p, workers=[w]) for p, w in zip(pieces, owner, strict=True)]
    )
    record = split_record(split, [s.part for s in summaries])
    counts = [np.bincount(s.part, minlength=3) for s in summaries]
    sizes = {name: int(sum(c[k] for c in counts)) for name, k in (("train", TRAIN), ("valid", VALID), ("test", TEST))}
    check_sizes(sizes, record, rows)
    for name in ("train", "valid"):
        check_classes(len({v for s in summaries for v in s.classes[name]}), table.target, name)
    vocab = vocabulary(summaries, table.categorical_columns, config.min_category_count)
    split_seconds = time.perf_counter() - started
    features = table.feature_columns

    # each piece's train and valid rows as futures of their own, so only valid rows travel between workers
    trains = [client.submit(operator.attrgetter("train"), p, workers=[w]) for p, w in zip(pieces, owner, strict=True)]
    valids = [client.submit(operator.attrgetter("valid"), p, workers=[w]) for p, w in zip(pieces, owner, strict=True)]
    del pieces
    train_parts, valid_parts = [], []
    for w in workers:
        mine = [f for f, o in zip(trains, owner, strict=True) if o == w]
        train_parts.append(_encoded(client, w, mine, table, vocab))
        valid_parts.append(_encoded(client, w, valids, table, vocab))
    del trains, valids  # the frames on the workers go once their matrices are made
    wait([f for part in (*train_parts, *valid_parts) for f in part])
    encode_seconds = time.perf_counter() - started - split_seconds

    params = lightgbm_params(config, threads=1)
    threads = client.nthreads()
    links = network(client, workers, config.dask_time_out_minutes)
    fit_started = time.perf_counter()
    fits = [
        client.submit(
            fit_part,
            *train_parts[i],
            *valid_parts[i],
            {**params, "num_threads": threads[w], **links[w]},
            config.num_boost_round,
            config.early_stopping_rounds,
            features,
            table.categorical_columns,
            workers=[w],
            pure=False,
        )
        for i, w in enumerate(workers)
    ]
    results = client.gather(fits)  # every rank ends at the same round: the same valid rows, the same AUC
    model_text, best, valid_auc = results[0]
    trained_on = len(workers)
    log.info(
        "lightgbm data-parallel on %d workers: split %.1f s, encode %.1f s, fit %.1f s (best round %d)",
        trained_on,
        split_seconds,
        encode_seconds,
        time.perf_counter() - fit_started,
        best,
    )
    return TrainedModel(
        model=TabularClassifier(model_text, features, vocab),
        best_iteration=best,
        valid_auc=valid_auc,
        engine=f"lightgbm on dask ({trained_on} workers)",
        fit_seconds=time.perf_counter() - started,
        split_sizes=sizes,
        params=params,
        split=record,
    )

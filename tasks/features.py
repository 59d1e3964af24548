"""Features: the config's feature spec over the validated tables, in Polars (lazy), point in time.

Every feature of a row uses only what was known at that row's prediction time
(event time + offset): as-of joins take the latest joined row known at or
before it, and windowed aggregates and previous-event lookups take values
whose `known_at` is strictly before it.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from fusion.errors import FeatureError
from fusion.settings import FeatureSpec, PredictionTimeConfig, RollingAggregate, TargetConfig
from tasks import kernels

ROW = "_row"
PRED_TIME = "_pred_time"


@dataclass(frozen=True)
class FeatureSet:
    dataset: str
    batch_id: str
    path: str
    rows: int
    feature_columns: list[str]
    categorical_columns: list[str]
    target: str
    event_time: str
    spec_version: int


def _sql(expr: str, name: str) -> pl.Expr:
    try:
        return pl.sql_expr(expr).alias(name)
    except Exception as exc:
        raise FeatureError(f"feature {name!r}: cannot parse SQL expression {expr!r}: {exc}") from exc


def with_derived(primary: pl.LazyFrame, spec: FeatureSpec, prediction: PredictionTimeConfig) -> pl.LazyFrame:
    """Derived columns in order, a row index and the prediction time."""
    frame = primary.with_row_index(ROW)
    for name, expr in spec.derived.items():
        frame = frame.with_columns(_sql(expr, name))
    try:
        schema = frame.collect_schema()
    except Exception as exc:
        raise FeatureError(f"derived columns do not fit the primary table: {exc}") from exc
    if spec.event_time not in schema:
        raise FeatureError(f"event_time column {spec.event_time!r} is neither in the table nor derived")
    if not isinstance(schema[spec.event_time], pl.Datetime):
        raise FeatureError(f"event_time column {spec.event_time!r} is {schema[spec.event_time]}, not a datetime")
    return frame.with_columns(
        (pl.col(spec.event_time) + pl.duration(minutes=prediction.offset_minutes)).alias(PRED_TIME)
    )


def calendar_features(spec: FeatureSpec) -> list[pl.Expr]:
    local = pl.col(spec.event_time).dt.convert_time_zone(spec.timezone)
    parts = {
        "hour": local.dt.hour(),
        "minute_of_day": local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute().cast(pl.Int32),
        "weekday": local.dt.weekday(),
        "month": local.dt.month(),
        "day_of_year": local.dt.ordinal_day(),
    }
    return [parts[p].cast(pl.Int32).alias(f"cal_{p}") for p in spec.calendar]


def cross_features(spec: FeatureSpec) -> list[pl.Expr]:
    """Each cross: the stable hash of its columns' values (tasks/kernels.py), as a category string.

    A decimal string rather than UInt64 so that the model's category vocabulary, MLflow's schema and
    JSON clients (whose numbers are doubles) all carry it exactly.
    """
    return [
        pl.struct(cross.columns)
        .map_batches(lambda s: kernels.cross_hash(s.struct.unnest().get_columns()), return_dtype=pl.UInt64)
        .cast(pl.String)
        .alias(cross.name)
        for cross in spec.crosses
    ]


# Every join_asof below has both sides sorted by time explicitly; Polars cannot verify it
# when `by` groups are given, so its check is turned off instead of warning each call.


def _queries(base: pl.LazyFrame, keys: dict[str, str]) -> pl.LazyFrame:
    """Rows that ask: (row, group keys renamed, prediction time), sorted by time for join_asof."""
    return (
        base.select(ROW, PRED_TIME, *[pl.col(src).alias(dst) for src, dst in keys.items()])
        .drop_nulls([PRED_TIME, *keys.values()])
        .sort(PRED_TIME)
    )


def asof_features(
    base: pl.LazyFrame, tables: dict[str, pl.LazyFrame], spec: FeatureSpec, keep_time: bool = False
) -> list[pl.LazyFrame]:
    """Per as-of join, the latest right row at or before each base row's prediction time (within the
    tolerance), keyed by ROW; `keep_time` adds that row's time as `_t` (online features need it)."""
    out = []
    for join in spec.asof:
        right = (
            tables[join.table]
            .select(
                pl.col(join.right_on).alias("_key"),
                pl.col(join.right_time).alias("_t"),
                *[pl.col(c).alias(f"{join.prefix}{c}") for c in join.columns],
            )
            .drop_nulls(["_key", "_t"])
            .sort("_t")
        )
        tolerance = dt.timedelta(minutes=join.tolerance_minutes) if join.tolerance_minutes else None
        joined = _queries(base, {join.left_on: "_key"}).join_asof(
            right,
            check_sortedness=False,
            left_on=PRED_TIME,
            right_on="_t",
            by="_key",
            strategy="backward",
            tolerance=tolerance,
        )
        out.append(joined.select(ROW, *[f"{join.prefix}{c}" for c in join.columns], *(["_t"] if keep_time else [])))
    return out


def lookup_features(base: pl.LazyFrame, tables: dict[str, pl.LazyFrame], spec: FeatureSpec) -> list[pl.LazyFrame]:
    """Static attributes by key; each part has one row per base row, in base order."""
    out = []
    for join in spec.lookups:
        right = (
            tables[join.table]
            .select(pl.col(join.right_on).alias("_key"), *[pl.col(c).alias(n) for c, n in join.columns.items()])
            .drop_nulls("_key")
            .unique("_key", keep="first", maintain_order=True)
        )
        left = base.select(pl.col(join.left_on).alias("_key"))
        out.append(left.join(right, on="_key", how="left", maintain_order="left").select(*join.columns.values()))
    return out


def rolling_names(agg: RollingAggregate) -> list[str]:
    return [f"{agg.name}_{a}_{w}m" for w in agg.windows_minutes for a in agg.aggs]


def rolling_inputs(base: pl.LazyFrame, spec: FeatureSpec) -> list[pl.LazyFrame]:
    """Per aggregate spec, the kernel's inputs in base row order: dense group id (null when a key is
    null), known_at and prediction time as Int64 microseconds since the epoch (UTC), value as Float64."""
    return [rolling_input(base, agg) for agg in spec.rolling]


def rolling_input(base: pl.LazyFrame, agg: RollingAggregate, keep_keys: bool = False) -> pl.LazyFrame:
    """One spec's kernel inputs (see rolling_inputs); `keep_keys` adds the group key columns."""
    keys = [pl.col(b) for b in agg.by]
    known_at = _sql(agg.known_at, "_t")
    try:
        known_type = base.select(known_at).collect_schema()["_t"]
    except pl.exceptions.PolarsError as exc:
        raise FeatureError(f"rolling aggregate {agg.name!r}: known_at does not fit the table: {exc}") from exc
    if not isinstance(known_type, pl.Datetime):
        raise FeatureError(f"rolling aggregate {agg.name!r}: known_at is {known_type}, not a datetime")
    return base.select(
        pl.when(pl.all_horizontal(k.is_not_null() for k in keys))
        .then(pl.struct(keys).rank("dense").cast(pl.Int64))
        .alias("_g"),
        known_at.dt.epoch("us"),
        _sql(agg.value, "_v").cast(pl.Float64),
        pl.col(PRED_TIME).dt.epoch("us").alias("_a"),
        *(keys if keep_keys else []),
    )


def rolling_features(inputs: list[pl.DataFrame], spec: FeatureSpec) -> list[pl.DataFrame]:
    """Per-group sum/count/mean/max over values known in [T - window, T), T = prediction time.

    One kernel call per aggregate spec for all its windows (tasks/kernels.py: Rust when built, else
    the pure-Polars twin), on the collected `rolling_inputs`. Rows with a null group key neither count
    nor ask. Each part is aligned with the base rows.
    """

    # The Rust kernel releases the GIL and has serial stretches (gathering rows, one-window sweeps):
    # two specs at a time keep both cores busy.
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(rolling_aggregate, spec.rolling, inputs))


def rolling_aggregate(agg: RollingAggregate, frame: pl.DataFrame) -> pl.DataFrame:
    """One spec's kernel call on its inputs (`_g`, `_t`, `_v`, `_a`), as named feature columns."""
    windows = [w * 60_000_000 for w in agg.windows_minutes]
    result = kernels.window_aggregate(frame["_g"], frame["_t"], frame["_v"], frame["_a"], windows)
    columns: list[pl.Series] = []
    for minutes, w in zip(agg.windows_minutes, windows, strict=True):
        for a in agg.aggs:
            column = result[f"{a}_{w}"]
            columns.append((column.cast(pl.Float64) if a == "count" else column).alias(f"{agg.name}_{a}_{minutes}m"))
    return pl.DataFrame(columns)


def previous_features(
    base: pl.LazyFrame, spec: FeatureSpec, queries: pl.LazyFrame | None = None, keep_time: bool = False
) -> list[pl.LazyFrame]:
    """Values of the group's latest event known strictly before T, and the minutes since it.

    Events are the base rows; the rows that ask are `queries` (default: the base rows too).
    `keep_time` adds the event's known_at as `_t`."""
    out = []
    for prev in spec.previous:
        keys = {b: f"_by{i}" for i, b in enumerate(prev.by)}
        by = list(keys.values())
        events = (
            base.select(
                *[pl.col(src).alias(dst) for src, dst in keys.items()],
                _sql(prev.known_at, "_t"),
                *[pl.col(c).alias(f"{prev.name}_{c}") for c in prev.columns],
            )
            .drop_nulls([*by, "_t"])
            .sort([*by, "_t", *[f"{prev.name}_{c}" for c in prev.columns]], nulls_last=True)
            .unique([*by, "_t"], keep="last", maintain_order=True)
            .sort("_t")
        )
        joined = _queries(base if queries is None else queries, keys).join_asof(
            events, check_sortedness=False, left_on=PRED_TIME, right_on="_t", by=by, allow_exact_matches=False
        )
        since = ((pl.col(PRED_TIME) - pl.col("_t")).dt.total_seconds() / 60.0).alias(f"{prev.name}_minutes_since")
        out.append(
            joined.select(ROW, *[f"{prev.name}_{c}" for c in prev.columns], since, *(["_t"] if keep_time else []))
        )
    return out


def build_features(
    tables: dict[str, pl.DataFrame],
    primary: str,
    spec: FeatureSpec,
    prediction: PredictionTimeConfig,
    target: TargetConfig | None,
) -> pl.DataFrame:
    """Feature table: id columns, event time, every feature, and the target when given."""
    lazy = {name: frame.lazy() for name, frame in tables.items()}
    base = with_derived(lazy[primary], spec, prediction)
    schema = base.collect_schema()
    needed = [*spec.numeric, *spec.categorical, *spec.id_columns, *[c for x in spec.crosses for c in x.columns]]
    missing = [c for c in needed if c not in schema]
    if missing:
        raise FeatureError(f"feature spec names column(s) {missing} that table {primary!r} does not have")
    own = own_features(spec)
    names = feature_names(spec)
    head = [c for c in dict.fromkeys([*spec.id_columns, spec.event_time]) if c not in names]
    extra = [_sql(target.expr, target.name).cast(pl.Int8)] if target else []
    rolling = rolling_inputs(base, spec)
    lookups = lookup_features(base, lazy, spec)
    subsets = [*asof_features(base, lazy, spec), *previous_features(base, spec)]  # some rows, keyed by ROW
    rows = base.select(ROW, *[pl.col(c) for c in head], *own, *extra)
    try:
        # One plan for every part: Polars runs them in parallel and computes the shared base once.
        first, *collected = pl.collect_all([rows, *lookups, *subsets, *rolling])
        aligned = collected[: len(lookups)]
        keyed = collected[len(lookups) : len(lookups) + len(subsets)]
        aligned += rolling_features(collected[len(lookups) + len(subsets) :], spec)
        # parts with one row per base row, in base order, are put side by side; the others joined by ROW
        frame = pl.concat([first, *aligned], how="horizontal")
        for part in keyed:
            frame = frame.join(part, on=ROW, how="left", maintain_order="left")
    except pl.exceptions.PolarsError as exc:
        raise FeatureError(f"feature spec does not fit the data: {exc}") from exc
    return frame.select(*head, *names, *([target.name] if target else []))


def own_features(spec: FeatureSpec) -> list[pl.Expr]:
    """Features computed from the row alone (no other rows or tables): the same at training and serving."""
    return [
        *calendar_features(spec),
        *[pl.col(c) for c in spec.numeric],
        *[pl.col(c) for c in spec.categorical],
        *cross_features(spec),
    ]


def feature_names(spec: FeatureSpec) -> list[str]:
    """Names of the model's input columns, in table order, from the spec alone."""
    return [
        *[f"cal_{p}" for p in spec.calendar],
        *spec.numeric,
        *spec.categorical,
        *[x.name for x in spec.crosses],
        *[f"{j.prefix}{c}" for j in spec.asof for c in j.columns],
        *[n for j in spec.lookups for n in j.columns.values()],
        *[n for agg in spec.rolling for n in rolling_names(agg)],
        *[n for p in spec.previous for n in (*[f"{p.name}_{c}" for c in p.columns], f"{p.name}_minutes_since")],
    ]


def categorical_names(frame: pl.DataFrame, names: list[str]) -> list[str]:
    return [c for c in names if frame.schema[c] in (pl.String, pl.Categorical)]

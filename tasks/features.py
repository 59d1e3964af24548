"""Features: the config's feature spec over the validated tables, in Polars and the kernels of
tasks/kernels.py, point in time.

Every feature of a row uses only what was known at that row's prediction time
(event time + offset): as-of joins take the latest joined row known at or
before it, and windowed aggregates and previous-event lookups take values
whose `known_at` is strictly before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from fusion.core.errors import FeatureError
from fusion.core.settings import FeatureSpec, PredictionTimeConfig, RollingAggregate, TargetConfig
from tasks import kernels

PRED_TIME = "_pred_time"
# The group of `by: []` rolling and previous entries: one constant key, so the whole table is one group.
WHOLE_TABLE = "_whole_table"


@dataclass(frozen=True)
class FeatureSet:
    dataset: str
    batch_id: str
    path: str
    rows: int
    feature_columns: list[str]
    categorical_columns: list[str]
    target: str
    spec_version: int


def _sql(expr: str, name: str) -> pl.Expr:
    try:
        return pl.sql_expr(expr).alias(name)
    except Exception as exc:
        raise FeatureError(f"feature {name!r}: cannot parse SQL expression {expr!r}: {exc}") from exc


def instant(expr: pl.Expr, timezone: str) -> pl.Expr:
    """A date as the instant its day begins in `timezone` (UTC); a datetime as it is."""
    return expr.cast(pl.Datetime("us")).dt.replace_time_zone(timezone).dt.convert_time_zone("UTC")


def time_expr(expr: pl.Expr, dtype: pl.DataType, timezone: str) -> pl.Expr | None:
    """`expr` as a point in time: datetimes as they are, dates as the start of their day in `timezone`;
    None for any other type."""
    if isinstance(dtype, pl.Datetime):
        return expr
    if dtype == pl.Date:
        return instant(expr, timezone)
    return None


def group_columns(by: Sequence[str]) -> list[str]:
    """The key columns of a rolling or previous entry: `by`, or the whole table's constant key."""
    return list(by) if by else [WHOLE_TABLE]


def with_derived(primary: pl.LazyFrame, spec: FeatureSpec, prediction: PredictionTimeConfig) -> pl.LazyFrame:
    """Derived columns in order, the event time as an instant (a date: the start of its day in the
    spec's timezone) and the prediction time; without an event time, no prediction time."""
    frame = primary
    for name, expr in spec.derived.items():
        frame = frame.with_columns(_sql(expr, name))
    if any(not r.by for r in spec.rolling) or any(not p.by for p in spec.previous):
        frame = frame.with_columns(pl.lit(0, pl.Int8).alias(WHOLE_TABLE))
    if spec.event_time is None:
        return frame
    try:
        schema = frame.collect_schema()
    except Exception as exc:
        raise FeatureError(f"derived columns do not fit the primary table: {exc}") from exc
    if spec.event_time not in schema:
        raise FeatureError(f"event_time column {spec.event_time!r} is neither in the table nor derived")
    event = time_expr(pl.col(spec.event_time), schema[spec.event_time], spec.timezone)
    if event is None:
        raise FeatureError(
            f"event_time column {spec.event_time!r} is {schema[spec.event_time]}, not a datetime or a date"
        )
    return frame.with_columns(event.alias(spec.event_time)).with_columns(
        (pl.col(spec.event_time) + pl.duration(minutes=prediction.offset_minutes)).alias(PRED_TIME)
    )


def calendar_features(spec: FeatureSpec) -> list[pl.Expr]:
    if not spec.calendar or spec.event_time is None:
        return []
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


def _require_columns(table: pl.DataFrame, name: str, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise FeatureError(f"{what}: table {name!r} has no column(s) {missing}")


def _gather(table: pl.DataFrame, index: pl.Series, columns: dict[str, str]) -> pl.DataFrame:
    """The right rows an index points at (null where it is null), as `columns` (name -> source column:
    one source may feed several names). A small table is made contiguous first: gathering from chunks
    is slower, and copying a table much smaller than the result costs next to nothing (a large one is
    gathered from its chunks). Measured in docs/BENCHMARKS.md, "Feature step: where the time goes"."""
    picked = table.lazy().select(pl.col(source).alias(name) for name, source in columns.items()).collect()
    return (picked.rechunk() if 4 * picked.height <= index.len() else picked)[index]


def asof_features(
    base: pl.DataFrame, tables: dict[str, pl.DataFrame], spec: FeatureSpec, keep_time: bool = False
) -> list[pl.DataFrame]:
    """Per as-of join, the latest right row at or before each base row's prediction time (within the
    tolerance), aligned with the base rows; `keep_time` adds that row's time as `_t` (online features
    need it). The index comes from tasks/kernels.py (Rust or its twin); the columns are gathered by it."""
    out = []
    for join in spec.asof:
        right = tables[join.table]
        needed = [join.right_on, join.right_time, *join.columns]
        _require_columns(right, join.table, needed, f"as-of join {join.prefix}*")
        tolerance = join.tolerance_minutes * 60_000_000 if join.tolerance_minutes else None
        index = kernels.asof_index(
            base[join.left_on],
            base[PRED_TIME],
            right[join.right_on],
            as_instants(right[join.right_time], spec.timezone, f"as-of join {join.prefix}* right_time"),
            tolerance=tolerance,
        )
        columns = {f"{join.prefix}{c}": c for c in join.columns} | ({"_t": join.right_time} if keep_time else {})
        out.append(_gather(right, index, columns))
    return out


def lookup_features(base: pl.DataFrame, tables: dict[str, pl.DataFrame], spec: FeatureSpec) -> list[pl.DataFrame]:
    """Static attributes by key (the first right row of a key), aligned with the base rows."""
    out = []
    for join in spec.lookups:
        right = tables[join.table]
        _require_columns(right, join.table, [join.right_on, *join.columns], f"lookup {list(join.columns.values())}")
        index = kernels.lookup_index(base[join.left_on], right[join.right_on])
        out.append(_gather(right, index, {name: source for source, name in join.columns.items()}))
    return out


def as_instants(values: pl.Series, timezone: str, what: str) -> pl.Series:
    """A datetime or date series as instants (dates: the start of their day in `timezone`)."""
    expr = time_expr(pl.col(values.name), values.dtype, timezone)
    if expr is None:
        raise FeatureError(f"{what} is {values.dtype}, not a datetime or a date")
    return values.to_frame().select(expr).to_series()


# One microsecond, the time unit of the kernels: with `closed: both`, an event known at t is asked
# about as if known at t - 1 µs, so that "known before T" includes T and a window [T - w, T) becomes
# (T - w, T].
_BOTH_SHIFT = pl.duration(microseconds=1)


def rolling_names(agg: RollingAggregate) -> list[str]:
    return [f"{agg.name}_{a}_{w}m" for w in agg.windows_minutes for a in agg.aggs]


@dataclass(frozen=True)
class RollingEvents:
    """One aggregate spec's events over the base rows: group keys, the time each value became known, the value."""

    keys: list[pl.Series]
    known_at: pl.Series
    value: pl.Series


def rolling_events(base: pl.DataFrame, agg: RollingAggregate, timezone: str) -> RollingEvents:
    """The spec's events (known_at and value are SQL over the base columns: plain column names cost nothing).
    A date known_at is the start of that day in `timezone`; with `closed: both` the times are moved 1 µs
    earlier, so that the kernels' [T - w, T) counts what is known at T."""
    try:
        frame = base.lazy().select(_sql(agg.known_at, "_t"), _sql(agg.value, "_v")).collect()
    except pl.exceptions.PolarsError as exc:
        raise FeatureError(f"rolling aggregate {agg.name!r}: known_at or value does not fit the table: {exc}") from exc
    if not frame.schema["_v"].is_numeric():
        raise FeatureError(f"rolling aggregate {agg.name!r}: value is {frame.schema['_v']}, not a number")
    known_at = as_instants(frame["_t"], timezone, f"rolling aggregate {agg.name!r}: known_at")
    if agg.closed == "both":
        known_at = known_at.to_frame().select(pl.col("_t") - _BOTH_SHIFT).to_series()
    return RollingEvents([base[b] for b in group_columns(agg.by)], known_at, frame["_v"])


def rolling_aggregates(
    aggs: Sequence[RollingAggregate], events: Sequence[RollingEvents], at: pl.Series
) -> list[pl.DataFrame]:
    """Per spec, its aggregates (of count/sum/mean/max) over values known in [T - window, T), T = `at` of
    each row, as named feature columns aligned with the rows, all Float64 (counts too). One kernel call
    for every spec and window (tasks/kernels.py: Rust when built, where specs with the same key columns
    share their group ids and each group's queries sorted by time; else the pure-Polars twin). Rows with
    a null group key neither count nor ask; a null or NaN value is no event."""
    specs = [
        kernels.WindowSpec(e.keys, e.known_at, e.value, [w * 60_000_000 for w in agg.windows_minutes], agg.aggs)
        for agg, e in zip(aggs, events, strict=True)
    ]
    out = []
    for agg, spec, result in zip(aggs, specs, kernels.window_aggregates(specs, at), strict=True):
        columns: list[pl.Series] = []
        for minutes, w in zip(agg.windows_minutes, spec.windows, strict=True):
            for a in agg.aggs:
                columns.append(result[f"{a}_{w}"].alias(f"{agg.name}_{a}_{minutes}m"))
        out.append(pl.DataFrame(columns))
    return out


def rolling_features(base: pl.DataFrame, spec: FeatureSpec) -> list[pl.DataFrame]:
    """Every aggregate spec over the base rows, each row asking at its prediction time."""
    if not spec.rolling:
        return []
    events = [rolling_events(base, agg, spec.timezone) for agg in spec.rolling]
    return rolling_aggregates(spec.rolling, events, base[PRED_TIME])


def previous_features(
    base: pl.DataFrame, spec: FeatureSpec, queries: pl.DataFrame | None = None, keep_time: bool = False
) -> list[pl.DataFrame]:
    """Values of the group's latest event known strictly before T, and the minutes since it.

    Events are the base rows; the rows that ask are `queries` (default: the base rows too), and the
    result is aligned with them. Events of a group known at the same time: the one with the greatest
    values (in column order, nulls greatest), so the answer does not depend on the row order.
    `keep_time` adds the event's known_at as `_t`."""
    asking = base if queries is None else queries
    out = []
    for prev in spec.previous:
        try:
            events = base.lazy().select(_sql(prev.known_at, "_t"), *prev.columns).collect()
        except pl.exceptions.PolarsError as exc:
            raise FeatureError(f"previous {prev.name!r}: known_at or columns do not fit the table: {exc}") from exc
        known_at = as_instants(events["_t"], spec.timezone, f"previous {prev.name!r}: known_at")
        events = events.with_columns(known_at)
        by = group_columns(prev.by)
        index = kernels.asof_index(
            [asking[b] for b in by],
            asking[PRED_TIME],
            [base[b] for b in by],
            events["_t"],
            # left: known strictly before T; both: at T too
            strict=prev.closed == "left",
            order_by=[events[c] for c in prev.columns],
        )
        found = _gather(events, index, {f"{prev.name}_{c}": c for c in prev.columns} | {"_t": "_t"})
        since = ((asking[PRED_TIME] - found["_t"]).dt.total_seconds() / 60.0).alias(f"{prev.name}_minutes_since")
        out.append(found.with_columns(since).select(pl.exclude("_t"), *(["_t"] if keep_time else [])))
    return out


def build_features(
    tables: dict[str, pl.DataFrame],
    primary: str,
    spec: FeatureSpec,
    prediction: PredictionTimeConfig,
    target: TargetConfig | None,
) -> pl.DataFrame:
    """Feature table: id columns, event time, every feature, and the target when given."""
    base_plan = with_derived(tables[primary].lazy(), spec, prediction)
    schema = base_plan.collect_schema()
    needed = [*spec.numeric, *spec.categorical, *spec.id_columns, *[c for x in spec.crosses for c in x.columns]]
    missing = [c for c in needed if c not in schema]
    if missing:
        raise FeatureError(f"feature spec names column(s) {missing} that table {primary!r} does not have")
    names = feature_names(spec)
    head = [
        c for c in dict.fromkeys([*spec.id_columns, *([spec.event_time] if spec.event_time else [])]) if c not in names
    ]
    extra = [_sql(target.expr, target.name).cast(pl.Int8)] if target else []
    try:
        # The derived columns once; every part reads them. Row-aligned parts are put side by side.
        base = base_plan.collect()
        # lazy: an eager select would first copy every chunked column of the base into one chunk
        own = base.lazy().select(*[pl.col(c) for c in head], *own_features(spec), *extra).collect()
        parts = [own, *rolling_features(base, spec), *previous_features(base, spec)]
        # The joins need only the prediction time and their keys: the other derived columns go now,
        # so that their memory serves the joined columns.
        keys = dict.fromkeys([*(j.left_on for j in spec.asof), *(j.left_on for j in spec.lookups)])
        timed = [PRED_TIME] if PRED_TIME in base.columns else []
        base = base.lazy().select(*timed, *keys).collect()
        parts += [*asof_features(base, tables, spec), *lookup_features(base, tables, spec)]
    except pl.exceptions.PolarsError as exc:
        raise FeatureError(f"feature spec does not fit the data: {exc}") from exc
    columns = {c.name: c for part in parts for c in part.get_columns()}
    return pl.DataFrame([columns[c] for c in [*head, *names, *([target.name] if target else [])]])


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

"""Online features: the per-group state serving needs, computed by the training feature code.

At the end of a run, `online_state` computes for every stateful part of the feature spec (as-of
joins, lookups, windowed aggregates, previous events) each group's values as of the batch's latest
prediction time (`as_of`), by running the same functions as training (tasks/features.py) with one
probe row per group at `as_of`. At request time `request_features` computes the row-local features
with the same expressions as training and takes each stateful part's values by group key from a
store (tasks/online_store.py: Redis, or the lake snapshot in memory).

Exactness: a request whose prediction time is `as_of` gets the features training would give a new
row at that time (tests/code/test_online.py). For a later request, the minutes since a previous
event and the as-of tolerance are recomputed at the request's time, and a previous event is the
group's latest of the batch once that is known at the request's time (a daily series' last day,
known when the day ends, after the batch's last prediction time); windowed aggregates stay as of
`as_of` until the next run materializes them again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from fusion.core.errors import FeatureError
from fusion.core.settings import FeatureSpec, PredictionTimeConfig
from tasks.features import (
    PRED_TIME,
    RollingEvents,
    asof_features,
    feature_names,
    group_columns,
    lookup_features,
    own_features,
    previous_features,
    rolling_aggregates,
    rolling_events,
    rolling_names,
    with_derived,
)

KEY = "_key"
TIME = "_t"
LATEST = "_latest_"  # previous events: the group's latest event of the batch, beside the one as of as_of
KEY_SEPARATOR = "\x1f"  # ASCII unit separator between the values of a composite group key


@dataclass(frozen=True)
class OnlinePart:
    """One stateful part of the spec: the group key columns of the request row and what it gives."""

    name: str
    kind: Literal["asof", "lookup", "rolling", "previous"]
    keys: list[str]
    columns: list[str]  # feature columns, in feature_names order
    timed: bool = False  # the state carries the time of the row it came from (`_t`, µs)
    tolerance_us: int | None = None  # as-of: the joined row must be at most this old
    zero_when_missing: list[str] = field(default_factory=list)  # counts and sums of a group with no events
    inclusive: bool = False  # previous with `closed: both`: an event known at the request's time counts


def online_parts(spec: FeatureSpec) -> list[OnlinePart]:
    parts = []
    for i, join in enumerate(spec.asof):
        tolerance = join.tolerance_minutes * 60_000_000 if join.tolerance_minutes else None
        columns = [f"{join.prefix}{c}" for c in join.columns]
        parts.append(OnlinePart(f"asof{i}_{join.table}", "asof", [join.left_on], columns, True, tolerance))
    for i, lookup in enumerate(spec.lookups):
        parts.append(OnlinePart(f"lookup{i}_{lookup.table}", "lookup", [lookup.left_on], list(lookup.columns.values())))
    for agg in spec.rolling:
        zero = [f"{agg.name}_{a}_{w}m" for w in agg.windows_minutes for a in agg.aggs if a in ("count", "sum")]
        parts.append(
            OnlinePart(
                f"rolling_{agg.name}", "rolling", group_columns(agg.by), rolling_names(agg), zero_when_missing=zero
            )
        )
    for prev in spec.previous:
        parts.append(
            OnlinePart(
                f"previous_{prev.name}",
                "previous",
                group_columns(prev.by),
                [f"{prev.name}_{c}" for c in prev.columns],
                timed=True,
                inclusive=prev.closed == "both",
            )
        )
    return parts


def group_key(columns: Sequence[str]) -> pl.Expr:
    """The store key of a row's group: its key values as strings, joined; null when any is null."""
    values = [pl.col(c).cast(pl.String) for c in columns]
    return (
        pl.when(pl.all_horizontal(v.is_not_null() for v in values))
        .then(pl.concat_str(values, separator=KEY_SEPARATOR))
        .alias(KEY)
    )


@dataclass(frozen=True)
class OnlineState:
    as_of: dt.datetime
    frames: dict[str, pl.DataFrame]  # part name -> `_key`, the part's columns, `_t` when timed


def _probe(keys: pl.DataFrame, as_of: dt.datetime) -> pl.DataFrame:
    """One asking row per group at `as_of`, shaped like the base rows the feature code reads."""
    return keys.with_columns(pl.lit(as_of).dt.cast_time_unit("us").alias(PRED_TIME))


def _with_probes(events: RollingEvents, groups: pl.DataFrame) -> RollingEvents:
    """The events followed by one row per group that is no event (null time and value)."""

    def nulls(like: pl.Series) -> pl.Series:
        return pl.repeat(None, groups.height, dtype=like.dtype, eager=True)

    return RollingEvents(
        [pl.concat([k, groups[k.name]]) for k in events.keys],
        pl.concat([events.known_at, nulls(events.known_at)]),
        pl.concat([events.value, nulls(events.value)]),
    )


def online_state(
    tables: dict[str, pl.DataFrame], primary: str, spec: FeatureSpec, prediction: PredictionTimeConfig
) -> OnlineState:
    """Every stateful part's values per group as of the latest prediction time in the batch."""
    base = with_derived(tables[primary].lazy(), spec, prediction).collect()  # derived once, read by every part
    # Without time only lookups are stateful, and they do not depend on when they are asked.
    as_of = base[PRED_TIME].max() if spec.event_time else dt.datetime.now(dt.UTC).replace(microsecond=0)
    if not isinstance(as_of, dt.datetime):
        raise FeatureError("no row has a prediction time: nothing to materialize")
    frames: dict[str, pl.DataFrame] = {}
    parts = online_parts(spec)

    def of_kind(kind: str) -> list[OnlinePart]:
        return [p for p in parts if p.kind == kind]

    def found(part: OnlinePart, probe: pl.DataFrame, values: pl.DataFrame) -> pl.DataFrame:
        """The probe rows that found a state (timed parts: a row with a time), keyed for the store."""
        joined = pl.concat([probe, values], how="horizontal")
        if part.timed:
            joined = joined.drop_nulls(TIME)
        stored = [*part.columns, pl.col(TIME).dt.epoch("us")] if part.timed else part.columns
        return joined.lazy().select(group_key(part.keys), *stored).collect()

    for part, join in zip(of_kind("asof"), spec.asof, strict=True):
        keys = tables[join.table].lazy().select(pl.col(join.right_on).alias(join.left_on)).drop_nulls().unique()
        probe = _probe(keys.collect(), as_of)
        # The latest row regardless of the tolerance: `resolve` applies it at each request's time.
        latest = join.model_copy(update={"tolerance_minutes": None})
        (values,) = asof_features(probe, tables, spec.model_copy(update={"asof": [latest]}), keep_time=True)
        frames[part.name] = found(part, probe, values)
    for part, lookup in zip(of_kind("lookup"), spec.lookups, strict=True):
        keys = tables[lookup.table].lazy().select(pl.col(lookup.right_on).alias(lookup.left_on)).drop_nulls()
        probe = keys.unique().collect()
        (values,) = lookup_features(probe, tables, spec.model_copy(update={"lookups": [lookup]}))
        frames[part.name] = found(part, probe, values)
    for part, agg in zip(of_kind("rolling"), spec.rolling, strict=True):
        events = rolling_events(base, agg, spec.timezone)
        groups = pl.DataFrame(events.keys).drop_nulls().unique(maintain_order=True)
        # the base rows are events that do not ask (no `at`); one row per group asks at as_of, no event
        asking = pl.repeat(as_of, groups.height, dtype=base.schema[PRED_TIME], eager=True)
        ask = pl.concat([pl.repeat(None, base.height, dtype=asking.dtype, eager=True), asking])
        both = _with_probes(events, groups)
        (values,) = rolling_aggregates([agg], [both], ask)
        frames[part.name] = pl.concat([groups, values.tail(groups.height)], how="horizontal").select(
            group_key(part.keys), *part.columns
        )
    for part, prev in zip(of_kind("previous"), spec.previous, strict=True):
        groups = base.lazy().select(group_columns(prev.by)).drop_nulls().unique().collect()
        probe = _probe(groups, as_of)
        one = spec.model_copy(update={"previous": [prev]})
        (values,) = previous_features(base, one, queries=probe, keep_time=True)
        # and each group's latest event of the whole batch, whenever it becomes known: a request made
        # once it is known gets it (a daily series' last day, known after the last prediction time)
        (last,) = previous_features(
            base,
            spec.model_copy(update={"previous": [prev.model_copy(update={"closed": "both"})]}),
            queries=_probe(groups, dt.datetime.max.replace(tzinfo=dt.UTC)),
            keep_time=True,
        )
        last = last.select(pl.col(c).alias(f"{LATEST}{c}") for c in [*part.columns, TIME])
        joined = pl.concat([probe, values, last], how="horizontal").filter(pl.col(f"{LATEST}{TIME}").is_not_null())
        frames[part.name] = (
            joined.lazy()
            .select(
                group_key(part.keys),
                *part.columns,
                pl.col(TIME).dt.epoch("us"),
                *[f"{LATEST}{c}" for c in part.columns],
                pl.col(f"{LATEST}{TIME}").dt.epoch("us"),
            )
            .collect()
        )
    return OnlineState(as_of=as_of, frames=frames)


# (part name, group key) -> the part's stored values ([*columns, _t when timed]), or None when absent
Fetch = Callable[[list[tuple[str, str]]], list[list[Any] | None]]


@dataclass(frozen=True)
class RequestFeatures:
    frame: pl.DataFrame  # the model's input columns, in feature_names order
    defaults: dict[str, int]  # part name -> rows whose group had no stored state (defaults used)


def request_features(
    records: pl.DataFrame, spec: FeatureSpec, prediction: PredictionTimeConfig, fetch: Fetch
) -> RequestFeatures:
    """Features of new rows (the primary table's columns): row-local ones by the training
    expressions, stateful ones from the store by group key, one `fetch` for all of them."""
    parts = online_parts(spec)
    base = with_derived(records.lazy(), spec, prediction)
    keys = [group_key(p.keys).alias(f"{KEY}{i}") for i, p in enumerate(parts)]
    try:
        # without an event time nothing is timed: every request is asked "now" (lookups only)
        asked = pl.col(PRED_TIME).dt.epoch("us") if spec.event_time else pl.lit(0, pl.Int64)
        rows = base.select(*own_features(spec), asked.alias("_a"), *keys).collect()
    except pl.exceptions.PolarsError as exc:
        raise FeatureError(f"records do not fit the feature spec: {exc}") from exc
    at: list[int | None] = rows["_a"].to_list()
    group_keys = [rows[f"{KEY}{i}"].to_list() for i in range(len(parts))]
    asks = [
        (p.name, k)
        for p, ks in zip(parts, group_keys, strict=True)
        for k, a in zip(ks, at, strict=True)
        if k is not None and a is not None
    ]
    answers = iter(fetch(asks) if asks else [])
    columns: dict[str, list[Any]] = {}
    defaults: dict[str, int] = {}
    for part, part_keys in zip(parts, group_keys, strict=True):
        outputs = part_outputs(part)
        values_by_column: list[list[Any]] = [[] for _ in outputs]
        missing = 0
        for key, a in zip(part_keys, at, strict=True):
            if key is None or a is None:  # training gives such rows nulls, not defaults
                values: list[Any] = [None] * len(outputs)
            else:
                stored = next(answers)
                if stored is None:
                    missing += 1
                    values = [0.0 if c in part.zero_when_missing else None for c in outputs]
                else:
                    values = resolve(part, stored, a)
            for column, value in zip(values_by_column, values, strict=True):
                column.append(value)
        defaults[part.name] = missing
        columns.update(zip(outputs, values_by_column, strict=True))
    frame = rows.drop("_a", *[f"{KEY}{i}" for i in range(len(parts))]).with_columns(
        pl.Series(name, values, strict=False) for name, values in columns.items()
    )
    return RequestFeatures(frame.select(feature_names(spec)), defaults)


def part_outputs(part: OnlinePart) -> list[str]:
    """The feature columns a part gives a request: its stored columns, and for a previous event
    the minutes since it (which depends on the request's time)."""
    if part.kind == "previous":
        name = part.name.removeprefix("previous_")
        return [*part.columns, f"{name}_minutes_since"]
    return part.columns


def resolve(part: OnlinePart, stored: list[Any], at_us: int) -> list[Any]:
    """A group's stored values as seen from a request at `at_us` (µs): an as-of row must be at or
    before it and within the tolerance; a previous event must be known before it (or at it, with
    `closed: both`): the batch's latest event when it is, else the event as of `as_of`."""
    if not part.timed:
        return stored
    if part.kind == "asof":
        *values, t = stored
        fresh = t <= at_us and (part.tolerance_us is None or at_us - t <= part.tolerance_us)
        return values if fresh else [None] * len(values)
    n = len(part.columns)
    as_of_event, latest_event = stored[: n + 1], stored[n + 1 :]
    for *values, t in (latest_event, as_of_event):
        if t is not None and (t < at_us or (part.inclusive and t == at_us)):
            return [*values, (at_us - t) / 60_000_000]
    return [None] * (n + 1)


def state_rows(part: OnlinePart, frame: pl.DataFrame) -> list[tuple[str, list[Any]]]:
    """(group key, stored values) of one part's state frame, in the layout `resolve` reads."""
    stored = [*part.columns, TIME] if part.timed else part.columns
    if part.kind == "previous":
        stored += [f"{LATEST}{c}" for c in [*part.columns, TIME]]
    return list(zip(frame[KEY].to_list(), frame.select(stored).rows(), strict=True))  # type: ignore[arg-type]

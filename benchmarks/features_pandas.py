"""The whole feature step for configs/flights.yaml written in pandas: the peer of `make bench-features`.

The straightforward pandas way, as a data team would write it: merge_asof for the weather and the
aircraft's previous leg, merge for the plane lookup, groupby().rolling(closed="left") over events and
queries for the windowed aggregates. It reads the spec (windows, keys, columns) from the config; only
the derived columns, which the config writes in Polars SQL, are translated by hand. The benchmark checks
that its output equals Fusion's before it times either, so both compute the same table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fusion.core.settings import DatasetConfig

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _column_word(value: str, j: int) -> int:
    word = 0
    for i, byte in enumerate(value.encode()):
        word ^= _splitmix64(((j + 1) << 40) | (i << 8) | byte)
    return word


def cross_hash_pandas(columns: list[pd.Series]) -> pd.Series:
    """rust_ext/src/hash.rs's definition: each distinct value's word in Python, mapped onto the rows, then
    XORed and mixed with numpy."""
    combined = np.zeros(len(columns[0]), dtype=np.uint64)
    missing = np.zeros(len(columns[0]), dtype=bool)
    for j, column in enumerate(columns):
        codes, distinct = pd.factorize(column)  # code -1 for a null
        words = np.array([_column_word(str(v), j) for v in distinct] + [0], dtype=np.uint64)
        missing |= codes < 0
        combined ^= words[codes]  # -1 picks the trailing 0
    out = pd.Series(_splitmix64_numpy(combined), index=columns[0].index, dtype="UInt64")
    out[missing] = pd.NA
    return out


def _splitmix64_numpy(x: np.ndarray) -> np.ndarray:
    """splitmix64 on a uint64 array (numpy's array arithmetic wraps, as the definition needs)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _minutes(values: pd.Series) -> pd.Series:
    return pd.to_timedelta(values, unit="m")


def derived_flights(frame: pd.DataFrame) -> pd.DataFrame:
    """configs/flights.yaml `derived`, by hand (Polars SQL there): GREATEST ignores nulls, CAST keeps them."""
    out = frame.copy()
    out["sched_dep"] = out["time_hour"] + _minutes(out["minute"])
    out["dep_known_at"] = out["sched_dep"] + _minutes(out["dep_delay"].clip(lower=0).fillna(0))
    out["arr_known_at"] = out["dep_known_at"] + _minutes(out["air_time"] + 60)
    out["dep_delayed"] = np.where(out["dep_delay"].isna(), np.nan, (out["dep_delay"] > 15).astype(float))
    out["cancelled"] = out["dep_time"].isna().astype(float)
    return out


def _rolling(base: pd.DataFrame, by: list[str], value: str, known_at: str, pred: pd.Series, windows: list[int]) -> Any:
    """Per-group aggregates over values known in [T - w, T): events and queries in one sorted frame."""
    group = base.groupby(by, sort=False, dropna=True).ngroup()  # -1 where a key is null
    ok_event = (group >= 0) & base[known_at].notna() & base[value].notna()
    ok_query = (group >= 0) & pred.notna()
    events = pd.DataFrame({"g": group[ok_event], "t": base.loc[ok_event, known_at], "v": base.loc[ok_event, value]})
    events["q"] = -1
    queries = pd.DataFrame({"g": group[ok_query], "t": pred[ok_query], "v": np.nan, "q": np.flatnonzero(ok_query)})
    both = pd.concat([events, queries], ignore_index=True).sort_values(["g", "t"], kind="stable")
    asks = both["q"].to_numpy() >= 0
    rows = both["q"].to_numpy()[asks]
    out: dict[tuple[str, int], np.ndarray] = {}
    for w in windows:
        rolling = both.groupby("g", sort=True).rolling(pd.Timedelta(minutes=w), on="t", closed="left")["v"]
        count = np.nan_to_num(rolling.count().to_numpy()[asks])  # NaN for an empty window
        total = rolling.sum().to_numpy()[asks]
        for agg, values in (
            ("count", count),
            ("sum", np.where(count > 0, total, 0.0)),
            ("mean", np.where(count > 0, total / np.maximum(count, 1), np.nan)),
            ("max", rolling.max().to_numpy()[asks]),
        ):
            column = np.full(len(base), np.nan)
            column[rows] = values
            out[(agg, w)] = column
    return out


def build_features_pandas(tables: dict[str, pd.DataFrame], dataset: DatasetConfig) -> pd.DataFrame:
    spec, offset = dataset.features, dataset.prediction_time.offset_minutes
    base = derived_flights(tables[dataset.source.primary]).reset_index(drop=True)
    event = base[spec.event_time]
    pred = event + pd.Timedelta(minutes=offset)
    columns: dict[str, Any] = {}  # the features, in Fusion's order
    local = event.dt.tz_convert(spec.timezone)
    calendar = {
        "hour": local.dt.hour,
        "minute_of_day": local.dt.hour * 60 + local.dt.minute,
        "weekday": local.dt.dayofweek + 1,
        "month": local.dt.month,
        "day_of_year": local.dt.dayofyear,
    }
    for part in spec.calendar:
        columns[f"cal_{part}"] = calendar[part].astype("int32")
    for c in [*spec.numeric, *spec.categorical]:
        columns[c] = base[c]
    for cross in spec.crosses:
        columns[cross.name] = cross_hash_pandas([base[c] for c in cross.columns]).astype("string")
    queries = pd.DataFrame({"_row": np.arange(len(base)), "_pred": pred})
    for join in spec.asof:
        right = tables[join.table][[join.right_on, join.right_time, *join.columns]].dropna(
            subset=[join.right_on, join.right_time]
        )
        right = right.rename(columns={join.right_on: "_key", join.right_time: "_t"}).sort_values("_t")
        left = queries.assign(_key=base[join.left_on]).dropna(subset=["_key", "_pred"]).sort_values("_pred")
        tolerance = pd.Timedelta(minutes=join.tolerance_minutes) if join.tolerance_minutes else None
        joined = pd.merge_asof(
            left, right, left_on="_pred", right_on="_t", by="_key", direction="backward", tolerance=tolerance
        ).set_index("_row")
        for c in join.columns:
            columns[f"{join.prefix}{c}"] = joined[c].reindex(queries["_row"]).to_numpy()
    for lookup in spec.lookups:
        right = tables[lookup.table].dropna(subset=[lookup.right_on]).drop_duplicates(lookup.right_on, keep="first")
        right = right.set_index(lookup.right_on)
        for c, name in lookup.columns.items():
            columns[name] = base[lookup.left_on].map(right[c])
    for agg in spec.rolling:
        aggregates = _rolling(base, agg.by, agg.value, agg.known_at, pred, agg.windows_minutes)
        for w in agg.windows_minutes:
            for a in agg.aggs:
                columns[f"{agg.name}_{a}_{w}m"] = aggregates[(a, w)]
    for prev in spec.previous:
        values = [f"{prev.name}_{c}" for c in prev.columns]
        events = base[[*prev.by, prev.known_at, *prev.columns]].dropna(subset=[*prev.by, prev.known_at])
        events = events.rename(columns={prev.known_at: "_t", **dict(zip(prev.columns, values, strict=True))})
        # at equal times the last in value order wins, nulls sorting last (what Fusion's sort + keep-last gives)
        events = events.sort_values(["_t", *values], na_position="last", kind="stable")
        left = queries.join(base[prev.by]).dropna(subset=[*prev.by, "_pred"]).sort_values("_pred")
        joined = pd.merge_asof(
            left, events, left_on="_pred", right_on="_t", by=prev.by, allow_exact_matches=False
        ).set_index("_row")
        for v in values:
            columns[v] = joined[v].reindex(queries["_row"]).to_numpy()
        since = (joined["_pred"] - joined["_t"]).dt.total_seconds() / 60.0
        columns[f"{prev.name}_minutes_since"] = since.reindex(queries["_row"]).to_numpy()
    # Fusion's order: the id columns and event time that are not features, the features, the target
    head = {c: base[c] for c in dict.fromkeys([*spec.id_columns, spec.event_time or ""]) if c and c not in columns}
    tail = {}
    if dataset.target is not None:
        tail[dataset.target.name] = ((base["arr_delay"] > 15) | base["arr_delay"].isna()).astype("int8")
    return pd.DataFrame({**head, **columns, **tail})

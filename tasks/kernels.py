"""Feature kernels: Rust (the rust_ext package) when it imports, else their pure-Polars twins.

Both give the same results (counts, maxima and nulls exactly; sums and means to floating-point
rounding, since they add in different orders); tests/code/test_kernels.py checks that on random
frames. `FUSION_KERNELS=polars` forces the twins (benchmarks, tests, a platform without a wheel).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import polars as pl

from fusion.core.errors import FeatureError

Backend = Literal["rust", "polars"]

_native: ModuleType | None
try:  # the extension is built by `uv sync` (maturin); without it Fusion still works, more slowly
    import rust_ext as _native
except ImportError:  # pragma: no cover - depends on the platform
    _native = None


def backend() -> Backend:
    """The backend in use: `FUSION_KERNELS` if set, else rust when the extension is importable."""
    chosen = os.environ.get("FUSION_KERNELS", "").strip().lower()
    if chosen == "polars":
        return "polars"
    if chosen not in ("", "rust"):
        raise FeatureError(f"FUSION_KERNELS must be 'rust' or 'polars', got {chosen!r}")
    if _native is None:
        if chosen == "rust":
            raise FeatureError("FUSION_KERNELS=rust but the rust_ext extension is not installed (run `make setup`)")
        return "polars"
    return "rust"


def native_library() -> list[Path]:
    """The compiled extension file when the kernels run in Rust (part of the stage-cache code version)."""
    if backend() != "rust" or _native is None:
        return []
    # maturin installs a package: its __init__.py re-exports the compiled module next to it
    return sorted(Path(str(_native.__file__)).parent.glob("*.so"))


def _series(name: str, values: pl.Series | Sequence[Any], dtype: type[pl.DataType]) -> pl.Series:
    series = _as_series(name, values)
    try:
        return series.cast(dtype, strict=True).rename(name)
    except pl.exceptions.PolarsError as exc:
        raise FeatureError(f"{name}: cannot be read as {dtype.__name__} ({series.dtype}): {exc}") from exc


def _same_length(columns: dict[str, pl.Series]) -> None:
    first, *rest = columns.items()
    for name, column in rest:
        if len(column) != len(first[1]):
            raise FeatureError(f"{name} has {len(column)} rows, expected {len(first[1])} (the length of {first[0]})")


AGGS = ("count", "sum", "mean", "max")


def _keys(name: str, columns: pl.Series | Sequence[pl.Series]) -> list[pl.Series]:
    """Key columns as the kernels take them: strings or integers (categoricals as strings, booleans and
    temporal values as their integers). Float keys are refused: equal-looking floats need not be equal."""
    listed = [columns] if isinstance(columns, pl.Series) else list(columns)
    if not listed:
        raise FeatureError(f"{name}: at least one key column is needed")
    out = []
    for j, column in enumerate(listed):
        dtype = column.dtype
        if isinstance(dtype, (pl.Categorical, pl.Enum)):
            column = column.cast(pl.String)
        elif dtype == pl.Boolean:
            column = column.cast(pl.UInt8)
        elif dtype.is_temporal():
            column = column.to_physical()
        elif not (dtype == pl.String or dtype.is_integer()):
            raise FeatureError(
                f"{name}[{j}] ({column.name!r}): a key must be a string, integer, boolean or temporal column,"
                f" got {dtype}"
            )
        out.append(column.rename(f"{name}[{j}]"))
    _same_length({c.name: c for c in out})
    return out


def _key_pairs(left: list[pl.Series], right: list[pl.Series]) -> tuple[list[pl.Series], list[pl.Series]]:
    """Left and right key columns of one type each: integers of different widths widen to Int64."""
    if len(left) != len(right):
        raise FeatureError(f"{len(left)} key column(s) on the left but {len(right)} on the right")
    pairs = []
    for j, (a, b) in enumerate(zip(left, right, strict=True)):
        if a.dtype != b.dtype:
            if not (a.dtype.is_integer() and b.dtype.is_integer()):
                raise FeatureError(f"key column {j} is {a.dtype} on the left but {b.dtype} on the right")
            a, b = _series(a.name, a, pl.Int64), _series(b.name, b, pl.Int64)
        pairs.append((a, b))
    return [a for a, _ in pairs], [b for _, b in pairs]


def _as_series(name: str, values: pl.Series | Sequence[Any]) -> pl.Series:
    return values if isinstance(values, pl.Series) else pl.Series(name, values)


def _times(name: str, values: pl.Series) -> pl.Series:
    """Times as Int64: datetimes as microseconds since the epoch (UTC), integers as they are."""
    dtype = values.dtype
    if isinstance(dtype, pl.Datetime):
        return values.dt.cast_time_unit("us").to_physical().rename(name)
    if dtype == pl.Date:
        return values.cast(pl.Datetime("us")).to_physical().rename(name)
    if dtype.is_integer():
        return _series(name, values, pl.Int64)
    raise FeatureError(f"{name}: expected a datetime or integer column, got {dtype}")


def _clock(dtype: pl.DataType) -> tuple[bool, str | None]:
    """Whether a column holds times (datetimes or dates, read as µs since the epoch) and their time zone."""
    if isinstance(dtype, pl.Datetime):
        return True, dtype.time_zone
    return dtype == pl.Date, None


def _same_clock(left: tuple[str, pl.Series], right: tuple[str, pl.Series]) -> None:
    """Two time columns can be compared: both integers, or both datetimes in the same time zone."""
    (a, x), (b, y) = left, right
    if _clock(x.dtype) != _clock(y.dtype):
        raise FeatureError(f"{a} ({x.dtype}) and {b} ({y.dtype}) are not times on the same clock")


@dataclass(frozen=True)
class WindowSpec:
    """One aggregate spec of `window_aggregates`: the group keys, when each value became known, the
    values, the windows (in the unit of the times: microseconds for datetimes) and the aggregates."""

    keys: pl.Series | Sequence[pl.Series]
    known_at: pl.Series | Sequence[Any]
    value: pl.Series | Sequence[Any]
    windows: Sequence[int]
    aggs: Sequence[str] = AGGS


def window_aggregate(
    keys: pl.Series | Sequence[pl.Series],
    known_at: pl.Series | Sequence[Any],
    value: pl.Series | Sequence[Any],
    at: pl.Series | Sequence[Any],
    windows: Sequence[int],
    aggs: Sequence[str] = AGGS,
    using: Backend | None = None,
) -> pl.DataFrame:
    """Per-group aggregates over prior events, strictly before each row's time.

    Row i is an event (its keys, known_at[i], value[i]) and a query (its keys, at[i]). For each
    window w (same unit as the times: microseconds for datetimes) the query sees its group's events
    with at - w <= known_at < at. Returns `<agg>_<w>` for each window and each of `aggs` in order, all
    Float64: count, sum (0 when empty), mean and max (null when empty), aligned with the rows; null
    where a key or at is null. Events with a null or NaN value are not counted. (The count is a
    float because features are: no cast, no copy.)
    """
    return window_aggregates([WindowSpec(keys, known_at, value, windows, aggs)], at, using)[0]


def window_aggregates(
    specs: Sequence[WindowSpec], at: pl.Series | Sequence[Any], using: Backend | None = None
) -> list[pl.DataFrame]:
    """`window_aggregate` for several specs over the same rows, asking at the same times. In Rust, specs
    that pass the same key Series share their group ids and each group's queries sorted by time."""
    at = _as_series("at", at)
    asked = _times("at", at)
    prepared = []
    for i, spec in enumerate(specs):
        name = "" if len(specs) == 1 else f"specs[{i}]."
        keys = _keys(f"{name}keys", spec.keys)
        known = _as_series("known_at", spec.known_at)
        _same_clock((f"{name}known_at", known), ("at", at))
        known_at = _times(f"{name}known_at", known)
        value = _series(f"{name}value", spec.value, pl.Float64)
        _same_length({f"{name}keys[0]": keys[0], f"{name}known_at": known_at, f"{name}value": value, "at": asked})
        negative = [w for w in spec.windows if w < 0]
        if negative:
            raise FeatureError(f"{name}windows must be >= 0, got {negative}")
        aggs = list(spec.aggs)
        if not aggs or len(set(aggs)) != len(aggs) or not set(aggs) <= set(AGGS):
            raise FeatureError(f"{name}aggs must be distinct names among {list(AGGS)}, got {aggs}")
        prepared.append((keys, known_at, value, list(spec.windows), aggs))
    if (using or backend()) == "rust":
        assert _native is not None
        return [pl.DataFrame([pl.Series(a) for a in arrays]) for arrays in _native.window_aggregates(prepared, asked)]
    return [_window_aggregate_polars(k, t, v, asked, w, a) for k, t, v, w, a in prepared]


def _window_aggregate_polars(
    keys: list[pl.Series],
    known_at: pl.Series,
    value: pl.Series,
    at: pl.Series,
    windows: Sequence[int],
    aggs: Sequence[str],
) -> pl.DataFrame:
    """The twin: events and queries in one frame sorted by (keys, time), Polars' rolling-by kernels
    with a left-closed window per group, then the query rows back in input order."""
    k = [f"_k{j}" for j in range(len(keys))]
    frame = pl.DataFrame(
        [
            *(c.alias(n) for c, n in zip(keys, k, strict=True)),
            known_at.alias("_known"),
            value.alias("_v"),
            at.alias("_a"),
        ]
    ).with_row_index("_i")
    has_key = pl.all_horizontal(pl.col(c).is_not_null() for c in k)
    event = pl.col("_known").is_not_null() & pl.col("_v").is_not_null() & ~pl.col("_v").is_nan()
    events = frame.filter(has_key & event).select(
        *k, pl.col("_known").alias("_t"), "_v", pl.lit(None, pl.UInt32).alias("_i")
    )
    queries = frame.filter(has_key & pl.col("_a").is_not_null()).select(
        *k, pl.col("_a").alias("_t"), pl.lit(None, pl.Float64).alias("_v"), "_i"
    )
    both = pl.concat([events, queries]).sort(*k, "_t")
    is_event = pl.col("_v").is_not_null().cast(pl.Int64)
    aggregates: list[pl.Expr] = []
    for w in windows:
        if w == 0:  # [at, at) holds nothing (and Polars' rolling windows must be positive)
            empty = {
                "count": pl.lit(0.0),
                "sum": pl.lit(0.0),
                "mean": pl.lit(None, pl.Float64),
                "max": pl.lit(None, pl.Float64),
            }
            aggregates += [empty[a].alias(f"{a}_{w}") for a in aggs]
            continue
        size = f"{w}i"
        count = is_event.rolling_sum_by("_t", size, closed="left").over(k).fill_null(0).cast(pl.Float64)
        total = pl.col("_v").rolling_sum_by("_t", size, closed="left").over(k)
        exprs = {
            "count": count,
            "sum": pl.when(count > 0).then(total).otherwise(0.0),
            "mean": pl.when(count > 0).then(total / count),
            "max": pl.when(count > 0).then(pl.col("_v").rolling_max_by("_t", size, closed="left").over(k)),
        }
        aggregates += [exprs[a].alias(f"{a}_{w}") for a in aggs]
    answered = both.with_columns(aggregates).filter(pl.col("_i").is_not_null())
    names = [f"{a}_{w}" for w in windows for a in aggs]
    return (
        frame.select("_i").join(answered.select("_i", *names), on="_i", how="left", maintain_order="left").select(names)
    )


def asof_index(
    left_keys: pl.Series | Sequence[pl.Series],
    left_time: pl.Series,
    right_keys: pl.Series | Sequence[pl.Series],
    right_time: pl.Series,
    *,
    strict: bool = False,
    tolerance: int | None = None,
    order_by: Sequence[pl.Series] = (),
    using: Backend | None = None,
) -> pl.Series:
    """For each left row, the row number (UInt32) of the right row an as-of join attaches; null where none.

    The right rows with the same keys whose time is at or before the left row's time (strictly before
    when `strict`) and at most `tolerance` older (in the times' unit: microseconds for datetimes); of
    those the latest. Right rows tied at that time: the greatest by `order_by` (right columns,
    ascending, nulls greatest, NaN above every number), then the last in input order.
    """
    lk, rk = _key_pairs(_keys("left_keys", left_keys), _keys("right_keys", right_keys))
    _same_clock(("left_time", left_time), ("right_time", right_time))
    lt, rt = _times("left_time", left_time), _times("right_time", right_time)
    _same_length({"left_keys[0]": lk[0], "left_time": lt})
    ordered = [c.cast(pl.String) if isinstance(c.dtype, (pl.Categorical, pl.Enum)) else c for c in order_by]
    _same_length({"right_keys[0]": rk[0], "right_time": rt, **{f"order_by[{j}]": c for j, c in enumerate(ordered)}})
    if tolerance is not None and tolerance < 0:
        raise FeatureError(f"tolerance must be >= 0, got {tolerance}")
    if (using or backend()) == "rust":
        assert _native is not None
        return pl.Series(_native.asof_index(lk, lt, rk, rt, ordered, strict, tolerance))
    k = [f"_k{j}" for j in range(len(lk))]
    o = [f"_o{j}" for j in range(len(ordered))]
    left = pl.DataFrame([*(c.alias(n) for c, n in zip(lk, k, strict=True)), lt.alias("_t")]).with_row_index("_l")
    right = (
        pl.DataFrame(
            [
                *(c.alias(n) for c, n in zip(rk, k, strict=True)),
                rt.alias("_t"),
                *(c.alias(n) for c, n in zip(ordered, o, strict=True)),
            ]
        )
        .with_row_index("_r")
        .drop_nulls([*k, "_t"])
        # ties at one time: the join takes the last, so the greatest by order_by, then the last row
        .sort(["_t", *o], nulls_last=True, maintain_order=True)
    )
    joined = (
        left.drop_nulls([*k, "_t"])
        .sort("_t")
        .join_asof(
            right.select(*k, "_t", "_r"),
            on="_t",
            by=k,
            strategy="backward",
            tolerance=tolerance,
            allow_exact_matches=not strict,
            check_sortedness=False,  # both sides are sorted by time above; Polars cannot check it with `by`
        )
    )
    return (
        left.select("_l")
        .join(joined.select("_l", "_r"), on="_l", how="left", maintain_order="left")["_r"]
        .rename("index")
    )


def lookup_index(left_keys: pl.Series | Sequence[pl.Series], right_keys: pl.Series | Sequence[pl.Series]) -> pl.Series:
    """For each left row, the row number (UInt32) of the first right row with the same keys; null where none.

    Polars' hash join, not a Rust kernel: one written on the group ids of the as-of kernel did not beat
    it, so it was not kept (figures: docs/BENCHMARKS.md, "Feature step: where the time goes").
    """
    lk, rk = _key_pairs(_keys("left_keys", left_keys), _keys("right_keys", right_keys))
    k = [f"_k{j}" for j in range(len(lk))]
    right = (
        pl.DataFrame([c.alias(n) for c, n in zip(rk, k, strict=True)])
        .with_row_index("_r")
        .drop_nulls(k)
        .unique(k, keep="first", maintain_order=True)
    )
    left = pl.DataFrame([c.alias(n) for c, n in zip(lk, k, strict=True)])
    return left.join(right, on=k, how="left", maintain_order="left")["_r"].rename("index")


def haversine_km(
    lat1: pl.Series, lon1: pl.Series, lat2: pl.Series, lon2: pl.Series, using: Backend | None = None
) -> pl.Series:
    """Great-circle distance in km between points in degrees; null where any input is null."""
    columns = {
        "lat1": _series("lat1", lat1, pl.Float64),
        "lon1": _series("lon1", lon1, pl.Float64),
        "lat2": _series("lat2", lat2, pl.Float64),
        "lon2": _series("lon2", lon2, pl.Float64),
    }
    _same_length(columns)
    if (using or backend()) == "rust":
        assert _native is not None
        return pl.Series(_native.haversine_km(*columns.values()))
    frame = pl.DataFrame(columns)
    return frame.select(haversine_expr(*(pl.col(c) for c in columns))).to_series()


EARTH_RADIUS_KM = 6371.0088


def haversine_expr(lat1: pl.Expr, lon1: pl.Expr, lat2: pl.Expr, lon2: pl.Expr) -> pl.Expr:
    """The twin as an expression, the same formula operation for operation as rust_ext/src/geo.rs."""
    p1, p2 = lat1.radians(), lat2.radians()
    dp = (lat2 - lat1).radians()
    dl = (lon2 - lon1).radians()
    a = (dp / 2).sin().pow(2) + p1.cos() * p2.cos() * (dl / 2).sin().pow(2)
    return (2.0 * EARTH_RADIUS_KM * a.sqrt().clip(upper_bound=1.0).arcsin()).alias("haversine_km")


def cross_hash(columns: Sequence[pl.Series], using: Backend | None = None) -> pl.Series:
    """Stable 64-bit hash (UInt64) of each row's values across the columns; null where any is null.

    Values are hashed by their UTF-8 string form (non-string columns are cast to String first), in
    column order. The definition is in rust_ext/src/hash.rs; it never changes between versions or
    machines, so it can key features and online stores shared by training and serving.
    """
    if not columns:
        raise FeatureError("cross_hash needs at least one column")
    named = {f"columns[{j}]": _series(f"columns[{j}]", c, pl.String) for j, c in enumerate(columns)}
    _same_length(named)
    if (using or backend()) == "rust":
        assert _native is not None
        return pl.Series(_native.cross_hash(list(named.values())))
    return _cross_hash_polars(list(named.values()))


# splitmix64 (Steele, Lea, Flood 2014): the golden gamma and the two multipliers of its output function.
_GAMMA, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _u64(value: int) -> pl.Expr:
    return pl.lit(value, pl.UInt64)


def splitmix64_expr(x: pl.Expr) -> pl.Expr:
    """splitmix64's output function on UInt64 (Polars' integer arithmetic wraps; // 2^k is >> k)."""
    z = x + _u64(_GAMMA)
    z = z.xor(z // _u64(1 << 30)) * _u64(_MIX1)
    z = z.xor(z // _u64(1 << 27)) * _u64(_MIX2)
    return z.xor(z // _u64(1 << 31))


def _cross_hash_polars(columns: list[pl.Series]) -> pl.Series:
    """The twin: per column, each distinct value's XOR of splitmix64((column+1)<<40 | position<<8 | byte)
    over its UTF-8 bytes (read back from hex), mapped onto the rows, XORed across columns, mixed once more."""
    words: list[pl.Expr] = []
    for j, column in enumerate(columns):
        distinct = column.unique().drop_nulls().rename("_v").to_frame()
        byte = pl.element().str.to_integer(base=16).cast(pl.UInt64)
        position = pl.int_range(pl.len(), dtype=pl.UInt64)
        word = splitmix64_expr(_u64((j + 1) << 40) + position * _u64(256) + byte)
        table = distinct.select(
            "_v",
            pl.col("_v")
            .str.encode("hex")
            .str.extract_all("..")
            .list.eval(word.bitwise_xor())
            .list.first()
            # an empty value has no bytes: XOR over nothing is 0
            .fill_null(0)
            .alias("_w"),
        )
        words.append(pl.col(f"_c{j}").replace_strict(table["_v"], table["_w"], default=None, return_dtype=pl.UInt64))
    frame = pl.DataFrame({f"_c{j}": c for j, c in enumerate(columns)})
    combined = words[0]
    for w in words[1:]:
        combined = combined.xor(w)
    return frame.select(splitmix64_expr(combined).alias("cross_hash")).to_series()

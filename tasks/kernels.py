"""Feature kernels: Rust (the rust_ext package) when it imports, else their pure-Polars twins.

Both give the same results (counts, maxima and nulls exactly; sums and means to floating-point
rounding, since they add in different orders); tests/code/test_kernels.py checks that on random
frames. `FUSION_KERNELS=polars` forces the twins (benchmarks, tests, a platform without a wheel).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import polars as pl

from fusion.errors import FeatureError

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
    series = values if isinstance(values, pl.Series) else pl.Series(name, values)
    try:
        return series.cast(dtype, strict=True).rename(name)
    except pl.exceptions.PolarsError as exc:
        raise FeatureError(f"{name}: cannot be read as {dtype.__name__} ({series.dtype}): {exc}") from exc


def _same_length(columns: dict[str, pl.Series]) -> None:
    first, *rest = columns.items()
    for name, column in rest:
        if len(column) != len(first[1]):
            raise FeatureError(f"{name} has {len(column)} rows, expected {len(first[1])} (the length of {first[0]})")


def window_aggregate(
    group: pl.Series,
    known_at: pl.Series,
    value: pl.Series,
    at: pl.Series,
    windows: Sequence[int],
    using: Backend | None = None,
) -> pl.DataFrame:
    """Per-group aggregates over prior events, strictly before each row's time.

    Row i is an event (group[i], known_at[i], value[i]) and a query (group[i], at[i]). For each
    window w (same unit as the times) the query sees its group's events with at - w <= known_at < at.
    Returns `count_<w>` (Int64), `sum_<w>` (0 when empty), `mean_<w>` and `max_<w>` (null when empty),
    aligned with the rows; null where the row's group or at is null. Events with a null or NaN value
    are not counted.
    """
    columns = {
        "group": _series("group", group, pl.Int64),
        "known_at": _series("known_at", known_at, pl.Int64),
        "value": _series("value", value, pl.Float64),
        "at": _series("at", at, pl.Int64),
    }
    _same_length(columns)
    negative = [w for w in windows if w < 0]
    if negative:
        raise FeatureError(f"windows must be >= 0, got {negative}")
    if (using or backend()) == "rust":
        assert _native is not None
        arrays = _native.window_aggregate(
            columns["group"], columns["known_at"], columns["value"], columns["at"], list(windows)
        )
        return pl.DataFrame([pl.Series(a) for a in arrays])
    return _window_aggregate_polars(**columns, windows=windows)


def _window_aggregate_polars(
    group: pl.Series, known_at: pl.Series, value: pl.Series, at: pl.Series, windows: Sequence[int]
) -> pl.DataFrame:
    """The twin: events and queries in one frame sorted by (group, time), Polars' rolling-by kernels
    with a left-closed window per group, then the query rows back in input order."""
    frame = pl.DataFrame({"_g": group, "_k": known_at, "_v": value, "_a": at}).with_row_index("_i")
    events = frame.filter(
        pl.col("_g").is_not_null() & pl.col("_k").is_not_null() & pl.col("_v").is_not_null() & ~pl.col("_v").is_nan()
    ).select("_g", pl.col("_k").alias("_t"), "_v", pl.lit(None, pl.UInt32).alias("_i"))
    queries = frame.filter(pl.col("_g").is_not_null() & pl.col("_a").is_not_null()).select(
        "_g", pl.col("_a").alias("_t"), pl.lit(None, pl.Float64).alias("_v"), "_i"
    )
    both = pl.concat([events, queries]).sort("_g", "_t")
    is_event = pl.col("_v").is_not_null().cast(pl.Int64)
    aggregates: list[pl.Expr] = []
    for w in windows:
        if w == 0:  # [at, at) holds nothing (and Polars' rolling windows must be positive)
            aggregates += [
                pl.lit(0, pl.Int64).alias(f"count_{w}"),
                pl.lit(0.0).alias(f"sum_{w}"),
                pl.lit(None, pl.Float64).alias(f"mean_{w}"),
                pl.lit(None, pl.Float64).alias(f"max_{w}"),
            ]
            continue
        size = f"{w}i"
        count = is_event.rolling_sum_by("_t", size, closed="left").over("_g").fill_null(0)
        total = pl.col("_v").rolling_sum_by("_t", size, closed="left").over("_g")
        aggregates += [
            count.alias(f"count_{w}"),
            pl.when(count > 0).then(total).otherwise(0.0).alias(f"sum_{w}"),
            pl.when(count > 0).then(total / count).alias(f"mean_{w}"),
            pl.when(count > 0)
            .then(pl.col("_v").rolling_max_by("_t", size, closed="left").over("_g"))
            .alias(f"max_{w}"),
        ]
    answered = both.with_columns(aggregates).filter(pl.col("_i").is_not_null())
    names = [f"{a}_{w}" for w in windows for a in ("count", "sum", "mean", "max")]
    return (
        frame.select("_i").join(answered.select("_i", *names), on="_i", how="left", maintain_order="left").select(names)
    )


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

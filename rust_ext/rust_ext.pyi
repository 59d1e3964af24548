"""Fusion's native feature kernels. Arrays in: anything with the Arrow PyCapsule interface (polars Series,
pyarrow arrays). `window_aggregates` and `asof_index` read keys, times and values chunk by chunk without a
copy (the as-of `order_by` columns are joined into one array); `haversine_km` and `cross_hash` join each
input's chunks into one array first (a copy when it has several chunks). Arrays out: Arrow arrays that
`polars.Series(...)` takes without a copy. Keys are string or integer columns (a row with a null key has
no group)."""

from collections.abc import Sequence
from typing import Any

def window_aggregates(
    specs: Sequence[tuple[Sequence[Any], Any, Any, Sequence[int], Sequence[str]]], at: Any
) -> list[list[Any]]:
    """Per spec (keys, known_at Int64, value Float64, windows, aggs among count/sum/mean/max), per window
    and aggregate in order: `<agg>_<w>` (Float64) over the row's group's events with
    at - w <= known_at < at (at Int64). Specs passing the same key columns share their group ids and
    queries; each spec's events are bucketed and sorted on their own, whatever known_at column it passes."""

def asof_index(
    left_keys: Sequence[Any],
    left_time: Any,
    right_keys: Sequence[Any],
    right_time: Any,
    order_by: Sequence[Any],
    strict: bool,
    tolerance: int | None,
) -> Any:
    """For each left row, the row number (UInt32, null for none) of the latest right row with the same keys
    at or before its time (strictly before when `strict`), at most `tolerance` older; ties at one time go
    to the greatest by `order_by` (nulls greatest, NaN above numbers), then to the last row."""

def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Great-circle distance in km (Float64 degrees in, Float64 out; null where any input is)."""

def cross_hash(columns: Sequence[Any]) -> Any:
    """Stable 64-bit hash (UInt64) of each row's values across the string columns (Utf8, LargeUtf8 or
    Utf8View), in column order; null where any value is null. Definition: rust_ext/src/hash.rs."""

"""Fusion's native feature kernels. Arrays in: anything with the Arrow PyCapsule interface (polars Series,
pyarrow arrays); arrays out: Arrow arrays that `polars.Series(...)` takes without a copy."""

from collections.abc import Sequence
from typing import Any

def window_aggregate(group: Any, known_at: Any, value: Any, at: Any, windows: Sequence[int]) -> list[Any]:
    """Per window: count_<w> (Int64), sum_<w>, mean_<w>, max_<w> (Float64) over the row's group's events
    with at - w <= known_at < at. group/known_at/at Int64, value Float64, equal lengths."""

def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Great-circle distance in km (Float64 degrees in, Float64 out; null where any input is)."""

def cross_hash(columns: Sequence[Any]) -> Any:
    """Stable 64-bit hash (UInt64) of each row's values across the string columns (Utf8, LargeUtf8 or
    Utf8View), in column order; null where any value is null. Definition: rust_ext/src/hash.rs."""

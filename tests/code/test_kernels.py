"""The Rust kernels (rust_ext) and their pure-Polars twins give the same answers, and both the right one.

Random frames from hypothesis: nulls, NaN, unsorted rows, duplicate timestamps, empty and one-row
frames, f32 and f64 values. A brute-force scan is the oracle for small frames.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion.core.errors import FeatureError
from tasks import kernels

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_extension_is_built_and_used() -> None:
    """`make setup` builds rust_ext; without it everything would silently run on the twins."""
    assert kernels.backend() == "rust"


@st.composite
def event_frames(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 60))
    maybe = lambda s: st.one_of(st.none(), s) if draw(st.booleans()) else s  # noqa: E731
    keys = [pl.Series("k0", draw(st.lists(maybe(st.integers(-3, 3)), min_size=n, max_size=n)), dtype=pl.Int64)]
    if draw(st.booleans()):  # a second key column, of strings
        keys.append(
            pl.Series(
                "k1",
                draw(st.lists(maybe(st.sampled_from(["a", "b", "a long key value"])), min_size=n, max_size=n)),
                dtype=pl.String,
            )
        )
    known = draw(st.lists(maybe(st.integers(0, 40)), min_size=n, max_size=n))  # small range: many ties
    finite = st.floats(-1e6, 1e6)
    values = draw(
        st.lists(maybe(st.one_of(finite, st.just(math.nan)) if draw(st.booleans()) else finite), min_size=n, max_size=n)
    )
    offsets = draw(st.lists(maybe(st.integers(-5, 15)), min_size=n, max_size=n))
    at = [None if k is None or o is None else k + o for k, o in zip(known, offsets, strict=True)]
    dtype = draw(st.sampled_from([pl.Float32, pl.Float64]))
    return {
        "keys": keys,
        "known_at": pl.Series("known_at", known, dtype=pl.Int64),
        "value": pl.Series("value", values, dtype=pl.Float64).cast(dtype),
        "at": pl.Series("at", at, dtype=pl.Int64),
    }


def brute_force(frame: dict[str, Any], window: int) -> list[tuple[int | None, float | None, float | None]]:
    keys = list(zip(*(k.to_list() for k in frame["keys"]), strict=True))
    k, v, a = (frame[c].to_list() for c in ("known_at", "value", "at"))
    v = [None if x is None or math.isnan(x) else float(x) for x in v]
    out: list[tuple[int | None, float | None, float | None]] = []
    for q in range(len(keys)):
        if None in keys[q] or a[q] is None:
            out.append((None, None, None))
            continue
        inside = [
            v[e]
            for e in range(len(keys))
            if keys[e] == keys[q] and k[e] is not None and v[e] is not None and a[q] - window <= k[e] < a[q]
        ]
        out.append((len(inside), math.fsum(inside), max(inside) if inside else None))
    return out


def assert_close(left: pl.Series, right: pl.Series) -> None:
    assert left.is_null().to_list() == right.is_null().to_list(), left.name
    both = pl.DataFrame({"l": left, "r": right}).drop_nulls()
    np.testing.assert_allclose(both["l"].to_numpy(), both["r"].to_numpy(), rtol=1e-9, atol=1e-6, err_msg=left.name)


def assert_same_aggregates(rust: pl.DataFrame, twin: pl.DataFrame) -> None:
    assert rust.columns == twin.columns and rust.height == twin.height
    for column in rust.columns:
        if column.startswith(("count", "max")):
            assert rust[column].to_list() == twin[column].to_list(), column  # exact
        else:
            assert_close(rust[column], twin[column])


@SETTINGS
@given(frame=event_frames(), windows=st.lists(st.integers(0, 30), min_size=1, max_size=3, unique=True))
def test_window_aggregate_rust_equals_polars_equals_brute_force(frame: dict[str, Any], windows: list[int]) -> None:
    rust = kernels.window_aggregate(**frame, windows=windows, using="rust")
    twin = kernels.window_aggregate(**frame, windows=windows, using="polars")
    assert rust.columns == [f"{a}_{w}" for w in windows for a in ("count", "sum", "mean", "max")]
    assert rust.height == len(frame["at"])
    assert_same_aggregates(rust, twin)
    for w in windows:
        for row, (count, total, top) in enumerate(brute_force(frame, w)):
            assert rust[f"count_{w}"][row] == count
            assert rust[f"max_{w}"][row] == top
            if total is not None:
                assert math.isclose(rust[f"sum_{w}"][row], total, rel_tol=1e-9, abs_tol=1e-6)


@SETTINGS
@given(
    frame=event_frames(),
    other=st.integers(0, 5),
    plans=st.lists(
        st.tuples(
            st.booleans(),  # the spec's known_at: the frame's, or another column
            st.lists(st.integers(0, 30), min_size=1, max_size=2, unique=True),
            st.lists(st.sampled_from(kernels.AGGS), min_size=1, max_size=4, unique=True),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_specs_sharing_columns_equal_each_alone(
    frame: dict[str, Any], other: int, plans: list[tuple[bool, list[int], list[str]]]
) -> None:
    """Rust shares group ids and each group's queries between specs that pass the same key Series (each
    spec's events are sorted on their own, whether its known_at is shared or not); the answers must be
    those of each spec on its own, and the twin's."""
    shifted = frame["known_at"] + other
    specs = [
        kernels.WindowSpec(frame["keys"], frame["known_at"] if same else shifted, frame["value"], windows, aggs)
        for same, windows, aggs in plans
    ]
    together = kernels.window_aggregates(specs, frame["at"], using="rust")
    twins = kernels.window_aggregates(specs, frame["at"], using="polars")
    for spec, shared, twin in zip(specs, together, twins, strict=True):
        alone = kernels.window_aggregate(spec.keys, spec.known_at, spec.value, frame["at"], spec.windows, spec.aggs)
        assert shared.columns == [f"{a}_{w}" for w in spec.windows for a in spec.aggs]
        assert shared.equals(alone)
        assert_same_aggregates(shared, twin)


@pytest.mark.parametrize("using", ["rust", "polars"])
def test_window_aggregate_edges(using: kernels.Backend) -> None:
    empty = {c: pl.Series(c, [], dtype=pl.Int64) for c in ("keys", "known_at", "at")}
    out = kernels.window_aggregate(**empty, value=pl.Series([], dtype=pl.Float64), windows=[5], using=using)
    assert out.shape == (0, 4)
    one = kernels.window_aggregate(
        pl.Series([7]), pl.Series([10]), pl.Series([2.5]), pl.Series([11]), windows=[1, 0], using=using
    )
    assert one.row(0) == (1, 2.5, 2.5, 2.5, 0, 0.0, None, None)
    chosen = kernels.window_aggregate(
        pl.Series([7, 7]), pl.Series([1, 2]), pl.Series([2.0, 4.0]), pl.Series([3, 3]), [5], ["max", "count"], using
    )
    assert chosen.columns == ["max_5", "count_5"] and chosen.row(0) == (4.0, 2)
    # datetimes are read as microseconds since the epoch, in any time zone
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    times = pl.Series([t0, t0 + dt.timedelta(minutes=30)])
    minutes = kernels.window_aggregate(
        pl.Series(["a", "a"]), times, pl.Series([1.0, 2.0]), times, [3_600_000_000], ["count"], using
    )
    assert minutes["count_3600000000"].to_list() == [0, 1]


@pytest.mark.parametrize("using", ["rust", "polars"])
def test_window_aggregate_errors_name_the_input(using: kernels.Backend) -> None:
    ints, floats = pl.Series([1, 2]), pl.Series([1.0, 2.0])
    with pytest.raises(FeatureError, match=r"known_at has 1 rows, expected 2 \(the length of keys\[0\]\)"):
        kernels.window_aggregate(ints, pl.Series([1]), floats, ints, windows=[1], using=using)
    with pytest.raises(FeatureError, match="windows must be >= 0"):
        kernels.window_aggregate(ints, ints, floats, ints, windows=[3, -1], using=using)
    with pytest.raises(FeatureError, match="value: cannot be read as Float64"):
        kernels.window_aggregate(ints, ints, pl.Series(["a", "b"]), ints, windows=[1], using=using)
    with pytest.raises(FeatureError, match=r"aggs must be distinct names among .* got \['median'\]"):
        kernels.window_aggregate(ints, ints, floats, ints, windows=[1], aggs=["median"], using=using)
    with pytest.raises(FeatureError, match=r"keys\[0\] \('x'\): a key must be a string, integer"):
        kernels.window_aggregate(pl.Series("x", [1.5, 2.5]), ints, floats, ints, windows=[1], using=using)
    t0 = pl.Series([dt.datetime(2024, 1, 1)] * 2)
    with pytest.raises(FeatureError, match=r"known_at .* and at .* are not times on the same clock"):
        kernels.window_aggregate(ints, t0, floats, ints, windows=[1], using=using)
    with pytest.raises(FeatureError, match="known_at: expected a datetime or integer column, got String"):
        kernels.window_aggregate(ints, pl.Series(["a", "b"]), floats, ints, windows=[1], using=using)
    with pytest.raises(FeatureError, match=r"specs\[1\]\.windows must be >= 0"):
        spec = kernels.WindowSpec(ints, ints, floats, [1])
        kernels.window_aggregates([spec, kernels.WindowSpec(ints, ints, floats, [-1])], ints, using=using)


def test_the_extension_checks_types_itself() -> None:
    """Called directly (not through tasks.kernels), rust_ext names the argument that is wrong."""
    import rust_ext

    ints = pl.Series([1, 2])
    with pytest.raises(TypeError, match="value: expected Float64, got Int64"):
        rust_ext.window_aggregates([([ints], ints, ints, [1], ["count"])], ints)
    with pytest.raises(TypeError, match=r"specs\[1\]\.known_at: expected Int64, got Float64"):
        floats = pl.Series([1.0, 2.0])
        rust_ext.window_aggregates([([ints], ints, floats, [1], ["sum"]), ([ints], floats, floats, [1], ["sum"])], ints)
    with pytest.raises(ValueError, match=r"keys\[0\] has 1 rows, expected 2 \(the length of at\)"):
        rust_ext.window_aggregates([([pl.Series([1])], ints, pl.Series([1.0, 2.0]), [1], ["sum"])], ints)
    with pytest.raises(ValueError, match='unknown aggregate "median"'):
        rust_ext.window_aggregates([([ints], ints, pl.Series([1.0, 2.0]), [1], ["median"])], ints)
    with pytest.raises(TypeError, match=r"left_keys\[0\]: expected a string or integer array, got Float64"):
        rust_ext.asof_index([pl.Series([1.0])], ints[:1], [pl.Series([1.0])], ints[:1], [], False, None)


def test_chunked_input_is_read_whole() -> None:
    """Polars hands over several chunks when a Series was appended to; the kernels read across them."""
    group = pl.Series([1, 1]).append(pl.Series([1, 1]))
    assert group.n_chunks() == 2
    times = pl.Series([0, 1]).append(pl.Series([2, 3]))
    out = kernels.window_aggregate(group, times, pl.Series([1.0, 2.0, 3.0, 4.0]), times + 1, [10])
    assert out["count_10"].to_list() == [1, 2, 3, 4]
    index = kernels.asof_index(group, times, group, times, strict=True)
    assert index.to_list() == [None, 0, 1, 2]


# As-of and lookup indexes: keys with nulls (ints, or strings with a long one), times with ties and
# nulls, tie-breaking columns with nulls, NaN and -0.0.
@st.composite
def join_frames(draw: st.DrawFn) -> dict[str, Any]:
    def keys(n: int, kind: str) -> pl.Series:
        if kind == "int":
            return pl.Series(
                draw(st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=n, max_size=n)), dtype=pl.Int32
            )
        words = st.sampled_from(["EWR", "JFK", "a key longer than twelve bytes"])
        return pl.Series(draw(st.lists(st.one_of(st.none(), words), min_size=n, max_size=n)), dtype=pl.String)

    kind = draw(st.sampled_from(["int", "str"]))
    n_left, n_right = draw(st.integers(0, 30)), draw(st.integers(0, 30))
    times = st.one_of(st.none(), st.integers(0, 12))
    floats = st.one_of(st.none(), st.sampled_from([math.nan, -0.0, 0.0, 1.5, -2.0]))
    return {
        "left_keys": keys(n_left, kind),
        "left_time": pl.Series(draw(st.lists(times, min_size=n_left, max_size=n_left)), dtype=pl.Int64),
        "right_keys": keys(n_right, kind),
        "right_time": pl.Series(draw(st.lists(times, min_size=n_right, max_size=n_right)), dtype=pl.Int64),
        "order_by": [
            pl.Series(draw(st.lists(floats, min_size=n_right, max_size=n_right)), dtype=pl.Float64),
            pl.Series(
                draw(st.lists(st.one_of(st.none(), st.sampled_from(["x", "y"])), min_size=n_right, max_size=n_right)),
                dtype=pl.String,
            ),
        ][: draw(st.integers(0, 2))],
    }


def sort_key(value: Any) -> tuple[int, Any]:
    """Ascending order with nulls greatest and NaN above every number (-0.0 == 0.0, as in Python)."""
    if value is None:
        return (2, 0)
    if isinstance(value, float) and math.isnan(value):
        return (1, 0)
    return (0, value)


def brute_asof(frame: dict[str, Any], strict: bool, tolerance: int | None) -> list[int | None]:
    lk, lt, rk, rt = (frame[c].to_list() for c in ("left_keys", "left_time", "right_keys", "right_time"))
    order = [c.to_list() for c in frame["order_by"]]
    out: list[int | None] = []
    for key, t in zip(lk, lt, strict=True):
        candidates = [
            r
            for r in range(len(rk))
            if key is not None
            and t is not None
            and rk[r] == key
            and rt[r] is not None
            and (rt[r] < t if strict else rt[r] <= t)
            and (tolerance is None or t - rt[r] <= tolerance)
        ]
        if not candidates:
            out.append(None)
            continue
        latest = max(rt[r] for r in candidates)
        tied = [r for r in candidates if rt[r] == latest]
        out.append(max(tied, key=lambda r: ([sort_key(c[r]) for c in order], r)))
    return out


@SETTINGS
@given(frame=join_frames(), strict=st.booleans(), tolerance=st.one_of(st.none(), st.integers(0, 6)))
def test_asof_index_rust_equals_polars_equals_brute_force(
    frame: dict[str, Any], strict: bool, tolerance: int | None
) -> None:
    rust = kernels.asof_index(**frame, strict=strict, tolerance=tolerance, using="rust")
    twin = kernels.asof_index(**frame, strict=strict, tolerance=tolerance, using="polars")
    assert rust.dtype == twin.dtype == pl.UInt32
    expected = brute_asof(frame, strict, tolerance)
    assert rust.to_list() == expected
    assert twin.to_list() == expected


@SETTINGS
@given(frame=join_frames())
def test_lookup_index_takes_the_first_row_of_a_key(frame: dict[str, Any]) -> None:
    left, right = frame["left_keys"].to_list(), frame["right_keys"].to_list()
    expected = [None if k is None or k not in right else right.index(k) for k in left]
    assert kernels.lookup_index(frame["left_keys"], frame["right_keys"]).to_list() == expected


@pytest.mark.parametrize("using", ["rust", "polars"])
def test_join_keys_and_times_are_checked(using: kernels.Backend) -> None:
    ints, t = pl.Series([1, 2], dtype=pl.Int64), pl.Series([1, 2])
    # integer keys of different widths are one type; composite keys pair up by position
    narrow = pl.Series([2, 1], dtype=pl.Int16)
    assert kernels.asof_index(ints, t, narrow, t, using=using).to_list() == [None, 0]  # key 1 is known at 2 only
    assert kernels.asof_index(ints, t + 1, narrow, t, using=using).to_list() == [1, 0]
    composite = [narrow, pl.Series(["b", "a"])]
    assert kernels.asof_index([ints, pl.Series(["a", "b"])], t + 1, composite, t, using=using).to_list() == [1, 0]
    assert kernels.lookup_index([ints, pl.Series(["a", "b"])], [narrow, pl.Series(["b", "a"])]).to_list() == [1, 0]
    with pytest.raises(FeatureError, match="key column 0 is Int64 on the left but String on the right"):
        kernels.asof_index(ints, t, pl.Series(["1", "2"]), t, using=using)
    with pytest.raises(FeatureError, match="2 key column"):
        kernels.asof_index([ints, ints], t, [ints], t, using=using)
    utc = pl.Series([dt.datetime(2024, 1, 1)]).dt.replace_time_zone("UTC")
    ny = utc.dt.convert_time_zone("America/New_York")
    with pytest.raises(FeatureError, match="not times on the same clock"):
        kernels.asof_index(pl.Series([1]), utc, pl.Series([1]), ny, using=using)
    with pytest.raises(FeatureError, match="not times on the same clock"):
        kernels.asof_index(pl.Series([1]), utc, pl.Series([1]), pl.Series([5]), using=using)
    with pytest.raises(FeatureError, match="tolerance must be >= 0"):
        kernels.asof_index(ints, t, ints, t, tolerance=-1, using=using)
    with pytest.raises(FeatureError, match=r"order_by\[0\] has 1 rows, expected 2"):
        kernels.asof_index(ints, t, ints, t, order_by=[pl.Series([1.0])], using=using)


coordinates = st.lists(
    st.tuples(
        st.one_of(st.none(), st.floats(-90, 90)),
        st.floats(-180, 180),
        st.floats(-90, 90),
        st.one_of(st.none(), st.floats(-180, 180)),
    ),
    max_size=50,
)


@SETTINGS
@given(points=coordinates, dtype=st.sampled_from([pl.Float32, pl.Float64]))
def test_haversine_rust_equals_polars(points: list[tuple[float | None, ...]], dtype: type[pl.DataType]) -> None:
    columns = [pl.Series(name, [p[i] for p in points], dtype=pl.Float64).cast(dtype) for i, name in enumerate("abcd")]
    rust = kernels.haversine_km(*columns, using="rust")
    twin = kernels.haversine_km(*columns, using="polars")
    assert_close(rust, twin)
    assert rust.drop_nulls().is_between(0, math.pi * kernels.EARTH_RADIUS_KM + 1e-6).all()


@pytest.mark.parametrize("using", ["rust", "polars"])
def test_haversine_known_values_and_errors(using: kernels.Backend) -> None:
    zero, one = pl.Series([0.0]), pl.Series([1.0])
    degree = kernels.EARTH_RADIUS_KM * math.pi / 180
    assert kernels.haversine_km(zero, zero, zero, one, using=using)[0] == pytest.approx(degree, rel=1e-12)
    with pytest.raises(FeatureError, match="lon2 has 2 rows, expected 1"):
        kernels.haversine_km(zero, zero, zero, pl.Series([1.0, 2.0]), using=using)


def reference_cross_hash(values: tuple[str | None, ...]) -> int | None:
    """The definition in rust_ext/src/hash.rs, transcribed to plain Python integers: the oracle."""
    mask = (1 << 64) - 1

    def splitmix64(x: int) -> int:
        z = (x + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    if any(v is None for v in values):
        return None
    h = 0
    for j, value in enumerate(values):
        for i, byte in enumerate(str(value).encode()):
            h ^= splitmix64(((j + 1) << 40) | (i << 8) | byte)
    return splitmix64(h)


# Few distinct values (the twin hashes distinct values) plus arbitrary Unicode, empty strings and nulls.
cross_values = st.one_of(st.none(), st.sampled_from(["", "UA", "EWR", "ä", "a|b", "\x00"]), st.text(max_size=12))


@SETTINGS
@given(
    rows=st.integers(0, 40).flatmap(
        lambda n: st.lists(st.lists(cross_values, min_size=n, max_size=n), min_size=1, max_size=3)
    ),
    chunked=st.booleans(),
)
def test_cross_hash_rust_equals_polars_equals_definition(rows: list[list[str | None]], chunked: bool) -> None:
    columns = [pl.Series(f"c{j}", values, dtype=pl.String) for j, values in enumerate(rows)]
    if chunked and len(columns[0]) > 1:
        columns = [c[:1].append(c[1:]) for c in columns]
    rust = kernels.cross_hash(columns, using="rust")
    twin = kernels.cross_hash(columns, using="polars")
    assert rust.dtype == twin.dtype == pl.UInt64
    expected = [reference_cross_hash(values) for values in zip(*rows, strict=True)]
    assert rust.to_list() == expected
    assert twin.to_list() == expected


@pytest.mark.parametrize("using", ["rust", "polars"])
def test_cross_hash_is_stable_and_typed(using: kernels.Backend) -> None:
    """Pinned values: stored features and online keys depend on them never changing."""
    carrier, origin = pl.Series(["UA", "B6", None]), pl.Series(["EWR", "JFK", "LGA"])
    assert kernels.cross_hash([carrier, origin], using=using).to_list() == [
        0x60A8F2466D35E951,
        0x62BE9E7B5A791C31,
        None,
    ]
    # column order matters; non-string columns are hashed by their string form
    assert kernels.cross_hash([origin, carrier], using=using)[0] != 0x60A8F2466D35E951
    numbers = kernels.cross_hash([pl.Series([1507, None]), pl.Series(["x", "y"]).cast(pl.Categorical)], using=using)
    assert numbers.to_list() == [reference_cross_hash(("1507", "x")), None]
    with pytest.raises(FeatureError, match="at least one column"):
        kernels.cross_hash([], using=using)
    with pytest.raises(FeatureError, match=r"columns\[1\] has 1 rows, expected 3"):
        kernels.cross_hash([carrier, pl.Series(["a"])], using=using)


def test_the_extension_checks_string_types_itself() -> None:
    import rust_ext

    with pytest.raises(TypeError, match=r"columns\[0\]: expected a string array, got Int64"):
        rust_ext.cross_hash([pl.Series([1, 2])])
    with pytest.raises(ValueError, match=r"columns\[1\] has 1 rows"):
        rust_ext.cross_hash([pl.Series(["a", "b"]), pl.Series(["a"])])
    with pytest.raises(ValueError, match="at least one column"):
        rust_ext.cross_hash([])


def test_forcing_the_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSION_KERNELS", "polars")
    assert kernels.backend() == "polars"
    monkeypatch.setenv("FUSION_KERNELS", "cuda")
    with pytest.raises(FeatureError, match="FUSION_KERNELS must be 'rust' or 'polars'"):
        kernels.backend()


def test_the_stage_cache_keys_on_the_compiled_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebuilt extension changes the code version, so cached feature stages are recomputed."""
    libraries = kernels.native_library()
    assert libraries and all(p.suffix == ".so" and p.is_file() for p in libraries)
    monkeypatch.setenv("FUSION_KERNELS", "polars")
    assert kernels.native_library() == []

"""Feature kernels against brute-force oracles on small random frames."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from fusion.core.errors import FeatureError
from fusion.core.settings import FeatureSpec, PredictionTimeConfig, TargetConfig
from tasks.features import asof_features, build_features, feature_names, with_derived
from tests.code.test_kernels import reference_cross_hash

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def random_events(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    minutes = rng.integers(0, 600, n)
    value = rng.normal(10, 5, n).round(1)
    value[rng.random(n) < 0.15] = np.nan
    return pl.DataFrame(
        {
            "g": rng.choice(["a", "b", None], n, p=[0.45, 0.45, 0.1]),
            "t": [T0 + dt.timedelta(minutes=int(m)) for m in minutes],
            "lag": rng.integers(0, 90, n).astype(np.int64),
            "v": value,
            "y": rng.integers(0, 2, n),
        }
    ).with_columns(pl.col("v").fill_nan(None))


def spec(**extra: object) -> FeatureSpec:
    base = {
        "version": 1,
        "derived": {"known": "t + INTERVAL '1 minute' * lag"},
        "event_time": "t",
        "numeric": [],
        "categorical": ["g"],
    }
    return FeatureSpec.model_validate({**base, **extra})


ROLLING = {
    "name": "r",
    "by": ["g"],
    "value": "v",
    "known_at": "known",
    "windows_minutes": [30, 120],
    "aggs": ["mean", "count", "sum"],
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("offset", [0, -45])
def test_rolling_matches_brute_force(seed: int, offset: int) -> None:
    events = random_events(300, seed)
    out = build_features({"e": events}, "e", spec(rolling=[ROLLING]), PredictionTimeConfig(offset_minutes=offset), None)
    rows = events.with_columns((pl.col("t") + pl.duration(minutes=pl.col("lag"))).alias("known")).to_dicts()
    for i, row in enumerate(rows):
        pred = row["t"] + dt.timedelta(minutes=offset)
        for w in (30, 120):
            window = [
                r["v"]
                for r in rows
                if row["g"] is not None
                and r["g"] == row["g"]
                and r["v"] is not None
                and pred - dt.timedelta(minutes=w) <= r["known"] < pred
            ]
            got = out.row(i, named=True)
            if row["g"] is None:
                assert got[f"r_count_{w}m"] is None
                continue
            assert got[f"r_count_{w}m"] == len(window)
            assert got[f"r_sum_{w}m"] == pytest.approx(sum(window), abs=1e-9)
            expected_mean = sum(window) / len(window) if window else None
            assert (got[f"r_mean_{w}m"] is None) == (expected_mean is None)
            if expected_mean is not None:
                assert got[f"r_mean_{w}m"] == pytest.approx(expected_mean)


def test_previous_event_is_latest_known_strictly_before() -> None:
    events = random_events(200, 5)
    prev = {"name": "p", "by": ["g"], "known_at": "known", "columns": ["v"]}
    out = build_features({"e": events}, "e", spec(previous=[prev]), PredictionTimeConfig(offset_minutes=-10), None)
    rows = events.with_columns((pl.col("t") + pl.duration(minutes=pl.col("lag"))).alias("known")).to_dicts()
    for i, row in enumerate(rows):
        pred = row["t"] - dt.timedelta(minutes=10)
        earlier = [r for r in rows if row["g"] is not None and r["g"] == row["g"] and r["known"] < pred]
        got = out.row(i, named=True)
        if not earlier:
            assert got["p_minutes_since"] is None
            continue
        latest = max(r["known"] for r in earlier)
        assert got["p_minutes_since"] == pytest.approx((pred - latest).total_seconds() / 60)
        # several events may share the latest time: the greatest value wins (a null above any number),
        # so the answer does not depend on the row order
        candidates = [r["v"] for r in earlier if r["known"] == latest]
        assert got["p_v"] == (None if None in candidates else max(candidates))


def test_asof_takes_latest_row_at_or_before_prediction_time_within_tolerance() -> None:
    primary = pl.DataFrame({"site": ["x", "x", "y", "x"], "t": [T0 + dt.timedelta(hours=h) for h in (1, 3, 3, 9)]})
    side = pl.DataFrame(
        {
            "site": ["x", "x", "y"],
            "obs": [T0, T0 + dt.timedelta(hours=2), T0 + dt.timedelta(hours=5)],
            "temp": [1.0, 2.0, 3.0],
        }
    )
    asof = {
        "table": "s",
        "left_on": "site",
        "right_on": "site",
        "right_time": "obs",
        "columns": ["temp"],
        "prefix": "s_",
        "tolerance_minutes": 240,
    }
    out = build_features(
        {"p": primary, "s": side},
        "p",
        spec(derived={}, categorical=["site"], asof=[asof]),
        PredictionTimeConfig(offset_minutes=0),
        None,
    )
    # 01:00 -> 00:00 obs; 03:00 -> 02:00 obs; y at 03:00 sees nothing yet (05:00 is later); 09:00 is past tolerance
    assert out["s_temp"].to_list() == [1.0, 2.0, None, None]


def test_asof_time_column_can_be_a_feature_and_the_kept_time() -> None:
    """One right column feeding two outputs (online features keep the as-of row's time as `_t`)."""
    side = pl.DataFrame({"site": ["x", "x"], "obs": [T0, T0 + dt.timedelta(hours=2)], "temp": [1.0, 2.0]})
    asof = {"table": "s", "left_on": "site", "right_on": "site", "right_time": "obs", "columns": ["temp", "obs"]}
    s = spec(derived={}, categorical=["site"], asof=[asof])
    primary = pl.DataFrame({"site": ["x", "x"], "t": [T0 + dt.timedelta(hours=1), T0 + dt.timedelta(hours=3)]})
    base = with_derived(primary.lazy(), s, PredictionTimeConfig(offset_minutes=0)).collect()
    (found,) = asof_features(base, {"s": side}, s, keep_time=True)
    assert found.columns == ["temp", "obs", "_t"]
    assert found["obs"].to_list() == found["_t"].to_list() == side["obs"].to_list()


def test_lookup_calendar_and_target() -> None:
    primary = pl.DataFrame(
        {"k": ["p1", "p2", None], "t": [T0 + dt.timedelta(hours=h) for h in (0, 13, 30)], "z": [1, 5, 7]}
    )
    lookup_table = pl.DataFrame({"key": ["p1", "p2", "p2"], "size": [10, 20, 99]})
    s = spec(
        derived={},
        categorical=[],
        timezone="America/New_York",
        calendar=["hour", "weekday", "minute_of_day"],
        lookups=[{"table": "l", "left_on": "k", "right_on": "key", "columns": {"size": "k_size"}}],
    )
    out = build_features(
        {"p": primary, "l": lookup_table}, "p", s, PredictionTimeConfig(), TargetConfig(name="y", expr="z > 3")
    )
    assert out["k_size"].to_list() == [10, 20, None]  # first row of a duplicated key wins
    assert out["cal_hour"].to_list() == [19, 8, 1]  # New York local time
    assert out["cal_minute_of_day"].to_list() == [19 * 60, 8 * 60, 60]
    assert out["y"].to_list() == [0, 1, 1]
    assert set(feature_names(s)) <= set(out.columns)


@pytest.mark.parametrize("using", ["rust", "polars"])
def test_cross_is_the_stable_hash_of_the_values_as_a_category(using: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSION_KERNELS", using)
    events = random_events(50, 3).with_columns(h=pl.col("lag") % 3)
    s = spec(crosses=[{"name": "g_h", "columns": ["g", "h"]}])
    out = build_features({"e": events}, "e", s, PredictionTimeConfig(), None)
    assert "g_h" in feature_names(s) and out["g_h"].dtype == pl.String
    expected = [
        None if g is None else str(reference_cross_hash((g, str(h))))
        for g, h in zip(events["g"], events["h"], strict=True)
    ]
    assert out["g_h"].to_list() == expected
    assert out["g_h"].drop_nulls().n_unique() == events.drop_nulls("g").select("g", "h").n_unique()
    with pytest.raises(FeatureError, match=r"\['nope'\]"):
        build_features(
            {"e": events}, "e", spec(crosses=[{"name": "x", "columns": ["g", "nope"]}]), PredictionTimeConfig(), None
        )


def test_spec_errors_name_the_problem() -> None:
    events = random_events(10, 0)
    with pytest.raises(FeatureError, match=r"\['nope'\]"):
        build_features({"e": events}, "e", spec(numeric=["nope"]), PredictionTimeConfig(), None)
    with pytest.raises(FeatureError, match="is Int64, not a datetime"):
        build_features({"e": events}, "e", spec(derived={}, event_time="lag"), PredictionTimeConfig(), None)
    with pytest.raises(FeatureError, match="feature 'bad'"):
        build_features({"e": events}, "e", spec(derived={"bad": "t +* 1"}), PredictionTimeConfig(), None)


def test_empty_input_gives_empty_features() -> None:
    events = random_events(20, 0).head(0)
    out = build_features({"e": events}, "e", spec(rolling=[ROLLING]), PredictionTimeConfig(), None)
    assert out.height == 0 and "r_mean_30m" in out.columns

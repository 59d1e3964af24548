"""Day-level series, whole-table windows, the `closed` boundary, tables without time, and the splits."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import polars as pl
import pytest

from fusion.core.settings import DatasetConfig, FeatureSpec, PredictionTimeConfig, SplitConfig
from tasks.features import build_features, feature_names
from tasks.online import online_parts, online_state, request_features, state_rows
from tasks.train import split_frames

DAY0 = dt.date(2022, 1, 1)
NOON = PredictionTimeConfig(offset_minutes=0)


def daily(days: int = 40) -> pl.DataFrame:
    rng = np.random.default_rng(5)
    return pl.DataFrame(
        {"day": [DAY0 + dt.timedelta(days=i) for i in range(days)], "demand": rng.normal(100, 10, days).round(2)}
    )


def daily_spec(closed: str, timezone: str = "Europe/Berlin") -> FeatureSpec:
    # a day's demand is known when the day ends: at the start of the next day
    known = "day + INTERVAL '1 day'"
    return FeatureSpec.model_validate(
        {
            "version": 1,
            "event_time": "day",
            "timezone": timezone,
            "calendar": ["weekday"],
            "rolling": [
                {
                    "name": "d",
                    "value": "demand",
                    "known_at": known,
                    "windows_minutes": [3 * 1440],
                    "aggs": ["mean", "count"],
                    "closed": closed,
                }
            ],
            "previous": [{"name": "yday", "known_at": known, "columns": ["demand"], "closed": closed}],
        }
    )


def test_yesterday_means_yesterday_with_closed_both() -> None:
    table = daily()
    built = build_features({"d": table}, "d", daily_spec("both"), NOON, None)
    demand = dict(zip(table["day"].to_list(), table["demand"].to_list(), strict=True))
    local = built["day"].dt.convert_time_zone("Europe/Berlin").dt.date().to_list()
    assert local == table["day"].to_list()  # the date is the start of that day in the spec's timezone
    for i, day in enumerate(local):
        before = [demand.get(day - dt.timedelta(days=k)) for k in (1, 2, 3)]
        known = [v for v in before if v is not None]
        assert built["yday_demand"][i] == demand.get(day - dt.timedelta(days=1))
        assert built["d_count_4320m"][i] == len(known)
        assert built["d_mean_4320m"][i] == (pytest.approx(sum(known) / len(known)) if known else None)
    assert built["yday_minutes_since"][1] == 0.0  # known exactly at the prediction time


def test_closed_left_excludes_rows_known_at_the_prediction_time() -> None:
    table = daily()
    built = build_features({"d": table}, "d", daily_spec("left"), NOON, None)
    demand = table["demand"].to_list()
    # only rows known strictly before T: the day before yesterday, and windows [T - 3 d, T)
    assert built["yday_demand"].to_list()[2:] == demand[:-2]
    assert built["d_count_4320m"].to_list()[:5] == [0.0, 0.0, 1.0, 2.0, 3.0]
    assert built["d_mean_4320m"][4] == pytest.approx(sum(demand[0:3]) / 3)


def test_whole_table_and_closed_both_online_equal_training() -> None:
    table = daily(30)
    spec = daily_spec("both", timezone="UTC")
    state = online_state({"d": table}, "d", spec, NOON)
    stored = {(p.name, k): list(v) for p in online_parts(spec) for k, v in state_rows(p, state.frames[p.name])}
    new_day = table["day"][-1] + dt.timedelta(days=1)
    assert state.as_of == dt.datetime.combine(table["day"][-1], dt.time(), tzinfo=dt.UTC)
    # the next day is asked at its own start: one day after as_of, like a real next request
    later = pl.DataFrame({"day": [new_day], "demand": [None]}, schema=table.schema)
    spec_at = spec.model_copy()
    online = request_features(later, spec_at, NOON, lambda asks: [stored.get(a) for a in asks])
    offline = build_features({"d": pl.concat([table, later])}, "d", spec, NOON, None).tail(1)
    assert online.frame["yday_demand"].item() == offline["yday_demand"].item() == table["demand"][-1]
    assert online.frame["yday_minutes_since"].item() == offline["yday_minutes_since"].item() == 0.0
    # at as_of itself the windows are exact (later requests keep them as of as_of)
    same = pl.DataFrame({"day": [table["day"][-1]], "demand": [None]}, schema=table.schema)
    at_as_of = request_features(same, spec, NOON, lambda asks: [stored.get(a) for a in asks]).frame
    trained = build_features({"d": pl.concat([table, same])}, "d", spec, NOON, None).tail(1)
    for name in feature_names(spec):
        assert at_as_of[name].item() == pytest.approx(trained[name].item()), name


def test_a_table_without_time_has_row_and_lookup_features_online_and_offline() -> None:
    people = pl.DataFrame({"pid": ["a", "b", "c", "a"], "x": [1.0, 2.0, 3.0, 4.0], "kind": ["u", "v", "u", "v"]})
    regions = pl.DataFrame({"pid": ["a", "b"], "region": ["north", "south"]})
    spec = FeatureSpec.model_validate(
        {
            "version": 1,
            "derived": {"x2": "x * 2"},
            "numeric": ["x", "x2"],
            "categorical": ["kind"],
            "lookups": [{"table": "r", "left_on": "pid", "right_on": "pid", "columns": {"region": "region"}}],
        }
    )
    tables = {"p": people, "r": regions}
    built = build_features(tables, "p", spec, NOON, None)
    assert built.columns == ["x", "x2", "kind", "region"]
    assert built["region"].to_list() == ["north", "south", None, "north"]
    state = online_state(tables, "p", spec, NOON)
    stored = {(p.name, k): list(v) for p in online_parts(spec) for k, v in state_rows(p, state.frames[p.name])}
    online = request_features(people, spec, NOON, lambda asks: [stored.get(a) for a in asks])
    assert online.frame.equals(built)


def test_event_time_is_required_only_by_what_places_rows_in_time(flights_settings: Any) -> None:
    raw = flights_settings.dataset.model_dump(mode="json")
    raw["features"]["event_time"] = None
    with pytest.raises(ValueError, match=r"features.calendar, features.asof\[0\] \(wx_\).*split.method time"):
        DatasetConfig.model_validate(raw)
    for key in ("calendar", "asof", "rolling", "previous"):
        raw["features"][key] = []
    raw["split"] = {"method": "random"}
    assert DatasetConfig.model_validate(raw).features.event_time is None


def labelled(n: int, rate: float, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "entity": rng.integers(0, n // 5, n).astype(str),
            "y": (rng.random(n) < rate).astype(np.int8),
            "x": rng.normal(0, 1, n),
        }
    )


def dataset(flights_settings: Any, split: dict[str, Any]) -> DatasetConfig:
    raw = flights_settings.dataset.model_dump(mode="json")
    raw["target"]["name"] = "y"
    raw["split"] = split
    return DatasetConfig.model_validate(raw)


def test_random_split_has_exact_shares_and_is_the_same_for_the_same_seed(flights_settings: Any) -> None:
    frame = labelled(1000, 0.3)
    config = dataset(flights_settings, {"method": "random", "valid_fraction": 0.2, "test_fraction": 0.1, "seed": 4})
    parts = split_frames(frame, config)
    assert parts.sizes() == {"train": 700, "valid": 200, "test": 100}
    again = split_frames(frame, config)
    assert again.test.equals(parts.test) and again.record == parts.record
    other = split_frames(
        frame, dataset(flights_settings, {"method": "random", "valid_fraction": 0.2, "test_fraction": 0.1, "seed": 5})
    )
    assert other.record["digest"] != parts.record["digest"] and not other.test.equals(parts.test)
    assert parts.record["method"] == "random" and parts.record["seed"] == 4


def test_stratified_split_keeps_a_rare_class_rate_in_every_part(flights_settings: Any) -> None:
    frame = labelled(5000, 0.03, seed=1)
    rate = frame["y"].mean()
    parts = split_frames(frame, dataset(flights_settings, {"method": "stratified", "seed": 2}))
    for part in (parts.train, parts.valid, parts.test):
        assert abs(part["y"].mean() - rate) < 0.002  # type: ignore[operator]
    plain = split_frames(frame, dataset(flights_settings, {"method": "random", "seed": 2}))
    assert plain.sizes() == parts.sizes()


def test_group_split_never_puts_a_group_in_two_parts_and_is_stable_as_rows_change(flights_settings: Any) -> None:
    frame = labelled(3000, 0.3, seed=3)
    config = dataset(flights_settings, {"method": "group", "group_by": ["entity"], "seed": 1})
    parts = split_frames(frame, config)
    groups = [set(p["entity"].to_list()) for p in (parts.train, parts.valid, parts.test)]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert 0.08 < parts.test.height / frame.height < 0.22  # shares are of groups: near 0.15 of rows
    # shuffled and with fewer rows, every remaining group keeps its part
    shuffled = split_frames(frame.sample(fraction=0.7, seed=9, shuffle=True), config)
    assert set(shuffled.test["entity"].to_list()) <= groups[2]
    with pytest.raises(Exception, match="id_columns"):
        split_frames(frame.drop("entity"), config)


def test_time_split_on_a_date_event_time(flights_settings: Any) -> None:
    raw = flights_settings.dataset.model_dump(mode="json")
    raw["split"] = {"method": "time", "train_end": "2022-01-20", "valid_end": "2022-01-30"}
    raw["features"] = daily_spec("both").model_dump(mode="json")
    config = DatasetConfig.model_validate(raw)
    built = build_features({"d": daily()}, "d", config.features, NOON, None)
    parts = split_frames(built, config)
    assert parts.sizes() == {"train": 19, "valid": 10, "test": 11}
    assert parts.record["method"] == "time" and parts.record["train_end"] == "2022-01-20"


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"method": "time"}, "needs split.train_end"),
        ({"method": "group"}, "needs split.group_by"),
        ({"method": "random", "train_end": "2020-01-01"}, "for method time"),
        ({"method": "random", "valid_fraction": 0.5, "test_fraction": 0.5}, "below 1"),
        ({"method": "time", "train_end": "2020-02-01", "valid_end": "2020-01-01"}, "must be after"),
    ],
)
def test_split_settings_are_checked(split: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SplitConfig.model_validate(split)

"""Online features equal what the training feature code gives a new row at the materialization time."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import polars as pl
import pytest

from fusion.core.settings import FeatureSpec, PredictionTimeConfig
from tasks.features import build_features, feature_names
from tasks.online import OnlineState, online_parts, online_state, request_features, state_rows

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
OFFSET = -30


def tables(seed: int) -> dict[str, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    n = 400
    value = rng.normal(10, 5, n).round(1)
    value[rng.random(n) < 0.1] = np.nan
    events = pl.DataFrame(
        {
            "g": rng.choice(["a", "b", "c", None], n, p=[0.4, 0.3, 0.2, 0.1]).tolist(),
            "h": rng.choice(["x", "y"], n),
            "t": [T0 + dt.timedelta(minutes=int(m)) for m in rng.integers(0, 900, n)],
            "lag": rng.integers(0, 120, n).astype(np.int64),
            "v": value,
            "size": rng.normal(0, 1, n),
        }
    ).with_columns(pl.col("v").fill_nan(None))
    sites = pl.DataFrame(
        {
            "site": rng.choice(["a", "b", "c"], 60),
            "at": [T0 + dt.timedelta(minutes=int(m)) for m in rng.integers(0, 1000, 60)],
            "temp": rng.normal(0, 1, 60),
        }
    )
    attributes = pl.DataFrame({"key": ["a", "b", "z"], "rank": [1, 2, 26], "label": ["A", "B", "Z"]})
    return {"e": events, "s": sites, "l": attributes}


SPEC = FeatureSpec.model_validate(
    {
        "version": 3,
        "derived": {"known": "t + INTERVAL '1 minute' * lag"},
        "event_time": "t",
        "calendar": ["hour", "weekday"],
        "numeric": ["size"],
        "categorical": ["g", "h"],
        "crosses": [{"name": "gh", "columns": ["g", "h"]}],
        "asof": [
            {"table": "s", "left_on": "g", "right_on": "site", "right_time": "at", "columns": ["temp"], "prefix": "s_"},
            {
                "table": "s",
                "left_on": "h",
                "right_on": "site",
                "right_time": "at",
                "columns": ["temp"],
                "prefix": "near_",
                "tolerance_minutes": 45,
            },
        ],
        "lookups": [
            {"table": "l", "left_on": "g", "right_on": "key", "columns": {"rank": "g_rank", "label": "g_label"}}
        ],
        "rolling": [
            {
                "name": "r",
                "by": ["g"],
                "value": "v",
                "known_at": "known",
                "windows_minutes": [60, 240],
                "aggs": ["mean", "count", "sum", "max"],
            },
            {
                "name": "gh",
                "by": ["g", "h"],
                "value": "v",
                "known_at": "t",
                "windows_minutes": [120],
                "aggs": ["count"],
            },
        ],
        "previous": [{"name": "prev", "by": ["g"], "known_at": "known", "columns": ["v"]}],
    }
)


def in_memory(state: OnlineState) -> Any:
    stored = {
        (part.name, key): list(values)
        for part in online_parts(SPEC)
        for key, values in state_rows(part, state.frames[part.name])
    }
    return lambda asks: [stored.get(ask) for ask in asks]


def new_rows(groups: list[tuple[str | None, str]], at: dt.datetime, template: pl.DataFrame) -> pl.DataFrame:
    event_time = at - dt.timedelta(minutes=OFFSET)
    return pl.DataFrame(
        {
            "g": [g for g, _ in groups],
            "h": [h for _, h in groups],
            "t": [event_time] * len(groups),
            "lag": [5] * len(groups),
            "v": [None] * len(groups),
            "size": [0.5] * len(groups),
        },
        schema=template.schema,
    )


def assert_same(online: pl.DataFrame, offline: pl.DataFrame) -> None:
    assert online.columns == offline.columns
    for name in online.columns:
        for got, want in zip(online[name].to_list(), offline[name].to_list(), strict=True):
            if isinstance(want, float) or isinstance(got, float):
                assert (got is None and want is None) or (
                    got is not None and want is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
                ), f"{name}: online {got!r} vs training {want!r}"
            else:
                assert got == want or (str(got) == str(want)), f"{name}: online {got!r} vs training {want!r}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_request_at_materialization_time_gets_the_training_features(seed: int) -> None:
    data = tables(seed)
    prediction = PredictionTimeConfig(offset_minutes=OFFSET)
    state = online_state(data, "e", SPEC, prediction)
    # known groups, a group never seen (defaults), a null key
    groups = [("a", "x"), ("b", "y"), ("c", "x"), ("q", "y"), (None, "x")]
    rows = new_rows(groups, state.as_of, data["e"])
    online = request_features(rows, SPEC, prediction, in_memory(state))
    offline = build_features({**data, "e": pl.concat([data["e"], rows])}, "e", SPEC, prediction, None)
    assert_same(online.frame, offline.tail(len(groups)).select(feature_names(SPEC)))
    assert online.defaults["rolling_r"] == 1  # only "q" lacks state; the null key is not a fallback
    assert online.frame["r_count_240m"].to_list()[3] == 0.0


def test_later_request_recomputes_time_dependent_parts() -> None:
    data = tables(0)
    prediction = PredictionTimeConfig(offset_minutes=OFFSET)
    state = online_state(data, "e", SPEC, prediction)
    later = state.as_of + dt.timedelta(minutes=90)
    online = request_features(new_rows([("a", "x")], later, data["e"]), SPEC, prediction, in_memory(state))
    previous = state.frames["previous_prev"].filter(pl.col("_key") == "a")["_t"].item()
    want = (int(pl.Series([later]).dt.epoch("us")[0]) - previous) / 60_000_000
    assert online.frame["prev_minutes_since"].item() == pytest.approx(want)
    # x's latest reading is older than the 45-minute tolerance by now, so it is not used
    assert online.frame["near_temp"].item() is None

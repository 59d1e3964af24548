"""Point in time, on the real flights: what happens after a flight's prediction time cannot change its features.

For a cutoff C, every row after C is deleted (or scrambled): flights scheduled
after C and weather observed after C. Flights whose prediction time is at or
before C but which depart after it keep their schedule and get their outcomes
(delays, times) scrambled. Every flight predicted at or before C must keep
exactly the features it had on the untouched data.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.features import build_features, feature_names

OUTCOMES = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]
CUTOFFS = [
    dt.datetime(2013, 2, 8, 19, 30, tzinfo=dt.UTC),  # the Feb 2013 blizzard
    dt.datetime(2013, 7, 1, 21, 0, tzinfo=dt.UTC),  # a heavy summer evening
    dt.datetime(2013, 12, 5, 14, 10, tzinfo=dt.UTC),  # the test month
]


def scramble(frame: pl.DataFrame, columns: list[str], seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return frame.with_columns(
        [pl.Series(c, rng.integers(-50, 900, frame.height), dtype=frame.schema[c]) for c in columns]
    )


@pytest.fixture(scope="module")
def setup(flights_tables: dict[str, pl.DataFrame], flights_settings: Any) -> dict[str, Any]:
    dataset = flights_settings.dataset
    spec = dataset.features.model_copy(update={"id_columns": ["row_id"]})
    flights = (
        flights_tables["flights"]
        .with_row_index("row_id")
        .with_columns(pl.sql_expr(dataset.features.derived["sched_dep"]).alias("_sched"))
    )
    tables = {**flights_tables, "flights": flights}
    full = build_features(tables, "flights", spec, dataset.prediction_time, None)
    return {"tables": tables, "spec": spec, "full": full, "prediction": dataset.prediction_time}


@pytest.mark.parametrize("cutoff", CUTOFFS, ids=lambda c: c.strftime("%m-%d"))
@pytest.mark.parametrize("mode", ["delete", "change"])
def test_rows_after_prediction_time_do_not_change_features(
    setup: dict[str, Any], cutoff: dt.datetime, mode: str
) -> None:
    tables, spec = setup["tables"], setup["spec"]
    offset = dt.timedelta(minutes=setup["prediction"].offset_minutes)
    flights: pl.DataFrame = tables["flights"]
    before = flights.filter(pl.col("_sched") <= cutoff)
    pending = flights.filter((pl.col("_sched") > cutoff) & (pl.col("_sched") + offset <= cutoff))
    after = flights.filter(pl.col("_sched") + offset > cutoff)
    weather = tables["weather"]
    weather_before = weather.filter(pl.col("time_hour") <= cutoff)
    weather_after = weather.filter(pl.col("time_hour") > cutoff)
    assert pending.height > 10 and after.height > 1000 and before.height > 1000

    if mode == "delete":
        new_flights = pl.concat([before, scramble(pending, OUTCOMES, 1)])
        new_weather = weather_before
    else:
        weather_columns = [
            "temp",
            "dewp",
            "humid",
            "wind_dir",
            "wind_speed",
            "wind_gust",
            "precip",
            "pressure",
            "visib",
        ]
        new_flights = pl.concat(
            [before, scramble(pending, OUTCOMES, 1), scramble(after, [*OUTCOMES, "distance", "sched_arr_time"], 2)]
        )
        new_weather = pl.concat([weather_before, scramble(weather_after, weather_columns, 3)])
    # Shuffle row order too: features must not depend on it.
    new_flights = new_flights.sample(fraction=1.0, shuffle=True, seed=4)
    tampered = build_features(
        {**tables, "flights": new_flights, "weather": new_weather}, "flights", spec, setup["prediction"], None
    )

    known = pl.concat([before, pending]).get_column("row_id")
    columns = ["row_id", *feature_names(spec)]
    expected = setup["full"].filter(pl.col("row_id").is_in(known.implode())).select(columns).sort("row_id")
    actual = tampered.filter(pl.col("row_id").is_in(known.implode())).select(columns).sort("row_id")
    assert expected.height == known.len()
    assert_frame_equal(actual, expected, check_exact=False, rel_tol=1e-9, abs_tol=1e-9)


def test_rust_kernels_and_their_twins_give_the_same_table(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole feature step on the real flights: identical with the Rust kernels and with the twins."""
    monkeypatch.setenv("FUSION_KERNELS", "polars")
    twins = build_features(setup["tables"], "flights", setup["spec"], setup["prediction"], None)
    assert_frame_equal(twins, setup["full"], check_exact=False, rel_tol=1e-9, abs_tol=1e-9)


def test_the_check_can_fail(setup: dict[str, Any]) -> None:
    """Guard against a vacuous test: a leaking feature (a mean over the next 3 h) is caught."""
    tables, spec = setup["tables"], setup["spec"]
    leaky = spec.model_copy(
        update={
            "rolling": [
                spec.rolling[0].model_copy(
                    update={"known_at": "sched_dep - INTERVAL '3 hours'", "windows_minutes": [180]}
                )
            ],
            "previous": [],
        }
    )
    cutoff = CUTOFFS[1]
    flights: pl.DataFrame = tables["flights"]
    kept = flights.filter(pl.col("_sched") + dt.timedelta(minutes=-60) <= cutoff)
    full = build_features(tables, "flights", leaky, setup["prediction"], None).filter(
        pl.col("row_id").is_in(kept["row_id"].implode())
    )
    cut = build_features({**tables, "flights": kept}, "flights", leaky, setup["prediction"], None)
    name = f"{spec.rolling[0].name}_mean_180m"
    assert not full.sort("row_id")[name].equals(cut.sort("row_id")[name])

"""The flights generator: the shipped config's schema and suites hold on its tables, it is deterministic by
seed, it streams months as row groups, and its delays have the causes the features can see."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from fusion.core.settings import load_settings
from tasks.generate import generate_flights, plan_copies, real_flights
from tasks.ingest import enforce_schema, parse_table
from tests.conftest import FLIGHTS_CONFIG

ROWS = 400_000  # more than the real 336,776: one full copy of the schedules and a sample of a second


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("generated")
    return out, generate_flights(ROWS, out, seed=7)


def test_the_tables_have_the_configs_columns_and_types_and_the_real_calendar(
    generated: tuple[Path, dict[str, int]],
) -> None:
    out, counts = generated
    tables = load_settings(FLIGHTS_CONFIG).dataset.source.tables
    assert counts["flights"] == ROWS == pq.ParquetFile(out / "flights.parquet").metadata.num_rows
    for name, config in tables.items():
        path = out / f"{name}.parquet"
        typed = enforce_schema(parse_table(path.read_bytes(), str(path), name, config), name, config)  # as ingest
        assert typed.height == counts[name]
    flights = pl.read_parquet(out / "flights.parquet")
    real = real_flights()
    assert flights["time_hour"].min() == real["time_hour"].min()
    assert flights["time_hour"].max() == real["time_hour"].max()
    # streamed: each month is written as its own row groups
    assert pq.ParquetFile(out / "flights.parquet").metadata.num_row_groups >= 12


def test_marginals_are_the_real_schedules_and_twins_are_new_flights_and_aircraft(
    generated: tuple[Path, dict[str, int]],
) -> None:
    out, _ = generated
    flights = pl.read_parquet(out / "flights.parquet")
    real = real_flights()
    share = (
        flights["carrier"]
        .value_counts(normalize=True)
        .join(real["carrier"].value_counts(normalize=True), on="carrier", suffix="_real")
    )
    assert (share["proportion"] - share["proportion_real"]).abs().max() < 0.005
    assert set(flights["origin"].unique()) == {"EWR", "JFK", "LGA"}
    by_month = flights.group_by("month").len().sort("month")["len"] / flights.height
    real_month = real.group_by("month").len().sort("month")["len"] / real.height
    assert (by_month - real_month).abs().max() < 0.005
    # one flight per (carrier, flight, origin, scheduled departure): twins do not collide with originals
    keys = flights.select("carrier", "flight", "origin", "time_hour", "minute")
    assert keys.n_unique() == flights.height
    assert flights.filter(pl.col("tailnum").str.contains("-")).height > 0
    planes = pl.read_parquet(out / "planes.parquet")
    assert planes["tailnum"].n_unique() == planes.height
    assert planes.filter(pl.col("tailnum").str.contains("-")).height > 0


def test_delays_follow_weather_hour_and_the_previous_leg(generated: tuple[Path, dict[str, int]]) -> None:
    out, _ = generated
    flights = pl.read_parquet(out / "flights.parquet")
    weather = pl.read_parquet(out / "weather.parquet")
    joined = flights.join(weather.select("origin", "time_hour", "precip", "visib"), on=["origin", "time_hour"])
    late = pl.col("arr_delay").is_null() | (pl.col("arr_delay") > 15)
    rate = joined.group_by(wet=pl.col("precip") > 0.05).agg(late.mean().alias("late")).sort("wet")["late"]
    assert rate[1] > rate[0] + 0.10  # rain at the origin makes flights late
    by_hour = flights.group_by(evening=pl.col("hour") >= 17).agg(pl.col("dep_delay").mean()).sort("evening")
    assert by_hour["dep_delay"][1] > by_hour["dep_delay"][0] + 5  # delays build up through the day
    legs = flights.filter(pl.col("tailnum").is_not_null()).sort("tailnum", "time_hour", "minute")
    legs = legs.with_columns(prev=pl.col("dep_delay").shift(1).over("tailnum")).drop_nulls("prev")
    after = legs.group_by(after_late=pl.col("prev") > 60).agg(pl.col("dep_delay").mean()).sort("after_late")
    assert after["dep_delay"][1] > after["dep_delay"][0] + 10  # a late aircraft leaves late again
    cancelled = flights["dep_time"].null_count() / flights.height
    assert 0.003 < cancelled < 0.06


def test_the_same_seed_gives_the_same_files_and_another_seed_other_delays(tmp_path: Path) -> None:
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_flights(3000, first, seed=1)
    generate_flights(3000, second, seed=1)
    generate_flights(3000, other, seed=2)
    for name in ("flights", "weather", "planes"):
        assert pl.read_parquet(first / f"{name}.parquet").equals(pl.read_parquet(second / f"{name}.parquet"))
    a, c = pl.read_parquet(first / "flights.parquet"), pl.read_parquet(other / "flights.parquet")
    assert a.height == c.height == 3000 and not a["dep_delay"].equals(c["dep_delay"])


def test_copies_cover_every_template_evenly_and_sum_to_the_rows() -> None:
    copies = plan_copies(10, 25, seed=3)
    assert copies.sum() == 25 and set(copies) == {2, 3} and (copies == 3).sum() == 5
    assert plan_copies(10, 4, seed=3).sum() == 4
    with pytest.raises(ValueError, match="rows must be at least 1"):
        generate_flights(0, Path("unused"))

"""The expectation suites in configs/, run by real Great Expectations over real and broken batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fusion.core.errors import ValidationFailed
from fusion.core.lake import Lake
from fusion.core.settings import ValidationConfig
from tasks.ingest import IngestedBatch
from tasks.validate import load_suite, validate_batch


def land(lake: Lake, tables: dict[str, pl.DataFrame], batch_id: str) -> IngestedBatch:
    paths = {t: lake.write_parquet(f, lake.path("raw", "flights", batch_id, f"{t}.parquet")) for t, f in tables.items()}
    return IngestedBatch("flights", batch_id, paths, {t: f.height for t, f in tables.items()})


@pytest.fixture(scope="module")
def suites(flights_settings: Any) -> dict[str, dict[str, Any]]:
    return {t: load_suite(flights_settings.suite_path(t)) for t in flights_settings.dataset.validation.suites}


@pytest.fixture(scope="module")
def sample(flights_tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    return {"flights": flights_tables["flights"].head(5000), "weather": flights_tables["weather"].head(2000)}


def test_real_batch_passes_and_builds_data_docs(
    tmp_path: Path, flights_tables: dict[str, pl.DataFrame], suites: Any
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    tables = {"flights": flights_tables["flights"], "weather": flights_tables["weather"]}
    result = validate_batch(land(lake, tables, "b1"), suites, ValidationConfig(), "flights", lake, tmp_path / "gx")
    assert result.rows_in == 336_776 and result.rows_rejected == 0
    assert all(o.success for o in result.outcomes) and len(result.outcomes) == sum(
        len(s["expectations"]) for s in suites.values()
    )
    assert result.docs_index and Path(result.docs_index.removeprefix("file://")).is_file()
    assert lake.read_json(result.report_uri)["success"] is True


def broken(sample: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    flights = sample["flights"].with_columns(
        pl.when(pl.int_range(pl.len()) < 20)
        .then(None)
        .otherwise(pl.col("carrier"))
        .alias("carrier"),  # nulls forbidden
        pl.when(pl.int_range(pl.len()).is_between(100, 109))
        .then(13)
        .otherwise(pl.col("month"))
        .alias("month"),  # out of range
    )
    return {**sample, "flights": flights}


def test_fail_policy_quarantines_the_batch_with_its_result(tmp_path: Path, sample: Any, suites: Any) -> None:
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(
        ValidationFailed, match=r"flights\.carrier expect_column_values_to_not_be_null \(20 rows\)"
    ) as failure:
        validate_batch(
            land(lake, broken(sample), "b2"),
            suites,
            ValidationConfig(on_invalid_rows="fail"),
            "flights",
            lake,
            tmp_path / "gx",
        )
    assert "flights.month expect_column_values_to_be_between (10 rows)" in str(failure.value)
    quarantine = failure.value.quarantine_uri
    assert quarantine is not None
    assert lake.read_parquet(f"{quarantine}/flights.parquet").height == 5000
    reason = lake.read_json(f"{quarantine}/reason.json")
    assert reason["success"] is False and {f["column"] for f in reason["failures"]} == {"carrier", "month"}
    assert not (tmp_path / "lake" / "validated").exists()


def test_drop_policy_removes_and_keeps_bad_rows(tmp_path: Path, sample: Any, suites: Any) -> None:
    lake = Lake(str(tmp_path / "lake"))
    result = validate_batch(
        land(lake, broken(sample), "b3"),
        suites,
        ValidationConfig(on_invalid_rows="drop"),
        "flights",
        lake,
        tmp_path / "gx",
    )
    assert result.rows_rejected == 30
    assert lake.read_parquet(result.tables["flights"]).height == 5000 - 30
    rejected = lake.read_parquet(lake.path("quarantine", "flights", "b3", "flights.rejected.parquet"))
    assert rejected.height == 30 and (rejected["carrier"].is_null() | (rejected["month"] == 13)).all()


def test_drop_policy_still_fails_when_too_many_rows_are_bad(tmp_path: Path, sample: Any, suites: Any) -> None:
    lake = Lake(str(tmp_path / "lake"))
    config = ValidationConfig(on_invalid_rows="drop", max_dropped_fraction=0.001)
    with pytest.raises(ValidationFailed, match=r"30 of 5000 flights rows \(0\.6%\) fail"):
        validate_batch(land(lake, broken(sample), "b4"), suites, config, "flights", lake, tmp_path / "gx")


def test_table_level_failure_cannot_be_dropped(tmp_path: Path, sample: Any, suites: Any) -> None:
    lake = Lake(str(tmp_path / "lake"))
    empty = {**sample, "flights": sample["flights"].head(0)}
    with pytest.raises(ValidationFailed, match="expect_table_row_count_to_be_between"):
        validate_batch(
            land(lake, empty, "b5"), suites, ValidationConfig(on_invalid_rows="drop"), "flights", lake, tmp_path / "gx"
        )


def with_bad_weather(tables: dict[str, pl.DataFrame], rows: int) -> dict[str, pl.DataFrame]:
    """`rows` weather rows with humidity over 100 (a row-level failure in a table that is not the primary)."""
    weather = tables["weather"].with_columns(
        pl.when(pl.int_range(pl.len()) < rows).then(150.0).otherwise(pl.col("humid")).alias("humid")
    )
    return {**tables, "weather": weather}


def test_drop_policy_counts_rejected_rows_of_the_primary_and_keeps_every_table(
    tmp_path: Path, sample: Any, suites: Any
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    result = validate_batch(
        land(lake, with_bad_weather(broken(sample), 7), "b6"),
        suites,
        ValidationConfig(on_invalid_rows="drop"),
        "flights",
        lake,
        tmp_path / "gx",
    )
    # rows_rejected sits beside rows_in (primary rows), so it must not count the 7 weather rows.
    assert result.rows_in == 5000 and result.rows_rejected == 30
    assert result.rejected_by_table == {"flights": 30, "weather": 7}
    assert lake.read_parquet(result.tables["weather"]).height == 2000 - 7
    rejected = lake.read_parquet(lake.path("quarantine", "flights", "b6", "weather.rejected.parquet"))
    assert rejected.height == 7 and (rejected["humid"] == 150.0).all()


def test_rejected_batch_is_quarantined_as_ingested(tmp_path: Path, sample: Any, suites: Any) -> None:
    lake = Lake(str(tmp_path / "lake"))
    config = ValidationConfig(on_invalid_rows="drop", max_dropped_fraction=0.01)
    # flights (30 of 5000 bad) may be dropped, weather (100 of 2000) may not: the whole batch is rejected,
    # and quarantine must hold the flights rows as they came, not with the droppable ones already removed.
    with pytest.raises(ValidationFailed, match=r"100 of 2000 weather rows") as failure:
        validate_batch(
            land(lake, with_bad_weather(broken(sample), 100), "b7"), suites, config, "flights", lake, tmp_path / "gx"
        )
    assert lake.read_parquet(f"{failure.value.quarantine_uri}/flights.parquet").height == 5000


def test_a_table_validated_in_slices_gives_the_whole_tables_result(tmp_path: Path, sample: Any, suites: Any) -> None:
    """Failures in every slice, a duplicate across slices, a `mostly`, a row condition, aggregates and the
    table's shape: each expectation's result from 4 slices equals the one from the whole table."""
    from tasks.validate import _gx_context, plan_units, run_suite

    rows = pl.int_range(pl.len())
    flights = (
        broken(sample)["flights"]
        .with_columns(
            pl.when(rows.is_between(2600, 2604)).then(None).otherwise(pl.col("carrier")).alias("carrier"),
            pl.when(rows >= 4990).then(13).otherwise(pl.col("month")).alias("month"),
            pl.when(rows == 4000).then(7).otherwise(rows).alias("row_id"),  # row 7's id again, three slices on
            pl.when(rows % 700 == 0).then(-500.0).otherwise(pl.col("dep_delay")).alias("dep_delay"),
        )
        .with_columns(pl.when(rows == 1400).then(None).otherwise(pl.col("dest")).alias("dest"))
    )
    suite = {
        "name": "flights",
        "expectations": [
            *suites["flights"]["expectations"],
            {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "row_id"}},
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "dep_delay", "min_value": -120, "mostly": 0.99},
            },
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "dest", "value_set": ["IAH", "MIA"]}},
            {
                "type": "expect_column_pair_values_a_to_be_greater_than_b",
                "kwargs": {"column_A": "sched_arr_time", "column_B": "sched_dep_time"},
            },
            {
                "type": "expect_column_mean_to_be_between",
                "kwargs": {"column": "distance", "min_value": 500, "max_value": 1500},
            },
            {"type": "expect_column_to_exist", "kwargs": {"column": "tailnum"}},
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": "carrier", "row_condition": 'origin=="JFK"', "condition_parser": "pandas"},
            },
        ],
    }
    units = plan_units(suite["expectations"], flights.height, 1300)
    assert [(u.start, u.stop) for u in units] == [
        (0, 1300),
        (1300, 2600),
        (2600, 3900),
        (3900, 5000),
        (0, 0),
        (0, 5000),
    ]
    assert units[0].columns is None  # the row condition's columns cannot be told
    assert units[-1].columns == ["distance", "row_id"]  # the whole-table run reads only the columns it names

    whole = run_suite(_gx_context(tmp_path / "whole"), "flights", "flights", flights, suite, batch_rows=10**9)
    sliced = run_suite(_gx_context(tmp_path / "sliced"), "flights", "flights", flights, suite, batch_rows=1300)
    failed = {(o.expectation, o.column) for o in whole.outcomes if not o.success}
    assert ("expect_column_values_to_be_unique", "row_id") in failed and len(failed) >= 5
    assert ("expect_column_values_to_be_between", "dep_delay") not in failed  # 8 of 5000 under: within mostly
    assert sliced.outcomes == whole.outcomes
    assert sliced.bad_rows == whole.bad_rows and {7, 19, 1400, 2600, 4000, 4999} <= set(whole.bad_rows)
    assert sliced.success == whole.success is False
    for mine, theirs in zip(sliced.raw["results"], whole.raw["results"], strict=True):
        assert mine["success"] == theirs["success"]
        assert mine["result"] == theirs["result"], mine["expectation_config"]["type"]
    # one Data Docs page for the sliced run, as for the whole one
    pages = list((tmp_path / "sliced").rglob("data_docs/local_site/validations/**/*.html"))
    assert len(pages) == 1, pages

"""Training and serving type a value the same way: a row read by ingest from a CSV file and the same
row sent as JSON to serving give identical frames, or the same refusal naming the same column."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from fusion.core.errors import TypeMismatch
from fusion.core.settings import TableConfig
from tasks.ingest import enforce_schema, parse_table
from tasks.schema import records_frame

ZONE = "America/New_York"
TABLE = TableConfig(
    uri="rows.csv",
    columns={"n": "int64", "m": "int32", "x": "float64", "s": "str", "b": "bool", "d": "date", "t": "datetime"},
    datetime_timezone=ZONE,
)
# 2013-03-10 02:00-03:00 never happened in New York (DST gap); 2013-11-03 01:00-02:00 happened twice.
GAP = dt.datetime(2013, 3, 10, 2, 30)
OVERLAP = dt.datetime(2013, 11, 3, 1, 30)


def spelled(value: Any) -> st.SearchStrategy[Any]:
    """A value as JSON would carry it: itself, or the same value as a string (numbers as strings)."""
    return st.sampled_from([value, str(value)]) if value is not None else st.just(None)


near_dst = st.sampled_from([GAP, OVERLAP, dt.datetime(2013, 3, 10, 1, 59), dt.datetime(2013, 11, 3, 2, 0)])
times = st.one_of(
    near_dst,
    st.datetimes(min_value=dt.datetime(2013, 1, 1), max_value=dt.datetime(2013, 12, 31)).map(
        lambda t: t.replace(microsecond=0)
    ),
).map(lambda t: t.isoformat())
cells = {
    "n": st.one_of(st.none(), st.integers(-(2**64), 2**64).flatmap(spelled), st.sampled_from(["1.5", "x", " 7 "])),
    "m": st.one_of(st.none(), st.integers(-(2**33), 2**33).flatmap(spelled)),  # beyond int32 too
    "x": st.one_of(
        st.none(),
        st.floats(allow_nan=False, allow_infinity=False, width=64).flatmap(spelled),
        st.integers(-1000, 1000),
        st.integers(2**52, 2**64),  # past what a float holds exactly, and past 64 bits
        st.sampled_from(["NA", "", "late", "1e3"]),
    ),
    "s": st.one_of(
        st.none(), st.text(st.characters(codec="ascii", exclude_characters='\r\n"'), max_size=8), st.integers()
    ),
    "b": st.one_of(st.none(), st.booleans(), st.sampled_from(["true", "False", "yes", "0", "maybe"])),
    "d": st.one_of(
        st.none(), st.dates(dt.date(2000, 1, 1), dt.date(2030, 1, 1)).flatmap(lambda d: spelled(d.isoformat()))
    ),
    "t": st.one_of(st.none(), times, times.map(lambda t: t + "Z"), st.just("2013-01-01T05:00:00+02:00")),
}
rows = st.lists(st.fixed_dictionaries({name: strategy for name, strategy in cells.items()}), min_size=1, max_size=6)


def as_csv(records: list[dict[str, Any]]) -> bytes:
    """The rows as a CSV writer writes them: None as an empty cell, booleans as Python spells them."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(TABLE.columns)
    for record in records:
        writer.writerow(["" if record.get(c) is None else record[c] for c in TABLE.columns])
    return out.getvalue().encode()


def ingested(records: list[dict[str, Any]]) -> pl.DataFrame | str:
    try:
        return enforce_schema(parse_table(as_csv(records), "rows.csv", "t", TABLE), "t", TABLE)
    except TypeMismatch as exc:
        return exc.column.split(".")[-1]


def served(records: list[dict[str, Any]]) -> pl.DataFrame | str:
    try:
        return records_frame(records, TABLE)
    except TypeMismatch as exc:
        return exc.column


@settings(max_examples=300, deadline=None)
@given(rows)
def test_csv_ingest_and_json_serving_type_rows_identically(records: list[dict[str, Any]]) -> None:
    training, serving = ingested(records), served(records)
    if isinstance(training, str) or isinstance(serving, str):
        assert training == serving  # both refuse, naming the same column
    else:
        assert_frame_equal(training, serving)


def test_a_local_time_in_a_dst_gap_is_refused_by_both_paths_and_an_overlap_is_the_earlier_instant() -> None:
    gap = [{"t": GAP.isoformat()}]
    with pytest.raises(TypeMismatch, match="do not exist in America/New_York") as refused:
        records_frame(gap, TABLE)
    assert refused.value.column == "t" and refused.value.rows == [0]
    assert ingested(gap) == "t"
    overlap = records_frame([{"t": OVERLAP.isoformat()}], TABLE)["t"].item()
    assert overlap == dt.datetime(2013, 11, 3, 5, 30, tzinfo=dt.UTC)  # 01:30 EDT, the first of the two


def test_the_control_a_shifting_parser_differs_on_a_dst_gap() -> None:
    """The property above would catch serving's old parser: zoneinfo moves a gap time instead of refusing it."""
    from zoneinfo import ZoneInfo

    shifted = GAP.replace(tzinfo=ZoneInfo(ZONE)).astimezone(dt.UTC)
    assert shifted == dt.datetime(2013, 3, 10, 7, 30, tzinfo=dt.UTC)  # a real instant: no refusal
    assert ingested([{"t": GAP.isoformat()}]) == "t"  # while ingest refuses it


def test_refusals_name_the_row() -> None:
    with pytest.raises(TypeMismatch, match=r"column x: expected float64.*'late' at row\(s\) 2") as refused:
        records_frame([{"x": 1}, {"x": "2.5"}, {"x": "late"}], TABLE)
    assert refused.value.rows == [2]
